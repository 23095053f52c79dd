//! The notification service: records exactly one customer notification per order outcome
//! event (OrderConfirmed, OrderCancelled) consumed from JetStream, and lists them.
#![forbid(unsafe_code)]

mod api;
mod audit;
mod consumer;
mod metrics;
mod store;
pub mod validate;

use std::future::Future;

use ordermesh::{
    config::Settings, nats::Names,
    proto::notification::notification_service_server::NotificationServiceServer, ready::Ready,
    server::Host,
};

static MIGRATOR: std::sync::LazyLock<sqlx::migrate::Migrator> =
    std::sync::LazyLock::new(|| ordermesh::db::rollback_safe(sqlx::migrate!("./migrations")));

/// Serves the notification API until `shutdown` completes.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    metrics::init();
    let pool = Ready::default();
    let mut host = Host::bind(settings).await?;
    host.add_admin_routes(ordermesh::audit::router(pool.clone(), audit::side));
    let max_message = host.settings().server.max_message_bytes;
    host.add_service(
        NotificationServiceServer::new(api::Notifications::new(pool.clone()))
            .max_decoding_message_size(max_message),
    );
    let settings = host.settings().clone();
    let background = host.background();
    let start = async move {
        let db = ordermesh::startup::database(&settings, &MIGRATOR).await?;
        let nats = ordermesh::startup::nats(&settings).await?;
        let names = Names::new(&settings.namespace);
        ordermesh::startup::retry(
            "order events stream",
            |_| true,
            || nats.ensure_stream(names.order_events_config()),
        )
        .await?;
        let stream = names.order_events_stream();
        let consumer = ordermesh::startup::retry(
            "notification consumer",
            |_| true,
            || {
                nats.jetstream
                    .create_consumer_on_stream(consumer::config(), stream.as_str())
            },
        )
        .await?;
        background.spawn(consumer::run(db.clone(), consumer, background.token()));
        pool.set(db);
        Ok(())
    };
    host.serve(start, shutdown).await
}
