//! The notification service's side of `ordermesh check` (see `ordermesh::audit`): how many
//! notifications each order got.

use std::time::Duration;

use ordermesh::{
    Error,
    audit::{OrderSide, Side},
};
use uuid::Uuid;

pub async fn side(pool: sqlx::PgPool, _settle: Duration) -> Result<Side, Error> {
    let rows: Vec<(Uuid, i64)> =
        sqlx::query_as("SELECT order_id, count(*) FROM notifications GROUP BY order_id")
            .fetch_all(&pool)
            .await?;
    Ok(Side {
        service: "notification".into(),
        findings: Vec::new(),
        orders: rows
            .into_iter()
            .map(|(order_id, count)| OrderSide {
                order_id,
                count,
                ..OrderSide::default()
            })
            .collect(),
    })
}
