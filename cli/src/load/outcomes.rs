//! `--follow events`: an order's end is its outcome event (OrderConfirmed / OrderCancelled) on
//! NATS instead of a WatchOrder stream, so following an order costs the order service nothing
//! beyond the saga itself. One core-NATS subscription to the outcome subjects feeds a registry;
//! each order's task waits on a oneshot keyed by its id. An event can beat its CreateOrder
//! response back to the generator, so events nobody waits for yet are kept for a while.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use anyhow::Context;
use futures::StreamExt;
use tokio::sync::oneshot;
use uuid::Uuid;

use ordermesh::{
    events::{OrderOutcome, OutcomeKind},
    nats::Names,
};

/// Early events kept before the old ones are pruned, and how old "old" is. Events of orders
/// this run did not place (another generator on the namespace) end up here and are pruned too.
const EARLY_PRUNE_AT: usize = 10_000;
const EARLY_KEEP: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Registry {
    waiting: HashMap<Uuid, oneshot::Sender<OutcomeKind>>,
    early: HashMap<Uuid, (OutcomeKind, Instant)>,
}

impl Registry {
    fn arrived(&mut self, event: OrderOutcome) {
        match self.waiting.remove(&event.order_id) {
            // The waiter is gone only when its task was dropped: nothing left to tell.
            Some(waiter) => drop(waiter.send(event.kind)),
            None => {
                if self.early.len() >= EARLY_PRUNE_AT {
                    self.early.retain(|_, (_, at)| at.elapsed() < EARLY_KEEP);
                }
                self.early
                    .insert(event.order_id, (event.kind, Instant::now()));
            }
        }
    }
}

/// The outcome events of one namespace, as they arrive.
pub struct Outcomes {
    registry: Arc<Mutex<Registry>>,
    /// Keeps the connection open while the run lasts.
    _client: async_nats::Client,
}

impl Outcomes {
    /// Subscribes to `<namespace>.order.events.*`; returns once the server has the subscription,
    /// so no order sent afterwards can finish unseen.
    pub async fn subscribe(nats_url: &str, namespace: &str) -> anyhow::Result<Outcomes> {
        let client = async_nats::connect(ordermesh::config::nats_servers(nats_url)?).await.with_context(|| {
            format!("cannot reach NATS at {nats_url} for --follow events (--nats-url / ORDERMESH_NATS__URL)")
        })?;
        let mut events = client
            .subscribe(Names::new(namespace).order_event_subject("*"))
            .await
            .context("subscribing to the order outcome events")?;
        client
            .flush()
            .await
            .context("registering the outcome subscription")?;
        let registry = Arc::new(Mutex::new(Registry::default()));
        let feed = registry.clone();
        tokio::spawn(async move {
            while let Some(message) = events.next().await {
                if let Ok(event) = serde_json::from_slice::<OrderOutcome>(&message.payload) {
                    feed.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .arrived(event);
                }
            }
        });
        Ok(Outcomes {
            registry,
            _client: client,
        })
    }

    /// The outcome of `order_id`, once its event arrives (at once if it already did).
    pub async fn wait(&self, order_id: Uuid) -> Option<OutcomeKind> {
        let waiter = {
            let mut registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((kind, _)) = registry.early.remove(&order_id) {
                return Some(kind);
            }
            let (tell, waiter) = oneshot::channel();
            registry.waiting.insert(order_id, tell);
            waiter
        };
        waiter.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(order_id: Uuid, kind: OutcomeKind) -> OrderOutcome {
        OrderOutcome {
            event_id: Uuid::now_v7(),
            order_id,
            kind,
            confirmation_number: String::new(),
            reason: String::new(),
        }
    }

    #[test]
    fn an_event_reaches_its_waiter_or_waits_for_it() {
        let mut registry = Registry::default();
        let (waited, early) = (Uuid::now_v7(), Uuid::now_v7());
        let (tell, mut waiter) = oneshot::channel();
        registry.waiting.insert(waited, tell);
        registry.arrived(event(waited, OutcomeKind::Confirmed));
        registry.arrived(event(early, OutcomeKind::Cancelled));
        assert!(matches!(waiter.try_recv(), Ok(OutcomeKind::Confirmed)));
        assert!(registry.waiting.is_empty());
        assert!(matches!(
            registry.early.get(&early),
            Some((OutcomeKind::Cancelled, _))
        ));
    }
}
