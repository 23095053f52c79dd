//! What the saga puts on JetStream: step messages, durable timeouts and dead letters, with their
//! subjects, streams and consumers under the namespace.

use std::time::Duration;

use async_nats::jetstream::{consumer::pull, stream};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::definition::Step;

/// "Run `step` of `order_id`" or, with `due_at_ms`, "check `step` of `order_id` at that time".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepMessage {
    pub order_id: Uuid,
    pub step: Step,
    /// Unix milliseconds at which a timeout message fires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_at_ms: Option<i64>,
}

/// How long a delivered step may go without an ack or an in-progress signal before JetStream
/// gives it to another worker.
pub const STEP_ACK_WAIT: Duration = Duration::from_secs(5);

/// Names of the saga's streams, subjects and consumers in one namespace.
#[derive(Debug, Clone)]
pub struct Names {
    namespace: String,
}

impl Names {
    pub fn new(namespace: &str) -> Names {
        Names {
            namespace: namespace.to_string(),
        }
    }

    fn upper(&self) -> String {
        self.namespace.to_uppercase()
    }

    pub fn step_subject(&self, step: Step) -> String {
        format!("{}.saga.step.{}", self.namespace, step.name())
    }

    pub fn timeout_subject(&self, step: Step) -> String {
        format!("{}.saga.timeout.{}", self.namespace, step.name())
    }

    pub fn dead_letter_subject(&self, kind: &str) -> String {
        format!("{}.dlq.{kind}", self.namespace)
    }

    pub fn dead_letter_stream(&self) -> String {
        format!("{}_DEAD_LETTERS", self.upper())
    }

    /// Work-queue stream of step messages: a message leaves once a worker acked it.
    pub fn steps_stream(&self) -> stream::Config {
        stream::Config {
            name: format!("{}_SAGA", self.upper()),
            subjects: vec![format!("{}.saga.step.>", self.namespace)],
            retention: stream::RetentionPolicy::WorkQueue,
            duplicate_window: Duration::from_secs(120),
            storage: stream::StorageType::File,
            ..Default::default()
        }
    }

    /// Work-queue stream of durable timeouts; each waits (redelivered with a delay) until due.
    pub fn timeouts_stream(&self) -> stream::Config {
        stream::Config {
            name: format!("{}_TIMEOUTS", self.upper()),
            subjects: vec![format!("{}.saga.timeout.>", self.namespace)],
            retention: stream::RetentionPolicy::WorkQueue,
            duplicate_window: Duration::from_secs(120),
            storage: stream::StorageType::File,
            ..Default::default()
        }
    }

    /// Messages that could not be processed, with their payload and why; kept for 30 days.
    pub fn dead_letters_stream(&self) -> stream::Config {
        stream::Config {
            name: self.dead_letter_stream(),
            subjects: vec![format!("{}.dlq.>", self.namespace)],
            max_age: Duration::from_secs(30 * 24 * 3600),
            storage: stream::StorageType::File,
            ..Default::default()
        }
    }

    /// Durable pull consumer of step messages. `max_ack_pending` bounds the work one
    /// instance (or all together) holds at once. A worker that dies mid-step is noticed after
    /// [`STEP_ACK_WAIT`]: a live worker sends in-progress acks while a step runs, so the wait can
    /// be short without redelivering slow steps.
    pub fn steps_consumer(&self, max_in_flight: i64, max_deliver: i64) -> pull::Config {
        pull::Config {
            durable_name: Some("saga-steps".into()),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            ack_wait: STEP_ACK_WAIT,
            max_deliver,
            max_ack_pending: max_in_flight,
            ..Default::default()
        }
    }

    /// Durable pull consumer of timeouts: they stay pending until due, so the bound is generous.
    pub fn timeouts_consumer(&self) -> pull::Config {
        pull::Config {
            durable_name: Some("saga-timeouts".into()),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            max_deliver: -1,
            max_ack_pending: 100_000,
            ..Default::default()
        }
    }
}
