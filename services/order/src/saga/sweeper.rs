//! The safety net for a lost run ticket. JetStream acknowledges a publish before it reaches the
//! disk, and the outbox row is gone once acknowledged, so a power loss can take a ticket with it;
//! PostgreSQL stays the truth. Every `sweep_every`, one instance at a time (a transaction-scoped
//! advisory lock) re-issues a ticket for each unfinished saga that has not moved for longer than
//! any legitimate wait (`stall_after`), a bounded batch per round, through the outbox. This is
//! never the timer — redelivery is — only the net under it. Re-issuing is always safe: a
//! duplicate ticket finds its saga running (the runner drops it, or its journal write loses the
//! compare-and-set) or terminal (acked).

use std::time::Duration;

use sqlx::{PgPool, types::Json};
use tokio_util::sync::CancellationToken;
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

/// How often and after how long without a move.
#[derive(Debug, Clone, Copy)]
pub struct Sweep {
    pub every: Duration,
    pub stall_after: Duration,
}

/// Sweeps until `shutdown`.
pub async fn run(
    pool: PgPool,
    names: Names,
    outbox: Outbox,
    sweep: Sweep,
    shutdown: CancellationToken,
) {
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
    }
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
    let rows = super::outbox::Columns::of(&messages);
    sqlx::query(
        "INSERT INTO outbox (msg_id, subject, payload, headers)
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::bytea[], $4::jsonb[])",
    )
    .bind(&rows.msg_ids)
    .bind(&rows.subjects)
    .bind(&rows.payloads)
    .bind(&rows.headers)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(messages)
}
