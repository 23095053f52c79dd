//! What the saga puts on JetStream: one run ticket per order and dead letters, with their
//! subjects, streams and consumers under the namespace.

use std::time::Duration;

use async_nats::jetstream::{consumer::pull, stream};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// "Drive the saga of `order_id` forward." Published once per order through the outbox (its
/// `OrderSubmitted` moment); held by a runner while the saga moves, NAK'd with a delay while it
/// waits, acked when it is terminal. Re-issued by the sweeper when it was lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunTicket {
    pub order_id: Uuid,
    /// Set on the ticket kept in a dead letter: a redrive resumes a parked saga.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub redrive: bool,
}

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

    pub fn run_subject(&self) -> String {
        format!("{}.saga.run", self.namespace)
    }

    /// Where a message nobody could read goes (no order to file it under).
    pub fn undecodable_subject(&self) -> String {
        format!("{}.dlq.saga", self.namespace)
    }

    /// Where the dead letter of `order_id`'s saga goes: one subject per order, so the explorer
    /// finds an order's dead letter with one lookup (the last message on it) instead of a scan.
    pub fn dead_letter_subject(&self, order_id: Uuid) -> String {
        format!("{}.dlq.saga.{order_id}", self.namespace)
    }

    pub fn dead_letter_stream(&self) -> String {
        format!("{}_DEAD_LETTERS", self.upper())
    }

    /// Work-queue stream of run tickets: a ticket leaves once its saga is terminal.
    pub fn runs_stream(&self) -> stream::Config {
        stream::Config {
            name: format!("{}_SAGA_RUNS", self.upper()),
            subjects: vec![self.run_subject()],
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

    /// Durable pull consumer of run tickets. Redelivery is how a saga resumes (after a crash,
    /// or when its delayed NAK is due), so deliveries are unbounded. `max_ack_pending` is high
    /// on purpose: tickets waiting out a backoff count against it, and the real bound on work
    /// in flight is each instance's own limit (`ORDERMESH_SAGA__CONCURRENCY`), so one callee's
    /// outage never starves the sagas that do not need it. `ack_wait` is how long a runner may
    /// hold a ticket without an in-progress ack: how soon a dead runner's sagas resume.
    pub fn runs_consumer(&self, ack_wait: Duration) -> pull::Config {
        pull::Config {
            durable_name: Some("saga-runner".into()),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            ack_wait,
            max_deliver: -1,
            max_ack_pending: 1_000_000,
            ..Default::default()
        }
    }
}

/// The outbox id (and `Nats-Msg-Id`) of an order's first run ticket.
pub fn ticket_id(order_id: Uuid) -> Uuid {
    Uuid::new_v5(&order_id, b"run")
}
