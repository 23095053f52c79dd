//! The fuzz targets' checks (fuzz/checks), run as a plain test on every input of their committed
//! corpus and on seeded random mutations of it. This is the fuzzing `make test` does: it shares
//! the workspace's build, where a libFuzzer smoke run needed a separate instrumented build of
//! every dependency (about five of CI's minutes). Coverage-guided fuzzing is `make fuzz`.
//!
//! A failing input is written to `fuzz/artifacts/<target>/` so that
//! `cargo fuzz run <target> <file>` replays it; `FUZZ_SEED` repeats a run's mutations.

use std::{
    fs,
    panic::{self, AssertUnwindSafe},
    path::{Path, PathBuf},
};

#[path = "../../fuzz/checks/http_json.rs"]
mod http_json;
#[path = "../../fuzz/checks/jetstream_messages.rs"]
mod jetstream_messages;
#[path = "../../fuzz/checks/requests.rs"]
mod requests;

/// Mutated inputs per target, on top of the corpus: about a second of a debug build each.
const MUTATIONS: usize = 100_000;
/// libFuzzer's `-max_len` in scripts/fuzz.sh.
const MAX_LEN: usize = 65_536;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = fuzz_dir().join("corpus").join(target);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .collect();
    files.sort();
    let inputs: Vec<Vec<u8>> = files
        .iter()
        .map(|f| fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display())))
        .collect();
    assert!(
        inputs.len() >= 100,
        "the committed corpus of {target} has only {} inputs",
        inputs.len()
    );
    inputs
}

/// One of libFuzzer's simpler mutations: change, insert or remove bytes, or splice two inputs.
fn mutate(rng: &mut fastrand::Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut data = corpus[rng.usize(..corpus.len())].clone();
    for _ in 0..rng.usize(1..=4) {
        let at = rng.usize(..=data.len());
        match rng.u8(..5) {
            0 if at < data.len() => data[at] ^= 1 << rng.u8(..8),
            1 if at < data.len() => data[at] = rng.u8(..),
            2 => data.insert(at, rng.u8(..)),
            3 if at < data.len() => {
                data.remove(at);
            }
            _ => {
                let other = &corpus[rng.usize(..corpus.len())];
                let from = rng.usize(..=other.len());
                data.splice(at..at, other[from..].iter().copied());
            }
        }
    }
    data.truncate(MAX_LEN);
    data
}

/// Runs `check` on the corpus and on mutations of it; a panic saves the input and fails.
fn fuzz(target: &str, check: fn(&[u8])) {
    let corpus = corpus(target);
    let seed = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!(
        "{target}: {} corpus inputs, {MUTATIONS} mutations, FUZZ_SEED={seed}",
        corpus.len()
    );
    let mut rng = fastrand::Rng::with_seed(seed);
    let mutated = (0..MUTATIONS).map(|_| mutate(&mut rng, &corpus));
    for (n, data) in corpus.iter().cloned().chain(mutated).enumerate() {
        if panic::catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
            let dir = fuzz_dir().join("artifacts").join(target);
            fs::create_dir_all(&dir).expect("artifacts directory");
            let file = dir.join(format!("crash-test-{seed}-{n}"));
            fs::write(&file, &data).expect("failing input written");
            panic!(
                "{target} failed on input {n} (FUZZ_SEED={seed}), saved as {}",
                file.display()
            );
        }
    }
}

#[test]
fn every_request_decodes_to_accepted_or_rejected_with_field_details() {
    fuzz("requests", requests::check);
}

#[test]
fn every_jetstream_message_and_header_set_is_handled_without_a_panic() {
    fuzz("jetstream_messages", jetstream_messages::check);
}

#[test]
fn every_http_order_body_is_refused_or_validated_like_grpc() {
    fuzz("http_json", http_json::check);
}
