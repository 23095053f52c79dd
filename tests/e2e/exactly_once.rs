//! Order, payment, shipping and notification behaviour against real processes and databases:
//! client request ids, the sandbox processor and its versions, refunds that never exceed the
//! charge, compensations that block late effects, and one notification per outcome event.

use crate::common;

use common::TestEnv;
use ordermesh::proto::inventory::inventory_service_client::InventoryServiceClient;
use ordermesh::{
    config::ServiceName,
    events::{OrderOutcome, OutcomeKind},
    proto::{
        common::{Address, Money},
        order::{
            CreateOrderRequest, GetOrderRequest, ListOrdersRequest, OrderLine, OrderStatus,
            order_service_client::OrderServiceClient,
        },
        payment::{
            ChargeRequest, GetPaymentRequest, PaymentStatus, RefundRequest,
            payment_service_client::PaymentServiceClient,
        },
        shipping::{
            CancelLabelRequest, CreateLabelRequest, LabelStatus,
            shipping_service_client::ShippingServiceClient,
        },
    },
};
use tonic::Code;
use uuid::Uuid;

fn usd(amount_minor: i64) -> Option<Money> {
    Some(Money {
        currency_code: "USD".into(),
        amount_minor,
    })
}

fn address() -> Option<Address> {
    Some(Address {
        recipient_name: "Ada".into(),
        line1: "1 Main St".into(),
        city: "Springfield".into(),
        postal_code: "12345".into(),
        country_code: "US".into(),
        ..Default::default()
    })
}

#[tokio::test]
async fn an_order_is_stored_pending_with_its_total_and_a_retried_create_returns_the_same_order() {
    let env = TestEnv::new();
    let order = env.start(ServiceName::Order).await;
    let mut c = OrderServiceClient::new(order.channel().await);
    let request = CreateOrderRequest {
        request_id: "checkout-42".into(),
        customer_id: "cust-1".into(),
        lines: vec![
            OrderLine {
                sku: "LAPTOP".into(),
                quantity: 1,
                unit_price: usd(129_900),
            },
            OrderLine {
                sku: "MOUSE".into(),
                quantity: 2,
                unit_price: usd(2_500),
            },
        ],
        shipping_address: address(),
        shipping_method: 0,
        payment_token: "tok_visa".into(),
    };
    let first = c
        .create_order(request.clone())
        .await
        .expect("create")
        .into_inner();
    assert!(first.created);
    let created = first.order.expect("order");
    assert_eq!(created.status(), OrderStatus::Pending);
    assert_eq!(created.total, usd(134_900));
    assert_eq!(created.version, 1);

    let retry = c
        .create_order(request.clone())
        .await
        .expect("retry")
        .into_inner();
    assert!(!retry.created);
    assert_eq!(
        retry.order.map(|o| o.order_id),
        Some(created.order_id.clone())
    );

    let mut reused = request;
    reused.lines[0].quantity = 3;
    let status = c
        .create_order(reused)
        .await
        .expect_err("request id reused for another order");
    assert_eq!(status.code(), Code::FailedPrecondition);

    let got = c
        .get_order(GetOrderRequest {
            order_id: created.order_id.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.order.map(|o| o.lines.len()), Some(2));
    let listed = c
        .list_orders(ListOrdersRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.orders.len(), 1, "one order despite the retry");

    let db = env.db(ServiceName::Order).await;
    let events: Vec<(i64, String)> =
        sqlx::query_as("SELECT version, event_type FROM order_events ORDER BY version")
            .fetch_all(&db)
            .await
            .expect("events");
    assert_eq!(events, vec![(1, "submitted".to_string())]);
    let token_stored: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM order_events WHERE payload::text LIKE '%tok_visa%')",
    )
    .fetch_one(&db)
    .await
    .expect("query");
    assert!(
        !token_stored,
        "the payment token is never part of the order's events"
    );
}

#[tokio::test]
async fn finished_orders_are_served_from_redis_and_everything_works_without_redis() {
    let env = TestEnv::new();
    let mesh = env.start_mesh().await;
    let mut inventory =
        InventoryServiceClient::new(mesh.get(ServiceName::Inventory).channel().await);
    common::saga::stock(&mut inventory, "MOUSE", 10).await;
    let mut c = OrderServiceClient::new(mesh.get(ServiceName::Order).channel().await);
    let created = c
        .create_order(order_request("cached"))
        .await
        .expect("create")
        .into_inner()
        .order
        .expect("order");
    let (_, done) = common::saga::watch_to_end(
        &mut c,
        &created.order_id,
        std::time::Duration::from_secs(60),
    )
    .await;
    let got = c
        .get_order(GetOrderRequest {
            order_id: created.order_id.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.order.as_ref(), Some(&done));
    let redis = redis::Client::open("redis://127.0.0.1:6379").expect("redis url");
    let mut redis = redis
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let key = format!("{}:order:{}", env.namespace, created.order_id);
    let cached: Option<Vec<u8>> = redis::AsyncCommands::get(&mut redis, &key)
        .await
        .expect("redis get");
    assert!(cached.is_some(), "GetOrder cached the finished order");
    let _: () = redis::AsyncCommands::del(&mut redis, &key)
        .await
        .expect("del");
    drop(mesh);

    // Redis down for the whole run: orders still complete and reads stay correct.
    let no_redis = format!("redis://127.0.0.1:{}", common::free_port().await);
    let mesh = env
        .start_mesh_with(&[("ORDERMESH_REDIS__URL", no_redis.as_str())])
        .await;
    let mut c = OrderServiceClient::new(mesh.get(ServiceName::Order).channel().await);
    let other = c
        .create_order(order_request("no-cache"))
        .await
        .expect("create without redis")
        .into_inner()
        .order
        .expect("order");
    let (_, done) =
        common::saga::watch_to_end(&mut c, &other.order_id, std::time::Duration::from_secs(60))
            .await;
    assert_eq!(
        done.status(),
        OrderStatus::Confirmed,
        "{}",
        done.failure_reason
    );
    for id in [&created.order_id, &other.order_id] {
        let got = c
            .get_order(GetOrderRequest {
                order_id: id.clone(),
            })
            .await
            .expect("get without redis")
            .into_inner();
        assert_eq!(
            got.order
                .map(|o| (o.status(), o.order_id))
                .map(|(s, id)| (id, s)),
            Some((id.clone(), OrderStatus::Confirmed))
        );
    }
}

fn order_request(request_id: &str) -> CreateOrderRequest {
    CreateOrderRequest {
        request_id: request_id.into(),
        customer_id: "cust-2".into(),
        lines: vec![OrderLine {
            sku: "MOUSE".into(),
            quantity: 1,
            unit_price: usd(2_500),
        }],
        shipping_address: address(),
        shipping_method: 0,
        payment_token: "tok_visa".into(),
    }
}

fn charge(order_id: Uuid, amount: i64, token: &str) -> ChargeRequest {
    ChargeRequest {
        idempotency_key: format!("{order_id}:process-payment"),
        order_id: order_id.to_string(),
        amount: usd(amount),
        payment_token: token.into(),
        customer_id: "cust-1".into(),
    }
}

fn refund(order_id: Uuid, key: &str, amount: Option<i64>) -> RefundRequest {
    RefundRequest {
        idempotency_key: format!("{order_id}:{key}"),
        order_id: order_id.to_string(),
        amount: amount.and_then(usd),
        reason: "test".into(),
    }
}

#[tokio::test]
async fn payments_charge_once_decline_the_test_token_and_never_refund_more_than_charged() {
    let env = TestEnv::new();
    let payment = env.start(ServiceName::Payment).await;
    let mut c = PaymentServiceClient::new(payment.channel().await);

    let order = Uuid::now_v7();
    let first = c
        .charge(charge(order, 10_000, "tok_visa_4242"))
        .await
        .expect("charge");
    assert_eq!(
        first
            .metadata()
            .get("x-payment-version")
            .and_then(|v| v.to_str().ok()),
        Some("v1")
    );
    let first = first.into_inner().payment.expect("payment");
    assert_eq!(first.status(), PaymentStatus::Captured);
    assert_eq!(first.card_last4, "4242");
    let again = c
        .charge(charge(order, 10_000, "tok_visa_4242"))
        .await
        .expect("replay")
        .into_inner();
    assert_eq!(
        again.payment.as_ref().map(|p| &p.payment_id),
        Some(&first.payment_id),
        "charged once"
    );

    let partial = c
        .refund(refund(order, "refund-1", Some(4_000)))
        .await
        .expect("refund")
        .into_inner();
    assert_eq!(partial.refunded_now, usd(4_000));
    let too_much = c
        .refund(refund(order, "refund-2", Some(7_000)))
        .await
        .expect_err("over-refund");
    assert_eq!(too_much.code(), Code::FailedPrecondition);
    let euros = RefundRequest {
        amount: Some(Money {
            currency_code: "EUR".into(),
            amount_minor: 1_000,
        }),
        ..refund(order, "refund-eur", None)
    };
    let wrong_currency = c.refund(euros).await.expect_err("refund in euros");
    assert_eq!(wrong_currency.code(), Code::FailedPrecondition);
    assert!(
        wrong_currency.message().contains("charge made in USD"),
        "{}",
        wrong_currency.message()
    );
    let rest = c
        .refund(refund(order, "refund-3", None))
        .await
        .expect("refund rest")
        .into_inner();
    assert_eq!(rest.refunded_now, usd(6_000));
    assert_eq!(
        rest.payment.map(|p| p.status()),
        Some(PaymentStatus::Refunded)
    );
    let nothing_left = c
        .refund(refund(order, "refund-4", None))
        .await
        .expect("refund nothing")
        .into_inner();
    assert_eq!(nothing_left.refunded_now, usd(0));

    let declined = c
        .charge(charge(Uuid::now_v7(), 500, "declined_token"))
        .await
        .expect("decline")
        .into_inner();
    let declined = declined.payment.expect("payment");
    assert_eq!(declined.status(), PaymentStatus::Declined);
    assert!(declined.decline_reason.contains("declined"));

    // A compensation that ran before the charge arrived blocks the late charge.
    let cancelled = Uuid::now_v7();
    let early = c
        .refund(refund(cancelled, "refund-payment", None))
        .await
        .expect("refund first")
        .into_inner();
    assert!(early.payment.is_none());
    let late = c
        .charge(charge(cancelled, 1_000, "tok_visa"))
        .await
        .expect_err("late charge");
    assert_eq!(late.code(), Code::FailedPrecondition);

    let db = env.db(ServiceName::Payment).await;
    let stored_tokens: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM payments WHERE card_fingerprint LIKE '%tok%' OR card_last4 = 'visa'",
    )
    .fetch_one(&db)
    .await
    .expect("query");
    assert_eq!(stored_tokens, 0);
    let refunded: i64 =
        sqlx::query_scalar("SELECT coalesce(sum(amount_minor), 0)::bigint FROM refunds")
            .fetch_one(&db)
            .await
            .expect("sum");
    assert_eq!(refunded, 10_000, "refunds add up to exactly the charge");
}

/// Makes `call` until its answer is not "retry": what the saga itself does on
/// ABORTED (a conflict with a concurrent call).
async fn until_settled<T, F, Fut>(mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    for _ in 0..20 {
        match call().await {
            Err(status) if status.code() == Code::Aborted => continue,
            other => return other.map(tonic::Response::into_inner),
        }
    }
    Err(tonic::Status::aborted(
        "still conflicting after 20 attempts",
    ))
}

#[tokio::test]
async fn a_refund_racing_a_charge_never_leaves_money_taken() {
    let env = TestEnv::new();
    let payment = env.start(ServiceName::Payment).await;
    let mut c = PaymentServiceClient::new(payment.channel().await);

    // Every order gets its Charge and its compensating Refund at the same moment; whichever
    // the database sees first, the order must end with nothing charged and unrefunded.
    let orders: Vec<Uuid> = (0..60).map(|_| Uuid::now_v7()).collect();
    let races = orders.iter().map(|&order| {
        let c = c.clone();
        async move {
            let charged = until_settled(|| {
                let mut c = c.clone();
                async move { c.charge(charge(order, 2_500, "tok_visa")).await }
            });
            let refunded = until_settled(|| {
                let mut c = c.clone();
                async move { c.refund(refund(order, "refund-payment", None)).await }
            });
            let (charged, refunded) = tokio::join!(charged, refunded);
            (order, charged, refunded.expect("a refund always settles"))
        }
    });
    let mut refused = 0;
    for (order, charged, refunded) in futures::future::join_all(races).await {
        let stored = c
            .get_payment(GetPaymentRequest {
                order_id: order.to_string(),
            })
            .await;
        match charged {
            Ok(_) => {
                assert_eq!(
                    refunded.refunded_now,
                    usd(2_500),
                    "order {order}: the charge won, so the refund returned all of it"
                );
                let stored = stored.expect("the payment").into_inner().payment;
                assert_eq!(stored.map(|p| p.status()), Some(PaymentStatus::Refunded));
            }
            Err(status) => {
                assert_eq!(
                    status.code(),
                    Code::FailedPrecondition,
                    "order {order}: {status:?}"
                );
                assert!(
                    refunded.payment.is_none(),
                    "order {order}: nothing to refund"
                );
                let missing = stored.expect_err("a blocked order has no payment");
                assert_eq!(missing.code(), Code::NotFound);
                refused += 1;
            }
        }
    }

    let db = env.db(ServiceName::Payment).await;
    let left_charged: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(amount_minor - refunded_minor), 0)::bigint FROM payments
         WHERE status <> 'PAYMENT_STATUS_DECLINED'",
    )
    .fetch_one(&db)
    .await
    .expect("sum");
    assert_eq!(left_charged, 0, "no order keeps money nobody will refund");
    let settled: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM payments) + (SELECT count(*) FROM payment_blocks)",
    )
    .fetch_one(&db)
    .await
    .expect("count");
    assert_eq!(settled, 60, "every order has its payment or its block");
    eprintln!("{refused} of 60 charges lost the race to their refund");
}

#[tokio::test]
async fn the_v2_canary_declines_charges_above_its_risk_limit_and_says_so() {
    let env = TestEnv::new();
    let v2 = [("ORDERMESH_PAYMENT__VERSION".to_string(), "v2".to_string())];
    let payment = env.spawn(ServiceName::Payment, &v2).await;
    payment.wait_serving().await;
    let mut c = PaymentServiceClient::new(payment.channel().await);
    let big = c
        .charge(charge(Uuid::now_v7(), 600_000, "tok_visa"))
        .await
        .expect("charge");
    assert_eq!(
        big.metadata()
            .get("x-payment-version")
            .and_then(|v| v.to_str().ok()),
        Some("v2")
    );
    let big = big.into_inner().payment.expect("payment");
    assert_eq!(
        (big.status(), big.processor_version.as_str()),
        (PaymentStatus::Declined, "v2")
    );
    let small = c
        .charge(charge(Uuid::now_v7(), 1_000, "tok_visa"))
        .await
        .expect("charge")
        .into_inner();
    assert_eq!(
        small.payment.map(|p| p.status()),
        Some(PaymentStatus::Captured)
    );
}

#[tokio::test]
async fn a_bad_payment_version_fails_start_up_naming_the_variable() {
    let env = TestEnv::new();
    let bad = [("ORDERMESH_PAYMENT__VERSION".to_string(), "v9".to_string())];
    let output = std::process::Command::new(common::binary("ordermesh-payment"))
        .envs(env.env())
        .envs(bad)
        .output()
        .expect("run payment");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("ORDERMESH_PAYMENT__VERSION"), "{stderr}");
}

#[tokio::test]
async fn labels_are_created_once_and_a_cancel_before_create_blocks_a_late_label() {
    let env = TestEnv::new();
    let shipping = env.start(ServiceName::Shipping).await;
    let mut c = ShippingServiceClient::new(shipping.channel().await);
    let create = |order_id: Uuid| CreateLabelRequest {
        idempotency_key: format!("{order_id}:create-label"),
        order_id: order_id.to_string(),
        address: address(),
        service_level: "express".into(),
        units: 3,
    };
    let cancel = |order_id: Uuid| CancelLabelRequest {
        idempotency_key: format!("{order_id}:cancel-label"),
        order_id: order_id.to_string(),
        reason: "order cancelled".into(),
    };

    let order = Uuid::now_v7();
    let label = c
        .create_label(create(order))
        .await
        .expect("create")
        .into_inner()
        .label
        .expect("label");
    assert!(
        label.tracking_number.starts_with("OM") && label.tracking_number.len() == 18,
        "{}",
        label.tracking_number
    );
    let again = c
        .create_label(create(order))
        .await
        .expect("replay")
        .into_inner()
        .label
        .expect("label");
    assert_eq!(again.tracking_number, label.tracking_number);
    let cancelled = c
        .cancel_label(cancel(order))
        .await
        .expect("cancel")
        .into_inner();
    assert!(cancelled.cancelled);
    assert_eq!(
        cancelled.label.map(|l| l.status()),
        Some(LabelStatus::Cancelled)
    );

    let gave_up = Uuid::now_v7();
    assert!(
        !c.cancel_label(cancel(gave_up))
            .await
            .expect("cancel first")
            .into_inner()
            .cancelled
    );
    let late = c
        .create_label(create(gave_up))
        .await
        .expect_err("late label");
    assert_eq!(late.code(), Code::FailedPrecondition);

    let db = env.db(ServiceName::Shipping).await;
    let labels: i64 =
        sqlx::query_scalar("SELECT count(*) FROM labels WHERE status = 'LABEL_STATUS_CREATED'")
            .fetch_one(&db)
            .await
            .expect("count");
    assert_eq!(labels, 0);
}

/// Notification records events in batches (one statement per batch): every outcome event is
/// notified exactly once even when it arrives twice, in the same batch or a later one, and an
/// undecodable message in the middle neither stops the batch nor gets a notification.
#[tokio::test]
async fn each_outcome_event_is_notified_once_however_often_and_however_batched_it_arrives() {
    let env = TestEnv::new();
    let _notification = env.start(ServiceName::Notification).await;
    let client = async_nats::connect(common::nats_url())
        .await
        .expect("connect to NATS");
    let js = async_nats::jetstream::new(client);
    let names = ordermesh::nats::Names::new(&env.namespace);
    let events: Vec<OrderOutcome> = (0..60)
        .map(|i| {
            let cancelled = i % 4 == 0;
            OrderOutcome {
                event_id: Uuid::now_v7(),
                order_id: Uuid::now_v7(),
                kind: if cancelled {
                    OutcomeKind::Cancelled
                } else {
                    OutcomeKind::Confirmed
                },
                confirmation_number: if cancelled {
                    String::new()
                } else {
                    format!("ORD-20261202-{i:08}")
                },
                reason: if cancelled {
                    "out of stock".into()
                } else {
                    String::new()
                },
            }
        })
        .collect();
    // Each event twice, without a Nats-Msg-Id (so JetStream keeps both copies): the first
    // copies back to back, then garbage, then every copy again, half of them right after.
    let mut payloads: Vec<(String, Vec<u8>)> = Vec::new();
    for event in &events {
        let subject = names.order_event_subject(event.kind.subject_token());
        payloads.push((subject, serde_json::to_vec(event).expect("encode")));
    }
    let mut sends = payloads.clone();
    sends.push((
        names.order_event_subject("confirmed"),
        b"{not json".to_vec(),
    ));
    sends.extend(payloads.iter().rev().cloned());
    for (subject, payload) in sends {
        js.publish(subject, payload.into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }

    let db = env.db(ServiceName::Notification).await;
    let stream = js
        .get_stream(names.order_events_stream())
        .await
        .expect("order events stream");
    let mut drained = false;
    for _ in 0..100 {
        let info = stream
            .consumer_info("notification")
            .await
            .expect("consumer");
        drained = info.num_pending == 0 && info.num_ack_pending == 0;
        if drained {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        drained,
        "every message, the garbage included, was acked or terminated"
    );
    let rows: Vec<(Uuid, String, String)> = sqlx::query_as(
        "SELECT event_id, kind, message FROM notifications ORDER BY notification_id",
    )
    .fetch_all(&db)
    .await
    .expect("notifications");
    assert_eq!(rows.len(), events.len(), "one notification per event");
    for (event, (event_id, kind, message)) in events.iter().zip(&rows) {
        assert_eq!(*event_id, event.event_id, "notified in order of arrival");
        match event.kind {
            OutcomeKind::Confirmed => {
                assert_eq!(kind, "NOTIFICATION_KIND_ORDER_CONFIRMED");
                assert!(message.contains(&event.confirmation_number), "{message}");
            }
            OutcomeKind::Cancelled => {
                assert_eq!(kind, "NOTIFICATION_KIND_ORDER_CANCELLED");
                assert!(message.contains("out of stock"), "{message}");
            }
        }
    }
}

/// Idempotency keys older than the retention are pruned in batches; fresher ones stay and a
/// retry with one still gets the stored answer.
#[tokio::test]
async fn expired_idempotency_keys_are_pruned_and_fresh_ones_still_answer_retries() {
    let env = TestEnv::new();
    let settings = [
        ("ORDERMESH_RETENTION__KEEP", "1h"),
        ("ORDERMESH_RETENTION__EVERY", "200ms"),
        ("ORDERMESH_RETENTION__BATCH", "2"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    let payment = env.spawn(ServiceName::Payment, &settings).await;
    payment.wait_serving().await;
    let mut c = PaymentServiceClient::new(payment.channel().await);
    let orders: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
    let mut paid = Vec::new();
    for order in &orders {
        let p = c
            .charge(charge(*order, 1_000, "tok_visa"))
            .await
            .expect("charge")
            .into_inner()
            .payment
            .expect("payment");
        paid.push(p.payment_id);
    }
    let db = env.db(ServiceName::Payment).await;
    // Three keys from two hours ago: past the one-hour retention.
    sqlx::query(
        "UPDATE idempotency_keys SET created_at = now() - interval '2 hours' WHERE key = ANY($1)",
    )
    .bind(
        orders[..3]
            .iter()
            .map(|o| format!("{o}:process-payment"))
            .collect::<Vec<_>>(),
    )
    .execute(&db)
    .await
    .expect("age keys");
    let mut left: Vec<String> = Vec::new();
    for _ in 0..150 {
        left = sqlx::query_scalar("SELECT key FROM idempotency_keys ORDER BY key")
            .fetch_all(&db)
            .await
            .expect("keys");
        if left.len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut fresh: Vec<String> = orders[3..]
        .iter()
        .map(|o| format!("{o}:process-payment"))
        .collect();
    fresh.sort();
    assert_eq!(left, fresh, "only the expired keys are pruned");
    let replay = c
        .charge(charge(orders[4], 1_000, "tok_visa"))
        .await
        .expect("retry inside the window")
        .into_inner()
        .payment
        .expect("payment");
    assert_eq!(
        replay.payment_id, paid[4],
        "answered from the stored response"
    );
    let metrics = common::http_get(payment.admin_addr, "/metrics")
        .await
        .expect("metrics")
        .1;
    assert!(
        metrics.contains("retention_pruned_rows_total{table=\"idempotency_keys\"} 3"),
        "{metrics}"
    );
}

/// Each service's migrations create `idempotency_keys` themselves (applied migrations cannot
/// move, see `ordermesh::idempotency::TABLE_SQL`): this holds all four to the platform's
/// definition, column by column and by primary key, so the shared code never meets a drifted
/// table.
#[tokio::test]
async fn every_service_keeps_idempotency_keys_as_the_platform_defines_it() {
    let env = TestEnv::new();
    let callees = [
        ServiceName::Order,
        ServiceName::Inventory,
        ServiceName::Payment,
        ServiceName::Shipping,
    ];
    let mut running = Vec::new();
    for service in callees {
        running.push(env.spawn(service, &[]).await);
    }
    for process in &running {
        process.wait_serving().await;
    }
    for service in callees {
        let db = env.db(service).await;
        let mut conn = db.acquire().await.expect("connection");
        sqlx::query("CREATE SCHEMA platform_definition")
            .execute(&mut *conn)
            .await
            .expect("scratch schema");
        sqlx::query("SET search_path = platform_definition")
            .execute(&mut *conn)
            .await
            .expect("search path");
        sqlx::query(ordermesh::idempotency::TABLE_SQL)
            .execute(&mut *conn)
            .await
            .expect("the platform's table");
        let mut shapes = Vec::new();
        for schema in ["public", "platform_definition"] {
            let columns: Vec<(String, String, String, String)> = sqlx::query_as(
                "SELECT column_name::text, data_type::text, is_nullable::text,
                        coalesce(column_default, '')::text
                 FROM information_schema.columns
                 WHERE table_schema = $1 AND table_name = 'idempotency_keys'
                 ORDER BY ordinal_position",
            )
            .bind(schema)
            .fetch_all(&mut *conn)
            .await
            .expect("columns");
            let key: Vec<String> = sqlx::query_scalar(
                "SELECT a.attname::text FROM pg_index i
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
                 WHERE i.indrelid = ($1 || '.idempotency_keys')::regclass AND i.indisprimary",
            )
            .bind(schema)
            .fetch_all(&mut *conn)
            .await
            .expect("primary key");
            assert!(
                !columns.is_empty(),
                "{service}: no idempotency_keys in {schema}"
            );
            shapes.push((columns, key));
        }
        assert_eq!(shapes[0], shapes[1], "{service}'s table drifted");
    }
}
