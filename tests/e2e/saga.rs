//! The order saga end to end against real processes, PostgreSQL, NATS JetStream and Redis:
//! the happy path, business failures that compensate, a hung payment service that times out,
//! and a crash of the order service with sagas in flight.

use crate::common;

use std::time::Duration;

use common::{
    TestEnv,
    saga::{item, place, stock, wait_for, watch_to_end},
};
use nix::sys::signal::Signal;
use ordermesh::{
    config::ServiceName,
    proto::{
        inventory::inventory_service_client::InventoryServiceClient,
        notification::{
            ListNotificationsRequest, notification_service_client::NotificationServiceClient,
        },
        order::{
            GetOrderRequest, GetSagaTimelineRequest, OrderStatus, StepStatus,
            order_service_client::OrderServiceClient,
        },
    },
};
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(60);

async fn scalar(pool: &sqlx::PgPool, sql: &str, order_id: &str) -> i64 {
    let id = uuid::Uuid::parse_str(order_id).expect("uuid");
    sqlx::query_scalar(sql)
        .bind(id)
        .fetch_one(pool)
        .await
        .expect(sql)
}

/// Notifications of an order, waiting a little for the asynchronous consumer.
async fn notifications(
    c: &mut NotificationServiceClient<Channel>,
    order_id: &str,
    expected: usize,
) -> Vec<String> {
    for _ in 0..100 {
        let list = c
            .list_notifications(ListNotificationsRequest {
                order_id: order_id.into(),
                ..Default::default()
            })
            .await
            .expect("list notifications")
            .into_inner()
            .notifications;
        if list.len() >= expected {
            tokio::time::sleep(Duration::from_millis(300)).await; // a duplicate would show up by now
            let again = c
                .list_notifications(ListNotificationsRequest {
                    order_id: order_id.into(),
                    ..Default::default()
                })
                .await
                .expect("list notifications")
                .into_inner()
                .notifications;
            return again
                .iter()
                .map(|n| n.kind().as_str_name().to_string())
                .collect();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Vec::new()
}

#[tokio::test]
async fn a_laptop_and_two_mice_are_confirmed_with_stock_payment_label_and_one_notification() {
    let env = TestEnv::new();
    let mut mesh = env.start_mesh().await;
    let mut inventory =
        InventoryServiceClient::new(mesh.get(ServiceName::Inventory).channel().await);
    stock(&mut inventory, "LAPTOP", 10).await;
    stock(&mut inventory, "MOUSE", 20).await;
    let mut orders = OrderServiceClient::new(mesh.get(ServiceName::Order).channel().await);

    // The watch must see the order from PENDING on, and it can only start once CreateOrder has
    // answered, by which time a fast saga may be past its first step. With inventory down the
    // saga cannot leave PENDING (Reserve fails and is retried), and the watch is opened before
    // inventory is started again, which takes far longer than opening a watch.
    let inventory_addr = mesh.get(ServiceName::Inventory).grpc_addr;
    mesh.kill(ServiceName::Inventory);
    let created = place(
        &mut orders,
        &[("LAPTOP", 1, 129_900), ("MOUSE", 2, 2_500)],
        "tok_visa",
    )
    .await;
    let watch = tokio::spawn({
        let mut orders = orders.clone();
        let order_id = created.order_id.clone();
        async move { watch_to_end(&mut orders, &order_id, WAIT).await }
    });
    mesh.restart(&env, ServiceName::Inventory, inventory_addr)
        .await;
    let (seen, done) = watch.await.expect("watch task");
    assert_eq!(
        done.status(),
        OrderStatus::Confirmed,
        "saw {seen:?}: {}",
        done.failure_reason
    );
    assert_eq!(seen.first(), Some(&OrderStatus::Pending));
    let date = chrono::Utc::now().format("%Y%m%d").to_string();
    let suffix = done
        .confirmation_number
        .strip_prefix(&format!("ORD-{date}-"))
        .unwrap_or_else(|| panic!("{} is ORD-{date}-…", done.confirmation_number));
    assert!(
        suffix.len() == 8
            && suffix
                .bytes()
                .all(|b| b"0123456789ABCDEFGHJKMNPQRSTVWXYZ".contains(&b)),
        "eight Crockford base32 characters: {suffix}"
    );
    assert!(done.tracking_number.starts_with("OM"));

    assert_eq!(item(&mut inventory, "LAPTOP").await, (9, 0, 1));
    assert_eq!(item(&mut inventory, "MOUSE").await, (18, 0, 2));
    let payments = env.db(ServiceName::Payment).await;
    assert_eq!(scalar(&payments, "SELECT count(*) FROM payments WHERE order_id = $1 AND status = 'PAYMENT_STATUS_CAPTURED'", &created.order_id).await, 1);
    let amount = scalar(
        &payments,
        "SELECT amount_minor FROM payments WHERE order_id = $1",
        &created.order_id,
    )
    .await;
    assert_eq!(amount, 134_900, "charged the order total");
    let shipping = env.db(ServiceName::Shipping).await;
    assert_eq!(
        scalar(
            &shipping,
            "SELECT count(*) FROM labels WHERE order_id = $1",
            &created.order_id
        )
        .await,
        1
    );
    let mut notification =
        NotificationServiceClient::new(mesh.get(ServiceName::Notification).channel().await);
    assert_eq!(
        notifications(&mut notification, &created.order_id, 1).await,
        vec!["NOTIFICATION_KIND_ORDER_CONFIRMED"]
    );

    let timeline = orders
        .get_saga_timeline(GetSagaTimelineRequest {
            order_id: created.order_id.clone(),
        })
        .await
        .expect("timeline")
        .into_inner();
    let steps: Vec<(String, StepStatus)> = timeline
        .steps
        .iter()
        .map(|s| (s.name.clone(), s.status()))
        .collect();
    let ok = StepStatus::Succeeded;
    assert_eq!(
        steps,
        vec![
            ("reserve-inventory".into(), ok),
            ("process-payment".into(), ok),
            ("create-shipping-label".into(), ok),
            ("confirm-order".into(), ok)
        ]
    );
    assert_eq!(timeline.definition_version, 1);
    assert!(
        timeline
            .steps
            .iter()
            .all(|s| s.attempts >= 1 && s.duration.is_some())
    );

    let orders_db = env.db(ServiceName::Order).await;
    let token_left = scalar(
        &orders_db,
        "SELECT count(*) FROM sagas WHERE order_id = $1 AND payment_token IS NOT NULL",
        &created.order_id,
    )
    .await;
    assert_eq!(token_left, 0, "the payment token is dropped once charged");
}

#[tokio::test]
async fn insufficient_stock_cancels_without_charging_and_a_declined_card_releases_the_stock() {
    let env = TestEnv::new();
    let mesh = env.start_mesh().await;
    let mut inventory =
        InventoryServiceClient::new(mesh.get(ServiceName::Inventory).channel().await);
    stock(&mut inventory, "LAPTOP", 1).await;
    stock(&mut inventory, "MOUSE", 5).await;
    let mut orders = OrderServiceClient::new(mesh.get(ServiceName::Order).channel().await);
    let mut notification =
        NotificationServiceClient::new(mesh.get(ServiceName::Notification).channel().await);
    let payments = env.db(ServiceName::Payment).await;

    let short = place(&mut orders, &[("LAPTOP", 5, 129_900)], "tok_visa").await;
    let (_, done) = watch_to_end(&mut orders, &short.order_id, WAIT).await;
    assert_eq!(done.status(), OrderStatus::Cancelled);
    assert!(
        done.failure_reason
            .contains("insufficient stock: LAPTOP (requested 5, available 1)"),
        "{}",
        done.failure_reason
    );
    assert_eq!(
        item(&mut inventory, "LAPTOP").await,
        (1, 0, 0),
        "stock unchanged"
    );
    assert_eq!(
        scalar(
            &payments,
            "SELECT count(*) FROM payments WHERE order_id = $1",
            &short.order_id
        )
        .await,
        0,
        "no payment taken"
    );
    assert_eq!(
        notifications(&mut notification, &short.order_id, 1).await,
        vec!["NOTIFICATION_KIND_ORDER_CANCELLED"]
    );

    let declined = place(&mut orders, &[("MOUSE", 3, 2_500)], "declined_token").await;
    let (seen, done) = watch_to_end(&mut orders, &declined.order_id, WAIT).await;
    assert_eq!(done.status(), OrderStatus::Cancelled, "saw {seen:?}");
    assert!(
        done.failure_reason.contains("declined"),
        "{}",
        done.failure_reason
    );
    assert_eq!(
        item(&mut inventory, "MOUSE").await,
        (5, 0, 0),
        "reserved stock released"
    );
    let timeline = orders
        .get_saga_timeline(GetSagaTimelineRequest {
            order_id: declined.order_id.clone(),
        })
        .await
        .expect("timeline")
        .into_inner();
    let release = timeline
        .steps
        .iter()
        .find(|s| s.name == "release-inventory")
        .expect("compensation in the timeline");
    assert!(release.compensation && release.status() == StepStatus::Succeeded);
    assert_eq!(
        notifications(&mut notification, &declined.order_id, 1).await,
        vec!["NOTIFICATION_KIND_ORDER_CANCELLED"]
    );
}

#[tokio::test]
async fn a_hung_payment_service_times_out_compensates_and_leaves_no_unrefunded_charge() {
    let env = TestEnv::new();
    let settings = [
        ("ORDERMESH_SAGA__PAYMENT_TIMEOUT", "3s"),
        ("ORDERMESH_SAGA__RETRY_BACKOFF", "1s 1s 2s"),
        ("ORDERMESH_CLIENT__TIMEOUT", "1s"),
    ];
    let mesh = env.start_mesh_with(&settings).await;
    let mut inventory =
        InventoryServiceClient::new(mesh.get(ServiceName::Inventory).channel().await);
    stock(&mut inventory, "MOUSE", 5).await;
    let mut orders = OrderServiceClient::new(mesh.get(ServiceName::Order).channel().await);

    let payment = mesh.get(ServiceName::Payment);
    payment.signal(Signal::SIGSTOP);
    let created = place(&mut orders, &[("MOUSE", 2, 2_500)], "tok_visa").await;
    let mut compensating = false;
    for _ in 0..150 {
        let now = orders
            .get_order(GetOrderRequest {
                order_id: created.order_id.clone(),
            })
            .await
            .expect("get")
            .into_inner()
            .order
            .expect("order");
        if now.status() == OrderStatus::Compensating {
            assert!(
                now.failure_reason
                    .contains("process-payment timed out after 3s"),
                "{}",
                now.failure_reason
            );
            compensating = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    payment.signal(Signal::SIGCONT);
    assert!(
        compensating,
        "the payment step timed out into compensation while payment was stopped"
    );

    let (_, done) = watch_to_end(&mut orders, &created.order_id, WAIT).await;
    assert_eq!(done.status(), OrderStatus::Cancelled);
    assert_eq!(item(&mut inventory, "MOUSE").await, (5, 0, 0));
    // Whatever the resumed payment service did with the hung charge, nothing stays charged.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let payments = env.db(ServiceName::Payment).await;
    let kept = scalar(
        &payments,
        "SELECT coalesce(sum(amount_minor - refunded_minor), 0)::bigint FROM payments WHERE order_id = $1 AND status <> 'PAYMENT_STATUS_DECLINED'",
        &created.order_id,
    )
    .await;
    assert_eq!(kept, 0, "a late charge is refunded or refused");
}

#[tokio::test]
async fn killing_the_order_service_with_fifty_sagas_in_flight_loses_and_doubles_nothing() {
    let env = TestEnv::new();
    let mut mesh = env
        .start_mesh_with(&[("ORDERMESH_SAGA__RETRY_BACKOFF", "1s")])
        .await;
    let mut inventory =
        InventoryServiceClient::new(mesh.get(ServiceName::Inventory).channel().await);
    stock(&mut inventory, "MOUSE", 1_000).await;
    let order_addr = mesh.get(ServiceName::Order).grpc_addr;
    // Connected up front, so counting the sagas in flight right before the kill is quick.
    let orders_db = env.db(ServiceName::Order).await;
    let orders = OrderServiceClient::new(mesh.get(ServiceName::Order).channel().await);

    let mut ids = Vec::new();
    let creates: Vec<_> = (0..50)
        .map(|i| {
            let mut c = orders.clone();
            let token = if i % 10 == 9 {
                "declined_token"
            } else {
                "tok_visa"
            };
            tokio::spawn(async move { place(&mut c, &[("MOUSE", 2, 2_500)], token).await })
        })
        .collect();
    for create in creates {
        ids.push(create.await.expect("join").order_id);
    }
    let active: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sagas WHERE phase IN ('forward', 'compensating')")
            .fetch_one(&orders_db)
            .await
            .expect("count");
    mesh.kill(ServiceName::Order);
    assert!(active > 0, "the crash must hit sagas in flight");
    tokio::time::sleep(Duration::from_secs(1)).await;
    mesh.restart(&env, ServiceName::Order, order_addr).await;

    let mut orders = OrderServiceClient::new(mesh.get(ServiceName::Order).channel().await);
    let mut confirmed = 0;
    for id in &ids {
        let (_, done) = watch_to_end(&mut orders, id, WAIT).await;
        if done.status() == OrderStatus::Confirmed {
            confirmed += 1;
        } else {
            assert_eq!(
                done.status(),
                OrderStatus::Cancelled,
                "{id}: {}",
                done.failure_reason
            );
        }
    }
    assert_eq!(confirmed, 45, "every order with a good card confirms");

    let (available, reserved, committed) = item(&mut inventory, "MOUSE").await;
    assert_eq!((reserved, committed), (0, 90));
    assert_eq!(available + reserved + committed, 1_000, "stock conserved");
    let payments = env.db(ServiceName::Payment).await;
    let doubled: i64 = sqlx::query_scalar("SELECT count(*) FROM (SELECT order_id FROM payments GROUP BY order_id HAVING count(*) > 1) d")
        .fetch_one(&payments)
        .await
        .expect("query");
    assert_eq!(doubled, 0);
    let captured: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM payments WHERE status = 'PAYMENT_STATUS_CAPTURED'",
    )
    .fetch_one(&payments)
    .await
    .expect("query");
    assert_eq!(captured, 45);
    let labels: i64 = sqlx::query_scalar("SELECT count(*) FROM labels")
        .fetch_one(&env.db(ServiceName::Shipping).await)
        .await
        .expect("query");
    assert_eq!(labels, 45);

    let notifications = env.db(ServiceName::Notification).await;
    for _ in 0..100 {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications")
            .fetch_one(&notifications)
            .await
            .expect("count");
        if n >= 50 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let per_order: Vec<i64> =
        sqlx::query_scalar("SELECT count(*) FROM notifications GROUP BY order_id")
            .fetch_all(&notifications)
            .await
            .expect("query");
    assert_eq!(per_order.len(), 50, "every order notified");
    assert!(
        per_order.iter().all(|n| *n == 1),
        "exactly one notification per order: {per_order:?}"
    );
    let gaps: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT order_id FROM order_events GROUP BY order_id HAVING max(version) <> count(*)) g",
    )
    .fetch_one(&orders_db)
    .await
    .expect("query");
    assert_eq!(gaps, 0, "event streams have no gaps or duplicates");

    let check = std::process::Command::new(common::binary("ordermesh"))
        .args(["check", "--settle", "0s"])
        .envs(env.env())
        .envs(env.admin_endpoints())
        .output()
        .expect("run ordermesh check");
    assert!(
        check.status.success(),
        "ordermesh check after the crash:\n{}",
        String::from_utf8_lossy(&check.stdout)
    );
}

#[tokio::test]
async fn cancelling_an_order_mid_saga_compensates_it_with_the_given_reason() {
    let env = TestEnv::new();
    let settings = [
        ("ORDERMESH_SAGA__RETRY_BACKOFF", "300ms"),
        ("ORDERMESH_CLIENT__TIMEOUT", "1s"),
    ];
    let mut mesh = env.start_mesh_with(&settings).await;
    let inventory_addr = mesh.get(ServiceName::Inventory).grpc_addr;
    let mut inventory =
        InventoryServiceClient::new(mesh.get(ServiceName::Inventory).channel().await);
    stock(&mut inventory, "MOUSE", 5).await;
    mesh.kill(ServiceName::Inventory);
    let mut orders = OrderServiceClient::new(mesh.get(ServiceName::Order).channel().await);
    let created = place(&mut orders, &[("MOUSE", 1, 2_500)], "tok_visa").await;

    let cancelled = orders
        .cancel_order(ordermesh::proto::order::CancelOrderRequest {
            order_id: created.order_id.clone(),
            reason: "customer changed their mind".into(),
        })
        .await
        .expect("cancel")
        .into_inner()
        .order
        .expect("order");
    assert_eq!(cancelled.status(), OrderStatus::Compensating);
    let empty_reason = orders
        .cancel_order(ordermesh::proto::order::CancelOrderRequest {
            order_id: created.order_id.clone(),
            reason: String::new(),
        })
        .await
        .expect_err("a reason is required");
    assert_eq!(empty_reason.code(), tonic::Code::InvalidArgument);

    // Inventory comes back: the release runs (the reserve may or may not have happened) and the
    // order ends cancelled with the customer's reason, stock untouched.
    mesh.restart(&env, ServiceName::Inventory, inventory_addr)
        .await;
    let (_, done) = watch_to_end(&mut orders, &created.order_id, WAIT).await;
    assert_eq!(done.status(), OrderStatus::Cancelled);
    assert_eq!(
        done.failure_reason,
        "cancelled by request: customer changed their mind"
    );
    let mut inventory =
        InventoryServiceClient::new(mesh.get(ServiceName::Inventory).channel().await);
    assert_eq!(item(&mut inventory, "MOUSE").await, (5, 0, 0));
    let payments = env.db(ServiceName::Payment).await;
    assert_eq!(
        scalar(
            &payments,
            "SELECT count(*) FROM payments WHERE order_id = $1",
            &created.order_id
        )
        .await,
        0
    );
}

/// The longest reason CancelOrder accepts (488 characters once trimmed of nothing) becomes a
/// 510-character saga reason with its prefix: it must still fit every compensation's limit at
/// every step, or the stock stays held and the money taken.
#[tokio::test]
async fn a_cancel_with_the_longest_reason_compensates_at_every_step_and_a_confirmed_order_refuses_it()
 {
    let env = TestEnv::new();
    let settings = [
        ("ORDERMESH_SAGA__RETRY_BACKOFF", "300ms"),
        ("ORDERMESH_CLIENT__TIMEOUT", "1s"),
    ];
    let mut mesh = env.start_mesh_with(&settings).await;
    let mut inventory =
        InventoryServiceClient::new(mesh.get(ServiceName::Inventory).channel().await);
    stock(&mut inventory, "MOUSE", 5).await;
    let mut orders = OrderServiceClient::new(mesh.get(ServiceName::Order).channel().await);
    let payments = env.db(ServiceName::Payment).await;
    let long_reason = "r".repeat(488);
    for (down, held_at) in [
        (ServiceName::Inventory, OrderStatus::Pending),
        (ServiceName::Payment, OrderStatus::InventoryReserved),
        (ServiceName::Shipping, OrderStatus::PaymentProcessed),
    ] {
        let addr = mesh.get(down).grpc_addr;
        mesh.kill(down);
        let created = place(&mut orders, &[("MOUSE", 1, 2_500)], "tok_visa").await;
        wait_for(&mut orders, &created.order_id, held_at).await;
        let cancelled = orders
            .cancel_order(ordermesh::proto::order::CancelOrderRequest {
                order_id: created.order_id.clone(),
                reason: long_reason.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("cancel with {down} down: {e}"))
            .into_inner()
            .order
            .expect("order");
        assert_eq!(cancelled.status(), OrderStatus::Compensating, "{down} down");
        mesh.restart(&env, down, addr).await;
        let (_, done) = watch_to_end(&mut orders, &created.order_id, WAIT).await;
        assert_eq!(
            done.status(),
            OrderStatus::Cancelled,
            "{down} down: {done:?}"
        );
        assert_eq!(done.failure_reason.chars().count(), 500, "{down} down");
        assert!(done.failure_reason.starts_with("cancelled by request: rrr"));
        assert!(done.failure_reason.ends_with('…'));
        let mut inventory =
            InventoryServiceClient::new(mesh.get(ServiceName::Inventory).channel().await);
        assert_eq!(
            item(&mut inventory, "MOUSE").await,
            (5, 0, 0),
            "{down} down"
        );
        let unrefunded = scalar(
            &payments,
            "SELECT count(*) FROM payments WHERE order_id = $1 AND status <> 'PAYMENT_STATUS_DECLINED' AND refunded_minor <> amount_minor",
            &created.order_id,
        )
        .await;
        assert_eq!(unrefunded, 0, "{down} down: a charge was not refunded");
    }
    let charged_and_refunded = sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM payments WHERE refunded_minor = amount_minor AND amount_minor > 0",
    )
    .fetch_one(&payments)
    .await
    .expect("count");
    assert_eq!(
        charged_and_refunded, 1,
        "the order held at shipping was charged, then refunded"
    );

    // A confirmed order cannot be cancelled: FAILED_PRECONDITION naming its real status.
    let created = place(&mut orders, &[("MOUSE", 1, 2_500)], "tok_visa").await;
    let (_, done) = watch_to_end(&mut orders, &created.order_id, WAIT).await;
    assert_eq!(done.status(), OrderStatus::Confirmed);
    let refused = orders
        .cancel_order(ordermesh::proto::order::CancelOrderRequest {
            order_id: created.order_id.clone(),
            reason: "too late".into(),
        })
        .await
        .expect_err("a confirmed order is not cancelled");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("is CONFIRMED"),
        "{}",
        refused.message()
    );

    let (ok, report, _) = common::check::settled(&env, &[], WAIT).await;
    assert!(ok, "{report}");
}
