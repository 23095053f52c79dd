//! The order saga: its transition table ([`definition`]), its messages on JetStream
//! ([`messages`]), the transactional outbox that publishes them ([`outbox`]), the transitions
//! that persist each outcome ([`state`]), the durable step deadlines ([`deadlines`]) and the
//! workers that run steps and timeouts ([`executor`]).

pub mod census;
pub mod deadlines;
pub mod definition;
pub mod executor;
pub mod finished;
pub mod messages;
pub mod outbox;
pub mod state;
pub mod transition;
