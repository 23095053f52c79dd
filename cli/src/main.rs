//! The `ordermesh` command line: run the mesh locally and talk to it. See `ordermesh --help`.
use clap::Parser;

// mimalloc, as in every service binary: `ordermesh load` allocates per order it sends.
ordermesh::use_mimalloc!();

#[tokio::main]
async fn main() -> std::process::ExitCode {
    ordermesh_cli::run(ordermesh_cli::Cli::parse()).await
}
