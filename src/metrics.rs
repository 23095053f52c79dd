//! Prometheus metrics shared by every service, served on the admin port's `/metrics`.
//! Labels are bounded: RPC labels come only from the contracts' own method names, never from
//! what a client put in a path, and no metric carries an order or customer id.

use std::{
    collections::HashSet,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, TextEncoder,
    register_histogram_vec, register_int_counter_vec, register_int_gauge_vec,
};
use prost::Message;

/// Latency buckets for RPCs and saga steps, 1 ms to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Declares a metric registered in the default registry on first use:
/// `metric!(NAME: Type = register_...!(...));`. Shared by every crate of the mesh.
#[macro_export]
macro_rules! metric {
    ($name:ident: $ty:ty = $init:expr) => {
        pub static $name: ::std::sync::LazyLock<$ty> = ::std::sync::LazyLock::new(|| {
            #[allow(clippy::expect_used)]
            $init.expect(concat!("metric ", stringify!($name), " registers once"))
        });
    };
}

metric!(RPC_REQUESTS: IntCounterVec = register_int_counter_vec!(
    Opts::new("ordermesh_grpc_server_requests_total", "gRPC requests handled, by service, method and status code."),
    &["grpc_service", "grpc_method", "grpc_code"]
));
metric!(RPC_DURATION: HistogramVec = register_histogram_vec!(
    HistogramOpts::new("ordermesh_grpc_server_request_duration_seconds", "Time to the response headers of gRPC requests.")
        .buckets(LATENCY_BUCKETS.to_vec()),
    &["grpc_service", "grpc_method"]
));
// No `service` label on the process-wide metrics: the scrape configuration attaches it as a
// target label (see prometheus/prometheus.yml and the k8s scrape annotations), and a metric
// label of the same name would be renamed to `exported_service` on ingestion.
metric!(BUILD_INFO: IntGaugeVec = register_int_gauge_vec!(
    Opts::new("ordermesh_build_info", "Always 1; the label says which version runs."),
    &["version"]
));
metric!(IDEMPOTENT_REPLAYS: prometheus::IntCounter = prometheus::register_int_counter!(
    "ordermesh_idempotent_replays_total",
    "Mutating calls answered from a stored response because their idempotency key was seen before."
));
metric!(CACHE_ERRORS: IntCounterVec = register_int_counter_vec!(
    Opts::new("ordermesh_cache_errors_total", "Redis cache calls that failed or timed out (served from PostgreSQL instead)."),
    &["operation"]
));
metric!(READY: prometheus::IntGauge = prometheus::register_int_gauge!(
    "ordermesh_ready", "1 while the service reports SERVING, else 0."
));
metric!(CLIENT_EVENTS: IntCounterVec = register_int_counter_vec!(
    Opts::new("ordermesh_client_policy_events_total", "In-process call policy (ORDERMESH_MESH=local) by upstream and event: retry, concurrency (refused at the in-flight limit), budget_exhausted (a retry the budget refused)."),
    &["callee", "event"]
));
metric!(CLIENT_LIMITED: prometheus::IntCounter = prometheus::register_int_counter!(
    "ordermesh_server_client_limited_total",
    "Calls refused with RESOURCE_EXHAUSTED because their client had ORDERMESH_SERVER__MAX_IN_FLIGHT_PER_CLIENT calls in flight."
));
metric!(CONSUMER_PENDING: IntGaugeVec = register_int_gauge_vec!(
    Opts::new("ordermesh_jetstream_consumer_pending", "Messages in the stream not yet delivered to this durable consumer: its lag."),
    &["consumer"]
));
metric!(CONSUMER_ACK_PENDING: IntGaugeVec = register_int_gauge_vec!(
    Opts::new("ordermesh_jetstream_consumer_ack_pending", "Messages delivered to this consumer and not yet acknowledged."),
    &["consumer"]
));
metric!(CONSUMER_REDELIVERIES: IntCounterVec = register_int_counter_vec!(
    Opts::new("ordermesh_jetstream_redeliveries_total", "Messages this instance received for at least the second time (a worker died, timed out or asked for a retry)."),
    &["consumer"]
));
metric!(CONSUMER_MESSAGES: IntCounterVec = register_int_counter_vec!(
    Opts::new("ordermesh_jetstream_messages_total", "Messages this instance received from a durable consumer."),
    &["consumer"]
));

/// Runs `sample` every `period` until `shutdown`, for gauges that need a query (database rows,
/// JetStream state) and so cannot be read at scrape time. A failed sample keeps the last values
/// and is logged at debug level: the dependency's own errors are reported elsewhere.
pub async fn sample_every<F, Fut>(
    what: &'static str,
    period: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
    mut sample: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if let Err(error) = sample().await {
            tracing::debug!(what, error = format!("{error:#}"), "metrics sample failed");
        }
    }
}

/// Sets a gauge family from `(labels, value)` rows and removes label sets that are no longer
/// present, so a row that disappears (a sold-out SKU leaving the top list, a drained saga state)
/// does not keep reporting its last value.
pub fn replace_gauges(
    gauge: &IntGaugeVec,
    previous: &mut HashSet<Vec<String>>,
    rows: impl IntoIterator<Item = (Vec<String>, i64)>,
) {
    let mut seen = HashSet::new();
    for (labels, value) in rows {
        let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
        gauge.with_label_values(&refs).set(value);
        seen.insert(labels);
    }
    for gone in previous.difference(&seen) {
        let refs: Vec<&str> = gone.iter().map(String::as_str).collect();
        let _ = gauge.remove_label_values(&refs);
    }
    *previous = seen;
}

/// Prometheus text exposition of every registered metric.
pub fn render() -> String {
    let mut buffer = Vec::new();
    // Encoding into a Vec cannot fail for well-formed metrics.
    let _ = TextEncoder::new().encode(&prometheus::gather(), &mut buffer);
    String::from_utf8(buffer).unwrap_or_default()
}

/// `/package.Service/Method` paths that exist in the given descriptor sets. Used to keep metric
/// labels bounded: anything else is counted as `unknown`.
pub fn known_methods(descriptor_sets: &[&[u8]]) -> HashSet<String> {
    let mut known = HashSet::new();
    for bytes in descriptor_sets {
        let Ok(set) = prost_types::FileDescriptorSet::decode(*bytes) else {
            continue;
        };
        for file in set.file {
            for service in &file.service {
                for method in &service.method {
                    known.insert(format!(
                        "/{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
    }
    known
}

/// Creates the OK-count and latency series of every method of `services` at zero, so the first
/// calls after a start show up in `rate()` (Prometheus cannot tell how a series that appears
/// with a value got there) and dashboards show idle methods as 0 rather than "no data".
pub fn init_rpc_series(known: &HashSet<String>, services: &[&str]) {
    for path in known {
        let (service, method) = labels(known, path);
        if services.contains(&service.as_str()) {
            RPC_REQUESTS.with_label_values(&[&service, &method, "Ok"]);
            RPC_DURATION.with_label_values(&[&service, &method]);
        }
    }
}

/// Server middleware recording RED metrics per RPC.
#[derive(Debug, Clone)]
pub struct RpcMetricsLayer {
    known: Arc<HashSet<String>>,
}

impl RpcMetricsLayer {
    pub fn new(known: HashSet<String>) -> RpcMetricsLayer {
        RpcMetricsLayer {
            known: Arc::new(known),
        }
    }
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics {
            inner,
            known: self.known.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    known: Arc<HashSet<String>>,
}

impl<S, B, R> tower::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
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
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (service, method) = labels(&self.known, request.uri().path());
        let started = Instant::now();
        Box::pin(async move {
            let response = inner.call(request).await?;
            // A unary error comes "trailers-only", so its status is in the headers; a success
            // puts it in the trailers, after the body: no grpc-status header means OK here.
            let code = response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .map_or(tonic::Code::Ok, tonic::Code::from);
            RPC_REQUESTS
                .with_label_values(&[&service, &method, &format!("{code:?}")])
                .inc();
            RPC_DURATION
                .with_label_values(&[&service, &method])
                .observe(started.elapsed().as_secs_f64());
            Ok(response)
        })
    }
}

fn labels(known: &HashSet<String>, path: &str) -> (String, String) {
    if known.contains(path)
        && let Some((service, method)) = path.trim_start_matches('/').split_once('/')
    {
        return (service.to_string(), method.to_string());
    }
    ("unknown".into(), "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_contract_methods_become_labels() {
        let known = known_methods(&[crate::proto::FILE_DESCRIPTOR_SET]);
        assert_eq!(
            labels(&known, "/ordermesh.inventory.v1.InventoryService/Reserve"),
            (
                "ordermesh.inventory.v1.InventoryService".into(),
                "Reserve".into()
            )
        );
        assert_eq!(
            labels(&known, "/ordermesh.inventory.v1.InventoryService/x-9f2c"),
            ("unknown".into(), "unknown".into())
        );
    }
}
