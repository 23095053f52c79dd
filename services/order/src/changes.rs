//! "Order changed" signals for WatchOrder. After every committed change of an order, its service
//! instance publishes an empty core-NATS message on `<ns>.order.changed.<order_id>`; a watcher
//! subscribes to its order's subject and re-reads the order when signalled, instead of polling
//! the database (which, with thousands of open watches, would starve everything else). The
//! signal is best-effort: watchers also re-read every few seconds, so a lost one only delays.

use bytes::Bytes;
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

    /// Signals watchers of `order_id`; call after the change committed.
    pub async fn announce(&self, order_id: Uuid) {
        if let Err(error) = self
            .client
            .publish(self.subject(order_id), Bytes::new())
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
