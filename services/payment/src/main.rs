//! The payment service binary: see the crate documentation.

ordermesh::use_mimalloc!();

fn main() -> anyhow::Result<()> {
    ordermesh::server::main_with(
        ordermesh::config::ServiceName::Payment,
        ordermesh_payment::run,
    )
}
