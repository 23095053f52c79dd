//! The shipping service's side of `ordermesh check` (see `ordermesh::audit`): each order's
//! label.

use std::time::Duration;

use ordermesh::{
    Error,
    audit::{OrderSide, Side, state},
};
use uuid::Uuid;

pub async fn side(pool: sqlx::PgPool, _settle: Duration) -> Result<Side, Error> {
    let rows: Vec<(Uuid, String)> = sqlx::query_as("SELECT order_id, status FROM labels")
        .fetch_all(&pool)
        .await?;
    Ok(Side {
        service: "shipping".into(),
        findings: Vec::new(),
        orders: rows
            .into_iter()
            .map(|(order_id, status)| OrderSide {
                order_id,
                state: state(&status, "LABEL_STATUS_"),
                ..OrderSide::default()
            })
            .collect(),
    })
}
