//! `ordermesh check`: verifies the mesh's invariants by reading each service's database, and
//! names the offending ids. Exit code 1 on any violation; `--json` for machines.
//!
//! Invariants (DESIGN.md):
//! - every order older than `--settle` is terminal;
//! - inventory is conserved: each item's `reserved` and `committed` equal the sums of its
//!   reserved and committed reservation lines (stock moves only through reservations), and no
//!   stock stays held for an order that did not confirm;
//! - no order is charged twice; a confirmed order is charged and not refunded; a cancelled order
//!   that was charged is refunded in full;
//! - a confirmed order has a live label; a cancelled order has none;
//! - every finished order has exactly one notification;
//! - every order's event stream has versions 1..n with no gap or duplicate;
//! - no two orders share a confirmation number.
//!
//! Some invariants hold at every instant, because one transaction in one database keeps them
//! (a double charge, a gap in an event stream, a shared confirmation number, item levels that
//! their reservations do not explain): the report marks them `always`, and a caller waiting for
//! the mesh to settle must not wait on them. The others span databases that move one after
//! another (a notification arrives after its order ends) and may lag for a moment.

use std::{collections::HashMap, str::FromStr, time::Duration};

use anyhow::Context;
use serde_json::json;
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use uuid::Uuid;

use ordermesh::config::ServiceName;

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// PostgreSQL server holding the services' databases.
    #[arg(
        long,
        env = "ORDERMESH_DATABASE__URL",
        default_value = "postgres://postgres@127.0.0.1:5432"
    )]
    database_url: String,
    /// The mesh's namespace (databases are `<namespace>_<service>`).
    #[arg(long, env = "ORDERMESH_NAMESPACE", default_value = "ordermesh")]
    namespace: String,
    /// Orders younger than this may still be in flight and are not required to be terminal.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    settle: Duration,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn parse_duration(raw: &str) -> Result<Duration, String> {
    humantime_serde::re::humantime::parse_duration(raw)
        .map_err(|e| format!("{raw:?} is not a duration ({e}); e.g. 30s, 10m"))
}

/// One invariant's result.
struct Finding {
    name: &'static str,
    /// Holds at every instant: a violation is never "not yet settled".
    always: bool,
    offenders: Vec<String>,
}

pub async fn run(args: CheckArgs) -> anyhow::Result<bool> {
    let pool = |s: ServiceName| {
        let url = args.database_url.clone();
        let name = format!("{}_{s}", args.namespace);
        async move {
            let options = PgConnectOptions::from_str(&url)
                .context("ORDERMESH_DATABASE__URL")?
                .database(&name);
            PgPoolOptions::new()
                .max_connections(2)
                .connect_with(options)
                .await
                .with_context(|| format!("connecting to database {name} (is --namespace right?)"))
        }
    };
    let orders = pool(ServiceName::Order).await?;
    let inventory = pool(ServiceName::Inventory).await?;
    let payment = pool(ServiceName::Payment).await?;
    let shipping = pool(ServiceName::Shipping).await?;
    let notification = pool(ServiceName::Notification).await?;

    let statuses: HashMap<Uuid, (String, bool)> = sqlx::query_as::<_, (Uuid, String, bool)>(
        "SELECT order_id, status, created_at < now() - make_interval(secs => $1) FROM order_view",
    )
    .bind(args.settle.as_secs_f64())
    .fetch_all(&orders)
    .await?
    .into_iter()
    .map(|(id, status, settled)| (id, (status, settled)))
    .collect();
    let status_of = |id: &Uuid| {
        statuses
            .get(id)
            .map(|(s, _)| s.trim_start_matches("ORDER_STATUS_"))
            .unwrap_or("UNKNOWN")
    };
    let finished = |s: &str| matches!(s, "CONFIRMED" | "CANCELLED" | "FAILED");

    let mut findings = Vec::new();
    findings.push(Finding {
        name: "orders not terminal after the settle time",
        always: false,
        offenders: statuses
            .iter()
            .filter(|(_, (status, settled))| {
                *settled && !finished(status.trim_start_matches("ORDER_STATUS_"))
            })
            .map(|(id, (status, _))| format!("{id} ({status})"))
            .collect(),
    });
    findings.push(Finding {
        name: "order event streams with gaps or duplicate versions",
        always: true,
        offenders: ids(&orders, "SELECT order_id FROM order_events GROUP BY order_id HAVING min(version) <> 1 OR max(version) <> count(*) OR count(DISTINCT version) <> count(*)").await?,
    });
    findings.push(Finding {
        name: "inventory not conserved (item levels differ from their reservations)",
        always: true,
        offenders: sqlx::query_scalar(
            "SELECT i.sku || ' (reserved ' || i.reserved || ' vs ' || coalesce(r.reserved, 0) || ', committed ' || i.committed || ' vs ' || coalesce(r.committed, 0) || ')'
             FROM items i LEFT JOIN (
                SELECT l.sku, sum(l.quantity) FILTER (WHERE r.status = 'reserved') AS reserved,
                              sum(l.quantity) FILTER (WHERE r.status = 'committed') AS committed
                FROM reservation_lines l JOIN reservations r USING (reservation_id) GROUP BY l.sku) r USING (sku)
             WHERE i.reserved <> coalesce(r.reserved, 0) OR i.committed <> coalesce(r.committed, 0)",
        )
        .fetch_all(&inventory)
        .await?,
    });
    findings.push(Finding {
        name: "confirmation numbers shared by more than one order",
        always: true,
        offenders: sqlx::query_scalar(
            "SELECT payload->>'confirmation_number' || ' (' || count(DISTINCT order_id) || ' orders)'
             FROM order_events WHERE event_type = 'confirmed'
             GROUP BY payload->>'confirmation_number' HAVING count(DISTINCT order_id) > 1",
        )
        .fetch_all(&orders)
        .await?,
    });
    let reservations: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT order_id, status FROM reservations")
            .fetch_all(&inventory)
            .await?;
    findings.push(Finding {
        name: "stock held or shipped for an order that did not confirm",
        always: false,
        offenders: reservations
            .iter()
            .filter(|(id, status)| {
                let order = status_of(id);
                finished(order) && order != "CONFIRMED" && status != "released"
            })
            .map(|(id, status)| format!("{id} ({}, reservation {status})", status_of(id)))
            .collect(),
    });

    let payments: Vec<(Uuid, i64, String, i64, i64)> = sqlx::query_as(
        "SELECT order_id, count(*) OVER (PARTITION BY order_id), status, amount_minor, refunded_minor FROM payments",
    )
    .fetch_all(&payment)
    .await?;
    findings.push(Finding {
        name: "orders charged more than once",
        always: true,
        offenders: payments
            .iter()
            .filter(|p| p.1 > 1)
            .map(|p| p.0.to_string())
            .collect(),
    });
    findings.push(Finding {
        name: "cancelled orders charged but not refunded exactly",
        always: false,
        offenders: payments
            .iter()
            .filter(|(id, _, status, amount, refunded)| {
                matches!(status_of(id), "CANCELLED" | "FAILED")
                    && status != "PAYMENT_STATUS_DECLINED"
                    && refunded != amount
            })
            .map(|(id, _, _, amount, refunded)| {
                format!("{id} (charged {amount}, refunded {refunded})")
            })
            .collect(),
    });
    let charged: HashMap<Uuid, bool> = payments
        .iter()
        .map(|(id, _, status, _, refunded)| {
            (*id, status == "PAYMENT_STATUS_CAPTURED" && *refunded == 0)
        })
        .collect();
    findings.push(Finding {
        name: "confirmed orders without a standing charge",
        always: false,
        offenders: statuses
            .iter()
            .filter(|(id, (status, _))| {
                status == "ORDER_STATUS_CONFIRMED" && !charged.get(id).copied().unwrap_or(false)
            })
            .map(|(id, _)| id.to_string())
            .collect(),
    });

    let labels: HashMap<Uuid, String> =
        sqlx::query_as::<_, (Uuid, String)>("SELECT order_id, status FROM labels")
            .fetch_all(&shipping)
            .await?
            .into_iter()
            .collect();
    findings.push(Finding {
        name: "labels not matching the order (live for a cancelled order, missing for a confirmed one)",
        always: false,
        offenders: statuses
            .iter()
            .filter(|(id, (status, _))| {
                let live = labels.get(id).is_some_and(|l| l == "LABEL_STATUS_CREATED");
                match status.trim_start_matches("ORDER_STATUS_") {
                    "CONFIRMED" => !live,
                    "CANCELLED" | "FAILED" => live,
                    _ => false,
                }
            })
            .map(|(id, (status, _))| format!("{id} ({})", status.trim_start_matches("ORDER_STATUS_")))
            .collect(),
    });

    let notified: HashMap<Uuid, i64> = sqlx::query_as::<_, (Uuid, i64)>(
        "SELECT order_id, count(*) FROM notifications GROUP BY order_id",
    )
    .fetch_all(&notification)
    .await?
    .into_iter()
    .collect();
    findings.push(Finding {
        name: "finished orders without exactly one notification",
        always: false,
        offenders: statuses
            .iter()
            .filter(|(id, (status, settled))| {
                *settled
                    && finished(status.trim_start_matches("ORDER_STATUS_"))
                    && notified.get(id).copied().unwrap_or(0) != 1
            })
            .map(|(id, _)| {
                format!(
                    "{id} ({} notifications)",
                    notified.get(id).copied().unwrap_or(0)
                )
            })
            .collect(),
    });

    let violations: usize = findings.iter().map(|f| f.offenders.len()).sum();
    if args.json {
        let report: Vec<_> = findings
            .iter()
            .map(|f| json!({ "invariant": f.name, "always": f.always, "violations": f.offenders.len(), "offenders": f.offenders }))
            .collect();
        println!(
            "{}",
            json!({ "orders": statuses.len(), "violations": violations, "invariants": report })
        );
    } else {
        println!(
            "checked {} orders in namespace {}",
            statuses.len(),
            args.namespace
        );
        for f in &findings {
            let mark = if f.offenders.is_empty() {
                "ok  "
            } else {
                "FAIL"
            };
            println!("  {mark} {:<88} {}", f.name, f.offenders.len());
            for offender in f.offenders.iter().take(20) {
                println!("         {offender}");
            }
            if f.offenders.len() > 20 {
                println!(
                    "         … and {} more (use --json for all)",
                    f.offenders.len() - 20
                );
            }
        }
        println!("{violations} violation(s)");
    }
    Ok(violations == 0)
}

async fn ids(pool: &PgPool, sql: &str) -> anyhow::Result<Vec<String>> {
    let found: Vec<Uuid> = sqlx::query_scalar(sql).fetch_all(pool).await?;
    Ok(found.into_iter().map(|id| id.to_string()).collect())
}
