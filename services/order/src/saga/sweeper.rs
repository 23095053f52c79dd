//! The safety net for lost messages. JetStream acknowledges a publish before it reaches the
//! disk, and the outbox row is gone once acknowledged, so a power loss can take a run ticket or
//! an outcome event with it; PostgreSQL stays the truth. Every `sweep_every`, one instance at a
//! time (a transaction-scoped advisory lock), in bounded batches, through the outbox:
//! - re-issues a ticket for each unfinished saga that has not moved for longer than any
//!   legitimate wait (`stall_after`). This is never the timer — redelivery is — only the net
//!   under it. A duplicate ticket finds its saga running (the runner drops it, or its journal
//!   write loses the compare-and-set) or terminal (acked);
//! - asks the notification service which outcome events announced longer than `stall_after`
//!   ago it has notified (`announcements`), forgets those, and re-publishes the others. A
//!   duplicate event is dropped by the notification service (one notification per event id).

use std::{collections::HashSet, time::Duration};

use ordermesh::{
    client::Propagate,
    proto::notification::{
        FindNotifiedRequest, notification_service_client::NotificationServiceClient,
    },
};
use sqlx::{PgPool, types::Json};
use tokio_util::sync::CancellationToken;
use tonic::{service::interceptor::InterceptedService, transport::Channel};
use uuid::Uuid;

use super::{
    definition::TABLE,
    journal::Context,
    messages::{Names, RunTicket},
    outbox::{Message, Outbox},
};

/// Sagas re-issued per round at most.
const BATCH: i64 = 500;

/// The advisory lock key that makes one instance sweep at a time ("saga-sweeper").
const LOCK: i64 = 0x5341_4741_5357_4550;

/// Announcements asked about per call (the notification service's limit).
const ASK: i64 = 1_000;

/// Rounds of announcements per sweep at most: a backlog is worked off over several sweeps.
const ASK_ROUNDS: usize = 20;

/// The notification service, as the sweeper asks it.
pub type Notifications = NotificationServiceClient<InterceptedService<Channel, Propagate>>;

/// How often and after how long without a move.
#[derive(Debug, Clone, Copy)]
pub struct Sweep {
    pub every: Duration,
    pub stall_after: Duration,
}

/// What the sweeper works with.
pub struct Sweeper {
    pub pool: PgPool,
    pub names: Names,
    pub outbox: Outbox,
    pub notifications: Notifications,
    pub sweep: Sweep,
}

/// Sweeps until `shutdown`.
pub async fn run(sweeper: Sweeper, shutdown: CancellationToken) {
    let Sweeper {
        pool,
        names,
        outbox,
        mut notifications,
        sweep,
    } = sweeper;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(sweep.every) => {}
        }
        match reissue(&pool, &names, sweep.stall_after).await {
            Ok(messages) if messages.is_empty() => {}
            Ok(messages) => {
                tracing::warn!(
                    sagas = messages.len(),
                    "re-issued run tickets of stalled sagas"
                );
                crate::metrics::TICKETS_REISSUED.inc_by(messages.len() as u64);
                outbox.hand_over(messages);
            }
            Err(error) => tracing::warn!(%error, "saga sweep failed; will retry"),
        }
        for _ in 0..ASK_ROUNDS {
            match reannounce(&pool, &mut notifications, sweep.stall_after).await {
                Ok(Round { asked: 0, .. }) => break,
                Ok(Round { lost, asked }) => {
                    if !lost.is_empty() {
                        tracing::warn!(
                            events = lost.len(),
                            "re-published outcome events the notification service never got"
                        );
                        crate::metrics::EVENTS_REPUBLISHED.inc_by(lost.len() as u64);
                        outbox.hand_over(lost);
                    }
                    if asked < ASK as usize {
                        break;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "checking announced outcome events failed; will retry");
                    break;
                }
            }
        }
    }
}

/// One round of [`reannounce`]: how many announcements were asked about, and the events
/// re-published.
struct Round {
    asked: usize,
    lost: Vec<Message>,
}

#[derive(Debug, thiserror::Error)]
enum SweepError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("asking the notification service: {0}")]
    Ask(#[from] tonic::Status),
}

#[derive(sqlx::FromRow)]
struct Announcement {
    event_id: Uuid,
    subject: String,
    payload: Vec<u8>,
    headers: Json<Context>,
}

/// Asks about the oldest announcements made before `stall_after` (not retried since): forgets
/// the notified ones, and writes the others to the outbox again, marked retried.
async fn reannounce(
    pool: &PgPool,
    notifications: &mut Notifications,
    stall_after: Duration,
) -> Result<Round, SweepError> {
    let nothing = || Round {
        asked: 0,
        lost: Vec::new(),
    };
    let mut tx = pool.begin().await?;
    let leader: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(LOCK + 1)
        .fetch_one(&mut *tx)
        .await?;
    if !leader {
        return Ok(nothing());
    }
    // Event ids are UUIDv7: the oldest come first in the primary key.
    let stall = chrono::Duration::from_std(stall_after).unwrap_or_default();
    let before = uuid_at(chrono::Utc::now() - stall);
    let rows: Vec<Announcement> = sqlx::query_as(
        "SELECT event_id, subject, payload, headers FROM announcements
         WHERE event_id < $1 AND (retried_at IS NULL OR retried_at < now() - make_interval(secs => $2))
         ORDER BY event_id LIMIT $3",
    )
    .bind(before)
    .bind(stall_after.as_secs_f64())
    .bind(ASK)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Ok(nothing());
    }
    let asked = rows.len();
    let event_ids: Vec<String> = rows.iter().map(|r| r.event_id.to_string()).collect();
    let found = notifications
        .find_notified(FindNotifiedRequest { event_ids })
        .await?
        .into_inner()
        .event_ids;
    let notified: HashSet<Uuid> = found
        .iter()
        .filter_map(|id| Uuid::parse_str(id).ok())
        .collect();
    let (done, lost): (Vec<Announcement>, Vec<Announcement>) = rows
        .into_iter()
        .partition(|r| notified.contains(&r.event_id));
    let done_ids: Vec<Uuid> = done.iter().map(|r| r.event_id).collect();
    sqlx::query("DELETE FROM announcements WHERE event_id = ANY($1)")
        .bind(&done_ids)
        .execute(&mut *tx)
        .await?;
    let messages: Vec<Message> = lost
        .into_iter()
        .map(|r| Message {
            // The event's own id: the notification service de-duplicates by it.
            msg_id: r.event_id,
            subject: r.subject,
            payload: r.payload,
            headers: r.headers.0,
        })
        .collect();
    let ids: Vec<Uuid> = messages.iter().map(|m| m.msg_id).collect();
    sqlx::query("UPDATE announcements SET retried_at = now() WHERE event_id = ANY($1)")
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    super::outbox::write(&mut tx, &messages).await?;
    tx.commit().await?;
    Ok(Round {
        asked,
        lost: messages,
    })
}

/// The smallest UUIDv7 of instant `at`: every id made before `at` sorts below it.
fn uuid_at(at: chrono::DateTime<chrono::Utc>) -> Uuid {
    let millis = u64::try_from(at.timestamp_millis()).unwrap_or(0);
    uuid::Builder::from_unix_timestamp_millis(millis, &[0; 10]).into_uuid()
}

/// Writes a fresh ticket to the outbox for every stalled saga (marking it moved, so the next
/// round leaves it alone for another `stall_after`); the tickets, for the relay.
async fn reissue(
    pool: &PgPool,
    names: &Names,
    stall_after: Duration,
) -> Result<Vec<Message>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let leader: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(LOCK)
        .fetch_one(&mut *tx)
        .await?;
    if !leader {
        return Ok(Vec::new());
    }
    // Unfinished sagas are few (those in flight), and the partial index on phase finds them.
    let stalled: Vec<(Uuid, Json<Context>)> = sqlx::query_as(
        "UPDATE sagas SET updated_at = now() WHERE order_id IN (
             SELECT order_id FROM sagas
             WHERE phase <> 'done' AND updated_at < now() - make_interval(secs => $1)
               AND (phase <> 'parked' OR (deadline_at < now() AND current_step = ANY($3)))
             ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED)
         RETURNING order_id, context",
    )
    .bind(stall_after.as_secs_f64())
    .bind(BATCH)
    // A parked forward step compensates at its deadline; a parked compensation is FAILED and
    // waits for an operator.
    .bind(
        TABLE
            .iter()
            .filter(|s| !s.compensation)
            .map(|s| s.step.name())
            .collect::<Vec<_>>(),
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut messages = Vec::with_capacity(stalled.len());
    for (order_id, context) in stalled {
        let ticket = RunTicket {
            order_id,
            redrive: false,
        };
        let payload = serde_json::to_vec(&ticket).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        messages.push(Message {
            msg_id: Uuid::now_v7(),
            subject: names.run_subject(),
            payload,
            headers: context.0,
        });
    }
    super::outbox::write(&mut tx, &messages).await?;
    tx.commit().await?;
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_made_before_an_instant_sort_below_its_bound_and_later_ones_above() {
        let earlier = Uuid::now_v7();
        std::thread::sleep(Duration::from_millis(2));
        let bound = uuid_at(chrono::Utc::now());
        std::thread::sleep(Duration::from_millis(2));
        let later = Uuid::now_v7();
        assert!(
            earlier < bound && bound < later,
            "{earlier} {bound} {later}"
        );
    }
}
