//! The notification service binary: see the crate documentation.

ordermesh::use_mimalloc!();

fn main() -> anyhow::Result<()> {
    ordermesh::server::main(
        ordermesh::config::ServiceName::Notification,
        ordermesh_notification::run,
    )
}
