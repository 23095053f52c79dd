//! Every request validation entry point of the five services, fed what a server receives: the
//! first byte picks an RPC, the rest is decoded as its protobuf request (exactly as tonic decodes
//! it). A decoded request must be accepted or rejected with INVALID_ARGUMENT naming at least one
//! field; accepted requests must respect the documented limits. Never a panic.

use ordermesh::{
    limits::{MAX_LINES, MAX_QUANTITY, MAX_STOCK},
    proto::{inventory, notification, order, payment, shipping},
    validation::field_violations,
};
use prost::Message;
use tonic::{Code, Status};

/// A rejection must be INVALID_ARGUMENT with field details a client can show.
fn rejected_well(status: &Status) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        !field_violations(status).is_empty(),
        "no field named: {status:?}"
    );
}

/// Decodes `bytes` as `M` and runs `check` on it; undecodable input is tonic's to refuse.
fn run<M: Message + Default, T>(
    bytes: &[u8],
    check: impl FnOnce(&M) -> Result<T, Status>,
    accepted: impl FnOnce(&M, T),
) {
    let Ok(request) = M::decode(bytes) else {
        return;
    };
    match check(&request) {
        Ok(parsed) => accepted(&request, parsed),
        Err(status) => rejected_well(&status),
    }
}

fn ignore<M, T>(_: &M, _: T) {}

/// One input: never a panic, whatever the bytes.
pub fn check(data: &[u8]) {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    match selector % 20 {
        0 => run(
            bytes,
            ordermesh_order::validate::create_order,
            |r: &order::CreateOrderRequest, o| {
                assert!((1..=MAX_LINES).contains(&o.lines.len()));
                assert_eq!(o.lines.len(), r.lines.len());
                assert!(
                    o.lines
                        .iter()
                        .all(|l| (1..=MAX_QUANTITY).contains(&l.quantity))
                );
                let sum: i64 = o
                    .lines
                    .iter()
                    .map(|l| l.quantity * l.unit_price_minor)
                    .sum();
                assert_eq!(sum, o.total.minor);
                assert!(o.total.minor <= ordermesh::domain::MAX_AMOUNT_MINOR);
            },
        ),
        1 => run(
            bytes,
            |r: &order::GetOrderRequest| ordermesh_order::validate::order_id(&r.order_id),
            ignore,
        ),
        2 => run(
            bytes,
            |r: &order::ListOrdersRequest| {
                ordermesh_order::validate::list_orders(r).map(|q| q.size)
            },
            |_, size| assert!((1..=ordermesh::limits::MAX_PAGE_SIZE).contains(&size)),
        ),
        3 => run(bytes, ordermesh_order::validate::cancel_order, ignore),
        4 => run(
            bytes,
            |r: &order::GetSagaTimelineRequest| ordermesh_order::validate::order_id(&r.order_id),
            ignore,
        ),
        5 => run(
            bytes,
            |r: &order::WatchOrderRequest| ordermesh_order::validate::order_id(&r.order_id),
            ignore,
        ),
        6 => run(
            bytes,
            ordermesh_inventory::validate::upsert_item,
            |r: &inventory::UpsertItemRequest, _| {
                assert!((0..=MAX_STOCK).contains(&r.available));
            },
        ),
        7 => run(bytes, ordermesh_inventory::validate::get_item, ignore),
        8 => run(
            bytes,
            ordermesh_inventory::validate::list_items,
            |_: &inventory::ListItemsRequest, (size, _)| {
                assert!((1..=ordermesh::limits::MAX_PAGE_SIZE).contains(&size));
            },
        ),
        9 => run(
            bytes,
            ordermesh_inventory::validate::reserve,
            |r: &inventory::ReserveRequest, (_, lines)| {
                assert_eq!(lines.len(), r.lines.len());
                assert!((1..=MAX_LINES).contains(&lines.len()));
            },
        ),
        10 => run(bytes, ordermesh_inventory::validate::release, ignore),
        11 => run(bytes, ordermesh_inventory::validate::commit, ignore),
        12 => run(
            bytes,
            ordermesh_inventory::validate::get_reservation,
            ignore,
        ),
        13 => run(
            bytes,
            ordermesh_payment::validate::charge,
            |_: &payment::ChargeRequest, (_, amount)| {
                assert!(amount.minor > 0);
            },
        ),
        14 => run(bytes, ordermesh_payment::validate::refund, ignore),
        15 => run(bytes, ordermesh_payment::validate::get_payment, ignore),
        16 => run(
            bytes,
            |r: &shipping::CreateLabelRequest| {
                ordermesh_shipping::validate::create_label(r).map(|(_, country)| country.len())
            },
            |_, country_len| assert_eq!(country_len, 2),
        ),
        17 => run(bytes, ordermesh_shipping::validate::cancel_label, ignore),
        18 => run(bytes, ordermesh_shipping::validate::get_label, ignore),
        _ => run(
            bytes,
            ordermesh_notification::validate::list_notifications,
            |_: &notification::ListNotificationsRequest, q| {
                assert!((1..=ordermesh::limits::MAX_PAGE_SIZE).contains(&q.size));
            },
        ),
    }
}
