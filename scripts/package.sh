#!/usr/bin/env bash
# Builds the four Lambda functions for provided.al2023 on arm64 as zips SAM can deploy:
#   target/lambda/<function>/bootstrap.zip
# with `cargo lambda build --release --arm64 --output-format zip`. cargo-lambda (PyPI) cross-links
# with zig (PyPI `ziglang`, a dependency of cargo-lambda), which pins an older glibc than this
# machine's; the script checks each bootstrap needs no glibc newer than AL2023's 2.34.
# A clean release build of the workspace takes 10-12 minutes on 2 cores (fat LTO).
#   scripts/package.sh            build the four zips, print their sizes
#   scripts/package.sh --check    only check the toolchain (cargo-lambda, zig, the arm64 target)
set -euo pipefail
cd "$(dirname "$0")/.."

FUNCTIONS=(snapshot-production restore-to-staging deploy-staging-db replicate-artifacts-back roll-out-release)
GLIBC_MAX=2.34 # Amazon Linux 2023

scripts/setup.sh # .venv with cargo-lambda and ziglang (idempotent)
# cargo-lambda finds zig as `python3 -m ziglang` from the venv's python.
export PATH="$PWD/.venv/bin:$PATH"

if command -v rustup >/dev/null; then
  if ! rustup target list --installed | grep -qx aarch64-unknown-linux-gnu; then
    echo "package: adding the Rust target aarch64-unknown-linux-gnu" >&2
    rustup target add aarch64-unknown-linux-gnu
  fi
else
  echo "package: no rustup; the toolchain must already have aarch64-unknown-linux-gnu" >&2
fi
echo "package: $(cargo-lambda lambda --version), zig $(python3 -m ziglang version)" >&2
[ "${1:-}" = "--check" ] && exit 0

packages=()
for f in "${FUNCTIONS[@]}"; do packages+=(--package "$f"); done
t0=$SECONDS
cargo lambda build --release --arm64 --output-format zip "${packages[@]}"
echo "package: built in $((SECONDS - t0)) s"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
status=0
printf '%-28s %12s %12s  %s\n' function "zip bytes" "bootstrap" "newest glibc symbol"
for f in "${FUNCTIONS[@]}"; do
  zip="target/lambda/$f/bootstrap.zip"
  if [ ! -f "$zip" ]; then
    echo "package: $zip is missing" >&2
    status=1
    continue
  fi
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("bootstrap", sys.argv[2])' "$zip" "$tmp/$f"
  glibc="(objdump not found: not checked)"
  if command -v objdump >/dev/null; then
    glibc=$(objdump -T "$tmp/$f/bootstrap" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -1)
    if [ "$(printf '%s\n%s\n' "$glibc" "$GLIBC_MAX" | sort -V | tail -1)" != "$GLIBC_MAX" ]; then
      echo "package: $f needs glibc $glibc; Lambda's provided.al2023 has $GLIBC_MAX" >&2
      status=1
    fi
  fi
  printf '%-28s %12s %12s  %s\n' "$f" "$(stat -c %s "$zip")" "$(stat -c %s "$tmp/$f/bootstrap")" "$glibc"
done
exit $status
