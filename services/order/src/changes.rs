//! "Order changed" signals for WatchOrder. After every committed change of an order, its service
//! instance publishes the order as it now is (protobuf) as a core-NATS message on
//! `<ns>.order.changed.<order_id>`; watchers get what the signal carries instead of polling the
//! database (which, with thousands of open watches, would starve everything else) or re-reading
//! it (five reads per order at load). The signal is best-effort: watchers re-read every few
//! seconds anyway, and on a signal they cannot decode or missed, so a lost one only delays.
//!
//! Each instance holds **one** wildcard subscription, taken at its first watch, and hands each
//! signal to the watches of its order in-process. A subscription per watch cost a SUB and an
//! UNSUB per order, and nats-server rebuilds its subject-match cache on every change of
//! interest, which made it busier than the saga's JetStream traffic at load.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use futures::StreamExt;
use ordermesh::Error;
use ordermesh::proto::order::Order;
use prost::Message;
use tokio::sync::{OnceCell, broadcast, watch};
use uuid::Uuid;

/// Signals a watch may fall behind by before it re-reads the order instead.
const WATCH_BUFFER: usize = 16;

/// What a watch learns from a signal: the order as it now is, or that it must re-read it
/// (a signal it could not decode, or signals it fell behind on).
pub type Signal = Option<Order>;

/// The open watches of this instance, by order.
type Watchers = Arc<Mutex<HashMap<Uuid, broadcast::Sender<Signal>>>>;

#[derive(Debug, Clone)]
pub struct Changes {
    client: async_nats::Client,
    namespace: String,
    watchers: Watchers,
    /// Counts every signal seen: what a page of many orders (the explorer's list) waits on.
    any: Arc<watch::Sender<u64>>,
    /// Set once the wildcard subscription is taken and its dispatcher runs.
    listening: Arc<OnceCell<()>>,
}

impl Changes {
    pub fn new(client: async_nats::Client, namespace: &str) -> Changes {
        Changes {
            client,
            namespace: namespace.to_string(),
            watchers: Watchers::default(),
            any: Arc::new(watch::Sender::new(0)),
            listening: Arc::new(OnceCell::new()),
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

    /// A watch of `order_id`'s signals (take it before reading the order, so no change between
    /// the read and the watch is missed).
    #[tracing::instrument(level = "debug", skip_all, fields(%order_id))]
    pub async fn subscribe(&self, order_id: Uuid) -> Result<Watch, Error> {
        self.listen_once().await?;
        let receiver = self
            .watchers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(order_id)
            .or_insert_with(|| broadcast::channel(WATCH_BUFFER).0)
            .subscribe();
        Ok(Watch {
            order_id,
            receiver,
            watchers: self.watchers.clone(),
        })
    }

    /// A receiver that sees the signal count move whenever any order changed (anywhere in the
    /// mesh: every instance announces its own changes).
    pub async fn any(&self) -> Result<watch::Receiver<u64>, Error> {
        self.listen_once().await?;
        Ok(self.any.subscribe())
    }

    async fn listen_once(&self) -> Result<(), Error> {
        self.listening
            .get_or_try_init(|| self.listen())
            .await
            .map(|_| ())
            .map_err(|_| {
                Error::Unavailable("cannot watch orders right now: NATS unavailable".into())
            })
    }

    /// Subscribes to every order's signals and dispatches them to this instance's watches
    /// until the connection is closed for good.
    async fn listen(&self) -> Result<(), async_nats::SubscribeError> {
        let mut signals = self
            .client
            .subscribe(format!("{}.order.changed.*", self.namespace))
            .await?;
        let watchers = self.watchers.clone();
        let any = self.any.clone();
        tokio::spawn(async move {
            while let Some(signal) = signals.next().await {
                any.send_modify(|seen| *seen = seen.wrapping_add(1));
                let Some(order_id) = signal
                    .subject
                    .rsplit('.')
                    .next()
                    .and_then(|id| Uuid::parse_str(id).ok())
                else {
                    continue;
                };
                let watch = watchers
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(&order_id)
                    .cloned();
                // Decoded outside the lock, and only for a watched order.
                if let Some(watch) = watch {
                    // Fails only when every watch just ended.
                    let _ = watch.send(carried(&signal));
                }
            }
        });
        Ok(())
    }
}

/// One WatchOrder's view of its order's signals; leaving stops the dispatch to it.
pub struct Watch {
    order_id: Uuid,
    receiver: broadcast::Receiver<Signal>,
    watchers: Watchers,
}

impl Watch {
    /// The next signal (`None` inside: re-read the order).
    pub async fn next(&mut self) -> Signal {
        match self.receiver.recv().await {
            Ok(signal) => signal,
            Err(broadcast::error::RecvError::Lagged(_)) => None,
            // The sender lives in the map while this watch does, so never reached; were it,
            // the watch's re-read timer takes over (returning at once would spin).
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut watchers = self.watchers.lock().unwrap_or_else(PoisonError::into_inner);
        // Our own receiver still counts here: remove the entry when it is the last.
        if watchers
            .get(&self.order_id)
            .is_some_and(|w| w.receiver_count() <= 1)
        {
            watchers.remove(&self.order_id);
        }
    }
}

/// The order a signal carries, if it carries a readable one.
fn carried(signal: &async_nats::Message) -> Signal {
    Order::decode(signal.payload.as_ref())
        .ok()
        .filter(|o| !o.order_id.is_empty())
}
