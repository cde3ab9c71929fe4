#!/usr/bin/env bash
# Starts/stops the local services the tests and the demo use, on loopback only:
#   moto "cloud"   (EC2/EBS, S3, STS, Secrets Manager, SSM)  127.0.0.1:$SNAPSTAGE_MOTO_CLOUD_PORT   (5100)
#   moto "on-prem" (S3, with IAM for per-user keys)          127.0.0.1:$SNAPSTAGE_MOTO_ONPREM_PORT  (5101)
#   versitygw      (a real on-prem S3 server, scripts/onprem-s3.sh)  127.0.0.1:$SNAPSTAGE_ONPREM_S3_PORT (5102);
#                  built from its Go module the first time. SNAPSTAGE_VERSITYGW=0 leaves it out.
#   the local Kubernetes control plane of real components (scripts/localkube.sh: kube-apiserver,
#   etcd, controllers, KWOK, snapshot-controller, CSI sidecars) 127.0.0.1:5120-5125; built from Go
#   modules the first time. SNAPSTAGE_LOCALKUBE=0 leaves it out (its tests then SKIP, or fail
#   under CI=true).
# Usage: scripts/services.sh start|stop|status|env
# `env` prints the variables tests read (eval "$(scripts/services.sh env)").
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=.run
mkdir -p "$RUN"
CLOUD_PORT=${SNAPSTAGE_MOTO_CLOUD_PORT:-5100}
ONPREM_PORT=${SNAPSTAGE_MOTO_ONPREM_PORT:-5101}

wait_http() { # url, name, pidfile
  for _ in $(seq 1 100); do
    if curl -fsS -o /dev/null "$1/moto-api/" 2>/dev/null; then return 0; fi
    if ! kill -0 "$(cat "$3")" 2>/dev/null; then echo "services: $2 exited; see $RUN/$2.log" >&2; return 1; fi
    sleep 0.2
  done
  echo "services: $2 did not answer on $1 within 20 s; see $RUN/$2.log" >&2
  return 1
}

start_moto() { # name port
  local pidf="$RUN/$1.pid"
  if [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; then return 0; fi
  .venv/bin/moto_server -H 127.0.0.1 -p "$2" >"$RUN/$1.log" 2>&1 &
  echo $! >"$pidf"
  wait_http "http://127.0.0.1:$2" "$1" "$pidf"
}

stop_one() {
  local pidf="$RUN/$1.pid"
  if [ -f "$pidf" ]; then
    kill "$(cat "$pidf")" 2>/dev/null || true
    rm -f "$pidf"
  fi
}

case "${1:-}" in
  start)
    [ -x .venv/bin/moto_server ] || scripts/setup.sh
    start_moto moto-cloud "$CLOUD_PORT"
    start_moto moto-onprem "$ONPREM_PORT"
    echo "services: moto cloud :$CLOUD_PORT, moto on-prem :$ONPREM_PORT" >&2
    if [ "${SNAPSTAGE_VERSITYGW:-1}" != 0 ]; then
      if command -v go >/dev/null || [ "${CI:-}" = true ]; then
        scripts/onprem-s3.sh start
      else
        echo "services: go not found: versitygw is not started (its tests print SKIP; install Go ≥ 1.25)" >&2
      fi
    fi
    if [ "${SNAPSTAGE_LOCALKUBE:-1}" != 0 ]; then
      if command -v go >/dev/null || [ "${CI:-}" = true ]; then
        scripts/localkube.sh start
      else
        echo "services: go not found: the local Kubernetes control plane is not started (its tests print SKIP; install Go ≥ 1.26)" >&2
      fi
    fi
    ;;
  stop)
    stop_one moto-cloud
    stop_one moto-onprem
    scripts/onprem-s3.sh stop
    scripts/localkube.sh stop
    ;;
  status)
    for s in moto-cloud moto-onprem; do
      if [ -f "$RUN/$s.pid" ] && kill -0 "$(cat "$RUN/$s.pid")" 2>/dev/null; then echo "$s running"; else echo "$s stopped"; fi
    done
    scripts/onprem-s3.sh status
    scripts/localkube.sh status
    ;;
  env)
    cat <<ENV
export AWS_ENDPOINT_URL=http://127.0.0.1:$CLOUD_PORT
export SNAPSTAGE_MOTO_CLOUD=http://127.0.0.1:$CLOUD_PORT
export SNAPSTAGE_MOTO_ONPREM=http://127.0.0.1:$ONPREM_PORT
export AWS_ACCESS_KEY_ID=testing
export AWS_SECRET_ACCESS_KEY=testing
export AWS_REGION=us-east-1
export AWS_DEFAULT_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true
ENV
    scripts/onprem-s3.sh env
    if [ "${SNAPSTAGE_LOCALKUBE:-1}" != 0 ] && [[ "$(scripts/localkube.sh status)" == *"kube-apiserver running"* ]]; then
      scripts/localkube.sh env
    fi
    ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
