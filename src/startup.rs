//! Waiting for dependencies at start-up: retry with capped backoff while they are down, so a
//! service started before PostgreSQL or NATS stays NOT_SERVING instead of crash-looping.

use std::{fmt::Display, future::Future, time::Duration};

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
