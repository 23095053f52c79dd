//! The order service's HTTP/JSON surface: same validation and errors as gRPC, on the gRPC port.

use crate::common;

use common::{TestEnv, http_request};
use ordermesh::config::ServiceName;
use serde_json::Value;

const ORDER: &str = r#"{"request_id":"web-1","customer_id":"cust-web",
  "lines":[{"sku":"MOUSE","quantity":2,"unit_price":{"currency_code":"USD","amount_minor":2500}}],
  "shipping_address":{"recipient_name":"Ada","line1":"1 Main St","city":"Springfield","postal_code":"12345","country_code":"US"},
  "shipping_method":"express","payment_token":"tok_visa"}"#;

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[tokio::test]
async fn orders_are_created_and_read_over_http_with_grpc_validation() {
    let env = TestEnv::new();
    let order = env.start(ServiceName::Order).await;
    let addr = order.grpc_addr;

    let (status, body) = http_request(addr, "POST", "/api/v1/orders", Some(ORDER))
        .await
        .expect("POST");
    assert_eq!(status, 201, "{body}");
    let created = json(&body);
    assert_eq!(created["status"], "PENDING");
    assert_eq!(created["total"]["amount_minor"], 5000);
    assert_eq!(created["shipping_method"], "express");
    let id = created["order_id"].as_str().expect("order_id").to_string();

    let (status, body) = http_request(addr, "POST", "/api/v1/orders", Some(ORDER))
        .await
        .expect("retry");
    assert_eq!(status, 200, "a retried request id returns the first order");
    assert_eq!(json(&body)["order_id"], id.as_str());

    let (status, body) = http_request(addr, "GET", &format!("/api/v1/orders/{id}"), None)
        .await
        .expect("GET");
    assert_eq!(status, 200);
    assert_eq!(json(&body)["customer_id"], "cust-web");

    let (status, body) = http_request(
        addr,
        "GET",
        "/api/v1/orders/0192f0c1-7d3e-7a10-8000-000000000001",
        None,
    )
    .await
    .expect("GET");
    assert_eq!(
        (status, json(&body)["error"]["code"].clone()),
        (404, Value::from("NOT_FOUND"))
    );
    let (status, body) = http_request(addr, "GET", "/api/v1/orders/not-a-uuid", None)
        .await
        .expect("GET");
    assert_eq!(status, 400);
    assert_eq!(
        json(&body)["error"]["field_violations"][0]["field"],
        "order_id"
    );

    let bad = r#"{"customer_id":"c","lines":[{"sku":"","quantity":0}],"payment_token":"t"}"#;
    let (status, body) = http_request(addr, "POST", "/api/v1/orders", Some(bad))
        .await
        .expect("POST bad");
    assert_eq!(status, 400);
    let fields: Vec<String> = json(&body)["error"]["field_violations"]
        .as_array()
        .expect("violations")
        .iter()
        .map(|v| v["field"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        fields,
        vec!["lines[0].sku", "lines[0].quantity", "shipping_address"]
    );
    let (status, body) = http_request(addr, "POST", "/api/v1/orders", Some("{\"nope\":1}"))
        .await
        .expect("POST unknown field");
    assert_eq!(status, 400);
    assert!(
        json(&body)["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("unknown field `nope`")
    );
    let huge = format!("{{\"customer_id\":\"{}\"}}", "x".repeat(300 * 1024));
    let (status, _) = http_request(addr, "POST", "/api/v1/orders", Some(&huge))
        .await
        .expect("POST huge");
    assert_eq!(status, 413, "bodies over the limit are refused");

    let db = env.db(ServiceName::Order).await;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM order_view")
        .fetch_one(&db)
        .await
        .expect("count");
    assert_eq!(stored, 1, "only the valid order was stored");
}
