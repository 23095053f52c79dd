//! The order read model, `order_view`, as a function of the order's events ([`Projection`]).
//! Three writes keep it, and all derive the row from the same projection:
//! - CreateOrder inserts the row in the statement that appends the Submitted event
//!   (`store::create`);
//! - every journal entry updates the projected columns in the statement that appends its events
//!   (the `view` step of the batch statement in `saga/journal.rs`, fed by [`advance`]);
//! - a rebuild replays the events ([`Replay`]) and [`upsert`]s the rows that differ
//!   (`rebuild.rs` walks the orders in batches).
//!
//! The first two stay inside their statements so the view is never behind its events.

use chrono::{DateTime, Utc};
use ordermesh::proto::order::OrderStatus;
use sqlx::types::Json;
use uuid::Uuid;

use crate::model::{AddressRecord, LineRecord, OrderEvent, OrderRow};

/// The mutable part of an order's view row, as events change it. [`Projection::apply`] is the
/// projection: the journal's live writes and the rebuild both use it, so they agree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Projection {
    pub status: OrderStatus,
    pub confirmation_number: String,
    pub tracking_number: String,
    pub failure_reason: String,
    pub version: i64,
}

impl Projection {
    pub fn of(row: &OrderRow) -> Projection {
        Projection {
            status: OrderStatus::from_str_name(&row.status).unwrap_or_default(),
            confirmation_number: row.confirmation_number.clone(),
            tracking_number: row.tracking_number.clone(),
            failure_reason: row.failure_reason.clone(),
            version: row.version,
        }
    }

    /// Applies the next event (version `self.version + 1`).
    pub fn apply(&mut self, event: &OrderEvent) {
        self.version += 1;
        match event {
            OrderEvent::Submitted { .. } => self.status = OrderStatus::Pending,
            OrderEvent::InventoryReserved { .. } => self.status = OrderStatus::InventoryReserved,
            OrderEvent::PaymentCaptured { .. } => self.status = OrderStatus::PaymentProcessed,
            OrderEvent::LabelCreated { tracking_number } => {
                self.tracking_number = tracking_number.clone()
            }
            OrderEvent::Confirmed {
                confirmation_number,
            } => {
                self.status = OrderStatus::Confirmed;
                self.confirmation_number = confirmation_number.clone();
            }
            OrderEvent::CompensationStarted { reason, .. } => {
                self.status = OrderStatus::Compensating;
                self.failure_reason = reason.clone();
            }
            OrderEvent::Compensated { .. } => {}
            OrderEvent::Cancelled { .. } => self.status = OrderStatus::Cancelled,
            OrderEvent::Failed { reason } => {
                self.status = OrderStatus::Failed;
                self.failure_reason = reason.clone();
            }
        }
    }

    /// Writes the projected columns into `row`.
    pub fn write_to(self, row: &mut OrderRow) {
        row.status = self.status.as_str_name().to_string();
        row.confirmation_number = self.confirmation_number;
        row.tracking_number = self.tracking_number;
        row.failure_reason = self.failure_reason;
        row.version = self.version;
    }
}

/// `row` after `events`, appended by one journal entry committed at `at`: what the `view` step
/// of the journal's batch statement writes.
pub fn advance(row: &mut OrderRow, events: &[OrderEvent], at: DateTime<Utc>) {
    if events.is_empty() {
        return;
    }
    let mut projection = Projection::of(row);
    for event in events {
        projection.apply(event);
    }
    projection.write_to(row);
    row.updated_at = at;
}

/// An order's view row rebuilt from its events, fed in version order.
pub struct Replay {
    row: OrderRow,
    projection: Projection,
}

impl Replay {
    /// Starts from the order's first event, which must be Submitted: it carries what never
    /// changes (customer, lines, address).
    pub fn start(order_id: Uuid, first: &OrderEvent, at: DateTime<Utc>) -> anyhow::Result<Replay> {
        let OrderEvent::Submitted {
            customer_id,
            currency,
            total_minor,
            lines,
            shipping_address,
            shipping_method,
            request_id,
        } = first
        else {
            anyhow::bail!("order {order_id} does not start with a submitted event");
        };
        let row = OrderRow {
            order_id,
            customer_id: customer_id.clone(),
            status: String::new(),
            currency: currency.clone(),
            total_minor: *total_minor,
            lines: Json(lines.clone()),
            shipping_address: Json(shipping_address.clone()),
            shipping_method: shipping_method.clone(),
            confirmation_number: String::new(),
            tracking_number: String::new(),
            failure_reason: String::new(),
            request_id: request_id.clone(),
            created_at: at,
            updated_at: at,
            version: 0,
        };
        let projection = Projection::of(&row);
        let mut replay = Replay { row, projection };
        replay.apply(first, at);
        Ok(replay)
    }

    pub fn order_id(&self) -> Uuid {
        self.row.order_id
    }

    /// Applies the next event, recorded at `at`.
    pub fn apply(&mut self, event: &OrderEvent, at: DateTime<Utc>) {
        self.projection.apply(event);
        self.row.updated_at = at;
    }

    pub fn finish(self) -> OrderRow {
        let mut row = self.row;
        self.projection.write_to(&mut row);
        row
    }
}

/// Writes rebuilt `rows` where they are missing or differ, in one statement; the ids written.
pub async fn upsert(tx: &mut sqlx::PgConnection, rows: &[OrderRow]) -> anyhow::Result<Vec<Uuid>> {
    let column = |f: fn(&OrderRow) -> String| rows.iter().map(f).collect::<Vec<String>>();
    let lines: Vec<Json<Vec<LineRecord>>> = rows.iter().map(|r| r.lines.clone()).collect();
    let addresses: Vec<Json<AddressRecord>> =
        rows.iter().map(|r| r.shipping_address.clone()).collect();
    let changed = sqlx::query_scalar(
        "INSERT INTO order_view AS v (order_id, customer_id, status, currency, total_minor, lines,
             shipping_address, shipping_method, confirmation_number, tracking_number, failure_reason,
             request_id, created_at, updated_at, version)
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::jsonb[],
             $7::jsonb[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
             $13::timestamptz[], $14::timestamptz[], $15::bigint[])
         ON CONFLICT (order_id) DO UPDATE SET customer_id = EXCLUDED.customer_id, status = EXCLUDED.status,
             currency = EXCLUDED.currency, total_minor = EXCLUDED.total_minor, lines = EXCLUDED.lines,
             shipping_address = EXCLUDED.shipping_address, shipping_method = EXCLUDED.shipping_method,
             confirmation_number = EXCLUDED.confirmation_number, tracking_number = EXCLUDED.tracking_number,
             failure_reason = EXCLUDED.failure_reason, request_id = EXCLUDED.request_id,
             created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at, version = EXCLUDED.version
         WHERE (v.customer_id, v.status, v.currency, v.total_minor, v.lines, v.shipping_address,
                v.shipping_method, v.confirmation_number, v.tracking_number, v.failure_reason,
                v.request_id, v.created_at, v.updated_at, v.version)
               IS DISTINCT FROM
               (EXCLUDED.customer_id, EXCLUDED.status, EXCLUDED.currency, EXCLUDED.total_minor,
                EXCLUDED.lines, EXCLUDED.shipping_address, EXCLUDED.shipping_method,
                EXCLUDED.confirmation_number, EXCLUDED.tracking_number, EXCLUDED.failure_reason,
                EXCLUDED.request_id, EXCLUDED.created_at, EXCLUDED.updated_at, EXCLUDED.version)
         RETURNING order_id",
    )
    .bind(rows.iter().map(|r| r.order_id).collect::<Vec<Uuid>>())
    .bind(column(|r| r.customer_id.clone()))
    .bind(column(|r| r.status.clone()))
    .bind(column(|r| r.currency.clone()))
    .bind(rows.iter().map(|r| r.total_minor).collect::<Vec<i64>>())
    .bind(lines)
    .bind(addresses)
    .bind(column(|r| r.shipping_method.clone()))
    .bind(column(|r| r.confirmation_number.clone()))
    .bind(column(|r| r.tracking_number.clone()))
    .bind(column(|r| r.failure_reason.clone()))
    .bind(column(|r| r.request_id.clone()))
    .bind(rows.iter().map(|r| r.created_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.updated_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.version).collect::<Vec<i64>>())
    .fetch_all(&mut *tx)
    .await?;
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_projection_follows_a_compensated_saga_to_cancelled() {
        let mut p = Projection {
            status: OrderStatus::Pending,
            confirmation_number: String::new(),
            tracking_number: String::new(),
            failure_reason: String::new(),
            version: 1,
        };
        p.apply(&OrderEvent::InventoryReserved {
            reservation_id: "r".into(),
        });
        p.apply(&OrderEvent::CompensationStarted {
            failed_step: "process-payment".into(),
            reason: "declined".into(),
        });
        assert_eq!(p.status, OrderStatus::Compensating);
        p.apply(&OrderEvent::Compensated {
            step: "release-inventory".into(),
        });
        p.apply(&OrderEvent::Cancelled {
            reason: "declined".into(),
        });
        assert_eq!(
            (p.status, p.failure_reason.as_str(), p.version),
            (OrderStatus::Cancelled, "declined", 5)
        );
    }

    #[test]
    fn a_replay_needs_a_submitted_event_first() {
        let at = Utc::now();
        let first = OrderEvent::Cancelled { reason: "x".into() };
        assert!(Replay::start(Uuid::now_v7(), &first, at).is_err());
    }
}
