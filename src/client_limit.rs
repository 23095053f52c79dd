//! A cap on the calls one client may have in flight, so a single caller (a runaway loop, a
//! client that opens watch streams and never closes them) cannot take every worker and
//! connection of a service. Beyond the cap a call is refused at once with RESOURCE_EXHAUSTED —
//! which callers back off on — rather than queued without bound. A call counts until its
//! response body ends, so open streams count for as long as they are open.
//!
//! The client is its mesh identity when a sidecar is in front (the `URI=` of Envoy's
//! `x-forwarded-client-cert`, a SPIFFE id per service account), else its IP address.

use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use http_body_util::BodyExt;
use tonic::{Status, body::Body, transport::server::TcpConnectInfo};

/// Tower layer applying the cap.
#[derive(Clone)]
pub struct PerClientLimitLayer {
    limit: usize,
    in_flight: Arc<Mutex<HashMap<String, usize>>>,
}

impl PerClientLimitLayer {
    pub fn new(limit: usize) -> PerClientLimitLayer {
        PerClientLimitLayer {
            limit: limit.max(1),
            in_flight: Arc::default(),
        }
    }
}

impl<S> tower::Layer<S> for PerClientLimitLayer {
    type Service = PerClientLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        PerClientLimit {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct PerClientLimit<S> {
    inner: S,
    layer: PerClientLimitLayer,
}

/// Holds one slot of a client's allowance; gives it back when dropped (with the response body).
struct Slot {
    client: String,
    in_flight: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = in_flight.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                in_flight.remove(&self.client);
            }
        }
    }
}

impl PerClientLimitLayer {
    fn acquire(&self, client: String) -> Option<Slot> {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let n = in_flight.entry(client.clone()).or_default();
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(Slot {
            client,
            in_flight: self.in_flight.clone(),
        })
    }
}

/// Who is calling: the mesh identity from the sidecar, else the peer's IP address.
fn client_of<B>(request: &http::Request<B>) -> String {
    let from_mesh = request
        .headers()
        .get("x-forwarded-client-cert")
        .and_then(|v| v.to_str().ok())
        .and_then(|xfcc| {
            xfcc.split([';', ','])
                .find_map(|part| part.trim().strip_prefix("URI="))
                .map(str::to_string)
        });
    from_mesh.unwrap_or_else(|| {
        request
            .extensions()
            .get::<TcpConnectInfo>()
            .and_then(|info| info.remote_addr())
            .map(|addr: SocketAddr| addr.ip().to_string())
            .unwrap_or_else(|| "unknown".into())
    })
}

impl<S, B> tower::Service<http::Request<B>> for PerClientLimit<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let client = client_of(&request);
        let Some(slot) = self.layer.acquire(client.clone()) else {
            let limit = self.layer.limit;
            crate::metrics::CLIENT_LIMITED.inc();
            return Box::pin(async move {
                Ok(Status::resource_exhausted(format!(
                    "client {client} already has {limit} calls in flight; retry with backoff"
                ))
                .into_http())
            });
        };
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let response = inner.call(request).await?;
            // The slot travels with the body and is freed when the body ends or is dropped.
            Ok(response.map(|body| {
                Body::new(body.map_frame(move |frame| {
                    let _held = &slot;
                    frame
                }))
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mesh_identity_wins_over_the_address() {
        let mut request = http::Request::new(());
        request.headers_mut().insert(
            "x-forwarded-client-cert",
            http::HeaderValue::from_static(
                "By=spiffe://cluster.local/ns/ordermesh/sa/inventory;Hash=ab12;URI=spiffe://cluster.local/ns/ordermesh/sa/order",
            ),
        );
        assert_eq!(
            client_of(&request),
            "spiffe://cluster.local/ns/ordermesh/sa/order"
        );
        assert_eq!(client_of(&http::Request::new(())), "unknown");
    }

    #[test]
    fn slots_are_per_client_and_come_back_when_dropped() {
        let layer = PerClientLimitLayer::new(2);
        let a1 = layer.acquire("a".into()).expect("first");
        let _a2 = layer.acquire("a".into()).expect("second");
        assert!(layer.acquire("a".into()).is_none(), "third refused");
        assert!(
            layer.acquire("b".into()).is_some(),
            "another client is not affected"
        );
        drop(a1);
        assert!(
            layer.acquire("a".into()).is_some(),
            "a freed slot is reusable"
        );
    }
}
