//! Payment: Charge (forward) and Refund (its compensation).

use ordermesh::{
    limits::bounded_reason,
    proto::{
        common::Money,
        payment::{ChargeRequest, PaymentStatus, RefundRequest},
    },
};

use super::{Answer, Callees, call, forward, undone};
use crate::model::{OrderEvent, OrderRow};

pub async fn charge(c: &Callees, key: String, order: &OrderRow, token: Option<&str>) -> Answer {
    let Some(token) = token else {
        return Answer::Refused("the payment token is no longer held".into());
    };
    let request = ChargeRequest {
        idempotency_key: key,
        order_id: order.order_id.to_string(),
        amount: Some(Money {
            currency_code: order.currency.clone(),
            amount_minor: order.total_minor,
        }),
        payment_token: token.into(),
        customer_id: order.customer_id.clone(),
    };
    let r = match forward(call!(c, payment, c.payment(), charge, request)) {
        Ok(r) => r,
        Err(no) => return no.into(),
    };
    match r.payment {
        Some(p) if p.status() == PaymentStatus::Captured => {
            Answer::Done(Some(OrderEvent::PaymentCaptured {
                payment_id: p.payment_id,
                processor_version: p.processor_version,
            }))
        }
        Some(p) => Answer::Refused(format!("payment declined: {}", p.decline_reason)),
        None => Answer::Refused("payment service returned no payment".into()),
    }
}

pub async fn refund(c: &Callees, key: String, order: &OrderRow, reason: &str) -> Answer {
    let request = RefundRequest {
        idempotency_key: key,
        order_id: order.order_id.to_string(),
        amount: None,
        reason: bounded_reason(reason),
    };
    undone(call!(c, payment, c.payment(), refund, request))
}
