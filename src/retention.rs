//! Pruning of bookkeeping rows: what only guards against a repeat (an idempotency key and its
//! stored response) is deleted once it is older than the configured retention, so those tables
//! stop growing with every call ever made. A retry inside the window still gets the stored
//! answer; after it, the same key is a new request.
//!
//! Each table is pruned in small batches (`DELETE ... LIMIT` through a sub-select), each its
//! own short transaction, with `SKIP LOCKED` so replicas pruning at once never wait on each
//! other, and the hot path (which only touches fresh rows) never waits on the pruner. The scan
//! uses a BRIN index on the timestamp: rows arrive in time order, so a BRIN index finds the old
//! ones in a few pages and costs the hot path next to nothing to maintain.

use std::time::Duration;

use prometheus::{IntCounterVec, Opts, register_int_counter_vec};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::RetentionSettings;

crate::metric!(PRUNED: IntCounterVec = register_int_counter_vec!(
    Opts::new("ordermesh_retention_pruned_rows_total", "Bookkeeping rows deleted after their retention, by table."),
    &["table"]
));

/// A table whose rows expire, and the column that dates them (BRIN-indexed).
#[derive(Debug, Clone, Copy)]
pub struct Expiring {
    pub table: &'static str,
    pub dated_by: &'static str,
}

/// Every service's idempotency keys (see [`crate::idempotency`]).
pub const IDEMPOTENCY_KEYS: Expiring = Expiring {
    table: "idempotency_keys",
    dated_by: "created_at",
};

/// Pause between two batches, so a large backlog is worked off without hogging the database.
const BETWEEN_BATCHES: Duration = Duration::from_millis(20);

/// Prunes `tables` every `settings.every` until `shutdown`. Errors are logged and retried at the
/// next round: pruning late is harmless.
pub async fn run(
    pool: PgPool,
    tables: &'static [Expiring],
    settings: RetentionSettings,
    shutdown: CancellationToken,
) {
    for table in tables {
        PRUNED.with_label_values(&[table.table]);
    }
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(settings.every) => {}
        }
        for table in tables {
            match prune(&pool, *table, &settings, &shutdown).await {
                Ok(0) => {}
                Ok(rows) => tracing::info!(table = table.table, rows, "pruned expired rows"),
                Err(error) => {
                    tracing::warn!(table = table.table, %error, "pruning failed; will retry")
                }
            }
        }
    }
}

/// Deletes the rows of `table` older than `settings.keep`, `settings.batch` at a time; the number
/// deleted.
pub async fn prune(
    pool: &PgPool,
    table: Expiring,
    settings: &RetentionSettings,
    shutdown: &CancellationToken,
) -> Result<u64, sqlx::Error> {
    let Expiring {
        table: name,
        dated_by,
    } = table;
    let sql = format!(
        "DELETE FROM {name} WHERE ctid = ANY(ARRAY(
             SELECT ctid FROM {name} WHERE {dated_by} < now() - make_interval(secs => $1)
             LIMIT $2 FOR UPDATE SKIP LOCKED))"
    );
    let mut total = 0;
    loop {
        let deleted = sqlx::query(&sql)
            .bind(settings.keep.as_secs_f64())
            .bind(i64::from(settings.batch))
            .execute(pool)
            .await?
            .rows_affected();
        total += deleted;
        PRUNED.with_label_values(&[name]).inc_by(deleted);
        if deleted < u64::from(settings.batch) || shutdown.is_cancelled() {
            return Ok(total);
        }
        tokio::time::sleep(BETWEEN_BATCHES).await;
    }
}
