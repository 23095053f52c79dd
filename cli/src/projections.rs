//! `ordermesh projections rebuild`: rebuilds the order read model from its events. It runs the
//! order service binary's maintenance command, which uses the same `ORDERMESH_*` settings
//! (database URL, namespace) as the service.

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// Replay every order's events into `order_view`, in batches, while the mesh keeps serving;
    /// evicts the cached copy of every order whose row changed.
    Rebuild,
}

pub fn run(command: ProjectionsCommand) -> anyhow::Result<()> {
    match command {
        ProjectionsCommand::Rebuild => super::run_order_binary("rebuild-projections"),
    }
}
