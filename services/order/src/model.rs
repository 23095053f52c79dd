//! The order's events and its read-model row, and their conversion to the wire types.

use chrono::{DateTime, Utc};
use ordermesh::{
    domain::Money,
    proto::{
        common::{self, Address},
        order::{Order, OrderLine, OrderStatus, ShippingMethod},
    },
    time::to_proto,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A validated new order, ready to store.
#[derive(Debug, Clone)]
pub struct NewOrder {
    pub request_id: Option<String>,
    pub customer_id: String,
    pub lines: Vec<LineRecord>,
    pub total: Money,
    pub address: AddressRecord,
    pub shipping_method: ShippingMethod,
}

/// One line as stored in events and the view. The currency is the order's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineRecord {
    pub sku: String,
    pub quantity: i64,
    pub unit_price_minor: i64,
}

/// The shipping address as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressRecord {
    pub recipient_name: String,
    pub line1: String,
    pub line2: String,
    pub city: String,
    pub region: String,
    pub postal_code: String,
    pub country_code: String,
}

impl From<&Address> for AddressRecord {
    fn from(a: &Address) -> AddressRecord {
        AddressRecord {
            recipient_name: a.recipient_name.clone(),
            line1: a.line1.clone(),
            line2: a.line2.clone(),
            city: a.city.clone(),
            region: a.region.clone(),
            postal_code: a.postal_code.clone(),
            country_code: a.country_code.clone(),
        }
    }
}

impl From<AddressRecord> for Address {
    fn from(a: AddressRecord) -> Address {
        Address {
            recipient_name: a.recipient_name,
            line1: a.line1,
            line2: a.line2,
            city: a.city,
            region: a.region,
            postal_code: a.postal_code,
            country_code: a.country_code,
        }
    }
}

/// Everything that happens to an order, in the order it happened. Stored as JSON in
/// `order_events`; variants are only ever added, never changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OrderEvent {
    /// The order was accepted.
    Submitted {
        customer_id: String,
        currency: String,
        total_minor: i64,
        lines: Vec<LineRecord>,
        shipping_address: AddressRecord,
        shipping_method: String,
        request_id: String,
    },
}

impl OrderEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            OrderEvent::Submitted { .. } => "submitted",
        }
    }
}

/// A row of `order_view`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OrderRow {
    pub order_id: Uuid,
    pub customer_id: String,
    pub status: String,
    pub currency: String,
    pub total_minor: i64,
    pub lines: sqlx::types::Json<Vec<LineRecord>>,
    pub shipping_address: sqlx::types::Json<AddressRecord>,
    pub shipping_method: String,
    pub confirmation_number: String,
    pub tracking_number: String,
    pub failure_reason: String,
    pub request_id: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

pub const ORDER_COLUMNS: &str = "order_id, customer_id, status, currency, total_minor, lines, shipping_address, \
     shipping_method, confirmation_number, tracking_number, failure_reason, request_id, created_at, updated_at, version";

impl From<OrderRow> for Order {
    fn from(r: OrderRow) -> Order {
        let money = |amount_minor| common::Money {
            currency_code: r.currency.clone(),
            amount_minor,
        };
        Order {
            order_id: r.order_id.to_string(),
            customer_id: r.customer_id.clone(),
            status: OrderStatus::from_str_name(&r.status).unwrap_or_default() as i32,
            lines: r
                .lines
                .0
                .iter()
                .map(|l| OrderLine {
                    sku: l.sku.clone(),
                    quantity: l.quantity,
                    unit_price: Some(money(l.unit_price_minor)),
                })
                .collect(),
            total: Some(money(r.total_minor)),
            shipping_address: Some(r.shipping_address.0.clone().into()),
            shipping_method: ShippingMethod::from_str_name(&r.shipping_method).unwrap_or_default()
                as i32,
            confirmation_number: r.confirmation_number,
            tracking_number: r.tracking_number,
            failure_reason: r.failure_reason,
            request_id: r.request_id,
            created_at: Some(to_proto(r.created_at)),
            updated_at: Some(to_proto(r.updated_at)),
            version: r.version,
        }
    }
}
