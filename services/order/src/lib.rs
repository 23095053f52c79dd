//! The order service: accepts orders, keeps them event-sourced (append-only `order_events`,
//! with an `order_view` read model projected in the same transaction), and orchestrates each
//! order's saga.
#![forbid(unsafe_code)]

mod api;
mod model;
mod store;
mod validate;

use std::future::Future;

use ordermesh::{
    config::Settings, nats::Names, proto::order::order_service_server::OrderServiceServer,
    ready::Ready, server::Host,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// What handlers need once start-up has connected everything.
pub(crate) struct Deps {
    pub pool: sqlx::PgPool,
    /// Kept for the life of the process: dropping the last handle closes the connection.
    #[allow(dead_code)]
    pub nats: ordermesh::nats::Nats,
}

/// Serves the order API until `shutdown` completes.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let deps = Ready::default();
    let mut host = Host::bind(settings).await?;
    let max_message = host.settings().server.max_message_bytes;
    host.add_service(
        OrderServiceServer::new(api::Orders::new(deps.clone()))
            .max_decoding_message_size(max_message),
    );
    let settings = host.settings().clone();
    let start = async move {
        let pool = ordermesh::startup::database(&settings, &MIGRATOR).await?;
        let nats = ordermesh::startup::nats(&settings).await?;
        let names = Names::new(&settings.namespace);
        ordermesh::startup::retry(
            "order events stream",
            |_| true,
            || ordermesh::nats::ensure_stream(&nats.jetstream, names.order_events_config()),
        )
        .await?;
        deps.set(Deps { pool, nats });
        Ok(())
    };
    host.serve(start, shutdown).await
}
