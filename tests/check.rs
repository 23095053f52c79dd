//! `ordermesh check` passes on a mesh that processed orders, and names each broken invariant
//! (with the offending ids) once the data is damaged.

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
use serde_json::Value;

fn check(env: &TestEnv) -> (bool, Value) {
    let output = std::process::Command::new(binary("ordermesh"))
        .args(["check", "--settle", "0s", "--json"])
        .envs(env.env())
        .output()
        .expect("run ordermesh check");
    let report = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stderr)));
    (output.status.success(), report)
}

fn offenders(report: &Value, invariant_prefix: &str) -> Vec<String> {
    report["invariants"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| {
            i["invariant"]
                .as_str()
                .unwrap_or_default()
                .starts_with(invariant_prefix)
        })
        .map(|i| {
            i["offenders"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|o| o.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn check_passes_on_a_healthy_mesh_and_names_every_broken_invariant() {
    let env = TestEnv::new();
    let mesh = env.start_mesh().await;
    let mut inventory =
        InventoryServiceClient::new(mesh.get(ServiceName::Inventory).channel().await);
    stock(&mut inventory, "MOUSE", 10).await;
    let mut orders = OrderServiceClient::new(mesh.get(ServiceName::Order).channel().await);
    let mut ids = Vec::new();
    for (lines, token) in [
        (vec![("MOUSE", 2, 2_500)], "tok_visa"),
        (vec![("MOUSE", 1, 2_500)], "declined_token"),
        (vec![("MOUSE", 50, 2_500)], "tok_visa"),
    ] {
        let created = place(&mut orders, &lines, token).await;
        watch_to_end(&mut orders, &created.order_id, Duration::from_secs(60)).await;
        ids.push(created.order_id);
    }
    let notifications = env.db(ServiceName::Notification).await;
    for _ in 0..100 {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications")
            .fetch_one(&notifications)
            .await
            .expect("count");
        if n == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (ok, report) = check(&env);
    assert!(ok, "{report}");
    assert_eq!(
        (report["orders"].as_u64(), report["violations"].as_u64()),
        (Some(3), Some(0))
    );

    // Damage: a second notification, a lost event, stock that no reservation explains.
    sqlx::query("INSERT INTO notifications (notification_id, event_id, order_id, kind, channel, message) VALUES (gen_random_uuid(), gen_random_uuid(), $1, 'NOTIFICATION_KIND_ORDER_CONFIRMED', 'email', 'again')")
        .bind(uuid::Uuid::parse_str(&ids[0]).expect("uuid"))
        .execute(&notifications)
        .await
        .expect("duplicate notification");
    let orders_db = env.db(ServiceName::Order).await;
    sqlx::query("DELETE FROM order_events WHERE order_id = $1 AND version = 2")
        .bind(uuid::Uuid::parse_str(&ids[1]).expect("uuid"))
        .execute(&orders_db)
        .await
        .expect("lose an event");
    let inventory_db = env.db(ServiceName::Inventory).await;
    sqlx::query("UPDATE items SET reserved = reserved + 1 WHERE sku = 'MOUSE'")
        .execute(&inventory_db)
        .await
        .expect("leak stock");

    let (ok, report) = check(&env);
    assert!(!ok, "violations give a non-zero exit code");
    assert_eq!(report["violations"].as_u64(), Some(3), "{report}");
    assert!(
        offenders(&report, "finished orders without exactly one notification")[0]
            .starts_with(&ids[0])
    );
    assert_eq!(
        offenders(&report, "order event streams"),
        vec![ids[1].clone()]
    );
    assert!(offenders(&report, "inventory not conserved")[0].starts_with("MOUSE (reserved 1 vs 0"));
}
