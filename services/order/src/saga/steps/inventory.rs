//! Inventory: Reserve (forward), Commit (ConfirmOrder) and Release (its compensation).

use ordermesh::{
    limits::bounded_reason,
    proto::inventory::{
        CommitRequest, ReleaseRequest, ReservationLine, ReserveOutcome, ReserveRequest,
    },
};

use super::{Answer, Callees, call, forward, undone};
use crate::model::{OrderEvent, OrderRow};

pub async fn reserve(c: &Callees, key: String, order: &OrderRow) -> Answer {
    let request = ReserveRequest {
        idempotency_key: key,
        order_id: order.order_id.to_string(),
        lines: order
            .lines
            .0
            .iter()
            .map(|l| ReservationLine {
                sku: l.sku.clone(),
                quantity: l.quantity,
            })
            .collect(),
    };
    let r = match forward(call!(c, inventory, c.inventory.clone(), reserve, request)) {
        Ok(r) => r,
        Err(no) => return no.into(),
    };
    if r.outcome() == ReserveOutcome::Reserved {
        return Answer::Done(Some(OrderEvent::InventoryReserved {
            reservation_id: r.reservation.map(|r| r.reservation_id).unwrap_or_default(),
        }));
    }
    let short: Vec<String> = r
        .shortages
        .iter()
        .map(|s| {
            format!(
                "{} (requested {}, available {})",
                s.sku, s.requested, s.available
            )
        })
        .collect();
    Answer::Refused(format!("insufficient stock: {}", short.join(", ")))
}

pub async fn commit(c: &Callees, key: String, order: &OrderRow) -> Answer {
    let request = CommitRequest {
        idempotency_key: key,
        order_id: order.order_id.to_string(),
    };
    match forward(call!(c, inventory, c.inventory.clone(), commit, request)) {
        Ok(_) => Answer::Done(None),
        Err(no) => no.into(),
    }
}

pub async fn release(c: &Callees, key: String, order: &OrderRow, reason: &str) -> Answer {
    let request = ReleaseRequest {
        idempotency_key: key,
        order_id: order.order_id.to_string(),
        reason: bounded_reason(reason),
    };
    undone(call!(c, inventory, c.inventory.clone(), release, request))
}
