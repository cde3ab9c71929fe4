# snapstage — the verbs. Everything installs what it needs (a venv in .venv for moto/cargo-lambda)
# and starts/stops the local services it uses on loopback.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
SERVICES := scripts/services.sh
SAM := .venv-infra/sam/bin/sam
SAMCONFIG := $(CURDIR)/infra/samconfig.toml

.PHONY: help setup engines build test unit lint lint-infra demo demo-hybrid bench package deploy invoke services-start services-stop clean fuzz

help:
	@echo "make demo     run the whole pipeline locally (moto, the local Kubernetes control plane, Lambda Runtime API emulator)"
	@echo "make demo-hybrid  the hybrid Jenkins/Nexus flow locally (two FlashArray doubles, the local control plane)"
	@echo "make test     run every test against local services (starts and stops them)"
	@echo "make lint     cargo fmt --check and clippy -D warnings"
	@echo "make lint-infra  cfn-lint, sam validate --lint, checkov on infra/"
	@echo "make bench    release build, then cold start / size / wait cost / throughput vs peers -> bench/results.md"
	@echo "make package  arm64 bootstrap zips; make deploy (sam); make invoke FN=... EVENT=..."
	@echo "make fuzz     cargo-fuzz targets (invocation, contract, params, continuation), FUZZ_SECONDS each (default 60)"
	@echo "make build    debug build of the workspace"
	@echo "make setup    create .venv with moto[server], cargo-lambda, boto3"
	@echo "make engines  install Debian's PostgreSQL and MariaDB for the engine tests (root; apt-get)"

setup:
	scripts/setup.sh

# Debian's PostgreSQL and MariaDB (installed, never left running) for the engine tests
# (functions/deploy-staging-db/tests/engines.rs). Without root it prints the command; CI=true fails.
engines:
	scripts/engines.sh

build:
	# --all-targets: the same features as `cargo test` (dev-dependencies unify), so nothing builds twice
	$(CARGO) build --workspace --all-targets

# Unit and contract tests only: no services needed.
unit:
	$(CARGO) test --workspace --lib --bins

# The host-path CSI driver's own tests and csi-sanity first (Go, seconds), then every Rust test
# with the services up (moto, the local Kubernetes control plane: built once, see README) and the
# database engines installed (make engines).
test: setup engines build
	cd tools/kube && go test ./csi-hostpath/
	scripts/with-services.sh $(CARGO) test --workspace --all-targets

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# cfn-lint, sam validate --lint, checkov (CloudFormation + Kubernetes), and the template's
# parameters checked against the real binaries. Offline.
lint-infra: build
	scripts/lint-infra.sh

# arm64 bootstrap zips for Lambda (cargo lambda build --release --arm64; slow: 10+ min on 2 cores).
package:
	scripts/package.sh

deploy: setup
	scripts/lint-infra.sh --install
	PATH="$(CURDIR)/.venv/bin:$$PATH" $(SAM) build --beta-features --template-file infra/template.yaml
	if [ -f infra/samconfig.toml ]; then $(SAM) deploy --config-file $(SAMCONFIG); \
	else $(SAM) deploy --guided --config-file $(SAMCONFIG); fi

invoke:
	@test -n "$(FN)" && test -n "$(EVENT)" || { echo "usage: make invoke FN=<stack>-snapshot-production EVENT=events/direct/snapshot-production-dry-run.json" >&2; exit 2; }
	aws lambda invoke --function-name "$(FN)" --payload fileb://$(EVENT) out.json
	@cat out.json; echo

# The binary `make build` made: `cargo run -p snapstage-localenv` would resolve features for that
# one package and rebuild aws-sdk-ec2 and everything above it a second time.
demo: setup build
	scripts/with-services.sh $${CARGO_TARGET_DIR:-target}/debug/local-pipeline --seed

# The hybrid Jenkins/Nexus flow (README "The hybrid Jenkins/Nexus flow"): two FlashArray doubles
# (on-prem, Cloud Block Store), the local control plane, the pipeline, the on-prem rehydrate stage.
demo-hybrid: setup build
	scripts/with-services.sh $${CARGO_TARGET_DIR:-target}/debug/local-pipeline --hybrid

# Figures side by side with the peers (bench/README.md): release build (10–12 min clean), then ~10 min
# of measurements plus ~30 min for 10^6 small objects (BENCH_MANY=100000: a few minutes; + ~6 min once
# to build s3s-fs). No timing assertions anywhere.
bench: setup
	# the five functions only (-p): the binaries resolved as `make package` resolves them, without
	# the tests crate (a default member) unifying its features in
	$(CARGO) build --release --bins -p snapshot-production -p restore-to-staging -p deploy-staging-db -p replicate-artifacts-back -p roll-out-release
	bench/run.sh $${CARGO_TARGET_DIR:-target}/release

# Fuzzing (cargo-fuzz/libFuzzer on the stable toolchain via RUSTC_BOOTSTRAP=1; installs cargo-fuzz
# into .tools/ once). Not part of `make test` or CI: the first build alone takes several minutes.
FUZZ_SECONDS ?= 60
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz.sh

services-start: setup
	$(SERVICES) start

services-stop:
	$(SERVICES) stop

clean:
	$(SERVICES) stop
	$(CARGO) clean
