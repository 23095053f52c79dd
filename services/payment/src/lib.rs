//! The payment service: charges and refunds through a sandbox processor, idempotent by key.
//! Two behaviours (v1 and the canary v2) are selected by configuration and reported in the
//! `x-payment-version` response header and on every payment.
#![forbid(unsafe_code)]

mod api;
mod audit;
mod metrics;
mod processor;
mod store;
pub mod validate;

use std::future::Future;

use ordermesh::{
    config::{Section, Settings},
    proto::payment::payment_service_server::PaymentServiceServer,
    ready::Ready,
    server::Host,
};
use serde::{Deserialize, Serialize};

pub use processor::Version;

static MIGRATOR: std::sync::LazyLock<sqlx::migrate::Migrator> =
    std::sync::LazyLock::new(|| ordermesh::db::rollback_safe(sqlx::migrate!("./migrations")));

/// `ORDERMESH_PAYMENT__*` settings.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PaymentSettings {
    /// Payment processor behaviour: `v1`, or the canary `v2`.
    pub version: Version,
}

impl Section for PaymentSettings {
    const NAME: &'static str = "payment";
}

impl Default for PaymentSettings {
    fn default() -> PaymentSettings {
        PaymentSettings {
            version: Version::V1,
        }
    }
}

/// Serves the payment API until `shutdown` completes.
pub async fn run(
    settings: Settings,
    payment: PaymentSettings,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    metrics::init(payment.version);
    let pool = Ready::default();
    let mut host = Host::bind(settings).await?;
    host.add_admin_routes(ordermesh::audit::router(pool.clone(), audit::side));
    let max_message = host.settings().server.max_message_bytes;
    host.add_service(
        PaymentServiceServer::new(api::Payments::new(pool.clone(), payment.version))
            .max_decoding_message_size(max_message),
    );
    tracing::info!(
        version = payment.version.as_str(),
        "payment processor behaviour"
    );
    host.serve_with_database(
        &MIGRATOR,
        &[ordermesh::retention::IDEMPOTENCY_KEYS],
        pool,
        shutdown,
    )
    .await
}
