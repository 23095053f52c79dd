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
#[allow(clippy::large_enum_variant)] // a handful per order; boxing would only add noise
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
    /// Stock is held.
    InventoryReserved { reservation_id: String },
    /// The payment was captured.
    PaymentCaptured {
        payment_id: String,
        processor_version: String,
    },
    /// A shipping label exists.
    LabelCreated { tracking_number: String },
    /// Stock committed, order confirmed.
    Confirmed { confirmation_number: String },
    /// A step failed; completed steps are being undone.
    CompensationStarted { failed_step: String, reason: String },
    /// One compensation finished.
    Compensated { step: String },
    /// Everything was undone; terminal.
    Cancelled { reason: String },
    /// A compensation could not finish and was parked for an operator; terminal.
    Failed { reason: String },
}

impl OrderEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            OrderEvent::Submitted { .. } => "submitted",
            OrderEvent::InventoryReserved { .. } => "inventory_reserved",
            OrderEvent::PaymentCaptured { .. } => "payment_captured",
            OrderEvent::LabelCreated { .. } => "label_created",
            OrderEvent::Confirmed { .. } => "confirmed",
            OrderEvent::CompensationStarted { .. } => "compensation_started",
            OrderEvent::Compensated { .. } => "compensated",
            OrderEvent::Cancelled { .. } => "cancelled",
            OrderEvent::Failed { .. } => "failed",
        }
    }
}

/// Crockford's base32 alphabet: digits and capitals without I, L, O and U, so a number read out
/// over the phone cannot be misheard as another.
const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// `ORD-yyyyMMdd-XXXXXXXX`: the order's creation date and 40 random bits in Crockford base32.
/// Random, not derived from the id: a UUIDv7's leading digits are its timestamp, which every order
/// of the same minute shares. A UNIQUE index on the view catches the rare collision, and the
/// transition that hit it is decided again with a fresh number.
pub fn confirmation_number(created_at: DateTime<Utc>) -> String {
    let suffix: String = (0..8)
        .map(|_| char::from(CROCKFORD[fastrand::usize(..CROCKFORD.len())]))
        .collect();
    format!("ORD-{}-{suffix}", created_at.format("%Y%m%d"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirmation_numbers_carry_the_date_and_eight_unambiguous_random_characters() {
        let at = DateTime::parse_from_rfc3339("2026-11-29T07:50:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let numbers: std::collections::HashSet<String> =
            (0..10_000).map(|_| confirmation_number(at)).collect();
        // 10,000 draws from 2^40 collide with probability ~5e-5: a repeat here means no randomness.
        assert_eq!(numbers.len(), 10_000);
        for n in &numbers {
            let suffix = n.strip_prefix("ORD-20261129-").expect("date prefix");
            assert_eq!(suffix.len(), 8, "{n}");
            assert!(suffix.bytes().all(|b| CROCKFORD.contains(&b)), "{n}");
        }
    }
}
