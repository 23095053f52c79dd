//! One typed [`Settings`] per process, loaded once from defaults and then `ORDERMESH_*`
//! environment variables (nested with `__`, e.g. `ORDERMESH_DATABASE__URL`). A malformed value
//! fails start-up with an error that names the variable. Secrets are never printed: `Debug`
//! redacts credentials.

use std::{fmt, net::SocketAddr, time::Duration};

use figment::{
    Figment,
    providers::{Env, Serialized},
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// The five services of the mesh. Their order fixes their default ports.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum ServiceName {
    Order,
    Inventory,
    Payment,
    Shipping,
    Notification,
}

impl ServiceName {
    /// Every service, in start-up order (callees before the order service that calls them).
    pub const ALL: [ServiceName; 5] = [
        ServiceName::Inventory,
        ServiceName::Payment,
        ServiceName::Shipping,
        ServiceName::Notification,
        ServiceName::Order,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ServiceName::Order => "order",
            ServiceName::Inventory => "inventory",
            ServiceName::Payment => "payment",
            ServiceName::Shipping => "shipping",
            ServiceName::Notification => "notification",
        }
    }

    /// Offset from the base ports: order 0, inventory 1, payment 2, shipping 3, notification 4.
    pub fn port_offset(self) -> u16 {
        match self {
            ServiceName::Order => 0,
            ServiceName::Inventory => 1,
            ServiceName::Payment => 2,
            ServiceName::Shipping => 3,
            ServiceName::Notification => 4,
        }
    }

    /// Default gRPC port when running locally (50051 for order … 50055 for notification).
    pub fn default_grpc_port(self) -> u16 {
        DEFAULT_GRPC_BASE_PORT + self.port_offset()
    }

    /// Default admin HTTP port (9101 for order … 9105 for notification).
    pub fn default_admin_port(self) -> u16 {
        DEFAULT_ADMIN_BASE_PORT + self.port_offset()
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

pub const DEFAULT_GRPC_BASE_PORT: u16 = 50051;
pub const DEFAULT_ADMIN_BASE_PORT: u16 = 9101;
/// The project's own nats-server (a current one, with JetStream) listens here, apart from any
/// older system NATS on 4222.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4250";

/// Most runtime threads a service may be given (more is a typo, not a tuning).
pub const MAX_WORKER_THREADS: usize = 256;

/// Everything a service process reads from its environment.
#[derive(Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Settings {
    /// Which service this process is (set by its binary, not by the environment).
    pub service: ServiceName,
    /// Prefix of database names (`<namespace>_<service>`), streams, subjects and cache keys, so
    /// several meshes (or tests) share one PostgreSQL, NATS and Redis without seeing each
    /// other. Lower-case letters, digits and `_`.
    pub namespace: String,
    /// gRPC listen address; port 0 picks a free port.
    pub grpc_addr: SocketAddr,
    /// Admin HTTP listen address: `/health/live`, `/health/ready`, `/metrics`.
    pub admin_addr: SocketAddr,
    pub database: DatabaseSettings,
    pub nats: NatsSettings,
    pub redis: RedisSettings,
    pub endpoints: Endpoints,
    pub client: ClientSettings,
    pub server: ServerSettings,
    pub shutdown: ShutdownSettings,
    pub retention: RetentionSettings,
    pub log: LogSettings,
    /// `local`: the caller applies istio/'s call policy itself (3 attempts, 2 s per try,
    /// retries only on UNAVAILABLE / RESOURCE_EXHAUSTED / a broken connection within a 20 %
    /// retry budget, 1000 calls in flight per upstream, refused at once beyond;
    /// `ordermesh_client_policy_events_total`; outlier ejection is left to the sidecars).
    /// `istio`: single attempts, so retries never stack with the sidecar's.
    pub mesh: MeshMode,
    /// Threads of the tokio runtime; unset is one per core this process may use (tokio's
    /// default, which follows a container's CPU quota). 1 runs tokio's current-thread runtime:
    /// no work-stealing machinery, about 9 % less CPU than one worker of the multi-thread
    /// runtime. `ordermesh up` sets a quarter of the cores (at least 1, `--worker-threads` to
    /// choose), since there all five services share the machine with PostgreSQL and NATS.
    pub worker_threads: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MeshMode {
    Local,
    Istio,
}

/// PostgreSQL connection. Each service owns one database, `<namespace>_<service>` unless
/// `name` is set; it is created if missing.
#[derive(Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DatabaseSettings {
    /// PostgreSQL server, without a database name. May carry a password: it is never logged
    /// (or read it from a file, see below).
    pub url: String,
    /// The service's database; unset is `<namespace>_<service>`. Created if missing.
    pub name: Option<String>,
    /// Size of the connection pool.
    pub max_connections: u32,
    /// How long a query waits for a pooled connection before the call fails UNAVAILABLE.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub acquire_timeout: Duration,
}

impl fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &redact_url(&self.url))
            .field("name", &self.name)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

/// NATS JetStream: where, and how many copies of each stream it keeps.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NatsSettings {
    /// NATS with JetStream: one server, or a cluster's seeds separated by commas (the client
    /// learns the rest of the cluster from them).
    pub url: String,
    /// Copies of every stream the services create (1-5; consumers inherit it): 1 for one
    /// server (`make up`), 3 in the prod overlay, whose NATS is a 3-node JetStream cluster, so
    /// a stream survives losing a server.
    #[serde(default = "one_replica")]
    pub replicas: usize,
}

fn one_replica() -> usize {
    1
}

/// The servers of a NATS URL setting: one URL, or a cluster's seeds separated by commas (the
/// client learns the rest of the cluster from them and fails over between them).
pub fn nats_servers(url: &str) -> Result<Vec<async_nats::ServerAddr>, ConfigError> {
    // The URLs may carry credentials (ORDERMESH_NATS__URL_FILE): errors show them redacted.
    let shown = url.split(',').map(redact_url).collect::<Vec<_>>().join(",");
    let invalid = |reason: String| {
        ConfigError(format!(
            "NATS URL {shown:?}: {reason} (one server, or several separated by commas)"
        ))
    };
    let servers = url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<async_nats::ServerAddr>()
                .map_err(|e| invalid(format!("{:?}: {e}", redact_url(s))))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if servers.is_empty() {
        return Err(invalid("no server".into()));
    }
    Ok(servers)
}

/// JetStream's limit on the copies of one stream.
pub const MAX_NATS_REPLICAS: usize = 5;

/// Redis, used only as a read-through cache.
#[derive(Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RedisSettings {
    /// The order read model's cache (optional: down means slower, never wrong); empty turns
    /// it off.
    pub url: String,
}

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &redact_url(&self.url))
            .finish()
    }
}

/// Where the other services are. In Kubernetes, `http://<service>:50051` through the sidecar;
/// a comma-separated list is balanced client-side.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Endpoints {
    /// The order service.
    pub order: String,
    /// The inventory service.
    pub inventory: String,
    /// The payment service (v1 and, without a canary list, every call).
    pub payment: String,
    /// The shipping service.
    pub shipping: String,
    /// The notification service.
    pub notification: String,
    /// Payment v2 instances: calls carrying `x-version: v2` go there, what the canary
    /// VirtualService does in Kubernetes; empty means no canary.
    #[serde(default)]
    pub payment_canary: String,
}

impl Endpoints {
    pub fn of(&self, service: ServiceName) -> &str {
        match service {
            ServiceName::Order => &self.order,
            ServiceName::Inventory => &self.inventory,
            ServiceName::Payment => &self.payment,
            ServiceName::Shipping => &self.shipping,
            ServiceName::Notification => &self.notification,
        }
    }
}

/// Outbound gRPC calls.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ClientSettings {
    /// Deadline of an outbound call (the inbound deadline wins when sooner).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// Outbound TCP connect timeout.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub connect_timeout: Duration,
}

/// Inbound gRPC limits.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ServerSettings {
    /// Largest request accepted, in bytes; larger gets RESOURCE_EXHAUSTED.
    pub max_message_bytes: usize,
    /// No RPC runs longer, whatever deadline the client sent; a WatchOrder stream ends with
    /// DEADLINE_EXCEEDED then (or at the client's sooner deadline): watch again to continue.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_request_duration: Duration,
    /// Concurrent requests per HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// Calls (open streams included) one client may have in flight; more get
    /// RESOURCE_EXHAUSTED at once. The client is its mesh identity (SPIFFE id from the
    /// sidecar) or its IP.
    #[serde(default = "default_in_flight_per_client")]
    pub max_in_flight_per_client: usize,
}

fn default_in_flight_per_client() -> usize {
    512
}

/// Graceful shutdown on SIGTERM/SIGINT: report NOT_SERVING, keep serving for `delay` (so load
/// balancers and Kubernetes endpoints stop sending traffic), stop accepting, then let in-flight
/// calls finish for at most `drain_timeout`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ShutdownSettings {
    /// After SIGTERM, keep serving while reporting NOT_SERVING, so endpoints stop sending
    /// traffic first (about 5s in Kubernetes).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub delay: Duration,
    /// Longest wait for in-flight calls to finish at shutdown.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub drain_timeout: Duration,
}

/// How long bookkeeping rows that only guard against repeats (idempotency keys and their stored
/// responses) are kept, and how they are pruned (see `ordermesh::retention`).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RetentionSettings {
    /// How long idempotency keys and their stored answers are kept: a retry inside the window
    /// is answered from the store, after it the key is a new request. Keep it longer than any
    /// client or saga retries (the saga's step deadlines are minutes).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub keep: Duration,
    /// How often expired keys are pruned: batches of short transactions with `SKIP LOCKED`
    /// over a BRIN index (`ordermesh_retention_pruned_rows_total`).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub every: Duration,
    /// Rows deleted per pruning statement (one short transaction each).
    pub batch: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LogSettings {
    /// `json` (one object per line) or `pretty`.
    pub format: LogFormat,
    /// A `tracing` filter such as `info,sqlx=warn` (`RUST_LOG` wins). The store, journal and
    /// NATS functions have DEBUG spans: `info,ordermesh_inventory=debug` shows them for one
    /// service.
    pub filter: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

/// A configuration value that could not be used. The message names the variable.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl Settings {
    /// Defaults that run on one machine with `make up`.
    pub fn defaults(service: ServiceName) -> Settings {
        let local = |s: ServiceName| format!("http://127.0.0.1:{}", s.default_grpc_port());
        Settings {
            service,
            namespace: "ordermesh".into(),
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], service.default_grpc_port())),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], service.default_admin_port())),
            database: DatabaseSettings {
                url: "postgres://postgres@127.0.0.1:5432".into(),
                name: None,
                max_connections: 16,
                acquire_timeout: Duration::from_secs(5),
            },
            nats: NatsSettings {
                url: DEFAULT_NATS_URL.into(),
                replicas: 1,
            },
            redis: RedisSettings {
                url: "redis://127.0.0.1:6379".into(),
            },
            endpoints: Endpoints {
                order: local(ServiceName::Order),
                inventory: local(ServiceName::Inventory),
                payment: local(ServiceName::Payment),
                shipping: local(ServiceName::Shipping),
                notification: local(ServiceName::Notification),
                payment_canary: String::new(),
            },
            client: ClientSettings {
                timeout: Duration::from_secs(5),
                connect_timeout: Duration::from_secs(2),
            },
            server: ServerSettings {
                max_message_bytes: 1024 * 1024,
                max_request_duration: Duration::from_secs(30),
                max_concurrent_streams: 256,
                max_in_flight_per_client: default_in_flight_per_client(),
            },
            retention: RetentionSettings {
                keep: Duration::from_secs(7 * 24 * 3600),
                every: Duration::from_secs(600),
                batch: 1000,
            },
            shutdown: ShutdownSettings {
                delay: Duration::ZERO,
                drain_timeout: Duration::from_secs(20),
            },
            log: LogSettings {
                format: LogFormat::Json,
                filter: "info".into(),
            },
            mesh: MeshMode::Local,
            worker_threads: None,
        }
    }

    /// Defaults overlaid with `ORDERMESH_*` variables.
    pub fn load(service: ServiceName) -> Result<Settings, ConfigError> {
        let mut settings: Settings = figment(service)
            .extract()
            .map_err(|e| describe(e, "ORDERMESH_"))?;
        settings.read_secret_files(|name| std::env::var_os(name))?;
        settings.validate()?;
        Ok(settings)
    }

    /// `ORDERMESH_<URL>_FILE` names a file holding a URL with credentials (a mounted Kubernetes
    /// Secret, a Docker secret), so the password need not sit in the environment. The file wins
    /// over the plain variable; surrounding whitespace is dropped.
    fn read_secret_files(
        &mut self,
        var: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<(), ConfigError> {
        for (name, target) in [
            (SECRET_FILE_VARIABLES[0], &mut self.database.url),
            (SECRET_FILE_VARIABLES[1], &mut self.redis.url),
            (SECRET_FILE_VARIABLES[2], &mut self.nats.url),
        ] {
            if let Some(path) = var(name) {
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    ConfigError(format!(
                        "{name}={}: cannot read the file: {e}",
                        std::path::Path::new(&path).display()
                    ))
                })?;
                *target = text.trim().to_string();
            }
        }
        Ok(())
    }

    /// Name of this service's own database.
    pub fn database_name(&self) -> String {
        self.database
            .name
            .clone()
            .unwrap_or_else(|| format!("{}_{}", self.namespace, self.service))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let ok = !self.namespace.is_empty()
            && self.namespace.len() <= 40
            && self
                .namespace
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !ok {
            return Err(ConfigError(format!(
                "ORDERMESH_NAMESPACE={:?}: use 1-40 lower-case letters, digits or '_'",
                self.namespace
            )));
        }
        if let Some(n) = self.worker_threads
            && !(1..=MAX_WORKER_THREADS).contains(&n)
        {
            return Err(ConfigError(format!(
                "ORDERMESH_WORKER_THREADS={n}: use 1-{MAX_WORKER_THREADS}, or leave it unset for one per core"
            )));
        }
        nats_servers(&self.nats.url)
            .map_err(|e| ConfigError(format!("ORDERMESH_NATS__URL: {}", e.0)))?;
        if !(1..=MAX_NATS_REPLICAS).contains(&self.nats.replicas) {
            return Err(ConfigError(format!(
                "ORDERMESH_NATS__REPLICAS={}: use 1-{MAX_NATS_REPLICAS}, at most the JetStream \
                 servers of the cluster",
                self.nats.replicas
            )));
        }
        let r = &self.retention;
        if r.keep.is_zero() || r.every.is_zero() || !(1..=100_000).contains(&r.batch) {
            return Err(ConfigError(format!(
                "ORDERMESH_RETENTION__KEEP / __EVERY / __BATCH = {:?} / {:?} / {}: durations must be \
                 above zero and the batch 1-100000",
                r.keep, r.every, r.batch
            )));
        }
        Ok(())
    }
}

/// Defaults overlaid with the environment; a service's own section (e.g. `ORDERMESH_SAGA__...`)
/// is a [`Section`].
fn figment(service: ServiceName) -> Figment {
    Figment::from(Serialized::defaults(Settings::defaults(service)))
        .merge(Env::prefixed("ORDERMESH_").split("__").ignore(&["service"]))
}

/// A service's own settings (`ORDERMESH_<NAME>__*`, e.g. the order service's `saga`), read once
/// at start beside the platform's [`Settings`] and handed to the service's `run` with them, so a
/// service reads nothing from the environment itself.
pub trait Section: Serialize + DeserializeOwned + Default + schemars::JsonSchema {
    /// The section's name: `saga` for `ORDERMESH_SAGA__*`.
    const NAME: &'static str;

    /// Checks what the types cannot; the message names the variable and what to use.
    fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }

    /// The variables' common prefix: `ORDERMESH_SAGA__` for `saga`.
    fn prefix() -> String {
        format!("ORDERMESH_{}__", Self::NAME.to_uppercase())
    }

    /// Every environment variable the section is read from: the variables of its
    /// [`Section::reference`] rows.
    fn variables() -> std::collections::BTreeSet<String> {
        Self::reference()
            .into_iter()
            .map(|row| row.variable)
            .collect()
    }

    /// The section's rows of docs/configuration.md (see [`crate::config_reference`]).
    fn reference() -> Vec<crate::config_reference::Row> {
        crate::config_reference::rows(&Self::prefix(), &[("", Self::default())], &[])
    }

    /// The section from the environment over its defaults, validated.
    fn load() -> Result<Self, ConfigError> {
        let prefix = Self::prefix();
        let section: Self = Figment::from(Serialized::defaults(Self::default()))
            .merge(Env::prefixed(&prefix).split("__"))
            .extract()
            .map_err(|e| describe(e, &prefix))?;
        section.validate()?;
        Ok(section)
    }
}

/// The section of a service that has none of its own.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NoSection;

impl Section for NoSection {
    const NAME: &'static str = "none";

    fn load() -> Result<Self, ConfigError> {
        Ok(NoSection)
    }
}

impl Settings {
    /// The platform's rows of docs/configuration.md (see [`crate::config_reference`]), with
    /// each service's default where they differ (the listen addresses).
    pub fn reference() -> Vec<crate::config_reference::Row> {
        let mut services = ServiceName::ALL;
        services.sort_by_key(|s| s.port_offset());
        let defaults = services.map(|s| (s.as_str(), Settings::defaults(s)));
        crate::config_reference::rows("ORDERMESH_", &defaults, &["service"])
    }

    /// Every `ORDERMESH_*` variable the platform settings read (service sections not
    /// included): the rows of [`Settings::reference`] and the secret-file variables. Lets
    /// manifests be checked against what is really read.
    pub fn variables() -> std::collections::BTreeSet<String> {
        let rows = Settings::reference().into_iter().map(|row| row.variable);
        let files = SECRET_FILE_VARIABLES.iter().map(|v| v.to_string());
        rows.chain(files).collect()
    }
}

/// Variables naming a file to read a URL (with its credentials) from.
const SECRET_FILE_VARIABLES: [&str; 3] = [
    "ORDERMESH_DATABASE__URL_FILE",
    "ORDERMESH_REDIS__URL_FILE",
    "ORDERMESH_NATS__URL_FILE",
];

/// Turns a figment error into one line per problem that names the environment variable
/// (`ORDERMESH_DATABASE__MAX_CONNECTIONS: invalid type ...`) and says what was wrong.
fn describe(error: figment::Error, prefix: &str) -> ConfigError {
    let messages: Vec<String> = error
        .into_iter()
        .map(|e| {
            let key: Vec<String> = e.path.iter().map(|p| p.to_uppercase()).collect();
            format!("{prefix}{}: {}", key.join("__"), e.kind)
        })
        .collect();
    ConfigError(messages.join("; "))
}

/// `postgres://user:secret@host` → `postgres://user:***@host`.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error.
mod tests {

    #[test]
    fn a_url_file_replaces_the_url_and_a_missing_one_names_the_variable() {
        let dir = std::env::temp_dir().join(format!("ordermesh-cfg-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("url");
        std::fs::write(&file, "postgres://order:s3cret@db:5432\n").expect("write");
        let mut settings = Settings::defaults(ServiceName::Order);
        settings
            .read_secret_files(|name| {
                (name == "ORDERMESH_DATABASE__URL_FILE").then(|| file.clone().into_os_string())
            })
            .expect("readable");
        assert_eq!(settings.database.url, "postgres://order:s3cret@db:5432");
        assert_eq!(settings.redis.url, "redis://127.0.0.1:6379", "untouched");

        let error = settings
            .read_secret_files(|name| {
                (name == "ORDERMESH_REDIS__URL_FILE").then(|| dir.join("missing").into_os_string())
            })
            .expect_err("missing file");
        assert!(
            error.to_string().contains("ORDERMESH_REDIS__URL_FILE="),
            "{error}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
    use super::*;

    #[test]
    fn a_malformed_variable_is_named_in_the_error() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("ORDERMESH_DATABASE__MAX_CONNECTIONS", "lots");
            let error = Settings::load(ServiceName::Order)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                error.contains("ORDERMESH_DATABASE__MAX_CONNECTIONS"),
                "{error}"
            );
            jail.clear_env();
            jail.set_env("ORDERMESH_GRPC_ADDR", "nowhere");
            let error = Settings::load(ServiceName::Order)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(error.contains("ORDERMESH_GRPC_ADDR"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn environment_overrides_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("ORDERMESH_NAMESPACE", "staging");
            jail.set_env("ORDERMESH_SHUTDOWN__DELAY", "5s");
            let s = Settings::load(ServiceName::Payment).map_err(|e| e.to_string())?;
            assert_eq!(s.database_name(), "staging_payment");
            assert_eq!(s.shutdown.delay, Duration::from_secs(5));
            Ok(())
        });
    }

    #[test]
    fn a_nats_url_is_one_server_or_a_comma_separated_cluster_and_a_clear_error_otherwise() {
        assert_eq!(
            nats_servers("nats://127.0.0.1:4222").map(|s| s.len()).ok(),
            Some(1)
        );
        let cluster = nats_servers("nats://a:4222, nats://b:4222,nats://c:4222").expect("three");
        assert_eq!(cluster.len(), 3);
        assert_eq!(cluster[1].host(), "b");
        for bad in ["", " , ", "nats://a:4222,nats://b:port"] {
            let error = nats_servers(bad).expect_err(bad).to_string();
            assert!(error.contains("separated by commas"), "{error}");
        }
        let error = nats_servers("nats://u:secret@a:4222,nats://u:secret@b:port")
            .expect_err("a bad port")
            .to_string();
        assert!(!error.contains("secret"), "{error}");
        assert!(error.contains("nats://u:***@b:port"), "{error}");
    }

    #[test]
    fn stream_replicas_default_to_one_and_more_than_jetstream_allows_is_refused() {
        figment::Jail::expect_with(|jail| {
            let s = Settings::load(ServiceName::Order).map_err(|e| e.to_string())?;
            assert_eq!(s.nats.replicas, 1);
            jail.set_env("ORDERMESH_NATS__REPLICAS", "3");
            let s = Settings::load(ServiceName::Order).map_err(|e| e.to_string())?;
            assert_eq!(s.nats.replicas, 3);
            for bad in ["0", "6"] {
                jail.set_env("ORDERMESH_NATS__REPLICAS", bad);
                let error = Settings::load(ServiceName::Order)
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_default();
                assert!(
                    error.contains(&format!("ORDERMESH_NATS__REPLICAS={bad}: use 1-5")),
                    "{error}"
                );
            }
            Ok(())
        });
    }

    #[test]
    fn worker_threads_are_read_and_a_zero_is_refused() {
        figment::Jail::expect_with(|jail| {
            let s = Settings::load(ServiceName::Order).map_err(|e| e.to_string())?;
            assert_eq!(s.worker_threads, None, "unset: tokio's default");
            jail.set_env("ORDERMESH_WORKER_THREADS", "2");
            let s = Settings::load(ServiceName::Order).map_err(|e| e.to_string())?;
            assert_eq!(s.worker_threads, Some(2));
            jail.set_env("ORDERMESH_WORKER_THREADS", "0");
            let error = Settings::load(ServiceName::Order)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                error.contains("ORDERMESH_WORKER_THREADS=0: use 1-256"),
                "{error}"
            );
            Ok(())
        });
    }

    #[test]
    fn retention_is_read_from_the_environment_and_a_zero_is_refused() {
        figment::Jail::expect_with(|jail| {
            let s = Settings::load(ServiceName::Payment).map_err(|e| e.to_string())?;
            assert_eq!(s.retention.keep, Duration::from_secs(7 * 24 * 3600));
            jail.set_env("ORDERMESH_RETENTION__KEEP", "30days");
            let s = Settings::load(ServiceName::Payment).map_err(|e| e.to_string())?;
            assert_eq!(s.retention.keep, Duration::from_secs(30 * 24 * 3600));
            jail.set_env("ORDERMESH_RETENTION__EVERY", "0s");
            let error = Settings::load(ServiceName::Payment)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(error.contains("ORDERMESH_RETENTION__KEEP"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn redact_url_hides_only_the_password() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432"),
            "postgres://app:***@db:5432"
        );
        assert_eq!(
            redact_url("postgres://app@db:5432"),
            "postgres://app@db:5432"
        );
        assert_eq!(redact_url("redis://127.0.0.1"), "redis://127.0.0.1");
    }

    #[test]
    fn database_name_is_namespaced_per_service() {
        let s = Settings::defaults(ServiceName::Inventory);
        assert_eq!(s.database_name(), "ordermesh_inventory");
    }

    #[test]
    fn debug_output_never_contains_the_database_password() {
        let mut s = Settings::defaults(ServiceName::Order);
        s.database.url = "postgres://app:hunter2@db".into();
        assert!(!format!("{:?}", s.database).contains("hunter2"));
    }
}
