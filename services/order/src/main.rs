//! The order service binary: see the crate documentation. Two maintenance commands run instead
//! of the server: `--print-saga-graph` and `rebuild-projections`.
use ordermesh::config::{ServiceName, Settings};

ordermesh::use_mimalloc!();

fn main() -> anyhow::Result<()> {
    let _crash_points = ordermesh_order::saga::crash_point::arm();
    match std::env::args().nth(1).as_deref() {
        Some("--print-saga-graph") => {
            print!("{}", ordermesh_order::saga::definition::mermaid());
            Ok(())
        }
        Some("rebuild-projections") => {
            let settings = Settings::load(ServiceName::Order)?;
            tokio::runtime::Runtime::new()?
                .block_on(ordermesh_order::rebuild::run_command(&settings))
        }
        _ => ordermesh::server::main_with(ServiceName::Order, ordermesh_order::run),
    }
}
