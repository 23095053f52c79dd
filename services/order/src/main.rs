//! The order service binary: see the crate documentation.
fn main() -> anyhow::Result<()> {
    ordermesh::server::main(ordermesh::config::ServiceName::Order, ordermesh_order::run)
}
