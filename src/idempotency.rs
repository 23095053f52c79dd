//! Idempotent mutations: a callee stores idempotency key → response in the same transaction as
//! the effect and replays the stored response on a repeat. This is what makes retries by Istio,
//! the saga or a client safe for Reserve, Charge, Refund and the other mutating RPCs.
//!
//! There are two ways to write with a key, both through this module:
//! - **One statement** (the common, fast case: one round trip and one commit per call): the
//!   statement starts from [`claim_key!`]'s `claim` CTE, which takes the key together with the
//!   response, and every write of the effect selects `FROM claim`, so the effect happens exactly
//!   when the key was claimed. When it was not, [`previous`] (or [`stored`]) tells a repeat
//!   (replay the first answer) from a reused key (refused) from a race (retry).
//! - **A transaction** for effects that need a read first:
//!   ```ignore
//!   let mut tx = pool.begin().await?;
//!   if let Some(replay) = idempotency::claim::<ReserveResponse>(&mut tx, key, &request).await? {
//!       return Ok(replay); // the first answer, unchanged; nothing else happens
//!   }
//!   /* ... the effect ... */
//!   idempotency::record(&mut tx, key, &response).await?;
//!   tx.commit().await?;
//!   ```
//!
//! Every service database has the table [`TABLE_SQL`] describes; the end-to-end suite holds
//! each service's migrated table to it (`tests/e2e/schema.rs`).

/// The `claim` CTE of a one-statement idempotent write, as a string literal for `concat!`:
/// inserts key `$key` with request hash `$hash` and response `$response` (SQL parameters such as
/// `"$7"`) for each row `$source` yields (`""` for one row, or `"FROM verdict WHERE covered"`),
/// and yields the key only when this statement claimed it. The effect's writes select
/// `FROM claim` (or test `EXISTS (SELECT 1 FROM claim)`), so nothing happens without the claim.
/// The one place the platform and every service claim a key.
#[macro_export]
macro_rules! claim_key {
    ($key:literal, $hash:literal, $response:literal, $source:literal) => {
        concat!(
            "claim AS (INSERT INTO idempotency_keys (key, request_hash, response) SELECT ",
            $key,
            ", ",
            $hash,
            ", ",
            $response,
            " ",
            $source,
            " ON CONFLICT (key) DO NOTHING RETURNING key)"
        )
    };
}

use prost::Message;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;

use crate::Error;

/// Claims `key` for this transaction, or returns the response stored by the call that claimed
/// it first. A concurrent call with the same key waits on the row lock until the first commits
/// (then replays its answer) or rolls back (then claims the key itself). The same key with a
/// different request is rejected: it is a client bug, not a retry.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn claim<R: Message + Default>(
    tx: &mut PgConnection,
    key: &str,
    request: &impl Message,
) -> Result<Option<R>, Error> {
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
) -> Result<bool, Error> {
    const CLAIM: &str = concat!(
        "WITH ",
        claim_key!("$1", "$2", "$3", ""),
        " SELECT EXISTS (SELECT 1 FROM claim)"
    );
    let claimed = sqlx::query_scalar(CLAIM)
        .bind(key)
        .bind(hash)
        .bind(response)
        .fetch_one(&mut *conn)
        .await?;
    Ok(claimed)
}

/// What identifies a request behind a key: the SHA-256 of its protobuf encoding.
pub fn request_hash(request: &impl Message) -> Vec<u8> {
    Sha256::digest(request.encode_to_vec()).to_vec()
}

/// The response stored under `key` by the call that claimed it, for a repeat whose request
/// hashes to `hash`; FAILED_PRECONDITION when the key was used for a different request. For
/// writers that claim the key and store the response in one statement (`INSERT ... ON
/// CONFLICT (key) DO NOTHING` together with the effect) and found it taken.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn stored<R: Message + Default>(
    conn: &mut PgConnection,
    key: &str,
    hash: &[u8],
) -> Result<R, Error> {
    previous(conn, key, hash)
        .await?
        .ok_or_else(|| Error::internal("idempotency key vanished after it was claimed"))
}

/// As [`stored`], but `None` when nobody has used `key` yet: for writers that learn only
/// afterwards why their conditional claim did not happen.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn previous<R: Message + Default>(
    conn: &mut PgConnection,
    key: &str,
    hash: &[u8],
) -> Result<Option<R>, Error> {
    let found: Option<(Vec<u8>, Option<Vec<u8>>)> =
        sqlx::query_as("SELECT request_hash, response FROM idempotency_keys WHERE key = $1")
            .bind(key)
            .fetch_optional(&mut *conn)
            .await?;
    let Some((stored_hash, response)) = found else {
        return Ok(None);
    };
    if stored_hash != hash {
        return Err(Error::KeyReused(key.to_string()));
    }
    let bytes =
        response.ok_or_else(|| Error::internal("idempotency key claimed without a response"))?;
    let replay = R::decode(bytes.as_slice())
        .map_err(|_| Error::internal("stored response is unreadable"))?;
    crate::metrics::IDEMPOTENT_REPLAYS.inc();
    Ok(Some(replay))
}

/// Claims `key` with `response` already stored (a call whose only effect is its answer), or
/// replays what the call that claimed it first stored.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn answer<R: Message + Default>(
    conn: &mut PgConnection,
    key: &str,
    hash: &[u8],
    response: R,
) -> Result<R, Error> {
    if insert(conn, key, hash, Some(response.encode_to_vec())).await? {
        return Ok(response);
    }
    stored(conn, key, hash).await
}

/// Stores the response of the call that claimed `key`, in the same transaction as its effect.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn record(
    tx: &mut PgConnection,
    key: &str,
    response: &impl Message,
) -> Result<(), Error> {
    sqlx::query("UPDATE idempotency_keys SET response = $2 WHERE key = $1")
        .bind(key)
        .bind(response.encode_to_vec())
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// The table, as each service's first migration creates it. Each keeps its own copy because
/// sqlx checksums applied migrations: moving the table out of them would stop every existing
/// database from starting ("migration 1 was previously applied but has been modified"). The
/// end-to-end suite compares each migrated database's table with this one.
pub const TABLE_SQL: &str = "CREATE TABLE idempotency_keys (
    key          text PRIMARY KEY,
    request_hash bytea NOT NULL,
    response     bytea,
    created_at   timestamptz NOT NULL DEFAULT now()
);";
