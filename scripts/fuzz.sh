#!/usr/bin/env bash
# Runs every cargo-fuzz target under fuzz/ for a bounded time.
#
#   scripts/fuzz.sh smoke [SECONDS]  each target for SECONDS (default 3) from the committed corpus,
#                                    which it leaves untouched; dev build without a sanitizer so the
#                                    cold build stays short (make fuzz-smoke; `make test` instead
#                                    replays the corpus through the same checks, tests/e2e/fuzz_corpus.rs)
#   scripts/fuzz.sh run [SECONDS]    each target for SECONDS (default 60) with AddressSanitizer and
#                                    optimisations, new inputs kept in fuzz/corpus, which is then
#                                    minimised again (make fuzz)
#
# cargo-fuzz needs nightly-only compiler flags (-Zsanitizer, sancov passes); RUSTC_BOOTSTRAP=1
# lets the machine's stable toolchain accept them. A crash leaves its input in
# fuzz/artifacts/<target>/ and fails the run; replay it with `cargo fuzz run <target> <file>`.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
export RUSTC_BOOTSTRAP=1

# Installed here, not by scripts/infra.sh: only fuzzing needs it.
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> cargo install cargo-fuzz"
  cargo install --locked --quiet cargo-fuzz@0.13.2
fi

mode=${1:-smoke}
targets=$(cargo fuzz list)
# No unbounded allocation: libFuzzer fails an input that makes the process exceed these.
limits=(-rss_limit_mb=2048 -malloc_limit_mb=512 -max_len=65536 -timeout=10)

case "$mode" in
  smoke)
    seconds=${2:-3}
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    cargo fuzz build --dev --sanitizer none
    for t in $targets; do
      mkdir -p "$scratch/$t"
      echo "==> fuzz smoke: $t for ${seconds}s"
      # First corpus directory gets new inputs; the committed one is only read.
      if ! cargo fuzz run --dev --sanitizer none "$t" "$scratch/$t" "corpus/$t" -- \
        -max_total_time="$seconds" "${limits[@]}" -print_final_stats=1 >"$scratch/$t.log" 2>&1; then
        tail -n 40 "$scratch/$t.log"
        echo "fuzz target $t failed; the input is in fuzz/artifacts/$t/" >&2
        exit 1
      fi
      grep -E '^(INFO: seed corpus|stat::number_of_executed_units|stat::peak_rss_mb)' "$scratch/$t.log"
    done
    ;;
  run)
    seconds=${2:-60}
    cargo fuzz build
    for t in $targets; do
      mkdir -p "corpus/$t"
      echo "==> fuzz: $t for ${seconds}s"
      cargo fuzz run "$t" "corpus/$t" -- -max_total_time="$seconds" "${limits[@]}"
      cargo fuzz cmin "$t" "corpus/$t"
    done
    ;;
  *)
    echo "usage: scripts/fuzz.sh smoke|run [SECONDS]" >&2
    exit 2
    ;;
esac
