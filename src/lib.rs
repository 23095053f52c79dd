//! ordermesh: contracts and the platform every service builds on. Each module is one concern;
//! services (in `services/`) depend on this crate, never the other way round.
#![forbid(unsafe_code)]

pub mod admin;
pub mod cache;
pub mod client;
pub mod client_limit;
pub mod config;
pub mod context;
pub mod db;
pub mod domain;
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
