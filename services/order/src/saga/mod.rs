//! The order saga, one durable run per order:
//! - [`definition`]: the transition table — steps, order, undo, deadlines;
//! - [`decide`]: the saga as data and its pure transition function;
//! - [`journal`]: all saga SQL, and the group commit of every saga's entries;
//! - [`runner`]: drives one saga per run ticket — decide, call, record — until it ends or waits;
//! - [`steps`]: each callee's requests and how their answers are classified;
//! - [`messages`]: run tickets and dead letters on JetStream; [`outbox`]: how they get there;
//! - [`sweeper`]: re-issues the ticket of a saga that stopped moving (a lost message);
//! - [`crash_point`]: where the crash tests abort the process (a test-only feature);
//! - [`census`]: gauges of unfinished sagas; [`metrics`]: what each entry counts.

pub mod census;
pub mod crash_point;
pub mod decide;
pub mod definition;
pub mod journal;
pub mod messages;
mod metrics;
pub mod outbox;
pub mod runner;
pub mod steps;
pub mod sweeper;
