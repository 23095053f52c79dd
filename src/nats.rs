//! NATS JetStream: the connection, stream names under the configured namespace, and idempotent
//! stream set-up (create, or update to the declared configuration; safe from every replica).

use std::time::Duration;

use async_nats::jetstream::{self, stream};

use crate::config::NatsSettings;

#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("connecting to NATS at {url}: {source}")]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
    #[error("creating or updating JetStream stream {name}: {source}")]
    Stream {
        name: String,
        source: jetstream::context::CreateStreamError,
    },
}

/// A connected client and its JetStream context.
#[derive(Clone, Debug)]
pub struct Nats {
    pub client: async_nats::Client,
    pub jetstream: jetstream::Context,
}

/// Connects once (fails fast while the server is down; callers retry at start-up). After that
/// the client reconnects by itself, forever.
pub async fn connect(settings: &NatsSettings, client_name: &str) -> Result<Nats, NatsError> {
    let client = async_nats::ConnectOptions::new()
        .name(client_name)
        .connection_timeout(Duration::from_secs(2))
        .max_reconnects(None)
        .connect(settings.url.as_str())
        .await
        .map_err(|source| NatsError::Connect {
            url: settings.url.clone(),
            source,
        })?;
    let jetstream = jetstream::new(client.clone());
    Ok(Nats { client, jetstream })
}

/// Creates the stream, or updates it to `config` if it exists with other settings.
pub async fn ensure_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<stream::Info, NatsError> {
    let name = config.name.clone();
    js.create_or_update_stream(config)
        .await
        .map_err(|source| NatsError::Stream { name, source })
}

/// Stream and subject names of one namespace, so meshes and tests sharing a server never meet.
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

    /// Stream of order events (OrderConfirmed, OrderCancelled, ...), which notification consumes.
    pub fn order_events_stream(&self) -> String {
        format!("{}_ORDER_EVENTS", self.namespace.to_uppercase())
    }

    /// Subject of an order event type, e.g. `ordermesh.order.events.confirmed`.
    pub fn order_event_subject(&self, event: &str) -> String {
        format!("{}.order.events.{event}", self.namespace)
    }

    /// The declared configuration of the order events stream.
    pub fn order_events_config(&self) -> stream::Config {
        stream::Config {
            name: self.order_events_stream(),
            subjects: vec![format!("{}.order.events.>", self.namespace)],
            // Publishes carry Nats-Msg-Id = outbox row id; a repeat within this window is dropped.
            duplicate_window: Duration::from_secs(120),
            max_age: Duration::from_secs(7 * 24 * 3600),
            storage: stream::StorageType::File,
            ..Default::default()
        }
    }
}
