//! `ordermesh load` smoke run: a short open-loop run whose statistics must agree with the orders
//! actually stored. No timing thresholds: speed is measured by `make bench`, not asserted here.

mod common;

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
