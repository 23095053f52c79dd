//! Runs sagas from their run tickets. A durable pull consumer hands a ticket to a runner when
//! one of this instance's `concurrency` slots is free; the runner loads the saga (one read) and
//! drives it forward in-process — decide, call, record — step after step, keeping the ticket
//! alive with in-progress acks. It acks the ticket when the saga is terminal, and NAKs it with
//! a delay when the saga must wait (a retry's backoff, a parked step's deadline): no process
//! holds a waiting saga, and the redelivery is its durable timer. A runner that dies loses
//! nothing: the ticket comes back after its ack wait and the saga resumes from its journal,
//! re-issuing at most the call it was in (which the callee answers from its idempotency store).

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use chrono::Utc;
use ordermesh::{context::CallContext, events::dead_letter};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use super::{
    crash_point::{self, Boundary},
    decide::{Input, Next, next, retry_delay},
    journal::{Journal, JournalError, Recorded, Snapshot},
    messages::RunTicket,
    outbox::Message,
    steps::{Answer, Callees},
};

/// How soon a ticket comes back when the journal could not be reached.
const UNAVAILABLE_RETRY: Duration = Duration::from_secs(1);

/// What to do with a ticket once its runner returns.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// The saga is terminal (or unknown): the ticket is done.
    Done,
    /// Nothing to do before this much time has passed.
    Wait(Duration),
}

/// Everything a runner needs; one per instance, shared by its runs.
pub struct Runner {
    pub journal: Journal,
    pub callees: Callees,
    /// Transient failures of one step before it gives up (`ORDERMESH_SAGA__MAX_DELIVER`).
    pub max_attempts: i32,
    /// The run consumer's ack wait (`ORDERMESH_SAGA__TICKET_ACK_WAIT`): a held ticket gets an
    /// in-progress ack three times per period.
    pub ack_wait: Duration,
    /// Sagas a runner of this instance is driving now: a duplicate ticket for one of them (a
    /// re-issue, a redelivery racing its own runner) is dropped, since the live run holds its
    /// own ticket.
    running: Mutex<HashSet<Uuid>>,
}

impl Runner {
    pub fn new(
        journal: Journal,
        callees: Callees,
        max_attempts: i32,
        ack_wait: Duration,
    ) -> Runner {
        Runner {
            journal,
            callees,
            max_attempts: max_attempts.max(1),
            ack_wait,
            running: Mutex::new(HashSet::new()),
        }
    }
}

/// Consumes run tickets until `shutdown`, at most `concurrency` sagas at once, then waits for
/// the runs in flight.
pub async fn run(
    runner: Arc<Runner>,
    consumer: PullConsumer,
    concurrency: usize,
    shutdown: CancellationToken,
) {
    ordermesh::nats::consume(
        "saga_runs",
        consumer,
        concurrency,
        shutdown,
        move |message| {
            let runner = runner.clone();
            async move { runner.handle(message).await }
        },
    )
    .await;
}

/// Removes its saga from [`Runner::running`] when the run ends, however it ends.
struct Claim<'a> {
    runner: &'a Runner,
    order_id: Uuid,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if let Ok(mut running) = self.runner.running.lock() {
            running.remove(&self.order_id);
        }
    }
}

impl Runner {
    fn claim(&self, order_id: Uuid) -> Option<Claim<'_>> {
        let fresh = self.running.lock().ok()?.insert(order_id);
        // Built only for a fresh claim: dropping one releases it.
        fresh.then(|| Claim {
            runner: self,
            order_id,
        })
    }

    async fn handle(&self, message: jetstream::Message) {
        let info = message.info().ok();
        let delivered = info.as_ref().map_or(1, |i| i.delivered);
        if let Some(info) = info.filter(|i| i.delivered == 1) {
            let waited = time::OffsetDateTime::now_utc() - info.published;
            crate::metrics::STEP_DELIVERY_WAIT.observe(waited.as_seconds_f64().max(0.0));
        }
        let ticket: RunTicket = match serde_json::from_slice(&message.payload) {
            Ok(t) => t,
            Err(error) => {
                self.undecodable(&message, delivered, &error.to_string())
                    .await;
                return;
            }
        };
        let Some(_claim) = self.claim(ticket.order_id) else {
            let _ = message.ack().await; // its saga is running here already
            return;
        };
        let span = tracing::info_span!(
            "saga.run",
            order_id = %ticket.order_id,
            delivery = delivered,
            trace_id = tracing::field::Empty,
        );
        let context = ordermesh::context::adopt_message(&span, message.headers.as_ref());
        let work = self.drive(&ticket, context).instrument(span.clone());
        let verdict = with_progress(&message, self.ack_wait / 3, work).await;
        let _enter = span.enter();
        match verdict {
            Verdict::Done => {
                let _ = message.ack().await;
            }
            Verdict::Wait(delay) => {
                tracing::debug!(?delay, "saga waits");
                let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
            }
        }
    }

    /// Drives the saga of `ticket` until it is terminal or must wait.
    async fn drive(&self, ticket: &RunTicket, context: CallContext) -> Verdict {
        let mut seen = match self.journal.load(ticket.order_id).await {
            Ok(Some(s)) => s,
            Ok(None) => {
                tracing::warn!("run ticket for an unknown saga; dropping it");
                return Verdict::Done;
            }
            Err(error) => return unavailable(&error),
        };
        if ticket.redrive {
            match self.record(seen, Input::Redriven).await {
                Ok((s, _)) => seen = s,
                Err(verdict) => return verdict,
            }
        }
        loop {
            let now = Utc::now();
            match next(&seen.saga, now) {
                Next::Finished => return Verdict::Done,
                Next::WaitUntil(until) => {
                    return Verdict::Wait((until - now).to_std().unwrap_or_default());
                }
                Next::TimedOut(step) => match self.record(seen, Input::TimedOut(step)).await {
                    Ok((s, _)) => seen = s,
                    Err(verdict) => return verdict,
                },
                Next::Call(step) => {
                    let span = tracing::info_span!(
                        "saga.step",
                        order_id = %seen.saga.order_id,
                        step = step.name(),
                        attempt = seen.saga.attempts + 1,
                    );
                    let mut call_context = context.clone();
                    let left = (seen.saga.deadline - now).to_std().unwrap_or_default();
                    call_context.deadline = Some(std::time::Instant::now() + left);
                    crash_point::pass(step, Boundary::BeforeCall).await;
                    let answer = call_context
                        .scope(self.callees.call(step, &seen))
                        .instrument(span.clone())
                        .await;
                    let input = span.in_scope(|| match answer {
                        Answer::Done(event) => Input::Succeeded(step, event),
                        Answer::Refused(reason) => {
                            tracing::info!(%reason, "step refused; compensating");
                            Input::Refused(step, reason)
                        }
                        Answer::Failed(error) if seen.saga.attempts + 1 >= self.max_attempts => {
                            tracing::warn!(%error, "step gave up; saga parked");
                            Input::GaveUp(step, error)
                        }
                        Answer::Failed(error) => {
                            tracing::info!(%error, "step failed; will retry");
                            Input::Retrying(step, error)
                        }
                    });
                    crash_point::pass(step, Boundary::AfterCall).await;
                    let retrying = matches!(input, Input::Retrying(..));
                    let moved = match self.record(seen, input).instrument(span).await {
                        Ok((s, moved)) => {
                            seen = s;
                            if moved {
                                crash_point::pass(step, Boundary::AfterCheckpoint).await;
                            }
                            moved
                        }
                        Err(verdict) => return verdict,
                    };
                    if retrying && moved {
                        let delay = retry_delay(&seen.saga, Utc::now(), &self.journal.timeouts);
                        return Verdict::Wait(delay);
                    }
                }
            }
        }
    }

    /// Records `input`: the saga afterwards and true, or — when the input found the saga moved
    /// (a cancel, another runner) — the saga read again and false; or the verdict when the
    /// journal cannot be reached.
    async fn record(&self, seen: Snapshot, input: Input) -> Result<(Snapshot, bool), Verdict> {
        let order_id = seen.saga.order_id;
        match self.journal.record(&seen, input).await {
            Ok(Recorded::Moved(after, _)) => Ok((*after, true)),
            Ok(Recorded::Unchanged | Recorded::Conflict) => match self.journal.load(order_id).await
            {
                Ok(Some(fresh)) => Ok((fresh, false)),
                Ok(None) => Err(Verdict::Done),
                Err(error) => Err(unavailable(&error)),
            },
            Err(error) => Err(unavailable(&error)),
        }
    }

    /// A ticket nobody can read goes to the dead letters as it is — through the outbox, so it
    /// is either kept there or redelivered, never dropped — and leaves the run stream.
    async fn undecodable(&self, message: &jetstream::Message, delivered: i64, error: &str) {
        crate::metrics::DEAD_LETTERS
            .with_label_values(&["undecodable"])
            .inc();
        let mut headers = ordermesh::context::message_headers();
        headers.insert(
            dead_letter::ORIGINAL_SUBJECT.into(),
            message.subject.to_string(),
        );
        headers.insert(dead_letter::DELIVERY_COUNT.into(), delivered.to_string());
        headers.insert(
            dead_letter::LAST_ERROR.into(),
            dead_letter::last_error(&format!("undecodable run ticket: {error}")),
        );
        let letter = Message {
            msg_id: Uuid::now_v7(),
            subject: self.journal.names.undecodable_subject(),
            payload: message.payload.to_vec(),
            headers,
        };
        let written = match self.journal.pool().acquire().await {
            Ok(mut conn) => super::outbox::write(&mut conn, std::slice::from_ref(&letter)).await,
            Err(error) => Err(error),
        };
        match written {
            Ok(()) => {
                self.journal.outbox.hand_over(vec![letter]);
                let _ = message.ack_with(AckKind::Term).await;
            }
            Err(error) => {
                tracing::warn!(%error, "could not keep an undecodable ticket; will retry");
                let _ = message
                    .ack_with(AckKind::Nak(Some(UNAVAILABLE_RETRY)))
                    .await;
            }
        }
    }
}

fn unavailable(error: &JournalError) -> Verdict {
    tracing::warn!(%error, "saga journal unavailable; the ticket comes back");
    Verdict::Wait(UNAVAILABLE_RETRY)
}

/// Runs `work` while telling JetStream every so often that the ticket is still held, so a long
/// run is not handed to another runner while a dead runner's ticket is, quickly.
async fn with_progress<T>(
    message: &jetstream::Message,
    every: Duration,
    work: impl std::future::Future<Output = T>,
) -> T {
    tokio::pin!(work);
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await; // the first tick is immediate
    loop {
        tokio::select! {
            result = &mut work => return result,
            _ = ticker.tick() => {
                let _ = message.ack_with(AckKind::Progress).await;
            }
        }
    }
}
