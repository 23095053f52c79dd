//! Reservations this process made and has not seen settled, by order: Commit and Release start
//! from here instead of reading the reservation back, which saves a round trip and a query on
//! every order's path.
//!
//! Only a hint, never the truth: the settling statement acts only on a reservation that is
//! still reserved under the hinted id, and when it does not, the caller falls back to reading
//! the reservation. Lost on restart (the read covers it). Bounded, least recently reserved
//! dropped first, because with several replicas an order may be settled by another one and
//! never come back here.

use std::{num::NonZeroUsize, sync::Mutex};

use lru::LruCache;
use ordermesh::proto::inventory::Reservation;
use uuid::Uuid;

/// How many reservations are remembered: a few seconds of orders at thousands per second
/// (a reservation usually settles within a second), a few MiB at most.
const CAPACITY: NonZeroUsize = NonZeroUsize::new(16_384).expect("non-zero");

pub struct Unsettled(Mutex<LruCache<Uuid, Reservation>>);

impl Default for Unsettled {
    fn default() -> Self {
        Unsettled(Mutex::new(LruCache::new(CAPACITY)))
    }
}

impl Unsettled {
    /// Remembers a reservation just written as reserved.
    pub fn remember(&self, order_id: Uuid, reservation: Reservation) {
        if let Ok(mut cache) = self.0.lock() {
            cache.put(order_id, reservation);
        }
    }

    /// The order's reservation as this process wrote it, forgotten from here on: a settlement
    /// either succeeds with it or falls back to the database.
    pub fn take(&self, order_id: Uuid) -> Option<Reservation> {
        self.0.lock().ok()?.pop(&order_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reservation(id: &str) -> Reservation {
        Reservation {
            reservation_id: id.into(),
            ..Reservation::default()
        }
    }

    #[test]
    fn a_reservation_is_taken_once() {
        let unsettled = Unsettled::default();
        let order = Uuid::now_v7();
        unsettled.remember(order, reservation("r1"));
        assert_eq!(
            unsettled.take(order).map(|r| r.reservation_id),
            Some("r1".to_string())
        );
        assert_eq!(unsettled.take(order), None);
    }

    #[test]
    fn the_oldest_is_dropped_past_capacity() {
        let unsettled = Unsettled::default();
        let first = Uuid::now_v7();
        unsettled.remember(first, reservation("first"));
        for _ in 0..CAPACITY.get() {
            unsettled.remember(Uuid::now_v7(), reservation("later"));
        }
        assert_eq!(unsettled.take(first), None);
    }
}
