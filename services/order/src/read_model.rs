//! Reads of the order read model: Redis first, then `order_view`.
//!
//! Only terminal orders (CONFIRMED, CANCELLED, FAILED) are cached. They never change again, so
//! a cached copy can never be stale — unlike an in-flight order, where a read racing a saga
//! commit could put an old status back into the cache after its invalidation. Non-terminal
//! reads go to PostgreSQL, which has them hot anyway.

use std::time::Duration;

use ordermesh::Error;
use ordermesh::proto::order::{Order, OrderStatus};
use prost::Message;
use uuid::Uuid;

use crate::{Deps, store};

/// How long a terminal order stays cached.
const TTL: Duration = Duration::from_secs(3600);

/// The cache key of an order.
pub fn key(order_id: Uuid) -> String {
    format!("order:{order_id}")
}

fn is_terminal(order: &Order) -> bool {
    matches!(
        order.status(),
        OrderStatus::Confirmed | OrderStatus::Cancelled | OrderStatus::Failed
    )
}

/// The order, from the cache when it has it.
#[tracing::instrument(level = "debug", skip_all, fields(%order_id))]
pub async fn get(deps: &Deps, order_id: Uuid) -> Result<Option<Order>, Error> {
    if let Some(bytes) = deps.cache.get(&key(order_id)).await
        && let Ok(order) = Order::decode(bytes.as_slice())
    {
        return Ok(Some(order));
    }
    let order = store::get(&deps.pool, order_id).await?;
    if let Some(order) = order.as_ref().filter(|o| is_terminal(o)) {
        deps.cache
            .set(&key(order_id), &order.encode_to_vec(), TTL)
            .await;
    }
    Ok(order)
}
