//! Order persistence: events appended with optimistic concurrency and the view projected in the
//! same transaction.

use ordermesh::{
    db, idempotency,
    proto::order::{CreateOrderRequest, CreateOrderResponse, Order, OrderStatus},
};
use sqlx::{PgConnection, PgPool, types::Json};
use tonic::Status;
use uuid::Uuid;

use crate::model::{NewOrder, ORDER_COLUMNS, OrderEvent, OrderRow, Projection};
use crate::saga::state::{self, SagaContext};

/// Appends `event` as version `version` of the order's stream. A concurrent writer that got
/// there first makes this fail with ABORTED (the caller reloads and retries).
async fn append(
    conn: &mut PgConnection,
    order_id: Uuid,
    version: i64,
    event: &OrderEvent,
) -> Result<Uuid, Status> {
    let payload =
        serde_json::to_value(event).map_err(|_| Status::internal("event is not serialisable"))?;
    let event_id = Uuid::now_v7();
    sqlx::query("INSERT INTO order_events (order_id, version, event_id, event_type, payload) VALUES ($1, $2, $3, $4, $5)")
        .bind(order_id)
        .bind(version)
        .bind(event_id)
        .bind(event.event_type())
        .bind(payload)
        .execute(&mut *conn)
        .await
        .map_err(db::status)?;
    Ok(event_id)
}

/// Appends `events` to the order's stream and projects them onto its view row, in the caller's
/// transaction. Returns the new events' ids and the updated row.
pub async fn append_and_project(
    conn: &mut PgConnection,
    order_id: Uuid,
    events: &[OrderEvent],
) -> Result<(Vec<Uuid>, OrderRow), Status> {
    let row: OrderRow = sqlx::query_as(&format!(
        "SELECT {ORDER_COLUMNS} FROM order_view WHERE order_id = $1 FOR UPDATE"
    ))
    .bind(order_id)
    .fetch_one(&mut *conn)
    .await
    .map_err(db::status)?;
    if events.is_empty() {
        return Ok((Vec::new(), row));
    }
    let mut projection = Projection::of(&row);
    let mut ids = Vec::with_capacity(events.len());
    for event in events {
        projection.apply(event);
        ids.push(append(conn, order_id, projection.version, event).await?);
    }
    let row: OrderRow = sqlx::query_as(&format!(
        "UPDATE order_view SET status = $2, confirmation_number = $3, tracking_number = $4, failure_reason = $5,
                version = $6, updated_at = now()
         WHERE order_id = $1 RETURNING {ORDER_COLUMNS}"
    ))
    .bind(order_id)
    .bind(projection.status.as_str_name())
    .bind(&projection.confirmation_number)
    .bind(&projection.tracking_number)
    .bind(&projection.failure_reason)
    .bind(projection.version)
    .fetch_one(&mut *conn)
    .await
    .map_err(db::status)?;
    Ok((ids, row))
}

/// The view row of an order (the saga reads lines, total and address from it).
pub async fn get_row(pool: &PgPool, order_id: Uuid) -> Result<Option<OrderRow>, Status> {
    sqlx::query_as(&format!(
        "SELECT {ORDER_COLUMNS} FROM order_view WHERE order_id = $1"
    ))
    .bind(order_id)
    .fetch_optional(pool)
    .await
    .map_err(db::status)
}

/// Stores a new order (its Submitted event, its view row, its saga and the saga's first step in
/// the outbox) in one transaction. With a client
/// `request_id` already seen, returns that order instead (`created` false).
pub async fn create(
    pool: &PgPool,
    saga: &SagaContext,
    request: &CreateOrderRequest,
    order: NewOrder,
) -> Result<CreateOrderResponse, Status> {
    let mut tx = pool.begin().await.map_err(db::status)?;
    if let Some(request_id) = &order.request_id {
        let key = format!("create-order:{request_id}");
        if let Some(first) =
            idempotency::claim::<CreateOrderResponse>(&mut tx, &key, request).await?
        {
            drop(tx);
            let order_id = first.order.map(|o| o.order_id).unwrap_or_default();
            let id = Uuid::parse_str(&order_id)
                .map_err(|_| Status::internal("stored order id is not a UUID"))?;
            let current = get(pool, id)
                .await?
                .ok_or_else(|| Status::internal("order of a stored request is missing"))?;
            return Ok(CreateOrderResponse {
                order: Some(current),
                created: false,
            });
        }
    }
    let order_id = Uuid::now_v7();
    let event = OrderEvent::Submitted {
        customer_id: order.customer_id.clone(),
        currency: order.total.currency.to_string(),
        total_minor: order.total.minor,
        lines: order.lines.clone(),
        shipping_address: order.address.clone(),
        shipping_method: order.shipping_method.as_str_name().to_string(),
        request_id: order.request_id.clone().unwrap_or_default(),
    };
    append(&mut tx, order_id, 1, &event).await?;
    let row: OrderRow = sqlx::query_as(&format!(
        "INSERT INTO order_view (order_id, customer_id, status, currency, total_minor, lines, shipping_address,
                                 shipping_method, request_id, created_at, updated_at, version)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now(), now(), 1)
         RETURNING {ORDER_COLUMNS}"
    ))
    .bind(order_id)
    .bind(&order.customer_id)
    .bind(OrderStatus::Pending.as_str_name())
    .bind(order.total.currency.as_str())
    .bind(order.total.minor)
    .bind(Json(&order.lines))
    .bind(Json(&order.address))
    .bind(order.shipping_method.as_str_name())
    .bind(order.request_id.clone().unwrap_or_default())
    .fetch_one(&mut *tx)
    .await
    .map_err(db::status)?;
    state::start(&mut tx, saga, order_id, &request.payment_token).await?;
    let response = CreateOrderResponse {
        order: Some(row.into()),
        created: true,
    };
    if let Some(request_id) = &order.request_id {
        idempotency::record(&mut tx, &format!("create-order:{request_id}"), &response).await?;
    }
    tx.commit().await.map_err(db::status)?;
    saga.outbox.wake();
    saga.changes.announce(order_id).await;
    crate::metrics::SAGA_STARTED.inc();
    Ok(response)
}

pub async fn get(pool: &PgPool, order_id: Uuid) -> Result<Option<Order>, Status> {
    let row: Option<OrderRow> = sqlx::query_as(&format!(
        "SELECT {ORDER_COLUMNS} FROM order_view WHERE order_id = $1"
    ))
    .bind(order_id)
    .fetch_optional(pool)
    .await
    .map_err(db::status)?;
    Ok(row.map(Into::into))
}

/// Orders newest first (ids are UUID v7), optionally of one customer and status, after `before`.
pub async fn list(
    pool: &PgPool,
    customer_id: Option<&str>,
    status: Option<OrderStatus>,
    before: Option<Uuid>,
    limit: u32,
) -> Result<Vec<Order>, Status> {
    let rows: Vec<OrderRow> = sqlx::query_as(&format!(
        "SELECT {ORDER_COLUMNS} FROM order_view
         WHERE ($1::text IS NULL OR customer_id = $1)
           AND ($2::text IS NULL OR status = $2)
           AND ($3::uuid IS NULL OR order_id < $3)
         ORDER BY order_id DESC LIMIT $4"
    ))
    .bind(customer_id)
    .bind(status.map(|s| s.as_str_name()))
    .bind(before)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await
    .map_err(db::status)?;
    Ok(rows.into_iter().map(Into::into).collect())
}
