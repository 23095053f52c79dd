//! The order service: accepts orders, keeps them event-sourced (append-only `order_events`,
//! with an `order_view` read model projected in the same transaction), and orchestrates each
//! order's saga (see [`saga`]).
#![forbid(unsafe_code)]

mod api;
mod changes;
pub mod http;
mod metrics;
pub mod model;
mod read_model;
pub mod rebuild;
pub mod saga;
mod store;
pub mod validate;

use std::{future::Future, sync::Arc};

use anyhow::Context;
use ordermesh::{
    client::{self, Propagate},
    config::{ServiceName, Settings},
    nats::ensure_stream,
    proto::{
        inventory::inventory_service_client::InventoryServiceClient,
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
    executor::{self, Callees, Policies, Worker},
    messages::Names,
    state::SagaContext,
};

pub(crate) static MIGRATOR: std::sync::LazyLock<sqlx::migrate::Migrator> =
    std::sync::LazyLock::new(|| ordermesh::db::rollback_safe(sqlx::migrate!("./migrations")));

/// What handlers need once start-up has connected everything.
pub(crate) struct Deps {
    pub pool: sqlx::PgPool,
    /// Read-through cache of GetOrder answers.
    pub cache: ordermesh::cache::Cache,
    pub saga: SagaContext,
}

/// `ORDERMESH_SAGA__*` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SagaSettings {
    #[serde(flatten)]
    pub timeouts: Timeouts,
    /// Saga steps one instance runs at once. `ORDERMESH_SAGA__CONCURRENCY`.
    pub concurrency: usize,
    /// Deliveries of a step message before it is dead-lettered and its saga parked.
    /// `ORDERMESH_SAGA__MAX_DELIVER`.
    pub max_deliver: i64,
}

impl SagaSettings {
    /// The environment section: `ORDERMESH_SAGA__*`.
    pub const SECTION: &str = "saga";
}

impl Default for SagaSettings {
    fn default() -> SagaSettings {
        SagaSettings {
            timeouts: Timeouts::default(),
            concurrency: 64,
            max_deliver: 12,
        }
    }
}

/// Finished steps remembered so their timeouts need no read: at 500 orders/s (2,000 steps/s)
/// half a minute's worth, far beyond the first look at a timeout (2 s), in about 3 MiB.
const FINISHED_STEPS_REMEMBERED: usize = 65_536;

/// Serves the order API and runs the saga until `shutdown` completes.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let saga_settings: SagaSettings =
        ordermesh::config::extract_section(SagaSettings::SECTION, SagaSettings::default())?;
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
    let settings = host.settings().clone();
    let background = host.background();
    let start = async move {
        let pool = ordermesh::startup::database(&settings, &MIGRATOR).await?;
        let nats = ordermesh::startup::nats(&settings).await?;
        let names = Names::new(&settings.namespace);
        let events = ordermesh::nats::Names::new(&settings.namespace);
        for config in [
            events.order_events_config(),
            names.steps_stream(),
            names.timeouts_stream(),
            names.dead_letters_stream(),
        ] {
            retry(
                "saga streams",
                |_| true,
                || ensure_stream(&nats.jetstream, config.clone()),
            )
            .await?;
        }
        let steps_stream = names.steps_stream().name;
        let timeouts_stream = names.timeouts_stream().name;
        let max_in_flight = i64::try_from(saga_settings.concurrency * 2).unwrap_or(128);
        let steps = retry(
            "saga step consumer",
            |_| true,
            || {
                nats.jetstream.create_consumer_on_stream(
                    names.steps_consumer(max_in_flight, saga_settings.max_deliver),
                    steps_stream.as_str(),
                )
            },
        )
        .await?;
        let timeouts = retry(
            "saga timeout consumer",
            |_| true,
            || {
                nats.jetstream
                    .create_consumer_on_stream(names.timeouts_consumer(), timeouts_stream.as_str())
            },
        )
        .await?;

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
        let callees = Callees {
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
        };
        let cache = ordermesh::cache::Cache::connect(&settings.redis, &settings.namespace);
        let changes = changes::Changes::new(nats.client.clone(), &settings.namespace);
        let (outbox, inbox) = saga::outbox::channel();
        let saga = SagaContext {
            names,
            changes,
            outbox,
            order_events: events,
            timeouts: saga_settings.timeouts.clone(),
            cache: cache.clone(),
            recent: saga::recent::Recent::default(),
        };
        let worker = Arc::new(Worker {
            pool: pool.clone(),
            saga: saga.clone(),
            callees,
            jetstream: nats.jetstream.clone(),
            max_deliver: saga_settings.max_deliver,
            finished: saga::finished::Finished::new(FINISHED_STEPS_REMEMBERED),
        });
        background.spawn(saga::outbox::relay(
            pool.clone(),
            nats.jetstream.clone(),
            inbox,
            background.token(),
        ));
        background.spawn(executor::run(
            worker.clone(),
            steps,
            saga_settings.concurrency,
            background.token(),
        ));
        background.spawn(executor::run_timeouts(worker, timeouts, background.token()));
        background.spawn(ordermesh::retention::run(
            pool.clone(),
            &[ordermesh::retention::IDEMPOTENCY_KEYS],
            settings.retention.clone(),
            background.token(),
        ));
        background.spawn(saga::census::run(
            pool.clone(),
            nats.jetstream.clone(),
            saga.names.clone(),
            background.token(),
        ));
        deps.set(Deps { pool, cache, saga });
        Ok(())
    };
    host.serve(start, shutdown).await
}
