//! Request limits shared by every service: message sizes, list lengths, page sizes.

/// Most lines one order (or reservation) may have.
pub const MAX_LINES: usize = 100;
/// Most units of one SKU in one line.
pub const MAX_QUANTITY: i64 = 10_000;
/// Largest stock level an item can be set to.
pub const MAX_STOCK: i64 = 1_000_000_000;
/// Longest idempotency key.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 200;
/// Longest free-text reason.
pub const MAX_REASON_LEN: usize = 500;
/// `reason` made fit for any service's reason field: control characters become spaces and text
/// beyond [`MAX_REASON_LEN`] characters is cut, ending in "…" to show it was. Reasons the saga
/// builds from user text or a callee's message pass through this before they are stored or sent,
/// so a compensation can never be refused for its reason.
pub fn bounded_reason(reason: &str) -> String {
    let clean = reason.chars().map(|c| if c.is_control() { ' ' } else { c });
    if reason.chars().count() <= MAX_REASON_LEN {
        return clean.collect();
    }
    let mut cut: String = clean.take(MAX_REASON_LEN - 1).collect();
    cut.push('…');
    cut
}

/// Default and largest page of a list RPC.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const MAX_PAGE_SIZE: u32 = 500;

/// tonic reports a message over the size limit as OUT_OF_RANGE; the gRPC spec (and clients'
/// retry logic) expect RESOURCE_EXHAUSTED, so the status is rewritten on the way out.
pub fn oversize_is_resource_exhausted<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    let out_of_range = headers
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == b"11");
    // grpc-message is percent-encoded on the wire.
    let too_large = headers.get("grpc-message").is_some_and(|m| {
        let m = m.as_bytes();
        m.windows(9).any(|w| w == b"too large") || m.windows(11).any(|w| w == b"too%20large")
    });
    if out_of_range && too_large {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    response
}

/// Page size to use for a request's `page_size` (0 = default), or a description of why not.
pub fn page_size(requested: u32) -> Result<u32, String> {
    match requested {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n <= MAX_PAGE_SIZE => Ok(n),
        n => Err(format!("must be at most {MAX_PAGE_SIZE}, got {n}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: &str, message: &str) -> http::Response<()> {
        let mut r = http::Response::new(());
        r.headers_mut().insert(
            "grpc-status",
            http::HeaderValue::from_str(status).expect("header"),
        );
        r.headers_mut().insert(
            "grpc-message",
            http::HeaderValue::from_str(message).expect("header"),
        );
        r
    }

    #[test]
    fn bounded_reasons_fit_the_limit_and_say_when_they_were_cut() {
        assert_eq!(bounded_reason("out of stock"), "out of stock");
        assert_eq!(bounded_reason("line\nbreak"), "line break");
        let exact = "é".repeat(MAX_REASON_LEN);
        assert_eq!(bounded_reason(&exact), exact);
        let long = format!("cancelled by request: {}", "x".repeat(488));
        let bounded = bounded_reason(&long);
        assert_eq!(bounded.chars().count(), MAX_REASON_LEN);
        assert!(bounded.starts_with("cancelled by request: xxx"));
        assert!(bounded.ends_with("x…"));
        assert!(crate::domain::parse_text(&bounded, MAX_REASON_LEN).is_ok());
    }

    #[test]
    fn oversized_messages_become_resource_exhausted() {
        let r = oversize_is_resource_exhausted(response(
            "11",
            "Error,%20decoded%20message%20length%20too%20large",
        ));
        assert_eq!(r.headers()["grpc-status"], "8");
    }

    #[test]
    fn other_out_of_range_errors_are_left_alone() {
        let r = oversize_is_resource_exhausted(response("11", "page%20out%20of%20range"));
        assert_eq!(r.headers()["grpc-status"], "11");
    }
}
