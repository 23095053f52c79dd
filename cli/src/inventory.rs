//! `ordermesh inventory set|get`.

use clap::Subcommand;

use super::{Endpoints, output};
use ordermesh::proto::inventory::{GetItemRequest, Item, UpsertItemRequest};

#[derive(Debug, Subcommand)]
pub enum InventoryCommand {
    /// Create an item or set its available stock.
    Set {
        /// Stock keeping unit, e.g. LAPTOP.
        sku: String,
        /// Units available.
        available: i64,
        /// Product name (defaults to the SKU).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        endpoints: Endpoints,
    },
    /// Show an item's stock levels.
    Get {
        sku: String,
        #[command(flatten)]
        endpoints: Endpoints,
    },
}

pub async fn run(command: InventoryCommand) -> anyhow::Result<()> {
    match command {
        InventoryCommand::Set {
            sku,
            available,
            name,
            endpoints,
        } => {
            let url = &endpoints.inventory_endpoint;
            let mut c = endpoints.inventory()?;
            let request = UpsertItemRequest {
                name: name.unwrap_or_else(|| sku.clone()),
                sku,
                available,
            };
            let item = c
                .upsert_item(request)
                .await
                .map_err(|s| output::call_error("inventory", url, s))?
                .into_inner()
                .item;
            print_item(item.as_ref());
        }
        InventoryCommand::Get { sku, endpoints } => {
            let url = &endpoints.inventory_endpoint;
            let mut c = endpoints.inventory()?;
            let item = c
                .get_item(GetItemRequest { sku })
                .await
                .map_err(|s| output::call_error("inventory", url, s))?
                .into_inner()
                .item;
            print_item(item.as_ref());
        }
    }
    Ok(())
}

fn print_item(item: Option<&Item>) {
    if let Some(i) = item {
        println!(
            "{:<20} available {:>8}  reserved {:>8}  committed {:>8}  ({})",
            i.sku, i.available, i.reserved, i.committed, i.name
        );
    }
}
