//! Request validation for every order RPC: every problem reported at once, nothing stored on
//! any of them. Pure functions of the request, so the fuzz targets (`fuzz/`) drive them directly.

use ordermesh::{
    domain::{Currency, Money, parse_required_text, parse_text, parse_uuid},
    limits,
    proto::{
        common::Address,
        order::{
            CancelOrderRequest, CreateOrderRequest, ListOrdersRequest, OrderStatus, ShippingMethod,
        },
    },
    validation::{self, Violations},
};
use tonic::Status;
use uuid::Uuid;

use crate::model::{AddressRecord, LineRecord, NewOrder};

const MAX_ID_LEN: usize = 128;
const MAX_TOKEN_LEN: usize = 256;
const MAX_ADDRESS_FIELD_LEN: usize = 200;

/// Checks a CreateOrder request and returns the order to store.
pub fn create_order(r: &CreateOrderRequest) -> Result<NewOrder, Status> {
    let mut v = Violations::new();
    let request_id = if r.request_id.is_empty() {
        Some(None)
    } else {
        v.parse("request_id", printable_id(&r.request_id).map(Some))
    };
    let customer_id = v.parse("customer_id", printable_id(&r.customer_id));
    let parsed_lines = validation::lines(
        &mut v,
        "lines",
        r.lines.iter().map(|l| (l.sku.as_str(), l.quantity)),
    );

    let mut currency: Option<Currency> = None;
    let mut total: Option<i64> = Some(0);
    let mut lines = Vec::with_capacity(parsed_lines.len());
    if parsed_lines.len() == r.lines.len() {
        for (i, (line, (sku, quantity))) in r.lines.iter().zip(&parsed_lines).enumerate() {
            let field = format!("lines[{i}].unit_price");
            let Some(price) = v.parse(&field, Money::parse(line.unit_price.as_ref())) else {
                continue;
            };
            match currency {
                None => currency = Some(price.currency),
                Some(c) if c != price.currency => {
                    v.add(
                        &field,
                        format!(
                            "all lines must use one currency; line 0 uses {c}, this one {}",
                            price.currency
                        ),
                    );
                }
                Some(_) => {}
            }
            total = total.and_then(|t| {
                price
                    .minor
                    .checked_mul(*quantity)
                    .and_then(|line_total| t.checked_add(line_total))
            });
            lines.push(LineRecord {
                sku: sku.to_string(),
                quantity: *quantity,
                unit_price_minor: price.minor,
            });
        }
    }
    if total.is_none_or(|t| t > ordermesh::domain::MAX_AMOUNT_MINOR) {
        v.add("lines", "the order total is too large");
    }

    let address = address(&mut v, r.shipping_address.as_ref());
    let shipping_method = match ShippingMethod::try_from(r.shipping_method) {
        Ok(ShippingMethod::Unspecified) => Some(ShippingMethod::Standard),
        Ok(method) => Some(method),
        Err(_) => {
            v.add(
                "shipping_method",
                format!(
                    "unknown value {}; use STANDARD, EXPRESS or OVERNIGHT",
                    r.shipping_method
                ),
            );
            None
        }
    };
    v.parse(
        "payment_token",
        parse_required_text(&r.payment_token, MAX_TOKEN_LEN),
    );

    let parsed = request_id
        .zip(customer_id)
        .zip(currency)
        .zip(total)
        .zip(address)
        .zip(shipping_method);
    let (((((request_id, customer_id), currency), total), address), shipping_method) =
        v.finish(parsed)?;
    Ok(NewOrder {
        request_id,
        customer_id,
        lines,
        total: Money {
            currency,
            minor: total,
        },
        address,
        shipping_method,
    })
}

/// The `order_id` of GetOrder, GetSagaTimeline and WatchOrder.
pub fn order_id(raw: &str) -> Result<Uuid, Status> {
    let mut v = Violations::new();
    let order_id = v.parse("order_id", parse_uuid(raw));
    v.finish(order_id)
}

/// What ListOrders asks for: page size, the id to continue before, and the filters.
#[derive(Debug)]
pub struct ListQuery<'a> {
    pub size: u32,
    pub before: Option<Uuid>,
    pub customer_id: Option<&'a str>,
    pub status: Option<OrderStatus>,
}

pub fn list_orders(r: &ListOrdersRequest) -> Result<ListQuery<'_>, Status> {
    let mut v = Violations::new();
    let (size, before) = validation::uuid_page(&mut v, r.page.clone());
    let status = match OrderStatus::try_from(r.status) {
        Ok(OrderStatus::Unspecified) => None,
        Ok(status) => Some(status),
        Err(_) => {
            v.add("status", format!("unknown order status {}", r.status));
            None
        }
    };
    v.check(
        r.customer_id.len() <= MAX_ID_LEN,
        "customer_id",
        format!("must be at most {MAX_ID_LEN} characters"),
    );
    let size = v.finish(size)?;
    Ok(ListQuery {
        size,
        before,
        customer_id: (!r.customer_id.is_empty()).then_some(r.customer_id.as_str()),
        status,
    })
}

/// The order to cancel; the reason is required (it is shown to the customer).
pub fn cancel_order(r: &CancelOrderRequest) -> Result<Uuid, Status> {
    let mut v = Violations::new();
    let order_id = v.parse("order_id", parse_uuid(&r.order_id));
    v.parse(
        "reason",
        parse_required_text(&r.reason, limits::MAX_REASON_LEN),
    );
    v.finish(order_id)
}

/// 1-128 printable ASCII characters: client request ids, customer ids.
fn printable_id(raw: &str) -> Result<String, String> {
    if raw.is_empty() {
        return Err("must not be empty".into());
    }
    if raw.len() > MAX_ID_LEN {
        return Err(format!("must be at most {MAX_ID_LEN} characters"));
    }
    if !raw.chars().all(|c| c.is_ascii_graphic()) {
        return Err("must be printable ASCII without spaces".into());
    }
    Ok(raw.to_string())
}

fn address(v: &mut Violations, address: Option<&Address>) -> Option<AddressRecord> {
    let Some(a) = address else {
        v.add("shipping_address", "is required");
        return None;
    };
    let before = v.is_empty();
    let required = [
        ("shipping_address.recipient_name", &a.recipient_name),
        ("shipping_address.line1", &a.line1),
        ("shipping_address.city", &a.city),
        ("shipping_address.postal_code", &a.postal_code),
    ];
    for (field, value) in required {
        v.parse(field, parse_required_text(value, MAX_ADDRESS_FIELD_LEN));
    }
    v.parse(
        "shipping_address.line2",
        parse_text(&a.line2, MAX_ADDRESS_FIELD_LEN),
    );
    v.parse(
        "shipping_address.region",
        parse_text(&a.region, MAX_ADDRESS_FIELD_LEN),
    );
    let country_ok =
        a.country_code.len() == 2 && a.country_code.chars().all(|c| c.is_ascii_uppercase());
    v.check(
        country_ok,
        "shipping_address.country_code",
        "must be an ISO 3166-1 alpha-2 code such as US or DE",
    );
    (before && v.is_empty()).then(|| AddressRecord::from(a))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ordermesh::{
        proto::{common, order::OrderLine},
        validation::field_violations,
    };

    fn valid() -> CreateOrderRequest {
        CreateOrderRequest {
            request_id: "req-1".into(),
            customer_id: "cust-1".into(),
            lines: vec![
                OrderLine {
                    sku: "LAPTOP".into(),
                    quantity: 1,
                    unit_price: Some(usd(99_900)),
                },
                OrderLine {
                    sku: "MOUSE".into(),
                    quantity: 2,
                    unit_price: Some(usd(2_500)),
                },
            ],
            shipping_address: Some(Address {
                recipient_name: "Ada".into(),
                line1: "1 Main St".into(),
                city: "Springfield".into(),
                postal_code: "12345".into(),
                country_code: "US".into(),
                ..Default::default()
            }),
            shipping_method: 0,
            payment_token: "tok_visa".into(),
        }
    }

    fn usd(amount_minor: i64) -> common::Money {
        common::Money {
            currency_code: "USD".into(),
            amount_minor,
        }
    }

    fn fields(r: &CreateOrderRequest) -> Vec<String> {
        let status = create_order(r).expect_err("invalid");
        field_violations(&status)
            .into_iter()
            .map(|(f, _)| f)
            .collect()
    }

    #[test]
    fn a_valid_order_gets_its_total_and_standard_shipping() {
        let order = create_order(&valid()).expect("valid");
        assert_eq!(order.total.minor, 99_900 + 2 * 2_500);
        assert_eq!(order.shipping_method, ShippingMethod::Standard);
        assert_eq!(order.request_id.as_deref(), Some("req-1"));
    }

    #[test]
    fn mixed_currencies_are_rejected_on_the_offending_line() {
        let mut r = valid();
        r.lines[1].unit_price = Some(common::Money {
            currency_code: "EUR".into(),
            amount_minor: 1,
        });
        assert_eq!(fields(&r), vec!["lines[1].unit_price"]);
    }

    #[test]
    fn unknown_shipping_methods_and_missing_address_fields_are_named() {
        let mut r = valid();
        r.shipping_method = 42;
        if let Some(a) = r.shipping_address.as_mut() {
            a.city.clear();
            a.country_code = "usa".into();
        }
        assert_eq!(
            fields(&r),
            vec![
                "shipping_address.city",
                "shipping_address.country_code",
                "shipping_method"
            ]
        );
    }

    #[test]
    fn totals_that_would_overflow_are_rejected() {
        let mut r = valid();
        r.lines = (0..100)
            .map(|i| OrderLine {
                sku: format!("SKU-{i}"),
                quantity: 10_000,
                unit_price: Some(usd(ordermesh::domain::MAX_AMOUNT_MINOR)),
            })
            .collect();
        assert_eq!(fields(&r), vec!["lines"]);
    }
}
