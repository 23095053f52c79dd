//! What an operator sees with the real `grpcurl`: reflection lists each service's API and
//! health, health answers SERVING, `describe` shows the contract's documentation, and calls work.

use crate::common;

use common::{TestEnv, grpcurl};
use ordermesh::config::ServiceName;

#[tokio::test]
async fn every_service_lists_its_api_and_health_and_answers_serving() {
    let env = TestEnv::new();
    let mesh = env.start_mesh().await;
    let expected = [
        (ServiceName::Order, "ordermesh.order.v1.OrderService"),
        (
            ServiceName::Inventory,
            "ordermesh.inventory.v1.InventoryService",
        ),
        (ServiceName::Payment, "ordermesh.payment.v1.PaymentService"),
        (
            ServiceName::Shipping,
            "ordermesh.shipping.v1.ShippingService",
        ),
        (
            ServiceName::Notification,
            "ordermesh.notification.v1.NotificationService",
        ),
    ];
    for (service, api) in expected {
        let addr = mesh.get(service).grpc_addr.to_string();
        let listed = grpcurl(&["-plaintext", &addr, "list"]).expect("grpcurl list");
        let names: Vec<&str> = listed.lines().collect();
        assert!(names.contains(&api), "{service} lists {names:?}");
        assert!(
            names.contains(&"grpc.health.v1.Health"),
            "{service} lists {names:?}"
        );
        let others = expected
            .iter()
            .filter(|(s, _)| *s != service)
            .map(|(_, a)| *a);
        for other in others {
            assert!(
                !names.contains(&other),
                "{service} must not advertise {other}"
            );
        }

        let health =
            grpcurl(&["-plaintext", &addr, "grpc.health.v1.Health/Check"]).expect("health check");
        assert!(health.contains("\"SERVING\""), "{service}: {health}");
        let per_service = format!(r#"{{"service":"{api}"}}"#);
        let health = grpcurl(&[
            "-plaintext",
            "-d",
            &per_service,
            &addr,
            "grpc.health.v1.Health/Check",
        ])
        .expect("check");
        assert!(health.contains("\"SERVING\""), "{service}/{api}: {health}");
    }
}

#[tokio::test]
async fn grpcurl_describes_documented_contracts_and_calls_inventory() {
    let env = TestEnv::new();
    let inventory = env.start(ServiceName::Inventory).await;
    let addr = inventory.grpc_addr.to_string();

    let described = grpcurl(&[
        "-plaintext",
        &addr,
        "describe",
        "ordermesh.inventory.v1.ReserveRequest",
    ])
    .expect("describe");
    assert!(
        described.contains("Idempotency key"),
        "field comments are served: {described}"
    );
    let service = grpcurl(&[
        "-plaintext",
        &addr,
        "describe",
        "ordermesh.inventory.v1.InventoryService",
    ])
    .expect("describe");
    assert!(service.contains("rpc Reserve"), "{service}");

    let set = r#"{"sku":"KEYBOARD","name":"Keyboard","available":7}"#;
    grpcurl(&[
        "-plaintext",
        "-d",
        set,
        &addr,
        "ordermesh.inventory.v1.InventoryService/UpsertItem",
    ])
    .expect("upsert");
    let got = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"sku":"KEYBOARD"}"#,
        &addr,
        "ordermesh.inventory.v1.InventoryService/GetItem",
    ])
    .expect("get");
    assert!(got.contains(r#""available": "7""#), "{got}");

    let bad = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"sku":""}"#,
        &addr,
        "ordermesh.inventory.v1.InventoryService/GetItem",
    ])
    .expect_err("empty SKU");
    assert!(
        bad.contains("InvalidArgument") && bad.contains(r#""field":"sku""#),
        "{bad}"
    );
}
