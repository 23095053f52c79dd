//! The notification service's own metrics.

use ordermesh::metric;
use prometheus::{IntCounterVec, Opts, register_int_counter_vec};

metric!(SENT: IntCounterVec = register_int_counter_vec!(
    Opts::new("ordermesh_notification_sent_total", "Notifications recorded, by kind (confirmed, cancelled); redelivered events are not counted twice."),
    &["kind"]
));

/// Creates every kind's series at 0 (see the order service's `metrics::init`).
pub fn init() {
    for kind in ["confirmed", "cancelled"] {
        SENT.with_label_values(&[kind]);
    }
}
