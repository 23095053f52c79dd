//! Label persistence; each mutation one transaction with its idempotency record (a create is a
//! single statement).

use chrono::{DateTime, SubsecRound, Utc};
use ordermesh::{Error, error::CONTENDED};
use ordermesh::{
    idempotency,
    proto::shipping::{CancelLabelResponse, CreateLabelResponse, Label, LabelStatus},
    time::to_proto,
};
use prost::Message;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::metrics::LABELS;

#[derive(sqlx::FromRow, Clone)]
struct LabelRow {
    label_id: Uuid,
    order_id: Uuid,
    tracking_number: String,
    carrier: String,
    service_level: String,
    status: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

const COLUMNS: &str =
    "label_id, order_id, tracking_number, carrier, service_level, status, created_at, updated_at";
const CARRIER: &str = "ordermesh-post";

impl From<LabelRow> for Label {
    fn from(r: LabelRow) -> Label {
        Label {
            label_id: r.label_id.to_string(),
            order_id: r.order_id.to_string(),
            tracking_number: r.tracking_number,
            carrier: r.carrier,
            service_level: r.service_level,
            status: LabelStatus::from_str_name(&r.status).unwrap_or_default() as i32,
            created_at: Some(to_proto(r.created_at)),
            updated_at: Some(to_proto(r.updated_at)),
        }
    }
}

async fn load(
    conn: &mut PgConnection,
    order_id: Uuid,
    lock: bool,
) -> Result<Option<LabelRow>, Error> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM labels WHERE order_id = $1{lock}"
    ))
    .bind(order_id)
    .fetch_optional(&mut *conn)
    .await
    .map_err(Error::from)
}

#[tracing::instrument(level = "debug", skip_all, fields(%order_id))]
pub async fn get(pool: &PgPool, order_id: Uuid) -> Result<Option<Label>, Error> {
    let mut conn = pool.acquire().await?;
    Ok(load(&mut conn, order_id, false).await?.map(Into::into))
}

/// A tracking number derived from the label id: "OM" + 16 upper-case hex digits.
fn tracking_number(label_id: Uuid) -> String {
    let hex = label_id.simple().to_string().to_uppercase();
    format!("OM{}", &hex[hex.len() - 16..])
}

pub struct NewLabel<'a> {
    pub order_id: Uuid,
    pub service_level: &'a str,
    pub units: i64,
    pub country_code: &'a str,
}

/// Creates the order's label, in one statement committed on its own: the key is claimed with
/// the response only if the order has no label yet, and the label is written only with the
/// claim. A label written meanwhile under another key (a concurrent create, or a cancel that
/// blocks the order) makes the label insert fail on `labels.order_id`'s uniqueness, which undoes
/// the claim too (ABORTED; the retry is refused as existing).
#[tracing::instrument(level = "debug", skip_all)]
pub async fn create(
    pool: &PgPool,
    key: &str,
    request: &impl prost::Message,
    label: NewLabel<'_>,
) -> Result<CreateLabelResponse, Error> {
    #[derive(sqlx::FromRow)]
    struct Attempt {
        created: bool,
        existing: Option<String>,
    }
    let hash = idempotency::request_hash(request);
    let label_id = Uuid::now_v7();
    // Timestamps from here, so the stored response and the row agree.
    let now = Utc::now().trunc_subsecs(6);
    let row = LabelRow {
        label_id,
        order_id: label.order_id,
        tracking_number: tracking_number(label_id),
        carrier: CARRIER.into(),
        service_level: label.service_level.into(),
        status: LabelStatus::Created.as_str_name().into(),
        created_at: now,
        updated_at: now,
    };
    let mut conn = pool.acquire().await?;
    let attempt: Attempt = sqlx::query_as(concat!(
        "WITH existing AS (
             SELECT status FROM labels WHERE order_id = $2
         ), ",
        ordermesh::claim_key!("$10", "$11", "$12", "WHERE NOT EXISTS (SELECT 1 FROM existing)"),
        ", label AS (
             INSERT INTO labels (label_id, order_id, tracking_number, carrier, service_level, status,
                                 units, country_code, created_at, updated_at)
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $9 FROM claim
         )
         SELECT EXISTS (SELECT 1 FROM claim) AS created, (SELECT status FROM existing) AS existing",
    ))
    .bind(row.label_id)
    .bind(row.order_id)
    .bind(&row.tracking_number)
    .bind(&row.carrier)
    .bind(&row.service_level)
    .bind(&row.status)
    .bind(label.units)
    .bind(label.country_code)
    .bind(now)
    .bind(key)
    .bind(&hash)
    .bind(
        CreateLabelResponse {
            label: Some(Label::from(row.clone())),
        }
        .encode_to_vec(),
    )
    .fetch_one(&mut *conn)
    .await?;
    if attempt.created {
        LABELS.with_label_values(&["created"]).inc();
        return Ok(CreateLabelResponse {
            label: Some(row.into()),
        });
    }
    if let Some(replay) = idempotency::previous(&mut conn, key, &hash).await? {
        return Ok(replay);
    }
    match attempt.existing {
        Some(status) => {
            let state = if status == LabelStatus::Cancelled.as_str_name() {
                "cancelled"
            } else {
                "created"
            };
            Err(Error::conflict(format!(
                "order {} already has a label ({state}); retry with its original idempotency key",
                label.order_id
            )))
        }
        // The key was taken by a call that has rolled back since: nothing happened here.
        None => Err(Error::Contended(CONTENDED)),
    }
}

#[tracing::instrument(level = "debug", skip_all, fields(%order_id))]
pub async fn cancel(
    pool: &PgPool,
    key: &str,
    request: &impl prost::Message,
    order_id: Uuid,
) -> Result<CancelLabelResponse, Error> {
    let mut tx = pool.begin().await?;
    if let Some(replay) = idempotency::claim(&mut tx, key, request).await? {
        return Ok(replay);
    }
    let cancelled_status = LabelStatus::Cancelled.as_str_name();
    let (cancelled, row) = match load(&mut tx, order_id, true).await? {
        None => {
            let row: LabelRow = sqlx::query_as(&format!(
                "INSERT INTO labels (label_id, order_id, tracking_number, carrier, service_level, status, units, country_code)
                 VALUES ($1, $2, '', $3, '', $4, 0, '') RETURNING {COLUMNS}"
            ))
            .bind(Uuid::now_v7())
            .bind(order_id)
            .bind(CARRIER)
            .bind(cancelled_status)
            .fetch_one(&mut *tx)
            .await?;
            (false, row)
        }
        Some(row) if row.status == cancelled_status => (false, row),
        Some(row) => {
            let row: LabelRow = sqlx::query_as(&format!(
                "UPDATE labels SET status = $2, updated_at = now() WHERE label_id = $1 RETURNING {COLUMNS}"
            ))
            .bind(row.label_id)
            .bind(cancelled_status)
            .fetch_one(&mut *tx)
            .await?;
            (true, row)
        }
    };
    let response = CancelLabelResponse {
        cancelled,
        label: Some(row.into()),
    };
    idempotency::record(&mut tx, key, &response).await?;
    tx.commit().await?;
    if cancelled {
        LABELS.with_label_values(&["cancelled"]).inc();
    }
    Ok(response)
}
