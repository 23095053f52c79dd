//! Label persistence; each mutation one transaction with its idempotency record.

use chrono::{DateTime, Utc};
use ordermesh::{
    db, idempotency,
    proto::shipping::{CancelLabelResponse, CreateLabelResponse, Label, LabelStatus},
    time::to_proto,
};
use sqlx::{PgConnection, PgPool};
use tonic::Status;
use uuid::Uuid;

use crate::metrics::LABELS;

#[derive(sqlx::FromRow)]
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
) -> Result<Option<LabelRow>, Status> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM labels WHERE order_id = $1{lock}"
    ))
    .bind(order_id)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db::status)
}

pub async fn get(pool: &PgPool, order_id: Uuid) -> Result<Option<Label>, Status> {
    let mut conn = pool.acquire().await.map_err(db::status)?;
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

pub async fn create(
    pool: &PgPool,
    key: &str,
    request: &impl prost::Message,
    label: NewLabel<'_>,
) -> Result<CreateLabelResponse, Status> {
    let mut tx = pool.begin().await.map_err(db::status)?;
    if let Some(replay) = idempotency::claim(&mut tx, key, request).await? {
        return Ok(replay);
    }
    if let Some(existing) = load(&mut tx, label.order_id, true).await? {
        let state = if existing.status == LabelStatus::Cancelled.as_str_name() {
            "cancelled"
        } else {
            "created"
        };
        return Err(Status::failed_precondition(format!(
            "order {} already has a label ({state}); retry with its original idempotency key",
            label.order_id
        )));
    }
    let label_id = Uuid::now_v7();
    let row: LabelRow = sqlx::query_as(&format!(
        "INSERT INTO labels (label_id, order_id, tracking_number, carrier, service_level, status, units, country_code)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {COLUMNS}"
    ))
    .bind(label_id)
    .bind(label.order_id)
    .bind(tracking_number(label_id))
    .bind(CARRIER)
    .bind(label.service_level)
    .bind(LabelStatus::Created.as_str_name())
    .bind(label.units)
    .bind(label.country_code)
    .fetch_one(&mut *tx)
    .await
    .map_err(db::status)?;
    let response = CreateLabelResponse {
        label: Some(row.into()),
    };
    idempotency::record(&mut tx, key, &response).await?;
    tx.commit().await.map_err(db::status)?;
    LABELS.with_label_values(&["created"]).inc();
    Ok(response)
}

pub async fn cancel(
    pool: &PgPool,
    key: &str,
    request: &impl prost::Message,
    order_id: Uuid,
) -> Result<CancelLabelResponse, Status> {
    let mut tx = pool.begin().await.map_err(db::status)?;
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
            .await
            .map_err(db::status)?;
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
            .await
            .map_err(db::status)?;
            (true, row)
        }
    };
    let response = CancelLabelResponse {
        cancelled,
        label: Some(row.into()),
    };
    idempotency::record(&mut tx, key, &response).await?;
    tx.commit().await.map_err(db::status)?;
    if cancelled {
        LABELS.with_label_values(&["cancelled"]).inc();
    }
    Ok(response)
}
