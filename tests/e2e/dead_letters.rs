//! A step that keeps failing is dead-lettered with its payload and its saga parked (not
//! compensated, not silently stuck); after the cause is fixed, `ordermesh dlq redrive` completes
//! the saga exactly once. An undecodable message lands in the dead-letter stream with its payload.

use crate::common;

use std::time::Duration;

use common::{
    TestEnv, ordermesh,
    saga::{place, stock, watch_to_end},
};
use ordermesh::{
    config::ServiceName,
    proto::{
        inventory::inventory_service_client::InventoryServiceClient,
        order::{GetSagaTimelineRequest, OrderStatus, order_service_client::OrderServiceClient},
    },
};

#[tokio::test]
async fn a_dead_lettered_step_parks_its_saga_until_redrive_completes_it_once() {
    let env = TestEnv::new();
    let settings = [
        ("ORDERMESH_SAGA__MAX_DELIVER", "3"),
        ("ORDERMESH_SAGA__RETRY_BACKOFF", "200ms"),
        ("ORDERMESH_CLIENT__TIMEOUT", "1s"),
    ];
    let mut mesh = env.start_mesh_with(&settings).await;
    let inventory_addr = mesh.get(ServiceName::Inventory).grpc_addr;
    mesh.kill(ServiceName::Inventory);
    let mut orders = OrderServiceClient::new(mesh.get(ServiceName::Order).channel().await);
    let created = place(&mut orders, &[("MOUSE", 1, 2_500)], "tok_visa").await;

    let mut parked = None;
    for _ in 0..100 {
        let t = orders
            .get_saga_timeline(GetSagaTimelineRequest {
                order_id: created.order_id.clone(),
            })
            .await
            .expect("timeline")
            .into_inner();
        if t.parked {
            parked = Some(t);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let parked = parked.expect("the saga is parked after 3 failed deliveries");
    assert!(
        parked
            .failure_reason
            .contains("dead-lettered after 3 attempts"),
        "{}",
        parked.failure_reason
    );
    assert_eq!(
        parked.order.map(|o| o.status()),
        Some(OrderStatus::Pending),
        "nothing was compensated"
    );

    // A message nobody can decode goes to the dead-letter stream as it is.
    let client = async_nats::connect(common::nats_url()).await.expect("nats");
    let js = async_nats::jetstream::new(client);
    let subject = format!("{}.saga.run", env.namespace);
    js.publish(subject, "{not json".into())
        .await
        .expect("publish")
        .await
        .expect("ack");

    let mut listed = String::new();
    for _ in 0..50 {
        listed = ordermesh(&env, &["dlq", "list"]);
        if listed.lines().count() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 2, "{listed}");
    let saga_letter = lines
        .iter()
        .find(|l| l.contains(&created.order_id))
        .expect("the order's dead letter");
    assert!(saga_letter.contains("deliveries 3"), "{saga_letter}");
    let poison = lines
        .iter()
        .find(|l| l.contains("undecodable"))
        .expect("the poison message");
    let poison_seq = poison.split_whitespace().next().expect("sequence");
    assert!(ordermesh(&env, &["dlq", "show", poison_seq]).contains("payload   {not json"));

    // Fix the cause, then redrive the order's message (twice: the second finds nothing).
    mesh.restart(&env, ServiceName::Inventory, inventory_addr)
        .await;
    let mut inventory =
        InventoryServiceClient::new(mesh.get(ServiceName::Inventory).channel().await);
    stock(&mut inventory, "MOUSE", 5).await;
    // The explorer's Attention page names the parked saga and the exact command that resumes
    // it: run that command as shown (twice: the second finds nothing).
    let seq = saga_letter.split_whitespace().next().expect("sequence");
    let admin = mesh.get(ServiceName::Order).admin_addr;
    let (_, attention) = common::http_get(admin, "/ui/attention")
        .await
        .expect("attention page");
    let row = attention
        .split("<tr ")
        .find(|r| r.contains(&format!("id=\"stuck-{}\"", created.order_id)))
        .unwrap_or_else(|| panic!("the parked saga is in Attention: {attention}"));
    let command = row
        .split("data-copy=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a redrive command to copy");
    assert_eq!(
        command,
        format!("ordermesh dlq redrive --namespace {} {seq}", env.namespace)
    );
    let args: Vec<&str> = command.split_whitespace().skip(1).collect();
    assert!(ordermesh(&env, &args).contains("redriven"));
    assert!(ordermesh(&env, &args).contains("not in the dead-letter stream"));

    let (_, done) = watch_to_end(&mut orders, &created.order_id, Duration::from_secs(60)).await;
    assert_eq!(
        done.status(),
        OrderStatus::Confirmed,
        "{}",
        done.failure_reason
    );
    let payments = env.db(ServiceName::Payment).await;
    let charged: i64 = sqlx::query_scalar("SELECT count(*) FROM payments")
        .fetch_one(&payments)
        .await
        .expect("count");
    assert_eq!(charged, 1, "the redriven saga ran once");
    assert!(
        ordermesh(&env, &["dlq", "list"]).contains("undecodable"),
        "the poison message stays for inspection"
    );
}
