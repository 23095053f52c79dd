//! NATS JetStream: the connection, stream names under the configured namespace, and idempotent
//! stream set-up (create, or update to the declared configuration; safe from every replica).

use std::time::Duration;

use async_nats::jetstream::{self, stream};

use crate::config::NatsSettings;

#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error(transparent)]
    Url(#[from] crate::config::ConfigError),
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

/// A connected client, its JetStream context, and the replicas every stream is created with.
#[derive(Clone, Debug)]
pub struct Nats {
    pub client: async_nats::Client,
    pub jetstream: jetstream::Context,
    replicas: usize,
}

/// Connects once (fails fast while the server is down; callers retry at start-up). After that
/// the client reconnects by itself, forever, to any of the servers.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn connect(settings: &NatsSettings, client_name: &str) -> Result<Nats, NatsError> {
    let client = async_nats::ConnectOptions::new()
        .name(client_name)
        .connection_timeout(Duration::from_secs(2))
        .max_reconnects(None)
        .connect(crate::config::nats_servers(&settings.url)?)
        .await
        .map_err(|source| NatsError::Connect {
            url: settings.url.clone(),
            source,
        })?;
    let jetstream = jetstream::new(client.clone());
    Ok(Nats {
        client,
        jetstream,
        replicas: settings.replicas,
    })
}

impl Nats {
    /// Creates the stream with the configured replicas, or updates it to `config` if it exists
    /// with other settings. Consumers created on it inherit its replicas.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn ensure_stream(&self, config: stream::Config) -> Result<stream::Info, NatsError> {
        let name = config.name.clone();
        let config = stream::Config {
            num_replicas: self.replicas,
            ..config
        };
        self.jetstream
            .create_or_update_stream(config)
            .await
            .map_err(|source| NatsError::Stream { name, source })
    }
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

/// Runs `handle` on every message of a pull consumer until `shutdown`: at most `concurrency`
/// handlers at once (1 = in order), re-opening the message stream when it breaks, and waiting
/// for the handlers in flight before returning. Handlers ack or nak the message themselves.
pub async fn consume<F, Fut>(
    what: &'static str,
    consumer: jetstream::consumer::PullConsumer,
    concurrency: usize,
    shutdown: tokio_util::sync::CancellationToken,
    handle: F,
) where
    F: Fn(jetstream::Message) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    crate::metrics::CONSUMER_MESSAGES.with_label_values(&[what]);
    crate::metrics::CONSUMER_REDELIVERIES.with_label_values(&[what]);
    let lag = crate::metrics::sample_every(what, LAG_SAMPLE_PERIOD, shutdown.clone(), {
        let consumer = consumer.clone();
        move || {
            let mut consumer = consumer.clone();
            async move {
                let info = consumer.info().await?;
                let pending = i64::try_from(info.num_pending).unwrap_or(i64::MAX);
                let ack_pending = i64::try_from(info.num_ack_pending).unwrap_or(i64::MAX);
                crate::metrics::CONSUMER_PENDING
                    .with_label_values(&[what])
                    .set(pending);
                crate::metrics::CONSUMER_ACK_PENDING
                    .with_label_values(&[what])
                    .set(ack_pending);
                Ok(())
            }
        }
    });
    tokio::join!(lag, receive(what, consumer, concurrency, shutdown, handle));
}

/// At shutdown, returns the messages already pulled into this instance's buffer but not yet
/// handled (NAK: redeliver now), so other instances take them at once instead of after the
/// ack wait — a rollout must not delay a batch of notifications by 30 s.
async fn hand_back(what: &'static str, messages: &mut jetstream::consumer::pull::Stream) {
    use futures::{FutureExt, StreamExt};
    let mut returned = 0;
    while let Some(Some(Ok(message))) = messages.next().now_or_never() {
        let _ = message.ack_with(jetstream::AckKind::Nak(None)).await;
        returned += 1;
    }
    if returned > 0 {
        tracing::info!(what, returned, "handed buffered messages back at shutdown");
    }
}

/// How often each consumer's lag is read from the server for `/metrics`.
const LAG_SAMPLE_PERIOD: Duration = Duration::from_secs(5);

async fn receive<F, Fut>(
    what: &'static str,
    consumer: jetstream::consumer::PullConsumer,
    concurrency: usize,
    shutdown: tokio_util::sync::CancellationToken,
    handle: F,
) where
    F: Fn(jetstream::Message) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use futures::StreamExt;

    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let in_flight = tokio_util::task::TaskTracker::new();
    'outer: loop {
        let mut messages = match consumer.messages().await {
            Ok(m) => m,
            Err(error) => {
                tracing::warn!(what, %error, "cannot pull messages; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => break 'outer,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => {
                    hand_back(what, &mut messages).await;
                    break 'outer;
                }
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break 'outer,
                },
            };
            let next = tokio::select! {
                _ = shutdown.cancelled() => {
                    hand_back(what, &mut messages).await;
                    break 'outer;
                }
                next = messages.next() => next,
            };
            match next {
                Some(Ok(message)) => {
                    crate::metrics::CONSUMER_MESSAGES
                        .with_label_values(&[what])
                        .inc();
                    if message.info().is_ok_and(|info| info.delivered > 1) {
                        crate::metrics::CONSUMER_REDELIVERIES
                            .with_label_values(&[what])
                            .inc();
                    }
                    let work = handle(message);
                    in_flight.spawn(async move {
                        work.await;
                        drop(permit);
                    });
                }
                Some(Err(error)) => {
                    tracing::warn!(what, %error, "message stream broke; re-opening");
                    break;
                }
                None => break,
            }
        }
    }
    in_flight.close();
    in_flight.wait().await;
}
