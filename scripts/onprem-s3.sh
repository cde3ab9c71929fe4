#!/usr/bin/env bash
# The on-prem S3 server of the tests and benchmarks, a real one: Versity's S3 gateway (versitygw,
# Apache-2.0) on its POSIX backend, the way on-prem shops put S3 over a file system, on loopback:
#   versitygw   http://127.0.0.1:$SNAPSTAGE_ONPREM_S3_PORT (5102), buckets are directories under
#               .run/versitygw/data, object metadata (ETag, user metadata) in extended attributes
# Built once from the Go module pinned in tools/s3/go.mod into .tools/versitygw-<version>/ (cold:
# 9 min measured on 2 busy cores; later runs reuse it). MinIO's server, the other obvious choice, is
# AGPL-licensed, which this project does not take in.
#
# Usage: scripts/onprem-s3.sh build|start|stop|status|env
#   env prints SNAPSTAGE_ONPREM_S3 (the endpoint) for the tests; the root user's keys are the
#   local services' AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (testing / testing).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MOD=$ROOT/tools/s3
RUN=$ROOT/.run/versitygw
PORT=${SNAPSTAGE_ONPREM_S3_PORT:-5102}
VERSION=$(awk '{for (i = 1; i < NF; i++) if ($i == "github.com/versity/versitygw") {print $(i + 1); exit}}' "$MOD/go.mod")
BIN=$ROOT/.tools/versitygw-$VERSION

log() { echo "onprem-s3: $*" >&2; }

build() {
  [ -x "$BIN/versitygw" ] && return 0
  command -v go >/dev/null || { log "go is required to build versitygw (Go ≥ 1.25)"; exit 1; }
  log "building versitygw $VERSION into ${BIN#"$ROOT"/} (once; measured 9 min cold on 2 busy cores, seconds with a warm Go build cache)"
  local t=$SECONDS
  mkdir -p "$BIN.partial"
  (cd "$MOD" && go build -trimpath -ldflags="-s -w" -o "$BIN.partial/versitygw" github.com/versity/versitygw/cmd/versitygw)
  mkdir -p "$BIN" && mv "$BIN.partial/versitygw" "$BIN/" && rm -rf "$BIN.partial"
  log "built in $((SECONDS - t)) s"
}

running() { [ -f "$RUN/pid" ] && kill -0 "$(cat "$RUN/pid")" 2>/dev/null; }

start() {
  running && return 0
  build
  mkdir -p "$RUN/data"
  # An anonymous request is answered (403) once the gateway listens.
  "$BIN/versitygw" --access testing --secret testing --region us-east-1 \
    --port "127.0.0.1:$PORT" --quiet posix "$RUN/data" >"$RUN/log" 2>&1 &
  echo $! >"$RUN/pid"
  for _ in $(seq 1 100); do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/" 2>/dev/null)" != 000 ]; then
      log "versitygw $VERSION on :$PORT"
      return 0
    fi
    running || { log "versitygw exited; see ${RUN#"$ROOT"/}/log"; cat "$RUN/log" >&2; return 1; }
    sleep 0.2
  done
  log "versitygw did not answer on :$PORT within 20 s; see ${RUN#"$ROOT"/}/log"
  return 1
}

stop() {
  if running; then kill "$(cat "$RUN/pid")" 2>/dev/null || true; fi
  rm -f "$RUN/pid"
  rm -rf "$RUN/data"
}

case "${1:-}" in
  build) build ;;
  start) start ;;
  stop) stop ;;
  status) if running; then echo "versitygw running"; else echo "versitygw stopped"; fi ;;
  env) running && echo "export SNAPSTAGE_ONPREM_S3=http://127.0.0.1:$PORT" || true ;;
  *) echo "usage: $0 build|start|stop|status|env" >&2; exit 2 ;;
esac
