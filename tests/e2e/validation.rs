//! Bad input gets INVALID_ARGUMENT (RESOURCE_EXHAUSTED for oversized messages) naming the
//! field, and nothing is written.

use crate::common;

use common::TestEnv;
use ordermesh::{
    config::ServiceName,
    proto::{
        common::{Address, Money},
        inventory::{
            ReservationLine, ReserveRequest, UpsertItemRequest,
            inventory_service_client::InventoryServiceClient,
        },
        order::{
            CreateOrderRequest, ListOrdersRequest, OrderLine,
            order_service_client::OrderServiceClient,
        },
    },
    validation::field_violations,
};
use tonic::Code;
use uuid::Uuid;

fn fields(status: &tonic::Status) -> Vec<String> {
    field_violations(status)
        .into_iter()
        .map(|(field, _)| field)
        .collect()
}

async fn count(pool: &sqlx::PgPool, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(pool)
        .await
        .expect("count")
}

fn reserve(lines: Vec<ReservationLine>) -> ReserveRequest {
    let order_id = Uuid::now_v7();
    ReserveRequest {
        idempotency_key: format!("{order_id}:reserve"),
        order_id: order_id.to_string(),
        lines,
    }
}

fn line(sku: &str, quantity: i64) -> ReservationLine {
    ReservationLine {
        sku: sku.into(),
        quantity,
    }
}

#[tokio::test]
async fn bad_reservations_name_the_field_and_write_nothing() {
    let env = TestEnv::new();
    let inventory = env.start(ServiceName::Inventory).await;
    let mut c = InventoryServiceClient::new(inventory.channel().await);
    c.upsert_item(UpsertItemRequest {
        sku: "MOUSE".into(),
        name: "Mouse".into(),
        available: 5,
    })
    .await
    .expect("seed");

    let cases: Vec<(ReserveRequest, Vec<&str>)> = vec![
        (reserve(vec![line("", 1)]), vec!["lines[0].sku"]),
        (reserve(vec![line("MOUSE", 0)]), vec!["lines[0].quantity"]),
        (reserve(vec![line("MOUSE", -3)]), vec!["lines[0].quantity"]),
        (
            reserve(vec![line("MOUSE", 1), line("MOUSE", 1)]),
            vec!["lines[1].sku"],
        ),
        (
            reserve((0..10_000).map(|i| line(&format!("SKU-{i}"), 1)).collect()),
            vec!["lines"],
        ),
        (reserve(vec![]), vec!["lines"]),
        (
            ReserveRequest {
                idempotency_key: String::new(),
                order_id: "not-a-uuid".into(),
                lines: vec![line("MOUSE", 1)],
            },
            vec!["idempotency_key", "order_id"],
        ),
    ];
    for (request, expected) in cases {
        let status = c.reserve(request).await.expect_err("invalid request");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(fields(&status), expected, "{}", status.message());
    }
    let bad_item = c
        .upsert_item(UpsertItemRequest {
            sku: "has space".into(),
            name: String::new(),
            available: -1,
        })
        .await
        .expect_err("bad item");
    assert_eq!(fields(&bad_item), vec!["sku", "name", "available"]);

    let db = env.db(ServiceName::Inventory).await;
    assert_eq!(count(&db, "reservations").await, 0);
    assert_eq!(count(&db, "idempotency_keys").await, 0);
    let stock: i64 = sqlx::query_scalar("SELECT available FROM items WHERE sku = 'MOUSE'")
        .fetch_one(&db)
        .await
        .expect("stock");
    assert_eq!(stock, 5);
    assert_eq!(count(&db, "items").await, 1);
}

#[tokio::test]
async fn a_ten_megabyte_message_is_resource_exhausted() {
    let env = TestEnv::new();
    let inventory = env.start(ServiceName::Inventory).await;
    let mut c = InventoryServiceClient::new(inventory.channel().await);
    let huge = UpsertItemRequest {
        sku: "BIG".into(),
        name: "x".repeat(10 * 1024 * 1024),
        available: 1,
    };
    let status = c.upsert_item(huge).await.expect_err("too large");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let db = env.db(ServiceName::Inventory).await;
    assert_eq!(count(&db, "items").await, 0);
}

fn valid_order() -> CreateOrderRequest {
    let usd = |amount_minor| {
        Some(Money {
            currency_code: "USD".into(),
            amount_minor,
        })
    };
    CreateOrderRequest {
        request_id: String::new(),
        customer_id: "cust-1".into(),
        lines: vec![OrderLine {
            sku: "LAPTOP".into(),
            quantity: 1,
            unit_price: usd(129_900),
        }],
        shipping_address: Some(Address {
            recipient_name: "Ada".into(),
            line1: "1 Main St".into(),
            city: "Springfield".into(),
            postal_code: "12345".into(),
            country_code: "US".into(),
            ..Default::default()
        }),
        shipping_method: 0,
        payment_token: "tok_visa".into(),
    }
}

#[tokio::test]
async fn bad_orders_name_the_field_and_store_nothing() {
    let env = TestEnv::new();
    let order = env.start(ServiceName::Order).await;
    let mut c = OrderServiceClient::new(order.channel().await);

    let mut unknown_enum = valid_order();
    unknown_enum.shipping_method = 99;
    let mut empty_sku = valid_order();
    empty_sku.lines[0].sku.clear();
    let mut zero_quantity = valid_order();
    zero_quantity.lines[0].quantity = 0;
    let mut too_many = valid_order();
    too_many.lines = (0..10_000)
        .map(|i| OrderLine {
            sku: format!("S{i}"),
            quantity: 1,
            unit_price: valid_order().lines[0].unit_price.clone(),
        })
        .collect();
    let mut no_price_no_token = valid_order();
    no_price_no_token.lines[0].unit_price = None;
    no_price_no_token.payment_token.clear();
    let mut no_address = valid_order();
    no_address.shipping_address = None;

    let cases = [
        (unknown_enum, vec!["shipping_method"]),
        (empty_sku, vec!["lines[0].sku"]),
        (zero_quantity, vec!["lines[0].quantity"]),
        (too_many, vec!["lines"]),
        (
            no_price_no_token,
            vec!["lines[0].unit_price", "payment_token"],
        ),
        (no_address, vec!["shipping_address"]),
    ];
    for (request, expected) in cases {
        let status = c.create_order(request).await.expect_err("invalid order");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(fields(&status), expected, "{}", status.message());
    }
    let status = c
        .list_orders(ListOrdersRequest {
            status: 42,
            ..Default::default()
        })
        .await
        .expect_err("unknown status filter");
    assert_eq!(fields(&status), vec!["status"]);

    let db = env.db(ServiceName::Order).await;
    assert_eq!(count(&db, "order_events").await, 0);
    assert_eq!(count(&db, "order_view").await, 0);
    assert_eq!(count(&db, "sagas").await, 0, "no saga started");
    assert_eq!(count(&db, "outbox").await, 0);
}

/// The order service alone, with one setting, and an order placed on it: with no callees its
/// saga cannot progress, so the order stays PENDING and a watch on it stays open.
async fn a_pending_order_on_a_lone_order_service(
    env: &TestEnv,
    variable: &str,
    value: &str,
) -> (
    common::ServiceProcess,
    OrderServiceClient<tonic::transport::Channel>,
    ordermesh::proto::order::Order,
) {
    let extra = [(variable.to_string(), value.to_string())];
    let order = env.spawn(ServiceName::Order, &extra).await;
    order.wait_serving().await;
    let mut orders = OrderServiceClient::new(order.channel().await);
    let created = common::saga::place(&mut orders, &[("LAPTOP", 1, 1_000)], "tok_visa").await;
    (order, orders, created)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_over_its_in_flight_allowance_is_refused_at_once_and_recovers() {
    let env = TestEnv::new();
    // Every WatchOrder stream stays open (in flight) until the client drops it.
    let (order, orders, created) = a_pending_order_on_a_lone_order_service(
        &env,
        "ORDERMESH_SERVER__MAX_IN_FLIGHT_PER_CLIENT",
        "3",
    )
    .await;
    let watch = || {
        let mut orders = orders.clone();
        let order_id = created.order_id.clone();
        async move {
            orders
                .watch_order(ordermesh::proto::order::WatchOrderRequest { order_id })
                .await
        }
    };
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(
            watch()
                .await
                .expect("a watch within the allowance")
                .into_inner(),
        );
    }
    let get = || {
        let mut orders = orders.clone();
        let order_id = created.order_id.clone();
        async move {
            orders
                .get_order(ordermesh::proto::order::GetOrderRequest { order_id })
                .await
        }
    };
    let refused = get().await.expect_err("over the allowance");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("3 calls in flight"),
        "{}",
        refused.message()
    );
    let refused = watch().await.expect_err("a fourth stream too");
    assert_eq!(refused.code(), Code::ResourceExhausted);

    // Closing one stream gives its slot back.
    drop(open.pop());
    let mut recovered = false;
    for _ in 0..50 {
        if get().await.is_ok() {
            recovered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(recovered, "the slot of a closed stream came back");
    let (_, metrics) = common::http_get(order.admin_addr, "/metrics")
        .await
        .expect("metrics");
    // Two refusals above, perhaps more while the closed stream's slot was being returned.
    let limited: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ordermesh_server_client_limited_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("counter exported");
    assert!(limited >= 2, "{limited} refusals counted");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_ends_with_deadline_exceeded_at_the_server_maximum_or_the_clients_deadline() {
    use futures::StreamExt;

    let env = TestEnv::new();
    // The order stays PENDING, so only the time limit can end a watch.
    let (_order, mut orders, created) = a_pending_order_on_a_lone_order_service(
        &env,
        "ORDERMESH_SERVER__MAX_REQUEST_DURATION",
        "1s",
    )
    .await;

    for client_deadline in [None, Some(std::time::Duration::from_millis(300))] {
        let mut request = tonic::Request::new(ordermesh::proto::order::WatchOrderRequest {
            order_id: created.order_id.clone(),
        });
        if let Some(deadline) = client_deadline {
            request.set_timeout(deadline);
        }
        let started = std::time::Instant::now();
        let mut stream = orders
            .watch_order(request)
            .await
            .expect("watch")
            .into_inner();
        let first = stream
            .next()
            .await
            .expect("first item")
            .expect("the current state");
        assert_eq!(
            first.order.map(|o| o.status()),
            Some(ordermesh::proto::order::OrderStatus::Pending)
        );
        let end = tokio::time::timeout(std::time::Duration::from_secs(10), stream.next())
            .await
            .expect("the server ends the watch by itself")
            .expect("an item")
            .expect_err("a status, not an update");
        assert_eq!(end.code(), Code::DeadlineExceeded, "{end:?}");
        assert!(end.message().contains("watch again"), "{}", end.message());
        let limit = client_deadline.unwrap_or(std::time::Duration::from_secs(1));
        assert!(
            started.elapsed() >= limit,
            "ended after {:?}, before the {limit:?} limit",
            started.elapsed()
        );
    }
}
