//! The order service's own metrics: the saga's flow and the outbox's lag. Labels are bounded
//! (step names from the transition table), never an order or customer id. Counters move only
//! after the transaction that did the work committed.

use ordermesh::metric;
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    register_histogram, register_int_counter, register_int_counter_vec, register_int_gauge,
    register_int_gauge_vec,
};

metric!(SAGA_STARTED: IntCounter = register_int_counter!("ordermesh_saga_started_total", "Sagas started (orders accepted)."));
metric!(SAGA_COMPLETED: IntCounter = register_int_counter!("ordermesh_saga_completed_total", "Sagas that ended CONFIRMED."));
metric!(SAGA_FAILED: IntCounterVec = register_int_counter_vec!(
    Opts::new("ordermesh_saga_failed_total", "Sagas that turned to compensation, by the forward step that failed and why: rejected (out of stock, declined), timed_out, gave_up (retries ran out) or cancelled (by request)."),
    &["step", "reason"]
));
metric!(SAGA_DURATION: Histogram = register_histogram!(
    HistogramOpts::new("ordermesh_saga_duration_seconds", "Time from order accepted to a terminal status.")
        .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 180.0, 600.0])
));
metric!(STEP_DELIVERY_WAIT: Histogram = register_histogram!(
    HistogramOpts::new(
        "ordermesh_saga_step_delivery_wait_seconds",
        "Time a saga's run ticket spent in JetStream, from publish to a runner starting it."
    )
    .buckets(vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
));
metric!(SAGA_COMPENSATIONS: IntCounterVec = register_int_counter_vec!(
    Opts::new("ordermesh_saga_compensations_total", "Compensating steps completed, by step."),
    &["step"]
));
metric!(SAGA_TIMEOUTS: IntCounterVec = register_int_counter_vec!(
    Opts::new("ordermesh_saga_timeouts_total", "Step deadlines that passed before the step finished, by step (a compensation's ends the saga FAILED)."),
    &["step"]
));
metric!(DEAD_LETTERS: IntCounterVec = register_int_counter_vec!(
    Opts::new("ordermesh_saga_dead_letters_total", "Sagas parked with a dead letter, by the step that could not go on (or `undecodable` tickets)."),
    &["step"]
));
metric!(JOURNAL_BATCH: Histogram = register_histogram!(
    HistogramOpts::new(
        "ordermesh_saga_journal_batch_entries",
        "Journal entries committed together in one statement (the group commit's batch size)."
    )
    .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0])
));
metric!(TICKETS_REISSUED: IntCounter = register_int_counter!(
    "ordermesh_saga_tickets_reissued_total",
    "Run tickets the sweeper re-issued for sagas that stopped moving (a lost message, or an upgrade from the per-step engine)."
));
metric!(EVENTS_REPUBLISHED: IntCounter = register_int_counter!(
    "ordermesh_saga_events_republished_total",
    "Outcome events the sweeper published again because the notification service never recorded them (JetStream lost them)."
));
metric!(OUTBOX_PUBLISHED: IntCounter = register_int_counter!("ordermesh_outbox_published_total", "Outbox rows published to JetStream."));
metric!(OUTBOX_BACKLOG: IntGauge = register_int_gauge!("ordermesh_outbox_backlog", "Outbox rows not yet published."));
metric!(OUTBOX_OLDEST_AGE: prometheus::Gauge = prometheus::register_gauge!(
    "ordermesh_outbox_oldest_age_seconds",
    "Age of the oldest unpublished outbox row (0 when empty): the relay's lag."
));
metric!(SAGAS_ACTIVE: IntGaugeVec = register_int_gauge_vec!(
    Opts::new("ordermesh_sagas_active", "Unfinished sagas by phase (forward, compensating, parked) and current step; database-wide."),
    &["phase", "step"]
));
metric!(SAGA_STALEST_AGE: prometheus::Gauge = prometheus::register_gauge!(
    "ordermesh_saga_stalest_age_seconds",
    "Time since the least recently advanced forward or compensating saga last changed (0 when none): a stuck saga shows here."
));
metric!(DEAD_LETTERS_PENDING: IntGauge = register_int_gauge!(
    "ordermesh_dead_letters_pending",
    "Messages waiting in the dead-letter stream for an operator (`ordermesh dlq list`)."
));

/// Creates every labelled series at 0, so `rate()` and `increase()` see the first failure,
/// timeout or dead letter instead of a series that starts mid-incident.
pub fn init() {
    use crate::saga::definition::TABLE;
    for spec in TABLE {
        let step = spec.step.name();
        if spec.compensation {
            SAGA_COMPENSATIONS.with_label_values(&[step]);
        } else {
            for reason in ["rejected", "gave_up", "timed_out", "cancelled"] {
                SAGA_FAILED.with_label_values(&[step, reason]);
            }
        }
        SAGA_TIMEOUTS.with_label_values(&[step]);
        DEAD_LETTERS.with_label_values(&[step]);
    }
    DEAD_LETTERS.with_label_values(&["undecodable"]);
    SAGA_STARTED.get();
    SAGA_COMPLETED.get();
    SAGA_DURATION.get_sample_count();
    STEP_DELIVERY_WAIT.get_sample_count();
    JOURNAL_BATCH.get_sample_count();
    TICKETS_REISSUED.get();
    EVENTS_REPUBLISHED.get();
    OUTBOX_PUBLISHED.get();
    OUTBOX_BACKLOG.get();
    OUTBOX_OLDEST_AGE.get();
}
