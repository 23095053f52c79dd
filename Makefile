# The two commands of the README: `make up` runs the mesh with a demo order, `make test` runs
# the whole suite. Both install and start what is missing first (scripts/infra.sh).
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: help infra up build build-release image test lint fmt fuzz fuzz-smoke bench chaos clean

help:
	@echo "make up    - install what is missing, build (release), start the mesh, place a demo order"
	@echo "make test  - install what is missing, then fmt check, clippy and the whole test suite"
	@echo "make fuzz  - run every fuzz target FUZZ_SECONDS (default 60) and keep the corpus"
	@echo "make chaos - every chaos scenario (kills, hangs, partitions, latency, overload); writes docs/chaos.md"
	@echo "make image - the five service images (podman, from release binaries; see k8s/README.md)"
	@echo "make bench - step search for the highest sustained order rate; writes bench/results/ and docs/capacity.md"

infra:
	@scripts/infra.sh

build-release:
	$(CARGO) build --release --workspace --bins

# The order service's crash points are compiled in for the tests (tests/e2e/saga_engine.rs).
build:
	$(CARGO) build --workspace --bins --features ordermesh-order/failpoints

# The five images from the release binaries, on a base assembled locally (no registry needed).
image: infra build-release
	scripts/image.sh release

up: infra build-release
	source .ordermesh/infra.env && ./target/release/ordermesh up --demo --prometheus

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) deny check licenses bans sources

# Service binaries are built first: the end-to-end tests start them as separate processes.
# The fuzz targets' corpus is replayed by a plain test (tests/e2e/fuzz_corpus.rs); libFuzzer runs
# are `make fuzz-smoke` and `make fuzz`, which need an instrumented build of their own.
test: infra lint build
	source .ordermesh/infra.env && $(CARGO) test --workspace

FUZZ_SECONDS ?= 60

# A few seconds of libFuzzer per target from the committed corpus (scripts/fuzz.sh).
fuzz-smoke: infra
	scripts/fuzz.sh smoke 3

fuzz: infra
	scripts/fuzz.sh run $(FUZZ_SECONDS)

# The whole chaos suite (the quick subset also runs in make test), then docs/chaos.md from it.
chaos: infra build
	rm -f target/chaos/results.jsonl
	source .ordermesh/infra.env && $(CARGO) test --test e2e chaos:: -- --include-ignored --test-threads 2
	python3 scripts/chaos-report.py

# BENCH_ARGS are passed to scripts/bench.py, e.g. BENCH_ARGS="--step-seconds 30 --start-rate 200".
BENCH_ARGS ?=
bench: infra build-release
	python3 -c 'import matplotlib' 2>/dev/null || python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore matplotlib
	source .ordermesh/infra.env && python3 scripts/bench.py $(BENCH_ARGS)
	python3 scripts/capacity.py

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf fuzz/target fuzz/artifacts
	rm -rf .ordermesh
