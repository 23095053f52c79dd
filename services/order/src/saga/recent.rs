//! The snapshot each transition leaves behind for the step it queued: the saga and view as that
//! transition wrote them, so the step's first delivery to this instance needs no read.
//!
//! Only a hint, which is why it is safe: a transition compare-and-sets the saga row, so one
//! decided from a stale snapshot (another replica moved the saga meanwhile) writes nothing and is
//! decided again from a fresh read; and a call made from a stale snapshot is one the saga could
//! always make late (a read is just as stale a moment later): callees answer repeats from their
//! idempotency keys and refuse a Reserve, Charge or CreateLabel after its compensation ran.
//! Every transition in this instance replaces its order's entry; an entry is taken once.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, PoisonError},
};

use uuid::Uuid;

use super::{definition::Step, transition::Snapshot};

/// Snapshots kept at most; the oldest go first (their steps are long delivered or never will be
/// here).
const CAPACITY: usize = 8192;

#[derive(Debug, Clone, Default)]
pub struct Recent(Arc<Mutex<Entries>>);

#[derive(Debug, Default)]
struct Entries {
    by_order: HashMap<Uuid, Snapshot>,
    /// Insertion order, for eviction; may name orders whose entry was taken or replaced.
    order: VecDeque<Uuid>,
}

impl Recent {
    /// Keeps `snapshot` for its saga's current step, if the saga is running one (not done, not
    /// parked).
    pub fn put(&self, snapshot: Snapshot) {
        let running = matches!(snapshot.saga.phase.as_str(), "forward" | "compensating");
        if !running || snapshot.saga.current.is_none() {
            return;
        }
        let mut entries = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let order_id = snapshot.saga.order_id;
        if entries.by_order.insert(order_id, snapshot).is_none() {
            entries.order.push_back(order_id);
        }
        while entries.by_order.len() > CAPACITY {
            match entries.order.pop_front() {
                Some(oldest) => {
                    entries.by_order.remove(&oldest);
                }
                None => break,
            }
        }
        // Keep the queue from growing with ids whose entries are gone.
        if entries.order.len() > 2 * CAPACITY {
            let Entries { by_order, order } = &mut *entries;
            order.retain(|id| by_order.contains_key(id));
        }
    }

    /// The snapshot left for `step` of `order_id`, if this instance made that step current and
    /// nothing here has moved the saga since.
    pub fn take(&self, order_id: Uuid, step: Step) -> Option<Snapshot> {
        let mut entries = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match entries.by_order.get(&order_id) {
            Some(s) if s.saga.current == Some(step) => entries.by_order.remove(&order_id),
            _ => None,
        }
    }

    /// Drops `order_id`'s entry (a change made outside a transition, such as parking).
    pub fn forget(&self, order_id: Uuid) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .by_order
            .remove(&order_id);
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use sqlx::types::Json;

    use super::*;
    use crate::{
        model::{AddressRecord, OrderRow},
        saga::state::Saga,
    };

    fn snapshot(order_id: Uuid, current: Option<Step>) -> Snapshot {
        let now = Utc::now();
        Snapshot {
            saga: Saga {
                order_id,
                definition_version: 1,
                phase: "forward".into(),
                current,
                pending: Vec::new(),
                failure_reason: String::new(),
                payment_token: None,
            },
            order: OrderRow {
                order_id,
                customer_id: "c".into(),
                status: "ORDER_STATUS_PENDING".into(),
                currency: "EUR".into(),
                total_minor: 1,
                lines: Json(Vec::new()),
                shipping_address: Json(AddressRecord {
                    recipient_name: String::new(),
                    line1: String::new(),
                    line2: String::new(),
                    city: String::new(),
                    region: String::new(),
                    postal_code: String::new(),
                    country_code: String::new(),
                }),
                shipping_method: String::new(),
                confirmation_number: String::new(),
                tracking_number: String::new(),
                failure_reason: String::new(),
                request_id: String::new(),
                created_at: now,
                updated_at: now,
                version: 1,
            },
        }
    }

    #[test]
    fn a_snapshot_is_taken_once_and_only_for_its_current_step() {
        let recent = Recent::default();
        let id = Uuid::now_v7();
        recent.put(snapshot(id, Some(Step::ProcessPayment)));
        assert!(recent.take(id, Step::ReserveInventory).is_none());
        let taken = recent
            .take(id, Step::ProcessPayment)
            .expect("left for its step");
        assert_eq!(taken.saga.order_id, id);
        assert!(
            recent.take(id, Step::ProcessPayment).is_none(),
            "taken once"
        );
    }

    #[test]
    fn a_later_transition_replaces_the_snapshot_and_forget_drops_it() {
        let recent = Recent::default();
        let id = Uuid::now_v7();
        recent.put(snapshot(id, Some(Step::ReserveInventory)));
        recent.put(snapshot(id, Some(Step::ReleaseInventory)));
        assert!(recent.take(id, Step::ReserveInventory).is_none());
        recent.forget(id);
        assert!(recent.take(id, Step::ReleaseInventory).is_none());
        let mut parked = snapshot(id, Some(Step::ReleaseInventory));
        parked.saga.phase = "parked".into();
        recent.put(parked);
        recent.put(snapshot(id, None));
        assert!(
            recent.0.lock().expect("not poisoned").by_order.is_empty(),
            "a parked or finished saga leaves nothing"
        );
    }

    #[test]
    fn it_keeps_at_most_its_capacity_dropping_the_oldest() {
        let recent = Recent::default();
        let ids: Vec<Uuid> = (0..CAPACITY + 10).map(|_| Uuid::now_v7()).collect();
        for id in &ids {
            recent.put(snapshot(*id, Some(Step::ProcessPayment)));
        }
        assert_eq!(
            recent.0.lock().expect("not poisoned").by_order.len(),
            CAPACITY
        );
        assert!(
            recent.take(ids[0], Step::ProcessPayment).is_none(),
            "oldest evicted"
        );
        assert!(
            recent
                .take(ids[CAPACITY + 9], Step::ProcessPayment)
                .is_some()
        );
    }
}
