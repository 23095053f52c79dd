//! PostgreSQL: each service's own database, created if missing, migrated at start under
//! sqlx's advisory lock (so several replicas starting at once migrate exactly once), and the
//! mapping of database errors to gRPC codes.

use std::{str::FromStr, time::Duration};

use sqlx::{
    Connection, PgPool,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgConnection, PgPoolOptions},
};
use tonic::Status;

use crate::config::DatabaseSettings;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("ORDERMESH_DATABASE__URL is not a PostgreSQL URL: {0}")]
    Url(#[source] sqlx::Error),
    #[error("database name {0:?} must be 1-63 characters of a-z, 0-9 and _")]
    Name(String),
    #[error("connecting to PostgreSQL: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("creating database {name}: {source}")]
    Create { name: String, source: sqlx::Error },
    #[error("running migrations on {name}: {source}")]
    Migrate {
        name: String,
        source: sqlx::migrate::MigrateError,
    },
}

impl DbError {
    /// Worth retrying: the server may simply not be up yet. Anything else is a real fault.
    pub fn is_transient(&self) -> bool {
        matches!(self, DbError::Connect(_) | DbError::Create { .. })
            || matches!(self, DbError::Migrate { source: sqlx::migrate::MigrateError::Execute(e), .. } if is_connection_error(e))
    }
}

/// Exports the pool's connections (in use, idle, maximum) at scrape time, so an exhausted pool
/// (requests waiting for `acquire_timeout`) is visible before it turns into UNAVAILABLE errors.
struct PoolCollector {
    pool: PgPool,
    max: u32,
    connections: prometheus::IntGaugeVec,
    limit: prometheus::IntGauge,
}

impl PoolCollector {
    fn register(pool: &PgPool, max: u32) {
        let collector = prometheus::IntGaugeVec::new(
            prometheus::Opts::new(
                "ordermesh_db_pool_connections",
                "PostgreSQL connections of this process's pool, by state (in_use, idle).",
            ),
            &["state"],
        )
        .and_then(|connections| {
            Ok(PoolCollector {
                pool: pool.clone(),
                max,
                connections,
                limit: prometheus::IntGauge::new(
                    "ordermesh_db_pool_max_connections",
                    "Size limit of this process's PostgreSQL pool.",
                )?,
            })
        });
        // Registration fails only when a pool was already registered in this process (tests
        // that start a service twice in one process); the first one keeps reporting.
        if let Ok(collector) = collector {
            let _ = prometheus::register(Box::new(collector));
        }
    }
}

impl prometheus::core::Collector for PoolCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        let mut descs = self.connections.desc();
        descs.extend(self.limit.desc());
        descs
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let size = i64::from(self.pool.size());
        let idle = i64::try_from(self.pool.num_idle()).unwrap_or(size);
        self.connections
            .with_label_values(&["in_use"])
            .set(size - idle);
        self.connections.with_label_values(&["idle"]).set(idle);
        self.limit.set(i64::from(self.max));
        let mut families = self.connections.collect();
        families.extend(self.limit.collect());
        families
    }
}

/// A service's migrations, as [`connect`] runs them: a database that a newer release already
/// migrated further is accepted, not refused. New migrations only add (expand first, remove
/// in a later release once nothing reads it), so the older binary still works against the
/// newer schema, and `kubectl rollout undo` after a release with a migration brings the old
/// pods up instead of crash-looping them on "migration N was previously applied but is
/// missing". (The order service's 0004 predates the rule: it dropped `outbox.id` together with
/// the code that read it, so a rollback across it is not supported.)
pub fn rollback_safe(mut migrator: Migrator) -> Migrator {
    migrator.set_ignore_missing(true);
    migrator
}

/// Creates `name` if missing, opens a pool to it and runs `migrator`.
pub async fn connect(
    settings: &DatabaseSettings,
    name: &str,
    migrator: &Migrator,
) -> Result<PgPool, DbError> {
    if name.is_empty()
        || name.len() > 63
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(DbError::Name(name.to_string()));
    }
    let server =
        with_planner_costs(PgConnectOptions::from_str(&settings.url).map_err(DbError::Url)?);
    create_if_missing(&server, name).await?;
    let pool = PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout)
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move { Ok(meta.idle_for < PING_IDLE_AFTER || alive(conn).await) })
        })
        .connect_with(server.database(name))
        .await
        .map_err(DbError::Connect)?;
    migrator
        .run(&pool)
        .await
        .map_err(|source| DbError::Migrate {
            name: name.to_string(),
            source,
        })?;
    PoolCollector::register(&pool, settings.max_connections);
    Ok(pool)
}

/// A pooled connection idle at least this long is pinged before it is handed out; a busier one
/// is used as it is. sqlx pings every connection it hands out by default: a round trip, and a
/// wake-up of the backend and of the service, before every statement (the payment service made
/// ~1 `sendto` and ~1.7 `recvfrom` calls per order fewer without it, by `strace -c` at
/// 100 orders/s). A connection that broke while busy (PostgreSQL restarted) fails its
/// statement like any other database error, which callers already retry or report.
const PING_IDLE_AFTER: Duration = Duration::from_secs(1);

/// Whether an idle connection still answers; a dead one is closed and another taken.
async fn alive(conn: &mut PgConnection) -> bool {
    match conn.ping().await {
        Ok(()) => true,
        Err(error) => {
            tracing::info!(%error, "idle database connection is gone; opening another");
            false
        }
    }
}

/// What an index probe costs the planner, relative to a sequential page read.
///
/// PostgreSQL's default (4) prices random reads as on a spinning disk. With a service's working
/// set in memory (or on SSD) that makes the generic plans of prepared statements scan small
/// tables whole: inventory's `items` was scanned twice per Reserve and twice per Commit for
/// `sku = ANY($1)` (a generic plan guesses ten SKUs), which cost a third of its database's CPU.
/// 1.1 is the usual SSD setting. A `random_page_cost` in the URL's `options` wins.
const RANDOM_PAGE_COST: &str = "1.1";

fn with_planner_costs(server: PgConnectOptions) -> PgConnectOptions {
    if server
        .get_options()
        .is_some_and(|o| o.contains("random_page_cost"))
    {
        return server;
    }
    server.options([("random_page_cost", RANDOM_PAGE_COST)])
}

async fn create_if_missing(server: &PgConnectOptions, name: &str) -> Result<(), DbError> {
    let mut conn = PgConnection::connect_with(&server.clone().database("postgres"))
        .await
        .map_err(DbError::Connect)?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut conn)
            .await
            .map_err(DbError::Connect)?;
    if !exists {
        // The name was checked to be [a-z0-9_]+ above, so quoting it is enough.
        match sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
        {
            Ok(_) => tracing::info!(database = name, "created database"),
            // Another replica created it between our check and our CREATE.
            Err(e) if is_code(&e, "42P04") || is_code(&e, "23505") => {}
            Err(source) => {
                return Err(DbError::Create {
                    name: name.to_string(),
                    source,
                });
            }
        }
    }
    let _ = conn.close().await;
    Ok(())
}

/// Drops a database (tests and `ordermesh` resets), disconnecting its sessions first.
pub async fn drop_database(url: &str, name: &str) -> Result<(), sqlx::Error> {
    let server = PgConnectOptions::from_str(url)?;
    let mut conn = PgConnection::connect_with(&server.database("postgres")).await?;
    sqlx::query(&format!(
        "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
        name.replace('"', "")
    ))
    .execute(&mut conn)
    .await?;
    Ok(())
}

/// True when `error` is a PostgreSQL error with SQLSTATE `code`.
pub fn is_code(error: &sqlx::Error, code: &str) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|c| c == code)
}

fn is_connection_error(error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed
    )
}

/// The gRPC status for a database error. Details stay in the log, never in the answer.
pub(crate) fn status(error: sqlx::Error) -> Status {
    if is_connection_error(&error) {
        tracing::warn!(%error, "database unavailable");
        return Status::unavailable("database unavailable, retry later");
    }
    // serialization_failure, deadlock_detected, unique_violation from a concurrent insert of
    // the same row: the request may simply be retried.
    if is_code(&error, "40001") || is_code(&error, "40P01") || is_code(&error, "23505") {
        tracing::info!(%error, "transaction conflict");
        return Status::aborted("concurrent update conflict, retry");
    }
    tracing::error!(%error, "database error");
    Status::internal("internal database error")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_price_index_probes_as_on_ssd_unless_the_url_says_otherwise() {
        let default = with_planner_costs(
            PgConnectOptions::from_str("postgres://postgres@127.0.0.1:5432").expect("url"),
        );
        assert_eq!(default.get_options(), Some("-c random_page_cost=1.1"));

        let chosen = with_planner_costs(
            PgConnectOptions::from_str(
                "postgres://postgres@127.0.0.1:5432?options=-c%20random_page_cost%3D2",
            )
            .expect("url"),
        );
        assert_eq!(chosen.get_options(), Some("-c random_page_cost=2"));
    }
}
