//! Committing saga transitions. A transition is decided in memory from a [`Snapshot`] (the
//! saga and its order's view row, as read) and written by **one statement**: a compare-and-set
//! on the saga row — it applies only if everything [`decide`] looked at is unchanged — whose
//! data-modifying CTEs also close the step's timeline row, append the order's events, project
//! them onto the view, queue the next step and write the outbox. One round trip and one commit
//! per transition; a crash anywhere means redelivery, never a lost or doubled step. When the
//! saga moved meanwhile (a timeout, a cancel, another replica), the statement changes nothing,
//! and the transition is decided again from a fresh read.
//!
//! Why not `BEGIN; SELECT ... FOR UPDATE; ...; COMMIT`: that was eleven round trips per step,
//! and PostgreSQL's per-statement cost was what bounded the whole mesh's throughput.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use ordermesh::{
    db,
    events::OutcomeKind,
    proto::order::{Order, OrderStatus},
};
use sqlx::{FromRow, PgPool, Row, postgres::PgRow, types::Json};
use tonic::Status;
use uuid::Uuid;

use super::{
    definition::Step,
    outbox::{Columns, Message},
    state::{self, Decision, Outcome, SAGA_COLUMNS, Saga, SagaContext, SagaRow, decide},
};
use crate::model::{ORDER_COLUMNS, OrderEvent, OrderRow, Projection, confirmation_number};

/// How often a transition is decided again after the saga changed under it.
const ATTEMPTS: usize = 5;

/// A saga and its order's view row, read in one statement: all a transition decides from.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub saga: Saga,
    pub order: OrderRow,
}

impl<'r> FromRow<'r, PgRow> for Snapshot {
    fn from_row(row: &'r PgRow) -> sqlx::Result<Snapshot> {
        let saga = SagaRow {
            order_id: row.try_get("order_id")?,
            definition_version: row.try_get("saga_definition_version")?,
            phase: row.try_get("saga_phase")?,
            current_step: row.try_get("saga_current_step")?,
            pending: row.try_get("saga_pending")?,
            failure_reason: row.try_get("saga_failure_reason")?,
            payment_token: row.try_get("saga_payment_token")?,
        };
        Ok(Snapshot {
            saga: saga.into(),
            order: OrderRow::from_row(row)?,
        })
    }
}

/// `SELECT` list and `FROM` of a snapshot: the view's columns as they are, the saga's with a
/// `saga_` prefix (both tables have `failure_reason` and `updated_at`).
fn snapshot_from() -> String {
    let view: Vec<String> = ORDER_COLUMNS
        .split(", ")
        .map(|c| format!("v.{c}"))
        .collect();
    let saga: Vec<String> = SAGA_COLUMNS
        .split(", ")
        .filter(|c| *c != "order_id")
        .map(|c| format!("s.{c} AS saga_{c}"))
        .collect();
    format!(
        "{}, {} FROM sagas s JOIN order_view v USING (order_id)",
        view.join(", "),
        saga.join(", ")
    )
}

/// The snapshot query, built once (it runs for every step delivery).
static SNAPSHOT_SQL: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {} WHERE s.order_id = $1", snapshot_from()));

/// The snapshot query of a redelivery: marks the step running with its attempt count first.
static REDELIVERY_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH attempt AS (
             UPDATE saga_steps SET attempts = greatest(attempts, $3), status = 'running',
                    started_at = coalesce(started_at, $4, now())
             WHERE order_id = $1 AND step = $2
               AND EXISTS (SELECT 1 FROM sagas WHERE order_id = $1 AND current_step = $2)
         )
         SELECT {} WHERE s.order_id = $1",
        snapshot_from()
    )
});

/// The saga and view of `order_id`, if it exists.
pub async fn snapshot(pool: &PgPool, order_id: Uuid) -> Result<Option<Snapshot>, Status> {
    sqlx::query_as(&SNAPSHOT_SQL)
        .bind(order_id)
        .fetch_optional(pool)
        .await
        .map_err(db::status)
}

/// One delivery of a step message, as the timeline records it.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    /// JetStream's delivery count: the step's `attempts` on the timeline.
    pub delivered: i64,
    /// When this attempt began; the step's `started_at` unless an earlier one set it.
    pub started: Option<DateTime<Utc>>,
}

impl Attempt {
    /// A transition no delivery caused (a timeout, a cancel).
    pub const NONE: Attempt = Attempt {
        delivered: 0,
        started: None,
    };
}

/// Reads the snapshot for a delivery of `step`. A redelivery also marks the step `running` with
/// its attempt count in the same statement, so a step that keeps failing or hangs shows as such
/// on the timeline; a first delivery only reads (its attempt is recorded with its outcome), which
/// spares a commit — and its WAL flush — per step.
pub async fn begin_attempt(
    pool: &PgPool,
    order_id: Uuid,
    step: Step,
    attempt: Attempt,
) -> Result<Option<Snapshot>, Status> {
    if attempt.delivered <= 1 {
        return snapshot(pool, order_id).await;
    }
    sqlx::query_as(&REDELIVERY_SQL)
        .bind(order_id)
        .bind(step.name())
        .bind(i32::try_from(attempt.delivered).unwrap_or(i32::MAX))
        .bind(attempt.started)
        .fetch_optional(pool)
        .await
        .map_err(db::status)
}

/// Applies `outcome` of `step` to the saga as it is now. Returns false (and changes nothing)
/// when the saga is not at that step: a redelivery, a late answer after a timeout, or a
/// timeout after success.
pub async fn advance(
    pool: &PgPool,
    cx: &SagaContext,
    order_id: Uuid,
    step: Step,
    outcome: Outcome,
) -> Result<bool, Status> {
    match snapshot(pool, order_id).await? {
        Some(seen) => advance_from(pool, cx, seen, step, outcome, Attempt::NONE).await,
        None => Ok(false),
    }
}

/// [`advance`] starting from a snapshot the caller already read (re-read only if it is stale).
pub async fn advance_from(
    pool: &PgPool,
    cx: &SagaContext,
    mut seen: Snapshot,
    step: Step,
    outcome: Outcome,
    attempt: Attempt,
) -> Result<bool, Status> {
    let timed_out = matches!(outcome, Outcome::TimedOut(_));
    let failure_kind = outcome.failure_kind();
    for _ in 0..ATTEMPTS {
        let Some(decision) = decide(&seen.saga, step, outcome.clone()) else {
            return Ok(false);
        };
        let plan = Plan::new(cx, &seen, step, decision)?;
        match plan.commit(pool, &seen, attempt).await? {
            Committed::Yes(row) => {
                let Plan {
                    saga,
                    events,
                    decided,
                    messages,
                    ..
                } = plan;
                cx.outbox.hand_over(messages);
                let created_at = seen.order.created_at;
                let row = row.map(|r| *r);
                if let Some(row) = &row {
                    let order = Order::from(row.clone());
                    // Only terminal orders are cached, so only a transition out of a terminal
                    // status (a redriven saga) can make a copy stale; the one into the final
                    // status also drops a stale copy that a read racing the first put back.
                    let was_terminal = OrderStatus::from_str_name(&seen.order.status)
                        .is_some_and(OrderStatus::is_terminal);
                    if was_terminal || order.status().is_terminal() {
                        cx.cache
                            .delete(&crate::read_model::key(seen.saga.order_id))
                            .await;
                    }
                    cx.changes.announce(&order).await;
                }
                cx.recent.put(Snapshot {
                    saga: saga.clone(),
                    order: row.unwrap_or(seen.order),
                });
                // The step's own events, without the Confirmed event the transition added.
                let own: Vec<OrderEvent> =
                    events.into_iter().take(decided).map(|e| e.event).collect();
                let terminal = saga.phase == "done" || saga.phase == "parked" && !own.is_empty();
                state::record_metrics(step, timed_out, failure_kind, &own, terminal, created_at);
                return Ok(true);
            }
            Committed::Stale => match snapshot(pool, seen.saga.order_id).await? {
                Some(fresh) => seen = fresh,
                None => return Ok(false),
            },
        }
    }
    Err(Status::aborted(
        "the saga kept changing while this step's outcome was recorded; retry",
    ))
}

/// One event to append, with its id and stream version.
#[derive(Debug)]
struct Appended {
    id: Uuid,
    version: i64,
    event: OrderEvent,
}

/// Everything one transition writes, decided before the statement runs.
#[derive(Debug)]
struct Plan {
    step: Step,
    /// The saga afterwards.
    saga: Saga,
    step_error: Option<String>,
    events: Vec<Appended>,
    /// How many of `events` [`decide`] produced (the rest the transition added).
    decided: usize,
    /// The view's mutable part after the events.
    projection: Projection,
    /// The outcome announcement and the next step's messages.
    messages: Vec<Message>,
}

enum Committed {
    /// Written; the view row afterwards if the transition appended events.
    Yes(Option<Box<OrderRow>>),
    /// The saga or the order's stream moved since the snapshot: nothing was written.
    Stale,
}

impl Plan {
    fn new(
        cx: &SagaContext,
        seen: &Snapshot,
        step: Step,
        decision: Decision,
    ) -> Result<Plan, Status> {
        let Decision {
            saga,
            step_error,
            mut events,
        } = decision;
        let order_id = saga.order_id;
        let decided = events.len();
        // ConfirmOrder's own event needs the order's creation date, so it is made here.
        if saga.phase == "done" && saga.failure_reason.is_empty() && step == Step::ConfirmOrder {
            events.push(OrderEvent::Confirmed {
                confirmation_number: confirmation_number(seen.order.created_at),
            });
        }
        let mut projection = Projection::of(&seen.order);
        let mut messages = Vec::new();
        let mut appended = Vec::with_capacity(events.len());
        for event in events {
            projection.apply(&event);
            let id = Uuid::now_v7();
            match &event {
                OrderEvent::Confirmed {
                    confirmation_number,
                } => messages.push(state::outcome_message(
                    cx,
                    id,
                    order_id,
                    OutcomeKind::Confirmed,
                    confirmation_number.clone(),
                    String::new(),
                )?),
                OrderEvent::Cancelled { .. } | OrderEvent::Failed { .. } => {
                    messages.push(state::outcome_message(
                        cx,
                        id,
                        order_id,
                        OutcomeKind::Cancelled,
                        String::new(),
                        saga.failure_reason.clone(),
                    )?)
                }
                _ => {}
            }
            appended.push(Appended {
                id,
                version: projection.version,
                event,
            });
        }
        if let Some(next) = saga.current {
            messages.extend(state::step_messages(cx, order_id, next)?);
        }
        Ok(Plan {
            step,
            saga,
            step_error,
            events: appended,
            decided,
            projection,
            messages,
        })
    }

    /// Writes the plan if the saga still is as `seen` (see the module comment).
    async fn commit(
        &self,
        pool: &PgPool,
        seen: &Snapshot,
        attempt: Attempt,
    ) -> Result<Committed, Status> {
        let before = &seen.saga;
        let after = &self.saga;
        let payloads = self
            .events
            .iter()
            .map(|e| serde_json::to_value(&e.event).map(Json))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| Status::internal("event is not serialisable"))?;
        let outbox = Columns::of(&self.messages);
        let (status, error) = match &self.step_error {
            None => ("succeeded", ""),
            Some(error) => ("failed", error.as_str()),
        };
        let next = after.current;
        let result = sqlx::query(&TRANSITION_SQL)
            .bind(before.order_id)
            .bind(&after.phase)
            .bind(next.map(Step::name))
            .bind(Json(&after.pending))
            .bind(&after.failure_reason)
            .bind(&after.payment_token)
            .bind(&before.phase)
            .bind(self.step.name())
            .bind(Json(&before.pending))
            .bind(&before.failure_reason)
            .bind(&before.payment_token)
            .bind(status)
            .bind(error)
            .bind(self.events.iter().map(|e| e.version).collect::<Vec<i64>>())
            .bind(self.events.iter().map(|e| e.id).collect::<Vec<Uuid>>())
            .bind(
                self.events
                    .iter()
                    .map(|e| e.event.event_type())
                    .collect::<Vec<&str>>(),
            )
            .bind(payloads)
            .bind(self.projection.status.as_str_name())
            .bind(&self.projection.confirmation_number)
            .bind(&self.projection.tracking_number)
            .bind(&self.projection.failure_reason)
            .bind(self.projection.version)
            .bind(next.map(Step::name))
            .bind(next.is_some_and(|s| s.spec().compensation))
            .bind(&outbox.msg_ids)
            .bind(&outbox.subjects)
            .bind(&outbox.payloads)
            .bind(&outbox.headers)
            .bind(i32::try_from(attempt.delivered).unwrap_or(i32::MAX))
            .bind(attempt.started)
            .bind(
                self.step
                    .spec()
                    .deadline
                    .map(|_| state::timeout_id(before.order_id, self.step)),
            )
            .fetch_one(pool)
            .await;
        let row = match result {
            Ok(row) => row,
            // Another writer appended to the order's stream first (optimistic concurrency), or
            // the confirmation number drawn is taken: decided again, with a fresh number.
            Err(e) if db::is_code(&e, "23505") => return Ok(Committed::Stale),
            Err(e) => return Err(db::status(e)),
        };
        let applied: i64 = row.try_get("applied").map_err(db::status)?;
        if applied == 0 {
            return Ok(Committed::Stale);
        }
        let view: Option<Uuid> = row.try_get("order_id").map_err(db::status)?;
        Ok(Committed::Yes(match view {
            Some(_) => Some(Box::new(OrderRow::from_row(&row).map_err(db::status)?)),
            None => None,
        }))
    }
}

/// The transition statement. `$1` order; `$2..$6` the saga afterwards; `$7..$11` the saga as
/// decided from (the compare-and-set: `$8` is the step); `$12, $13` the step's end; `$14..$17`
/// the events (versions, ids, types, payloads); `$18..$22` the view afterwards; `$23, $24` the
/// next step to queue; `$25..$28` the outbox rows; `$29, $30` the attempt; `$31` the finished
/// step's durable timeout, deleted if it is still unpublished. Every CTE reads `s`, so nothing
/// happens when the compare-and-set misses.
static TRANSITION_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH s AS (
             UPDATE sagas SET phase = $2, current_step = $3, pending = $4, failure_reason = $5,
                    payment_token = $6, updated_at = now()
             WHERE order_id = $1 AND phase = $7 AND current_step = $8 AND pending = $9
               AND failure_reason = $10 AND payment_token IS NOT DISTINCT FROM $11
             RETURNING order_id
         ), finished AS (
             UPDATE saga_steps SET status = $12, error = $13, finished_at = now(),
                    attempts = greatest(attempts, $29), started_at = coalesce(started_at, $30, now())
             WHERE order_id = (SELECT order_id FROM s) AND step = $8
         ), events AS (
             INSERT INTO order_events (order_id, version, event_id, event_type, payload)
             SELECT s.order_id, e.version, e.event_id, e.event_type, e.payload
             FROM s, unnest($14::bigint[], $15::uuid[], $16::text[], $17::jsonb[])
                  AS e(version, event_id, event_type, payload)
         ), view AS (
             UPDATE order_view SET status = $18, confirmation_number = $19, tracking_number = $20,
                    failure_reason = $21, version = $22, updated_at = now()
             WHERE order_id = (SELECT order_id FROM s) AND cardinality($14::bigint[]) > 0
             RETURNING {ORDER_COLUMNS}
         ), queued AS (
             INSERT INTO saga_steps (order_id, step, compensation, status)
             SELECT s.order_id, $23, $24, 'pending' FROM s WHERE $23::text IS NOT NULL
             ON CONFLICT (order_id, step) DO UPDATE SET status = 'pending', queued_at = now()
         ), moot AS (
             DELETE FROM outbox WHERE msg_id = $31 AND EXISTS (SELECT 1 FROM s)
         ), outbox AS (
             INSERT INTO outbox (msg_id, subject, payload, headers)
             SELECT o.msg_id, o.subject, o.payload, o.headers
             FROM s, unnest($25::uuid[], $26::text[], $27::bytea[], $28::jsonb[])
                  AS o(msg_id, subject, payload, headers)
         )
         SELECT a.applied, view.* FROM (SELECT count(*) AS applied FROM s) a LEFT JOIN view ON true"
    )
});
