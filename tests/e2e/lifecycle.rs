//! Process lifecycle as Kubernetes drives it: a service started before its dependencies waits
//! NOT_SERVING instead of crash-looping, and SIGTERM reports NOT_SERVING first, lets in-flight
//! calls finish, then exits 0; a release rolled back after a migration starts against the newer
//! schema; a pooled connection that died while idle is replaced before use; a setting that
//! cannot work stops start-up with a message naming it.

use crate::common;

use std::{net::SocketAddr, time::Duration};

use common::{Forwarder, TestEnv, free_port, nats_url};
use nix::sys::signal::Signal;
use ordermesh::{
    config::ServiceName,
    proto::{
        inventory::{
            ReservationLine, ReserveOutcome, ReserveRequest, UpsertItemRequest,
            inventory_service_client::InventoryServiceClient,
        },
        order::{GetOrderRequest, order_service_client::OrderServiceClient},
    },
};
use tonic_health::pb::health_check_response::ServingStatus;
use uuid::Uuid;

#[tokio::test]
async fn sigterm_reports_not_serving_first_finishes_in_flight_calls_and_exits_zero() {
    let env = TestEnv::new();
    let delay = [("ORDERMESH_SHUTDOWN__DELAY".to_string(), "2s".to_string())];
    let mut inventory = env.spawn(ServiceName::Inventory, &delay).await;
    inventory.wait_serving().await;
    let mut client = InventoryServiceClient::new(inventory.channel().await);
    client
        .upsert_item(UpsertItemRequest {
            sku: "SLOW".into(),
            name: "Slow".into(),
            available: 3,
        })
        .await
        .expect("seed");

    // Hold the item's row lock so the next Reserve is provably in flight inside the service.
    let db = env.db(ServiceName::Inventory).await;
    let mut blocker = db.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM items WHERE sku = 'SLOW' FOR UPDATE")
        .execute(&mut *blocker)
        .await
        .expect("lock");
    let order_id = Uuid::now_v7();
    let in_flight = tokio::spawn(async move {
        client
            .reserve(ReserveRequest {
                idempotency_key: format!("{order_id}:reserve"),
                order_id: order_id.to_string(),
                lines: vec![ReservationLine {
                    sku: "SLOW".into(),
                    quantity: 1,
                }],
            })
            .await
    });
    wait_for_lock_waiter(&db).await;

    inventory.signal(Signal::SIGTERM);
    let mut saw_not_serving = false;
    for _ in 0..40 {
        if inventory.health().await == Some(ServingStatus::NotServing) {
            saw_not_serving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        saw_not_serving,
        "health must flip to NOT_SERVING while the process still serves"
    );
    assert_eq!(inventory.http_ready().await, Some(503));
    assert!(
        !in_flight.is_finished(),
        "the blocked call is still in flight"
    );

    // Past the delay the listener is closed; the in-flight call must still complete.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    blocker.rollback().await.expect("release the lock");
    let response = in_flight
        .await
        .expect("join")
        .expect("in-flight call completes")
        .into_inner();
    assert_eq!(response.outcome(), ReserveOutcome::Reserved);
    assert_eq!(
        inventory.wait_exit(Duration::from_secs(20)).await,
        Some(0),
        "graceful exit"
    );
}

async fn wait_for_lock_waiter(db: &sqlx::PgPool) {
    for _ in 0..200 {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(db)
        .await
        .expect("pg_stat_activity");
        if waiting > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the Reserve call never reached the database");
}

#[tokio::test]
async fn a_service_started_before_postgres_and_nats_waits_not_serving_then_serves() {
    let env = TestEnv::new();
    let (pg_port, nats_port) = (free_port().await, free_port().await);
    let unreachable = [
        (
            "ORDERMESH_DATABASE__URL".to_string(),
            format!("postgres://postgres@127.0.0.1:{pg_port}"),
        ),
        (
            "ORDERMESH_NATS__URL".to_string(),
            format!("nats://127.0.0.1:{nats_port}"),
        ),
    ];
    let mut order = env.spawn(ServiceName::Order, &unreachable).await;

    for _ in 0..3 {
        assert_eq!(order.health().await, Some(ServingStatus::NotServing));
        assert_eq!(order.http_ready().await, Some(503));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut client = OrderServiceClient::new(order.channel().await);
    let early = client
        .get_order(GetOrderRequest {
            order_id: Uuid::now_v7().to_string(),
        })
        .await
        .expect_err("not ready");
    assert_eq!(early.code(), tonic::Code::Unavailable);
    assert!(
        order.wait_exit(Duration::from_millis(10)).await.is_none(),
        "still running, not crash-looping"
    );

    // PostgreSQL comes up first: still waiting for NATS.
    let _pg = Forwarder::start(pg_port, "127.0.0.1:5432".parse().expect("addr")).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(order.health().await, Some(ServingStatus::NotServing));
    // Not ready, but alive: a liveness probe must not restart it while NATS is down.
    assert_eq!(
        order.health_of(ordermesh::server::LIVENESS).await,
        Some(ServingStatus::Serving)
    );

    let nats: SocketAddr = nats_url()
        .trim_start_matches("nats://")
        .parse()
        .expect("NATS address");
    let _nats = Forwarder::start(nats_port, nats).await;
    order.wait_serving().await;
    assert_eq!(order.http_ready().await, Some(200));
    let missing = client
        .get_order(GetOrderRequest {
            order_id: Uuid::now_v7().to_string(),
        })
        .await
        .expect_err("no such order");
    assert_eq!(
        missing.code(),
        tonic::Code::NotFound,
        "handlers work once ready"
    );
}

#[tokio::test]
async fn a_rolled_back_release_starts_against_the_schema_a_newer_one_migrated() {
    let env = TestEnv::new();
    let first = env.start(ServiceName::Inventory).await;
    drop(first);
    // What a newer release leaves behind: a migration this binary has never heard of.
    let db = env.db(ServiceName::Inventory).await;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (99990001, 'from a newer release', true, '\\x00', 1)",
    )
    .execute(&db)
    .await
    .expect("record a newer migration");

    let rolled_back = env.start(ServiceName::Inventory).await;
    let mut client = InventoryServiceClient::new(rolled_back.channel().await);
    let item = client
        .upsert_item(UpsertItemRequest {
            sku: "ROLLBACK-1".into(),
            name: "Rolled back".into(),
            available: 3,
        })
        .await
        .expect("the older binary serves")
        .into_inner();
    assert_eq!(item.item.map(|i| i.available), Some(3));
}

/// The pools hand out busy connections without a ping (a round trip per statement otherwise),
/// but one idle for a second or more is checked first: a connection whose backend went away
/// while it sat idle (PostgreSQL restarted, a proxy or `pg_terminate_backend` dropped it) is
/// replaced, not handed to a query that would fail on it.
#[tokio::test]
async fn an_idle_pooled_connection_whose_backend_died_is_replaced_before_use() {
    let env = TestEnv::new();
    let mut settings = ordermesh::config::Settings::defaults(ServiceName::Order).database;
    settings.max_connections = 1;
    // The order service's database name of this test, so the test's clean-up drops it.
    let name = format!("{}_{}", env.namespace, ServiceName::Order);
    let pool = ordermesh::db::connect(&settings, &name, &sqlx::migrate::Migrator::DEFAULT)
        .await
        .expect("pool");
    let backend = || sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()").fetch_one(&pool);
    let first = backend().await.expect("first query");

    let admin = sqlx::PgPool::connect(&format!("{}/postgres", common::PG_URL))
        .await
        .expect("admin connection");
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(first)
        .fetch_one(&admin)
        .await
        .expect("terminate");
    assert!(terminated);
    // Longer than the pool's ping threshold (`db::PING_IDLE_AFTER`, 1 s).
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let second = backend()
        .await
        .expect("the dead connection was replaced before the query ran");
    assert_ne!(second, first);
    pool.close().await;
}

/// A service's own section is read and validated before anything starts: a stall threshold
/// shorter than a legitimate wait (the 30 s backoff) stops the order service at once with a
/// message naming the variable, and it binds nothing.
#[test]
fn a_saga_setting_that_cannot_work_stops_start_up_naming_the_variable() {
    let env = TestEnv::new();
    let output = std::process::Command::new(common::binary("ordermesh-order"))
        .envs(env.env())
        .env("ORDERMESH_SAGA__STALL_AFTER", "20s")
        .output()
        .expect("run the order binary");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("ORDERMESH_SAGA__STALL_AFTER=20s must be longer"),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!stdout.contains("listening"), "{stdout}");
}
