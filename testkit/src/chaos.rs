//! Chaos harness: infrastructure processes a test owns (so it may kill them), a fault-injecting
//! TCP proxy, a stream of mixed orders, and the recovery check every scenario ends with.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use ordermesh::proto::order::{
    CreateOrderRequest, GetOrderRequest, OrderStatus, order_service_client::OrderServiceClient,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use ordermesh::config::ServiceName;

use crate::{TestEnv, free_port, saga};

// --- processes the test owns ------------------------------------------------------------------

/// A child process killed with SIGKILL when dropped.
struct Owned(Option<Child>);

impl Owned {
    fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A nats-server with JetStream of this test only; kill and restart it keeps its store.
pub struct Nats {
    /// Declared first so it is dropped (killed) before its directory is removed.
    process: Owned,
    dir: tempfile::TempDir,
    pub port: u16,
}

impl Nats {
    pub async fn start() -> Nats {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port().await;
        let mut nats = Nats {
            dir,
            port,
            process: Owned(None),
        };
        nats.restart().await;
        nats
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts it again on the same port with the same store directory.
    pub async fn restart(&mut self) {
        let bin =
            std::env::var("ORDERMESH_NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into());
        let child = Command::new(bin)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server (make infra installs it)");
        self.process = Owned(Some(child));
        wait_for_port(self.port, "nats-server").await;
    }
}

/// A JetStream cluster of this test only: `size` nats-servers named `n0`, `n1`, ... with routes
/// to each other, each with its own store; any one may be killed.
pub struct NatsCluster {
    /// Declared first so they are dropped (killed) before their directories are removed.
    servers: Vec<Owned>,
    _dirs: Vec<tempfile::TempDir>,
    pub ports: Vec<u16>,
}

impl NatsCluster {
    pub async fn start(size: usize) -> NatsCluster {
        let bin =
            std::env::var("ORDERMESH_NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into());
        let mut ports = Vec::new();
        let mut cluster_ports = Vec::new();
        for _ in 0..size {
            ports.push(free_port().await);
            cluster_ports.push(free_port().await);
        }
        let routes = cluster_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut servers = Vec::new();
        let mut dirs = Vec::new();
        for (i, (port, cluster_port)) in ports.iter().zip(&cluster_ports).enumerate() {
            let dir = tempfile::tempdir().expect("temp dir");
            let child = Command::new(&bin)
                .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string()])
                .args(["-n", &format!("n{i}"), "--cluster_name", "ordermesh-test"])
                .args(["--cluster", &format!("nats://127.0.0.1:{cluster_port}")])
                .args(["--routes", &routes, "-sd"])
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start nats-server (make infra installs it)");
            servers.push(Owned(Some(child)));
            dirs.push(dir);
        }
        for port in &ports {
            wait_for_port(*port, "nats-server").await;
        }
        NatsCluster {
            servers,
            _dirs: dirs,
            ports,
        }
    }

    /// Every server's URL, comma-separated: what a client is given to find the cluster.
    pub fn url(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Kills server `n{index}` with SIGKILL.
    pub fn kill(&mut self, index: usize) {
        self.servers[index].kill();
    }

    /// The index of the server leading `stream` and its replica count, once the stream exists
    /// and has a leader (None until then).
    pub async fn stream_leader(&self, stream: &str) -> Option<(usize, usize)> {
        let servers = ordermesh::config::nats_servers(&self.url()).ok()?;
        let client = async_nats::connect(servers).await.ok()?;
        let mut stream = async_nats::jetstream::new(client)
            .get_stream(stream)
            .await
            .ok()?;
        let info = stream.info().await.ok()?;
        let leader = info.cluster.as_ref()?.leader.as_deref()?;
        let index = leader.strip_prefix('n')?.parse().ok()?;
        Some((index, info.config.num_replicas))
    }
}

/// A PostgreSQL cluster of this test only (initdb in a temp dir), restartable with its data.
pub struct Postgres {
    /// Declared first so it is dropped (killed) before its directory is removed.
    process: Owned,
    dir: tempfile::TempDir,
    pub port: u16,
}

/// Runs PostgreSQL's own binaries as the `postgres` user when the tests run as root (it refuses
/// to run as root).
fn as_postgres(program: &Path) -> Command {
    if nix::unistd::Uid::effective().is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--clear-groups",
            "--",
        ]);
        c.arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn pg_bin(name: &str) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!("no {name} under /usr/lib/postgresql (apt-get install postgresql)")
    })
}

impl Postgres {
    pub async fn start() -> Postgres {
        let dir = tempfile::tempdir().expect("temp dir");
        if nix::unistd::Uid::effective().is_root() {
            let user = nix::unistd::User::from_name("postgres")
                .ok()
                .flatten()
                .expect("a postgres user");
            nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid)).expect("chown");
        }
        let status = as_postgres(&pg_bin("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(dir.path().join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run initdb");
        assert!(status.success(), "initdb failed");
        let port = free_port().await;
        let mut pg = Postgres {
            dir,
            port,
            process: Owned(None),
        };
        pg.restart().await;
        pg
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    /// Crashes it (SIGKILL of the postmaster; its backends exit when they notice).
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts it again on the same port and data directory (it runs crash recovery).
    pub async fn restart(&mut self) {
        let child = as_postgres(&pg_bin("postgres"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
            ])
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "max_connections=200", "-c", "fsync=on"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start postgres");
        self.process = Owned(Some(child));
        let deadline = Instant::now() + Duration::from_secs(60);
        while sqlx::PgPool::connect(&format!("{}/postgres", self.url()))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "private PostgreSQL did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A Redis of this test only, without persistence.
pub struct Redis {
    pub port: u16,
    process: Owned,
}

impl Redis {
    pub async fn start() -> Redis {
        let port = free_port().await;
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        wait_for_port(port, "redis-server").await;
        Redis {
            port,
            process: Owned(Some(child)),
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        self.process.kill();
    }
}

/// Stops (SIGSTOP) or continues (SIGCONT) a process: a hang, not a crash.
pub fn freeze(pid: nix::unistd::Pid, frozen: bool) {
    use nix::sys::signal::{Signal, kill};
    let _ = kill(
        pid,
        if frozen {
            Signal::SIGSTOP
        } else {
            Signal::SIGCONT
        },
    );
}

// --- the fault proxy --------------------------------------------------------------------------

/// What the proxy does to the traffic passing through it; change it at any time.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Added to every chunk in each direction, plus up to `jitter` more (order is kept).
    pub latency: Duration,
    pub jitter: Duration,
    /// Bytes per second per direction and connection (None: unlimited).
    pub bandwidth: Option<u64>,
    /// Accept connections and read from them, but forward nothing.
    pub blackhole: bool,
    /// Reset (RST) every open connection about this often, at random (None: never).
    pub reset_every: Option<Duration>,
}

/// A TCP proxy in front of one upstream (a service or NATS) that injects [`Faults`].
pub struct FaultProxy {
    pub addr: SocketAddr,
    faults: Arc<Mutex<Faults>>,
    /// Cancelling this resets every connection open now; it is then replaced.
    generation: Arc<Mutex<CancellationToken>>,
    stop: CancellationToken,
}

impl FaultProxy {
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let faults = Arc::new(Mutex::new(Faults::default()));
        let generation = Arc::new(Mutex::new(CancellationToken::new()));
        let stop = CancellationToken::new();
        let (f, g, s) = (faults.clone(), generation.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = s.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((inbound, _)) = accepted else { continue };
                let reset = g.lock().expect("proxy lock").child_token();
                tokio::spawn(connection(inbound, upstream, f.clone(), reset));
            }
        });
        let (f, g, s) = (faults.clone(), generation.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let every = f.lock().expect("proxy lock").reset_every;
                let wait = every.map_or(Duration::from_millis(100), |e| {
                    e.mul_f64(0.5 + fastrand::f64())
                });
                tokio::select! {
                    _ = s.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                if every.is_some() && f.lock().expect("proxy lock").reset_every.is_some() {
                    reset_all(&g);
                }
            }
        });
        FaultProxy {
            addr,
            faults,
            generation,
            stop,
        }
    }

    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}", self.addr)
    }

    pub fn set(&self, faults: Faults) {
        *self.faults.lock().expect("proxy lock") = faults;
    }

    pub fn clear(&self) {
        self.set(Faults::default());
    }

    /// Resets every connection open now (new ones are accepted).
    pub fn reset_connections(&self) {
        reset_all(&self.generation);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.reset_connections();
    }
}

fn reset_all(generation: &Mutex<CancellationToken>) {
    let mut current = generation.lock().expect("proxy lock");
    current.cancel();
    *current = CancellationToken::new();
}

async fn connection(
    inbound: TcpStream,
    upstream: SocketAddr,
    faults: Arc<Mutex<Faults>>,
    reset: CancellationToken,
) {
    let Ok(outbound) = TcpStream::connect(upstream).await else {
        return; // the client sees the connection close, as with a dead upstream
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    let up = pipe(in_read, out_write, faults.clone());
    let down = pipe(out_read, in_write, faults);
    tokio::select! {
        _ = reset.cancelled() => {
            // Dropping both halves of both sockets with SO_LINGER 0 sends RST, as a crash or a
            // middlebox would; the peers see "connection reset".
        }
        _ = async { tokio::join!(up, down) } => {}
    }
}

/// Copies one direction through a delay line (latency without serialising chunks), a bandwidth
/// cap and the blackhole switch.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    faults: Arc<Mutex<Faults>>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(tokio::time::Instant, Bytes)>();
    let f = faults.clone();
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
            let bandwidth = f.lock().expect("proxy lock").bandwidth;
            if let Some(bps) = bandwidth.filter(|b| *b > 0) {
                tokio::time::sleep(Duration::from_secs_f64(chunk.len() as f64 / bps as f64)).await;
            }
        }
        let _ = to.shutdown().await;
    };
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut last_due = tokio::time::Instant::now();
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let faults = faults.lock().expect("proxy lock").clone();
            if faults.blackhole {
                continue;
            }
            let jitter = faults.jitter.mul_f64(fastrand::f64());
            let due = (tokio::time::Instant::now() + faults.latency + jitter).max(last_due);
            last_due = due;
            if tx.send((due, Bytes::copy_from_slice(&buf[..n]))).is_err() {
                return;
            }
        }
    };
    tokio::join!(reader, writer);
}

// --- a stream of orders -----------------------------------------------------------------------

/// The kinds of order a chaos stream mixes, and the outcome each must reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// In stock, good card: CONFIRMED.
    Normal,
    /// A SKU with no stock: CANCELLED.
    NoStock,
    /// `declined_token`: CANCELLED.
    Declined,
}

pub const SKUS: usize = 20;
pub const SCARCE_SKU: &str = "CHAOS-SCARCE";

/// Stock for the chaos stream: `SKUS` SKUs with plenty, one with none.
pub async fn seed_stock(
    inventory: &mut ordermesh::proto::inventory::inventory_service_client::InventoryServiceClient<
        Channel,
    >,
) {
    for i in 0..SKUS {
        saga::stock(inventory, &format!("CHAOS-{i}"), 1_000_000).await;
    }
    saga::stock(inventory, SCARCE_SKU, 0).await;
}

fn request(i: u64, kind: Kind, namespace: &str) -> CreateOrderRequest {
    let sku = match kind {
        Kind::NoStock => SCARCE_SKU.to_string(),
        _ => format!("CHAOS-{}", i as usize % SKUS),
    };
    let token = if kind == Kind::Declined {
        "declined_token"
    } else {
        "tok_chaos"
    };
    let mut r = saga::order(&[(sku.as_str(), 1 + (i % 3) as i64, 1_999)], token);
    r.request_id = format!("{namespace}-{i}");
    r.customer_id = format!("chaos-{}", i % 50);
    r
}

/// One order the stream placed.
#[derive(Debug, Clone)]
pub struct Placed {
    pub order_id: String,
    pub kind: Kind,
}

/// What a stream did: orders accepted, and those never accepted within the retry budget.
#[derive(Debug, Default)]
pub struct Sent {
    pub placed: Vec<Placed>,
    pub sent: u64,
    pub not_accepted: u64,
}

/// Places orders at `rate` per second (90 % normal, 5 % no stock, 5 % declined) until
/// stopped. Each CreateOrder carries a request id and is retried with it (idempotent) while the
/// order service is unreachable, for up to a minute.
pub struct OrderStream {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Sent>,
}

impl OrderStream {
    pub fn start(order: Channel, rate: f64, namespace: &str) -> OrderStream {
        let stop = CancellationToken::new();
        let s = stop.clone();
        let namespace = namespace.to_string();
        let task = tokio::spawn(async move {
            let sent = Arc::new(Mutex::new(Sent::default()));
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            // Open loop: a late tick is made up at once, so a slow mesh cannot slow the stream.
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0u64.. {
                tokio::select! {
                    _ = s.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let kind = match i % 20 {
                    7 => Kind::NoStock,
                    13 => Kind::Declined,
                    _ => Kind::Normal,
                };
                let mut client = OrderServiceClient::new(order.clone());
                let request = request(i, kind, &namespace);
                let sent = sent.clone();
                sent.lock().expect("stream lock").sent += 1;
                tasks.spawn(async move {
                    let deadline = Instant::now() + Duration::from_secs(60);
                    loop {
                        let mut call = tonic::Request::new(request.clone());
                        call.set_timeout(Duration::from_secs(5));
                        match client.create_order(call).await {
                            Ok(r) => {
                                if let Some(o) = r.into_inner().order {
                                    sent.lock().expect("stream lock").placed.push(Placed {
                                        order_id: o.order_id,
                                        kind,
                                    });
                                }
                                return;
                            }
                            Err(_) if Instant::now() < deadline => {
                                tokio::time::sleep(Duration::from_millis(250)).await;
                            }
                            Err(_) => {
                                sent.lock().expect("stream lock").not_accepted += 1;
                                return;
                            }
                        }
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
            std::mem::take(&mut *sent.lock().expect("stream lock"))
        });
        OrderStream { stop, task }
    }

    /// Stops sending; returns once every order sent is accepted or given up.
    pub async fn stop(self) -> Sent {
        self.stop.cancel();
        self.task.await.expect("order stream task")
    }
}

/// Orders finished over time, sampled from the order database every 100 ms while a scenario
/// runs: how throughput dips around a fault.
pub struct Throughput {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Vec<(Instant, i64)>>,
}

impl Throughput {
    pub fn start(orders: sqlx::PgPool) -> Throughput {
        let stop = CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let mut samples = Vec::new();
            while !s.is_cancelled() {
                let finished: Result<i64, _> = sqlx::query_scalar(
                    "SELECT count(*) FROM order_view WHERE status IN \
                     ('ORDER_STATUS_CONFIRMED', 'ORDER_STATUS_CANCELLED', 'ORDER_STATUS_FAILED')",
                )
                .fetch_one(&orders)
                .await;
                if let Ok(n) = finished {
                    samples.push((Instant::now(), n));
                }
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
            samples
        });
        Throughput { stop, task }
    }

    pub async fn stop(self) -> Dip {
        self.stop.cancel();
        Dip {
            samples: self.task.await.expect("throughput sampler"),
        }
    }
}

/// The samples of a [`Throughput`], read around the instant a fault began.
pub struct Dip {
    samples: Vec<(Instant, i64)>,
}

impl Dip {
    fn finished_at(&self, at: Instant) -> i64 {
        self.samples
            .iter()
            .take_while(|(t, _)| *t <= at)
            .last()
            .map_or(0, |(_, n)| *n)
    }

    /// Orders finished per second over `window` starting at `from`.
    pub fn rate(&self, from: Instant, window: Duration) -> f64 {
        (self.finished_at(from + window) - self.finished_at(from)) as f64 / window.as_secs_f64()
    }

    /// The longest time from `from` on in which no order finished, up to the last completion,
    /// and the sample at which it ended (orders finished again; `from` if none ever did).
    pub fn longest_stall(&self, from: Instant) -> (Duration, Instant) {
        let mut last_progress = from;
        let mut previous = self.finished_at(from);
        let mut longest = (Duration::ZERO, from);
        for (t, n) in self.samples.iter().filter(|(t, _)| *t > from) {
            if *n > previous {
                let gap = t.duration_since(last_progress);
                if gap > longest.0 {
                    longest = (gap, *t);
                }
                last_progress = *t;
                previous = *n;
            }
        }
        longest
    }
}

/// How often [`Throughput`] reads the finished count.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);

// --- recovery and the verdict -----------------------------------------------------------------

/// One scenario's line in the chaos table.
#[derive(Debug, serde::Serialize)]
pub struct Verdict {
    pub scenario: String,
    pub sent: u64,
    pub confirmed: u64,
    pub cancelled: u64,
    pub failed: u64,
    pub stuck: u64,
    pub not_accepted: u64,
    /// Orders in stock with a good card that did not end CONFIRMED (a fault may cancel some).
    pub unconfirmed_normal: u64,
    /// Orders without stock or with a declined card that ended CONFIRMED: always wrong.
    pub wrongly_confirmed: u64,
    pub violations: u64,
    /// From the end of the fault until the last order created before then was terminal and,
    /// if `ordermesh check` first found something missing, until it found nothing (0 when all
    /// was done by the time the fault ended).
    pub recovery_s: f64,
    /// Seconds from each finished order's last change to its notification: the slowest, and
    /// how many took longer than [`LATE`] (late is allowed; missing is a violation).
    pub notification_delay_max_s: f64,
    pub notifications_late: u64,
    pub check_report: serde_json::Value,
}

/// A notification this long after its order finished counts as late in the verdict.
pub const LATE: Duration = Duration::from_secs(5);

/// Delay from each finished order's last change to its (first) notification, in seconds, read
/// from the order and notification databases (one PostgreSQL server, so one clock).
async fn notification_delays(env: &TestEnv, check_env: &[(String, String)]) -> Vec<f64> {
    let server = check_env
        .iter()
        .find(|(k, _)| k == "ORDERMESH_DATABASE__URL")
        .map_or(crate::PG_URL.to_string(), |(_, v)| v.clone());
    let connect = |service: ServiceName| {
        let url = format!("{server}/{}_{service}", env.namespace);
        async move { sqlx::PgPool::connect(&url).await }
    };
    let (Ok(orders), Ok(notifications)) = (
        connect(ServiceName::Order).await,
        connect(ServiceName::Notification).await,
    ) else {
        return Vec::new();
    };
    let finished: Vec<(uuid::Uuid, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT order_id, updated_at FROM order_view
         WHERE status IN ('ORDER_STATUS_CONFIRMED', 'ORDER_STATUS_CANCELLED', 'ORDER_STATUS_FAILED')",
    )
    .fetch_all(&orders)
    .await
    .unwrap_or_default();
    let sent: std::collections::HashMap<uuid::Uuid, chrono::DateTime<chrono::Utc>> =
        sqlx::query_as("SELECT order_id, min(sent_at) FROM notifications GROUP BY order_id")
            .fetch_all(&notifications)
            .await
            .unwrap_or_default()
            .into_iter()
            .collect();
    finished
        .iter()
        .filter_map(|(id, done)| {
            sent.get(id)
                .map(|at| (*at - *done).as_seconds_f64().max(0.0))
        })
        .collect()
}

impl Verdict {
    /// Asserts what every scenario must end with: orders were placed, none stuck, lost or
    /// wrongly confirmed, no invariant broken, and at most `max_unconfirmed` (a share) of the
    /// orders that should confirm cancelled instead.
    pub fn assert_clean(&self, max_unconfirmed: f64) {
        assert!(self.sent >= 10, "too few orders to judge: {self:#?}");
        assert_eq!(self.stuck, 0, "orders not terminal: {self:#?}");
        assert_eq!(self.not_accepted, 0, "orders never accepted: {self:#?}");
        assert_eq!(self.violations, 0, "invariants broken: {self:#?}");
        assert_eq!(self.wrongly_confirmed, 0, "{self:#?}");
        let placed = (self.confirmed + self.cancelled + self.failed).max(1);
        assert!(
            self.unconfirmed_normal as f64 <= max_unconfirmed * placed as f64,
            "too many good orders cancelled: {self:#?}"
        );
    }
}

/// Waits (up to `patience`) until every placed order is terminal, then runs `ordermesh check`
/// over the test's databases and records the scenario's line in `target/chaos/results.jsonl`.
pub async fn settle(
    scenario: &str,
    env: &TestEnv,
    check_env: &[(String, String)],
    order: Channel,
    sent: Sent,
    fault_ended: std::time::SystemTime,
    patience: Duration,
) -> Verdict {
    let mut client = OrderServiceClient::new(order);
    let deadline = Instant::now() + patience;
    // Terminal time of the orders created before the fault ended, from the orders themselves.
    let mut recovered = fault_ended;
    let mut statuses = vec![OrderStatus::Unspecified; sent.placed.len()];
    loop {
        let mut open = 0;
        for (i, p) in sent.placed.iter().enumerate() {
            if statuses[i].is_terminal() {
                continue;
            }
            let request = GetOrderRequest {
                order_id: p.order_id.clone(),
            };
            if let Ok(r) = client.get_order(request).await
                && let Some(o) = r.into_inner().order
            {
                statuses[i] = o.status();
                if statuses[i].is_terminal() {
                    let time = |t: Option<prost_types::Timestamp>| {
                        t.and_then(|t| std::time::SystemTime::try_from(t).ok())
                    };
                    if let (Some(created), Some(updated)) = (time(o.created_at), time(o.updated_at))
                        && created < fault_ended
                    {
                        recovered = recovered.max(updated);
                    }
                    continue;
                }
            }
            open += 1;
        }
        if open == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let count = |s: OrderStatus| statuses.iter().filter(|x| **x == s).count() as u64;
    let outcomes = || sent.placed.iter().zip(&statuses);
    let unconfirmed_normal = outcomes()
        .filter(|(p, s)| p.kind == Kind::Normal && **s != OrderStatus::Confirmed)
        .count() as u64;
    let wrongly_confirmed = outcomes()
        .filter(|(p, s)| p.kind != Kind::Normal && **s == OrderStatus::Confirmed)
        .count() as u64;
    // The invariants may need a moment longer than the orders: a notification whose delivery
    // was cut by a reset comes again only after its consumer's ack wait (30 s). Late is fine;
    // lost is not: a violation still there after a minute fails the scenario, and one of an
    // invariant that holds at every instant (a double charge, an event gap) fails it at once.
    let (_, report, waited) = crate::check::settled(env, check_env, Duration::from_secs(60)).await;
    let violations = crate::check::broken(&report)
        .iter()
        .map(|(_, _, offenders)| offenders.len() as u64)
        .sum();
    if waited && violations == 0 {
        recovered = recovered.max(std::time::SystemTime::now());
    }
    let delays = notification_delays(env, check_env).await;
    let verdict = Verdict {
        notification_delay_max_s: delays.iter().copied().fold(0.0, f64::max),
        notifications_late: delays.iter().filter(|d| **d > LATE.as_secs_f64()).count() as u64,
        scenario: scenario.to_string(),
        sent: sent.sent,
        confirmed: count(OrderStatus::Confirmed),
        cancelled: count(OrderStatus::Cancelled),
        failed: count(OrderStatus::Failed),
        stuck: statuses.iter().filter(|s| !s.is_terminal()).count() as u64,
        not_accepted: sent.not_accepted,
        unconfirmed_normal,
        wrongly_confirmed,
        violations,
        recovery_s: recovered
            .duration_since(fault_ended)
            .unwrap_or_default()
            .as_secs_f64(),
        check_report: report,
    };
    record(&verdict);
    verdict
}

/// Appends the verdict to `target/chaos/results.jsonl` (read by `make chaos` for its table).
fn record(verdict: &Verdict) {
    use std::io::Write;
    let dir = crate::bin_dir().join("..").join("chaos");
    let _ = std::fs::create_dir_all(&dir);
    let mut line = serde_json::to_value(verdict).unwrap_or_default();
    if let Some(o) = line.as_object_mut() {
        o.remove("check_report");
    }
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("results.jsonl"))
    {
        let _ = writeln!(f, "{line}");
    }
    println!(
        "chaos {}: sent {} confirmed {} cancelled {} failed {} stuck {} violations {} recovery {:.1}s notification delay max {:.1}s late {}",
        verdict.scenario,
        verdict.sent,
        verdict.confirmed,
        verdict.cancelled,
        verdict.failed,
        verdict.stuck,
        verdict.violations,
        verdict.recovery_s,
        verdict.notification_delay_max_s,
        verdict.notifications_late
    );
}

// --- a mesh with proxies between the services ---------------------------------------------------

/// Starts the five services, callees first, each wired to the others (what every mesh of the
/// tests is started with); callers reach each service in
/// `proxied` through a [`FaultProxy`] (returned in the same order).
pub async fn start_mesh_proxied(
    env: &TestEnv,
    extra: &[(&str, &str)],
    proxied: &[ordermesh::config::ServiceName],
) -> (crate::Mesh, Vec<FaultProxy>) {
    let mut services = std::collections::HashMap::new();
    let mut proxies = Vec::new();
    let mut wiring: Vec<(String, String)> = extra
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for s in ordermesh::config::ServiceName::ALL {
        let process = env.spawn(s, &wiring).await;
        let url = if proxied.contains(&s) {
            let proxy = FaultProxy::start(process.grpc_addr).await;
            let url = proxy.url("http");
            proxies.push((s, proxy));
            url
        } else {
            process.url()
        };
        wiring.push((
            format!("ORDERMESH_ENDPOINTS__{}", s.as_str().to_uppercase()),
            url,
        ));
        services.insert(s, process);
    }
    for p in services.values() {
        p.wait_serving().await;
    }
    proxies.sort_by_key(|(s, _)| proxied.iter().position(|p| p == s));
    (
        crate::Mesh {
            services,
            env: wiring,
        },
        proxies.into_iter().map(|(_, p)| p).collect(),
    )
}
