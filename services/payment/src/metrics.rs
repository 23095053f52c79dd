//! The payment service's own metrics. `version` is the processor behaviour of the process that
//! answered (v1 stable, v2 canary), so a canary's outcomes can be compared with the stable
//! one's on the same dashboard and alert, whether both run in one mesh or side by side.

use ordermesh::metric;
use prometheus::{IntCounter, IntCounterVec, Opts, register_int_counter, register_int_counter_vec};

metric!(CHARGES: IntCounterVec = register_int_counter_vec!(
    Opts::new("ordermesh_payment_charges_total", "Charges by processor version and outcome: captured, declined, or error (the call failed on the server's side). Replays are not counted."),
    &["version", "outcome"]
));
metric!(REFUNDS: IntCounter = register_int_counter!(
    "ordermesh_payment_refunds_total",
    "Refunds that returned money (replays and refunds of nothing are not counted)."
));

/// Creates this version's outcome series at 0 (see the order service's `metrics::init`).
pub fn init(version: crate::Version) {
    for outcome in ["captured", "declined", "error"] {
        CHARGES.with_label_values(&[version.as_str(), outcome]);
    }
    REFUNDS.get();
}

/// Whether a failed call is the server's fault (counted as an `error` outcome) rather than a
/// refusal of a bad or conflicting request.
pub fn is_server_error(status: &tonic::Status) -> bool {
    use tonic::Code::*;
    matches!(
        status.code(),
        Internal | Unavailable | Unknown | DeadlineExceeded | ResourceExhausted | DataLoss
    )
}
