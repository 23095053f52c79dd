//! `ordermesh check` passes on a mesh that processed orders, and names each broken invariant
//! (with the offending ids) once the data is damaged: every invariant it has is injected here
//! into the real databases and must fire, so none of them is a check that cannot fail.

use crate::common;

use std::time::Duration;

use common::{
    TestEnv,
    check::{broken, offenders, run, settled},
    saga::{place, stock, watch_to_end},
};
use ordermesh::{
    config::ServiceName,
    proto::{
        inventory::inventory_service_client::InventoryServiceClient,
        order::{Order, OrderStatus, order_service_client::OrderServiceClient},
    },
};
use sqlx::PgPool;
use uuid::Uuid;

async fn exec(pool: &PgPool, sql: &str, order: &Order) {
    sqlx::query(sql)
        .bind(Uuid::parse_str(&order.order_id).expect("uuid"))
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

#[tokio::test]
async fn check_passes_on_a_healthy_mesh_and_names_every_broken_invariant() {
    let env = TestEnv::new();
    let mesh = env.start_mesh().await;
    let mut inventory =
        InventoryServiceClient::new(mesh.get(ServiceName::Inventory).channel().await);
    stock(&mut inventory, "MOUSE", 10).await;
    stock(&mut inventory, "KEYBOARD", 5).await;
    let mut orders = OrderServiceClient::new(mesh.get(ServiceName::Order).channel().await);
    let mut placed = Vec::new();
    // Six confirmed (a b c f g h), one declined (d), one short of stock (e).
    for (lines, token) in [
        (vec![("MOUSE", 1, 2_500)], "tok_visa"),
        (vec![("MOUSE", 1, 2_500)], "tok_visa"),
        (vec![("MOUSE", 1, 2_500)], "tok_visa"),
        (vec![("MOUSE", 1, 2_500)], "declined_token"),
        (vec![("MOUSE", 50, 2_500)], "tok_visa"),
        (vec![("MOUSE", 1, 2_500)], "tok_visa"),
        (vec![("MOUSE", 1, 2_500)], "tok_visa"),
        (vec![("MOUSE", 1, 2_500)], "tok_visa"),
    ] {
        let created = place(&mut orders, &lines, token).await;
        let (_, done) = watch_to_end(&mut orders, &created.order_id, Duration::from_secs(60)).await;
        placed.push(done);
    }
    let [a, b, c, d, e, f, g, h] = <[Order; 8]>::try_from(placed).expect("eight orders");
    for (order, status) in [
        (&a, OrderStatus::Confirmed),
        (&d, OrderStatus::Cancelled),
        (&e, OrderStatus::Cancelled),
    ] {
        assert_eq!(order.status(), status, "{order:?}");
    }

    // Healthy: clean once the notifications are in (they may lag the orders a moment).
    let (ok, report, _) = settled(&env, &[], Duration::from_secs(60)).await;
    assert!(ok, "{report}");
    assert_eq!(
        (report["orders"].as_u64(), report["violations"].as_u64()),
        (Some(8), Some(0))
    );

    let orders_db = env.db(ServiceName::Order).await;
    let inventory_db = env.db(ServiceName::Inventory).await;
    let payments_db = env.db(ServiceName::Payment).await;
    let shipping_db = env.db(ServiceName::Shipping).await;
    let notifications_db = env.db(ServiceName::Notification).await;

    // One injected violation per invariant (the constraints that make some of them impossible
    // through the services are dropped first: the check is the net under those guards).
    exec(&notifications_db, "INSERT INTO notifications (notification_id, event_id, order_id, kind, channel, message) VALUES (gen_random_uuid(), gen_random_uuid(), $1, 'NOTIFICATION_KIND_ORDER_CONFIRMED', 'email', 'again')", &a).await;
    exec(
        &notifications_db,
        "DELETE FROM notifications WHERE order_id = $1",
        &d,
    )
    .await;
    exec(
        &orders_db,
        "DELETE FROM order_events WHERE order_id = $1 AND version = 2",
        &d,
    )
    .await;
    sqlx::query("UPDATE items SET reserved = reserved + 1 WHERE sku = 'KEYBOARD'")
        .execute(&inventory_db)
        .await
        .expect("leak stock");
    // d's released reservation held again, with the item's level to match (conserved, but held).
    exec(
        &inventory_db,
        "UPDATE reservations SET status = 'reserved' WHERE order_id = $1",
        &d,
    )
    .await;
    sqlx::query("UPDATE items SET reserved = reserved + 1 WHERE sku = 'MOUSE'")
        .execute(&inventory_db)
        .await
        .expect("hold stock");
    sqlx::query("ALTER TABLE payments DROP CONSTRAINT payments_order_id_key")
        .execute(&payments_db)
        .await
        .expect("drop the one-charge-per-order guard");
    exec(&payments_db, "INSERT INTO payments (payment_id, order_id, status, currency, amount_minor, card_last4, card_fingerprint, processor_version) SELECT gen_random_uuid(), order_id, status, currency, amount_minor, card_last4, card_fingerprint, processor_version FROM payments WHERE order_id = $1", &b).await;
    exec(&payments_db, "INSERT INTO payments (payment_id, order_id, status, currency, amount_minor, card_last4, card_fingerprint, processor_version) VALUES (gen_random_uuid(), $1, 'PAYMENT_STATUS_CAPTURED', 'USD', 125000, '4242', 'fp', 'v1')", &e).await;
    exec(&payments_db, "UPDATE payments SET status = 'PAYMENT_STATUS_REFUNDED', refunded_minor = amount_minor WHERE order_id = $1", &f).await;
    exec(
        &shipping_db,
        "UPDATE labels SET status = 'LABEL_STATUS_CANCELLED' WHERE order_id = $1",
        &c,
    )
    .await;
    sqlx::query("UPDATE order_events SET payload = jsonb_set(payload, '{confirmation_number}', to_jsonb($2::text)) WHERE order_id = $1 AND event_type = 'confirmed'")
        .bind(Uuid::parse_str(&g.order_id).expect("uuid"))
        .bind(&a.confirmation_number)
        .execute(&orders_db)
        .await
        .expect("share a confirmation number");
    exec(
        &orders_db,
        "UPDATE order_view SET status = 'ORDER_STATUS_PENDING' WHERE order_id = $1",
        &h,
    )
    .await;

    let (ok, report) = run(&env, &[]);
    assert!(!ok, "violations give a non-zero exit code");
    let named = |prefix: &str| offenders(&report, prefix);
    let starts =
        |list: Vec<String>, order: &Order| list.iter().any(|o| o.starts_with(&order.order_id));
    assert!(starts(named("orders not terminal"), &h), "{report}");
    assert_eq!(named("order event streams"), vec![d.order_id.clone()]);
    assert_eq!(named("inventory not conserved").len(), 1, "{report}");
    assert!(named("inventory not conserved")[0].starts_with("KEYBOARD (reserved 1 vs 0"));
    assert_eq!(
        named("confirmation numbers shared"),
        vec![format!("{} (2 orders)", a.confirmation_number)]
    );
    assert!(starts(named("stock held or shipped"), &d), "{report}");
    assert_eq!(
        named("orders charged more than once"),
        vec![format!("{} (2 payments)", b.order_id)]
    );
    assert!(
        starts(named("cancelled orders charged but not refunded"), &e),
        "{report}"
    );
    assert_eq!(
        named("confirmed orders without a standing charge"),
        vec![f.order_id.clone()]
    );
    assert!(starts(named("labels not matching"), &c), "{report}");
    let notified = named("finished orders without exactly one notification");
    assert!(
        starts(notified.clone(), &a) && starts(notified, &d),
        "{report}"
    );
    assert_eq!(broken(&report).len(), 10, "every invariant fired: {report}");
    // Eleven offenders: the doubly charged order is named once, with its two payments.
    assert_eq!(report["violations"].as_u64(), Some(11), "{report}");

    // What holds at every instant is marked so, and no settling excuses it.
    let always: Vec<String> = broken(&report)
        .into_iter()
        .filter(|(_, always, _)| *always)
        .map(|(name, _, _)| name)
        .collect();
    for invariant in [
        "order event streams",
        "inventory not conserved",
        "confirmation numbers shared",
        "orders charged more than once",
    ] {
        assert!(
            always.iter().any(|n| n.starts_with(invariant)),
            "{invariant} in {always:?}"
        );
    }
    let (ok, _, waited) = settled(&env, &[], Duration::from_secs(60)).await;
    assert!(
        !ok && !waited,
        "an always-invariant violation ends the wait at once"
    );
}

/// Each service answers for its own database; one that does not answer fails the check with a
/// message naming the service and how to point at it, not with a partial verdict.
#[tokio::test]
async fn check_names_the_service_it_could_not_ask() {
    let env = TestEnv::new();
    let inventory = env.start(ServiceName::Inventory).await;
    let answering = format!("http://{}", inventory.admin_addr);
    let output = std::process::Command::new(common::binary("ordermesh"))
        .args(["check", "--settle", "0s"])
        .args([
            "--inventory-admin",
            &answering,
            "--payment-admin",
            &answering,
        ])
        .args([
            "--shipping-admin",
            &answering,
            "--notification-admin",
            &answering,
        ])
        // Nothing listens on port 9: the order service is "down".
        .env("ORDERMESH_ADMIN_ENDPOINTS__ORDER", "http://127.0.0.1:9")
        .output()
        .expect("run ordermesh check");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("asking the order service for its side of the invariants")
            && stderr.contains("ORDERMESH_ADMIN_ENDPOINTS__ORDER"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "no verdict is printed");
}
