//! Helpers for saga tests: placing orders and waiting for their outcome through WatchOrder.

use std::time::Duration;

use futures::StreamExt;
use ordermesh::proto::{
    common::{Address, Money},
    inventory::{
        GetItemRequest, UpsertItemRequest, inventory_service_client::InventoryServiceClient,
    },
    order::{
        CreateOrderRequest, GetOrderRequest, Order, OrderLine, OrderStatus, WatchOrderRequest,
        order_service_client::OrderServiceClient,
    },
};
use tonic::transport::Channel;

/// The saga's forward steps by wire name, in order (what a confirmed order's timeline shows).
pub const FORWARD_STEPS: [&str; 4] = [
    "reserve-inventory",
    "process-payment",
    "create-shipping-label",
    "confirm-order",
];

pub fn order(lines: &[(&str, i64, i64)], token: &str) -> CreateOrderRequest {
    CreateOrderRequest {
        request_id: String::new(),
        customer_id: "cust-saga".into(),
        lines: lines
            .iter()
            .map(|(sku, quantity, price)| OrderLine {
                sku: sku.to_string(),
                quantity: *quantity,
                unit_price: Some(Money {
                    currency_code: "USD".into(),
                    amount_minor: *price,
                }),
            })
            .collect(),
        shipping_address: Some(Address {
            recipient_name: "Ada Lovelace".into(),
            line1: "12 Analytical Row".into(),
            city: "London".into(),
            postal_code: "N1 9GU".into(),
            country_code: "GB".into(),
            ..Default::default()
        }),
        shipping_method: 0,
        payment_token: token.into(),
    }
}

/// Places an order and returns it as stored (status PENDING).
pub async fn place(
    client: &mut OrderServiceClient<Channel>,
    lines: &[(&str, i64, i64)],
    token: &str,
) -> Order {
    place_with(client, lines, token, &[]).await
}

/// [`place`] with request metadata, e.g. `x-version` or `traceparent`.
pub async fn place_with(
    client: &mut OrderServiceClient<Channel>,
    lines: &[(&str, i64, i64)],
    token: &str,
    metadata: &[(&'static str, &str)],
) -> Order {
    let mut request = tonic::Request::new(order(lines, token));
    for (name, value) in metadata {
        request
            .metadata_mut()
            .insert(*name, value.parse().expect("metadata value"));
    }
    client
        .create_order(request)
        .await
        .expect("create order")
        .into_inner()
        .order
        .expect("order in the response")
}

pub async fn stock(inventory: &mut InventoryServiceClient<Channel>, sku: &str, available: i64) {
    inventory
        .upsert_item(UpsertItemRequest {
            sku: sku.into(),
            name: sku.into(),
            available,
        })
        .await
        .expect("set stock");
}

/// Follows WatchOrder until the order is terminal; returns every status seen and the last order.
pub async fn watch_to_end(
    client: &mut OrderServiceClient<Channel>,
    order_id: &str,
    limit: Duration,
) -> (Vec<OrderStatus>, Order) {
    let mut stream = client
        .watch_order(WatchOrderRequest {
            order_id: order_id.into(),
        })
        .await
        .expect("watch order")
        .into_inner();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let next = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| {
                panic!("order {order_id} not terminal within {limit:?}; saw {seen:?}")
            });
        let order = next
            .expect("stream ended before a terminal status")
            .expect("watch item")
            .order
            .expect("order");
        seen.push(order.status());
        if order.status().is_terminal() {
            return (seen, order);
        }
    }
}

/// An item's (available, reserved, committed).
pub async fn item(c: &mut InventoryServiceClient<Channel>, sku: &str) -> (i64, i64, i64) {
    let i = c
        .get_item(GetItemRequest { sku: sku.into() })
        .await
        .expect("item")
        .into_inner()
        .item
        .expect("item");
    (i.available, i.reserved, i.committed)
}

/// Polls GetOrder until the order shows `want` (a minute at most).
pub async fn wait_for(c: &mut OrderServiceClient<Channel>, order_id: &str, want: OrderStatus) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let now = c
            .get_order(GetOrderRequest {
                order_id: order_id.into(),
            })
            .await
            .expect("get order")
            .into_inner()
            .order
            .expect("order")
            .status();
        if now == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{order_id} is {now:?}, never {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
