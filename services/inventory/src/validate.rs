//! Request validation for every inventory RPC: pure functions of the request, so the handlers
//! only store, and the fuzz targets (`fuzz/`) can drive them without a database.

use ordermesh::{
    domain::{Sku, parse_required_text, parse_text, parse_uuid},
    limits::{self, MAX_REASON_LEN, MAX_STOCK},
    proto::inventory::{
        CommitRequest, GetItemRequest, GetReservationRequest, ListItemsRequest, ReleaseRequest,
        ReserveRequest, UpsertItemRequest,
    },
    validation::{self, Violations},
};
use tonic::Status;
use uuid::Uuid;

/// An idempotency key and the order it acts for.
pub type Keyed = (String, Uuid);

pub fn upsert_item(r: &UpsertItemRequest) -> Result<(Sku, String), Status> {
    let mut v = Violations::new();
    let sku = v.parse("sku", Sku::parse(&r.sku));
    let name = v.parse("name", parse_required_text(&r.name, 200));
    v.check(
        (0..=MAX_STOCK).contains(&r.available),
        "available",
        format!("must be between 0 and {MAX_STOCK}, got {}", r.available),
    );
    v.finish(sku.zip(name))
}

pub fn get_item(r: &GetItemRequest) -> Result<Sku, Status> {
    let mut v = Violations::new();
    let sku = v.parse("sku", Sku::parse(&r.sku));
    v.finish(sku)
}

/// The page size and the SKU to continue after.
pub fn list_items(r: &ListItemsRequest) -> Result<(u32, Option<Sku>), Status> {
    let page = r.page.clone().unwrap_or_default();
    let mut v = Violations::new();
    let size = v.parse("page.page_size", limits::page_size(page.page_size));
    let after = if page.page_token.is_empty() {
        None
    } else {
        v.parse(
            "page.page_token",
            Sku::parse(&page.page_token).map_err(|_| "is not a token from this API"),
        )
    };
    v.into_result()?;
    Ok((size.unwrap_or(limits::DEFAULT_PAGE_SIZE), after))
}

pub fn reserve(r: &ReserveRequest) -> Result<(Keyed, Vec<(Sku, i64)>), Status> {
    let mut v = Violations::new();
    let keyed = validation::keyed(&mut v, &r.idempotency_key, &r.order_id);
    let lines = validation::lines(
        &mut v,
        "lines",
        r.lines.iter().map(|l| (l.sku.as_str(), l.quantity)),
    );
    Ok((v.finish(keyed)?, lines))
}

pub fn release(r: &ReleaseRequest) -> Result<Keyed, Status> {
    let mut v = Violations::new();
    let keyed = validation::keyed(&mut v, &r.idempotency_key, &r.order_id);
    v.parse("reason", parse_text(&r.reason, MAX_REASON_LEN));
    v.finish(keyed)
}

pub fn commit(r: &CommitRequest) -> Result<Keyed, Status> {
    let mut v = Violations::new();
    let keyed = validation::keyed(&mut v, &r.idempotency_key, &r.order_id);
    v.finish(keyed)
}

pub fn get_reservation(r: &GetReservationRequest) -> Result<Uuid, Status> {
    let mut v = Violations::new();
    let order_id = v.parse("order_id", parse_uuid(&r.order_id));
    v.finish(order_id)
}
