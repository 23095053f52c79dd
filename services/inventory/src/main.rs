//! The inventory service binary: see the crate documentation.
fn main() -> anyhow::Result<()> {
    ordermesh::server::main(
        ordermesh::config::ServiceName::Inventory,
        ordermesh_inventory::run,
    )
}
