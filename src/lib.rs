//! ordermesh: contracts and the platform every service builds on. Each module is one concern;
//! services (in `services/`) depend on this crate, never the other way round.
#![forbid(unsafe_code)]

pub mod admin;
pub mod audit;
pub mod cache;
pub mod client;
pub mod client_limit;
pub mod config;
pub mod config_reference;
pub mod context;
pub mod db;
pub mod display;
pub mod domain;
pub mod error;
pub mod events;
pub mod idempotency;
pub mod limits;
pub mod metrics;
pub mod nats;
pub mod proto;
pub mod ready;
pub mod resilience;
pub mod retention;
pub mod server;
pub mod signal;
pub mod startup;
pub mod telemetry;
pub mod validation;

pub use error::Error;

/// The allocator every ordermesh binary sets in its main.rs with `ordermesh::use_mimalloc!();`
/// (an allocator belongs to a binary, not to the library it links): a service allocates and
/// frees small buffers for every message, call and row, and glibc's malloc was 8 % of the order
/// service's CPU at load (bench/HISTORY.md).
pub use mimalloc::MiMalloc;

#[macro_export]
macro_rules! use_mimalloc {
    () => {
        #[global_allocator]
        static ALLOCATOR: $crate::MiMalloc = $crate::MiMalloc;
    };
}

/// Converts protobuf timestamps to and from chrono.
pub mod time {
    use chrono::{DateTime, Utc};

    pub fn to_proto(t: DateTime<Utc>) -> prost_types::Timestamp {
        prost_types::Timestamp {
            seconds: t.timestamp(),
            nanos: t.timestamp_subsec_nanos() as i32,
        }
    }
}
