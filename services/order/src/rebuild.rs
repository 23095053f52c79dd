//! Rebuilds `order_view` from `order_events`, the source of truth, with the same projection the
//! live writes use ([`Projection::apply`]), in one transaction: readers see the old view until
//! the new one is complete. Run with `ordermesh projections rebuild`.

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use sqlx::{PgPool, types::Json};
use uuid::Uuid;

use crate::model::{OrderEvent, OrderRow, Projection};

#[derive(sqlx::FromRow)]
struct EventRow {
    order_id: Uuid,
    payload: Json<OrderEvent>,
    recorded_at: DateTime<Utc>,
}

/// Replays every order's events into a fresh view. Returns the number of orders.
pub async fn rebuild(pool: &PgPool) -> anyhow::Result<u64> {
    let mut tx = pool.begin().await?;
    // Writers wait while the view is rebuilt, so no change slips between replay and swap.
    sqlx::query("LOCK TABLE order_view IN EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    let mut rows: Vec<OrderRow> = Vec::new();
    {
        let mut events = sqlx::query_as::<_, EventRow>(
            "SELECT order_id, payload, recorded_at FROM order_events ORDER BY order_id, version",
        )
        .fetch(&mut *tx);
        let mut current: Option<(OrderRow, Projection)> = None;
        while let Some(event) = events.try_next().await? {
            if current
                .as_ref()
                .is_none_or(|(row, _)| row.order_id != event.order_id)
            {
                if let Some((row, projection)) = current.take() {
                    rows.push(finish(row, projection));
                }
                current = Some(start(&event)?);
            }
            if let Some((row, projection)) = current.as_mut() {
                projection.apply(&event.payload.0);
                row.updated_at = event.recorded_at;
            }
        }
        if let Some((row, projection)) = current.take() {
            rows.push(finish(row, projection));
        }
    }
    sqlx::query("DELETE FROM order_view")
        .execute(&mut *tx)
        .await?;
    for row in &rows {
        sqlx::query(
            "INSERT INTO order_view (order_id, customer_id, status, currency, total_minor, lines, shipping_address,
                shipping_method, confirmation_number, tracking_number, failure_reason, request_id, created_at, updated_at, version)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        )
        .bind(row.order_id)
        .bind(&row.customer_id)
        .bind(&row.status)
        .bind(&row.currency)
        .bind(row.total_minor)
        .bind(&row.lines)
        .bind(&row.shipping_address)
        .bind(&row.shipping_method)
        .bind(&row.confirmation_number)
        .bind(&row.tracking_number)
        .bind(&row.failure_reason)
        .bind(&row.request_id)
        .bind(row.created_at)
        .bind(row.updated_at)
        .bind(row.version)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(rows.len() as u64)
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

fn finish(mut row: OrderRow, projection: Projection) -> OrderRow {
    row.status = projection.status.as_str_name().to_string();
    row.confirmation_number = projection.confirmation_number;
    row.tracking_number = projection.tracking_number;
    row.failure_reason = projection.failure_reason;
    row.version = projection.version;
    row
}

/// `ordermesh-order rebuild-projections`: connects with the service's own settings and rebuilds.
pub async fn run_command(settings: &ordermesh::config::Settings) -> anyhow::Result<()> {
    let name = settings.database_name();
    let pool = ordermesh::db::connect(&settings.database, &name, &crate::MIGRATOR).await?;
    let orders = rebuild(&pool).await?;
    println!("rebuilt order_view of {name} from its events: {orders} orders");
    Ok(())
}
