//! The order service's own metrics: the saga's flow and the outbox's lag. Labels are bounded
//! (step names from the transition table), never an order or customer id. Counters move only
//! after the transaction that did the work committed.

use ordermesh::metric;
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, register_histogram,
    register_int_counter, register_int_counter_vec, register_int_gauge,
};

metric!(SAGA_STARTED: IntCounter = register_int_counter!("order_saga_started_total", "Sagas started (orders accepted)."));
metric!(SAGA_COMPLETED: IntCounter = register_int_counter!("order_saga_completed_total", "Sagas that ended CONFIRMED."));
metric!(SAGA_FAILED: IntCounterVec = register_int_counter_vec!(
    Opts::new("order_saga_failed_total", "Sagas that ended CANCELLED or FAILED, by the forward step that failed."),
    &["step"]
));
metric!(SAGA_DURATION: Histogram = register_histogram!(
    HistogramOpts::new("order_saga_duration_seconds", "Time from order accepted to a terminal status.")
        .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 180.0, 600.0])
));
metric!(STEP_DELIVERY_WAIT: Histogram = register_histogram!(
    HistogramOpts::new(
        "order_saga_step_delivery_wait_seconds",
        "Time a step message spent in JetStream, from publish to a worker starting it."
    )
    .buckets(vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
));
metric!(SAGA_COMPENSATIONS: IntCounterVec = register_int_counter_vec!(
    Opts::new("order_saga_compensations_total", "Compensating steps completed, by step."),
    &["step"]
));
metric!(SAGA_TIMEOUTS: IntCounterVec = register_int_counter_vec!(
    Opts::new("order_saga_timeouts_total", "Step deadlines that fired while the step was still pending, by step."),
    &["step"]
));
metric!(DEAD_LETTERS: IntCounterVec = register_int_counter_vec!(
    Opts::new("order_saga_dead_letters_total", "Messages moved to the dead-letter stream, by step (or `undecodable`)."),
    &["step"]
));
metric!(OUTBOX_PUBLISHED: IntCounter = register_int_counter!("ordermesh_outbox_published_total", "Outbox rows published to JetStream."));
metric!(OUTBOX_BACKLOG: IntGauge = register_int_gauge!("ordermesh_outbox_backlog", "Outbox rows not yet published."));
metric!(OUTBOX_OLDEST_AGE: prometheus::Gauge = prometheus::register_gauge!(
    "ordermesh_outbox_oldest_age_seconds",
    "Age of the oldest unpublished outbox row (0 when empty): the relay's lag."
));
