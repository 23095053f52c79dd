//! `ordermesh projections rebuild` reproduces `order_view` exactly from `order_events`.

mod common;

use std::time::Duration;

use common::{
    TestEnv, binary,
    saga::{place, stock, watch_to_end},
};
use ordermesh::{
    config::ServiceName,
    proto::{
        inventory::inventory_service_client::InventoryServiceClient,
        order::order_service_client::OrderServiceClient,
    },
};

async fn snapshot(pool: &sqlx::PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT row_to_json(v)::text FROM order_view v ORDER BY order_id")
        .fetch_all(pool)
        .await
        .expect("snapshot")
}

#[tokio::test]
async fn rebuilding_the_view_from_events_yields_the_same_rows() {
    let env = TestEnv::new();
    let mesh = env.start_mesh().await;
    let mut inventory =
        InventoryServiceClient::new(mesh.get(ServiceName::Inventory).channel().await);
    stock(&mut inventory, "MOUSE", 3).await;
    let mut orders = OrderServiceClient::new(mesh.get(ServiceName::Order).channel().await);
    for (lines, token) in [
        (vec![("MOUSE", 1, 2_500)], "tok_visa"),
        (vec![("MOUSE", 1, 2_500)], "declined_token"),
        (vec![("MOUSE", 9, 2_500)], "tok_visa"),
    ] {
        let created = place(&mut orders, &lines, token).await;
        watch_to_end(&mut orders, &created.order_id, Duration::from_secs(60)).await;
    }
    let db = env.db(ServiceName::Order).await;
    let before = snapshot(&db).await;
    assert_eq!(before.len(), 3);

    // Damage the read model; the events still hold the truth.
    sqlx::query("UPDATE order_view SET status = 'ORDER_STATUS_PENDING', version = 1")
        .execute(&db)
        .await
        .expect("damage");
    sqlx::query("DELETE FROM order_view WHERE order_id = (SELECT order_id FROM order_view ORDER BY order_id LIMIT 1)").execute(&db).await.expect("damage");

    let output = std::process::Command::new(binary("ordermesh"))
        .args(["projections", "rebuild"])
        .envs(env.env())
        .output()
        .expect("run ordermesh projections rebuild");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("3 orders"));
    assert_eq!(snapshot(&db).await, before);
}
