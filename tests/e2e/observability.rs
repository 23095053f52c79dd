//! Observability as operators meet it: the alert rules under promtool's unit tests, dashboards
//! that import anywhere and whose queries parse, every metric they use really exported by the
//! running services (and never an order or customer id as a label), a real Prometheus scraping
//! a running mesh and answering the overview's main queries, and one trace per order across all
//! five services and the JetStream hops, caught by an OTLP receiver inside this test.

use crate::common;

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{
    TestEnv, free_port, http_get,
    saga::{FORWARD_STEPS, place, place_with, stock, watch_to_end},
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use ordermesh::{
    config::ServiceName,
    proto::{
        inventory::inventory_service_client::InventoryServiceClient,
        order::{OrderStatus, order_service_client::OrderServiceClient},
    },
};
use ordermesh_cli::prometheus;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn promtool(args: &[&str]) -> String {
    let program = std::env::var("ORDERMESH_PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let output = Command::new(&program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program} (scripts/infra.sh installs it): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn alert_rules_are_valid_and_their_unit_tests_pass() {
    let rules = repo("prometheus/alerts.yml");
    let checked = promtool(&["check", "rules", rules.to_str().expect("utf-8 path")]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tests = repo("prometheus/alerts.test.yml");
    let tested = promtool(&["test", "rules", tests.to_str().expect("utf-8 path")]);
    assert!(tested.contains("SUCCESS"), "{tested}");

    // Every alert the issue asks for exists, has a unit test, severity, summary and runbook.
    let text = std::fs::read_to_string(&rules).expect("rules");
    let test_text = std::fs::read_to_string(&tests).expect("rule tests");
    let runbook = std::fs::read_to_string(repo("grafana/RUNBOOK.md")).expect("runbook");
    for alert in [
        "HighOrderFailureRate",
        "SagaProcessingDelayed",
        "SagasStuck",
        "InventoryReservationFailures",
        "PaymentServiceDown",
        "CanaryErrorRateHigherThanStable",
        "OutboxBacklogGrowing",
        "DeadLettersPresent",
    ] {
        assert!(
            text.contains(&format!("alert: {alert}\n")),
            "{alert} missing"
        );
        assert!(
            test_text.contains(&format!("alertname: {alert}\n")),
            "{alert} has no unit test"
        );
        assert!(
            runbook.contains(&format!("## {alert}\n")),
            "{alert} has no runbook section"
        );
        assert!(
            text.contains(&format!("RUNBOOK.md#{}\n", alert.to_lowercase())),
            "{alert} does not link its runbook section"
        );
    }
}

/// Every PromQL expression of a dashboard, with Grafana's variables replaced by values Prometheus
/// accepts, keyed by panel title.
fn dashboard_queries(name: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo(&format!("grafana/dashboards/{name}.json")))
        .expect("dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("expr");
            let expr = expr
                .replace("$__rate_interval", "1m")
                .replace("$__range", "5m")
                .replace("$service", "order");
            out.push((panel["title"].as_str().expect("title").to_string(), expr));
        }
    }
    out
}

/// Every expression of the alert rules.
fn rule_queries() -> Vec<String> {
    let text = std::fs::read_to_string(repo("prometheus/alerts.yml")).expect("rules");
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if let Some(expr) = trimmed.strip_prefix("expr:") {
            let expr = expr.trim();
            if expr == "|" {
                current = Some(String::new());
            } else {
                out.push(expr.to_string());
            }
        } else if let Some(buffer) = current.as_mut() {
            if line.starts_with("          ") {
                buffer.push_str(trimmed);
                buffer.push('\n');
            } else {
                out.push(std::mem::take(buffer));
                current = None;
            }
        }
    }
    out
}

/// Metric names an expression reads: identifiers outside label matchers and `by (...)` lists
/// that are not PromQL functions or keywords. Histogram series map to their family name.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const PROMQL: &[&str] = &[
        "sum",
        "max",
        "min",
        "avg",
        "count",
        "rate",
        "increase",
        "deriv",
        "histogram_quantile",
        "absent",
        "bottomk",
        "topk",
        "by",
        "without",
        "and",
        "or",
        "unless",
        "on",
        "ignoring",
    ];
    let mut text = String::new();
    let mut depth = 0;
    for c in expr.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ if depth == 0 => text.push(c),
            _ => {}
        }
    }
    // Drop `by (labels)` lists.
    let mut cleaned = String::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("by (") {
        cleaned.push_str(&rest[..at]);
        rest = rest[at..].split_once(')').map_or("", |(_, after)| after);
    }
    cleaned.push_str(rest);
    let mut names = BTreeSet::new();
    let mut token = String::new();
    for c in cleaned.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            token.push(c);
            continue;
        }
        let word = std::mem::take(&mut token);
        if word.is_empty()
            || word.starts_with(|c: char| c.is_ascii_digit())
            || PROMQL.contains(&word.as_str())
        {
            continue;
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| word.strip_suffix(suffix))
            .unwrap_or(&word);
        names.insert(family.to_string());
    }
    names
}

#[test]
fn metric_names_are_read_from_expressions() {
    assert_eq!(
        metric_names(
            "histogram_quantile(0.99, sum by (le, grpc_method) (rate(ordermesh_grpc_server_request_duration_seconds_bucket{service=\"order\"}[1m])))"
        ),
        BTreeSet::from(["ordermesh_grpc_server_request_duration_seconds".to_string()])
    );
    assert_eq!(
        metric_names(
            "absent(ordermesh_ready{service=\"payment\"} == 1) or max(ordermesh_dead_letters_pending) > 0"
        ),
        BTreeSet::from([
            "ordermesh_dead_letters_pending".to_string(),
            "ordermesh_ready".to_string()
        ])
    );
}

#[test]
fn dashboards_pick_their_datasource_by_variable_and_their_queries_parse() {
    let mut rules = String::from("groups:\n  - name: dashboards\n    rules:\n");
    for name in ["overview", "service"] {
        let text = std::fs::read_to_string(repo(&format!("grafana/dashboards/{name}.json")))
            .expect("dashboard");
        let dashboard: Value = serde_json::from_str(&text).expect("JSON");
        let variables = dashboard["templating"]["list"].as_array().expect("vars");
        assert!(
            variables
                .iter()
                .any(|v| v["name"] == "datasource" && v["type"] == "datasource"),
            "{name}: no datasource variable"
        );
        // No hard-coded datasource: every `datasource` object points at the variable.
        let mut stack = vec![&dashboard];
        while let Some(value) = stack.pop() {
            match value {
                Value::Object(map) => {
                    if let Some(ds) = map.get("datasource") {
                        assert_eq!(ds["uid"], "${datasource}", "{name}: {ds}");
                    }
                    stack.extend(map.values());
                }
                Value::Array(items) => stack.extend(items),
                _ => {}
            }
        }
        for (i, (title, expr)) in dashboard_queries(name).into_iter().enumerate() {
            rules.push_str(&format!(
                "      - record: dashboard:{name}:{i}\n        expr: {}\n        labels: {{panel: {:?}}}\n",
                serde_json::to_string(&expr).expect("quote"),
                title
            ));
        }
    }
    let dir = std::env::temp_dir().join(format!("ordermesh-dash-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("dashboards.rules.yml");
    std::fs::write(&file, &rules).expect("write rules");
    let out = promtool(&["check", "rules", file.to_str().expect("utf-8")]);
    assert!(out.contains("SUCCESS"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The overview panels that must show data once a few orders went through.
const MAIN_PANELS: &[&str] = &[
    "Orders per second",
    "Success ratio",
    "End-to-end latency",
    "RPC latency p99",
    "Sagas in flight by state",
    "Outbox lag",
    "JetStream throughput",
    "JetStream consumer lag",
    "Inventory levels",
    "Payment outcomes by version",
    "Instances serving",
    "Database pool use",
];

async fn query(prometheus: &str, expr: &str) -> Option<Vec<Value>> {
    let url = format!("http://{prometheus}/api/v1/query");
    let expr = expr.to_string();
    tokio::task::spawn_blocking(move || {
        let mut response = ureq::get(&url).query("query", &expr).call().ok()?;
        let body: Value = serde_json::from_str(&response.body_mut().read_to_string().ok()?).ok()?;
        body["data"]["result"].as_array().cloned()
    })
    .await
    .ok()
    .flatten()
}

/// True when the instant vector has at least one sample that is a number (not NaN).
fn has_number(result: &[Value]) -> bool {
    result.iter().any(|sample| {
        sample["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|v| !v.is_nan())
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn every_metric_in_dashboards_and_rules_is_exported_and_prometheus_sees_the_orders() {
    let env = TestEnv::new();
    let mesh = env.start_mesh().await;

    // A real Prometheus over the mesh, with the same configuration `ordermesh up` writes.
    let targets: Vec<(ServiceName, String)> = ServiceName::ALL
        .iter()
        .map(|s| (*s, mesh.get(*s).admin_addr.to_string()))
        .collect();
    let config = prometheus::config(&targets, &[repo(prometheus::RULES)], "1s");
    let listen = format!("127.0.0.1:{}", free_port().await);
    let dir = std::env::temp_dir().join(format!("ordermesh-prom-{}", uuid::Uuid::now_v7()));
    let _prometheus = prometheus::spawn(&dir, &listen, &config, true).expect("start prometheus");
    // Scraping before the orders, so rates see the counters move.
    let mut scraping = false;
    for _ in 0..120 {
        if let Some(r) = query(&listen, "count(up == 1)").await
            && r.first().and_then(|s| s["value"][1].as_str()) == Some("5")
        {
            scraping = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        scraping,
        "Prometheus on {listen} never scraped all five services"
    );

    let mut orders = OrderServiceClient::new(mesh.get(ServiceName::Order).channel().await);
    let mut inventory =
        InventoryServiceClient::new(mesh.get(ServiceName::Inventory).channel().await);
    stock(&mut inventory, "LAPTOP", 50).await;
    stock(&mut inventory, "RARE", 1).await;
    let mut placed = Vec::new();
    for (lines, token) in [
        (vec![("LAPTOP", 1, 129_900)], "tok_visa"),
        (vec![("LAPTOP", 2, 129_900)], "tok_visa"),
        (vec![("LAPTOP", 1, 129_900)], "declined_token"),
        (vec![("RARE", 5, 1_000)], "tok_visa"),
    ] {
        let created = place(&mut orders, &lines, token).await;
        let (_, done) = watch_to_end(&mut orders, &created.order_id, WAIT).await;
        placed.push((created.order_id, done.status()));
    }
    assert_eq!(
        placed.iter().map(|(_, s)| *s).collect::<Vec<_>>(),
        [
            OrderStatus::Confirmed,
            OrderStatus::Confirmed,
            OrderStatus::Cancelled,
            OrderStatus::Cancelled
        ]
    );

    // Every name the dashboards and rules read is on some service's /metrics.
    let mut wanted = BTreeSet::new();
    for name in ["overview", "service"] {
        for (_, expr) in dashboard_queries(name) {
            wanted.extend(metric_names(&expr));
        }
    }
    for expr in rule_queries() {
        wanted.extend(metric_names(&expr));
    }
    assert!(wanted.len() > 25, "parsed too few names: {wanted:?}");
    let mut missing = wanted.clone();
    let mut scraped = HashMap::new();
    for _ in 0..100 {
        for s in ServiceName::ALL {
            let (status, body) = http_get(mesh.get(s).admin_addr, "/metrics")
                .await
                .expect("scrape /metrics");
            assert_eq!(status, 200);
            missing.retain(|name| !body.contains(&format!("# TYPE {name} ")));
            scraped.insert(s, body);
        }
        if missing.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        missing.is_empty(),
        "used in dashboards or rules but exported by no service: {missing:?}"
    );

    // One naming scheme (Prometheus conventions): one application prefix, counters end in
    // `_total`, and a histogram names its unit.
    for (service, body) in &scraped {
        for line in body.lines().filter(|l| l.starts_with("# TYPE ")) {
            let mut parts = line.split_whitespace().skip(2);
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            assert!(
                name.starts_with("ordermesh_"),
                "{service} exports {name} outside the ordermesh_ namespace"
            );
            match kind {
                "counter" => assert!(name.ends_with("_total"), "{service}: counter {name}"),
                "histogram" => assert!(
                    name.ends_with("_seconds") || name.ends_with("_entries"),
                    "{service}: histogram {name} names no unit"
                ),
                _ => {}
            }
        }
    }

    // No order or customer id ever becomes a label value.
    for (service, body) in &scraped {
        for (order_id, _) in &placed {
            assert!(
                !body.contains(order_id.as_str()),
                "{service} exports {order_id}"
            );
        }
        assert!(
            !body.contains("cust-saga"),
            "{service} exports a customer id"
        );
        let uuid_like = body
            .split(['"', ',', '{', '}', '='])
            .any(|token| token.len() == 36 && uuid::Uuid::parse_str(token).is_ok());
        assert!(!uuid_like, "{service} exports a UUID as a label value");
    }

    // Prometheus answers the overview's main queries with numbers.
    let overview = dashboard_queries("overview");
    let mut unanswered = Vec::new();
    for _ in 0..60 {
        unanswered.clear();
        for (title, expr) in overview
            .iter()
            .filter(|(t, _)| MAIN_PANELS.contains(&t.as_str()))
        {
            if !query(&listen, expr).await.is_some_and(|r| has_number(&r)) {
                unanswered.push(format!("{title}: {expr}"));
            }
        }
        if unanswered.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        unanswered.is_empty(),
        "Prometheus has no data for: {unanswered:#?}"
    );
    // The rules loaded and evaluate without errors.
    let rules = query(&listen, "ALERTS").await;
    assert!(rules.is_some(), "rules API answered");
    let _ = std::fs::remove_dir_all(&dir);
}

/// An OTLP/gRPC trace receiver: keeps every export request.
#[derive(Clone, Default)]
struct Receiver {
    requests: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        if let Ok(mut requests) = self.requests.lock() {
            requests.push(request.into_inner());
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// A received span: the exporting service, span name, trace id (hex) and string attributes.
struct Span {
    service: String,
    name: String,
    trace_id: String,
    attributes: HashMap<String, String>,
}

fn spans(receiver: &Receiver) -> Vec<Span> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    let requests = receiver.requests.lock().expect("lock");
    let mut out = Vec::new();
    for request in requests.iter() {
        for resource in &request.resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    Any::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in &resource.scope_spans {
                for span in &scope.spans {
                    let attributes = span
                        .attributes
                        .iter()
                        .filter_map(|kv| {
                            let value = match kv.value.as_ref()?.value.as_ref()? {
                                Any::StringValue(s) => s.clone(),
                                Any::IntValue(i) => i.to_string(),
                                other => format!("{other:?}"),
                            };
                            Some((kv.key.clone(), value))
                        })
                        .collect();
                    out.push(Span {
                        service: service.clone(),
                        name: span.name.clone(),
                        trace_id: span.trace_id.iter().map(|b| format!("{b:02x}")).collect(),
                        attributes,
                    });
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn one_order_is_one_trace_across_every_service_and_the_jetstream_hops() {
    let (receiver, endpoint, server) = otlp_receiver().await;
    let env = TestEnv::new();
    let mesh = env
        .start_mesh_with(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ])
        .await;
    let mut orders = OrderServiceClient::new(mesh.get(ServiceName::Order).channel().await);
    let mut inventory =
        InventoryServiceClient::new(mesh.get(ServiceName::Inventory).channel().await);
    stock(&mut inventory, "LAPTOP", 5).await;

    // The client starts the trace, as an instrumented caller would.
    let trace_id = uuid::Uuid::now_v7().simple().to_string();
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let created = place_with(
        &mut orders,
        &[("LAPTOP", 1, 129_900)],
        "tok_visa",
        &[("traceparent", &traceparent)],
    )
    .await;
    let (_, done) = watch_to_end(&mut orders, &created.order_id, WAIT).await;
    assert_eq!(done.status(), OrderStatus::Confirmed);

    let expected: BTreeSet<String> = ServiceName::ALL
        .iter()
        .map(|s| format!("ordermesh-{s}"))
        .collect();
    let mut covered = BTreeSet::new();
    for _ in 0..100 {
        covered = spans(&receiver)
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .map(|s| s.service)
            .collect();
        if covered == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(covered, expected, "services seen in trace {trace_id}");

    let all = spans(&receiver);
    let ours: Vec<&Span> = all.iter().filter(|s| s.trace_id == trace_id).collect();
    // Every span of the order's processing belongs to this one trace (reads such as the
    // test's WatchOrder are requests of their own, with their own traces).
    let about_order: Vec<&Span> = all
        .iter()
        .filter(|s| s.attributes.get("order_id") == Some(&created.order_id))
        .filter(|s| !["watch_order", "get_order"].contains(&s.name.as_str()))
        .collect();
    assert!(!about_order.is_empty());
    for span in &about_order {
        assert_eq!(
            span.trace_id, trace_id,
            "{} span {} of this order is in another trace",
            span.service, span.name
        );
    }
    // Saga steps (continued from JetStream messages) carry the order and the step.
    let steps: BTreeSet<&str> = ours
        .iter()
        .filter(|s| s.name == "saga.step")
        .filter_map(|s| s.attributes.get("step").map(String::as_str))
        .collect();
    for step in FORWARD_STEPS {
        assert!(
            steps.contains(step),
            "no saga.step span for {step}: {steps:?}"
        );
    }
    // The notification was recorded in the same trace, after the JetStream hop.
    assert!(
        ours.iter()
            .any(|s| s.service == "ordermesh-notification" && s.name == "notification.record"),
        "no notification.record span in the trace"
    );

    // Log lines of the order's processing carry its trace id, on both sides of JetStream.
    for (service, message) in [
        (ServiceName::Order, "order accepted"),
        (ServiceName::Payment, "charge processed"),
        (ServiceName::Notification, "notification sent"),
    ] {
        let logs = mesh.get(service).log_text();
        let line = logs
            .lines()
            .find(|l| l.contains(&format!("\"message\":\"{message}\"")))
            .unwrap_or_else(|| panic!("{service} did not log {message:?}:\n{logs}"));
        let parsed: Value = serde_json::from_str(line).expect("JSON log line");
        assert_eq!(parsed["trace_id"], trace_id.as_str(), "{service}: {line}");
    }
    server.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_still_buffered_at_exit_are_exported_on_a_single_threaded_runtime() {
    let (receiver, endpoint, server) = otlp_receiver().await;
    let env = TestEnv::new();
    let extra = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        // Nothing leaves on the schedule within the test: only the flush at exit exports.
        ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
        ("ORDERMESH_WORKER_THREADS", "1"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    let mut inventory = env.spawn(ServiceName::Inventory, &extra).await;
    inventory.wait_serving().await;
    stock(
        &mut InventoryServiceClient::new(inventory.channel().await),
        "KEYBOARD",
        1,
    )
    .await;
    let upserted = |spans: Vec<Span>| {
        spans
            .iter()
            .any(|s| s.service == "ordermesh-inventory" && s.name == "upsert_item")
    };
    assert!(!upserted(spans(&receiver)), "exported before the exit");

    // The flush waits for the exporter's connection, a task on the runtime that a
    // single-threaded runtime must go on driving meanwhile.
    inventory.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(
        inventory.wait_exit(Duration::from_secs(20)).await,
        Some(0),
        "graceful exit"
    );
    assert!(
        upserted(spans(&receiver)),
        "the buffered span was lost at exit"
    );
    server.abort();
}

/// An OTLP trace receiver on a free port: what it got, its endpoint and its server task.
async fn otlp_receiver() -> (
    Receiver,
    String,
    tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
) {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind receiver");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (receiver, endpoint, server)
}
