//! The saga's state: what is stored, the transition function [`decide`] (pure, property-tested),
//! the messages a transition queues, parking, and the timeline. Committing a transition is
//! [`super::transition`]'s job.

use std::time::Duration;

use chrono::Utc;
use ordermesh::{
    db,
    events::{OrderOutcome, OutcomeKind},
    limits::bounded_reason,
    proto::order::{SagaStep, StepStatus},
    time::to_proto,
};
use sqlx::{PgConnection, PgPool, types::Json};
use tonic::Status;
use uuid::Uuid;

use super::{
    definition::{self, Step, Timeouts},
    messages::{Names, StepMessage},
    outbox::{self, Message},
};
use crate::model::OrderEvent;

/// Everything transitions need to know about naming and timing.
#[derive(Debug, Clone)]
pub struct SagaContext {
    pub names: Names,
    /// Signals WatchOrder after every committed change.
    pub changes: crate::changes::Changes,
    /// Takes the messages of every committed change to the relay.
    pub outbox: outbox::Outbox,
    pub order_events: ordermesh::nats::Names,
    pub timeouts: Timeouts,
    /// The read model's cache, which holds terminal orders only (see `read_model`).
    pub cache: ordermesh::cache::Cache,
    /// What each transition wrote, for the first delivery of the step it queued.
    pub recent: super::recent::Recent,
}

/// A saga as stored.
#[derive(Debug, Clone)]
pub struct Saga {
    pub order_id: Uuid,
    pub definition_version: i32,
    pub phase: String,
    pub current: Option<Step>,
    pub pending: Vec<Step>,
    pub failure_reason: String,
    pub payment_token: Option<String>,
}

#[derive(sqlx::FromRow)]
pub(super) struct SagaRow {
    pub(super) order_id: Uuid,
    pub(super) definition_version: i32,
    pub(super) phase: String,
    pub(super) current_step: Option<String>,
    pub(super) pending: Json<Vec<Step>>,
    pub(super) failure_reason: String,
    pub(super) payment_token: Option<String>,
}

impl From<SagaRow> for Saga {
    fn from(r: SagaRow) -> Saga {
        Saga {
            order_id: r.order_id,
            definition_version: r.definition_version,
            phase: r.phase,
            current: r.current_step.as_deref().and_then(Step::from_name),
            pending: r.pending.0,
            failure_reason: r.failure_reason,
            payment_token: r.payment_token,
        }
    }
}

pub(super) const SAGA_COLUMNS: &str =
    "order_id, definition_version, phase, current_step, pending, failure_reason, payment_token";

/// How a step ended, as the executor saw it.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // one per step execution
pub enum Outcome {
    /// Done; the event it produced, if any.
    Succeeded(Option<OrderEvent>),
    /// The callee said no (declined, out of stock): nothing happened.
    Rejected(String),
    /// Retries ran out: whether it happened is unknown.
    GaveUp(String),
    /// CancelOrder stopped the saga mid-step: whether the step happened is unknown.
    Cancelled(String),
    /// The step's deadline passed: whether it happened is unknown.
    TimedOut(String),
}

impl Outcome {
    /// The outcome's class as a bounded metric label (`None` for success).
    pub(super) fn failure_kind(&self) -> Option<&'static str> {
        match self {
            Outcome::Succeeded(_) => None,
            Outcome::Rejected(_) => Some("rejected"),
            Outcome::GaveUp(_) => Some("gave_up"),
            Outcome::TimedOut(_) => Some("timed_out"),
            Outcome::Cancelled(_) => Some("cancelled"),
        }
    }
}

/// The messages that run `step`: the step message and, if it has a deadline, its durable
/// timeout (deferred: see [`outbox`]). Written to the outbox by the statement that makes
/// `step` current.
pub fn step_messages(cx: &SagaContext, order_id: Uuid, step: Step) -> Result<Vec<Message>, Status> {
    let encode = |m: &StepMessage| {
        serde_json::to_vec(m).map_err(|_| Status::internal("step message not serialisable"))
    };
    let run = StepMessage {
        order_id,
        step,
        due_at_ms: None,
    };
    let mut messages = vec![Message::new(
        Uuid::now_v7(),
        cx.names.step_subject(step),
        encode(&run)?,
    )];
    if let Some(deadline) = step.spec().deadline {
        let due = Utc::now() + cx.timeouts.of(deadline);
        let timeout = StepMessage {
            due_at_ms: Some(due.timestamp_millis()),
            ..run
        };
        messages.push(Message {
            deferred: true,
            ..Message::new(
                timeout_id(order_id, step),
                cx.names.timeout_subject(step),
                encode(&timeout)?,
            )
        });
    }
    Ok(messages)
}

/// The outbox id (and `Nats-Msg-Id`) of `step`'s durable timeout: derived from the order and
/// the step, so the transition that finishes the step can delete it unpublished.
pub fn timeout_id(order_id: Uuid, step: Step) -> Uuid {
    Uuid::new_v5(&order_id, format!("timeout:{}", step.name()).as_bytes())
}

pub async fn load(pool: &PgPool, order_id: Uuid) -> Result<Option<Saga>, Status> {
    let row: Option<SagaRow> = sqlx::query_as(&format!(
        "SELECT {SAGA_COLUMNS} FROM sagas WHERE order_id = $1"
    ))
    .bind(order_id)
    .fetch_optional(pool)
    .await
    .map_err(db::status)?;
    Ok(row.map(Into::into))
}

async fn finish(
    conn: &mut PgConnection,
    order_id: Uuid,
    step: Step,
    status: &str,
    error: &str,
) -> Result<(), Status> {
    sqlx::query(
        "UPDATE saga_steps SET status = $3, error = $4, finished_at = now(), started_at = coalesce(started_at, now())
         WHERE order_id = $1 AND step = $2",
    )
    .bind(order_id)
    .bind(step.name())
    .bind(status)
    .bind(error)
    .execute(&mut *conn)
    .await
    .map_err(db::status)?;
    Ok(())
}

/// Parks the saga at `step` after its message was dead-lettered: nothing is compensated, the
/// step's deadline no longer fires, and the timeline says why. A redriven message resumes it.
pub async fn park(pool: &PgPool, order_id: Uuid, step: Step, reason: &str) -> Result<(), Status> {
    let mut tx = pool.begin().await.map_err(db::status)?;
    let parked = sqlx::query(
        "UPDATE sagas SET phase = 'parked', failure_reason = $3, updated_at = now()
         WHERE order_id = $1 AND current_step = $2 AND phase IN ('forward', 'compensating', 'parked')",
    )
    .bind(order_id)
    .bind(step.name())
    .bind(reason)
    .execute(&mut *tx)
    .await
    .map_err(db::status)?
    .rows_affected();
    if parked == 1 {
        finish(&mut tx, order_id, step, "failed", reason).await?;
    }
    tx.commit().await.map_err(db::status)?;
    Ok(())
}

/// What recording one outcome means (see [`decide`]).
#[derive(Debug)]
pub struct Decision {
    /// The saga afterwards: phase, next step, compensations left, failure reason, token.
    pub saga: Saga,
    /// How the step's timeline row ends: `None` = succeeded, `Some(error)` = failed.
    pub step_error: Option<String>,
    /// Order events to append, in order.
    pub events: Vec<OrderEvent>,
}

/// The saga's transition function, without I/O (so a property test can drive it through any
/// sequence of outcomes): what `outcome` of `step` does to `saga`. `None` when it changes
/// nothing — the saga is not at `step` (a redelivery, a late answer, a timeout after success), a
/// parked saga's deadline (an operator owns it), or a deadline or cancel request during a
/// compensation (compensations run to the end).
pub fn decide(saga: &Saga, step: Step, outcome: Outcome) -> Option<Decision> {
    if saga.current != Some(step) || saga.phase == "done" {
        return None;
    }
    let mut saga = saga.clone();
    let compensation = step.spec().compensation;
    if saga.phase == "parked" {
        if matches!(outcome, Outcome::TimedOut(_)) {
            return None;
        }
        saga.phase = if compensation {
            "compensating".into()
        } else {
            "forward".into()
        };
        if !compensation {
            saga.failure_reason.clear();
        }
    }
    let mut events = Vec::new();
    let mut next = None;
    let mut step_error = None;
    let mut fail_forward = |saga: &mut Saga, reason: String, effect_unknown: bool| {
        // Stored, shown and sent with every compensation: it must fit every callee's limit.
        let reason = bounded_reason(&reason);
        step_error = Some(reason.clone());
        events.push(OrderEvent::CompensationStarted {
            failed_step: step.name().into(),
            reason: reason.clone(),
        });
        saga.payment_token = None;
        saga.failure_reason = reason.clone();
        let mut undo = definition::compensations(step, effect_unknown);
        if undo.is_empty() {
            events.push(OrderEvent::Cancelled { reason });
            saga.phase = "done".into();
            None
        } else {
            saga.phase = "compensating".into();
            let first = undo.remove(0);
            saga.pending = undo;
            Some(first)
        }
    };
    match (compensation, outcome) {
        (false, Outcome::Succeeded(event)) => {
            if step == Step::ProcessPayment {
                saga.payment_token = None;
            }
            match step.spec().next {
                Some(following) => next = Some(following),
                None => saga.phase = "done".into(),
            }
            events.extend(event);
        }
        (false, Outcome::Rejected(reason)) => next = fail_forward(&mut saga, reason, false),
        (
            false,
            Outcome::GaveUp(reason) | Outcome::TimedOut(reason) | Outcome::Cancelled(reason),
        ) => next = fail_forward(&mut saga, reason, true),
        (true, Outcome::Succeeded(_)) => {
            events.push(OrderEvent::Compensated {
                step: step.name().into(),
            });
            if saga.pending.is_empty() {
                events.push(OrderEvent::Cancelled {
                    reason: saga.failure_reason.clone(),
                });
                saga.phase = "done".into();
            } else {
                next = Some(saga.pending.remove(0));
            }
        }
        (true, Outcome::TimedOut(_) | Outcome::Cancelled(_)) => return None,
        (true, Outcome::Rejected(reason) | Outcome::GaveUp(reason)) => {
            step_error = Some(reason.clone());
            let reason = bounded_reason(&format!(
                "compensation {} could not finish: {reason}",
                step.name()
            ));
            events.push(OrderEvent::Failed {
                reason: reason.clone(),
            });
            saga.failure_reason = reason;
            saga.phase = "parked".into();
        }
    }
    saga.current = next;
    Some(Decision {
        saga,
        step_error,
        events,
    })
}

/// Counts what a committed transition did.
pub(super) fn record_metrics(
    step: Step,
    timed_out: bool,
    failure_kind: Option<&str>,
    events: &[OrderEvent],
    terminal: bool,
    created_at: chrono::DateTime<Utc>,
) {
    use crate::metrics::*;
    if timed_out {
        SAGA_TIMEOUTS.with_label_values(&[step.name()]).inc();
    }
    for event in events {
        match event {
            OrderEvent::CompensationStarted { failed_step, .. } => {
                SAGA_FAILED
                    .with_label_values(&[
                        Step::from_name(failed_step).map_or("unknown", Step::name),
                        failure_kind.unwrap_or("unknown"),
                    ])
                    .inc();
            }
            OrderEvent::Compensated { .. } => {
                SAGA_COMPENSATIONS.with_label_values(&[step.name()]).inc()
            }
            _ => {}
        }
    }
    if step == Step::ConfirmOrder && events.is_empty() {
        SAGA_COMPLETED.inc();
    }
    if terminal {
        SAGA_DURATION.observe(
            (Utc::now() - created_at)
                .to_std()
                .unwrap_or_default()
                .as_secs_f64(),
        );
    }
}

/// The order's outcome event for notification (and anyone else listening), with the id of the
/// order event it reports, so consumers de-duplicate by it.
pub fn outcome_message(
    cx: &SagaContext,
    event_id: Uuid,
    order_id: Uuid,
    kind: OutcomeKind,
    confirmation_number: String,
    reason: String,
) -> Result<Message, Status> {
    let outcome = OrderOutcome {
        event_id,
        order_id,
        kind,
        confirmation_number,
        reason,
    };
    let payload =
        serde_json::to_vec(&outcome).map_err(|_| Status::internal("outcome not serialisable"))?;
    Ok(Message::new(
        event_id,
        cx.order_events.order_event_subject(kind.subject_token()),
        payload,
    ))
}

#[derive(sqlx::FromRow)]
struct StepRow {
    step: String,
    compensation: bool,
    status: String,
    attempts: i32,
    started_at: Option<chrono::DateTime<Utc>>,
    finished_at: Option<chrono::DateTime<Utc>>,
    error: String,
}

/// The saga's steps in execution order, with its table version.
pub async fn timeline(
    pool: &PgPool,
    order_id: Uuid,
) -> Result<Option<(Saga, Vec<SagaStep>)>, Status> {
    let Some(saga) = load(pool, order_id).await? else {
        return Ok(None);
    };
    let rows: Vec<StepRow> = sqlx::query_as(
        "SELECT step, compensation, status, attempts, started_at, finished_at, error FROM saga_steps
         WHERE order_id = $1 ORDER BY queued_at, compensation",
    )
    .bind(order_id)
    .fetch_all(pool)
    .await
    .map_err(db::status)?;
    let steps = rows
        .into_iter()
        .map(|r| {
            let status = match r.status.as_str() {
                "pending" => StepStatus::Pending,
                "running" => StepStatus::Running,
                "succeeded" => StepStatus::Succeeded,
                "failed" => StepStatus::Failed,
                _ => StepStatus::Unspecified,
            };
            let duration = match (r.started_at, r.finished_at) {
                (Some(s), Some(f)) => (f - s).to_std().ok().map(duration_to_proto),
                _ => None,
            };
            SagaStep {
                name: r.step,
                compensation: r.compensation,
                status: status as i32,
                attempts: u32::try_from(r.attempts).unwrap_or(0),
                started_at: r.started_at.map(to_proto),
                finished_at: r.finished_at.map(to_proto),
                duration,
                error: r.error,
            }
        })
        .collect();
    Ok(Some((saga, steps)))
}

fn duration_to_proto(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;
    use crate::saga::definition::{FIRST, TABLE};

    /// One thing that can happen to a saga: an outcome reported for a step — usually the current
    /// one, sometimes another (a duplicate, a redelivery, a late answer, a stale timeout).
    #[derive(Debug, Clone)]
    struct Delivery {
        stale_step: Option<usize>,
        outcome: u8,
    }

    fn outcome(kind: u8) -> Outcome {
        match kind % 5 {
            0 | 1 => Outcome::Succeeded(None),
            2 => Outcome::Rejected("no".into()),
            3 => Outcome::GaveUp("transient".into()),
            _ => Outcome::TimedOut("deadline".into()),
        }
    }

    fn deliveries() -> impl Strategy<Value = Vec<Delivery>> {
        proptest::collection::vec(
            (proptest::option::weighted(0.2, 0..TABLE.len()), any::<u8>()).prop_map(
                |(stale_step, outcome)| Delivery {
                    stale_step,
                    outcome,
                },
            ),
            0..40,
        )
    }

    fn fresh() -> Saga {
        Saga {
            order_id: Uuid::nil(),
            definition_version: 1,
            phase: "forward".into(),
            current: Some(FIRST),
            pending: Vec::new(),
            failure_reason: String::new(),
            payment_token: Some("tok".into()),
        }
    }

    proptest! {
        /// Whatever arrives in whatever order, a saga ends in exactly one terminal state
        /// (CONFIRMED, CANCELLED or parked as FAILED), stale outcomes change nothing, nothing
        /// changes after the end, and the compensations run are exactly the undo steps of the
        /// effects that may have happened — each once, most recent first.
        #[test]
        fn any_sequence_of_outcomes_ends_in_one_terminal_state(script in deliveries()) {
            let mut saga = fresh();
            let mut events: Vec<OrderEvent> = Vec::new();
            // Forward steps whose effect may exist: succeeded, or failed with unknown effect.
            let mut maybe_done: Vec<Step> = Vec::new();
            let mut compensated: Vec<Step> = Vec::new();
            // After the script, everything that is still running succeeds (the world heals).
            let heal = std::iter::repeat_n(Delivery { stale_step: None, outcome: 0 }, 20);
            for delivery in script.into_iter().chain(heal) {
                let step = match (delivery.stale_step, saga.current) {
                    (Some(i), _) => TABLE[i].step,
                    (None, Some(current)) => current,
                    (None, None) => break,
                };
                let outcome = outcome(delivery.outcome);
                let decided = decide(&saga, step, outcome.clone());
                if saga.current != Some(step) || saga.phase == "done" {
                    prop_assert!(decided.is_none(), "{step:?} changed a saga at {:?}", saga.current);
                    continue;
                }
                let Some(decision) = decided else { continue };
                if !step.spec().compensation {
                    match outcome {
                        Outcome::Succeeded(_) => maybe_done.push(step),
                        Outcome::Rejected(_) => {}
                        _ => maybe_done.push(step),
                    }
                } else if matches!(outcome, Outcome::Succeeded(_)) {
                    compensated.push(step);
                }
                events.extend(decision.events);
                saga = decision.saga;
                if saga.phase == "parked" {
                    break; // an operator takes over: FAILED is terminal for the order
                }
            }
            let terminal: Vec<&OrderEvent> = events
                .iter()
                .filter(|e| matches!(e, OrderEvent::Cancelled { .. } | OrderEvent::Failed { .. }))
                .collect();
            let confirmed = saga.phase == "done" && saga.failure_reason.is_empty();
            prop_assert!(saga.phase == "done" || saga.phase == "parked", "ended {saga:?}");
            prop_assert_eq!(terminal.len() + usize::from(confirmed), 1, "{:?}", events);
            let started = events
                .iter()
                .filter(|e| matches!(e, OrderEvent::CompensationStarted { .. }))
                .count();
            prop_assert!(started <= 1, "compensation started twice: {:?}", events);
            if confirmed {
                prop_assert!(compensated.is_empty());
                prop_assert_eq!(saga.payment_token.as_deref(), None);
            }
            if saga.phase == "done" && !confirmed {
                // Exactly the undo steps of what may have happened, most recent first, once each.
                let expected: Vec<Step> = maybe_done.iter().rev().filter_map(|s| s.spec().undo).collect();
                prop_assert_eq!(&compensated, &expected);
                let mut counts: HashMap<Step, usize> = HashMap::new();
                for step in &compensated {
                    *counts.entry(*step).or_default() += 1;
                }
                prop_assert!(counts.values().all(|n| *n == 1));
                prop_assert_eq!(saga.payment_token.as_deref(), None);
            }
            // Nothing moves a finished saga.
            if saga.phase == "done" {
                for step in TABLE.iter().map(|s| s.step) {
                    prop_assert!(decide(&saga, step, Outcome::Succeeded(None)).is_none());
                }
            }
        }
    }
}
