# snapstage — the verbs. Everything installs what it needs (a venv in .venv for moto/cargo-lambda)
# and starts/stops the local services it uses on loopback.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
SERVICES := scripts/services.sh

.PHONY: help setup build test unit lint demo bench package deploy invoke services-start services-stop clean

help:
	@echo "make demo     run the whole pipeline locally (moto + Lambda Runtime API emulator)"
	@echo "make test     run every test against local services (starts and stops them)"
	@echo "make lint     cargo fmt --check and clippy -D warnings"
	@echo "make build    debug build of the workspace"
	@echo "make setup    create .venv with moto[server], cargo-lambda, boto3"

setup:
	scripts/setup.sh

build:
	$(CARGO) build --workspace --bins

# Unit and contract tests only: no services needed.
unit:
	$(CARGO) test --workspace --lib --bins

test: setup build
	scripts/with-services.sh $(CARGO) test --workspace --all-targets

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

demo: setup build
	scripts/with-services.sh $(CARGO) run --quiet -p snapstage-localenv --bin local-pipeline -- --seed

services-start: setup
	$(SERVICES) start

services-stop:
	$(SERVICES) stop

clean:
	$(SERVICES) stop
	$(CARGO) clean
