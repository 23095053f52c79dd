//! Serving a service: the gRPC server with health and reflection, the admin HTTP port, start-up
//! that waits for dependencies, and graceful shutdown. Every service registers its gRPC service
//! through [`Host::add_service`], so none can forget health status or reflection.
//!
//! Lifecycle:
//! 1. [`Host::bind`] binds both ports at once; health answers NOT_SERVING from the first moment.
//! 2. [`Host::serve`] runs the service's `start` future (connect, migrate, spawn workers; it
//!    retries until dependencies are up) and only then reports SERVING.
//! 3. On the shutdown signal: NOT_SERVING, keep serving for `shutdown.delay`, stop accepting,
//!    let in-flight calls finish (at most `shutdown.drain_timeout`), stop background workers,
//!    return.

use std::{convert::Infallible, future::Future, net::SocketAddr};

use anyhow::Context as _;
use tokio::{net::TcpListener, sync::watch};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{
    server::NamedService,
    service::{Routes, RoutesBuilder},
    transport::{Server, server::TcpIncoming},
};
use tonic_health::{ServingStatus, server::HealthReporter};
use tower::ServiceBuilder;

use crate::{
    client_limit::PerClientLimitLayer,
    config::Settings,
    context::ContextLayer,
    limits,
    metrics::{self, RpcMetricsLayer},
};

/// The health check name that reports SERVING for as long as the process answers gRPC at all:
/// for liveness probes, which must not fail (and restart the pod) while a dependency is down
/// — readiness (the service's own name, or `""`) says that.
pub const LIVENESS: &str = "liveness";

/// Binds a listening socket. An explicit port is bound with SO_REUSEPORT, so a replacement
/// process can bind the same port before the old one stops (a zero-downtime restart on one
/// host: the kernel spreads new connections over both until the old one closes its socket).
/// Port 0 never shares: the kernel picks a port nobody uses.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if addr.port() != 0 {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(1024)
}

/// A bound, not yet serving, service process.
pub struct Host {
    settings: Settings,
    grpc_listener: TcpListener,
    admin_listener: TcpListener,
    routes: RoutesBuilder,
    names: Vec<&'static str>,
    health: HealthReporter,
    background: Background,
    http: Option<axum::Router>,
    admin: axum::Router,
    admin_streams: axum::Router,
}

/// Spawns long-running work (consumers, relays) that stops when the service shuts down.
#[derive(Clone, Default)]
pub struct Background {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Background {
    /// Runs `task` until it returns; it should watch [`Background::cancelled`] and stop soon after.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task);
    }

    /// Completes when shutdown asks background work to stop.
    pub fn cancelled(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    /// A token that is cancelled at shutdown, for tasks that outlive a borrow of `self`.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }
}

impl Host {
    /// Binds the gRPC and admin ports and logs `listening` with both addresses (tests read it).
    pub async fn bind(settings: Settings) -> anyhow::Result<Host> {
        let grpc_listener = listen(settings.grpc_addr).with_context(|| {
            format!(
                "binding gRPC port {} (ORDERMESH_GRPC_ADDR)",
                settings.grpc_addr
            )
        })?;
        let admin_listener = listen(settings.admin_addr).with_context(|| {
            format!(
                "binding admin port {} (ORDERMESH_ADMIN_ADDR)",
                settings.admin_addr
            )
        })?;
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        health
            .set_service_status(LIVENESS, ServingStatus::Serving)
            .await;
        let mut routes = RoutesBuilder::default();
        routes.add_service(health_service);
        let host = Host {
            settings,
            grpc_listener,
            admin_listener,
            routes,
            names: Vec::new(),
            health,
            background: Background::default(),
            http: None,
            admin: axum::Router::new(),
            admin_streams: axum::Router::new(),
        };
        tracing::info!(
            service = %host.settings.service,
            grpc_addr = %host.grpc_addr(),
            admin_addr = %host.admin_addr(),
            version = env!("CARGO_PKG_VERSION"),
            "listening"
        );
        Ok(host)
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_listener
            .local_addr()
            .unwrap_or(self.settings.grpc_addr)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener
            .local_addr()
            .unwrap_or(self.settings.admin_addr)
    }

    /// Background work of this process, stopped at shutdown after in-flight calls drained.
    pub fn background(&self) -> Background {
        self.background.clone()
    }

    /// Registers a gRPC service; its health status follows the process's.
    pub fn add_service<S>(&mut self, service: S) -> &mut Self
    where
        S: tower::Service<http::Request<tonic::body::Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.names.push(S::NAME);
        self.routes.add_service(service);
        self
    }

    /// Serves HTTP/1.1 routes (a JSON surface for web clients) on the gRPC port too, as a
    /// gRPC gateway would: one port, one set of limits and one shutdown for both.
    pub fn add_http_routes(&mut self, router: axum::Router) -> &mut Self {
        self.http = Some(match self.http.take() {
            Some(existing) => existing.merge(router),
            None => router,
        });
        self
    }

    /// Adds routes to the admin port (internal, never routed through the ingress): a service's
    /// side of `ordermesh check` (`/audit`, see [`crate::audit`]).
    pub fn add_admin_routes(&mut self, router: axum::Router) -> &mut Self {
        self.admin = std::mem::take(&mut self.admin).merge(router);
        self
    }

    /// Adds long-lived routes to the admin port (server-sent events, like the order service's
    /// explorer streams): outside the admin port's 10 s request timeout, so each must end by
    /// itself, at the latest when [`Background::cancelled`] fires at shutdown.
    pub fn add_admin_streams(&mut self, router: axum::Router) -> &mut Self {
        self.admin_streams = std::mem::take(&mut self.admin_streams).merge(router);
        self
    }

    /// [`Host::serve`] for a service whose handlers need only its own database: start-up creates
    /// and migrates it (waiting while PostgreSQL is down), starts pruning its `expiring` tables
    /// (see [`crate::retention`]) and hands the pool to the handlers.
    pub async fn serve_with_database(
        self,
        migrator: &'static sqlx::migrate::Migrator,
        expiring: &'static [crate::retention::Expiring],
        pool: crate::ready::Ready<sqlx::PgPool>,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let settings = self.settings.clone();
        let background = self.background.clone();
        let start = async move {
            let db = crate::startup::database(&settings, migrator).await?;
            background.spawn(crate::retention::run(
                db.clone(),
                expiring,
                settings.retention.clone(),
                background.token(),
            ));
            pool.set(db);
            Ok(())
        };
        self.serve(start, shutdown).await
    }

    /// Serves until `shutdown` completes. `start` runs first, concurrently with serving health:
    /// it connects dependencies (retrying while they are down) and returns when handlers can
    /// work; an error from it is fatal.
    pub async fn serve<St, Sh>(self, start: St, shutdown: Sh) -> anyhow::Result<()>
    where
        St: Future<Output = anyhow::Result<()>>,
        Sh: Future<Output = ()>,
    {
        let Host {
            settings,
            grpc_listener,
            admin_listener,
            mut routes,
            names,
            health,
            background,
            http,
            admin,
            admin_streams,
        } = self;
        let service = settings.service.as_str();
        for name in &names {
            health
                .set_service_status(*name, ServingStatus::NotServing)
                .await;
        }
        metrics::BUILD_INFO
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        metrics::READY.set(0);
        metrics::IDEMPOTENT_REPLAYS.get();
        metrics::CLIENT_LIMITED.get();

        // grpcurl before 1.9 and many tools still speak only the v1alpha reflection protocol.
        routes.add_service(
            reflection(&names)
                .build_v1()
                .context("building gRPC reflection")?,
        );
        routes.add_service(
            reflection(&names)
                .build_v1alpha()
                .context("building gRPC reflection")?,
        );
        let known = metrics::known_methods(&[
            crate::proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ]);
        metrics::init_rpc_series(&known, &names);

        let (ready_tx, ready_rx) = watch::channel(false);
        let stop_accepting = CancellationToken::new();
        let stop_admin = CancellationToken::new();

        let admin = {
            let stop = stop_admin.clone();
            tokio::spawn(async move {
                axum::serve(
                    admin_listener,
                    crate::admin::router(ready_rx, admin, admin_streams),
                )
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
            })
        };

        let grpc = {
            let stop = stop_accepting.clone();
            let mut routes: Routes = routes.routes();
            if let Some(http) = http {
                routes = Routes::from(routes.into_axum_router().merge(http));
            }
            let server = Server::builder()
                // Clients may ask for any deadline; no call runs longer than this.
                .timeout(settings.server.max_request_duration)
                .max_concurrent_streams(settings.server.max_concurrent_streams)
                .accept_http1(true)
                .layer(
                    ServiceBuilder::new()
                        // Outermost: counts every request with its final status code.
                        .layer(RpcMetricsLayer::new(known))
                        // Oversized messages are RESOURCE_EXHAUSTED, as gRPC specifies.
                        .map_response(limits::oversize_is_resource_exhausted)
                        // One client cannot take the whole service: refused, not queued.
                        .layer(PerClientLimitLayer::new(
                            settings.server.max_in_flight_per_client,
                        ))
                        // Caller context and trace span for everything inside.
                        .layer(ContextLayer),
                );
            let mut server = server;
            // Server::tcp_nodelay is ignored for an incoming stream of our own: without
            // TCP_NODELAY on every accepted socket, Nagle holds a streamed message (WatchOrder)
            // back until the peer's delayed ACK, up to 40 ms.
            let incoming = TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
            let router = server.add_routes(routes);
            tokio::spawn(async move {
                router
                    .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                    .await
            })
        };

        let set_status = |status: ServingStatus| {
            let health = health.clone();
            let names = names.clone();
            async move {
                health.set_service_status("", status).await;
                for name in names {
                    health.set_service_status(name, status).await;
                }
            }
        };

        tokio::pin!(shutdown);
        tokio::select! {
            started = start => {
                started.context("start-up failed")?;
                set_status(ServingStatus::Serving).await;
                let _ = ready_tx.send(true);
                metrics::READY.set(1);
                tracing::info!(service, "serving");
                shutdown.await;
            }
            _ = &mut shutdown => {
                tracing::info!(service, "shutdown requested during start-up");
            }
        }

        tracing::info!(service, delay = ?settings.shutdown.delay, "shutting down: reporting NOT_SERVING");
        set_status(ServingStatus::NotServing).await;
        let _ = ready_tx.send(false);
        metrics::READY.set(0);
        tokio::time::sleep(settings.shutdown.delay).await;

        stop_accepting.cancel();
        let drain = settings.shutdown.drain_timeout;
        match tokio::time::timeout(drain, grpc).await {
            Ok(Ok(result)) => result.context("gRPC server failed")?,
            Ok(Err(join)) => return Err(join).context("gRPC server task panicked"),
            Err(_) => tracing::warn!(
                ?drain,
                "in-flight calls did not finish within the drain timeout"
            ),
        }
        background.token.cancel();
        background.tracker.close();
        if tokio::time::timeout(drain, background.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                ?drain,
                "background work did not stop within the drain timeout"
            );
        }
        stop_admin.cancel();
        let _ = admin.await;
        tracing::info!(service, "stopped");
        Ok(())
    }
}

/// Descriptor sets served by reflection: the contracts, health, and google.rpc (so grpcurl can
/// decode BadRequest details).
const DESCRIPTOR_SETS: [&[u8]; 3] = [
    crate::proto::FILE_DESCRIPTOR_SET,
    tonic_health::pb::FILE_DESCRIPTOR_SET,
    tonic_types::pb::FILE_DESCRIPTOR_SET,
];

/// A reflection builder that advertises only what this process serves (`names`), not every
/// service in the shared descriptor set.
fn reflection(names: &[&'static str]) -> tonic_reflection::server::Builder<'static> {
    let mut builder = tonic_reflection::server::Builder::configure();
    for set in DESCRIPTOR_SETS {
        builder = builder.register_encoded_file_descriptor_set(set);
    }
    let always = [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ];
    for name in names.iter().copied().chain(always) {
        builder = builder.with_service_name(name);
    }
    builder
}

/// The whole `main` of a service binary: settings from the environment, telemetry, then `run`
/// until SIGTERM/SIGINT. Keeps every service's `main.rs` to one call.
pub fn main<F, Fut>(service: crate::config::ServiceName, run: F) -> anyhow::Result<()>
where
    F: FnOnce(Settings, crate::signal::Terminate) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    main_with(
        service,
        |settings, _: crate::config::NoSection, shutdown| run(settings, shutdown),
    )
}

/// [`main`] for a service with a settings [`Section`](crate::config::Section) of its own: it is
/// loaded and validated with the platform's settings, before anything starts.
pub fn main_with<S, F, Fut>(service: crate::config::ServiceName, run: F) -> anyhow::Result<()>
where
    S: crate::config::Section,
    F: FnOnce(Settings, S, crate::signal::Terminate) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let settings = Settings::load(service)?;
    let section = S::load()?;
    let mut builder = match settings.worker_threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(threads) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(threads);
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = builder
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async {
        let telemetry = crate::telemetry::init(&format!("ordermesh-{service}"), &settings.log)?;
        let result = run(settings, section, crate::signal::terminate()).await;
        if let Err(error) = &result {
            tracing::error!(error = format!("{error:#}"), "service failed");
        }
        // The last spans are flushed on a blocking thread while this one goes on driving the
        // runtime: the exporter's connection is a task on it, and a current-thread runtime
        // has no other thread to run it.
        let _ = tokio::task::spawn_blocking(move || drop(telemetry)).await;
        result
    })
}
