//! Outbound gRPC: channels to the other services and the [`Propagate`] interceptor that every
//! generated client is built with, so deadlines, request ids, the canary header and the trace
//! context cross every hop without handlers doing anything.

use std::time::Duration;

use tonic::{
    Request, Status,
    metadata::{MetadataKey, MetadataValue},
    service::Interceptor,
    transport::{Channel, Endpoint},
};

use crate::{config::ClientSettings, context::CallContext};

#[derive(Debug, thiserror::Error)]
#[error("invalid endpoint URL {url:?}: {source}")]
pub struct EndpointError {
    url: String,
    source: tonic::transport::Error,
}

/// A lazily connecting channel: creating it never fails because the peer is down, calls do
/// (with UNAVAILABLE) until it is up, and it reconnects by itself.
pub fn channel(url: &str, settings: &ClientSettings) -> Result<Channel, EndpointError> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|source| EndpointError {
            url: url.to_string(),
            source,
        })?
        .connect_timeout(settings.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    Ok(endpoint.connect_lazy())
}

/// Copies the current [`CallContext`] and trace context onto each outbound request and sets its
/// deadline to the sooner of `timeout` and the inbound caller's deadline.
#[derive(Debug, Clone)]
pub struct Propagate {
    timeout: Duration,
}

impl Propagate {
    pub fn new(timeout: Duration) -> Propagate {
        Propagate { timeout }
    }
}

impl Interceptor for Propagate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let context = CallContext::current().unwrap_or_else(CallContext::new_root);
        let timeout = context
            .remaining()
            .map_or(self.timeout, |left| left.min(self.timeout));
        if timeout.is_zero() {
            return Err(Status::deadline_exceeded(
                "the inbound call's deadline has already passed",
            ));
        }
        request.set_timeout(timeout);
        let metadata = request.metadata_mut();
        for (name, value) in context.headers() {
            if let Ok(value) = MetadataValue::try_from(value) {
                metadata.insert(name, value);
            }
        }
        for (name, value) in crate::context::trace_headers().iter() {
            if let (Ok(key), Ok(value)) = (
                MetadataKey::from_bytes(name.as_str().as_bytes()),
                value.to_str().map(MetadataValue::try_from),
            ) && let Ok(value) = value
            {
                metadata.insert(key, value);
            }
        }
        Ok(request)
    }
}
