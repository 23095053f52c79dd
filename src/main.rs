//! The `ordermesh` command line: run the mesh locally and talk to it. See `ordermesh --help`.
use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    ordermesh::cli::run(ordermesh::cli::Cli::parse()).await
}
