//! The HTTP/JSON surface for web clients and load tools, served on the gRPC port:
//! `POST /api/v1/orders` (201 with the order; 200 when `request_id` matched an earlier order)
//! and `GET /api/v1/orders/{id}`. Requests go through the very same gRPC handlers, so validation,
//! limits and errors are identical; a gRPC status becomes the matching HTTP status with a JSON
//! body `{"error": {"code", "message", "field_violations": [{"field", "description"}]}}`.

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, Path, State, rejection::JsonRejection},
    http::{HeaderValue, StatusCode, header::LOCATION},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use ordermesh::{
    proto::{
        common::{Address, Money},
        order::{
            CreateOrderRequest, GetOrderRequest, Order, OrderLine, ShippingMethod,
            order_service_server::OrderService,
        },
    },
    validation::field_violations,
};
use serde::Deserialize;
use serde_json::{Value, json};
use tonic::{Code, Status};

use crate::api::Orders;

/// Largest JSON body accepted.
const MAX_BODY_BYTES: usize = 256 * 1024;

/// Decodes a `POST /api/v1/orders` body exactly as the route's JSON extractor does (whole input,
/// no trailing data): the entry point of the `http_json` fuzz target.
pub fn decode_create(body: &[u8]) -> Result<CreateOrderRequest, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = CreateBody::deserialize(&mut de)?;
    de.end()?;
    Ok(parsed.into_request())
}

pub(crate) fn router(orders: Orders) -> Router {
    Router::new()
        .route("/api/v1/orders", post(create))
        .route("/api/v1/orders/{order_id}", get(fetch))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(orders)
}

/// The JSON body of `POST /api/v1/orders`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    #[serde(default)]
    request_id: String,
    #[serde(default)]
    customer_id: String,
    #[serde(default)]
    lines: Vec<LineBody>,
    shipping_address: Option<AddressBody>,
    /// "standard", "express" or "overnight".
    #[serde(default)]
    shipping_method: String,
    #[serde(default)]
    payment_token: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LineBody {
    #[serde(default)]
    sku: String,
    #[serde(default)]
    quantity: i64,
    unit_price: Option<MoneyBody>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MoneyBody {
    currency_code: String,
    amount_minor: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddressBody {
    #[serde(default)]
    recipient_name: String,
    #[serde(default)]
    line1: String,
    #[serde(default)]
    line2: String,
    #[serde(default)]
    city: String,
    #[serde(default)]
    region: String,
    #[serde(default)]
    postal_code: String,
    #[serde(default)]
    country_code: String,
}

impl CreateBody {
    /// The gRPC request this body stands for; an unknown shipping method becomes -1, which
    /// validation rejects naming the field.
    pub fn into_request(self) -> CreateOrderRequest {
        let shipping_method = match self.shipping_method.to_ascii_lowercase().as_str() {
            "" => ShippingMethod::Unspecified as i32,
            "standard" => ShippingMethod::Standard as i32,
            "express" => ShippingMethod::Express as i32,
            "overnight" => ShippingMethod::Overnight as i32,
            _ => -1, // rejected by validation, naming the field
        };
        CreateOrderRequest {
            request_id: self.request_id,
            customer_id: self.customer_id,
            lines: self
                .lines
                .into_iter()
                .map(|l| OrderLine {
                    sku: l.sku,
                    quantity: l.quantity,
                    unit_price: l.unit_price.map(|m| Money {
                        currency_code: m.currency_code,
                        amount_minor: m.amount_minor,
                    }),
                })
                .collect(),
            shipping_address: self.shipping_address.map(|a| Address {
                recipient_name: a.recipient_name,
                line1: a.line1,
                line2: a.line2,
                city: a.city,
                region: a.region,
                postal_code: a.postal_code,
                country_code: a.country_code,
            }),
            shipping_method,
            payment_token: self.payment_token,
        }
    }
}

async fn create(
    State(orders): State<Orders>,
    body: Result<Json<CreateBody>, JsonRejection>,
) -> Response {
    let Json(body) = match body {
        Ok(body) => body,
        Err(rejection) => {
            // Like gRPC: an oversized body is RESOURCE_EXHAUSTED (413), a missing JSON content type
            // is 415, and anything malformed is INVALID_ARGUMENT (400).
            let (http, code) = match rejection.status() {
                StatusCode::PAYLOAD_TOO_LARGE => {
                    (StatusCode::PAYLOAD_TOO_LARGE, "RESOURCE_EXHAUSTED")
                }
                StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                    (StatusCode::UNSUPPORTED_MEDIA_TYPE, "INVALID_ARGUMENT")
                }
                _ => (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"),
            };
            return error(http, code, &rejection.body_text(), &[]);
        }
    };
    let request = body.into_request();
    match orders.create_order(tonic::Request::new(request)).await {
        Ok(response) => {
            let response = response.into_inner();
            let Some(order) = response.order else {
                return status_response(Status::internal("no order returned"));
            };
            let code = if response.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let mut reply = (code, Json(order_json(&order))).into_response();
            if let Ok(location) =
                HeaderValue::from_str(&format!("/api/v1/orders/{}", order.order_id))
            {
                reply.headers_mut().insert(LOCATION, location);
            }
            reply
        }
        Err(status) => status_response(status),
    }
}

async fn fetch(State(orders): State<Orders>, Path(order_id): Path<String>) -> Response {
    match orders
        .get_order(tonic::Request::new(GetOrderRequest { order_id }))
        .await
    {
        Ok(response) => match response.into_inner().order {
            Some(order) => Json(order_json(&order)).into_response(),
            None => status_response(Status::internal("no order returned")),
        },
        Err(status) => status_response(status),
    }
}

fn status_response(status: Status) -> Response {
    let (http, code) = match status.code() {
        Code::InvalidArgument | Code::OutOfRange => (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"),
        Code::NotFound => (StatusCode::NOT_FOUND, "NOT_FOUND"),
        Code::AlreadyExists => (StatusCode::CONFLICT, "ALREADY_EXISTS"),
        Code::FailedPrecondition => (StatusCode::CONFLICT, "FAILED_PRECONDITION"),
        Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "RESOURCE_EXHAUSTED"),
        Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
        Code::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "DEADLINE_EXCEEDED"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
    };
    error(http, code, status.message(), &field_violations(&status))
}

fn error(http: StatusCode, code: &str, message: &str, violations: &[(String, String)]) -> Response {
    let violations: Vec<Value> = violations
        .iter()
        .map(|(field, description)| json!({ "field": field, "description": description }))
        .collect();
    let body =
        json!({ "error": { "code": code, "message": message, "field_violations": violations } });
    (http, Json(body)).into_response()
}

fn money(m: Option<&Money>) -> Value {
    m.map_or(
        Value::Null,
        |m| json!({ "currency_code": m.currency_code, "amount_minor": m.amount_minor }),
    )
}

fn timestamp(t: Option<&prost_types::Timestamp>) -> Value {
    t.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)))
        .map_or(Value::Null, |t| Value::String(t.to_rfc3339()))
}

/// The JSON form of an order (snake_case fields, enums as their short names).
fn order_json(o: &Order) -> Value {
    let lines: Vec<Value> = o
        .lines
        .iter()
        .map(|l| json!({ "sku": l.sku, "quantity": l.quantity, "unit_price": money(l.unit_price.as_ref()) }))
        .collect();
    let address = o.shipping_address.as_ref().map_or(Value::Null, |a| {
        json!({
            "recipient_name": a.recipient_name, "line1": a.line1, "line2": a.line2, "city": a.city,
            "region": a.region, "postal_code": a.postal_code, "country_code": a.country_code,
        })
    });
    json!({
        "order_id": o.order_id,
        "customer_id": o.customer_id,
        "status": o.status().as_str_name().trim_start_matches("ORDER_STATUS_"),
        "lines": lines,
        "total": money(o.total.as_ref()),
        "shipping_address": address,
        "shipping_method": o.shipping_method().as_str_name().trim_start_matches("SHIPPING_METHOD_").to_lowercase(),
        "confirmation_number": o.confirmation_number,
        "tracking_number": o.tracking_number,
        "failure_reason": o.failure_reason,
        "request_id": o.request_id,
        "created_at": timestamp(o.created_at.as_ref()),
        "updated_at": timestamp(o.updated_at.as_ref()),
        "version": o.version,
    })
}
