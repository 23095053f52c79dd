//! The shipping service's own metrics.

use ordermesh::metric;
use prometheus::{IntCounterVec, Opts, register_int_counter_vec};

metric!(LABELS: IntCounterVec = register_int_counter_vec!(
    Opts::new("ordermesh_shipping_labels_total", "Label changes committed, by outcome: created or cancelled (replays are not counted)."),
    &["outcome"]
));

/// Creates every outcome's series at 0 (see the order service's `metrics::init`).
pub fn init() {
    for outcome in ["created", "cancelled"] {
        LABELS.with_label_values(&[outcome]);
    }
}
