//! "Order changed" signals for WatchOrder. After every committed change of an order, its service
//! instance publishes the order as it now is (protobuf) as a core-NATS message on
//! `<ns>.order.changed.<order_id>`; a watcher subscribes to its order's subject and sends what
//! the signal carries, instead of polling the database (which, with thousands of open watches,
//! would starve everything else) or re-reading it (five reads per order at load). The signal
//! is best-effort: watchers re-read every few seconds anyway, and on a signal they cannot
//! decode, so a lost one only delays.

use ordermesh::proto::order::Order;
use prost::Message;
use tonic::Status;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct Changes {
    client: async_nats::Client,
    namespace: String,
}

impl Changes {
    pub fn new(client: async_nats::Client, namespace: &str) -> Changes {
        Changes {
            client,
            namespace: namespace.to_string(),
        }
    }

    fn subject(&self, order_id: Uuid) -> String {
        format!("{}.order.changed.{order_id}", self.namespace)
    }

    /// Sends `order` to its watchers; call after the change committed.
    pub async fn announce(&self, order: &Order) {
        let Ok(order_id) = Uuid::parse_str(&order.order_id) else {
            return;
        };
        if let Err(error) = self
            .client
            .publish(self.subject(order_id), order.encode_to_vec().into())
            .await
        {
            tracing::debug!(%error, "order change signal not sent; watchers fall back to re-reading");
        }
    }

    /// A subscription to `order_id`'s signals (take it before reading the order, so no change
    /// between the read and the subscription is missed).
    pub async fn subscribe(&self, order_id: Uuid) -> Result<async_nats::Subscriber, Status> {
        self.client
            .subscribe(self.subject(order_id))
            .await
            .map_err(|_| Status::unavailable("cannot watch orders right now: NATS unavailable"))
    }
}

/// The order a signal carries, if it carries a readable one.
pub fn carried(signal: &async_nats::Message) -> Option<Order> {
    Order::decode(signal.payload.as_ref())
        .ok()
        .filter(|o| !o.order_id.is_empty())
}
