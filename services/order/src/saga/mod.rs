//! The order saga: its transition table ([`definition`]), its messages on JetStream
//! ([`messages`]), the transactional outbox that publishes them ([`outbox`]), the transitions
//! that persist each outcome ([`state`]) and the workers that run steps and timeouts
//! ([`executor`]).

pub mod census;
pub mod definition;
pub mod executor;
pub mod finished;
pub mod messages;
pub mod outbox;
pub mod recent;
pub mod state;
pub mod transition;
