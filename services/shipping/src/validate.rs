//! Request validation for every shipping RPC: pure functions of the request, so the handlers
//! only store, and the fuzz targets (`fuzz/`) can drive them without a database.

use ordermesh::{
    domain::{parse_required_text, parse_text, parse_uuid},
    limits::MAX_REASON_LEN,
    proto::shipping::{CancelLabelRequest, CreateLabelRequest, GetLabelRequest},
    validation::{self, Violations},
};
use tonic::Status;
use uuid::Uuid;

/// An idempotency key and the order it acts for.
pub type Keyed = (String, Uuid);

const SERVICE_LEVELS: [&str; 3] = ["standard", "express", "overnight"];

/// The key and order, and the destination country code (two upper-case letters).
pub fn create_label(r: &CreateLabelRequest) -> Result<(Keyed, &str), Status> {
    let mut v = Violations::new();
    let keyed = validation::keyed(&mut v, &r.idempotency_key, &r.order_id);
    v.check(
        SERVICE_LEVELS.contains(&r.service_level.as_str()),
        "service_level",
        "must be one of standard, express, overnight",
    );
    v.check(
        (1..=1_000_000).contains(&r.units),
        "units",
        format!("must be between 1 and 1000000, got {}", r.units),
    );
    let country = match &r.address {
        None => {
            v.add("address", "is required");
            None
        }
        Some(a) => {
            v.parse("address.line1", parse_required_text(&a.line1, 200));
            v.parse("address.city", parse_required_text(&a.city, 200));
            let ok =
                a.country_code.len() == 2 && a.country_code.chars().all(|c| c.is_ascii_uppercase());
            v.check(
                ok,
                "address.country_code",
                "must be an ISO 3166-1 alpha-2 code such as US or DE",
            );
            Some(a.country_code.as_str())
        }
    };
    v.finish(keyed.zip(country))
}

pub fn cancel_label(r: &CancelLabelRequest) -> Result<Keyed, Status> {
    let mut v = Violations::new();
    let keyed = validation::keyed(&mut v, &r.idempotency_key, &r.order_id);
    v.parse("reason", parse_text(&r.reason, MAX_REASON_LEN));
    v.finish(keyed)
}

pub fn get_label(r: &GetLabelRequest) -> Result<Uuid, Status> {
    let mut v = Violations::new();
    let order_id = v.parse("order_id", parse_uuid(&r.order_id));
    v.finish(order_id)
}
