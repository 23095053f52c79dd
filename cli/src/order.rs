//! `ordermesh order create|get`.

use clap::Subcommand;

use super::{Endpoints, output};
use ordermesh::proto::{
    common::{Address, Money},
    order::{CreateOrderRequest, GetOrderRequest, Order, OrderLine, OrderStatus, ShippingMethod},
};

#[derive(Debug, Subcommand)]
pub enum OrderCommand {
    /// Place an order.
    Create(Box<CreateArgs>),
    /// Show an order.
    Get {
        /// The order id (UUID).
        order_id: String,
        #[command(flatten)]
        endpoints: Endpoints,
    },
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// A line as SKU:QUANTITY:UNIT_PRICE_MINOR, e.g. LAPTOP:1:129900 (repeat for more lines).
    #[arg(long = "line", required = true, value_parser = parse_line)]
    lines: Vec<(String, i64, i64)>,
    /// ISO 4217 currency of the unit prices.
    #[arg(long, default_value = "USD")]
    currency: String,
    #[arg(long, default_value = "demo-customer")]
    customer: String,
    /// Payment token (sandbox: `declined_token` declines, anything else approves).
    #[arg(long, default_value = "tok_visa")]
    token: String,
    /// Client request id: retrying with the same id returns the same order.
    #[arg(long, default_value = "")]
    request_id: String,
    #[arg(long, default_value = "Ada Lovelace")]
    recipient: String,
    #[arg(long, default_value = "12 Analytical Row")]
    street: String,
    #[arg(long, default_value = "London")]
    city: String,
    #[arg(long, default_value = "N1 9GU")]
    postal_code: String,
    /// ISO 3166-1 alpha-2 country code.
    #[arg(long, default_value = "GB")]
    country: String,
    /// standard, express or overnight.
    #[arg(long, default_value = "standard", value_parser = ["standard", "express", "overnight"])]
    shipping: String,
    #[command(flatten)]
    endpoints: Endpoints,
}

fn parse_line(raw: &str) -> Result<(String, i64, i64), String> {
    let parts: Vec<&str> = raw.split(':').collect();
    let [sku, quantity, price] = parts.as_slice() else {
        return Err(format!(
            "{raw:?} is not SKU:QUANTITY:UNIT_PRICE_MINOR (e.g. LAPTOP:1:129900)"
        ));
    };
    let quantity = quantity
        .parse()
        .map_err(|_| format!("quantity {quantity:?} in {raw:?} is not a whole number"))?;
    let price = price.parse().map_err(|_| {
        format!("unit price {price:?} in {raw:?} is not a whole number of minor units (cents)")
    })?;
    Ok((sku.to_string(), quantity, price))
}

pub async fn run(command: OrderCommand) -> anyhow::Result<()> {
    match command {
        OrderCommand::Create(args) => {
            let url = &args.endpoints.order_endpoint;
            let request = CreateOrderRequest {
                request_id: args.request_id.clone(),
                customer_id: args.customer.clone(),
                lines: args
                    .lines
                    .iter()
                    .map(|(sku, quantity, price)| OrderLine {
                        sku: sku.clone(),
                        quantity: *quantity,
                        unit_price: Some(Money {
                            currency_code: args.currency.clone(),
                            amount_minor: *price,
                        }),
                    })
                    .collect(),
                shipping_address: Some(Address {
                    recipient_name: args.recipient.clone(),
                    line1: args.street.clone(),
                    city: args.city.clone(),
                    postal_code: args.postal_code.clone(),
                    country_code: args.country.clone(),
                    ..Default::default()
                }),
                shipping_method: ShippingMethod::from_str_name(&format!(
                    "SHIPPING_METHOD_{}",
                    args.shipping.to_uppercase()
                ))
                .unwrap_or_default() as i32,
                payment_token: args.token.clone(),
            };
            let response = args
                .endpoints
                .order()?
                .create_order(request)
                .await
                .map_err(|s| output::call_error("order", url, s))?
                .into_inner();
            if !response.created {
                println!("(request id seen before: this is the order it created)");
            }
            print_order(response.order.as_ref());
        }
        OrderCommand::Get {
            order_id,
            endpoints,
        } => {
            let url = &endpoints.order_endpoint;
            let order = endpoints
                .order()?
                .get_order(GetOrderRequest { order_id })
                .await
                .map_err(|s| output::call_error("order", url, s))?
                .into_inner()
                .order;
            print_order(order.as_ref());
        }
    }
    Ok(())
}

/// Prints an order as a short block of text.
pub fn print_order(order: Option<&Order>) {
    let Some(o) = order else { return };
    println!("order        {}", o.order_id);
    println!(
        "status       {}",
        OrderStatus::try_from(o.status)
            .unwrap_or_default()
            .as_str_name()
            .trim_start_matches("ORDER_STATUS_")
    );
    if !o.confirmation_number.is_empty() {
        println!("confirmation {}", o.confirmation_number);
    }
    if !o.failure_reason.is_empty() {
        println!("reason       {}", o.failure_reason);
    }
    println!("total        {}", output::money(o.total.as_ref()));
    for l in &o.lines {
        println!(
            "  {:>5} × {:<20} @ {}",
            l.quantity,
            l.sku,
            output::money(l.unit_price.as_ref())
        );
    }
    println!("created      {}", output::timestamp(o.created_at.as_ref()));
}
