//! The shipping service: creates and voids shipping labels (tracking numbers), idempotent by key.
//! Only the country of the address is kept; the full address is personal data it does not need
//! after printing.
#![forbid(unsafe_code)]

mod api;
mod audit;
mod metrics;
mod store;
pub mod validate;

use std::future::Future;

use ordermesh::{
    config::Settings, proto::shipping::shipping_service_server::ShippingServiceServer,
    ready::Ready, server::Host,
};

static MIGRATOR: std::sync::LazyLock<sqlx::migrate::Migrator> =
    std::sync::LazyLock::new(|| ordermesh::db::rollback_safe(sqlx::migrate!("./migrations")));

/// Serves the shipping API until `shutdown` completes.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    metrics::init();
    let pool = Ready::default();
    let mut host = Host::bind(settings).await?;
    host.add_admin_routes(ordermesh::audit::router(pool.clone(), audit::side));
    let max_message = host.settings().server.max_message_bytes;
    host.add_service(
        ShippingServiceServer::new(api::Shipping::new(pool.clone()))
            .max_decoding_message_size(max_message),
    );
    host.serve_with_database(
        &MIGRATOR,
        &[ordermesh::retention::IDEMPOTENCY_KEYS],
        pool,
        shutdown,
    )
    .await
}
