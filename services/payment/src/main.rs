//! The payment service binary: see the crate documentation.

/// mimalloc, in every ordermesh binary: a service allocates and frees small buffers for every
/// message, call and row, and glibc's malloc was 8 % of the order service's CPU at load
/// (bench/HISTORY.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    ordermesh::server::main_with(
        ordermesh::config::ServiceName::Payment,
        ordermesh_payment::run,
    )
}
