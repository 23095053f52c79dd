//! Transactional outbox. State changes write their messages here in the same transaction; the
//! relay (woken in-process after each commit) publishes them to JetStream in batches (pipelined publishes, acks awaited together) with
//! `Nats-Msg-Id` = the row's id, so a crash between publish and delete re-publishes a message
//! that JetStream drops as a duplicate. No dual writes anywhere.

use std::{collections::BTreeMap, time::Duration};

use async_nats::jetstream::{self, message::PublishMessage};
use ordermesh::db;
use sqlx::{PgConnection, PgPool, types::Json};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use uuid::Uuid;

/// Rows published per round trip.
const BATCH: i64 = 256;

/// Wakes the relay after a transaction that queued messages committed. In-process on purpose:
/// PostgreSQL's NOTIFY takes a database-wide lock from pre-commit to the end of the commit, which
/// serialises every notifying transaction and capped the whole saga at a few hundred commits a
/// second. Rows committed by another replica are picked up by its relay or by the periodic poll.
#[derive(Debug, Clone, Default)]
pub struct Wake(std::sync::Arc<tokio::sync::Notify>);

impl Wake {
    /// Call after commit.
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

/// How often the relay looks for rows without being woken.
const POLL: Duration = Duration::from_secs(1);

/// Queues a message, to be published after this transaction commits (call [`Wake::wake`] then).
pub async fn enqueue(
    conn: &mut PgConnection,
    msg_id: Uuid,
    subject: &str,
    payload: &[u8],
) -> Result<(), Status> {
    let headers = ordermesh::context::message_headers();
    sqlx::query("INSERT INTO outbox (msg_id, subject, payload, headers) VALUES ($1, $2, $3, $4)")
        .bind(msg_id)
        .bind(subject)
        .bind(payload)
        .bind(Json(&headers))
        .execute(&mut *conn)
        .await
        .map_err(db::status)?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    msg_id: Uuid,
    subject: String,
    payload: Vec<u8>,
    headers: Json<BTreeMap<String, String>>,
}

/// Publishes the outbox until `shutdown`. Safe with several replicas: rows are claimed with
/// `FOR UPDATE SKIP LOCKED`.
pub async fn relay(pool: PgPool, js: jetstream::Context, wake: Wake, shutdown: CancellationToken) {
    let mut failures = 0u32;
    loop {
        let published = publish_batch(&pool, &js).await;
        if let Err(error) = export_lag(&pool).await {
            tracing::debug!(%error, "could not measure the outbox lag");
        }
        match published {
            Ok(n) => {
                failures = 0;
                if n as i64 == BATCH {
                    continue;
                }
            }
            Err(error) => {
                failures += 1;
                tracing::warn!(%error, failures, "outbox relay failed; retrying");
            }
        }
        let pause = if failures == 0 {
            POLL
        } else {
            Duration::from_millis(200 * u64::from(failures.min(10)))
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = wake.0.notified() => {}
            _ = tokio::time::sleep(pause) => {}
        }
    }
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

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("publishing to JetStream: {0}")]
    Publish(String),
}

/// Publishes up to [`BATCH`] rows and deletes them once JetStream acknowledged every one.
async fn publish_batch(pool: &PgPool, js: &jetstream::Context) -> Result<usize, RelayError> {
    let mut tx = pool.begin().await?;
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, msg_id, subject, payload, headers FROM outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut acks = Vec::with_capacity(rows.len());
    for row in &rows {
        let mut headers = async_nats::HeaderMap::new();
        for (name, value) in row.headers.0.iter() {
            headers.insert(name.as_str(), value.as_str());
        }
        let publish = PublishMessage::build()
            .payload(row.payload.clone().into())
            .message_id(row.msg_id.to_string())
            .headers(headers);
        let ack = js
            .send_publish(row.subject.clone(), publish)
            .await
            .map_err(|e| RelayError::Publish(e.to_string()))?;
        acks.push(ack);
    }
    for ack in acks {
        ack.await.map_err(|e| RelayError::Publish(e.to_string()))?;
    }
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    crate::metrics::OUTBOX_PUBLISHED.inc_by(rows.len() as u64);
    tracing::debug!(published = rows.len(), "outbox batch published");
    Ok(rows.len())
}
