#!/usr/bin/env bash
# s5cmd (MIT), the parallel S3 copier make bench measures beside rclone, built once from the Go
# module pinned in tools/s5cmd/go.mod into .tools/s5cmd-<version>/s5cmd (git-ignored; later runs
# reuse it). Prints the binary's path on stdout.
#
# Usage: scripts/s5cmd.sh [build]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MOD=$ROOT/tools/s5cmd
VERSION=$(awk '$1 == "require" && $2 == "github.com/peak/s5cmd/v2" {print $3; exit}' "$MOD/go.mod")
BIN=$ROOT/.tools/s5cmd-$VERSION

log() { echo "s5cmd: $*" >&2; }

if [ ! -x "$BIN/s5cmd" ]; then
  command -v go >/dev/null || { log "go is required to build s5cmd (Go ≥ 1.25)"; exit 1; }
  log "building s5cmd $VERSION into ${BIN#"$ROOT"/} (once; 30 s measured cold on 2 busy cores, 1 s with a warm Go build cache)"
  t=$SECONDS
  mkdir -p "$BIN.partial"
  (cd "$MOD" && go build -trimpath \
    -ldflags="-s -w -X github.com/peak/s5cmd/v2/version.Version=$VERSION -X github.com/peak/s5cmd/v2/version.GitCommit=module" -o "$BIN.partial/s5cmd" github.com/peak/s5cmd/v2)
  mkdir -p "$BIN" && mv "$BIN.partial/s5cmd" "$BIN/" && rm -rf "$BIN.partial"
  log "built in $((SECONDS - t)) s"
fi
echo "$BIN/s5cmd"
