# The two commands of the README: `make up` runs the mesh with a demo order, `make test` runs
# the whole suite. Both install and start what is missing first (scripts/infra.sh).
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: help infra up build build-release test lint fmt clean

help:
	@echo "make up    - install what is missing, build (release), start the mesh, place a demo order"
	@echo "make test  - install what is missing, then fmt check, clippy and the whole test suite"

infra:
	@scripts/infra.sh

build-release:
	$(CARGO) build --release --workspace --bins

build:
	$(CARGO) build --workspace --bins

up: infra build-release
	source .ordermesh/infra.env && ./target/release/ordermesh up --demo --prometheus

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) deny check licenses bans sources

# Service binaries are built first: the end-to-end tests start them as separate processes.
test: infra lint build
	source .ordermesh/infra.env && $(CARGO) test --workspace

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf .ordermesh
