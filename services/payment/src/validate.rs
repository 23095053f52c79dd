//! Request validation for every payment RPC: pure functions of the request, so the handlers
//! only store, and the fuzz targets (`fuzz/`) can drive them without a database.

use ordermesh::{
    domain::{Money, parse_required_text, parse_text, parse_uuid},
    limits::MAX_REASON_LEN,
    proto::payment::{ChargeRequest, GetPaymentRequest, RefundRequest},
    validation::{self, Violations},
};
use tonic::Status;
use uuid::Uuid;

/// An idempotency key and the order it acts for.
pub type Keyed = (String, Uuid);

/// The key and order, and the amount to charge (always positive).
pub fn charge(r: &ChargeRequest) -> Result<(Keyed, Money), Status> {
    let mut v = Violations::new();
    let keyed = validation::keyed(&mut v, &r.idempotency_key, &r.order_id);
    let amount = v.parse("amount", Money::parse(r.amount.as_ref()));
    if let Some(a) = amount {
        v.check(a.minor > 0, "amount.amount_minor", "must be greater than 0");
    }
    v.parse("payment_token", parse_required_text(&r.payment_token, 256));
    v.parse("customer_id", parse_text(&r.customer_id, 128));
    v.finish(keyed.zip(amount))
}

/// The key and order, and the amount to refund (`None`: everything charged). Its currency is
/// checked against the charge's by the store, which knows it.
pub fn refund(r: &RefundRequest) -> Result<(Keyed, Option<Money>), Status> {
    let mut v = Violations::new();
    let keyed = validation::keyed(&mut v, &r.idempotency_key, &r.order_id);
    let amount = match &r.amount {
        None => Some(None),
        Some(m) => v.parse("amount", Money::parse(Some(m))).map(Some),
    };
    v.parse("reason", parse_text(&r.reason, MAX_REASON_LEN));
    v.finish(keyed.zip(amount))
}

pub fn get_payment(r: &GetPaymentRequest) -> Result<Uuid, Status> {
    let mut v = Violations::new();
    let order_id = v.parse("order_id", parse_uuid(&r.order_id));
    v.finish(order_id)
}
