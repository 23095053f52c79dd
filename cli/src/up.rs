//! `ordermesh up`: runs the five service binaries as child processes (as Kubernetes would run
//! containers), waits for each to report SERVING over gRPC health, prints the endpoints, streams
//! logs with a service prefix, and on Ctrl-C/SIGTERM stops them gracefully (SIGTERM, then wait).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use nix::{sys::signal::Signal, unistd::Pid};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, BufReader},
    process::{Child, Command},
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use super::Endpoints;
use ordermesh::{
    config::{DEFAULT_ADMIN_BASE_PORT, DEFAULT_GRPC_BASE_PORT, ServiceName},
    proto::{
        common::{Address, Money},
        inventory::UpsertItemRequest,
        order::{CreateOrderRequest, GetSagaTimelineRequest, OrderLine, WatchOrderRequest},
    },
};

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Directory with the service binaries (ordermesh-order, ...); defaults to this binary's directory.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// gRPC port of the order service; inventory, payment, shipping and notification take the next four.
    #[arg(long, default_value_t = DEFAULT_GRPC_BASE_PORT)]
    grpc_base_port: u16,
    /// Admin (health, metrics) port of the order service; the others take the next four.
    #[arg(long, default_value_t = DEFAULT_ADMIN_BASE_PORT)]
    admin_base_port: u16,
    /// Once everything is SERVING, seed demo stock and place a demo order.
    #[arg(long)]
    demo: bool,
    /// Seconds to wait for every service to report SERVING.
    #[arg(long, default_value_t = 60)]
    ready_timeout: u64,
    /// Also start a local Prometheus (Debian's `prometheus`) scraping every service and
    /// evaluating prometheus/alerts.yml; its data lives in .ordermesh/prometheus.
    #[arg(long)]
    prometheus: bool,
    /// Where the local Prometheus listens (not 9090, which a distribution's own service may hold).
    #[arg(long, default_value = "127.0.0.1:9190")]
    prometheus_addr: String,
    /// Instances per service (1-9). Callers balance over them client-side; instance i listens
    /// on the base ports + 10·i.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=9))]
    replicas: u16,
    /// Also run the payment canary (v2, `ORDERMESH_PAYMENT__VERSION=v2`, ports base + 5 + 10·i):
    /// the order service sends calls carrying `x-version: v2` to it, as the VirtualService does.
    #[arg(long)]
    canary: bool,
    /// Runtime threads per service process (`ORDERMESH_WORKER_THREADS`). Default: a quarter of
    /// the machine's cores, at least one (or ORDERMESH_WORKER_THREADS if set). See
    /// [`default_worker_threads`].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    worker_threads: Option<u16>,
}

/// Runtime threads per service when the whole mesh shares one machine. tokio's default, one per
/// core, gives every one of the five services as many threads as there are cores, next to
/// PostgreSQL and NATS: the threads then spend their time waking each other across cores. No
/// service needs more than a fraction of the machine (the order service, the busiest, used 0.3
/// of a core at 280 orders/s on 2 cores), and on that machine one thread each cut the services'
/// CPU per order by 10-12 % (bench/README.md).
fn default_worker_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |cores| (cores.get() / 4).max(1))
}

struct Running {
    service: ServiceName,
    /// `order`, `order-2`, `payment-v2`, ...: the log prefix and the name in the table.
    label: String,
    child: Child,
    grpc: String,
    admin: String,
}

/// One process to start.
struct Instance {
    service: ServiceName,
    label: String,
    grpc: String,
    admin: String,
    canary: bool,
}

/// Every process of the local mesh, callees first (order last: it calls the others).
fn instances(args: &UpArgs) -> anyhow::Result<Vec<Instance>> {
    let port = |base: u16, offset: u16, replica: u16| {
        base.checked_add(offset + 10 * replica).with_context(|| {
            format!(
                "base port {base} leaves no room for {} replicas",
                args.replicas
            )
        })
    };
    let mut out = Vec::new();
    let mut order = [
        ServiceName::Inventory,
        ServiceName::Payment,
        ServiceName::Shipping,
        ServiceName::Notification,
        ServiceName::Order,
    ]
    .iter()
    .map(|s| (*s, s.port_offset(), false))
    .collect::<Vec<_>>();
    if args.canary {
        order.insert(2, (ServiceName::Payment, 5, true));
    }
    for (service, offset, canary) in order {
        for replica in 0..args.replicas {
            let mut label = service.as_str().to_string();
            if canary {
                label.push_str("-v2");
            }
            if replica > 0 {
                label.push_str(&format!("#{}", replica + 1));
            }
            out.push(Instance {
                service,
                label,
                grpc: format!("127.0.0.1:{}", port(args.grpc_base_port, offset, replica)?),
                admin: format!("127.0.0.1:{}", port(args.admin_base_port, offset, replica)?),
                canary,
            });
        }
    }
    Ok(out)
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()
            .context("locating the ordermesh binary")?
            .parent()
            .map(Path::to_path_buf)
            .context("the ordermesh binary has no parent directory")?,
    };
    let planned = instances(&args)?;
    let mut env: HashMap<String, String> = HashMap::new();
    for s in ServiceName::ALL {
        let urls: Vec<String> = planned
            .iter()
            .filter(|i| i.service == s && !i.canary)
            .map(|i| format!("http://{}", i.grpc))
            .collect();
        env.insert(
            format!("ORDERMESH_ENDPOINTS__{}", s.as_str().to_uppercase()),
            urls.join(","),
        );
    }
    let canaries: Vec<String> = planned
        .iter()
        .filter(|i| i.canary)
        .map(|i| format!("http://{}", i.grpc))
        .collect();
    env.insert(
        "ORDERMESH_ENDPOINTS__PAYMENT_CANARY".into(),
        canaries.join(","),
    );
    match args.worker_threads {
        Some(threads) => {
            env.insert("ORDERMESH_WORKER_THREADS".into(), threads.to_string());
        }
        None if std::env::var_os("ORDERMESH_WORKER_THREADS").is_none() => {
            env.insert(
                "ORDERMESH_WORKER_THREADS".into(),
                default_worker_threads().to_string(),
            );
        }
        None => {}
    }

    let mut running: Vec<Running> = Vec::new();
    for instance in planned {
        let s = instance.service;
        let binary = bin_dir.join(format!("ordermesh-{s}"));
        if !binary.is_file() {
            stop_all(&mut running).await;
            bail!(
                "service binary {} not found; build them with `cargo build --release --workspace --bins` (make up does) or pass --bin-dir",
                binary.display()
            );
        }
        let mut command = Command::new(&binary);
        command
            .envs(&env)
            .env("ORDERMESH_GRPC_ADDR", &instance.grpc)
            .env("ORDERMESH_ADMIN_ADDR", &instance.admin)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if instance.canary {
            command.env("ORDERMESH_PAYMENT__VERSION", "v2");
        }
        if std::env::var_os("ORDERMESH_LOG__FORMAT").is_none() {
            command.env("ORDERMESH_LOG__FORMAT", "pretty");
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        if let Some(out) = child.stdout.take() {
            tokio::spawn(prefix_lines(instance.label.clone(), out));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(prefix_lines(instance.label.clone(), err));
        }
        running.push(Running {
            service: s,
            label: instance.label,
            child,
            grpc: instance.grpc,
            admin: instance.admin,
        });
    }

    if let Err(error) = wait_serving(&mut running, Duration::from_secs(args.ready_timeout)).await {
        stop_all(&mut running).await;
        return Err(error);
    }
    println!("\nordermesh is up ({} processes SERVING)\n", running.len());
    println!(
        "  {:<13} {:<22} {:<22}",
        "service", "gRPC", "admin (health, metrics)"
    );
    for r in &running {
        println!(
            "  {:<13} {:<22} http://{}/metrics",
            r.label, r.grpc, r.admin
        );
    }
    // The order service's saga explorer (its admin port: internal, like /metrics).
    let explorer = running
        .iter()
        .find(|r| r.service == ServiceName::Order)
        .map(|r| format!("http://{}/ui", r.admin));
    if let Some(url) = &explorer {
        println!(
            "  {:<13} {url}  (orders, sagas, what needs attention)",
            "explorer"
        );
    }
    let _prometheus = if args.prometheus {
        match start_prometheus(&args, &running) {
            Ok(child) => {
                println!(
                    "  {:<13} http://{}/graph  (rules: {})",
                    "prometheus",
                    args.prometheus_addr,
                    super::prometheus::RULES
                );
                Some(child)
            }
            Err(error) => {
                eprintln!("  prometheus not started: {error:#}");
                None
            }
        }
    } else {
        None
    };
    println!(
        "\n  try: grpcurl -plaintext {} list\n  Ctrl-C stops everything.\n",
        running[running.len() - 1].grpc
    );

    if args.demo {
        let endpoints = Endpoints {
            order_endpoint: env["ORDERMESH_ENDPOINTS__ORDER"].clone(),
            inventory_endpoint: env["ORDERMESH_ENDPOINTS__INVENTORY"].clone(),
            call_timeout: ordermesh::config::Settings::defaults(ServiceName::Order)
                .client
                .timeout,
        };
        if let Err(error) = demo(&endpoints, explorer.as_deref()).await {
            eprintln!("demo failed: {error:#}");
        }
    }

    let exited = tokio::select! {
        _ = ordermesh::signal::terminate() => None,
        exited = first_exit(&mut running) => Some(exited),
    };
    if let Some((service, status)) = &exited {
        eprintln!("{service} exited unexpectedly ({status}); stopping the others");
    }
    stop_all(&mut running).await;
    match exited {
        Some((service, _)) => bail!("{service} stopped unexpectedly"),
        None => Ok(()),
    }
}

/// Starts the local Prometheus over the running instances' admin ports.
fn start_prometheus(args: &UpArgs, running: &[Running]) -> anyhow::Result<Child> {
    let targets: Vec<(ServiceName, String)> = running
        .iter()
        .map(|r| (r.service, r.admin.clone()))
        .collect();
    let rules = Path::new(super::prometheus::RULES);
    let rule_files = match rules.canonicalize() {
        Ok(path) => vec![path],
        Err(_) => {
            eprintln!(
                "  {} not found in the current directory; Prometheus runs without alert rules",
                rules.display()
            );
            Vec::new()
        }
    };
    let config = super::prometheus::config(&targets, &rule_files, "5s");
    super::prometheus::spawn(
        Path::new(".ordermesh/prometheus"),
        &args.prometheus_addr,
        &config,
        true,
    )
}

async fn prefix_lines(label: String, stream: impl AsyncRead + Unpin) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        println!("{label:>12} | {line}");
    }
}

/// Polls gRPC health of every service until all are SERVING; fails if one exits or time runs out.
async fn wait_serving(running: &mut [Running], timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    for r in running.iter_mut() {
        let endpoint = format!("http://{}", r.grpc);
        loop {
            if let Some(status) = r.child.try_wait()? {
                bail!(
                    "{} exited during start-up ({status}); its log is above",
                    r.service
                );
            }
            if check_serving(&endpoint).await {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not report SERVING within {timeout:?}; is PostgreSQL, NATS (ORDERMESH_NATS__URL) reachable? `make infra` starts them",
                    r.service
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

async fn check_serving(endpoint: &str) -> bool {
    let Ok(channel) = tonic::transport::Endpoint::from_shared(endpoint.to_string()) else {
        return false;
    };
    let Ok(channel) = channel
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await
    else {
        return false;
    };
    let mut client = HealthClient::new(channel);
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    request.set_timeout(Duration::from_secs(1));
    matches!(client.check(request).await, Ok(r) if r.get_ref().status() == ServingStatus::Serving)
}

async fn first_exit(running: &mut [Running]) -> (ServiceName, std::process::ExitStatus) {
    loop {
        for r in running.iter_mut() {
            if let Ok(Some(status)) = r.child.try_wait() {
                return (r.service, status);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// SIGTERM to every child (order first: it calls the others), then wait; SIGKILL after 30 s.
async fn stop_all(running: &mut Vec<Running>) {
    for r in running.iter().rev() {
        if let Some(pid) = r.child.id() {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }
    for r in running.iter_mut().rev() {
        match tokio::time::timeout(Duration::from_secs(30), r.child.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => eprintln!("{} exited with {status}", r.label),
            _ => {
                eprintln!("{} did not stop within 30 s; killing it", r.label);
                let _ = r.child.kill().await;
            }
        }
    }
    running.clear();
}

/// Seeds stock and places one order: a laptop and two mice.
async fn demo(endpoints: &Endpoints, explorer: Option<&str>) -> anyhow::Result<()> {
    let mut inventory = endpoints.inventory()?;
    for (sku, name, stock) in [
        ("LAPTOP", "Laptop 15\"", 100),
        ("MOUSE", "Wireless mouse", 500),
    ] {
        inventory
            .upsert_item(UpsertItemRequest {
                sku: sku.into(),
                name: name.into(),
                available: stock,
            })
            .await
            .with_context(|| format!("seeding {sku}"))?;
    }
    println!("demo: stock set to LAPTOP 100, MOUSE 500");
    let usd = |amount_minor| {
        Some(Money {
            currency_code: "USD".into(),
            amount_minor,
        })
    };
    let request = CreateOrderRequest {
        request_id: String::new(),
        customer_id: "demo-customer".into(),
        lines: vec![
            OrderLine {
                sku: "LAPTOP".into(),
                quantity: 1,
                unit_price: usd(129_900),
            },
            OrderLine {
                sku: "MOUSE".into(),
                quantity: 2,
                unit_price: usd(2_500),
            },
        ],
        shipping_address: Some(Address {
            recipient_name: "Ada Lovelace".into(),
            line1: "12 Analytical Row".into(),
            city: "London".into(),
            postal_code: "N1 9GU".into(),
            country_code: "GB".into(),
            ..Default::default()
        }),
        shipping_method: 0,
        payment_token: "tok_visa".into(),
    };
    let mut orders = endpoints.order()?;
    let order = orders
        .create_order(request)
        .await
        .context("placing the demo order")?
        .into_inner()
        .order;
    let order_id = order.map(|o| o.order_id).unwrap_or_default();
    println!("demo: placed order {order_id}; watching it");
    let mut watch = orders
        .watch_order(WatchOrderRequest {
            order_id: order_id.clone(),
        })
        .await
        .context("watching the demo order")?
        .into_inner();
    while let Some(update) = watch.message().await.context("watching the demo order")? {
        if let Some(o) = update.order {
            println!(
                "demo: order is {}",
                o.status().as_str_name().trim_start_matches("ORDER_STATUS_")
            );
        }
    }
    let timeline = orders
        .get_saga_timeline(GetSagaTimelineRequest { order_id })
        .await
        .context("reading the demo saga")?
        .into_inner();
    super::saga::print_timeline(&timeline);
    if let (Some(url), Some(order)) = (explorer, &timeline.order) {
        println!(
            "demo: see it in the explorer: {url}/orders/{}",
            order.order_id
        );
    }
    Ok(())
}
