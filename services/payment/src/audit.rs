//! The payment service's side of `ordermesh check` (see `ordermesh::audit`): no order charged
//! twice, and each order's payment with what was charged and refunded.

use std::time::Duration;

use ordermesh::{
    Error,
    audit::{Finding, OrderSide, Side, state},
};
use uuid::Uuid;

pub async fn side(pool: sqlx::PgPool, _settle: Duration) -> Result<Side, Error> {
    let rows: Vec<(Uuid, i64, String, i64, i64)> = sqlx::query_as(
        "SELECT order_id, count(*) OVER (PARTITION BY order_id), status, amount_minor,
                refunded_minor
         FROM payments ORDER BY order_id",
    )
    .fetch_all(&pool)
    .await?;
    let mut twice: Vec<String> = rows
        .iter()
        .filter(|row| row.1 > 1)
        .map(|row| format!("{} ({} payments)", row.0, row.1))
        .collect();
    twice.dedup();
    Ok(Side {
        service: "payment".into(),
        findings: vec![Finding::always("orders charged more than once", twice)],
        orders: rows
            .into_iter()
            .map(
                |(order_id, count, status, amount_minor, refunded_minor)| OrderSide {
                    order_id,
                    state: state(&status, "PAYMENT_STATUS_"),
                    count,
                    amount_minor,
                    refunded_minor,
                    ..OrderSide::default()
                },
            )
            .collect(),
    })
}
