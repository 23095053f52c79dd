//! Inventory persistence. Every mutation is one transaction that also records its idempotency
//! key; item rows are locked in SKU order so concurrent multi-line reservations cannot deadlock.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use ordermesh::{
    db,
    domain::Sku,
    idempotency,
    proto::inventory::{
        CommitResponse, Item, ReleaseResponse, Reservation, ReservationLine, ReservationStatus,
        ReserveOutcome, ReserveResponse, Shortage,
    },
    time::to_proto,
};
use sqlx::{PgConnection, PgPool};
use tonic::Status;
use uuid::Uuid;

use crate::metrics::RESERVATIONS;

#[derive(sqlx::FromRow)]
struct ItemRow {
    sku: String,
    name: String,
    available: i64,
    reserved: i64,
    committed: i64,
    updated_at: DateTime<Utc>,
}

impl From<ItemRow> for Item {
    fn from(r: ItemRow) -> Item {
        Item {
            sku: r.sku,
            name: r.name,
            available: r.available,
            reserved: r.reserved,
            committed: r.committed,
            updated_at: Some(to_proto(r.updated_at)),
        }
    }
}

const ITEM_COLUMNS: &str = "sku, name, available, reserved, committed, updated_at";

pub async fn upsert_item(
    pool: &PgPool,
    sku: &Sku,
    name: &str,
    available: i64,
) -> Result<Item, Status> {
    let row: ItemRow = sqlx::query_as(&format!(
        "INSERT INTO items (sku, name, available) VALUES ($1, $2, $3)
         ON CONFLICT (sku) DO UPDATE SET name = EXCLUDED.name, available = EXCLUDED.available, updated_at = now()
         RETURNING {ITEM_COLUMNS}"
    ))
    .bind(sku.as_str())
    .bind(name)
    .bind(available)
    .fetch_one(pool)
    .await
    .map_err(db::status)?;
    Ok(row.into())
}

pub async fn get_item(pool: &PgPool, sku: &Sku) -> Result<Option<Item>, Status> {
    let row: Option<ItemRow> =
        sqlx::query_as(&format!("SELECT {ITEM_COLUMNS} FROM items WHERE sku = $1"))
            .bind(sku.as_str())
            .fetch_optional(pool)
            .await
            .map_err(db::status)?;
    Ok(row.map(Into::into))
}

/// Items after `after` (exclusive) in SKU order, at most `limit`.
pub async fn list_items(
    pool: &PgPool,
    after: Option<&Sku>,
    limit: u32,
) -> Result<Vec<Item>, Status> {
    let rows: Vec<ItemRow> = sqlx::query_as(&format!(
        "SELECT {ITEM_COLUMNS} FROM items WHERE $1::text IS NULL OR sku > $1 ORDER BY sku LIMIT $2"
    ))
    .bind(after.map(Sku::as_str))
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await
    .map_err(db::status)?;
    Ok(rows.into_iter().map(Into::into).collect())
}

#[derive(sqlx::FromRow)]
struct ReservationRow {
    reservation_id: Uuid,
    order_id: Uuid,
    status: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

fn status_of(text: &str) -> ReservationStatus {
    match text {
        "reserved" => ReservationStatus::Reserved,
        "released" => ReservationStatus::Released,
        "committed" => ReservationStatus::Committed,
        _ => ReservationStatus::Unspecified,
    }
}

/// The order's reservation with its lines; `lock` takes the row lock for a state change.
async fn load_reservation(
    conn: &mut PgConnection,
    order_id: Uuid,
    lock: bool,
) -> Result<Option<Reservation>, Status> {
    let lock_clause = if lock { " FOR UPDATE" } else { "" };
    let row: Option<ReservationRow> = sqlx::query_as(&format!(
        "SELECT reservation_id, order_id, status, created_at, updated_at FROM reservations WHERE order_id = $1{lock_clause}"
    ))
    .bind(order_id)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db::status)?;
    let Some(row) = row else { return Ok(None) };
    let lines: Vec<(String, i64)> = sqlx::query_as(
        "SELECT sku, quantity FROM reservation_lines WHERE reservation_id = $1 ORDER BY sku",
    )
    .bind(row.reservation_id)
    .fetch_all(&mut *conn)
    .await
    .map_err(db::status)?;
    Ok(Some(Reservation {
        reservation_id: row.reservation_id.to_string(),
        order_id: row.order_id.to_string(),
        status: status_of(&row.status) as i32,
        lines: lines
            .into_iter()
            .map(|(sku, quantity)| ReservationLine { sku, quantity })
            .collect(),
        created_at: Some(to_proto(row.created_at)),
        updated_at: Some(to_proto(row.updated_at)),
    }))
}

pub async fn get_reservation(pool: &PgPool, order_id: Uuid) -> Result<Option<Reservation>, Status> {
    let mut conn = pool.acquire().await.map_err(db::status)?;
    load_reservation(&mut conn, order_id, false).await
}

/// Locks the given SKUs' rows in SKU order and returns their available stock.
async fn lock_items(
    conn: &mut PgConnection,
    skus: &[String],
) -> Result<HashMap<String, i64>, Status> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT sku, available FROM items WHERE sku = ANY($1) ORDER BY sku FOR UPDATE",
    )
    .bind(skus)
    .fetch_all(&mut *conn)
    .await
    .map_err(db::status)?;
    Ok(rows.into_iter().collect())
}

/// Applies per-SKU deltas to the three stock columns of already locked rows.
async fn shift_stock(
    conn: &mut PgConnection,
    lines: &[ReservationLine],
    (d_available, d_reserved, d_committed): (i64, i64, i64),
) -> Result<(), Status> {
    let skus: Vec<&str> = lines.iter().map(|l| l.sku.as_str()).collect();
    let quantities: Vec<i64> = lines.iter().map(|l| l.quantity).collect();
    sqlx::query(
        "UPDATE items SET available = available + $3 * r.qty, reserved = reserved + $4 * r.qty,
                committed = committed + $5 * r.qty, updated_at = now()
         FROM unnest($1::text[], $2::bigint[]) AS r(sku, qty) WHERE items.sku = r.sku",
    )
    .bind(&skus)
    .bind(&quantities)
    .bind(d_available)
    .bind(d_reserved)
    .bind(d_committed)
    .execute(&mut *conn)
    .await
    .map_err(db::status)?;
    Ok(())
}

async fn set_status(
    conn: &mut PgConnection,
    reservation_id: &str,
    status: &str,
) -> Result<(), Status> {
    let id = Uuid::parse_str(reservation_id)
        .map_err(|_| Status::internal("stored reservation id is not a UUID"))?;
    sqlx::query(
        "UPDATE reservations SET status = $2, updated_at = now() WHERE reservation_id = $1",
    )
    .bind(id)
    .bind(status)
    .execute(&mut *conn)
    .await
    .map_err(db::status)?;
    Ok(())
}

/// Reserves every line or none. `request` is the wire request, hashed for the idempotency check.
pub async fn reserve(
    pool: &PgPool,
    key: &str,
    request: &impl prost::Message,
    order_id: Uuid,
    lines: &[(Sku, i64)],
) -> Result<ReserveResponse, Status> {
    let mut tx = pool.begin().await.map_err(db::status)?;
    if let Some(replay) = idempotency::claim(&mut tx, key, request).await? {
        return Ok(replay);
    }
    if let Some(existing) = load_reservation(&mut tx, order_id, true).await? {
        let state = ReservationStatus::try_from(existing.status)
            .unwrap_or_default()
            .as_str_name();
        return Err(Status::failed_precondition(format!(
            "order {order_id} already has a reservation ({state}); use the same idempotency key to retry"
        )));
    }
    let mut sorted: Vec<ReservationLine> = lines
        .iter()
        .map(|(sku, quantity)| ReservationLine {
            sku: sku.to_string(),
            quantity: *quantity,
        })
        .collect();
    sorted.sort_by(|a, b| a.sku.cmp(&b.sku));
    let skus: Vec<String> = sorted.iter().map(|l| l.sku.clone()).collect();
    let available = lock_items(&mut tx, &skus).await?;

    let shortages: Vec<Shortage> = sorted
        .iter()
        .filter_map(|line| {
            let have = available.get(&line.sku).copied().unwrap_or(0);
            (have < line.quantity).then(|| Shortage {
                sku: line.sku.clone(),
                requested: line.quantity,
                available: have,
            })
        })
        .collect();
    let response = if shortages.is_empty() {
        shift_stock(&mut tx, &sorted, (-1, 1, 0)).await?;
        let reservation_id = Uuid::now_v7();
        sqlx::query("INSERT INTO reservations (reservation_id, order_id, status) VALUES ($1, $2, 'reserved')")
            .bind(reservation_id)
            .bind(order_id)
            .execute(&mut *tx)
            .await
            .map_err(db::status)?;
        let quantities: Vec<i64> = sorted.iter().map(|l| l.quantity).collect();
        sqlx::query(
            "INSERT INTO reservation_lines (reservation_id, sku, quantity)
             SELECT $1, sku, qty FROM unnest($2::text[], $3::bigint[]) AS r(sku, qty)",
        )
        .bind(reservation_id)
        .bind(&skus)
        .bind(&quantities)
        .execute(&mut *tx)
        .await
        .map_err(db::status)?;
        ReserveResponse {
            outcome: ReserveOutcome::Reserved as i32,
            reservation: load_reservation(&mut tx, order_id, false).await?,
            shortages: Vec::new(),
        }
    } else {
        ReserveResponse {
            outcome: ReserveOutcome::InsufficientStock as i32,
            reservation: None,
            shortages,
        }
    };
    idempotency::record(&mut tx, key, &response).await?;
    tx.commit().await.map_err(db::status)?;
    let outcome = if response.outcome() == ReserveOutcome::Reserved {
        "reserved"
    } else {
        "insufficient_stock"
    };
    RESERVATIONS.with_label_values(&[outcome]).inc();
    Ok(response)
}

/// Returns an order's reserved stock to available. With no reservation, records a released
/// one without lines so that a late Reserve of the same order is refused.
pub async fn release(
    pool: &PgPool,
    key: &str,
    request: &impl prost::Message,
    order_id: Uuid,
) -> Result<ReleaseResponse, Status> {
    let mut tx = pool.begin().await.map_err(db::status)?;
    if let Some(replay) = idempotency::claim(&mut tx, key, request).await? {
        return Ok(replay);
    }
    let released = match load_reservation(&mut tx, order_id, true).await? {
        None => {
            sqlx::query("INSERT INTO reservations (reservation_id, order_id, status) VALUES ($1, $2, 'released')")
                .bind(Uuid::now_v7())
                .bind(order_id)
                .execute(&mut *tx)
                .await
                .map_err(db::status)?;
            false
        }
        Some(r) if r.status == ReservationStatus::Reserved as i32 => {
            let skus: Vec<String> = r.lines.iter().map(|l| l.sku.clone()).collect();
            lock_items(&mut tx, &skus).await?;
            shift_stock(&mut tx, &r.lines, (1, -1, 0)).await?;
            set_status(&mut tx, &r.reservation_id, "released").await?;
            true
        }
        Some(_) => false,
    };
    let response = ReleaseResponse {
        released,
        reservation: load_reservation(&mut tx, order_id, false).await?,
    };
    idempotency::record(&mut tx, key, &response).await?;
    tx.commit().await.map_err(db::status)?;
    if released {
        RESERVATIONS.with_label_values(&["released"]).inc();
    }
    Ok(response)
}

/// Moves an order's reserved stock to committed (it ships).
pub async fn commit(
    pool: &PgPool,
    key: &str,
    request: &impl prost::Message,
    order_id: Uuid,
) -> Result<CommitResponse, Status> {
    let mut tx = pool.begin().await.map_err(db::status)?;
    if let Some(replay) = idempotency::claim(&mut tx, key, request).await? {
        return Ok(replay);
    }
    let committed = match load_reservation(&mut tx, order_id, true).await? {
        None => {
            return Err(Status::not_found(format!(
                "order {order_id} has no reservation"
            )));
        }
        Some(r) if r.status == ReservationStatus::Released as i32 => {
            return Err(Status::failed_precondition(format!(
                "the reservation of order {order_id} was released and cannot be committed"
            )));
        }
        Some(r) if r.status == ReservationStatus::Reserved as i32 => {
            let skus: Vec<String> = r.lines.iter().map(|l| l.sku.clone()).collect();
            lock_items(&mut tx, &skus).await?;
            shift_stock(&mut tx, &r.lines, (0, -1, 1)).await?;
            set_status(&mut tx, &r.reservation_id, "committed").await?;
            true
        }
        Some(_) => false,
    };
    let response = CommitResponse {
        committed,
        reservation: load_reservation(&mut tx, order_id, false).await?,
    };
    idempotency::record(&mut tx, key, &response).await?;
    tx.commit().await.map_err(db::status)?;
    if committed {
        RESERVATIONS.with_label_values(&["committed"]).inc();
    }
    Ok(response)
}
