//! Waiting for dependencies at start-up: retry with capped backoff while they are down, so a
//! service started before PostgreSQL or NATS stays NOT_SERVING instead of crash-looping.

use std::{fmt::Display, future::Future, time::Duration};

use sqlx::{PgPool, migrate::Migrator};

use crate::{config::Settings, nats::Nats};

/// The service's own database, created and migrated, once PostgreSQL is reachable.
pub async fn database(
    settings: &Settings,
    migrator: &Migrator,
) -> Result<PgPool, crate::db::DbError> {
    let name = settings.database_name();
    retry("postgresql", crate::db::DbError::is_transient, || {
        crate::db::connect(&settings.database, &name, migrator)
    })
    .await
}

/// A NATS connection with JetStream, once the server is reachable.
pub async fn nats(settings: &Settings) -> Result<Nats, crate::nats::NatsError> {
    let name = format!("{}-{}", settings.namespace, settings.service);
    retry(
        "nats",
        |_| true,
        || crate::nats::connect(&settings.nats, &name),
    )
    .await
}

/// Calls `attempt` until it succeeds or returns an error that `transient` rejects. Logs each
/// failure with `what` so operators see what the service is waiting for.
pub async fn retry<T, E, F, Fut>(
    what: &str,
    transient: impl Fn(&E) -> bool,
    mut attempt: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Display,
{
    let mut delay = Duration::from_millis(100);
    let mut failures = 0u32;
    loop {
        match attempt().await {
            Ok(value) => {
                if failures > 0 {
                    tracing::info!(what, failures, "dependency is up");
                }
                return Ok(value);
            }
            Err(error) if transient(&error) => {
                failures += 1;
                tracing::warn!(what, %error, retry_in = ?delay, "waiting for dependency");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(error) => return Err(error),
        }
    }
}
