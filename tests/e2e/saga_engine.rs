//! The saga engine's promises at its edges, against real processes: a callee down past its step
//! deadline compensates only the sagas that need it; a compensation that can never finish ends
//! FAILED (event, one notification, dead letter, metric) and a redrive finishes it; a lost run
//! ticket is re-issued by the sweeper; a replica killed with -9 mid-run loses and doubles
//! nothing; a crash at any step boundary of any step or compensation loses nothing.

use crate::common;

use std::time::Duration;

use common::{
    TestEnv,
    check::settled,
    metric, ordermesh,
    saga::{item, place, place_with, stock, wait_for, watch_to_end},
};
use nix::sys::signal::Signal;
use ordermesh::{
    config::ServiceName,
    proto::{
        inventory::inventory_service_client::InventoryServiceClient,
        order::{CancelOrderRequest, OrderStatus, order_service_client::OrderServiceClient},
    },
};
use ordermesh_order::saga::{
    crash_point::{self, Boundary},
    definition::{Step, TABLE},
};
use std::os::unix::process::ExitStatusExt;

const WAIT: Duration = Duration::from_secs(60);

/// The payment canary hangs (a blackhole) for longer than the payment step's deadline: the
/// orders routed to it (`x-version: v2`) time out and compensate — the charge's effect is
/// unknown, so its refund runs too, once the canary answers again — while the orders that never
/// reach it keep confirming throughout. Nothing is charged for the cancelled ones, their stock
/// comes back, and the timeout metric counts them.
#[tokio::test]
async fn a_callee_down_past_its_deadline_compensates_its_sagas_while_the_others_confirm() {
    let env = TestEnv::new();
    let canary_env = [("ORDERMESH_PAYMENT__VERSION".to_string(), "v2".to_string())];
    let canary = env.spawn(ServiceName::Payment, &canary_env).await;
    canary.wait_serving().await;
    let proxy = common::chaos::FaultProxy::start(canary.grpc_addr).await;
    let canary_url = proxy.url("http");
    let mesh = env
        .start_mesh_with(&[
            ("ORDERMESH_ENDPOINTS__PAYMENT_CANARY", canary_url.as_str()),
            ("ORDERMESH_SAGA__PAYMENT_TIMEOUT", "3s"),
            ("ORDERMESH_SAGA__RETRY_BACKOFF", "300ms"),
            ("ORDERMESH_SAGA__MAX_DELIVER", "1000"),
            ("ORDERMESH_CLIENT__TIMEOUT", "1s"),
        ])
        .await;
    let mut inventory =
        InventoryServiceClient::new(mesh.get(ServiceName::Inventory).channel().await);
    stock(&mut inventory, "MOUSE", 20).await;
    proxy.set(common::chaos::Faults {
        blackhole: true,
        ..Default::default()
    });
    let mut orders = OrderServiceClient::new(mesh.get(ServiceName::Order).channel().await);
    let mut routed = Vec::new();
    let mut others = Vec::new();
    for _ in 0..4 {
        let v2 = [("x-version", "v2")];
        routed.push(place_with(&mut orders, &[("MOUSE", 1, 2_500)], "tok_visa", &v2).await);
        others.push(place(&mut orders, &[("MOUSE", 1, 2_500)], "tok_visa").await);
    }
    for o in &others {
        let (_, done) = watch_to_end(&mut orders, &o.order_id, WAIT).await;
        assert_eq!(
            done.status(),
            OrderStatus::Confirmed,
            "{}",
            done.failure_reason
        );
    }
    for o in &routed {
        wait_for(&mut orders, &o.order_id, OrderStatus::Compensating).await;
    }
    proxy.clear();
    for o in &routed {
        let (_, done) = watch_to_end(&mut orders, &o.order_id, WAIT).await;
        assert_eq!(done.status(), OrderStatus::Cancelled);
        assert!(
            done.failure_reason
                .contains("process-payment timed out after 3s"),
            "{}",
            done.failure_reason
        );
    }
    assert_eq!(item(&mut inventory, "MOUSE").await, (16, 0, 4));
    let payments = env.db(ServiceName::Payment).await;
    let charged: i64 = sqlx::query_scalar("SELECT count(*) FROM payments")
        .fetch_one(&payments)
        .await
        .expect("count");
    assert_eq!(charged, 4, "only the confirmed orders were charged");
    let order = mesh.get(ServiceName::Order);
    assert_eq!(
        metric(
            order,
            "ordermesh_saga_timeouts_total{step=\"process-payment\"}"
        )
        .await,
        4.0
    );
    let (ok, report, _) = settled(&env, &[], WAIT).await;
    assert!(ok, "{report}");
}

/// Inventory is gone for good while a declined order must release its stock: the release
/// retries until its deadline, then the order ends FAILED with a Failed event, one notification,
/// a dead letter and the dead-letter metric. Once inventory is back, `ordermesh dlq redrive`
/// finishes the compensation: CANCELLED, stock back, still one notification.
#[tokio::test]
async fn a_compensation_that_cannot_finish_fails_the_order_and_a_redrive_completes_it() {
    let env = TestEnv::new();
    let mut mesh = env
        .start_mesh_with(&[
            ("ORDERMESH_SAGA__COMPENSATION_TIMEOUT", "3s"),
            ("ORDERMESH_SAGA__RETRY_BACKOFF", "300ms"),
            ("ORDERMESH_SAGA__MAX_DELIVER", "1000"),
            ("ORDERMESH_CLIENT__TIMEOUT", "1s"),
        ])
        .await;
    let mut inventory =
        InventoryServiceClient::new(mesh.get(ServiceName::Inventory).channel().await);
    stock(&mut inventory, "MOUSE", 5).await;
    let (inventory_addr, payment_addr) = (
        mesh.get(ServiceName::Inventory).grpc_addr,
        mesh.get(ServiceName::Payment).grpc_addr,
    );
    // Payment down: the saga reserves, then waits at the charge; then inventory goes too, and
    // payment comes back to decline the card.
    mesh.kill(ServiceName::Payment);
    let mut orders = OrderServiceClient::new(mesh.get(ServiceName::Order).channel().await);
    let created = place(&mut orders, &[("MOUSE", 1, 2_500)], "declined_token").await;
    wait_for(
        &mut orders,
        &created.order_id,
        OrderStatus::InventoryReserved,
    )
    .await;
    mesh.kill(ServiceName::Inventory);
    mesh.restart(&env, ServiceName::Payment, payment_addr).await;

    let (_, failed) = watch_to_end(&mut orders, &created.order_id, WAIT).await;
    assert_eq!(failed.status(), OrderStatus::Failed);
    assert!(
        failed
            .failure_reason
            .contains("compensation release-inventory could not finish"),
        "{}",
        failed.failure_reason
    );
    let order = mesh.get(ServiceName::Order);
    assert_eq!(
        metric(
            order,
            "ordermesh_saga_dead_letters_total{step=\"release-inventory\"}"
        )
        .await,
        1.0
    );
    let letters = ordermesh(&env, &["dlq", "list"]);
    assert!(letters.contains(&created.order_id), "{letters}");

    mesh.restart(&env, ServiceName::Inventory, inventory_addr)
        .await;
    assert!(ordermesh(&env, &["dlq", "redrive", "--all"]).contains("redriven"));
    wait_for(&mut orders, &created.order_id, OrderStatus::Cancelled).await;
    let mut inventory =
        InventoryServiceClient::new(mesh.get(ServiceName::Inventory).channel().await);
    assert_eq!(item(&mut inventory, "MOUSE").await, (5, 0, 0));
    let (ok, report, _) = settled(&env, &[], WAIT).await;
    assert!(
        ok,
        "one notification, stock back, nothing charged: {report}"
    );
}

/// A run ticket lost from JetStream (what a power loss of an un-fsynced server does): the
/// stream is purged while the saga waits out a retry, so nothing would ever resume it. The
/// sweeper finds the saga idle past the stall threshold and re-issues its ticket.
#[tokio::test]
async fn a_lost_run_ticket_is_reissued_by_the_sweeper_and_the_order_still_confirms() {
    let env = TestEnv::new();
    let mut mesh = env
        .start_mesh_with(&[
            ("ORDERMESH_SAGA__RETRY_BACKOFF", "300ms"),
            ("ORDERMESH_SAGA__MAX_DELIVER", "1000"),
            ("ORDERMESH_SAGA__SWEEP_EVERY", "1s"),
            ("ORDERMESH_SAGA__STALL_AFTER", "11s"),
            ("ORDERMESH_CLIENT__TIMEOUT", "1s"),
        ])
        .await;
    let mut inventory =
        InventoryServiceClient::new(mesh.get(ServiceName::Inventory).channel().await);
    stock(&mut inventory, "MOUSE", 5).await;
    let inventory_addr = mesh.get(ServiceName::Inventory).grpc_addr;
    mesh.kill(ServiceName::Inventory);
    let mut orders = OrderServiceClient::new(mesh.get(ServiceName::Order).channel().await);
    let created = place(&mut orders, &[("MOUSE", 1, 2_500)], "tok_visa").await;
    // The saga has tried and is waiting; its ticket goes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let client = async_nats::connect(common::nats_url()).await.expect("nats");
    let js = async_nats::jetstream::new(client);
    let mut runs = js
        .get_stream(format!("{}_SAGA_RUNS", env.namespace.to_uppercase()))
        .await
        .expect("runs stream");
    runs.purge().await.expect("purge");
    assert_eq!(runs.info().await.expect("info").state.messages, 0);
    mesh.restart(&env, ServiceName::Inventory, inventory_addr)
        .await;

    let (_, done) = watch_to_end(&mut orders, &created.order_id, WAIT).await;
    assert_eq!(done.status(), OrderStatus::Confirmed);
    assert!(
        metric(
            mesh.get(ServiceName::Order),
            "ordermesh_saga_tickets_reissued_total"
        )
        .await
            >= 1.0
    );
    let (ok, report, _) = settled(&env, &[], WAIT).await;
    assert!(ok, "{report}");
}

/// Two order replicas share the run tickets; one is killed with -9 while sagas run. Its tickets
/// come back to the other after their ack wait: every order ends as it should, none charged
/// twice, none lost.
#[tokio::test]
async fn a_second_replica_killed_mid_run_loses_and_doubles_nothing() {
    let env = TestEnv::new();
    let mesh = env
        .start_mesh_with(&[("ORDERMESH_SAGA__RETRY_BACKOFF", "300ms")])
        .await;
    let mut inventory =
        InventoryServiceClient::new(mesh.get(ServiceName::Inventory).channel().await);
    stock(&mut inventory, "MOUSE", 1_000).await;
    let mut second = env.spawn(ServiceName::Order, &mesh.env).await;
    second.wait_serving().await;
    let mut via_first = OrderServiceClient::new(mesh.get(ServiceName::Order).channel().await);
    let mut via_second = OrderServiceClient::new(second.channel().await);
    // Payment stopped: every saga is mid-run, tickets held by both replicas, when one dies.
    let payment = mesh.get(ServiceName::Payment);
    payment.signal(Signal::SIGSTOP);
    let mut placed = Vec::new();
    for i in 0..40 {
        let client = if i % 2 == 0 {
            &mut via_first
        } else {
            &mut via_second
        };
        placed.push(place(client, &[("MOUSE", 1, 2_500)], "tok_visa").await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    second.signal(Signal::SIGKILL);
    let _ = second.wait_exit(Duration::from_secs(5)).await;
    payment.signal(Signal::SIGCONT);
    for o in &placed {
        let (_, done) = watch_to_end(&mut via_first, &o.order_id, WAIT).await;
        assert_eq!(
            done.status(),
            OrderStatus::Confirmed,
            "{}",
            done.failure_reason
        );
    }
    let payments = env.db(ServiceName::Payment).await;
    let (charges, orders): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT order_id) FROM payments")
            .fetch_one(&payments)
            .await
            .expect("count");
    assert_eq!((charges, orders), (40, 40));
    let (ok, report, _) = settled(&env, &[], WAIT).await;
    assert!(ok, "{report}");
}

/// An outcome event lost from JetStream before the notification service read it: the sweeper
/// asks the notification service which announced events it has, finds this one missing and
/// publishes it again — the customer is notified once, late rather than never.
#[tokio::test]
async fn a_lost_outcome_event_is_published_again_and_notified_once() {
    let env = TestEnv::new();
    let mut mesh = env
        .start_mesh_with(&[
            ("ORDERMESH_SAGA__RETRY_BACKOFF", "300ms"),
            ("ORDERMESH_SAGA__SWEEP_EVERY", "1s"),
            ("ORDERMESH_SAGA__STALL_AFTER", "11s"),
        ])
        .await;
    let mut inventory =
        InventoryServiceClient::new(mesh.get(ServiceName::Inventory).channel().await);
    stock(&mut inventory, "MOUSE", 5).await;
    let notification_addr = mesh.get(ServiceName::Notification).grpc_addr;
    mesh.kill(ServiceName::Notification);
    let mut orders = OrderServiceClient::new(mesh.get(ServiceName::Order).channel().await);
    let created = place(&mut orders, &[("MOUSE", 1, 2_500)], "tok_visa").await;
    let (_, done) = watch_to_end(&mut orders, &created.order_id, WAIT).await;
    assert_eq!(done.status(), OrderStatus::Confirmed);

    // The event is in its stream, unread; it goes the way an un-fsynced write does.
    let client = async_nats::connect(common::nats_url()).await.expect("nats");
    let js = async_nats::jetstream::new(client);
    let mut events = js
        .get_stream(format!("{}_ORDER_EVENTS", env.namespace.to_uppercase()))
        .await
        .expect("order events stream");
    let subject = format!("{}.order.events.confirmed", env.namespace);
    for _ in 0..100 {
        if events.info().await.expect("info").state.messages == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    events.purge().filter(&subject).await.expect("purge");
    assert_eq!(events.info().await.expect("info").state.messages, 0);
    mesh.restart(&env, ServiceName::Notification, notification_addr)
        .await;

    let db = env.db(ServiceName::Notification).await;
    let order_id = uuid::Uuid::parse_str(&created.order_id).expect("uuid");
    let mut notified = 0;
    for _ in 0..600 {
        notified =
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM notifications WHERE order_id = $1")
                .bind(order_id)
                .fetch_one(&db)
                .await
                .expect("count");
        if notified > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(notified, 1, "the lost event was published again");
    assert!(
        metric(
            mesh.get(ServiceName::Order),
            "ordermesh_saga_events_republished_total"
        )
        .await
            >= 1.0
    );
    let (ok, report, _) = settled(&env, &[], WAIT).await;
    assert!(ok, "{report}");
}

/// The order service aborts (SIGABRT, armed through `FAILPOINTS`) at each of the 21 boundaries
/// in turn — before the call, after the answer but before its checkpoint, after the checkpoint —
/// of every step and every compensation, each time on an order whose saga passes there: a plain
/// order for the forward steps, a declined card for the stock release, an order cancelled while
/// its label is being made for the label cancel and the refund. After a clean restart each
/// order ends as it would have without the crash, nothing is charged, reserved or labelled
/// twice, and `ordermesh check` is clean.
#[tokio::test]
async fn a_crash_at_every_step_boundary_loses_and_doubles_nothing() {
    let env = TestEnv::new();
    let mut mesh = env
        .start_mesh_with(&[
            // A crashed runner's tickets come back after this: the test waits it out 21 times.
            ("ORDERMESH_SAGA__TICKET_ACK_WAIT", "1s"),
            ("ORDERMESH_SAGA__RETRY_BACKOFF", "300ms"),
            ("ORDERMESH_CLIENT__TIMEOUT", "1s"),
        ])
        .await;
    let mut inventory =
        InventoryServiceClient::new(mesh.get(ServiceName::Inventory).channel().await);
    stock(&mut inventory, "MOUSE", 100).await;
    let hold_label = "saga.create-shipping-label.before-call=return(hold:1500)";
    let mut ended = Vec::new();
    for step in TABLE.iter().map(|s| s.step) {
        for boundary in Boundary::ALL {
            let point = crash_point::name(step, boundary);
            let (token, cancel, want) = match step {
                Step::ReleaseInventory => ("declined_token", false, OrderStatus::Cancelled),
                Step::RefundPayment | Step::CancelLabel => {
                    ("tok_visa", true, OrderStatus::Cancelled)
                }
                _ => ("tok_visa", false, OrderStatus::Confirmed),
            };
            let mut armed = format!("{point}=return(abort)");
            if cancel {
                armed = format!("{armed};{hold_label}");
            }
            let addr = mesh.get(ServiceName::Order).grpc_addr;
            mesh.kill(ServiceName::Order);
            let failpoints = [("FAILPOINTS".to_string(), armed)];
            mesh.restart_with(&env, ServiceName::Order, addr, &failpoints)
                .await;
            let mut orders = OrderServiceClient::new(mesh.get(ServiceName::Order).channel().await);
            let placed = place(&mut orders, &[("MOUSE", 1, 2_500)], token).await;
            if cancel {
                wait_for(&mut orders, &placed.order_id, OrderStatus::PaymentProcessed).await;
                orders
                    .cancel_order(CancelOrderRequest {
                        order_id: placed.order_id.clone(),
                        reason: format!("crash test at {point}"),
                    })
                    .await
                    .unwrap_or_else(|e| panic!("cancel before {point}: {e}"));
            }
            let crashed = mesh
                .services
                .get_mut(&ServiceName::Order)
                .expect("order service")
                .wait_status(WAIT)
                .await;
            assert_eq!(
                crashed.and_then(|s| s.signal()),
                Some(Signal::SIGABRT as i32),
                "the order service did not abort at {point} (is it built with \
                 `--features ordermesh-order/failpoints`, as `make build` does?)"
            );
            let log = mesh.get(ServiceName::Order).log_text();
            assert!(
                log.contains(&point),
                "aborted elsewhere than {point}:\n{log}"
            );
            mesh.kill(ServiceName::Order);
            mesh.restart(&env, ServiceName::Order, addr).await;
            let mut orders = OrderServiceClient::new(mesh.get(ServiceName::Order).channel().await);
            let (_, done) = watch_to_end(&mut orders, &placed.order_id, WAIT).await;
            assert_eq!(done.status(), want, "after a crash at {point}: {done:?}");
            ended.push(want);
        }
    }
    let confirmed = ended
        .iter()
        .filter(|s| **s == OrderStatus::Confirmed)
        .count() as i64;
    assert_eq!((confirmed, ended.len()), (12, 21));
    assert_eq!(
        item(&mut inventory, "MOUSE").await,
        (100 - confirmed, 0, confirmed),
        "committed once per confirmed order, the rest back"
    );
    let payments = env.db(ServiceName::Payment).await;
    let (kept, refunded, rows, orders): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE refunded_minor = 0), \
                count(*) FILTER (WHERE refunded_minor = amount_minor), \
                count(*), count(DISTINCT order_id) \
         FROM payments WHERE status <> 'PAYMENT_STATUS_DECLINED'",
    )
    .fetch_one(&payments)
    .await
    .expect("payments");
    assert_eq!(
        (kept, refunded, rows, orders),
        (12, 6, 18, 18),
        "one charge per paid order, the cancelled ones refunded in full"
    );
    let shipping = env.db(ServiceName::Shipping).await;
    let (created, cancelled): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'LABEL_STATUS_CREATED'), \
                count(*) FILTER (WHERE status = 'LABEL_STATUS_CANCELLED') FROM labels",
    )
    .fetch_one(&shipping)
    .await
    .expect("labels");
    assert_eq!((created, cancelled), (12, 6));
    let (ok, report, _) = settled(&env, &[], WAIT).await;
    assert!(ok, "{report}");
}
