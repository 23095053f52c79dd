//! Rebuilds `order_view` from `order_events`, the source of truth, with the same projection the
//! live writes use ([`Projection::apply`]), while the service keeps serving. Run with
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

use crate::model::{AddressRecord, LineRecord, OrderEvent, OrderRow, Projection};

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
        let mut current: Option<(OrderRow, Projection)> = None;
        while let Some(event) = events.try_next().await? {
            if current
                .as_ref()
                .is_none_or(|(row, _)| row.order_id != event.order_id)
            {
                rows.extend(current.take().map(finish));
                current = Some(start(&event)?);
            }
            if let Some((row, projection)) = current.as_mut() {
                projection.apply(&event.payload.0);
                row.updated_at = event.recorded_at;
            }
        }
        rows.extend(current.take().map(finish));
    }
    let changed = upsert(&mut tx, &rows).await?;
    tx.commit().await?;
    Ok(changed)
}

/// Writes `rows` where they are missing or differ, in one statement; the ids written.
async fn upsert(tx: &mut sqlx::PgConnection, rows: &[OrderRow]) -> anyhow::Result<Vec<Uuid>> {
    let column = |f: fn(&OrderRow) -> String| rows.iter().map(f).collect::<Vec<String>>();
    let lines: Vec<Json<Vec<LineRecord>>> = rows.iter().map(|r| r.lines.clone()).collect();
    let addresses: Vec<Json<AddressRecord>> =
        rows.iter().map(|r| r.shipping_address.clone()).collect();
    let changed = sqlx::query_scalar(
        "INSERT INTO order_view AS v (order_id, customer_id, status, currency, total_minor, lines,
             shipping_address, shipping_method, confirmation_number, tracking_number, failure_reason,
             request_id, created_at, updated_at, version)
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::jsonb[],
             $7::jsonb[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
             $13::timestamptz[], $14::timestamptz[], $15::bigint[])
         ON CONFLICT (order_id) DO UPDATE SET customer_id = EXCLUDED.customer_id, status = EXCLUDED.status,
             currency = EXCLUDED.currency, total_minor = EXCLUDED.total_minor, lines = EXCLUDED.lines,
             shipping_address = EXCLUDED.shipping_address, shipping_method = EXCLUDED.shipping_method,
             confirmation_number = EXCLUDED.confirmation_number, tracking_number = EXCLUDED.tracking_number,
             failure_reason = EXCLUDED.failure_reason, request_id = EXCLUDED.request_id,
             created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at, version = EXCLUDED.version
         WHERE (v.customer_id, v.status, v.currency, v.total_minor, v.lines, v.shipping_address,
                v.shipping_method, v.confirmation_number, v.tracking_number, v.failure_reason,
                v.request_id, v.created_at, v.updated_at, v.version)
               IS DISTINCT FROM
               (EXCLUDED.customer_id, EXCLUDED.status, EXCLUDED.currency, EXCLUDED.total_minor,
                EXCLUDED.lines, EXCLUDED.shipping_address, EXCLUDED.shipping_method,
                EXCLUDED.confirmation_number, EXCLUDED.tracking_number, EXCLUDED.failure_reason,
                EXCLUDED.request_id, EXCLUDED.created_at, EXCLUDED.updated_at, EXCLUDED.version)
         RETURNING order_id",
    )
    .bind(rows.iter().map(|r| r.order_id).collect::<Vec<Uuid>>())
    .bind(column(|r| r.customer_id.clone()))
    .bind(column(|r| r.status.clone()))
    .bind(column(|r| r.currency.clone()))
    .bind(rows.iter().map(|r| r.total_minor).collect::<Vec<i64>>())
    .bind(lines)
    .bind(addresses)
    .bind(column(|r| r.shipping_method.clone()))
    .bind(column(|r| r.confirmation_number.clone()))
    .bind(column(|r| r.tracking_number.clone()))
    .bind(column(|r| r.failure_reason.clone()))
    .bind(column(|r| r.request_id.clone()))
    .bind(rows.iter().map(|r| r.created_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.updated_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.version).collect::<Vec<i64>>())
    .fetch_all(&mut *tx)
    .await?;
    Ok(changed)
}

/// Drops the cached copies of `ids`: a terminal order's copy is otherwise kept for an hour.
async fn evict(cache: &ordermesh::cache::Cache, ids: &[Uuid]) {
    let unique: HashSet<&Uuid> = ids.iter().collect();
    for id in unique {
        cache.delete(&crate::read_model::key(*id)).await;
    }
}

/// The row an order's first event (Submitted) creates, before any event is applied.
fn start(first: &EventRow) -> anyhow::Result<(OrderRow, Projection)> {
    let OrderEvent::Submitted {
        customer_id,
        currency,
        total_minor,
        lines,
        shipping_address,
        shipping_method,
        request_id,
    } = &first.payload.0
    else {
        anyhow::bail!(
            "order {} does not start with a submitted event",
            first.order_id
        );
    };
    let row = OrderRow {
        order_id: first.order_id,
        customer_id: customer_id.clone(),
        status: String::new(),
        currency: currency.clone(),
        total_minor: *total_minor,
        lines: Json(lines.clone()),
        shipping_address: Json(shipping_address.clone()),
        shipping_method: shipping_method.clone(),
        confirmation_number: String::new(),
        tracking_number: String::new(),
        failure_reason: String::new(),
        request_id: request_id.clone(),
        created_at: first.recorded_at,
        updated_at: first.recorded_at,
        version: 0,
    };
    let projection = Projection::of(&row);
    Ok((row, projection))
}

fn finish((mut row, projection): (OrderRow, Projection)) -> OrderRow {
    row.status = projection.status.as_str_name().to_string();
    row.confirmation_number = projection.confirmation_number;
    row.tracking_number = projection.tracking_number;
    row.failure_reason = projection.failure_reason;
    row.version = projection.version;
    row
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
