//! The inventory service: stock per SKU and per-order reservations. Reserve is all-or-nothing
//! across an order's lines, never oversells under concurrency (rows are locked in SKU order),
//! and, like Release and Commit, is idempotent by key.
#![forbid(unsafe_code)]

mod api;
mod audit;
mod metrics;
mod store;
mod unsettled;
pub mod validate;

use std::future::Future;

use ordermesh::{
    config::Settings, proto::inventory::inventory_service_server::InventoryServiceServer,
    ready::Ready, server::Host,
};

static MIGRATOR: std::sync::LazyLock<sqlx::migrate::Migrator> =
    std::sync::LazyLock::new(|| ordermesh::db::rollback_safe(sqlx::migrate!("./migrations")));

/// Serves the inventory API until `shutdown` completes.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    metrics::init();
    let pool = Ready::default();
    let mut host = Host::bind(settings).await?;
    host.add_admin_routes(ordermesh::audit::router(pool.clone(), audit::side));
    let max_message = host.settings().server.max_message_bytes;
    host.add_service(
        InventoryServiceServer::new(api::Inventory::new(pool.clone()))
            .max_decoding_message_size(max_message),
    );
    let background = host.background();
    background.spawn(metrics::sample_stock(pool.clone(), background.token()));
    host.serve_with_database(
        &MIGRATOR,
        &[ordermesh::retention::IDEMPOTENCY_KEYS],
        pool,
        shutdown,
    )
    .await
}
