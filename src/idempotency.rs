//! Idempotent mutations: a callee stores idempotency key → response in the same transaction as
//! the effect and replays the stored response on a repeat. This is what makes retries by Istio,
//! the saga or a client safe for Reserve, Charge, Refund and the other mutating RPCs.
//!
//! Usage inside one transaction:
//! ```ignore
//! let mut tx = pool.begin().await?;
//! if let Some(replay) = idempotency::claim::<ReserveResponse>(&mut tx, key, &request).await? {
//!     return Ok(replay); // the first answer, unchanged; nothing else happens
//! }
//! /* ... the effect ... */
//! idempotency::record(&mut tx, key, &response).await?;
//! tx.commit().await?;
//! ```
//! Every service database has the table (see each service's first migration):
//! `idempotency_keys(key text primary key, request_hash bytea, response bytea, created_at)`.

use prost::Message;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use tonic::Status;

/// Claims `key` for this transaction, or returns the response stored by the call that claimed
/// it first. A concurrent call with the same key waits on the row lock until the first commits
/// (then replays its answer) or rolls back (then claims the key itself). The same key with a
/// different request is rejected: it is a client bug, not a retry.
pub async fn claim<R: Message + Default>(
    tx: &mut PgConnection,
    key: &str,
    request: &impl Message,
) -> Result<Option<R>, Status> {
    let hash = request_hash(request);
    if insert(tx, key, &hash, None).await? {
        return Ok(None);
    }
    stored(tx, key, &hash).await.map(Some)
}

/// Inserts `key` (with `response`, if the call already has it) unless it exists: whether it
/// did. The one place both [`claim`] and [`answer`] take a key.
async fn insert(
    conn: &mut PgConnection,
    key: &str,
    hash: &[u8],
    response: Option<Vec<u8>>,
) -> Result<bool, Status> {
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (key, request_hash, response) VALUES ($1, $2, $3)
         ON CONFLICT (key) DO NOTHING",
    )
    .bind(key)
    .bind(hash)
    .bind(response)
    .execute(&mut *conn)
    .await
    .map_err(crate::db::status)?
    .rows_affected();
    Ok(inserted == 1)
}

/// What identifies a request behind a key: the SHA-256 of its protobuf encoding.
pub fn request_hash(request: &impl Message) -> Vec<u8> {
    Sha256::digest(request.encode_to_vec()).to_vec()
}

/// The response stored under `key` by the call that claimed it, for a repeat whose request
/// hashes to `hash`; FAILED_PRECONDITION when the key was used for a different request. For
/// writers that claim the key and store the response in one statement (`INSERT ... ON
/// CONFLICT (key) DO NOTHING` together with the effect) and found it taken.
pub async fn stored<R: Message + Default>(
    conn: &mut PgConnection,
    key: &str,
    hash: &[u8],
) -> Result<R, Status> {
    previous(conn, key, hash)
        .await?
        .ok_or_else(|| Status::internal("idempotency key vanished after it was claimed"))
}

/// As [`stored`], but `None` when nobody has used `key` yet: for writers that learn only
/// afterwards why their conditional claim did not happen.
pub async fn previous<R: Message + Default>(
    conn: &mut PgConnection,
    key: &str,
    hash: &[u8],
) -> Result<Option<R>, Status> {
    let found: Option<(Vec<u8>, Option<Vec<u8>>)> =
        sqlx::query_as("SELECT request_hash, response FROM idempotency_keys WHERE key = $1")
            .bind(key)
            .fetch_optional(&mut *conn)
            .await
            .map_err(crate::db::status)?;
    let Some((stored_hash, response)) = found else {
        return Ok(None);
    };
    if stored_hash != hash {
        return Err(Status::failed_precondition(format!(
            "idempotency key {key:?} was already used for a different request"
        )));
    }
    let bytes =
        response.ok_or_else(|| Status::internal("idempotency key claimed without a response"))?;
    let replay = R::decode(bytes.as_slice())
        .map_err(|_| Status::internal("stored response is unreadable"))?;
    crate::metrics::IDEMPOTENT_REPLAYS.inc();
    Ok(Some(replay))
}

/// Claims `key` with `response` already stored (a call whose only effect is its answer), or
/// replays what the call that claimed it first stored.
pub async fn answer<R: Message + Default>(
    conn: &mut PgConnection,
    key: &str,
    hash: &[u8],
    response: R,
) -> Result<R, Status> {
    if insert(conn, key, hash, Some(response.encode_to_vec())).await? {
        return Ok(response);
    }
    stored(conn, key, hash).await
}

/// Stores the response of the call that claimed `key`, in the same transaction as its effect.
pub async fn record(
    tx: &mut PgConnection,
    key: &str,
    response: &impl Message,
) -> Result<(), Status> {
    sqlx::query("UPDATE idempotency_keys SET response = $2 WHERE key = $1")
        .bind(key)
        .bind(response.encode_to_vec())
        .execute(&mut *tx)
        .await
        .map_err(crate::db::status)?;
    Ok(())
}

/// SQL for the table, shared by every service's first migration (kept there verbatim, since
/// migrations must never change once applied).
pub const TABLE_SQL: &str = "CREATE TABLE idempotency_keys (
    key          text PRIMARY KEY,
    request_hash bytea NOT NULL,
    response     bytea,
    created_at   timestamptz NOT NULL DEFAULT now()
);";
