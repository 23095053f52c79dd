//! `ordermesh projections rebuild` reproduces `order_view` exactly from `order_events`, evicts the
//! cached copies it changed, and runs while the mesh keeps taking orders.

use crate::common;

use std::time::Duration;

use common::{
    TestEnv, binary, nats_url,
    saga::{place, stock, watch_to_end},
};
use ordermesh::{
    config::ServiceName,
    proto::{
        inventory::inventory_service_client::InventoryServiceClient,
        order::{GetOrderRequest, order_service_client::OrderServiceClient},
    },
};

async fn snapshot(pool: &sqlx::PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT row_to_json(v)::text FROM order_view v ORDER BY order_id")
        .fetch_all(pool)
        .await
        .expect("snapshot")
}

/// Runs the rebuild; its summary line.
fn rebuild(env: &TestEnv) -> String {
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
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn rebuilding_the_view_from_events_yields_the_same_rows_and_evicts_stale_copies() {
    let env = TestEnv::new();
    let mesh = env.start_mesh().await;
    let mut inventory =
        InventoryServiceClient::new(mesh.get(ServiceName::Inventory).channel().await);
    stock(&mut inventory, "MOUSE", 3).await;
    let mut orders = OrderServiceClient::new(mesh.get(ServiceName::Order).channel().await);
    let mut ids = Vec::new();
    for (lines, token) in [
        (vec![("MOUSE", 1, 2_500)], "tok_visa"),
        (vec![("MOUSE", 1, 2_500)], "declined_token"),
        (vec![("MOUSE", 9, 2_500)], "tok_visa"),
    ] {
        let created = place(&mut orders, &lines, token).await;
        watch_to_end(&mut orders, &created.order_id, Duration::from_secs(60)).await;
        ids.push(created.order_id);
    }
    let db = env.db(ServiceName::Order).await;
    let before = snapshot(&db).await;
    assert_eq!(before.len(), 3);

    // A damaged terminal row that Redis holds a copy of: the confirmed order's cached copy is
    // dropped, its row damaged, and a read caches the damage.
    let confirmed = uuid::Uuid::parse_str(&ids[0]).expect("uuid");
    let mut redis = redis::Client::open("redis://127.0.0.1:6379")
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let key = format!("{}:order:{confirmed}", env.namespace);
    redis::cmd("DEL")
        .arg(&key)
        .exec_async(&mut redis)
        .await
        .expect("del");
    sqlx::query("UPDATE order_view SET failure_reason = 'damaged' WHERE order_id = $1")
        .bind(confirmed)
        .execute(&db)
        .await
        .expect("damage");
    let get = |orders: &mut OrderServiceClient<_>| {
        let mut orders = orders.clone();
        let id = ids[0].clone();
        async move {
            orders
                .get_order(GetOrderRequest { order_id: id })
                .await
                .expect("get order")
                .into_inner()
                .order
                .expect("order")
                .failure_reason
        }
    };
    assert_eq!(get(&mut orders).await, "damaged");
    // More damage: every status, and one row lost.
    sqlx::query(
        "UPDATE order_view SET status = 'ORDER_STATUS_PENDING', version = 1 WHERE order_id <> $1",
    )
    .bind(confirmed)
    .execute(&db)
    .await
    .expect("damage");
    sqlx::query("DELETE FROM order_view WHERE order_id = $1")
        .bind(uuid::Uuid::parse_str(&ids[2]).expect("uuid"))
        .execute(&db)
        .await
        .expect("damage");

    let summary = rebuild(&env);
    assert!(
        summary.contains("3 orders, 3 rows repaired, 0 without events removed"),
        "{summary}"
    );
    assert_eq!(snapshot(&db).await, before);
    assert_eq!(
        get(&mut orders).await,
        "",
        "the damaged cached copy was evicted"
    );
    assert!(rebuild(&env).contains("3 orders, 0 rows repaired"));
}

/// Rebuilds run twice while 50 orders/s flow: no order is refused or left unfinished, the
/// invariants hold afterwards, and the view then matches its events exactly (a last rebuild has
/// nothing to repair).
#[tokio::test]
async fn rebuilding_under_load_blocks_no_order_and_leaves_the_view_exact() {
    let env = TestEnv::new();
    let mesh = env.start_mesh().await;
    let load = std::process::Command::new(binary("ordermesh"))
        .args(["load", "--rate", "50", "--duration", "8s", "--mix", "8:1:1"])
        .args(["--skus", "5", "--json", "--follow", "events"])
        .args(["--nats-url", &nats_url(), "--namespace", &env.namespace])
        .args(["--order-endpoint", &mesh.get(ServiceName::Order).url()])
        .args([
            "--inventory-endpoint",
            &mesh.get(ServiceName::Inventory).url(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start ordermesh load");
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let summary = rebuild(&env);
        assert!(summary.contains("rebuilt order_view"), "{summary}");
    }
    let output = load.wait_with_output().expect("load finishes");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    assert_eq!(report["created"].as_u64(), Some(400), "{report}");
    assert_eq!(report["expected_outcome"].as_u64(), Some(400), "{report}");
    let (ok, report, _) = common::check::settled(&env, &[], Duration::from_secs(60)).await;
    assert!(ok, "{report}");
    let summary = rebuild(&env);
    assert!(
        summary.contains("400 orders, 0 rows repaired, 0 without events removed"),
        "{summary}"
    );
}
