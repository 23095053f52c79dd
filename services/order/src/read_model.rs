//! Reads of the order read model: Redis first, then `order_view`, filling Redis on a miss.

use std::time::Duration;

use ordermesh::proto::order::Order;
use prost::Message;
use tonic::Status;
use uuid::Uuid;

use crate::{Deps, store};

/// How long a cached order may be served; invalidation on change makes it fresh sooner.
const TTL: Duration = Duration::from_secs(300);

fn key(order_id: Uuid) -> String {
    format!("order:{order_id}")
}

/// The order, from the cache when it has it.
pub async fn get(deps: &Deps, order_id: Uuid) -> Result<Option<Order>, Status> {
    if let Some(bytes) = deps.cache.get(&key(order_id)).await
        && let Ok(order) = Order::decode(bytes.as_slice())
    {
        return Ok(Some(order));
    }
    let order = store::get(&deps.pool, order_id).await?;
    if let Some(order) = &order {
        deps.cache
            .set(&key(order_id), &order.encode_to_vec(), TTL)
            .await;
    }
    Ok(order)
}

/// Drops the cached copy after the order changed.
pub async fn invalidate(deps: &Deps, order_id: Uuid) {
    deps.cache.delete(&key(order_id)).await;
}
