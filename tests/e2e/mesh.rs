//! The mesh's traffic policy without a mesh: the payment canary routed by `x-version`, as the
//! VirtualService does, and the in-process call policy keeping numbers in step with istio/.

use crate::common;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use common::{
    ServiceProcess, TestEnv, binary, http_get, reserve_port,
    saga::{order, place_with, stock, watch_to_end},
};
use nix::sys::signal::Signal;
use ordermesh::{
    client,
    config::{ClientSettings, MeshMode, ServiceName},
    proto::{
        inventory::inventory_service_client::InventoryServiceClient,
        order::{GetOrderRequest, OrderStatus, order_service_client::OrderServiceClient},
        payment::{GetPaymentRequest, payment_service_client::PaymentServiceClient},
    },
    resilience::{self, Policy},
};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn orders_sent_with_x_version_v2_are_paid_by_the_canary_and_others_by_v1() {
    let env = TestEnv::new();
    let canary = env
        .spawn(
            ServiceName::Payment,
            &[("ORDERMESH_PAYMENT__VERSION".into(), "v2".into())],
        )
        .await;
    canary.wait_serving().await;
    let canary_url = canary.url();
    let mesh = env
        .start_mesh_with(&[("ORDERMESH_ENDPOINTS__PAYMENT_CANARY", canary_url.as_str())])
        .await;
    let mut orders = OrderServiceClient::new(mesh.get(ServiceName::Order).channel().await);
    let mut inventory =
        InventoryServiceClient::new(mesh.get(ServiceName::Inventory).channel().await);
    let mut payments = PaymentServiceClient::new(mesh.get(ServiceName::Payment).channel().await);
    stock(&mut inventory, "LAPTOP", 20).await;

    let mut paid_by = Vec::new();
    for header in [None, Some("v2"), None, Some("v2"), Some("v1")] {
        let metadata: Vec<(&'static str, &str)> =
            header.map(|v| ("x-version", v)).into_iter().collect();
        let created = place_with(
            &mut orders,
            &[("LAPTOP", 1, 129_900)],
            "tok_visa",
            &metadata,
        )
        .await;
        let (_, done) = watch_to_end(&mut orders, &created.order_id, WAIT).await;
        assert_eq!(done.status(), OrderStatus::Confirmed);
        let payment = payments
            .get_payment(GetPaymentRequest {
                order_id: created.order_id.clone(),
            })
            .await
            .expect("payment")
            .into_inner()
            .payment
            .expect("payment");
        paid_by.push(payment.processor_version);
    }
    assert_eq!(paid_by, ["v1", "v2", "v1", "v2", "v1"]);

    // And in the metrics: each process counts its own charges under its version.
    let count = |body: &str, version: &str| -> f64 {
        body.lines()
            .find(|l| {
                l.starts_with("ordermesh_payment_charges_total{")
                    && l.contains(&format!("version=\"{version}\""))
                    && l.contains("outcome=\"captured\"")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let (_, stable) = http_get(mesh.get(ServiceName::Payment).admin_addr, "/metrics")
        .await
        .expect("stable metrics");
    let (_, v2) = http_get(canary.admin_addr, "/metrics")
        .await
        .expect("canary metrics");
    assert_eq!(count(&stable, "v1"), 3.0);
    assert_eq!(count(&v2, "v2"), 2.0);
    assert_eq!(count(&stable, "v2"), 0.0);
}

/// The in-process policy must be the one the sidecars get: same attempts, per-try timeout,
/// retry conditions and concurrency limit as istio/base.
#[test]
fn the_in_process_policy_uses_the_numbers_istio_declares() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for callee in ["inventory", "payment", "shipping"] {
        let text = std::fs::read_to_string(root.join(format!("istio/base/{callee}.yaml")))
            .expect("istio manifest");
        let expect = |needle: String| {
            assert!(
                text.contains(&needle),
                "istio/base/{callee}.yaml lacks {needle:?}"
            );
        };
        expect(format!("attempts: {}", resilience::ATTEMPTS));
        expect(format!(
            "perTryTimeout: {}s",
            resilience::PER_TRY_TIMEOUT.as_secs()
        ));
        expect(format!("http2MaxRequests: {}", resilience::MAX_CONCURRENT));
        expect(
            "retryOn: connect-failure,refused-stream,reset,unavailable,resource-exhausted".into(),
        );
    }
    // The codes retried in-process are exactly the gRPC ones in retryOn.
    let retried: Vec<tonic::Code> = (0..17)
        .map(tonic::Code::from)
        .filter(|c| resilience::is_retryable(*c))
        .collect();
    assert_eq!(
        retried,
        [tonic::Code::ResourceExhausted, tonic::Code::Unavailable]
    );
}

/// Callees first, as a rollout of a real cluster has no order either but this makes the start
/// deterministic.
const START_ORDER: [ServiceName; 5] = [
    ServiceName::Inventory,
    ServiceName::Payment,
    ServiceName::Shipping,
    ServiceName::Notification,
    ServiceName::Order,
];

#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_restart_of_every_instance_loses_no_call_and_no_order() {
    let env = TestEnv::new();
    // Two instances per service on fixed ports, so replacements can take their ports over.
    let mut addrs: HashMap<ServiceName, Vec<(String, String)>> = HashMap::new();
    let mut reserved = Vec::new();
    for s in ServiceName::ALL {
        for _ in 0..2 {
            let (grpc, admin) = (reserve_port(), reserve_port());
            addrs.entry(s).or_default().push((
                format!("127.0.0.1:{}", grpc.port),
                format!("127.0.0.1:{}", admin.port),
            ));
            reserved.extend([grpc, admin]);
        }
    }
    let mut shared: Vec<(String, String)> = ServiceName::ALL
        .iter()
        .map(|s| {
            let urls: Vec<String> = addrs[s]
                .iter()
                .map(|(g, _)| format!("http://{g}"))
                .collect();
            (
                format!("ORDERMESH_ENDPOINTS__{}", s.as_str().to_uppercase()),
                urls.join(","),
            )
        })
        .collect();
    // As in Kubernetes: keep serving (NOT_SERVING) for a moment after SIGTERM.
    shared.push(("ORDERMESH_SHUTDOWN__DELAY".into(), "1s".into()));
    let spawn = |s: ServiceName, i: usize| {
        let mut extra = shared.clone();
        extra.push(("ORDERMESH_GRPC_ADDR".into(), addrs[&s][i].0.clone()));
        extra.push(("ORDERMESH_ADMIN_ADDR".into(), addrs[&s][i].1.clone()));
        let env = &env;
        async move {
            let process = env.spawn(s, &extra).await;
            process.wait_serving().await;
            process
        }
    };
    let mut running: Vec<(ServiceName, usize, ServiceProcess)> = Vec::new();
    for s in START_ORDER {
        for i in 0..2 {
            running.push((s, i, spawn(s, i).await));
        }
    }

    // A client as users have one: both order instances, the mesh's retry policy, request ids.
    let urls_of = |s: ServiceName| {
        let key = format!("ORDERMESH_ENDPOINTS__{}", s.as_str().to_uppercase());
        shared
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
            .expect("endpoint")
    };
    let order_urls = urls_of(ServiceName::Order);
    let settings = ClientSettings {
        timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(1),
    };
    let orders = OrderServiceClient::new(client::channel(&order_urls, &settings).expect("channel"));
    let policy = Policy::new("order-api", MeshMode::Local);
    let inventory_urls = urls_of(ServiceName::Inventory);
    let mut inventory =
        InventoryServiceClient::new(client::channel(&inventory_urls, &settings).expect("channel"));
    stock(&mut inventory, "LAPTOP", 100_000).await;

    // Orders flow continuously (10/s) while every instance is replaced.
    let stop = Arc::new(AtomicBool::new(false));
    let placed = Arc::new(Mutex::new(Vec::new()));
    let failed = Arc::new(Mutex::new(Vec::new()));
    let load = tokio::spawn({
        let (stop, placed, failed, orders, policy) = (
            stop.clone(),
            placed.clone(),
            failed.clone(),
            orders.clone(),
            policy.clone(),
        );
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while !stop.load(Ordering::SeqCst) {
                tick.tick().await;
                let mut request = order(&[("LAPTOP", 1, 129_900)], "tok_visa");
                request.request_id = uuid::Uuid::now_v7().to_string();
                let result = policy
                    .run(|| {
                        let mut orders = orders.clone();
                        let request = request.clone();
                        async move { orders.create_order(request).await }
                    })
                    .await;
                match result {
                    Ok(r) => placed
                        .lock()
                        .expect("lock")
                        .push(r.into_inner().order.expect("order").order_id),
                    Err(status) => failed.lock().expect("lock").push(status.to_string()),
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;

    // kubectl rollout restart, one instance at a time: start the new one, then SIGTERM the old.
    for (s, i, process) in running.iter_mut() {
        let (s, i) = (*s, *i);
        let replacement = spawn(s, i).await;
        let mut old = std::mem::replace(process, replacement);
        old.signal(Signal::SIGTERM);
        assert_eq!(
            old.wait_exit(Duration::from_secs(30)).await,
            Some(0),
            "{s} #{i} did not drain and exit cleanly"
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    load.await.expect("load task");

    let failed = failed.lock().expect("lock").clone();
    assert!(failed.is_empty(), "clients saw failed calls: {failed:#?}");
    let placed = placed.lock().expect("lock").clone();
    assert!(placed.len() >= 50, "only {} orders placed", placed.len());
    let retries = ordermesh::metrics::CLIENT_EVENTS
        .with_label_values(&["order-api", "retry"])
        .get();
    eprintln!(
        "rolling restart of 10 instances: {} orders placed, 0 failed, {retries} client retries",
        placed.len()
    );

    // Every order reaches a terminal status, and it is CONFIRMED (stock and card were fine).
    let mut open = placed.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while !open.is_empty() && tokio::time::Instant::now() < deadline {
        let mut still = Vec::new();
        for id in open {
            let status = policy
                .run(|| {
                    let mut orders = orders.clone();
                    let id = id.clone();
                    async move { orders.get_order(GetOrderRequest { order_id: id }).await }
                })
                .await
                .ok()
                .and_then(|r| r.into_inner().order)
                .map(|o| (o.status(), o.failure_reason));
            match status {
                Some((status, reason)) if status.is_terminal() => {
                    assert_eq!(status, OrderStatus::Confirmed, "order {id}: {reason}");
                }
                _ => still.push(id),
            }
        }
        open = still;
        if !open.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    assert!(
        open.is_empty(),
        "{} orders not terminal: {open:?}",
        open.len()
    );

    // And the invariants hold across services (no double charge, stock conserved, one
    // notification per order, ...) once the last notifications went out.
    let mut report = String::new();
    let mut clean = false;
    let checked = tokio::time::Instant::now();
    while checked.elapsed() < Duration::from_secs(45) {
        let output = std::process::Command::new(binary("ordermesh"))
            .args(["check", "--settle", "0s"])
            .envs(env.env())
            .envs(env.admin_endpoints())
            .output()
            .expect("run ordermesh check");
        report = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.success() {
            clean = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(clean, "{report}");
    eprintln!(
        "invariants clean {:.1}s after the last order was terminal",
        checked.elapsed().as_secs_f64()
    );
}
