//! Secrets and personal data stay out of logs: a full saga run with a recognisable payment
//! token, database password and street address, then every line every service logged is searched
//! for them. And least privilege in the databases: each service on its own role, which cannot
//! reach another service's database.

use crate::common;

use std::time::Duration;

use sqlx::Connection;

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

#[tokio::test(flavor = "multi_thread")]
async fn each_service_has_its_own_role_and_the_order_role_cannot_read_payments() {
    let env = TestEnv::new();
    let output = std::process::Command::new(common::binary("ordermesh"))
        .args(["db", "provision", "--admin-url", common::PG_URL])
        .args(["--namespace", &env.namespace])
        .output()
        .expect("run ordermesh db provision");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let urls: std::collections::HashMap<String, String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(s, u)| (s.to_string(), u.to_string()))
        .collect();
    assert_eq!(urls.len(), 5, "one URL per service: {urls:?}");

    // The whole mesh runs on its own roles.
    let mut endpoints: Vec<(String, String)> = Vec::new();
    let mut processes = Vec::new();
    for service in [
        ServiceName::Inventory,
        ServiceName::Payment,
        ServiceName::Shipping,
        ServiceName::Notification,
        ServiceName::Order,
    ] {
        let mut extra = endpoints.clone();
        extra.push((
            "ORDERMESH_DATABASE__URL".into(),
            urls[service.as_str()].clone(),
        ));
        let process = env.spawn(service, &extra).await;
        process.wait_serving().await;
        endpoints.push((
            format!("ORDERMESH_ENDPOINTS__{}", service.as_str().to_uppercase()),
            process.url(),
        ));
        processes.push(process);
    }
    let order_process = processes.last().expect("order");
    let mut orders = OrderServiceClient::new(order_process.channel().await);
    let mut inventory = InventoryServiceClient::new(processes[0].channel().await);
    stock(&mut inventory, "LAPTOP", 2).await;
    let created = orders
        .create_order(order(&[("LAPTOP", 1, 129_900)], "tok_visa"))
        .await
        .expect("create")
        .into_inner()
        .order
        .expect("order");
    let (_, done) = watch_to_end(&mut orders, &created.order_id, Duration::from_secs(60)).await;
    assert_eq!(done.status(), OrderStatus::Confirmed);

    // The order role reads its own database...
    let as_order = |database: &str| format!("{}/{}_{database}", urls["order"], env.namespace);
    let mut own = sqlx::PgConnection::connect(&as_order("order"))
        .await
        .expect("order role reaches its own database");
    let views: i64 = sqlx::query_scalar("SELECT count(*) FROM order_view")
        .fetch_one(&mut own)
        .await
        .expect("order role reads its tables");
    assert_eq!(views, 1);
    // ...and cannot even connect to payment's (CONNECT is revoked from everyone else).
    let refused = sqlx::PgConnection::connect(&as_order("payment"))
        .await
        .expect_err("order role must not reach the payment database");
    assert!(
        refused.to_string().contains("permission denied"),
        "{refused}"
    );
    // Nor is it a superuser that could grant itself access.
    let superuser: bool =
        sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            .fetch_one(&mut own)
            .await
            .expect("role attributes");
    assert!(!superuser);
    drop(own);

    // Clean up the roles (TestEnv drops the databases; roles outlive them otherwise).
    drop(processes);
    for service in ServiceName::ALL {
        let name = format!("{}_{service}", env.namespace);
        let _ = ordermesh::db::drop_database(common::PG_URL, &name).await;
        let mut admin = sqlx::PgConnection::connect(&format!("{}/postgres", common::PG_URL))
            .await
            .expect("admin");
        let _ = sqlx::raw_sql(&format!("DROP ROLE IF EXISTS {name}"))
            .execute(&mut admin)
            .await;
    }
}
