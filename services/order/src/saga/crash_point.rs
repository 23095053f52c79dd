//! Crash points at the saga's step boundaries, for the crash tests: before a call, after its
//! answer but before its checkpoint, and after the checkpoint committed. They compile to nothing
//! unless the `failpoints` feature is on (the debug build `make build` makes for the tests), and
//! even then do nothing until `FAILPOINTS` arms one, in the `fail` crate's syntax:
//!
//! ```text
//! FAILPOINTS='saga.process-payment.after-call=return(abort)'
//! FAILPOINTS='saga.create-shipping-label.before-call=return(hold:3000)'
//! ```
//!
//! `abort` aborts the process there — a crash at an exact point, as kill -9 would be at a random
//! one. `hold:<ms>` parks the saga there for that long, so a test can land a cancel mid-step.

use super::definition::Step;

/// Where in a step's life a crash point sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boundary {
    /// The step is current and about to be called.
    BeforeCall,
    /// The callee answered; its outcome is not yet in the journal.
    AfterCall,
    /// The outcome is committed to the journal.
    AfterCheckpoint,
}

impl Boundary {
    pub const ALL: [Boundary; 3] = [
        Boundary::BeforeCall,
        Boundary::AfterCall,
        Boundary::AfterCheckpoint,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Boundary::BeforeCall => "before-call",
            Boundary::AfterCall => "after-call",
            Boundary::AfterCheckpoint => "after-checkpoint",
        }
    }
}

/// The crash point's name: `saga.<step>.<boundary>`.
pub fn name(step: Step, boundary: Boundary) -> String {
    format!("saga.{}.{}", step.name(), boundary.name())
}

/// Arms the crash points named in `FAILPOINTS` for the life of the returned guard (nothing
/// without the `failpoints` feature). Called once, first thing in `main`.
#[cfg(feature = "failpoints")]
pub fn arm() -> fail::FailScenario<'static> {
    fail::FailScenario::setup()
}

/// What [`arm`] gives without the `failpoints` feature: nothing to hold.
#[cfg(not(feature = "failpoints"))]
pub struct Unarmed;

#[cfg(not(feature = "failpoints"))]
pub fn arm() -> Unarmed {
    Unarmed
}

/// Passes the crash point of `step` at `boundary`: aborts or holds when `FAILPOINTS` says so.
#[cfg(feature = "failpoints")]
pub async fn pass(step: Step, boundary: Boundary) {
    let point = name(step, boundary);
    let Some(action) = fail::eval(&point, |arg| arg.unwrap_or_default()) else {
        return;
    };
    if action == "abort" {
        tracing::error!(point, "crash point: aborting");
        std::process::abort();
    }
    match action
        .strip_prefix("hold:")
        .and_then(|ms| ms.parse::<u64>().ok())
    {
        Some(ms) => tokio::time::sleep(std::time::Duration::from_millis(ms)).await,
        None => tracing::warn!(point, action, "crash point: unknown action, ignored"),
    }
}

#[cfg(not(feature = "failpoints"))]
pub async fn pass(_step: Step, _boundary: Boundary) {}
