//! `ordermesh check`: verifies the mesh's invariants and names the offending ids. Each service
//! answers for its own database on its admin port (`GET /audit`, see `ordermesh::audit`): the
//! invariants one database keeps, and what it holds for each order; this command joins those
//! sides. Exit code 1 on any violation; `--json` for machines.
//!
//! Invariants (docs/design.md):
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

use std::{collections::HashMap, time::Duration};

use anyhow::Context;
use ordermesh::{
    audit::{Finding, OrderSide, Side},
    config::ServiceName,
};
use serde_json::json;
use uuid::Uuid;

/// Where each service's admin port is (`ordermesh up` and the defaults agree; in Kubernetes,
/// `kubectl port-forward` each deployment's admin port).
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The order service's admin URL.
    #[arg(
        long,
        env = "ORDERMESH_ADMIN_ENDPOINTS__ORDER",
        default_value = "http://127.0.0.1:9101"
    )]
    order_admin: String,
    /// The inventory service's admin URL.
    #[arg(
        long,
        env = "ORDERMESH_ADMIN_ENDPOINTS__INVENTORY",
        default_value = "http://127.0.0.1:9102"
    )]
    inventory_admin: String,
    /// The payment service's admin URL.
    #[arg(
        long,
        env = "ORDERMESH_ADMIN_ENDPOINTS__PAYMENT",
        default_value = "http://127.0.0.1:9103"
    )]
    payment_admin: String,
    /// The shipping service's admin URL.
    #[arg(
        long,
        env = "ORDERMESH_ADMIN_ENDPOINTS__SHIPPING",
        default_value = "http://127.0.0.1:9104"
    )]
    shipping_admin: String,
    /// The notification service's admin URL.
    #[arg(
        long,
        env = "ORDERMESH_ADMIN_ENDPOINTS__NOTIFICATION",
        default_value = "http://127.0.0.1:9105"
    )]
    notification_admin: String,
    /// Orders younger than this may still be in flight and are not required to be terminal.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    settle: Duration,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

impl CheckArgs {
    fn admin(&self, service: ServiceName) -> &str {
        match service {
            ServiceName::Order => &self.order_admin,
            ServiceName::Inventory => &self.inventory_admin,
            ServiceName::Payment => &self.payment_admin,
            ServiceName::Shipping => &self.shipping_admin,
            ServiceName::Notification => &self.notification_admin,
        }
    }
}

fn parse_duration(raw: &str) -> Result<Duration, String> {
    humantime_serde::re::humantime::parse_duration(raw)
        .map_err(|e| format!("{raw:?} is not a duration ({e}); e.g. 30s, 10m"))
}

/// Asks one service for its side.
async fn side(args: &CheckArgs, service: ServiceName) -> anyhow::Result<Side> {
    let url = format!(
        "{}/audit?settle={}",
        args.admin(service).trim_end_matches('/'),
        args.settle.as_secs()
    );
    let what = format!("asking the {service} service for its side of the invariants at {url}");
    tokio::task::spawn_blocking(move || -> anyhow::Result<Side> {
        let mut response = ureq::get(&url)
            .config()
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .call()?;
        let body = response
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_string()?;
        Ok(serde_json::from_str(&body)?)
    })
    .await?
    .with_context(|| {
        format!(
            "{what} (is it running? --{service}-admin or ORDERMESH_ADMIN_ENDPOINTS__{} names it)",
            service.as_str().to_uppercase()
        )
    })
}

/// One side's orders by id (the payment service may hold two rows for a doubly charged order:
/// the first stands in here, the double charge is that service's own finding).
fn by_order(side: &Side) -> HashMap<Uuid, &OrderSide> {
    let mut orders = HashMap::new();
    for order in &side.orders {
        orders.entry(order.order_id).or_insert(order);
    }
    orders
}

pub async fn run(args: CheckArgs) -> anyhow::Result<bool> {
    let (order, inventory, payment, shipping, notification) = tokio::try_join!(
        side(&args, ServiceName::Order),
        side(&args, ServiceName::Inventory),
        side(&args, ServiceName::Payment),
        side(&args, ServiceName::Shipping),
        side(&args, ServiceName::Notification),
    )?;
    let statuses = by_order(&order);
    let status_of = |id: &Uuid| statuses.get(id).map_or("UNKNOWN", |o| o.state.as_str());
    let finished = |s: &str| matches!(s, "CONFIRMED" | "CANCELLED" | "FAILED");

    let mut findings = vec![Finding::lagging(
        "orders not terminal after the settle time",
        statuses
            .values()
            .filter(|o| o.settled && !finished(&o.state))
            .map(|o| format!("{} (ORDER_STATUS_{})", o.order_id, o.state))
            .collect(),
    )];
    for side in [&order, &inventory, &payment, &shipping, &notification] {
        findings.extend(side.findings.iter().cloned());
    }
    findings.push(Finding::lagging(
        "stock held or shipped for an order that did not confirm",
        inventory
            .orders
            .iter()
            .filter(|r| {
                let order = status_of(&r.order_id);
                finished(order) && order != "CONFIRMED" && r.state != "RELEASED"
            })
            .map(|r| {
                format!(
                    "{} ({}, reservation {})",
                    r.order_id,
                    status_of(&r.order_id),
                    r.state.to_lowercase()
                )
            })
            .collect(),
    ));
    let payments = by_order(&payment);
    findings.push(Finding::lagging(
        "cancelled orders charged but not refunded exactly",
        payments
            .values()
            .filter(|p| {
                matches!(status_of(&p.order_id), "CANCELLED" | "FAILED")
                    && p.state != "DECLINED"
                    && p.refunded_minor != p.amount_minor
            })
            .map(|p| {
                format!(
                    "{} (charged {}, refunded {})",
                    p.order_id, p.amount_minor, p.refunded_minor
                )
            })
            .collect(),
    ));
    findings.push(Finding::lagging(
        "confirmed orders without a standing charge",
        statuses
            .values()
            .filter(|o| {
                o.state == "CONFIRMED"
                    && !payments
                        .get(&o.order_id)
                        .is_some_and(|p| p.state == "CAPTURED" && p.refunded_minor == 0)
            })
            .map(|o| o.order_id.to_string())
            .collect(),
    ));
    let labels = by_order(&shipping);
    findings.push(Finding::lagging(
        "labels not matching the order (live for a cancelled order, missing for a confirmed one)",
        statuses
            .values()
            .filter(|o| {
                let live = labels
                    .get(&o.order_id)
                    .is_some_and(|l| l.state == "CREATED");
                match o.state.as_str() {
                    "CONFIRMED" => !live,
                    "CANCELLED" | "FAILED" => live,
                    _ => false,
                }
            })
            .map(|o| format!("{} ({})", o.order_id, o.state))
            .collect(),
    ));
    let notified = by_order(&notification);
    let notifications = |id: &Uuid| notified.get(id).map_or(0, |n| n.count);
    findings.push(Finding::lagging(
        "finished orders without exactly one notification",
        statuses
            .values()
            .filter(|o| o.settled && finished(&o.state) && notifications(&o.order_id) != 1)
            .map(|o| {
                format!(
                    "{} ({} notifications)",
                    o.order_id,
                    notifications(&o.order_id)
                )
            })
            .collect(),
    ));

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
        println!("checked {} orders", statuses.len());
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
