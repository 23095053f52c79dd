//! The order service binary: see the crate documentation.
fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("--print-saga-graph") {
        print!("{}", ordermesh_order::saga::definition::mermaid());
        return Ok(());
    }
    ordermesh::server::main(ordermesh::config::ServiceName::Order, ordermesh_order::run)
}
