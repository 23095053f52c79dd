//! Secrets and personal data stay out of logs: a full saga run with a recognisable payment
//! token, database password and street address, then every line every service logged is searched
//! for them.

mod common;

use std::time::Duration;

use common::{
    TestEnv,
    saga::{order, stock, watch_to_end},
};
use ordermesh::{
    config::ServiceName,
    proto::{
        inventory::inventory_service_client::InventoryServiceClient,
        order::{OrderStatus, order_service_client::OrderServiceClient},
    },
};

const TOKEN: &str = "tok_live_9f3kZ2sECRETxQ71";
const PASSWORD: &str = "pw-Zq81-never-log-me";
const STREET: &str = "742 Evergreen Terrace";

#[tokio::test(flavor = "multi_thread")]
async fn no_payment_token_password_or_address_appears_in_any_log() {
    let env = TestEnv::new();
    // Trust authentication ignores the password, so the services run normally with it in
    // their configuration (where a careless Debug or error message would print it).
    let url = format!("postgres://postgres:{PASSWORD}@127.0.0.1:5432");
    let mesh = env
        .start_mesh_with(&[
            ("ORDERMESH_DATABASE__URL", url.as_str()),
            // The most talkative setting an operator would use in production.
            (
                "ORDERMESH_LOG__FILTER",
                "debug,h2=info,hyper=info,tower=info",
            ),
        ])
        .await;
    let mut orders = OrderServiceClient::new(mesh.get(ServiceName::Order).channel().await);
    let mut inventory =
        InventoryServiceClient::new(mesh.get(ServiceName::Inventory).channel().await);
    stock(&mut inventory, "LAPTOP", 5).await;

    let mut confirmed = order(&[("LAPTOP", 1, 129_900)], TOKEN);
    if let Some(address) = confirmed.shipping_address.as_mut() {
        address.line1 = STREET.into();
    }
    // A declined one too: failure paths log more.
    let mut declined = confirmed.clone();
    declined.payment_token = "declined_token".into();
    // And one rejected at validation, with the secrets in the invalid request.
    let mut invalid = confirmed.clone();
    invalid.lines[0].quantity = -1;

    for (request, expected) in [
        (confirmed, Some(OrderStatus::Confirmed)),
        (declined, Some(OrderStatus::Cancelled)),
        (invalid, None),
    ] {
        match orders.create_order(request).await {
            Ok(created) => {
                let id = created.into_inner().order.expect("order").order_id;
                let (_, done) = watch_to_end(&mut orders, &id, Duration::from_secs(60)).await;
                assert_eq!(Some(done.status()), expected);
            }
            Err(status) => {
                assert!(expected.is_none(), "unexpected error {status}");
                assert_eq!(status.code(), tonic::Code::InvalidArgument);
                for secret in [TOKEN, STREET] {
                    assert!(!status.message().contains(secret), "error echoes {secret}");
                }
            }
        }
    }
    // Let the notification consumer log its part.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut lines = 0;
    for service in ServiceName::ALL {
        let logs = mesh.get(service).log_text();
        lines += logs.lines().count();
        for secret in [TOKEN, PASSWORD, STREET] {
            if let Some(line) = logs.lines().find(|l| l.contains(secret)) {
                panic!("{service} logged {secret:?}: {line}");
            }
        }
    }
    assert!(
        lines > 50,
        "the services logged almost nothing ({lines} lines)"
    );
}
