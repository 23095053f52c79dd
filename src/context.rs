//! Per-call context that travels across every hop: `x-request-id`, the canary header
//! `x-version`, `baggage`, the caller's deadline (`grpc-timeout`) and the W3C trace context.
//!
//! The server side ([`ContextLayer`]) reads it from the incoming request, opens the request's
//! span as a child of the caller's trace, and makes the context current for the handler (a
//! task-local). The client side ([`crate::client::Propagate`]) copies the current context onto
//! every outbound call, with a deadline no later than the inbound one.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub const REQUEST_ID: &str = "x-request-id";
pub const VERSION: &str = "x-version";
pub const BAGGAGE: &str = "baggage";
pub const GRPC_TIMEOUT: &str = "grpc-timeout";

/// Longest accepted value of a propagated header; longer ones are dropped, not forwarded.
const MAX_HEADER_LEN: usize = 256;

tokio::task_local! {
    static CURRENT: CallContext;
}

/// What one inbound call carries and passes on.
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    /// Correlates logs of one request across services; generated when the caller sent none.
    pub request_id: String,
    /// Canary routing key (`x-version: v2`), forwarded unchanged so the whole call tree takes
    /// the same route.
    pub version: Option<String>,
    /// W3C baggage, forwarded unchanged.
    pub baggage: Option<String>,
    /// When the caller stops waiting.
    pub deadline: Option<Instant>,
}

impl CallContext {
    /// The context of the call being handled by this task, if any.
    pub fn current() -> Option<CallContext> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// A fresh context for work that starts here (a CLI call, a saga step) rather than from a request.
    pub fn new_root() -> CallContext {
        CallContext {
            request_id: uuid::Uuid::new_v4().to_string(),
            ..Default::default()
        }
    }

    /// Runs `fut` with this context current.
    pub fn scope<F: Future>(self, fut: F) -> impl Future<Output = F::Output> {
        CURRENT.scope(self, fut)
    }

    /// Reads the context from request headers, ignoring malformed or oversized values.
    pub fn from_headers(headers: &HeaderMap) -> CallContext {
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty() && v.len() <= MAX_HEADER_LEN)
                .map(str::to_string)
        };
        CallContext {
            request_id: text(REQUEST_ID).unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            version: text(VERSION),
            baggage: text(BAGGAGE),
            deadline: text(GRPC_TIMEOUT)
                .and_then(|t| parse_grpc_timeout(&t))
                .map(|d| Instant::now() + d),
        }
    }

    /// Time left before the caller's deadline (zero once passed), if it set one.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// The headers to propagate (not the deadline, which the gRPC client sets itself).
    pub fn headers(&self) -> Vec<(&'static str, &str)> {
        let mut out = vec![(REQUEST_ID, self.request_id.as_str())];
        out.extend(self.version.as_deref().map(|v| (VERSION, v)));
        out.extend(self.baggage.as_deref().map(|b| (BAGGAGE, b)));
        out
    }
}

/// The current call context and trace context as message headers, so work queued now (an
/// outbox row, a NATS message) continues the same request and trace when it runs later.
/// Deadlines do not travel: queued work outlives its caller.
pub fn message_headers() -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    if let Some(context) = CallContext::current() {
        for (name, value) in context.headers() {
            out.insert(name.to_string(), value.to_string());
        }
    }
    for (name, value) in trace_headers().iter() {
        if let Ok(value) = value.to_str() {
            out.insert(name.as_str().to_string(), value.to_string());
        }
    }
    out
}

/// Makes `span` continue the trace a message's headers carry and returns the call context its
/// work runs in (see [`CallContext::scope`]): one order stays one trace across JetStream hops.
pub fn adopt_message(span: &tracing::Span, headers: Option<&async_nats::HeaderMap>) -> CallContext {
    let (context, parent) = from_message_headers(headers);
    // Fails only when the span is disabled (filtered out); then there is nothing to link.
    let _ = span.set_parent(parent);
    record_trace_id(span);
    context
}

/// Records the span's OpenTelemetry trace id in its `trace_id` field (declared
/// `trace_id = tracing::field::Empty`), so every log line inside it carries the id
/// (see `telemetry`'s JSON format) and logs can be joined with traces.
pub fn record_trace_id(span: &tracing::Span) {
    use opentelemetry::trace::TraceContextExt;
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if span_context.is_valid() {
        span.record("trace_id", span_context.trace_id().to_string());
    }
}

/// The context and trace parent carried by a message's headers (see [`message_headers`]).
pub fn from_message_headers(
    headers: Option<&async_nats::HeaderMap>,
) -> (CallContext, opentelemetry::Context) {
    let mut map = HeaderMap::new();
    if let Some(headers) = headers {
        for name in [REQUEST_ID, VERSION, BAGGAGE, "traceparent", "tracestate"] {
            if let Some(value) = headers.get(name)
                && let Ok(value) = http::HeaderValue::from_str(value.as_str())
            {
                map.insert(name, value);
            }
        }
    }
    let mut context = CallContext::from_headers(&map);
    context.deadline = None;
    (context, extract_trace_context(&map))
}

/// Parses a `grpc-timeout` value: at most 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The current span's W3C trace context as headers (`traceparent`, `tracestate`).
pub fn trace_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut HeaderInjector(&mut headers))
    });
    headers
}

/// Extracts the caller's W3C trace context from `headers`.
pub fn extract_trace_context(headers: &HeaderMap) -> opentelemetry::Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)))
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Server middleware: makes the caller's [`CallContext`] current and runs the handler inside a
/// span that continues the caller's trace.
#[derive(Debug, Clone, Default)]
pub struct ContextLayer;

impl<S> tower::Layer<S> for ContextLayer {
    type Service = ContextService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ContextService { inner }
    }
}

#[derive(Debug, Clone)]
pub struct ContextService<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for ContextService<S>
where
    S: tower::Service<http::Request<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // The clone that was polled ready is the one that must be called.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let context = CallContext::from_headers(request.headers());
        let span = tracing::info_span!(
            "grpc.server",
            otel.kind = "server",
            rpc.method = %request.uri().path(),
            request_id = %context.request_id,
            trace_id = tracing::field::Empty,
        );
        let _ = span.set_parent(extract_trace_context(request.headers()));
        record_trace_id(&span);
        Box::pin(context.scope(async move { inner.call(request).await }.instrument(span)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units_are_parsed() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("100u"), Some(Duration::from_micros(100)));
    }

    #[test]
    fn malformed_grpc_timeouts_are_ignored() {
        for bad in ["", "S", "5", "5x", "-5S", "123456789S", "abcS"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn headers_round_trip_through_a_context() {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID, "req-1".parse().expect("valid header"));
        headers.insert(VERSION, "v2".parse().expect("valid header"));
        headers.insert(GRPC_TIMEOUT, "3S".parse().expect("valid header"));
        let cx = CallContext::from_headers(&headers);
        assert_eq!(cx.request_id, "req-1");
        assert_eq!(cx.version.as_deref(), Some("v2"));
        assert!(cx.remaining().is_some_and(|r| r <= Duration::from_secs(3)));

        assert_eq!(cx.headers(), vec![(REQUEST_ID, "req-1"), (VERSION, "v2")]);
    }

    #[test]
    fn a_missing_request_id_is_generated_and_oversized_headers_dropped() {
        let mut headers = HeaderMap::new();
        headers.insert(VERSION, "x".repeat(300).parse().expect("valid header"));
        let cx = CallContext::from_headers(&headers);
        assert!(uuid::Uuid::parse_str(&cx.request_id).is_ok());
        assert_eq!(cx.version, None);
    }
}
