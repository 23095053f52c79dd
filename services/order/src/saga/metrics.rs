//! What a committed journal entry counts: sagas completed, failed (by step and why),
//! compensations, timeouts, dead letters and the end-to-end duration.

use chrono::Utc;

use super::{
    decide::{Decision, Input, Phase},
    journal::Snapshot,
};
use crate::{metrics::*, model::OrderEvent};

/// Counts what `decision` (made from `input`) did; `after` is the saga and view it left.
pub fn record(input: &Input, decision: &Decision, after: &Snapshot) {
    if let Input::TimedOut(step) = input {
        SAGA_TIMEOUTS.with_label_values(&[step.name()]).inc();
    }
    let why = match input {
        Input::Refused(..) => "rejected",
        Input::TimedOut(_) => "timed_out",
        Input::Cancelled(_) => "cancelled",
        Input::GaveUp(..) => "gave_up",
        _ => "unknown",
    };
    for event in &decision.events {
        match event {
            OrderEvent::CompensationStarted { failed_step, .. } => SAGA_FAILED
                .with_label_values(&[failed_step.as_str(), why])
                .inc(),
            OrderEvent::Compensated { step } => {
                SAGA_COMPENSATIONS.with_label_values(&[step.as_str()]).inc()
            }
            _ => {}
        }
    }
    if let (Some(reason), Some(step)) = (&decision.dead_letter, after.saga.current) {
        DEAD_LETTERS.with_label_values(&[step.name()]).inc();
        tracing::warn!(%reason, step = step.name(), "saga parked; dead letter written");
    }
    if decision.announce == Some(ordermesh::events::OutcomeKind::Confirmed) {
        SAGA_COMPLETED.inc();
    }
    let terminal = after.saga.phase == Phase::Done
        || after.saga.phase == Phase::Parked && decision.announce.is_some();
    if terminal {
        SAGA_DURATION.observe(
            (Utc::now() - after.order.created_at)
                .to_std()
                .unwrap_or_default()
                .as_secs_f64(),
        );
    }
}
