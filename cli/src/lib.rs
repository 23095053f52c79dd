//! The `ordermesh` CLI (client side only: it starts services as separate processes and talks
//! to them over gRPC, the way Kubernetes and users do).

mod check;
mod db;
mod dlq;
mod inventory;
mod load;
mod order;
pub(crate) mod output;
mod projections;
pub mod prometheus;
mod saga;
mod up;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use ordermesh::{
    client,
    config::{DEFAULT_GRPC_BASE_PORT, DEFAULT_NATS_URL, ServiceName, Settings},
    proto::{
        inventory::inventory_service_client::InventoryServiceClient,
        order::order_service_client::OrderServiceClient,
    },
};

#[derive(Debug, Parser)]
#[command(
    name = "ordermesh",
    version,
    about = "Resilient order processing on a service mesh"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start all five services locally, wait until they are SERVING, stream their logs; Ctrl-C stops them.
    Up(up::UpArgs),
    /// Create and read orders.
    #[command(subcommand)]
    Order(Box<order::OrderCommand>),
    /// Check the mesh's invariants (terminal orders, conserved stock, charges, labels,
    /// notifications, event streams); exit code 1 on any violation.
    Check(check::CheckArgs),
    /// Open-loop load: orders at a fixed rate, latency to CreateOrder and to a terminal status.
    Load(Box<load::LoadArgs>),
    /// Database administration (least-privilege roles per service).
    #[command(subcommand)]
    Db(db::DbCommand),
    /// Inspect and redrive dead-lettered messages.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Maintain read models.
    #[command(subcommand)]
    Projections(projections::ProjectionsCommand),
    /// Inspect sagas.
    #[command(subcommand)]
    Saga(saga::SagaCommand),
    /// Set and read stock levels.
    #[command(subcommand)]
    Inventory(inventory::InventoryCommand),
}

/// Where the services are, for client commands. Defaults match `ordermesh up`.
#[derive(Debug, Clone, clap::Args)]
pub struct Endpoints {
    /// Order service gRPC endpoint.
    #[arg(long, env = "ORDERMESH_ENDPOINTS__ORDER", default_value_t = local(ServiceName::Order))]
    order_endpoint: String,
    /// Inventory service gRPC endpoint.
    #[arg(long, env = "ORDERMESH_ENDPOINTS__INVENTORY", default_value_t = local(ServiceName::Inventory))]
    inventory_endpoint: String,
    /// Deadline of each call (the services' own default): a burst that queues at the order
    /// service may need longer.
    #[arg(long, default_value = "5s", value_parser = humantime_serde::re::humantime::parse_duration)]
    call_timeout: std::time::Duration,
}

/// The mesh's NATS, for commands that read its streams or subjects. Defaults match `ordermesh up`.
#[derive(Debug, Clone, clap::Args)]
pub struct NatsTarget {
    /// NATS server with the mesh's streams.
    #[arg(long, env = "ORDERMESH_NATS__URL", default_value = DEFAULT_NATS_URL)]
    nats_url: String,
    /// The mesh's namespace (prefix of its streams and subjects).
    #[arg(long, env = "ORDERMESH_NAMESPACE", default_value = "ordermesh")]
    namespace: String,
}

type Traced =
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, client::Propagate>;

impl Endpoints {
    fn order(&self) -> anyhow::Result<OrderServiceClient<Traced>> {
        let (channel, propagate) = connect(&self.order_endpoint, self.call_timeout)?;
        Ok(OrderServiceClient::with_interceptor(channel, propagate))
    }

    fn inventory(&self) -> anyhow::Result<InventoryServiceClient<Traced>> {
        let (channel, propagate) = connect(&self.inventory_endpoint, self.call_timeout)?;
        Ok(InventoryServiceClient::with_interceptor(channel, propagate))
    }
}

/// Runs one of the order service binary's maintenance commands (it sits beside this binary and
/// reads the same `ORDERMESH_*` settings). The CLI never links service code.
fn run_order_binary(command: &str) -> anyhow::Result<()> {
    let binary = std::env::current_exe()?.with_file_name("ordermesh-order");
    let status = std::process::Command::new(&binary)
        .arg(command)
        .status()
        .map_err(|e| {
            anyhow::anyhow!(
                "running {}: {e}; build it with `cargo build --workspace --bins`",
                binary.display()
            )
        })?;
    anyhow::ensure!(
        status.success(),
        "{} {command} failed (see above)",
        binary.display()
    );
    Ok(())
}

fn connect(
    url: &str,
    timeout: std::time::Duration,
) -> anyhow::Result<(tonic::transport::Channel, client::Propagate)> {
    let mut settings = Settings::defaults(ServiceName::Order).client;
    settings.timeout = timeout;
    Ok((
        client::channel(url, &settings)?,
        client::Propagate::new(settings.timeout),
    ))
}

fn local(service: ServiceName) -> String {
    format!(
        "http://127.0.0.1:{}",
        DEFAULT_GRPC_BASE_PORT + service.port_offset()
    )
}

/// Runs a parsed command line; prints errors as one readable message.
pub async fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Up(args) => up::run(args).await,
        Command::Order(command) => order::run(*command).await,
        Command::Inventory(command) => inventory::run(command).await,
        Command::Saga(command) => saga::run(command).await,
        Command::Projections(command) => projections::run(command),
        Command::Dlq(command) => dlq::run(command).await,
        Command::Db(command) => db::run(command).await,
        Command::Load(args) => load::run(*args).await,
        Command::Check(args) => match check::run(args).await {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::FAILURE,
            Err(error) => Err(error),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
