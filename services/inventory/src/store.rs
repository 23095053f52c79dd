//! Inventory persistence. Every mutation is one transaction that also records its idempotency
//! key; item rows are locked in SKU order so concurrent multi-line reservations cannot deadlock.

use std::collections::HashMap;

use chrono::{DateTime, SubsecRound, Utc};
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

use prost::Message;
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

impl ReservationRow {
    /// The wire reservation, with its `(sku, quantity)` lines in SKU order.
    fn with_lines(self, lines: impl IntoIterator<Item = (String, i64)>) -> Reservation {
        Reservation {
            reservation_id: self.reservation_id.to_string(),
            order_id: self.order_id.to_string(),
            status: status_of(&self.status) as i32,
            lines: lines
                .into_iter()
                .map(|(sku, quantity)| ReservationLine { sku, quantity })
                .collect(),
            created_at: Some(to_proto(self.created_at)),
            updated_at: Some(to_proto(self.updated_at)),
        }
    }
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
    Ok(Some(row.with_lines(lines)))
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

/// Claims `key` for this transaction and reads the order's reservation with its lines, in one
/// statement: `(claimed, reservation)`. Not claimed means a repeat (see
/// [`idempotency::stored`]). The reservation row is not locked: the writes that depend on its
/// state re-check it (`WHERE status = 'reserved'`).
async fn claim_and_load(
    conn: &mut PgConnection,
    key: &str,
    hash: &[u8],
    order_id: Uuid,
) -> Result<(bool, Option<Reservation>), Status> {
    #[derive(sqlx::FromRow)]
    struct Found {
        claimed: bool,
        reservation_id: Option<Uuid>,
        status: Option<String>,
        created_at: Option<DateTime<Utc>>,
        updated_at: Option<DateTime<Utc>>,
        skus: Vec<String>,
        quantities: Vec<i64>,
    }
    let found: Found = sqlx::query_as(
        "WITH claim AS (
             INSERT INTO idempotency_keys (key, request_hash) VALUES ($1, $2)
             ON CONFLICT (key) DO NOTHING RETURNING key
         )
         SELECT EXISTS (SELECT 1 FROM claim) AS claimed, r.reservation_id, r.status, r.created_at,
                r.updated_at, coalesce(l.skus, '{}') AS skus, coalesce(l.quantities, '{}') AS quantities
         FROM (SELECT 1) AS one
         LEFT JOIN reservations r ON r.order_id = $3
         LEFT JOIN LATERAL (
             SELECT array_agg(sku ORDER BY sku) AS skus, array_agg(quantity ORDER BY sku) AS quantities
             FROM reservation_lines WHERE reservation_id = r.reservation_id
         ) l ON true",
    )
    .bind(key)
    .bind(hash)
    .bind(order_id)
    .fetch_one(&mut *conn)
    .await
    .map_err(db::status)?;
    let reservation = match (
        found.reservation_id,
        found.status,
        found.created_at,
        found.updated_at,
    ) {
        (Some(reservation_id), Some(status), Some(created_at), Some(updated_at)) => Some(
            ReservationRow {
                reservation_id,
                order_id,
                status,
                created_at,
                updated_at,
            }
            .with_lines(found.skus.into_iter().zip(found.quantities)),
        ),
        _ => None,
    };
    Ok((found.claimed, reservation))
}

/// Reserves every line or none. `request` is the wire request, hashed for the idempotency check.
///
/// One statement, committed on its own ([`RESERVE_SQL`]): it locks the items in SKU order (so
/// concurrent multi-line reservations cannot deadlock) and, only if every line is covered and
/// the order has no reservation yet, claims the key with the response, moves the stock and
/// writes the reservation. When it did not reserve, what it returned says why, and a second
/// round trip answers: a replay, a refusal, or the shortages (stored under the key).
pub async fn reserve(
    pool: &PgPool,
    key: &str,
    request: &impl prost::Message,
    order_id: Uuid,
    lines: &[(Sku, i64)],
) -> Result<ReserveResponse, Status> {
    #[derive(sqlx::FromRow)]
    struct Attempt {
        reserved: bool,
        covered: bool,
        existing: Option<String>,
        skus: Vec<String>,
        available: Vec<i64>,
    }
    let hash = idempotency::request_hash(request);
    let mut sorted: Vec<ReservationLine> = lines
        .iter()
        .map(|(sku, quantity)| ReservationLine {
            sku: sku.to_string(),
            quantity: *quantity,
        })
        .collect();
    sorted.sort_by(|a, b| a.sku.cmp(&b.sku));
    let skus: Vec<String> = sorted.iter().map(|l| l.sku.clone()).collect();
    let quantities: Vec<i64> = sorted.iter().map(|l| l.quantity).collect();
    let reservation_id = Uuid::now_v7();
    // Timestamps from here, so the stored response and the row agree.
    let now = Utc::now().trunc_subsecs(6);
    let response = ReserveResponse {
        outcome: ReserveOutcome::Reserved as i32,
        reservation: Some(Reservation {
            reservation_id: reservation_id.to_string(),
            order_id: order_id.to_string(),
            status: ReservationStatus::Reserved as i32,
            lines: sorted.clone(),
            created_at: Some(to_proto(now)),
            updated_at: Some(to_proto(now)),
        }),
        shortages: Vec::new(),
    };
    let mut conn = pool.acquire().await.map_err(db::status)?;
    let attempt: Attempt = sqlx::query_as(RESERVE_SQL)
        .bind(&skus)
        .bind(&quantities)
        .bind(reservation_id)
        .bind(order_id)
        .bind(now)
        .bind(response.encode_to_vec())
        .bind(key)
        .bind(&hash)
        .fetch_one(&mut *conn)
        .await
        .map_err(db::status)?;
    if attempt.reserved {
        RESERVATIONS.with_label_values(&["reserved"]).inc();
        return Ok(response);
    }
    // Not reserved: a repeat of a call already answered, another call's reservation of this
    // order, or too little stock.
    if let Some(replay) = idempotency::previous(&mut conn, key, &hash).await? {
        return Ok(replay);
    }
    if let Some(status) = attempt.existing {
        let state = status_of(&status).as_str_name();
        return Err(Status::failed_precondition(format!(
            "order {order_id} already has a reservation ({state}); use the same idempotency key to retry"
        )));
    }
    if attempt.covered {
        // Covered, not existing, key free a moment ago: a concurrent call took the key and
        // rolled back since. Nothing happened here; the caller retries.
        return Err(Status::aborted("concurrent update conflict, retry"));
    }
    let available: HashMap<String, i64> = attempt.skus.into_iter().zip(attempt.available).collect();
    let shortages = sorted
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
    let short = ReserveResponse {
        outcome: ReserveOutcome::InsufficientStock as i32,
        reservation: None,
        shortages,
    };
    let answer = idempotency::answer(&mut conn, key, &hash, short).await?;
    RESERVATIONS
        .with_label_values(&["insufficient_stock"])
        .inc();
    Ok(answer)
}

/// [`reserve`]'s statement. `stock` locks the items in SKU order and reads what they hold now;
/// `verdict` is whether every line is covered and the order has no reservation; only then does
/// `claim` take the key (with the response), and only a claim moves the stock (the check that
/// `available` stays non-negative guards it again) and writes the reservation and its lines. A
/// concurrent reservation of the same order by another key fails on `reservations.order_id`'s
/// uniqueness (ABORTED; the retry is refused as existing).
const RESERVE_SQL: &str = "WITH existing AS (
         SELECT status FROM reservations WHERE order_id = $4
     ), stock AS (
         SELECT sku, available FROM items WHERE sku = ANY($1) ORDER BY sku FOR UPDATE
     ), verdict AS (
         SELECT NOT EXISTS (SELECT 1 FROM existing)
                AND (SELECT count(*) FROM stock
                     JOIN unnest($1::text[], $2::bigint[]) AS r(sku, qty) USING (sku)
                     WHERE stock.available >= r.qty) = cardinality($1::text[]) AS covered
     ), claim AS (
         INSERT INTO idempotency_keys (key, request_hash, response)
         SELECT $7, $8, $6 FROM verdict WHERE covered
         ON CONFLICT (key) DO NOTHING RETURNING key
     ), shift AS (
         UPDATE items SET available = available - r.qty, reserved = reserved + r.qty,
                updated_at = now()
         FROM unnest($1::text[], $2::bigint[]) AS r(sku, qty)
         WHERE items.sku = r.sku AND EXISTS (SELECT 1 FROM claim)
     ), reservation AS (
         INSERT INTO reservations (reservation_id, order_id, status, created_at, updated_at)
         SELECT $3, $4, 'reserved', $5, $5 FROM claim
     ), lines AS (
         INSERT INTO reservation_lines (reservation_id, sku, quantity)
         SELECT $3, r.sku, r.qty FROM unnest($1::text[], $2::bigint[]) AS r(sku, qty)
         WHERE EXISTS (SELECT 1 FROM claim)
     )
     SELECT EXISTS (SELECT 1 FROM claim) AS reserved,
            (SELECT covered FROM verdict) AS covered,
            (SELECT status FROM existing) AS existing,
            coalesce((SELECT array_agg(sku ORDER BY sku) FROM stock), '{}') AS skus,
            coalesce((SELECT array_agg(available ORDER BY sku) FROM stock), '{}') AS available";

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

/// Moves an order's reserved stock to committed (it ships). Five round trips, as [`reserve`].
pub async fn commit(
    pool: &PgPool,
    key: &str,
    request: &impl prost::Message,
    order_id: Uuid,
) -> Result<CommitResponse, Status> {
    let hash = idempotency::request_hash(request);
    let mut tx = pool.begin().await.map_err(db::status)?;
    let (claimed, found) = claim_and_load(&mut tx, key, &hash, order_id).await?;
    if !claimed {
        return idempotency::stored(&mut tx, key, &hash).await;
    }
    let response = match found {
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
        Some(mut r) if r.status == ReservationStatus::Reserved as i32 => {
            let skus: Vec<String> = r.lines.iter().map(|l| l.sku.clone()).collect();
            let quantities: Vec<i64> = r.lines.iter().map(|l| l.quantity).collect();
            lock_items(&mut tx, &skus).await?;
            let now = Utc::now().trunc_subsecs(6);
            let id = Uuid::parse_str(&r.reservation_id)
                .map_err(|_| Status::internal("stored reservation id is not a UUID"))?;
            r.status = ReservationStatus::Committed as i32;
            r.updated_at = Some(to_proto(now));
            let response = CommitResponse {
                committed: true,
                reservation: Some(r),
            };
            let changed: i64 = sqlx::query_scalar(
                "WITH reservation AS (
                     UPDATE reservations SET status = 'committed', updated_at = $2
                     WHERE reservation_id = $1 AND status = 'reserved' RETURNING reservation_id
                 ), shift AS (
                     UPDATE items SET reserved = reserved - r.qty, committed = committed + r.qty,
                            updated_at = now()
                     FROM unnest($3::text[], $4::bigint[]) AS r(sku, qty)
                     WHERE items.sku = r.sku AND EXISTS (SELECT 1 FROM reservation)
                 ), answer AS (
                     UPDATE idempotency_keys SET response = $5
                     WHERE key = $6 AND EXISTS (SELECT 1 FROM reservation)
                 )
                 SELECT count(*) FROM reservation",
            )
            .bind(id)
            .bind(now)
            .bind(&skus)
            .bind(&quantities)
            .bind(response.encode_to_vec())
            .bind(key)
            .fetch_one(&mut *tx)
            .await
            .map_err(db::status)?;
            if changed == 0 {
                // Released or committed by a concurrent call since it was read: try again.
                return Err(Status::aborted(
                    "the reservation changed concurrently; retry",
                ));
            }
            tx.commit().await.map_err(db::status)?;
            RESERVATIONS.with_label_values(&["committed"]).inc();
            return Ok(response);
        }
        Some(r) => CommitResponse {
            committed: false,
            reservation: Some(r),
        },
    };
    idempotency::record(&mut tx, key, &response).await?;
    tx.commit().await.map_err(db::status)?;
    Ok(response)
}
