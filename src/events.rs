//! Events that cross service boundaries over JetStream (JSON payloads). The order service
//! publishes an [`OrderOutcome`] through its outbox when an order ends; notification consumes it.
//! Fields are only ever added (with defaults), never renamed.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// How an order ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeKind {
    Confirmed,
    Cancelled,
}

impl OutcomeKind {
    /// Last subject token: `<ns>.order.events.confirmed` / `.cancelled`.
    pub fn subject_token(self) -> &'static str {
        match self {
            OutcomeKind::Confirmed => "confirmed",
            OutcomeKind::Cancelled => "cancelled",
        }
    }
}

/// OrderConfirmed / OrderCancelled. `event_id` is also the JetStream `Nats-Msg-Id`, and what
/// notification de-duplicates on. No personal data: the customer is looked up by order id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderOutcome {
    pub event_id: Uuid,
    pub order_id: Uuid,
    pub kind: OutcomeKind,
    #[serde(default)]
    pub confirmation_number: String,
    #[serde(default)]
    pub reason: String,
}

/// Headers the saga adds to a message it dead-letters (read by `ordermesh dlq`).
pub mod dead_letter {
    /// The subject the message was consumed from, where a redrive sends it back.
    pub const ORIGINAL_SUBJECT: &str = "Ordermesh-Original-Subject";
    /// How many times it was delivered before it was given up.
    pub const DELIVERY_COUNT: &str = "Ordermesh-Delivery-Count";
    /// The last error, at most 500 characters (see [`last_error`]).
    pub const LAST_ERROR: &str = "Ordermesh-Last-Error";

    /// An error text as a header value: at most 500 characters, line breaks and other control
    /// characters turned into spaces. NATS headers are lines, and async-nats panics on a value
    /// with CR or LF in it; error texts from callees and drivers may contain both (found by the
    /// `jetstream_messages` fuzz target).
    pub fn last_error(error: &str) -> String {
        error
            .chars()
            .take(500)
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect()
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn last_error_is_one_bounded_header_line() {
            let value = super::last_error(&format!("upstream said:\r\nno\u{0}{}", "x".repeat(900)));
            assert!(value.starts_with("upstream said:  no "));
            assert_eq!(value.chars().count(), 500);
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(super::LAST_ERROR, value.as_str());
        }
    }
}
