//! Inventory persistence. Every mutation is one transaction that also records its idempotency
//! key; item rows are locked in SKU order so concurrent multi-line reservations cannot deadlock.

use std::collections::HashMap;

use chrono::{DateTime, SubsecRound, Utc};
use ordermesh::{
    domain::Sku,
    idempotency,
    proto::inventory::{
        CommitResponse, Item, ReleaseResponse, Reservation, ReservationLine, ReservationStatus,
        ReserveOutcome, ReserveResponse, Shortage,
    },
    time::to_proto,
};

use ordermesh::{Error, error::CONTENDED};
use prost::Message;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::{metrics::RESERVATIONS, unsettled::Unsettled};

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

#[tracing::instrument(level = "debug", skip_all)]
pub async fn upsert_item(
    pool: &PgPool,
    sku: &Sku,
    name: &str,
    available: i64,
) -> Result<Item, Error> {
    let row: ItemRow = sqlx::query_as(&format!(
        "INSERT INTO items (sku, name, available) VALUES ($1, $2, $3)
         ON CONFLICT (sku) DO UPDATE SET name = EXCLUDED.name, available = EXCLUDED.available, updated_at = now()
         RETURNING {ITEM_COLUMNS}"
    ))
    .bind(sku.as_str())
    .bind(name)
    .bind(available)
    .fetch_one(pool)
    .await?;
    Ok(row.into())
}

#[tracing::instrument(level = "debug", skip_all)]
pub async fn get_item(pool: &PgPool, sku: &Sku) -> Result<Option<Item>, Error> {
    let row: Option<ItemRow> =
        sqlx::query_as(&format!("SELECT {ITEM_COLUMNS} FROM items WHERE sku = $1"))
            .bind(sku.as_str())
            .fetch_optional(pool)
            .await?;
    Ok(row.map(Into::into))
}

/// Items after `after` (exclusive) in SKU order, at most `limit`.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn list_items(
    pool: &PgPool,
    after: Option<&Sku>,
    limit: u32,
) -> Result<Vec<Item>, Error> {
    let rows: Vec<ItemRow> = sqlx::query_as(&format!(
        "SELECT {ITEM_COLUMNS} FROM items WHERE $1::text IS NULL OR sku > $1 ORDER BY sku LIMIT $2"
    ))
    .bind(after.map(Sku::as_str))
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
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

#[tracing::instrument(level = "debug", skip_all, fields(%order_id))]
pub async fn get_reservation(pool: &PgPool, order_id: Uuid) -> Result<Option<Reservation>, Error> {
    let mut conn = pool.acquire().await?;
    reservation_of(&mut conn, order_id).await
}

/// The order's reservation with its lines in SKU byte order (as [`reserve`] answers them,
/// whatever the database's collation), in one statement.
async fn reservation_of(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> Result<Option<Reservation>, Error> {
    #[derive(sqlx::FromRow)]
    struct Found {
        #[sqlx(flatten)]
        row: ReservationRow,
        skus: Vec<String>,
        quantities: Vec<i64>,
    }
    let found: Option<Found> = sqlx::query_as(
        "SELECT r.reservation_id, r.order_id, r.status, r.created_at, r.updated_at,
                coalesce(l.skus, '{}') AS skus, coalesce(l.quantities, '{}') AS quantities
         FROM reservations r
         LEFT JOIN LATERAL (
             SELECT array_agg(sku ORDER BY sku COLLATE \"C\") AS skus,
                    array_agg(quantity ORDER BY sku COLLATE \"C\") AS quantities
             FROM reservation_lines WHERE reservation_id = r.reservation_id
         ) l ON true
         WHERE r.order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(found.map(|f| f.row.with_lines(f.skus.into_iter().zip(f.quantities))))
}

/// Reserves every line or none. `request` is the wire request, hashed for the idempotency check.
///
/// One statement, committed on its own ([`RESERVE_SQL`]): it locks the items in SKU order (so
/// concurrent multi-line reservations cannot deadlock) and, only if every line is covered and
/// the order has no reservation yet, claims the key with the response, moves the stock and
/// writes the reservation. When it did not reserve, what it returned says why, and a second
/// round trip answers: a replay, a refusal, or the shortages (stored under the key). A new
/// reservation is remembered in `unsettled` for the Commit or Release that follows.
#[tracing::instrument(level = "debug", skip_all, fields(%order_id))]
pub async fn reserve(
    pool: &PgPool,
    unsettled: &Unsettled,
    key: &str,
    request: &impl prost::Message,
    order_id: Uuid,
    lines: &[(Sku, i64)],
) -> Result<ReserveResponse, Error> {
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
    let reservation = Reservation {
        reservation_id: reservation_id.to_string(),
        order_id: order_id.to_string(),
        status: ReservationStatus::Reserved as i32,
        lines: sorted.clone(),
        created_at: Some(to_proto(now)),
        updated_at: Some(to_proto(now)),
    };
    let response = ReserveResponse {
        outcome: ReserveOutcome::Reserved as i32,
        reservation: Some(reservation.clone()),
        shortages: Vec::new(),
    };
    let mut conn = pool.acquire().await?;
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
        .await?;
    if attempt.reserved {
        RESERVATIONS.with_label_values(&["reserved"]).inc();
        unsettled.remember(order_id, reservation);
        return Ok(response);
    }
    // Not reserved: a repeat of a call already answered, another call's reservation of this
    // order, or too little stock.
    if let Some(replay) = idempotency::previous(&mut conn, key, &hash).await? {
        return Ok(replay);
    }
    if let Some(status) = attempt.existing {
        let state = status_of(&status).as_str_name();
        return Err(Error::conflict(format!(
            "order {order_id} already has a reservation ({state}); use the same idempotency key to retry"
        )));
    }
    if attempt.covered {
        // Covered, not existing, key free a moment ago: a concurrent call took the key and
        // rolled back since. Nothing happened here; the caller retries.
        return Err(Error::Contended(CONTENDED));
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
const RESERVE_SQL: &str = concat!(
    "WITH existing AS (
         SELECT status FROM reservations WHERE order_id = $4
     ), stock AS (
         SELECT sku, available FROM items WHERE sku = ANY($1) ORDER BY sku FOR UPDATE
     ), verdict AS (
         SELECT NOT EXISTS (SELECT 1 FROM existing)
                AND (SELECT count(*) FROM stock
                     JOIN unnest($1::text[], $2::bigint[]) AS r(sku, qty) USING (sku)
                     WHERE stock.available >= r.qty) = cardinality($1::text[]) AS covered
     ), ",
    ordermesh::claim_key!("$7", "$8", "$6", "FROM verdict WHERE covered"),
    ", shift AS (
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
            coalesce((SELECT array_agg(available ORDER BY sku) FROM stock), '{}') AS available"
);

/// Returns an order's stock to available, reserved or committed: the saga releases when it
/// compensates, also after a ConfirmOrder whose commit may have happened before its deadline
/// passed. With no reservation, records a released one without lines so that a late Reserve
/// of the same order is refused. Like [`commit`]: a
/// read (skipped when `unsettled` holds the reservation), then one statement that claims the
/// key with the response and makes the change.
#[tracing::instrument(level = "debug", skip_all, fields(%order_id))]
pub async fn release(
    pool: &PgPool,
    unsettled: &Unsettled,
    key: &str,
    request: &impl prost::Message,
    order_id: Uuid,
) -> Result<ReleaseResponse, Error> {
    let hash = idempotency::request_hash(request);
    let mut conn = pool.acquire().await?;
    let response = |settled| ReleaseResponse {
        released: true,
        reservation: Some(settled),
    };
    if let Some(r) = unsettled.take(order_id)
        && let Some(done) = settle(&mut conn, r, Settlement::Release, key, &hash, response).await?
    {
        return Ok(done);
    }
    match reservation_of(&mut conn, order_id).await? {
        None => release_unreserved(&mut conn, key, &hash, order_id).await,
        Some(r) if r.status == ReservationStatus::Reserved as i32 => {
            settle(&mut conn, r, Settlement::Release, key, &hash, response)
                .await?
                .ok_or_else(changed_concurrently)
        }
        Some(r) if r.status == ReservationStatus::Committed as i32 => {
            settle(&mut conn, r, Settlement::Return, key, &hash, response)
                .await?
                .ok_or_else(changed_concurrently)
        }
        // Released already: by this key (the answer stored then is replayed) or another one.
        Some(r) => {
            let response = ReleaseResponse {
                released: false,
                reservation: Some(r),
            };
            idempotency::answer(&mut conn, key, &hash, response).await
        }
    }
}

/// [`release`] of an order with no reservation: claims the key and writes a released
/// reservation in one statement. A Reserve that wrote the order's reservation since the read
/// makes the insert fail (ABORTED, nothing written); the retry finds it and releases it.
async fn release_unreserved(
    conn: &mut PgConnection,
    key: &str,
    hash: &[u8],
    order_id: Uuid,
) -> Result<ReleaseResponse, Error> {
    let now = Utc::now().trunc_subsecs(6);
    let row = ReservationRow {
        reservation_id: Uuid::now_v7(),
        order_id,
        status: "released".into(),
        created_at: now,
        updated_at: now,
    };
    let reservation_id = row.reservation_id;
    let response = ReleaseResponse {
        released: false,
        reservation: Some(row.with_lines([])),
    };
    let claimed: bool = sqlx::query_scalar(concat!(
        "WITH ",
        ordermesh::claim_key!("$1", "$2", "$3", ""),
        ", reservation AS (
             INSERT INTO reservations (reservation_id, order_id, status, created_at, updated_at)
             SELECT $4, $5, 'released', $6, $6 FROM claim
         )
         SELECT EXISTS (SELECT 1 FROM claim)",
    ))
    .bind(key)
    .bind(hash)
    .bind(response.encode_to_vec())
    .bind(reservation_id)
    .bind(order_id)
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    if claimed {
        return Ok(response);
    }
    idempotency::stored(conn, key, hash).await
}

/// Moves an order's reserved stock to committed (it ships). One commit: [`settle`]'s statement
/// on the reservation this process remembers from Reserve, or else on the one read back first.
/// A repeat finds the reservation committed and replays the stored answer.
#[tracing::instrument(level = "debug", skip_all, fields(%order_id))]
pub async fn commit(
    pool: &PgPool,
    unsettled: &Unsettled,
    key: &str,
    request: &impl prost::Message,
    order_id: Uuid,
) -> Result<CommitResponse, Error> {
    let hash = idempotency::request_hash(request);
    let mut conn = pool.acquire().await?;
    let response = |settled| CommitResponse {
        committed: true,
        reservation: Some(settled),
    };
    if let Some(r) = unsettled.take(order_id)
        && let Some(done) = settle(&mut conn, r, Settlement::Commit, key, &hash, response).await?
    {
        return Ok(done);
    }
    match reservation_of(&mut conn, order_id).await? {
        None => Err(Error::not_found(format!(
            "order {order_id} has no reservation"
        ))),
        Some(r) if r.status == ReservationStatus::Released as i32 => Err(Error::conflict(format!(
            "the reservation of order {order_id} was released and cannot be committed"
        ))),
        Some(r) if r.status == ReservationStatus::Reserved as i32 => {
            settle(&mut conn, r, Settlement::Commit, key, &hash, response)
                .await?
                .ok_or_else(changed_concurrently)
        }
        // Committed already: by this key (the answer stored then is replayed) or another one.
        Some(r) => {
            let response = CommitResponse {
                committed: false,
                reservation: Some(r),
            };
            idempotency::answer(&mut conn, key, &hash, response).await
        }
    }
}

/// Where a reservation goes.
#[derive(Debug, Clone, Copy)]
enum Settlement {
    /// Reserved → committed.
    Commit,
    /// Reserved → released.
    Release,
    /// Committed → released: the order was cancelled after its stock was committed.
    Return,
}

impl Settlement {
    fn status(self) -> ReservationStatus {
        match self {
            Settlement::Commit => ReservationStatus::Committed,
            Settlement::Release | Settlement::Return => ReservationStatus::Released,
        }
    }

    /// The reservation's `status` column afterwards (the metric's label too).
    fn column(self) -> &'static str {
        match self {
            Settlement::Commit => "committed",
            Settlement::Release | Settlement::Return => "released",
        }
    }

    /// The reservation's `status` column before.
    fn from(self) -> &'static str {
        match self {
            Settlement::Commit | Settlement::Release => "reserved",
            Settlement::Return => "committed",
        }
    }

    /// Change of `available`, `reserved` and `committed` per reserved unit.
    fn deltas(self) -> (i64, i64, i64) {
        match self {
            Settlement::Commit => (0, -1, 1),
            Settlement::Release => (1, -1, 0),
            Settlement::Return => (1, 0, -1),
        }
    }
}

/// Settles `reservation` (read or remembered in the status `to` starts from) in one statement
/// ([`SETTLE_SQL`]) and answers `response(the reservation afterwards)`, which the statement
/// stores under `key`. If the key was taken meanwhile, replays that call's answer; if the
/// reservation is no longer in that status, nothing happened: `None`.
async fn settle<R: prost::Message + Default>(
    conn: &mut PgConnection,
    mut reservation: Reservation,
    to: Settlement,
    key: &str,
    hash: &[u8],
    response: impl FnOnce(Reservation) -> R,
) -> Result<Option<R>, Error> {
    let id = Uuid::parse_str(&reservation.reservation_id)
        .map_err(|_| Error::internal("stored reservation id is not a UUID"))?;
    let skus: Vec<String> = reservation.lines.iter().map(|l| l.sku.clone()).collect();
    let quantities: Vec<i64> = reservation.lines.iter().map(|l| l.quantity).collect();
    let now = Utc::now().trunc_subsecs(6);
    reservation.status = to.status() as i32;
    reservation.updated_at = Some(to_proto(now));
    let response = response(reservation);
    let (d_available, d_reserved, d_committed) = to.deltas();
    let settled: bool = sqlx::query_scalar(SETTLE_SQL)
        .bind(id)
        .bind(now)
        .bind(&skus)
        .bind(&quantities)
        .bind(key)
        .bind(hash)
        .bind(response.encode_to_vec())
        .bind(to.column())
        .bind(d_available)
        .bind(d_reserved)
        .bind(d_committed)
        .bind(to.from())
        .fetch_one(&mut *conn)
        .await?;
    if settled {
        RESERVATIONS.with_label_values(&[to.column()]).inc();
        return Ok(Some(response));
    }
    idempotency::previous(conn, key, hash).await
}

/// A reservation read as reserved was settled by another call before this one could: nothing
/// happened here, and a retry sees how it ended.
fn changed_concurrently() -> Error {
    Error::Contended("the reservation changed concurrently; retry")
}

/// [`settle`]'s statement. `held` locks the reservation row if it is still in status `$12`; only then
/// does `claim` take the key (with the response), and only a claim locks the items in SKU
/// order (`stock`, materialized so the locks are taken before `shift` joins it: concurrent
/// settlements and reservations sharing SKUs cannot deadlock), sets the reservation's status
/// and moves the stock by `$9..$11` per unit.
const SETTLE_SQL: &str = concat!(
    "WITH held AS (
         SELECT reservation_id FROM reservations
         WHERE reservation_id = $1 AND status = $12 FOR UPDATE
     ), ",
    ordermesh::claim_key!("$5", "$6", "$7", "FROM held"),
    ", stock AS MATERIALIZED (
         SELECT sku FROM items WHERE sku = ANY($3) AND EXISTS (SELECT 1 FROM claim)
         ORDER BY sku FOR UPDATE
     ), reservation AS (
         UPDATE reservations SET status = $8, updated_at = $2
         WHERE reservation_id = $1 AND EXISTS (SELECT 1 FROM claim)
     ), shift AS (
         UPDATE items SET available = available + $9 * r.qty, reserved = reserved + $10 * r.qty,
                committed = committed + $11 * r.qty, updated_at = now()
         FROM stock JOIN unnest($3::text[], $4::bigint[]) AS r(sku, qty) USING (sku)
         WHERE items.sku = stock.sku
     )
     SELECT EXISTS (SELECT 1 FROM claim)"
);
