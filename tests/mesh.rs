//! The mesh's traffic policy without a mesh: the payment canary routed by `x-version`, as the
//! VirtualService does, and the in-process call policy keeping numbers in step with istio/.

mod common;

use std::time::Duration;

use common::{
    TestEnv, http_get,
    saga::{order, stock, watch_to_end},
};
use ordermesh::{
    config::ServiceName,
    proto::{
        inventory::inventory_service_client::InventoryServiceClient,
        order::{OrderStatus, order_service_client::OrderServiceClient},
        payment::{GetPaymentRequest, payment_service_client::PaymentServiceClient},
    },
    resilience,
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
        let mut request = tonic::Request::new(order(&[("LAPTOP", 1, 129_900)], "tok_visa"));
        if let Some(version) = header {
            request
                .metadata_mut()
                .insert("x-version", version.parse().expect("header"));
        }
        let created = orders
            .create_order(request)
            .await
            .expect("create")
            .into_inner()
            .order
            .expect("order");
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
                l.starts_with("payment_charges_total{")
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
/// concurrency limit and ejection rule as istio/base.
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
        expect(format!(
            "consecutive5xxErrors: {}",
            resilience::CONSECUTIVE_ERRORS
        ));
        expect(format!(
            "baseEjectionTime: {}s",
            resilience::EJECTION_TIME.as_secs()
        ));
        expect("retryOn: connect-failure,refused-stream,unavailable,resource-exhausted".into());
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
