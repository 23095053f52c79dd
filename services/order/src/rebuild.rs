//! Rebuilds `order_view` from `order_events`, the source of truth, with the same projection the
//! live writes use (`projection::Replay`), while the service keeps serving. Run with
//! `ordermesh projections rebuild`.
//!
//! It works through the orders in batches of [`BATCH`] ids, one short transaction each: lock the
//! batch's view rows, read their events, write the rows that differ. A saga transition that
//! touches one of those orders meanwhile waits for that batch only (it updates the view row we
//! hold), then writes its own, newer projection over ours; one that committed first is in the
//! events we read, because they are read after the lock. Nothing else waits, and only one
//! batch is in memory. Every row that changed is evicted from Redis, which holds copies of
//! terminal orders. View rows with no events at all (never a committed order: CreateOrder
//! writes both in one transaction) are deleted at the end.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use sqlx::{PgPool, types::Json};
use uuid::Uuid;

use crate::{
    model::{OrderEvent, OrderRow},
    projection::{self, Replay},
};

/// Orders per transaction: what a concurrent transition may wait behind.
pub const BATCH: i64 = 500;

#[derive(sqlx::FromRow)]
struct EventRow {
    order_id: Uuid,
    payload: Json<OrderEvent>,
    recorded_at: DateTime<Utc>,
}

/// What a rebuild did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rebuilt {
    /// Orders replayed from their events.
    pub orders: u64,
    /// View rows written because they were missing or differed from the replay.
    pub repaired: u64,
    /// View rows deleted because the order has no events.
    pub removed: u64,
}

/// Replays every order's events into the view, batch by batch (see the module comment), and
/// evicts the cached copy of every order whose row changed.
pub async fn rebuild(pool: &PgPool, cache: &ordermesh::cache::Cache) -> anyhow::Result<Rebuilt> {
    let mut done = Rebuilt::default();
    let mut after = Uuid::nil();
    loop {
        let ids: Vec<Uuid> = sqlx::query_scalar(
            "SELECT DISTINCT order_id FROM order_events WHERE order_id > $1 ORDER BY order_id LIMIT $2",
        )
        .bind(after)
        .bind(BATCH)
        .fetch_all(pool)
        .await?;
        let Some(last) = ids.last().copied() else {
            break;
        };
        let changed = rebuild_batch(pool, &ids).await?;
        evict(cache, &changed).await;
        done.orders += ids.len() as u64;
        done.repaired += changed.len() as u64;
        after = last;
    }
    let orphans: Vec<Uuid> = sqlx::query_scalar(
        "DELETE FROM order_view v WHERE NOT EXISTS (SELECT 1 FROM order_events e WHERE e.order_id = v.order_id)
         RETURNING order_id",
    )
    .fetch_all(pool)
    .await?;
    evict(cache, &orphans).await;
    done.removed = orphans.len() as u64;
    Ok(done)
}

/// Rebuilds the view rows of `ids` in one transaction; returns the ids whose row changed.
async fn rebuild_batch(pool: &PgPool, ids: &[Uuid]) -> anyhow::Result<Vec<Uuid>> {
    let mut tx = pool.begin().await?;
    // Transitions of these orders wait from here to the commit; their events committed before
    // the lock are read below (read committed: each statement sees what committed before it).
    sqlx::query("SELECT 1 FROM order_view WHERE order_id = ANY($1) ORDER BY order_id FOR UPDATE")
        .bind(ids)
        .execute(&mut *tx)
        .await?;
    let mut rows: Vec<OrderRow> = Vec::with_capacity(ids.len());
    {
        let mut events = sqlx::query_as::<_, EventRow>(
            "SELECT order_id, payload, recorded_at FROM order_events WHERE order_id = ANY($1)
             ORDER BY order_id, version",
        )
        .bind(ids)
        .fetch(&mut *tx);
        let mut current: Option<Replay> = None;
        while let Some(event) = events.try_next().await? {
            match current.as_mut() {
                Some(replay) if replay.order_id() == event.order_id => {
                    replay.apply(&event.payload.0, event.recorded_at);
                }
                _ => {
                    rows.extend(current.take().map(Replay::finish));
                    current = Some(Replay::start(
                        event.order_id,
                        &event.payload.0,
                        event.recorded_at,
                    )?);
                }
            }
        }
        rows.extend(current.take().map(Replay::finish));
    }
    let changed = projection::upsert(&mut tx, &rows).await?;
    tx.commit().await?;
    Ok(changed)
}

/// Drops the cached copies of `ids`: a terminal order's copy is otherwise kept for an hour.
async fn evict(cache: &ordermesh::cache::Cache, ids: &[Uuid]) {
    let unique: HashSet<&Uuid> = ids.iter().collect();
    for id in unique {
        cache.delete(&crate::read_model::key(*id)).await;
    }
}

/// `ordermesh-order rebuild-projections`: connects with the service's own settings (database and
/// Redis) and rebuilds.
pub async fn run_command(settings: &ordermesh::config::Settings) -> anyhow::Result<()> {
    let name = settings.database_name();
    let pool = ordermesh::db::connect(&settings.database, &name, &crate::MIGRATOR).await?;
    let cache = ordermesh::cache::Cache::connect_now(&settings.redis, &settings.namespace).await;
    let done = rebuild(&pool, &cache).await?;
    println!(
        "rebuilt order_view of {name} from its events: {} orders, {} rows repaired, {} without events removed",
        done.orders, done.repaired, done.removed
    );
    Ok(())
}
