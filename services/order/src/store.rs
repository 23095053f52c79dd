//! Order persistence: a new order in one statement, and the view's reads. (The saga's
//! journal appends the later events and projects them: [`crate::saga::journal`].)

use chrono::{SubsecRound, Utc};
use ordermesh::Error;
use ordermesh::{
    idempotency,
    proto::order::{CreateOrderRequest, CreateOrderResponse, Order, OrderStatus},
};
use prost::Message;
use sqlx::{PgPool, types::Json};
use uuid::Uuid;

use crate::model::{NewOrder, ORDER_COLUMNS, OrderEvent, OrderRow};
use crate::saga::{
    definition::{DEFINITION_VERSION, FIRST},
    journal::Journal,
    messages::{RunTicket, ticket_id},
    outbox::{self, Columns},
};

/// Stores a new order — its Submitted event, its view row, its saga (first step current, with
/// its deadline and the request's propagation context), the saga's run ticket in the outbox,
/// and with a client `request_id` the response under that key — in one statement (one round
/// trip, one commit). With a `request_id` already seen, writes nothing and returns that order
/// as it is now (`created` false).
#[tracing::instrument(level = "debug", skip_all)]
pub async fn create(
    journal: &Journal,
    request: &CreateOrderRequest,
    order: NewOrder,
) -> Result<CreateOrderResponse, Error> {
    let pool = journal.pool();
    let order_id = Uuid::now_v7();
    // The view's timestamps (and the first event's, which a rebuild of the view takes them
    // from) come from here, not the database's now(): the response stored for a repeat of the
    // request is made before the statement runs.
    let now = Utc::now().trunc_subsecs(6);
    let event = OrderEvent::Submitted {
        customer_id: order.customer_id.clone(),
        currency: order.total.currency.to_string(),
        total_minor: order.total.minor,
        lines: order.lines.clone(),
        shipping_address: order.address.clone(),
        shipping_method: order.shipping_method.as_str_name().to_string(),
        request_id: order.request_id.clone().unwrap_or_default(),
    };
    let row = OrderRow {
        order_id,
        customer_id: order.customer_id,
        status: OrderStatus::Pending.as_str_name().into(),
        currency: order.total.currency.to_string(),
        total_minor: order.total.minor,
        lines: Json(order.lines),
        shipping_address: Json(order.address),
        shipping_method: order.shipping_method.as_str_name().into(),
        confirmation_number: String::new(),
        tracking_number: String::new(),
        failure_reason: String::new(),
        request_id: order.request_id.clone().unwrap_or_default(),
        created_at: now,
        updated_at: now,
        version: 1,
    };
    let response = CreateOrderResponse {
        order: Some(row.clone().into()),
        created: true,
    };
    let key = order
        .request_id
        .as_ref()
        .map(|id| format!("create-order:{id}"));
    let hash = idempotency::request_hash(request);
    let context = ordermesh::context::message_headers();
    let ticket = serde_json::to_vec(&RunTicket {
        order_id,
        redrive: false,
    })
    .map_err(|_| Error::internal("run ticket is not serialisable"))?;
    let messages = vec![outbox::Message {
        msg_id: ticket_id(order_id),
        subject: journal.names.run_subject(),
        payload: ticket,
        headers: context.clone(),
    }];
    let outbox = Columns::of(&messages);
    let deadline = now
        + chrono::Duration::from_std(journal.timeouts.for_step(FIRST))
            .unwrap_or(chrono::Duration::MAX);
    let payload =
        serde_json::to_value(&event).map_err(|_| Error::internal("event is not serialisable"))?;
    let created: i64 = sqlx::query_scalar(concat!(
        "WITH ",
        ordermesh::claim_key!("$1", "$2", "$3", "WHERE $1::text IS NOT NULL"),
        ", go AS (
             SELECT 1 WHERE $1::text IS NULL OR EXISTS (SELECT 1 FROM claim)
         ), event AS (
             INSERT INTO order_events (order_id, version, event_id, event_type, payload, recorded_at)
             SELECT $4, 1, $5, $6, $7, $16 FROM go
         ), view AS (
             INSERT INTO order_view (order_id, customer_id, status, currency, total_minor, lines,
                                     shipping_address, shipping_method, request_id, created_at,
                                     updated_at, version)
             SELECT $4, $8, $9, $10, $11, $12, $13, $14, $15, $16, $16, 1 FROM go
             RETURNING order_id
         ), saga AS (
             INSERT INTO sagas (order_id, definition_version, phase, current_step, payment_token,
                                deadline_at, context)
             SELECT $4, $17, 'forward', $18, $19, $24, $25 FROM go
             RETURNING order_id
         ), step AS (
             INSERT INTO saga_steps (order_id, step, compensation, status)
             SELECT order_id, $18, false, 'pending' FROM saga
         ), outbox AS (
             INSERT INTO outbox (msg_id, subject, payload, headers)
             SELECT o.msg_id, o.subject, o.payload, o.headers
             FROM go, unnest($20::uuid[], $21::text[], $22::bytea[], $23::jsonb[])
                  AS o(msg_id, subject, payload, headers)
         )
         SELECT count(*) FROM view",
    ))
    .bind(&key)
    .bind(&hash)
    .bind(response.encode_to_vec())
    .bind(order_id)
    .bind(Uuid::now_v7())
    .bind(event.event_type())
    .bind(payload)
    .bind(&row.customer_id)
    .bind(&row.status)
    .bind(&row.currency)
    .bind(row.total_minor)
    .bind(&row.lines)
    .bind(&row.shipping_address)
    .bind(&row.shipping_method)
    .bind(&row.request_id)
    .bind(now)
    .bind(DEFINITION_VERSION as i32)
    .bind(FIRST.name())
    .bind(&request.payment_token)
    .bind(&outbox.msg_ids)
    .bind(&outbox.subjects)
    .bind(&outbox.payloads)
    .bind(&outbox.headers)
    .bind(deadline)
    .bind(Json(&context))
    .fetch_one(pool)
    .await?;
    if created == 0 {
        // The request id was seen before: answer with that order as it is now.
        let key =
            key.ok_or_else(|| Error::internal("an order without a request id was not stored"))?;
        let mut conn = pool.acquire().await?;
        let first: CreateOrderResponse = idempotency::stored(&mut conn, &key, &hash).await?;
        drop(conn);
        let order_id = first.order.map(|o| o.order_id).unwrap_or_default();
        let id = Uuid::parse_str(&order_id)
            .map_err(|_| Error::internal("stored order id is not a UUID"))?;
        let current = get(pool, id)
            .await?
            .ok_or_else(|| Error::internal("order of a stored request is missing"))?;
        return Ok(CreateOrderResponse {
            order: Some(current),
            created: false,
        });
    }
    journal.outbox.hand_over(messages);
    if let Some(order) = &response.order {
        journal.changes.announce(order).await;
    }
    crate::metrics::SAGA_STARTED.inc();
    Ok(response)
}

#[tracing::instrument(level = "debug", skip_all, fields(%order_id))]
pub async fn get(pool: &PgPool, order_id: Uuid) -> Result<Option<Order>, Error> {
    let row: Option<OrderRow> = sqlx::query_as(&format!(
        "SELECT {ORDER_COLUMNS} FROM order_view WHERE order_id = $1"
    ))
    .bind(order_id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(Into::into))
}

/// Orders newest first (ids are UUID v7), optionally of one customer and status, after `before`.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn list(
    pool: &PgPool,
    customer_id: Option<&str>,
    status: Option<OrderStatus>,
    before: Option<Uuid>,
    limit: u32,
) -> Result<Vec<Order>, Error> {
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
    .await?;
    Ok(rows.into_iter().map(Into::into).collect())
}
