//! `ordermesh projections rebuild`: rebuilds the order read model from its events. It runs the
//! order service binary's maintenance command, which uses the same `ORDERMESH_*` settings
//! (database URL, namespace) as the service.

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// Replay every order's events into a fresh `order_view` (in one transaction).
    Rebuild,
}

pub fn run(command: ProjectionsCommand) -> anyhow::Result<()> {
    match command {
        ProjectionsCommand::Rebuild => {
            let binary = std::env::current_exe()?.with_file_name("ordermesh-order");
            let status = std::process::Command::new(&binary)
                .arg("rebuild-projections")
                .status()
                .map_err(|e| {
                    anyhow::anyhow!(
                        "running {}: {e}; build it with `cargo build --workspace --bins`",
                        binary.display()
                    )
                })?;
            anyhow::ensure!(
                status.success(),
                "rebuilding projections failed (see above)"
            );
            Ok(())
        }
    }
}
