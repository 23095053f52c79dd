//! The end-to-end suite, one test binary (one link on a 2-core machine instead of twenty): every
//! module starts the real service binaries as processes against real PostgreSQL, NATS JetStream
//! and Redis (see `common`), each test in a namespace of its own so tests run in parallel.
//! `cargo test --test e2e <module>::` runs one area, e.g. `saga_engine::`.

/// The harness: `testkit/` (crate ordermesh-testkit).
use ordermesh_testkit as common;

mod chaos;
mod check;
mod cli;
mod clients;
mod contracts;
mod dead_letters;
mod docs;
mod exactly_once;
mod explorer;
mod fuzz_corpus;
mod grpcurl;
mod http;
mod images;
mod inventory;
mod lifecycle;
mod load;
mod manifests;
mod mesh;
mod observability;
mod projections;
mod saga;
mod saga_engine;
mod security;
mod validation;
