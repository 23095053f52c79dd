//! cargo-fuzz target; what it checks is in fuzz/checks/http_json.rs.
#![no_main]

// The target's checks live in fuzz/checks so that `make test` replays the corpus through the
// very same code as a plain test (tests/e2e/fuzz_corpus.rs), without an instrumented build.
#[path = "../checks/http_json.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check(data));
