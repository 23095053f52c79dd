//! Shipping: CreateLabel (forward) and CancelLabel (its compensation).

use ordermesh::{
    limits::bounded_reason,
    proto::{
        common::Address,
        order::ShippingMethod,
        shipping::{CancelLabelRequest, CreateLabelRequest},
    },
};

use super::{Answer, Callees, call, forward, undone};
use crate::model::{OrderEvent, OrderRow};

pub async fn create_label(c: &Callees, key: String, order: &OrderRow) -> Answer {
    let method =
        ShippingMethod::from_str_name(&order.shipping_method).unwrap_or(ShippingMethod::Standard);
    let service_level = match method {
        ShippingMethod::Express => "express",
        ShippingMethod::Overnight => "overnight",
        _ => "standard",
    };
    let request = CreateLabelRequest {
        idempotency_key: key,
        order_id: order.order_id.to_string(),
        address: Some(Address::from(order.shipping_address.0.clone())),
        service_level: service_level.into(),
        units: order.lines.0.iter().map(|l| l.quantity).sum(),
    };
    match forward(call!(
        c,
        shipping,
        c.shipping.clone(),
        create_label,
        request
    )) {
        Ok(r) => Answer::Done(Some(OrderEvent::LabelCreated {
            tracking_number: r.label.map(|l| l.tracking_number).unwrap_or_default(),
        })),
        Err(no) => no.into(),
    }
}

pub async fn cancel_label(c: &Callees, key: String, order: &OrderRow, reason: &str) -> Answer {
    let request = CancelLabelRequest {
        idempotency_key: key,
        order_id: order.order_id.to_string(),
        reason: bounded_reason(reason),
    };
    undone(call!(
        c,
        shipping,
        c.shipping.clone(),
        cancel_label,
        request
    ))
}
