//! What the saga and the notification service do with a JetStream message before touching a
//! database: decode the payload (a run ticket, or an order outcome event) and
//! adopt the request id, version, baggage and trace parent from its headers. The input is split
//! at the first 0xFF byte: payload, then header values separated by newlines. Never a panic;
//! a decoded message re-encodes to one that decodes equal; any error text can become the
//! dead-letter header.

use std::sync::Once;

use ordermesh::{
    context,
    events::{OrderOutcome, dead_letter},
};
use ordermesh_order::saga::messages::RunTicket;

const HEADERS: [&str; 5] = [
    "x-request-id",
    "x-version",
    "baggage",
    "traceparent",
    "tracestate",
];

static PROPAGATOR: Once = Once::new();

/// One input: never a panic, whatever the bytes.
pub fn check(data: &[u8]) {
    PROPAGATOR.call_once(ordermesh::telemetry::install_propagator);
    let (payload, header_bytes) = match data.iter().position(|&b| b == 0xFF) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };

    if let Ok(ticket) = serde_json::from_slice::<RunTicket>(payload) {
        let again = serde_json::to_vec(&ticket).expect("a decoded run ticket encodes");
        assert_eq!(
            serde_json::from_slice::<RunTicket>(&again).ok(),
            Some(ticket)
        );
    }
    if let Ok(event) = serde_json::from_slice::<OrderOutcome>(payload) {
        let again = serde_json::to_vec(&event).expect("a decoded event encodes");
        let back: OrderOutcome = serde_json::from_slice(&again).expect("re-decodes");
        assert_eq!(back.order_id, event.order_id);
        assert_eq!(back.reason, event.reason);
    }

    // Only values NATS can carry (no CR/LF): async-nats refuses the rest when parsing.
    let mut headers = async_nats::HeaderMap::new();
    for (name, value) in HEADERS.iter().zip(header_bytes.split(|&b| b == b'\n')) {
        if let Ok(value) = std::str::from_utf8(value)
            && let Ok(value) = value.parse::<async_nats::HeaderValue>()
        {
            headers.insert(*name, value);
        }
    }
    let (call, _trace) = context::from_message_headers(Some(&headers));
    assert!(
        call.deadline.is_none(),
        "a message never carries a caller's deadline"
    );
    assert!(!call.request_id.is_empty());

    // A dead-lettered message carries its last error, whatever text that is, as a header.
    let error = String::from_utf8_lossy(payload);
    headers.insert(
        dead_letter::LAST_ERROR,
        dead_letter::last_error(&error).as_str(),
    );
}
