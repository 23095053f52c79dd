//! The order service: accepts orders, keeps them event-sourced (append-only `order_events`,
//! with an `order_view` read model projected in the same transaction), and orchestrates each
//! order's saga (see [`saga`]).
#![forbid(unsafe_code)]

mod api;
mod audit;
mod changes;
mod explorer;
pub mod http;
mod metrics;
pub mod model;
mod projection;
mod read_model;
pub mod rebuild;
pub mod saga;
mod store;
pub mod validate;

use std::{future::Future, sync::Arc};

use anyhow::Context;
use ordermesh::{
    client::{self, Propagate},
    config::{ConfigError, Section, ServiceName, Settings},
    proto::{
        inventory::inventory_service_client::InventoryServiceClient,
        notification::notification_service_client::NotificationServiceClient,
        order::order_service_server::OrderServiceServer,
        payment::payment_service_client::PaymentServiceClient,
        shipping::shipping_service_client::ShippingServiceClient,
    },
    ready::Ready,
    resilience::Policy,
    server::Host,
    startup::retry,
};
use serde::{Deserialize, Serialize};

use saga::{
    definition::Timeouts,
    journal::{Journal, Parts},
    messages::Names,
    runner::{self, Runner},
    steps::{Callees, Policies},
    sweeper::{self, Sweep, Sweeper},
};

pub(crate) static MIGRATOR: std::sync::LazyLock<sqlx::migrate::Migrator> =
    std::sync::LazyLock::new(|| ordermesh::db::rollback_safe(sqlx::migrate!("./migrations")));

/// What handlers need once start-up has connected everything.
#[derive(Clone)]
pub(crate) struct Deps {
    pub pool: sqlx::PgPool,
    /// Read-through cache of GetOrder answers.
    pub cache: ordermesh::cache::Cache,
    pub journal: Journal,
    /// The saga's streams, for the explorer's dead-letter lookups.
    pub jetstream: async_nats::jetstream::Context,
}

/// `ORDERMESH_SAGA__*` settings.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SagaSettings {
    #[serde(flatten)]
    pub timeouts: Timeouts,
    /// Sagas one order-service instance drives at once (waiting sagas do not count: their
    /// tickets wait in JetStream). 1-100000.
    pub concurrency: usize,
    /// Attempts of a step before it gives up: a forward step parks with a dead letter (and
    /// still compensates at its deadline), a compensation ends the saga FAILED.
    pub max_deliver: i64,
    /// How often one instance looks for sagas that stopped moving (a lost run ticket).
    #[serde(with = "humantime_serde", default = "default_sweep_every")]
    #[schemars(with = "String")]
    pub sweep_every: std::time::Duration,
    /// How long an unfinished saga may go without a move before its run ticket is re-issued;
    /// must exceed the largest retry backoff plus the ticket ack wait.
    #[serde(with = "humantime_serde", default = "default_stall_after")]
    #[schemars(with = "String")]
    pub stall_after: std::time::Duration,
    /// How long a runner may hold a run ticket without an in-progress ack before JetStream hands
    /// it to another runner: how soon the sagas of a crashed instance resume. The runner sends
    /// progress three times per period. 1s-10m.
    #[serde(with = "humantime_serde", default = "default_ticket_ack_wait")]
    #[schemars(with = "String")]
    pub ticket_ack_wait: std::time::Duration,
}

fn default_ticket_ack_wait() -> std::time::Duration {
    std::time::Duration::from_secs(10)
}

fn default_sweep_every() -> std::time::Duration {
    std::time::Duration::from_secs(60)
}

fn default_stall_after() -> std::time::Duration {
    std::time::Duration::from_secs(120)
}

impl Section for SagaSettings {
    const NAME: &'static str = "saga";

    /// A stall threshold at or below a legitimate wait would re-issue tickets of healthy sagas.
    fn validate(&self) -> Result<(), ConfigError> {
        let longest_wait = self
            .timeouts
            .retry_backoff
            .iter()
            .max()
            .copied()
            .unwrap_or_default()
            + self.ticket_ack_wait;
        if self.stall_after <= longest_wait {
            return Err(ConfigError(format!(
                "ORDERMESH_SAGA__STALL_AFTER={:?} must be longer than the largest retry backoff \
                 plus the ticket ack wait ({longest_wait:?}), or healthy sagas get their tickets \
                 re-issued",
                self.stall_after
            )));
        }
        let ack_waits = std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(600);
        if !ack_waits.contains(&self.ticket_ack_wait) {
            return Err(ConfigError(format!(
                "ORDERMESH_SAGA__TICKET_ACK_WAIT={:?}: use 1s-10m",
                self.ticket_ack_wait
            )));
        }
        if !(1..=100_000).contains(&self.concurrency) {
            return Err(ConfigError(format!(
                "ORDERMESH_SAGA__CONCURRENCY={}: use 1-100000",
                self.concurrency
            )));
        }
        Ok(())
    }
}

impl Default for SagaSettings {
    fn default() -> SagaSettings {
        SagaSettings {
            timeouts: Timeouts::default(),
            concurrency: 512,
            max_deliver: 12,
            sweep_every: default_sweep_every(),
            stall_after: default_stall_after(),
            ticket_ack_wait: default_ticket_ack_wait(),
        }
    }
}

/// Serves the order API and runs the saga until `shutdown` completes. Reads nothing from the
/// environment: `settings` and `saga_settings` are all it is configured by.
pub async fn run(
    settings: Settings,
    saga_settings: SagaSettings,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    metrics::init();
    let deps = Ready::default();
    let mut host = Host::bind(settings).await?;
    let max_message = host.settings().server.max_message_bytes;
    let max_watch = host.settings().server.max_request_duration;
    host.add_service(
        OrderServiceServer::new(api::Orders::new(deps.clone(), max_watch))
            .max_decoding_message_size(max_message),
    );
    host.add_http_routes(http::router(api::Orders::new(deps.clone(), max_watch)));
    host.add_admin_routes(ordermesh::audit::router(deps.clone(), audit::side));
    let background = host.background();
    let (pages, streams) = explorer::routes(explorer::Explorer::new(
        deps.clone(),
        &host.settings().namespace,
        background.token(),
        max_watch,
    ));
    host.add_admin_routes(pages).add_admin_streams(streams);
    let settings = host.settings().clone();
    let start = async move {
        let pool = ordermesh::startup::database(&settings, &MIGRATOR).await?;
        let nats = ordermesh::startup::nats(&settings).await?;
        let names = Names::new(&settings.namespace);
        let events = ordermesh::nats::Names::new(&settings.namespace);
        for config in [
            events.order_events_config(),
            names.runs_stream(),
            names.dead_letters_stream(),
        ] {
            retry(
                "saga streams",
                |_| true,
                || nats.ensure_stream(config.clone()),
            )
            .await?;
        }
        let runs_stream = names.runs_stream().name;
        let tickets = retry(
            "saga run consumer",
            |_| true,
            || {
                nats.jetstream.create_consumer_on_stream(
                    names.runs_consumer(saga_settings.ticket_ack_wait),
                    runs_stream.as_str(),
                )
            },
        )
        .await?;

        let cache = ordermesh::cache::Cache::connect(&settings.redis, &settings.namespace);
        let (outbox, inbox) = saga::outbox::channel();
        let journal = Journal::start(
            pool.clone(),
            Parts {
                names: names.clone(),
                order_events: events,
                outbox: outbox.clone(),
                changes: changes::Changes::new(nats.client.clone(), &settings.namespace),
                cache: cache.clone(),
                timeouts: saga_settings.timeouts.clone(),
            },
            &background,
        );
        let runner = Arc::new(Runner::new(
            journal.clone(),
            callees(&settings)?,
            i32::try_from(saga_settings.max_deliver).unwrap_or(i32::MAX),
            saga_settings.ticket_ack_wait,
        ));
        background.spawn(saga::outbox::relay(
            pool.clone(),
            nats.jetstream.clone(),
            inbox,
            background.token(),
        ));
        background.spawn(runner::run(
            runner,
            tickets,
            saga_settings.concurrency,
            background.token(),
        ));
        let notifications = NotificationServiceClient::with_interceptor(
            client::channel(
                settings.endpoints.of(ServiceName::Notification),
                &settings.client,
            )
            .context("notification endpoint")?,
            Propagate::new(settings.client.timeout),
        );
        background.spawn(sweeper::run(
            Sweeper {
                pool: pool.clone(),
                names: names.clone(),
                outbox,
                notifications,
                sweep: Sweep {
                    every: saga_settings.sweep_every,
                    stall_after: saga_settings.stall_after,
                },
            },
            background.token(),
        ));
        background.spawn(ordermesh::retention::run(
            pool.clone(),
            &[ordermesh::retention::IDEMPOTENCY_KEYS],
            settings.retention.clone(),
            background.token(),
        ));
        background.spawn(saga::census::run(
            pool.clone(),
            nats.jetstream.clone(),
            names,
            background.token(),
        ));
        deps.set(Deps {
            pool,
            cache,
            journal,
            jetstream: nats.jetstream.clone(),
        });
        Ok(())
    };
    host.serve(start, shutdown).await
}

/// Clients of the services the saga calls, each behind its call policy.
fn callees(settings: &Settings) -> anyhow::Result<Callees> {
    let propagate = Propagate::new(settings.client.timeout);
    let channel = |s: ServiceName| {
        client::channel(settings.endpoints.of(s), &settings.client).context("service endpoint")
    };
    let canary = &settings.endpoints.payment_canary;
    let payment_canary = if canary.is_empty() {
        None
    } else {
        let channel =
            client::channel(canary, &settings.client).context("payment canary endpoint")?;
        Some(PaymentServiceClient::with_interceptor(
            channel,
            propagate.clone(),
        ))
    };
    let mesh = settings.mesh;
    Ok(Callees {
        inventory: InventoryServiceClient::with_interceptor(
            channel(ServiceName::Inventory)?,
            propagate.clone(),
        ),
        payment: PaymentServiceClient::with_interceptor(
            channel(ServiceName::Payment)?,
            propagate.clone(),
        ),
        payment_canary,
        shipping: ShippingServiceClient::with_interceptor(
            channel(ServiceName::Shipping)?,
            propagate,
        ),
        policy: Policies {
            inventory: Policy::new("inventory", mesh),
            payment: Policy::new("payment", mesh),
            shipping: Policy::new("shipping", mesh),
        },
    })
}
