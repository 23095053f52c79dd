//! `ordermesh check` as tests run it: once, or until the mesh has settled.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{TestEnv, binary};

/// One `ordermesh check --settle 0s --json` over the test's databases (plus `extra` environment):
/// whether it passed, and its report.
pub fn run(env: &TestEnv, extra: &[(String, String)]) -> (bool, Value) {
    let output = std::process::Command::new(binary("ordermesh"))
        .args(["check", "--settle", "0s", "--json"])
        .envs(env.env())
        .envs(env.admin_endpoints())
        .envs(extra.iter().cloned())
        .output()
        .expect("run ordermesh check");
    let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "ordermesh check: {e}: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.success(), report)
}

/// Offenders of every broken invariant in `report`, as (invariant, always, offenders).
pub fn broken(report: &Value) -> Vec<(String, bool, Vec<String>)> {
    report["invariants"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["violations"].as_u64().unwrap_or(0) > 0)
        .map(|i| {
            let offenders = i["offenders"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|o| o.as_str().map(str::to_string))
                .collect();
            (
                i["invariant"].as_str().unwrap_or_default().to_string(),
                i["always"].as_bool().unwrap_or(true),
                offenders,
            )
        })
        .collect()
}

/// Offenders of the invariant whose name starts with `prefix`.
pub fn offenders(report: &Value, prefix: &str) -> Vec<String> {
    broken(report)
        .into_iter()
        .find(|(name, _, _)| name.starts_with(prefix))
        .map(|(_, _, offenders)| offenders)
        .unwrap_or_default()
}

/// Runs the check until it passes, for at most `patience`, while only invariants that may lag
/// (a notification still on its way) are broken. One broken invariant that holds at every instant
/// (a double charge, an event gap, a shared confirmation number) ends the wait at once: no amount
/// of settling excuses it. Returns the last result and whether it had to wait.
pub async fn settled(
    env: &TestEnv,
    extra: &[(String, String)],
    patience: Duration,
) -> (bool, Value, bool) {
    let until = Instant::now() + patience;
    let mut waited = false;
    loop {
        let (ok, report) = run(env, extra);
        let instant = broken(&report).iter().any(|(_, always, _)| *always);
        if ok || instant || Instant::now() > until {
            return (ok, report, waited);
        }
        waited = true;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
