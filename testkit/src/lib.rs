//! Test harness: runs the real service binaries as processes against the real PostgreSQL, NATS
//! JetStream and Redis, each test in its own namespace (databases `<ns>_<service>`, streams
//! `<NS>_*`), on ports the services pick themselves (port 0, read back from their `listening`
//! log line). Everything a test started is killed, and its databases and streams dropped, when
//! the test ends, also when it panics. `TEST_LOG=1` echoes service logs.

pub mod browser;
pub mod chaos;
pub mod check;
pub mod saga;

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ordermesh::config::ServiceName;
use tokio::net::TcpListener;
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

pub const PG_URL: &str = "postgres://postgres@127.0.0.1:5432";

pub fn nats_url() -> String {
    std::env::var("ORDERMESH_NATS__URL")
        .unwrap_or_else(|_| ordermesh::config::DEFAULT_NATS_URL.into())
}

/// Where the service binaries are: `ORDERMESH_BIN_DIR`, else the cargo target dir of this test.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ORDERMESH_BIN_DIR") {
        return dir.into();
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>
    exe.parent()
        .and_then(|p| p.parent())
        .expect("target directory")
        .to_path_buf()
}

pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the service binaries first with `cargo build --workspace --bins` (make test does)",
        path.display()
    );
    path
}

/// One test's isolated slice of the shared infrastructure.
pub struct TestEnv {
    pub namespace: String,
    /// The admin addresses of the processes started for each service, oldest first, where
    /// `ordermesh check` asks for its side of the invariants.
    admin: Arc<Mutex<HashMap<ServiceName, Vec<SocketAddr>>>>,
}

/// A fresh namespace, as [`TestEnv::new`].
impl Default for TestEnv {
    fn default() -> Self {
        TestEnv::new()
    }
}

impl TestEnv {
    pub fn new() -> TestEnv {
        let namespace = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        TestEnv {
            namespace,
            admin: Arc::default(),
        }
    }

    pub fn database_url(&self, service: ServiceName) -> String {
        format!("{PG_URL}/{}_{}", self.namespace, service)
    }

    /// A pool on a service's own database, for assertions on what was (not) written.
    pub async fn db(&self, service: ServiceName) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&self.database_url(service))
            .await
            .expect("connect to the service database")
    }

    /// Environment for a service process of this test. Peers point at a closed port unless a
    /// mesh wires them, so a test never talks to a mesh running on the default ports.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = ServiceName::ALL
            .iter()
            .map(|s| {
                (
                    format!("ORDERMESH_ENDPOINTS__{}", s.as_str().to_uppercase()),
                    "http://127.0.0.1:9".to_string(),
                )
            })
            .collect();
        env.extend([
            ("ORDERMESH_NAMESPACE".into(), self.namespace.clone()),
            ("ORDERMESH_NATS__URL".into(), nats_url()),
            ("ORDERMESH_DATABASE__URL".into(), PG_URL.into()),
            ("ORDERMESH_GRPC_ADDR".into(), "127.0.0.1:0".into()),
            ("ORDERMESH_ADMIN_ADDR".into(), "127.0.0.1:0".into()),
            ("ORDERMESH_LOG__FORMAT".into(), "json".into()),
            ("ORDERMESH_LOG__FILTER".into(), "info".into()),
        ]);
        // ORDERMESH_WORKER_THREADS stays unset: the multi-thread runtime with one worker per
        // core, what the Kubernetes manifests run. The current-thread runtime `ordermesh up`
        // gives each service on a small machine is run by the `up` test (tests/e2e/cli.rs) and
        // by the tests that pass their own.
        env
    }

    /// `ORDERMESH_ADMIN_ENDPOINTS__*` for `ordermesh check`: for each service this test
    /// started, the admin port of its newest process that still accepts connections (a test
    /// may have killed a replica or a restart's predecessor).
    pub fn admin_endpoints(&self) -> Vec<(String, String)> {
        let admin = self.admin.lock().expect("admin addresses");
        admin
            .iter()
            .filter_map(|(service, addrs)| {
                let alive = addrs.iter().rev().find(|addr| {
                    std::net::TcpStream::connect_timeout(addr, Duration::from_millis(200)).is_ok()
                });
                Some((*service, *alive.or(addrs.last())?))
            })
            .map(|(service, addr)| {
                (
                    format!(
                        "ORDERMESH_ADMIN_ENDPOINTS__{}",
                        service.as_str().to_uppercase()
                    ),
                    format!("http://{addr}"),
                )
            })
            .collect()
    }

    /// Starts one service and waits until it reports SERVING.
    pub async fn start(&self, service: ServiceName) -> ServiceProcess {
        let process = self.spawn(service, &[]).await;
        process.wait_serving().await;
        process
    }

    /// Starts all five services, callees first, with endpoints wired to each other.
    pub async fn start_mesh(&self) -> Mesh {
        self.start_mesh_with(&[]).await
    }

    /// Like [`TestEnv::start_mesh`], with extra environment for every service.
    pub async fn start_mesh_with(&self, extra: &[(&str, &str)]) -> Mesh {
        chaos::start_mesh_proxied(self, extra, &[]).await.0
    }

    /// Starts a service process with extra environment; returns once its ports are bound.
    pub async fn spawn(&self, service: ServiceName, extra: &[(String, String)]) -> ServiceProcess {
        let mut command = Command::new(binary(&format!("ordermesh-{service}")));
        command.envs(self.env()).envs(extra.iter().cloned());
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let process = ServiceProcess::start(service, command).await;
        self.admin
            .lock()
            .expect("admin addresses")
            .entry(service)
            .or_default()
            .push(process.admin_addr);
        process
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let namespace = self.namespace.clone();
        // Drop runs inside or outside a runtime; cleanup gets its own thread and runtime.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                for s in ServiceName::ALL {
                    let _ = ordermesh::db::drop_database(PG_URL, &format!("{namespace}_{s}")).await;
                }
                if let Ok(client) = async_nats::connect(nats_url()).await {
                    let js = async_nats::jetstream::new(client);
                    let prefix = format!("{}_", namespace.to_uppercase());
                    let names = ["ORDER_EVENTS", "SAGA_RUNS", "DEAD_LETTERS"];
                    for name in names {
                        let _ = js.delete_stream(format!("{prefix}{name}")).await;
                    }
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// All five services of one test.
pub struct Mesh {
    pub services: HashMap<ServiceName, ServiceProcess>,
    /// The environment every service got (extra settings and endpoints).
    pub env: Vec<(String, String)>,
}

impl Mesh {
    pub fn get(&self, s: ServiceName) -> &ServiceProcess {
        &self.services[&s]
    }

    /// Kills a service with SIGKILL (no shutdown at all), as a crash would.
    pub fn kill(&mut self, s: ServiceName) {
        if let Some(mut process) = self.services.remove(&s) {
            let _ = process.child.kill();
            let _ = process.child.wait();
        }
    }

    /// Starts a service again (on its old gRPC port, so callers' channels reconnect to it).
    pub async fn restart(&mut self, env: &TestEnv, s: ServiceName, old_grpc: SocketAddr) {
        self.restart_with(env, s, old_grpc, &[]).await;
    }

    /// [`Mesh::restart`] with extra environment for this start only.
    pub async fn restart_with(
        &mut self,
        env: &TestEnv,
        s: ServiceName,
        old_grpc: SocketAddr,
        only_now: &[(String, String)],
    ) {
        let mut extra = self.env.clone();
        extra.push(("ORDERMESH_GRPC_ADDR".into(), old_grpc.to_string()));
        extra.extend(only_now.iter().cloned());
        let process = env.spawn(s, &extra).await;
        process.wait_serving().await;
        self.services.insert(s, process);
    }
}

/// A running service binary. Killed (SIGKILL) when dropped; prints its last log lines if the
/// test is failing.
pub struct ServiceProcess {
    pub service: ServiceName,
    pub child: Child,
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub logs: Arc<Mutex<Vec<String>>>,
}

impl ServiceProcess {
    async fn start(service: ServiceName, mut command: Command) -> ServiceProcess {
        let mut child = command.spawn().expect("spawn service binary");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<(SocketAddr, SocketAddr)>();
        let echo = std::env::var_os("TEST_LOG").is_some();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let logs = logs.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if echo {
                        eprintln!("[{service}] {line}");
                    }
                    if let Some(addrs) = listening(&line) {
                        let _ = tx.send(addrs);
                    }
                    let mut logs = logs.lock().expect("log buffer");
                    logs.push(line);
                }
            });
        }
        let (grpc_addr, admin_addr) =
            tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30)))
                .await
                .expect("join")
                .unwrap_or_else(|_| {
                    panic!(
                        "{service} never logged `listening`; logs:\n{}",
                        logs.lock().map(|l| l.join("\n")).unwrap_or_default()
                    )
                });
        ServiceProcess {
            service,
            child,
            grpc_addr,
            admin_addr,
            logs,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .expect("url")
            .connect()
            .await
            .expect("connect to service")
    }

    /// The gRPC health status of the whole server ("" service), or None if unreachable.
    pub async fn health(&self) -> Option<ServingStatus> {
        self.health_of("").await
    }

    /// gRPC health of one check name (`""`, a contract service, `liveness`).
    pub async fn health_of(&self, service: &str) -> Option<ServingStatus> {
        let channel = Channel::from_shared(self.url())
            .ok()?
            .connect_timeout(Duration::from_secs(1))
            .connect()
            .await
            .ok()?;
        let mut request = tonic::Request::new(HealthCheckRequest {
            service: service.to_string(),
        });
        request.set_timeout(Duration::from_secs(2));
        let response = HealthClient::new(channel).check(request).await.ok()?;
        Some(response.get_ref().status())
    }

    /// Status of `/health/ready` on the admin port.
    pub async fn http_ready(&self) -> Option<u16> {
        http_get_status(self.admin_addr, "/health/ready").await
    }

    pub async fn wait_serving(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.health().await != Some(ServingStatus::Serving) {
            assert!(
                Instant::now() < deadline,
                "{} did not become SERVING; logs:\n{}",
                self.service,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log_text(&self) -> String {
        self.logs.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), signal).expect("signal service process");
    }

    /// Waits for the process to exit and returns its exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        self.wait_status(timeout).await?.code()
    }

    /// Waits for the process to exit and returns how it ended (code or signal).
    pub async fn wait_status(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let logs = self.logs.lock().map(|l| l.clone()).unwrap_or_default();
            let tail = &logs[logs.len().saturating_sub(40)..];
            eprintln!(
                "--- last log lines of {} ---\n{}",
                self.service,
                tail.join("\n")
            );
        }
    }
}

/// The addresses of a `listening` JSON log line.
fn listening(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    if value.get("message")?.as_str()? != "listening" {
        return None;
    }
    let grpc = value.get("grpc_addr")?.as_str()?.parse().ok()?;
    let admin = value.get("admin_addr")?.as_str()?.parse().ok()?;
    Some((grpc, admin))
}

/// Minimal HTTP/1.1 GET returning the status code (admin endpoints only).
pub async fn http_get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    http_get(addr, path).await.map(|(status, _)| status)
}

pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    http_request(addr, "GET", path, None).await
}

/// Minimal HTTP/1.1 request (JSON body optional) returning status and body (headers included
/// in the body's prefix are stripped).
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    json: Option<&str>,
) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let body = json.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// A free loopback port (bound, then released) for things that must be reached at a fixed port.
pub async fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr").port()
}

/// A loopback port held until dropped, for ordermesh services started on a fixed port. The
/// socket is bound with SO_REUSEPORT but never listens, so the kernel gives the port to nobody
/// else (no port-0 bind of a test running alongside, no outgoing connection), while a service
/// (same user, SO_REUSEPORT, see `ordermesh::server`) binds it too and is the only one that
/// accepts. A released [`free_port`] was once taken in between by another service, whose
/// answers to the wrong caller were UNIMPLEMENTED.
pub struct ReservedPort {
    _socket: tokio::net::TcpSocket,
    pub port: u16,
}

pub fn reserve_port() -> ReservedPort {
    reserve(0).expect("a free loopback port")
}

/// `port` held as by [`reserve_port`], or `None` if something already uses it. (A plain bind
/// checks first: a SO_REUSEPORT bind would share a port another service of ours listens on.)
pub fn reserve(port: u16) -> Option<ReservedPort> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    if port != 0 {
        drop(std::net::TcpListener::bind(addr).ok()?);
    }
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    socket.set_reuseaddr(true).ok()?;
    socket.set_reuseport(true).ok()?;
    socket.bind(addr).ok()?;
    let port = socket.local_addr().ok()?.port();
    Some(ReservedPort {
        _socket: socket,
        port,
    })
}

/// A TCP forwarder from `listen` to `target`; stops accepting when dropped.
pub struct Forwarder {
    task: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    pub async fn start(listen: u16, target: SocketAddr) -> Forwarder {
        let listener = TcpListener::bind(("127.0.0.1", listen))
            .await
            .expect("bind forwarder");
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Forwarder { task }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs the real grpcurl binary (from `ORDERMESH_GRPCURL`, else PATH) and returns its stdout,
/// or its stderr as the error.
pub fn grpcurl(args: &[&str]) -> Result<String, String> {
    let program = std::env::var("ORDERMESH_GRPCURL").unwrap_or_else(|_| "grpcurl".into());
    let output = Command::new(&program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("running {program}: {e}; `make test` installs grpcurl (scripts/infra.sh)")
        });
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// Runs the `ordermesh` CLI against this test's mesh; its stdout (panics on failure).
pub fn ordermesh(env: &TestEnv, args: &[&str]) -> String {
    let output = Command::new(binary("ordermesh"))
        .args(args)
        .envs(env.env())
        .output()
        .expect("run ordermesh");
    assert!(
        output.status.success(),
        "ordermesh {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A series' value on a service's `/metrics` (0 when absent), e.g. `foo_total{step="x"}`.
pub async fn metric(process: &ServiceProcess, series: &str) -> f64 {
    let (_, text) = http_get(process.admin_addr, "/metrics")
        .await
        .expect("metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}
