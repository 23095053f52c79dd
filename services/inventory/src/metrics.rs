//! The inventory service's own metrics: reservation outcomes, and stock levels sampled from
//! the database. Per-SKU gauges are limited to the [`SKU_LIMIT`] SKUs with the least stock
//! available (the ones an operator watches), so a large catalogue cannot blow up cardinality;
//! totals over every SKU have no SKU label.

use std::{collections::HashSet, time::Duration};

use ordermesh::{metric, ready::Ready};
use prometheus::{
    IntCounterVec, IntGaugeVec, Opts, register_int_counter_vec, register_int_gauge_vec,
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

metric!(RESERVATIONS: IntCounterVec = register_int_counter_vec!(
    Opts::new("ordermesh_inventory_reservations_total", "Reservation changes committed, by outcome: reserved, insufficient_stock, released, committed (replays are not counted)."),
    &["outcome"]
));
metric!(SKU_UNITS: IntGaugeVec = register_int_gauge_vec!(
    Opts::new("ordermesh_inventory_sku_units", "Units of a SKU by state (available, reserved), for the SKUs with the least available stock."),
    &["sku", "state"]
));
metric!(UNITS: IntGaugeVec = register_int_gauge_vec!(
    Opts::new("ordermesh_inventory_units", "Units over every SKU by state (available, reserved, committed)."),
    &["state"]
));
metric!(SKUS: prometheus::IntGauge = prometheus::register_int_gauge!(
    "ordermesh_inventory_skus", "SKUs in the catalogue."
));

/// Creates every outcome's series at 0 (see the order service's `metrics::init`).
pub fn init() {
    for outcome in ["reserved", "insufficient_stock", "released", "committed"] {
        RESERVATIONS.with_label_values(&[outcome]);
    }
}

/// At most this many SKUs get their own gauges.
pub const SKU_LIMIT: i64 = 50;
/// How often stock levels are read.
const PERIOD: Duration = Duration::from_secs(5);

/// Samples stock levels until `shutdown` (skipping ticks until the database is ready).
pub async fn sample_stock(pool: Ready<PgPool>, shutdown: CancellationToken) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(HashSet::new()));
    ordermesh::metrics::sample_every("stock levels", PERIOD, shutdown, move || {
        let pool = pool.get().ok().cloned();
        let seen = seen.clone();
        async move {
            let Some(pool) = pool else { return Ok(()) };
            let (skus, available, reserved, committed): (i64, i64, i64, i64) = sqlx::query_as(
                "SELECT count(*), coalesce(sum(available), 0)::int8, coalesce(sum(reserved), 0)::int8,
                        coalesce(sum(committed), 0)::int8 FROM items",
            )
            .fetch_one(&pool)
            .await?;
            SKUS.set(skus);
            UNITS.with_label_values(&["available"]).set(available);
            UNITS.with_label_values(&["reserved"]).set(reserved);
            UNITS.with_label_values(&["committed"]).set(committed);
            let rows: Vec<(String, i64, i64)> = sqlx::query_as(
                "SELECT sku, available, reserved FROM items ORDER BY available, sku LIMIT $1",
            )
            .bind(SKU_LIMIT)
            .fetch_all(&pool)
            .await?;
            let gauges = rows.into_iter().flat_map(|(sku, available, reserved)| {
                [
                    (vec![sku.clone(), "available".to_string()], available),
                    (vec![sku, "reserved".to_string()], reserved),
                ]
            });
            let mut seen = seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            ordermesh::metrics::replace_gauges(&SKU_UNITS, &mut seen, gauges);
            Ok(())
        }
    })
    .await;
}
