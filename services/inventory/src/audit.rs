//! The inventory service's side of `ordermesh check` (see `ordermesh::audit`): whether every
//! item's levels are explained by its reservations, and each order's reservation.

use std::time::Duration;

use ordermesh::{
    Error,
    audit::{Finding, OrderSide, Side, state},
};
use sqlx::PgPool;
use uuid::Uuid;

/// Items whose `reserved` or `committed` differ from the sums of their reserved and committed
/// reservation lines: stock moved other than through a reservation.
const UNCONSERVED_SQL: &str =
    "SELECT i.sku || ' (reserved ' || i.reserved || ' vs ' || coalesce(r.reserved, 0)
            || ', committed ' || i.committed || ' vs ' || coalesce(r.committed, 0) || ')'
     FROM items i LEFT JOIN (
         SELECT l.sku, sum(l.quantity) FILTER (WHERE r.status = 'reserved') AS reserved,
                       sum(l.quantity) FILTER (WHERE r.status = 'committed') AS committed
         FROM reservation_lines l JOIN reservations r USING (reservation_id) GROUP BY l.sku
     ) r USING (sku)
     WHERE i.reserved <> coalesce(r.reserved, 0) OR i.committed <> coalesce(r.committed, 0)";

pub async fn side(pool: sqlx::PgPool, _settle: Duration) -> Result<Side, Error> {
    let unconserved = sqlx::query_scalar(UNCONSERVED_SQL).fetch_all(&pool).await?;
    Ok(Side {
        service: "inventory".into(),
        findings: vec![Finding::always(
            "inventory not conserved (item levels differ from their reservations)",
            unconserved,
        )],
        orders: reservations(&pool).await?,
    })
}

async fn reservations(pool: &PgPool) -> Result<Vec<OrderSide>, Error> {
    let rows: Vec<(Uuid, String)> = sqlx::query_as("SELECT order_id, status FROM reservations")
        .fetch_all(pool)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(order_id, status)| OrderSide {
            order_id,
            state: state(&status, ""),
            ..OrderSide::default()
        })
        .collect())
}
