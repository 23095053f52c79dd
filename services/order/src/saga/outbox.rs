//! Transactional outbox. State changes write their messages to the `outbox` table in the same
//! statement as the change itself, and after the commit hand the same messages to the relay
//! in-process ([`Outbox::hand_over`]). The relay publishes them to JetStream (pipelined
//! publishes, acks awaited together) with `Nats-Msg-Id` = the message id, and deletes the rows
//! of everything it published in one statement every [`DELETE_EVERY`]. The table stays the
//! source of truth: rows the relay never got (a crash, a full queue, a failed publish, another
//! replica's crash) are found by a poll once they are older than [`STALE`] and published from
//! there. Publishing one twice is harmless: JetStream drops the second copy as a duplicate. No
//! dual writes anywhere.
//!
//! Why the hand-over: reading back rows that the writer had in memory a moment before cost a
//! `BEGIN` / `SELECT ... FOR UPDATE` / `DELETE` / `COMMIT` per batch, a third of the order
//! database's statements at load.

use std::{collections::BTreeMap, time::Duration};

use async_nats::jetstream::{self, message::PublishMessage};
use sqlx::{PgPool, types::Json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Rows published per round trip.
const BATCH: usize = 256;

/// Handed-over batches the relay may have queued before further ones are left to the poll.
const QUEUE: usize = 4096;

/// How often the relay looks for rows nobody handed over.
const POLL: Duration = Duration::from_secs(1);

/// How long published rows wait to be deleted together. One statement per batch cost a
/// statement for nearly every message at moderate rates (batches were one or two messages), a
/// third of the order database's statements; a row that outlives its publish by this much
/// is harmless (see [`STALE`]).
const DELETE_EVERY: Duration = Duration::from_millis(100);

/// Published rows awaiting deletion beyond which they are deleted at once.
const DELETE_BATCH: usize = 4096;

/// A row older than this is the poll's: the relay would have published a handed-over one by
/// then.
const STALE: Duration = Duration::from_secs(2);

/// One message bound for JetStream.
#[derive(Debug, Clone)]
pub struct Message {
    /// `Nats-Msg-Id`: JetStream de-duplicates re-publishes by it.
    pub msg_id: Uuid,
    pub subject: String,
    pub payload: Vec<u8>,
    /// Trace, request id, baggage and canary version of the change that wrote it.
    pub headers: BTreeMap<String, String>,
}

impl Message {
    /// A message carrying the current call's propagation headers.
    pub fn new(msg_id: Uuid, subject: String, payload: Vec<u8>) -> Message {
        Message {
            msg_id,
            subject,
            payload,
            headers: ordermesh::context::message_headers(),
        }
    }
}

/// Messages as the four arrays the `INSERT INTO outbox ... SELECT FROM unnest(...)` of a
/// transition binds.
#[derive(Debug, Default)]
pub struct Columns {
    pub msg_ids: Vec<Uuid>,
    pub subjects: Vec<String>,
    pub payloads: Vec<Vec<u8>>,
    pub headers: Vec<Json<BTreeMap<String, String>>>,
}

impl Columns {
    pub fn of<'a>(messages: impl IntoIterator<Item = &'a Message>) -> Columns {
        let mut columns = Columns::default();
        for m in messages {
            columns.msg_ids.push(m.msg_id);
            columns.subjects.push(m.subject.clone());
            columns.payloads.push(m.payload.clone());
            columns.headers.push(Json(m.headers.clone()));
        }
        columns
    }
}

/// The sending side of the relay, held by everything that writes outbox rows.
#[derive(Debug, Clone)]
pub struct Outbox(mpsc::Sender<Vec<Message>>);

/// The relay's side; see [`relay`].
pub struct Inbox(mpsc::Receiver<Vec<Message>>);

pub fn channel() -> (Outbox, Inbox) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (Outbox(tx), Inbox(rx))
}

impl Outbox {
    /// Call after the statement that wrote `messages` committed. Never blocks: with the queue
    /// full (JetStream slow or down) the rows wait for the poll instead.
    pub fn hand_over(&self, messages: Vec<Message>) {
        if !messages.is_empty() && self.0.try_send(messages).is_err() {
            tracing::debug!("outbox relay queue full; the poll will publish these rows");
        }
    }
}

/// Writes `messages` to the outbox outside a journal entry (a ticket re-issue, a republished
/// event, the dead letter of an unreadable ticket), in the caller's transaction. A message
/// whose id is there already is left as it is. Hand them over once that commits.
pub async fn write(conn: &mut sqlx::PgConnection, messages: &[Message]) -> Result<(), sqlx::Error> {
    let rows = Columns::of(messages);
    sqlx::query(
        "INSERT INTO outbox (msg_id, subject, payload, headers)
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::bytea[], $4::jsonb[])
         ON CONFLICT (msg_id) DO NOTHING",
    )
    .bind(&rows.msg_ids)
    .bind(&rows.subjects)
    .bind(&rows.payloads)
    .bind(&rows.headers)
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("publishing to JetStream: {0}")]
    Publish(String),
}

/// Publishes handed-over messages as they come and stale rows every [`POLL`], until `shutdown`.
/// Safe with several replicas: the poll claims rows with `FOR UPDATE SKIP LOCKED`, and a
/// message published by two of them is de-duplicated by JetStream.
pub async fn relay(
    pool: PgPool,
    js: jetstream::Context,
    mut inbox: Inbox,
    shutdown: CancellationToken,
) {
    // Deleting published rows need not wait for a WAL flush: a delete lost in a crash only
    // means the poll publishes those rows again, and JetStream (or the consumers' idempotency)
    // drops the copies. Its own small pool, so no other statement runs without the flush.
    let options = (*pool.connect_options())
        .clone()
        .options([("synchronous_commit", "off")]);
    let deletes = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with(options);
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sweep = tokio::time::interval(DELETE_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut published = Published::default();
    let mut failures = 0u32;
    loop {
        let result = tokio::select! {
            _ = shutdown.cancelled() => {
                published.delete(&deletes).await;
                return;
            }
            Some(first) = inbox.0.recv() => {
                let mut batch = first;
                while batch.len() < BATCH {
                    match inbox.0.try_recv() {
                        Ok(more) => batch.extend(more),
                        Err(_) => break,
                    }
                }
                let sent = publish(&js, &batch).await;
                if sent.is_ok() {
                    published.add(&batch);
                    if published.0.len() >= DELETE_BATCH {
                        published.delete(&deletes).await;
                    }
                }
                sent
            }
            _ = sweep.tick() => {
                published.delete(&deletes).await;
                Ok(())
            }
            _ = poll.tick() => {
                if let Err(error) = export_lag(&pool).await {
                    tracing::debug!(%error, "could not measure the outbox lag");
                }
                publish_stale(&pool, &js).await
            }
        };
        match result {
            Ok(()) => failures = 0,
            Err(error) => {
                // The rows stay in the table; the poll publishes them once NATS is back.
                failures += 1;
                tracing::warn!(%error, failures, "outbox relay failed; the poll will retry");
                let pause = Duration::from_millis(200 * u64::from(failures.min(10)));
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

/// Ids of handed-over messages JetStream has stored, whose rows are still to be deleted.
#[derive(Default)]
struct Published(Vec<Uuid>);

impl Published {
    fn add(&mut self, batch: &[Message]) {
        self.0.extend(batch.iter().map(|m| m.msg_id));
    }

    /// Deletes the rows (on a pool without synchronous commit). A failed delete is only
    /// logged: its rows reach the poll after [`STALE`] and their re-publish is de-duplicated.
    async fn delete(&mut self, pool: &PgPool) {
        if self.0.is_empty() {
            return;
        }
        let ids = std::mem::take(&mut self.0);
        if let Err(error) = sqlx::query("DELETE FROM outbox WHERE msg_id = ANY($1)")
            .bind(&ids)
            .execute(pool)
            .await
        {
            tracing::warn!(%error, rows = ids.len(), "could not delete published outbox rows; the poll will re-publish them");
        }
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    msg_id: Uuid,
    subject: String,
    payload: Vec<u8>,
    headers: Json<BTreeMap<String, String>>,
}

/// Publishes rows older than [`STALE`] (nobody handed them over), a batch at a time.
#[tracing::instrument(level = "debug", skip_all)]
async fn publish_stale(pool: &PgPool, js: &jetstream::Context) -> Result<(), RelayError> {
    loop {
        let mut tx = pool.begin().await?;
        let rows: Vec<Row> = sqlx::query_as(
            "DELETE FROM outbox WHERE msg_id IN (
                 SELECT msg_id FROM outbox WHERE created_at < now() - make_interval(secs => $2)
                 ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED)
             RETURNING msg_id, subject, payload, headers",
        )
        .bind(BATCH as i64)
        .bind(STALE.as_secs_f64())
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(());
        }
        let full = rows.len() == BATCH;
        let messages: Vec<Message> = rows
            .into_iter()
            .map(|r| Message {
                msg_id: r.msg_id,
                subject: r.subject,
                payload: r.payload,
                headers: r.headers.0,
            })
            .collect();
        // A failed publish drops the transaction: the rows are back for the next poll.
        publish(js, &messages).await?;
        tx.commit().await?;
        tracing::debug!(published = messages.len(), "stale outbox rows published");
        if !full {
            return Ok(());
        }
    }
}

/// Publishes `messages` pipelined and waits until JetStream stored every one.
#[tracing::instrument(level = "debug", skip_all)]
async fn publish(js: &jetstream::Context, messages: &[Message]) -> Result<(), RelayError> {
    let mut acks = Vec::with_capacity(messages.len());
    for m in messages {
        let mut headers = async_nats::HeaderMap::new();
        for (name, value) in &m.headers {
            headers.insert(name.as_str(), value.as_str());
        }
        let publish = PublishMessage::build()
            .payload(m.payload.clone().into())
            .message_id(m.msg_id.to_string())
            .headers(headers);
        let ack = js
            .send_publish(m.subject.clone(), publish)
            .await
            .map_err(|e| RelayError::Publish(e.to_string()))?;
        acks.push(ack);
    }
    for ack in acks {
        ack.await.map_err(|e| RelayError::Publish(e.to_string()))?;
    }
    crate::metrics::OUTBOX_PUBLISHED.inc_by(messages.len() as u64);
    Ok(())
}

/// Publishes the backlog and the age of its oldest row as metrics.
async fn export_lag(pool: &PgPool) -> Result<(), sqlx::Error> {
    let (backlog, age): (i64, f64) = sqlx::query_as(
        "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 FROM outbox",
    )
    .fetch_one(pool)
    .await?;
    crate::metrics::OUTBOX_BACKLOG.set(backlog);
    crate::metrics::OUTBOX_OLDEST_AGE.set(age.max(0.0));
    Ok(())
}
