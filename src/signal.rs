//! The shutdown signal of a service process: SIGTERM (Kubernetes, `ordermesh up`) or SIGINT (Ctrl-C).

/// Completes on the first SIGTERM or SIGINT.
pub async fn terminate() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut sigterm) => {
            tokio::select! {
                _ = sigterm.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C will stop this process");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
