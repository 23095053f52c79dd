//! The shutdown signal of a service process: SIGTERM (Kubernetes, `ordermesh up`) or SIGINT (Ctrl-C).

use std::{future::Future, pin::Pin};

/// The future returned by [`terminate`].
pub type Terminate = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Completes on the first SIGTERM or SIGINT. The handlers are installed when this is called,
/// not when it is first polled, so a signal arriving during start-up is not missed.
pub fn terminate() -> Terminate {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut sigterm) => Box::pin(async move {
            tokio::select! {
                _ = sigterm.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }),
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C will stop this process");
            Box::pin(async {
                let _ = tokio::signal::ctrl_c().await;
            })
        }
    }
}
