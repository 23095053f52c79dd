//! The admin HTTP port: `/health/live` (the process runs), `/health/ready` (SERVING: its
//! database, NATS and migrations are ready and it is not shutting down), `/metrics`, and what a
//! service adds (`/audit`).

use std::time::Duration;

use axum::{Router, extract::State, http::StatusCode, routing::get};
use tokio::sync::watch;

/// Routes of the admin port; `ready` mirrors the gRPC health status; `service` adds the
/// service's own (see [`crate::server::Host::add_admin_routes`]), answered within a request
/// timeout; `streams` are its long-lived responses (server-sent events), which end themselves.
pub fn router(ready: watch::Receiver<bool>, service: Router, streams: Router) -> Router {
    Router::new()
        .route("/health/live", get(|| async { "live\n" }))
        .route("/health/ready", get(readiness))
        .route("/metrics", get(|| async { crate::metrics::render() }))
        .with_state(ready)
        .merge(service)
        // A scrape or probe never holds a connection open for long.
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(10),
        ))
        .merge(streams)
}

async fn readiness(State(ready): State<watch::Receiver<bool>>) -> (StatusCode, &'static str) {
    if *ready.borrow() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
