//! Steps this instance saw finish lately. Nearly every durable timeout arrives after its step
//! finished; remembering the finished ones lets the timeout consumer drop those without a
//! database read (four reads per order at load). Only a positive, permanent fact is kept — a
//! step that finished stays finished — so a stale or missing entry just means a read.

use std::{
    collections::{HashSet, VecDeque},
    sync::Mutex,
};

use uuid::Uuid;

use super::definition::Step;

/// A bounded set of `(order, step)`: the oldest entry goes when a new one would exceed the
/// capacity.
#[derive(Debug)]
pub struct Finished {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    set: HashSet<(Uuid, Step)>,
    order: VecDeque<(Uuid, Step)>,
}

impl Finished {
    pub fn new(capacity: usize) -> Finished {
        Finished {
            capacity: capacity.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    pub fn insert(&self, order_id: Uuid, step: Step) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if !inner.set.insert((order_id, step)) {
            return;
        }
        inner.order.push_back((order_id, step));
        while inner.order.len() > self.capacity {
            if let Some(oldest) = inner.order.pop_front() {
                inner.set.remove(&oldest);
            }
        }
    }

    pub fn contains(&self, order_id: Uuid, step: Step) -> bool {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.set.contains(&(order_id, step))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_most_recent_entries_up_to_its_capacity() {
        let finished = Finished::new(2);
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        finished.insert(a, Step::ReserveInventory);
        finished.insert(b, Step::ReserveInventory);
        finished.insert(b, Step::ReserveInventory); // a repeat does not push `a` out
        assert!(finished.contains(a, Step::ReserveInventory));
        finished.insert(c, Step::ProcessPayment);
        assert!(!finished.contains(a, Step::ReserveInventory));
        assert!(finished.contains(b, Step::ReserveInventory));
        assert!(finished.contains(c, Step::ProcessPayment));
        assert!(!finished.contains(c, Step::ReserveInventory));
    }
}
