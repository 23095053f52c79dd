//! The order service's side of `ordermesh check` (see `ordermesh::audit`): every order's status
//! and age, whole event streams, and confirmation numbers that are unique.

use std::time::Duration;

use ordermesh::{
    Error,
    audit::{Finding, OrderSide, Side, state},
};
use uuid::Uuid;

use crate::Deps;

pub(crate) async fn side(deps: Deps, settle: Duration) -> Result<Side, Error> {
    let pool = &deps.pool;
    let rows: Vec<(Uuid, String, bool)> = sqlx::query_as(
        "SELECT order_id, status, created_at < now() - make_interval(secs => $1) FROM order_view",
    )
    .bind(settle.as_secs_f64())
    .fetch_all(pool)
    .await?;
    let gaps: Vec<Uuid> = sqlx::query_scalar(
        "SELECT order_id FROM order_events GROUP BY order_id
         HAVING min(version) <> 1 OR max(version) <> count(*) OR count(DISTINCT version) <> count(*)",
    )
    .fetch_all(pool)
    .await?;
    let shared: Vec<String> = sqlx::query_scalar(
        "SELECT payload->>'confirmation_number' || ' (' || count(DISTINCT order_id) || ' orders)'
         FROM order_events WHERE event_type = 'confirmed'
         GROUP BY payload->>'confirmation_number' HAVING count(DISTINCT order_id) > 1",
    )
    .fetch_all(pool)
    .await?;
    Ok(Side {
        service: "order".into(),
        findings: vec![
            Finding::always(
                "order event streams with gaps or duplicate versions",
                gaps.iter().map(Uuid::to_string).collect(),
            ),
            Finding::always("confirmation numbers shared by more than one order", shared),
        ],
        orders: rows
            .into_iter()
            .map(|(order_id, status, settled)| OrderSide {
                order_id,
                state: state(&status, "ORDER_STATUS_"),
                settled,
                ..OrderSide::default()
            })
            .collect(),
    })
}
