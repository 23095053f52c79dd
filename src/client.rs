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
/// (with UNAVAILABLE) until it is up, and it reconnects by itself. `urls` is one URL or a
/// comma-separated list of instances, balanced client-side (power of two choices over the
/// least loaded) — what a Kubernetes Service and its sidecar do for one URL in the mesh.
pub fn channel(urls: &str, settings: &ClientSettings) -> Result<Channel, EndpointError> {
    let endpoint = |url: &str| {
        Endpoint::from_shared(url.to_string())
            .map_err(|source| EndpointError {
                url: url.to_string(),
                source,
            })
            .map(|e| {
                e.connect_timeout(settings.connect_timeout)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(30))
                    .keep_alive_while_idle(true)
            })
    };
    let urls: Vec<&str> = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    match urls.as_slice() {
        [] => Ok(endpoint("")?.connect_lazy()),
        [one] => Ok(endpoint(one)?.connect_lazy()),
        many => {
            let endpoints = many
                .iter()
                .map(|u| endpoint(u))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Channel::balance_list(endpoints.into_iter()))
        }
    }
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

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[tokio::test]
    async fn outbound_calls_carry_the_inbound_context_and_the_sooner_deadline() {
        let inbound = CallContext {
            request_id: "req-7".into(),
            version: Some("v2".into()),
            baggage: Some("tenant=acme".into()),
            deadline: Some(Instant::now() + Duration::from_millis(800)),
        };
        let request = inbound
            .scope(async { Propagate::new(Duration::from_secs(5)).call(Request::new(())) })
            .await
            .expect("intercepted");
        let header = |name: &str| {
            request
                .metadata()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        assert_eq!(header("x-request-id").as_deref(), Some("req-7"));
        assert_eq!(header("x-version").as_deref(), Some("v2"));
        assert_eq!(header("baggage").as_deref(), Some("tenant=acme"));
        let timeout = header("grpc-timeout")
            .and_then(|t| crate::context::parse_grpc_timeout(&t))
            .expect("grpc-timeout");
        assert!(
            timeout <= Duration::from_millis(800),
            "the inbound deadline is sooner: {timeout:?}"
        );
    }

    #[tokio::test]
    async fn a_passed_deadline_fails_fast_instead_of_calling() {
        let inbound = CallContext {
            deadline: Some(Instant::now()),
            ..CallContext::new_root()
        };
        let status = inbound
            .scope(async { Propagate::new(Duration::from_secs(5)).call(Request::new(())) })
            .await
            .expect_err("deadline passed");
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
    }

    #[test]
    fn without_an_inbound_call_a_fresh_request_id_and_the_default_timeout_are_used() {
        let request = Propagate::new(Duration::from_secs(2))
            .call(Request::new(()))
            .expect("intercepted");
        let id = request
            .metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(uuid::Uuid::parse_str(id).is_ok());
        assert_eq!(
            request
                .metadata()
                .get("grpc-timeout")
                .and_then(|v| v.to_str().ok()),
            Some("2000000u")
        );
    }
}
