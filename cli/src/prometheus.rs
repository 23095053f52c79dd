//! A local Prometheus for `ordermesh up --prometheus` (and the observability tests): the Debian
//! `prometheus` binary scraping every instance's admin port with the same `service` target label
//! the Kubernetes scrape configuration sets, and evaluating `prometheus/alerts.yml`, so the
//! dashboards and alerts work unchanged against a laptop mesh.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::Context;
use tokio::process::{Child, Command};

use ordermesh::config::ServiceName;

/// The alert rules, relative to the repository root.
pub const RULES: &str = "prometheus/alerts.yml";

/// `prometheus.yml` scraping `targets` (service, admin address) every `scrape_interval`.
pub fn config(
    targets: &[(ServiceName, String)],
    rule_files: &[PathBuf],
    scrape_interval: &str,
) -> String {
    let mut out = format!(
        "# Written by `ordermesh up --prometheus`; regenerated on every start.\n\
         global:\n  scrape_interval: {scrape_interval}\n  evaluation_interval: {scrape_interval}\n\
         rule_files:\n"
    );
    for file in rule_files {
        let _ = writeln!(out, "  - {:?}", file.display().to_string());
    }
    out.push_str("scrape_configs:\n  - job_name: ordermesh\n    static_configs:\n");
    for (service, admin) in targets {
        let _ = writeln!(
            out,
            "      - targets: [{admin:?}]\n        labels: {{service: {}}}",
            service.as_str()
        );
    }
    out
}

/// The Prometheus binary: `ORDERMESH_PROMETHEUS_BIN`, else `prometheus` on the PATH.
pub fn binary() -> PathBuf {
    std::env::var_os("ORDERMESH_PROMETHEUS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("prometheus"))
}

/// Writes `config` into `dir` and starts Prometheus on `listen` with its data in `dir/data`.
/// The process is killed when the returned handle is dropped.
pub fn spawn(dir: &Path, listen: &str, config: &str, quiet: bool) -> anyhow::Result<Child> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = dir.join("prometheus.yml");
    std::fs::write(&file, config).with_context(|| format!("writing {}", file.display()))?;
    let binary = binary();
    let mut command = Command::new(&binary);
    command
        .arg(format!("--config.file={}", file.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg("--storage.tsdb.retention.time=1d")
        .arg(format!("--web.listen-address={listen}"))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if quiet {
        command.stdout(Stdio::null()).stderr(Stdio::null());
    }
    command.spawn().with_context(|| {
        format!(
            "starting {} (install Debian's `prometheus` package, or set ORDERMESH_PROMETHEUS_BIN)",
            binary.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_carries_its_service_label() {
        let text = config(
            &[
                (ServiceName::Order, "127.0.0.1:9101".into()),
                (ServiceName::Payment, "127.0.0.1:9103".into()),
            ],
            &[PathBuf::from("/repo/prometheus/alerts.yml")],
            "5s",
        );
        assert!(text.contains("rule_files:\n  - \"/repo/prometheus/alerts.yml\"\n"));
        assert!(
            text.contains(
                "      - targets: [\"127.0.0.1:9101\"]\n        labels: {service: order}\n"
            )
        );
        assert!(text.contains(
            "      - targets: [\"127.0.0.1:9103\"]\n        labels: {service: payment}\n"
        ));
        assert!(text.contains("scrape_interval: 5s"));
    }
}
