//! `ordermesh load` smoke run: a short open-loop run whose statistics must agree with the orders
//! actually stored. No timing thresholds: speed is measured by `make bench`, not asserted here.

use crate::common;

use common::{TestEnv, binary, nats_url};
use ordermesh::config::ServiceName;
use serde_json::Value;

#[tokio::test]
async fn a_short_load_run_reports_exactly_what_it_stored() {
    runs_and_matches_the_store("watch").await;
}

#[tokio::test]
async fn following_outcome_events_reports_exactly_what_it_stored() {
    runs_and_matches_the_store("events").await;
}

/// 60 orders (20/s for 3 s), followed by `follow`: every count in the report must match the
/// orders the order service stored.
async fn runs_and_matches_the_store(follow: &str) {
    let env = TestEnv::new();
    let mesh = env.start_mesh().await;
    let output = std::process::Command::new(binary("ordermesh"))
        .args([
            "load",
            "--rate",
            "20",
            "--duration",
            "3s",
            "--mix",
            "8:1:1",
            "--skus",
            "5",
            "--json",
        ])
        .args(["--follow", follow, "--nats-url", &nats_url()])
        .args(["--namespace", &env.namespace])
        .args(["--order-endpoint", &mesh.get(ServiceName::Order).url()])
        .args([
            "--inventory-endpoint",
            &mesh.get(ServiceName::Inventory).url(),
        ])
        .output()
        .expect("run ordermesh load");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    let n = |key: &str| {
        report[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{key} in {report}"))
    };

    assert_eq!(n("sent"), 60, "20/s for 3 s");
    assert_eq!(n("created"), 60);
    assert_eq!(
        n("confirmed") + n("cancelled") + n("failed"),
        60,
        "every order terminal"
    );
    assert_eq!((n("unfinished"), n("refused_in_flight")), (0, 0));
    assert_eq!(report["errors"], serde_json::json!({}));
    assert_eq!(
        n("expected_outcome"),
        60,
        "normal orders confirm, scarce and declined ones cancel"
    );
    assert_eq!(report["end_to_end_latency"]["count"].as_u64(), Some(60));
    assert_eq!(report["follow"], follow);

    let db = env.db(ServiceName::Order).await;
    let stored: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM order_view GROUP BY status ORDER BY status")
            .fetch_all(&db)
            .await
            .expect("query");
    assert_eq!(
        stored,
        vec![
            ("ORDER_STATUS_CANCELLED".to_string(), n("cancelled") as i64),
            ("ORDER_STATUS_CONFIRMED".to_string(), n("confirmed") as i64)
        ]
    );
}

/// 2,000 orders placed as fast as a load run sends them (400/s, many in flight at once) get
/// 2,000 different confirmation numbers: they are drawn at random, not taken from the ids'
/// timestamps, and the view's unique index would refuse a repeat.
#[tokio::test]
async fn two_thousand_orders_placed_at_once_get_two_thousand_confirmation_numbers() {
    let env = TestEnv::new();
    // The load generator is one client: let it have all 2,000 in flight at once.
    let mesh = env
        .start_mesh_with(&[("ORDERMESH_SERVER__MAX_IN_FLIGHT_PER_CLIENT", "4096")])
        .await;
    let output = std::process::Command::new(binary("ordermesh"))
        .args([
            "load",
            "--rate",
            "400",
            "--duration",
            "5s",
            "--mix",
            "1:0:0",
        ])
        .args(["--skus", "20", "--drain", "300s", "--json"])
        .args(["--follow", "events", "--nats-url", &nats_url()])
        .args(["--namespace", &env.namespace])
        // The subject is uniqueness, not latency: 2,000 creates queued at once on two cores
        // shared with the rest of the suite took over the default 5 s deadline in some runs.
        .args(["--call-timeout", "60s"])
        .args(["--order-endpoint", &mesh.get(ServiceName::Order).url()])
        .args([
            "--inventory-endpoint",
            &mesh.get(ServiceName::Inventory).url(),
        ])
        .output()
        .expect("run ordermesh load");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    assert_eq!(report["confirmed"].as_u64(), Some(2_000), "{report}");

    let db = env.db(ServiceName::Order).await;
    let (numbers, confirmed): (i64, i64) = sqlx::query_as(
        "SELECT count(DISTINCT confirmation_number), count(*) FROM order_view WHERE status = 'ORDER_STATUS_CONFIRMED'",
    )
    .fetch_one(&db)
    .await
    .expect("count");
    assert_eq!((numbers, confirmed), (2_000, 2_000));
    let (ok, report, _) =
        common::check::settled(&env, &[], std::time::Duration::from_secs(60)).await;
    assert!(ok, "{report}");
}
