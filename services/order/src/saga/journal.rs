//! The saga's journal: all saga SQL, and the group commit that makes it cheap.
//!
//! Every change to a saga is one [`Input`] decided against the saga as last read
//! ([`decide`]) and appended as one journal entry: the saga row's compare-and-set on its
//! `version`, its timeline rows, the order's events, the projected view and the outbox
//! messages it sends (the outcome announcement, a dead letter). Entries from every saga running
//! in this instance go to one writer task, which commits whatever has queued up — up to
//! [`MAX_BATCH`] entries, waiting at most [`LINGER`] for company — as **one statement** of
//! multi-row CTEs: one round trip and one WAL flush for the lot, where each entry used to cost
//! its own. Each entry's compare-and-set succeeds or fails on its own: a conflict (a cancel or
//! another runner moved the saga first) answers only that entry's caller, who reads the saga
//! again and decides anew.
//!
//! Every entry is awaited before its caller acts on it: a decision that starts compensation,
//! parks, or times out is durable before anything follows from it, and a success is durable
//! before the next step's call (which costs a millisecond or two of latency per step and keeps
//! the runner's reasoning simple: what it holds is what is stored).

use std::{
    collections::{BTreeMap, HashSet, VecDeque},
    time::Duration,
};

use chrono::{DateTime, Utc};
use ordermesh::{
    db,
    events::{OrderOutcome, OutcomeKind, dead_letter},
    proto::order::{Order, OrderStatus, SagaStep, StepStatus},
    time::to_proto,
};
use sqlx::{FromRow, PgPool, Row, postgres::PgRow, types::Json};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    decide::{Decision, Input, Phase, Saga, StepChange, decide},
    definition::{Step, Timeouts},
    messages::{Names, RunTicket},
    outbox::{Columns, Message, Outbox},
};
use crate::{
    model::{ORDER_COLUMNS, OrderEvent, OrderRow, confirmation_number},
    projection::Projection,
};

/// Most entries one statement commits.
const MAX_BATCH: usize = 256;

/// How long a small batch waits for more entries before it is committed anyway. The writer
/// also batches for free: entries queue up while the previous statement runs.
const LINGER: Duration = Duration::from_millis(1);

/// Below this many entries a batch lingers for company; above it, it goes at once.
const LINGER_BELOW: usize = 16;

/// Entries queued for the writer before callers wait for room.
const QUEUE: usize = 4096;

/// Propagation headers stored with a saga (request id, trace, baggage, canary version) and put
/// on every message it sends, so a resumed saga or a redrive continues the same request.
pub type Context = BTreeMap<String, String>;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("saga journal: {0}")]
    Db(#[from] sqlx::Error),
    #[error("saga journal: the writer has stopped (shutting down)")]
    Stopped,
    #[error("saga journal: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("saga journal: the batch with this entry failed: {0}")]
    Batch(String),
}

/// The journal's failures in the platform's terms, whose one `From<Error> for Status` picks the
/// gRPC code: a stopped writer or a failed batch is worth retrying elsewhere (UNAVAILABLE).
impl From<JournalError> for ordermesh::Error {
    fn from(e: JournalError) -> ordermesh::Error {
        match e {
            JournalError::Db(e) => ordermesh::Error::Database(e),
            JournalError::Stopped | JournalError::Batch(_) => {
                ordermesh::Error::Unavailable(e.to_string())
            }
            JournalError::Encode(_) => ordermesh::Error::Internal(e.to_string()),
        }
    }
}

/// For handlers that call the journal directly: through [`ordermesh::Error`], so its table
/// still chooses the code.
impl From<JournalError> for tonic::Status {
    fn from(e: JournalError) -> tonic::Status {
        ordermesh::Error::from(e).into()
    }
}

/// A saga and its order's view row as read, with the context it runs in.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub saga: Saga,
    pub order: OrderRow,
    pub context: Context,
}

/// What recording an input did.
#[derive(Debug)]
pub enum Recorded {
    /// Written; the saga and view as they are now, and what was decided.
    Moved(Box<Snapshot>, Box<Decision>),
    /// The input changes nothing (about a step that is not current, a cancel too late).
    Unchanged,
    /// The saga moved since it was read: read it again and decide anew.
    Conflict,
}

/// The journal of this instance: reads, decisions and the group-committed writes.
#[derive(Debug, Clone)]
pub struct Journal {
    pool: PgPool,
    writer: mpsc::Sender<Pending>,
    pub names: Names,
    pub order_events: ordermesh::nats::Names,
    pub outbox: Outbox,
    pub changes: crate::changes::Changes,
    /// The read model's cache, which holds terminal orders only (see `read_model`).
    pub cache: ordermesh::cache::Cache,
    pub timeouts: Timeouts,
}

/// The parts the journal is built from.
pub struct Parts {
    pub names: Names,
    pub order_events: ordermesh::nats::Names,
    pub outbox: Outbox,
    pub changes: crate::changes::Changes,
    pub cache: ordermesh::cache::Cache,
    pub timeouts: Timeouts,
}

impl Journal {
    /// The journal, with its writer task running until `shutdown` (after which it commits
    /// what is queued and stops).
    pub fn start(
        pool: PgPool,
        parts: Parts,
        background: &ordermesh::server::Background,
    ) -> Journal {
        let (tx, rx) = mpsc::channel(QUEUE);
        background.spawn(write(pool.clone(), rx, background.token()));
        Journal {
            pool,
            writer: tx,
            names: parts.names,
            order_events: parts.order_events,
            outbox: parts.outbox,
            changes: parts.changes,
            cache: parts.cache,
            timeouts: parts.timeouts,
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The saga and view of `order_id`, if it exists.
    #[tracing::instrument(level = "debug", skip_all, fields(%order_id))]
    pub async fn load(&self, order_id: Uuid) -> Result<Option<Snapshot>, JournalError> {
        let row: Option<SnapshotRow> = sqlx::query_as(&SNAPSHOT_SQL)
            .bind(order_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.into_snapshot(&self.timeouts)))
    }

    /// Decides `input` against `seen` and, if it changes anything, appends it (waiting for the
    /// commit). On success the relay gets the entry's messages, watchers a change signal, and a
    /// cached copy of the order that the change made stale is dropped.
    #[tracing::instrument(level = "debug", skip_all, fields(order_id = %seen.saga.order_id))]
    pub async fn record(&self, seen: &Snapshot, input: Input) -> Result<Recorded, JournalError> {
        let now = Utc::now();
        let what = input.clone();
        let Some(decision) = decide(&seen.saga, input, now, &self.timeouts) else {
            return Ok(Recorded::Unchanged);
        };
        // Drawn once: the number stored is the number announced.
        let events = with_confirmation(&seen.order, &decision);
        let entry = Entry::new(self, seen, &decision, events.clone())?;
        let messages = entry.messages.clone();
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(Pending { entry, reply })
            .await
            .map_err(|_| JournalError::Stopped)?;
        let committed = answer.await.map_err(|_| JournalError::Stopped)??;
        let Some(at) = committed else {
            return Ok(Recorded::Conflict);
        };
        self.outbox.hand_over(messages);
        let after = self.after(seen, &decision, &events, at);
        if after.order.version != seen.order.version {
            let order = Order::from(after.order.clone());
            // Only terminal orders are cached, so only a change out of a terminal status (a
            // redriven saga) can make a copy stale; the one into it drops a copy that a read
            // racing the change put back.
            let was_terminal = OrderStatus::from_str_name(&seen.order.status)
                .is_some_and(OrderStatus::is_terminal);
            if was_terminal || order.status().is_terminal() {
                self.cache
                    .delete(&crate::read_model::key(seen.saga.order_id))
                    .await;
            }
            self.changes.announce(&order).await;
        }
        super::metrics::record(&what, &decision, &after);
        Ok(Recorded::Moved(Box::new(after), Box::new(decision)))
    }

    /// The snapshot after `decision` (appending `events`) committed at `at` (the statement's
    /// `now()`).
    fn after(
        &self,
        seen: &Snapshot,
        decision: &Decision,
        events: &[OrderEvent],
        at: DateTime<Utc>,
    ) -> Snapshot {
        let mut order = seen.order.clone();
        crate::projection::advance(&mut order, events, at);
        Snapshot {
            saga: decision.saga.clone(),
            order,
            context: seen.context.clone(),
        }
    }
}

/// The decision's events, plus the Confirmed event (with a fresh confirmation number) when it
/// finished the forward steps: the number needs the order's date, which `decide` does not see.
fn with_confirmation(order: &OrderRow, decision: &Decision) -> Vec<OrderEvent> {
    let mut events = decision.events.clone();
    if decision.announce == Some(OutcomeKind::Confirmed) {
        events.push(OrderEvent::Confirmed {
            confirmation_number: confirmation_number(order.created_at),
        });
    }
    events
}

// --- reading --------------------------------------------------------------------------------

/// The snapshot query: the view's columns as they are, the saga's with a `saga_` prefix.
static SNAPSHOT_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let view: Vec<String> = ORDER_COLUMNS
        .split(", ")
        .map(|c| format!("v.{c}"))
        .collect();
    format!(
        "SELECT {}, s.definition_version AS saga_definition_version, s.phase AS saga_phase,
                s.current_step AS saga_current_step, s.pending AS saga_pending,
                s.failure_reason AS saga_failure_reason, s.payment_token AS saga_payment_token,
                s.version AS saga_version, s.deadline_at AS saga_deadline_at,
                s.attempts AS saga_attempts, s.announced AS saga_announced,
                s.context AS saga_context, s.updated_at AS saga_updated_at
         FROM sagas s JOIN order_view v USING (order_id) WHERE s.order_id = $1",
        view.join(", ")
    )
});

struct SnapshotRow {
    order: OrderRow,
    definition_version: i32,
    phase: String,
    current_step: Option<String>,
    pending: Json<Vec<Step>>,
    failure_reason: String,
    payment_token: Option<String>,
    version: i64,
    deadline_at: Option<DateTime<Utc>>,
    attempts: i32,
    announced: bool,
    context: Json<Context>,
    updated_at: DateTime<Utc>,
}

impl<'r> FromRow<'r, PgRow> for SnapshotRow {
    fn from_row(row: &'r PgRow) -> sqlx::Result<SnapshotRow> {
        Ok(SnapshotRow {
            order: OrderRow::from_row(row)?,
            definition_version: row.try_get("saga_definition_version")?,
            phase: row.try_get("saga_phase")?,
            current_step: row.try_get("saga_current_step")?,
            pending: row.try_get("saga_pending")?,
            failure_reason: row.try_get("saga_failure_reason")?,
            payment_token: row.try_get("saga_payment_token")?,
            version: row.try_get("saga_version")?,
            deadline_at: row.try_get("saga_deadline_at")?,
            attempts: row.try_get("saga_attempts")?,
            announced: row.try_get("saga_announced")?,
            context: row.try_get("saga_context")?,
            updated_at: row.try_get("saga_updated_at")?,
        })
    }
}

impl SnapshotRow {
    fn into_snapshot(self, timeouts: &Timeouts) -> Snapshot {
        let current = self.current_step.as_deref().and_then(Step::from_name);
        // A saga from before deadlines were stored gets one from its last move.
        let deadline = self.deadline_at.unwrap_or_else(|| {
            let limit = current.map(|s| timeouts.for_step(s)).unwrap_or_default();
            self.updated_at + chrono::Duration::from_std(limit).unwrap_or_default()
        });
        let phase = Phase::parse(&self.phase);
        Snapshot {
            saga: Saga {
                order_id: self.order.order_id,
                definition_version: self.definition_version,
                phase,
                current,
                pending: self.pending.0,
                failure_reason: self.failure_reason,
                payment_token: self.payment_token,
                version: self.version,
                deadline,
                attempts: self.attempts,
                // Sagas from before the flag finished announced whenever they finished.
                announced: self.announced || phase == Phase::Done,
            },
            order: self.order,
            context: self.context.0,
        }
    }
}

// --- one entry ------------------------------------------------------------------------------

/// One journal entry, rendered to the columns the batch statement binds.
#[derive(Debug)]
struct Entry {
    order_id: Uuid,
    expected: i64,
    saga: Saga,
    steps: Vec<StepRow>,
    events: Vec<EventRow>,
    /// The view's mutable part afterwards, when the entry appends events.
    view: Option<Projection>,
    messages: Vec<Message>,
    /// The outcome event among `messages`, kept until the notification service has it.
    announcement: Option<Message>,
}

#[derive(Debug)]
struct StepRow {
    step: Step,
    /// `start`, `attempt` or `finish`.
    kind: &'static str,
    status: &'static str,
    error: String,
    attempts: i32,
}

#[derive(Debug)]
struct EventRow {
    id: Uuid,
    version: i64,
    event: OrderEvent,
}

impl Entry {
    fn new(
        journal: &Journal,
        seen: &Snapshot,
        decision: &Decision,
        appended: Vec<OrderEvent>,
    ) -> Result<Entry, JournalError> {
        let order_id = seen.saga.order_id;
        let tries = seen.saga.attempts + 1;
        let steps = decision
            .steps
            .iter()
            .map(|change| match change {
                StepChange::Start(step) => StepRow {
                    step: *step,
                    kind: "start",
                    status: "running",
                    error: String::new(),
                    attempts: 0,
                },
                StepChange::Attempt(step, error) => StepRow {
                    step: *step,
                    kind: "attempt",
                    status: "running",
                    error: error.clone(),
                    attempts: tries,
                },
                StepChange::Finish(step, error) => StepRow {
                    step: *step,
                    kind: "finish",
                    status: if error.is_some() {
                        "failed"
                    } else {
                        "succeeded"
                    },
                    error: error.clone().unwrap_or_default(),
                    attempts: tries,
                },
            })
            .collect();
        let mut projection = Projection::of(&seen.order);
        let mut events = Vec::new();
        let mut messages = Vec::new();
        let mut announcement = None;
        for event in appended {
            projection.apply(&event);
            let id = Uuid::now_v7();
            let outcome = match &event {
                OrderEvent::Confirmed {
                    confirmation_number,
                } => Some((
                    OutcomeKind::Confirmed,
                    confirmation_number.clone(),
                    String::new(),
                )),
                OrderEvent::Cancelled { reason } | OrderEvent::Failed { reason } => {
                    Some((OutcomeKind::Cancelled, String::new(), reason.clone()))
                }
                _ => None,
            };
            if let Some((kind, confirmation_number, reason)) = outcome
                && decision.announce.is_some()
            {
                let payload = serde_json::to_vec(&OrderOutcome {
                    event_id: id,
                    order_id,
                    kind,
                    confirmation_number,
                    reason,
                })?;
                let message = Message {
                    msg_id: id,
                    subject: journal
                        .order_events
                        .order_event_subject(kind.subject_token()),
                    payload,
                    headers: seen.context.clone(),
                };
                announcement = Some(message.clone());
                messages.push(message);
            }
            events.push(EventRow {
                id,
                version: projection.version,
                event,
            });
        }
        if let Some(reason) = &decision.dead_letter {
            messages.push(dead_letter(journal, seen, decision, reason)?);
        }
        Ok(Entry {
            order_id,
            expected: seen.saga.version,
            saga: decision.saga.clone(),
            steps,
            view: (!events.is_empty()).then_some(projection),
            events,
            messages,
            announcement,
        })
    }
}

/// The dead letter of a parked saga: its run ticket marked for redrive, with what
/// `ordermesh dlq` shows. Written with the entry that parks, so it cannot go missing.
fn dead_letter(
    journal: &Journal,
    seen: &Snapshot,
    decision: &Decision,
    reason: &str,
) -> Result<Message, JournalError> {
    let ticket = RunTicket {
        order_id: seen.saga.order_id,
        redrive: true,
    };
    let mut headers = seen.context.clone();
    headers.insert(
        dead_letter::ORIGINAL_SUBJECT.into(),
        journal.names.run_subject(),
    );
    headers.insert(
        dead_letter::DELIVERY_COUNT.into(),
        decision.saga.attempts.to_string(),
    );
    headers.insert(
        dead_letter::LAST_ERROR.into(),
        dead_letter::last_error(reason),
    );
    Ok(Message {
        msg_id: Uuid::now_v7(),
        subject: journal.names.dead_letter_subject(seen.saga.order_id),
        payload: serde_json::to_vec(&ticket)?,
        headers,
    })
}

// --- the writer -----------------------------------------------------------------------------

/// An entry waiting for the writer, and where its answer goes: the commit's `now()`, or
/// `None` when its compare-and-set lost.
struct Pending {
    entry: Entry,
    reply: oneshot::Sender<Result<Option<DateTime<Utc>>, JournalError>>,
}

/// The writer task: commits queued entries in batches until `shutdown`, then what is left.
async fn write(pool: PgPool, mut queue: mpsc::Receiver<Pending>, shutdown: CancellationToken) {
    // Entries for a saga already in the batch wait for the next one: one statement updates a
    // row once.
    let mut carried: VecDeque<Pending> = VecDeque::new();
    loop {
        let first = match carried.pop_front() {
            Some(p) => p,
            None => {
                // At shutdown the queue closes: what is in it is still committed, and callers
                // that come later are told the journal stopped (their tickets come back).
                let next = if shutdown.is_cancelled() {
                    queue.recv().await
                } else {
                    tokio::select! {
                        next = queue.recv() => next,
                        _ = shutdown.cancelled() => {
                            queue.close();
                            continue;
                        }
                    }
                };
                match next {
                    Some(p) => p,
                    None => return,
                }
            }
        };
        let mut batch = vec![first];
        let mut seen: HashSet<Uuid> = batch.iter().map(|p| p.entry.order_id).collect();
        let mut add = |p: Pending, batch: &mut Vec<Pending>, carried: &mut VecDeque<Pending>| {
            if seen.insert(p.entry.order_id) {
                batch.push(p);
            } else {
                carried.push_back(p);
            }
        };
        let mut later = VecDeque::new();
        while batch.len() < MAX_BATCH
            && let Some(p) = carried.pop_front()
        {
            add(p, &mut batch, &mut later);
        }
        carried.extend(later.drain(..));
        let until = tokio::time::Instant::now() + LINGER;
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(p) => add(p, &mut batch, &mut carried),
                Err(_) if batch.len() >= LINGER_BELOW => break,
                Err(_) => match tokio::time::timeout_at(until, queue.recv()).await {
                    Ok(Some(p)) => add(p, &mut batch, &mut carried),
                    _ => break,
                },
            }
        }
        commit(&pool, batch).await;
    }
}

/// Commits `batch` as one statement and answers every entry. A unique violation (a drawn
/// confirmation number already taken) fails the whole statement; then each entry is committed
/// alone, and the one that collided answers "conflict", to be decided again with a new number.
#[tracing::instrument(level = "debug", skip_all)]
async fn commit(pool: &PgPool, batch: Vec<Pending>) {
    crate::metrics::JOURNAL_BATCH.observe(batch.len() as f64);
    let entries: Vec<&Entry> = batch.iter().map(|p| &p.entry).collect();
    match apply(pool, &entries).await {
        Ok((moved, at)) => {
            for p in batch {
                let _ = p
                    .reply
                    .send(Ok(moved.contains(&p.entry.order_id).then_some(at)));
            }
        }
        Err(e) if db::is_code(&e, "23505") && batch.len() > 1 => {
            for p in batch {
                let answer = match apply(pool, &[&p.entry]).await {
                    Ok((moved, at)) => Ok(moved.contains(&p.entry.order_id).then_some(at)),
                    Err(e) if db::is_code(&e, "23505") => Ok(None),
                    Err(e) => Err(JournalError::Db(e)),
                };
                let _ = p.reply.send(answer);
            }
        }
        Err(e) if db::is_code(&e, "23505") => {
            for p in batch {
                let _ = p.reply.send(Ok(None));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, entries = batch.len(), "journal batch failed");
            let text = e.to_string();
            for p in batch {
                let _ = p.reply.send(Err(JournalError::Batch(text.clone())));
            }
        }
    }
}

/// Runs the batch statement; the orders whose compare-and-set held, and the commit's `now()`.
async fn apply(
    pool: &PgPool,
    entries: &[&Entry],
) -> Result<(HashSet<Uuid>, DateTime<Utc>), sqlx::Error> {
    let sagas = entries;
    let steps: Vec<(Uuid, &StepRow)> = entries
        .iter()
        .flat_map(|e| e.steps.iter().map(move |s| (e.order_id, s)))
        .collect();
    let events: Vec<(Uuid, &EventRow)> = entries
        .iter()
        .flat_map(|e| e.events.iter().map(move |v| (e.order_id, v)))
        .collect();
    let views: Vec<(Uuid, &Projection)> = entries
        .iter()
        .filter_map(|e| e.view.as_ref().map(|v| (e.order_id, v)))
        .collect();
    let messages: Vec<(Uuid, &Message)> = entries
        .iter()
        .flat_map(|e| e.messages.iter().map(move |m| (e.order_id, m)))
        .collect();
    let outbox = Columns::of(messages.iter().map(|(_, m)| *m));
    let announced: Vec<(Uuid, &Message)> = entries
        .iter()
        .filter_map(|e| e.announcement.as_ref().map(|m| (e.order_id, m)))
        .collect();
    let announcements = Columns::of(announced.iter().map(|(_, m)| *m));
    let payloads = events
        .iter()
        .map(|(_, e)| serde_json::to_value(&e.event).map(Json))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let rows = sqlx::query(BATCH_SQL)
        // $1..$10: the sagas
        .bind(sagas.iter().map(|e| e.order_id).collect::<Vec<_>>())
        .bind(sagas.iter().map(|e| e.expected).collect::<Vec<_>>())
        .bind(
            sagas
                .iter()
                .map(|e| e.saga.phase.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            sagas
                .iter()
                .map(|e| e.saga.current.map(Step::name))
                .collect::<Vec<_>>(),
        )
        .bind(
            sagas
                .iter()
                .map(|e| Json(e.saga.pending.clone()))
                .collect::<Vec<_>>(),
        )
        .bind(
            sagas
                .iter()
                .map(|e| e.saga.failure_reason.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            sagas
                .iter()
                .map(|e| e.saga.payment_token.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(sagas.iter().map(|e| e.saga.deadline).collect::<Vec<_>>())
        .bind(sagas.iter().map(|e| e.saga.attempts).collect::<Vec<_>>())
        .bind(sagas.iter().map(|e| e.saga.announced).collect::<Vec<_>>())
        // $11..$17: the timeline
        .bind(steps.iter().map(|(o, _)| *o).collect::<Vec<_>>())
        .bind(steps.iter().map(|(_, s)| s.step.name()).collect::<Vec<_>>())
        .bind(
            steps
                .iter()
                .map(|(_, s)| s.step.spec().compensation)
                .collect::<Vec<_>>(),
        )
        .bind(steps.iter().map(|(_, s)| s.kind).collect::<Vec<_>>())
        .bind(steps.iter().map(|(_, s)| s.status).collect::<Vec<_>>())
        .bind(
            steps
                .iter()
                .map(|(_, s)| s.error.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(steps.iter().map(|(_, s)| s.attempts).collect::<Vec<_>>())
        // $18..$22: the events
        .bind(events.iter().map(|(o, _)| *o).collect::<Vec<_>>())
        .bind(events.iter().map(|(_, e)| e.version).collect::<Vec<_>>())
        .bind(events.iter().map(|(_, e)| e.id).collect::<Vec<_>>())
        .bind(
            events
                .iter()
                .map(|(_, e)| e.event.event_type())
                .collect::<Vec<_>>(),
        )
        .bind(payloads)
        // $23..$28: the view
        .bind(views.iter().map(|(o, _)| *o).collect::<Vec<_>>())
        .bind(
            views
                .iter()
                .map(|(_, v)| v.status.as_str_name())
                .collect::<Vec<_>>(),
        )
        .bind(
            views
                .iter()
                .map(|(_, v)| v.confirmation_number.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            views
                .iter()
                .map(|(_, v)| v.tracking_number.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            views
                .iter()
                .map(|(_, v)| v.failure_reason.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(views.iter().map(|(_, v)| v.version).collect::<Vec<_>>())
        // $29..$33: the outbox
        .bind(messages.iter().map(|(o, _)| *o).collect::<Vec<_>>())
        .bind(&outbox.msg_ids)
        .bind(&outbox.subjects)
        .bind(&outbox.payloads)
        .bind(&outbox.headers)
        // $34..$38: the announcements
        .bind(announced.iter().map(|(o, _)| *o).collect::<Vec<_>>())
        .bind(&announcements.msg_ids)
        .bind(&announcements.subjects)
        .bind(&announcements.payloads)
        .bind(&announcements.headers)
        .fetch_all(pool)
        .await?;
    let mut moved = HashSet::new();
    let mut at = Utc::now();
    for row in rows {
        moved.insert(row.try_get::<Uuid, _>("order_id")?);
        at = row.try_get("at")?;
    }
    Ok((moved, at))
}

/// The batch statement: every CTE reads `moved`, so an entry whose compare-and-set missed
/// writes nothing at all.
const BATCH_SQL: &str = "WITH input AS (
         SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::text[], $5::jsonb[],
                              $6::text[], $7::text[], $8::timestamptz[], $9::int[], $10::bool[])
             AS i(order_id, expected, phase, current_step, pending, failure_reason, payment_token,
                  deadline_at, attempts, announced)
     ), moved AS (
         UPDATE sagas s SET version = i.expected + 1, phase = i.phase, current_step = i.current_step,
                pending = i.pending, failure_reason = i.failure_reason, payment_token = i.payment_token,
                deadline_at = i.deadline_at, attempts = i.attempts, announced = i.announced,
                updated_at = now()
         FROM input i WHERE s.order_id = i.order_id AND s.version = i.expected
         RETURNING s.order_id
     ), step_input AS (
         SELECT * FROM unnest($11::uuid[], $12::text[], $13::bool[], $14::text[], $15::text[],
                              $16::text[], $17::int[])
             AS t(order_id, step, compensation, kind, status, error, attempts)
         WHERE t.order_id IN (SELECT order_id FROM moved)
     ), step_ends AS (
         UPDATE saga_steps r SET status = t.status, error = t.error,
                attempts = greatest(r.attempts, t.attempts),
                started_at = coalesce(r.started_at, now()),
                finished_at = CASE WHEN t.kind = 'finish' THEN now() END
         FROM step_input t
         WHERE t.kind <> 'start' AND r.order_id = t.order_id AND r.step = t.step
     ), step_starts AS (
         INSERT INTO saga_steps (order_id, step, compensation, status, started_at)
         SELECT order_id, step, compensation, status, now() FROM step_input WHERE kind = 'start'
         ON CONFLICT (order_id, step) DO UPDATE SET status = EXCLUDED.status, queued_at = now(),
                started_at = now(), finished_at = NULL, error = '', attempts = 0
     ), events AS (
         INSERT INTO order_events (order_id, version, event_id, event_type, payload)
         SELECT e.order_id, e.version, e.event_id, e.event_type, e.payload
         FROM unnest($18::uuid[], $19::bigint[], $20::uuid[], $21::text[], $22::jsonb[])
             AS e(order_id, version, event_id, event_type, payload)
         WHERE e.order_id IN (SELECT order_id FROM moved)
     ), view AS (
         UPDATE order_view v SET status = w.status, confirmation_number = w.confirmation_number,
                tracking_number = w.tracking_number, failure_reason = w.failure_reason,
                version = w.version, updated_at = now()
         FROM unnest($23::uuid[], $24::text[], $25::text[], $26::text[], $27::text[], $28::bigint[])
             AS w(order_id, status, confirmation_number, tracking_number, failure_reason, version)
         WHERE v.order_id = w.order_id AND w.order_id IN (SELECT order_id FROM moved)
     ), outbox AS (
         INSERT INTO outbox (msg_id, subject, payload, headers)
         SELECT o.msg_id, o.subject, o.payload, o.headers
         FROM unnest($29::uuid[], $30::uuid[], $31::text[], $32::bytea[], $33::jsonb[])
             AS o(order_id, msg_id, subject, payload, headers)
         WHERE o.order_id IN (SELECT order_id FROM moved)
     ), announced AS (
         INSERT INTO announcements (event_id, order_id, subject, payload, headers)
         SELECT a.event_id, a.order_id, a.subject, a.payload, a.headers
         FROM unnest($34::uuid[], $35::uuid[], $36::text[], $37::bytea[], $38::jsonb[])
             AS a(order_id, event_id, subject, payload, headers)
         WHERE a.order_id IN (SELECT order_id FROM moved)
     )
     SELECT order_id, now() AS at FROM moved";

// --- the timeline ---------------------------------------------------------------------------

#[derive(sqlx::FromRow)]
struct TimelineRow {
    step: String,
    compensation: bool,
    status: String,
    attempts: i32,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    error: String,
}

/// The saga's steps in execution order.
#[tracing::instrument(level = "debug", skip_all, fields(%order_id))]
pub async fn timeline(pool: &PgPool, order_id: Uuid) -> Result<Vec<SagaStep>, JournalError> {
    let rows: Vec<TimelineRow> = sqlx::query_as(
        "SELECT step, compensation, status, attempts, started_at, finished_at, error FROM saga_steps
         WHERE order_id = $1 ORDER BY queued_at, compensation",
    )
    .bind(order_id)
    .fetch_all(pool)
    .await?;
    Ok(rows
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
                (Some(s), Some(f)) => (f - s).to_std().ok().map(|d| prost_types::Duration {
                    seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                    nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
                }),
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
        .collect())
}
