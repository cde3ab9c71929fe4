#!/usr/bin/env bash
# make fuzz: runs every cargo-fuzz target in fuzz/ for FUZZ_SECONDS each (default 60).
#
# cargo-fuzz drives libFuzzer and passes nightly-only `-Z` flags to rustc. Only a stable
# toolchain is assumed here, so RUSTC_BOOTSTRAP=1 lets the stable compiler accept them (for
# this build only; nothing else is built that way). cargo-fuzz is installed into .tools/ on
# first use (`cargo install cargo-fuzz --locked`, a few minutes once).
#
# Builds with the dev profile and no sanitizer by default: snapstage forbids unsafe code, so the
# targets look for panics, broken invariants (assertions in fuzz/fuzz_targets/) and overflows
# (debug assertions on). FUZZ_SANITIZER=address and FUZZ_RELEASE=1 give the slower, deeper run.
# Seeds: every events/**.json sample, its UserParameters, and a few tokens (fuzz/corpus/, not
# committed); a crash is written to fuzz/artifacts/<target>/ and fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${FUZZ_SECONDS:-60}
TARGETS=${FUZZ_TARGETS:-"invocation contract params continuation"}
SANITIZER=${FUZZ_SANITIZER:-none}
TOOLS="$PWD/.tools"
export PATH="$TOOLS/bin:$PATH"
export RUSTC_BOOTSTRAP=1

if ! command -v cargo-fuzz >/dev/null; then
  echo "fuzz: installing cargo-fuzz into $TOOLS (once)" >&2
  cargo install cargo-fuzz --locked --root "$TOOLS"
fi

# Seed corpora from events/ (each file as it is; UserParameters and direct requests for params).
python3 - <<'PY'
import json, pathlib, hashlib
root = pathlib.Path("fuzz/corpus")
events = sorted(pathlib.Path("events").rglob("*.json"))
def put(target, data):
    d = root / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()).write_bytes(data)
for f in events:
    raw = f.read_bytes()
    put("invocation", raw)
    put("contract", raw)
    v = json.loads(raw)
    job = v.get("CodePipeline.job") if isinstance(v, dict) else None
    if job:
        data = job.get("data", {})
        up = data.get("actionConfiguration", {}).get("configuration", {}).get("UserParameters")
        if up:
            put("params", b"\n" + up.encode())
            put("params", b'{"dryRun": true}\n' + up.encode())
        if data.get("continuationToken"):
            put("continuation", data["continuationToken"].encode())
    elif isinstance(v, dict) and "detail" not in v:
        params = {k: x for k, x in v.items() if k not in ("executionId", "continuationToken")}
        put("params", b"\n" + json.dumps(params).encode())
        if "continuationToken" in v:
            put("continuation", str(v["continuationToken"]).encode())
# A real token of each function (ss1. + base64url of the state), and foreign ones.
import base64
for fn in ("snapshot-production", "restore-to-staging"):
    state = {"f": fn, "e": "shop/0f1e2d3c/Snapshot", "n": 1, "s": {"ids": ["snap-0123456789abcdef0"]}}
    put("continuation", b"ss1." + base64.urlsafe_b64encode(json.dumps(state).encode()).rstrip(b"="))
for t in (b"token_ID", b"ss1.", b"ss1.e30", b"ss2.AAAA"):
    put("continuation", t)
PY

build_flags=(-s "$SANITIZER")
if [ "${FUZZ_RELEASE:-0}" != 1 ]; then build_flags+=(--dev); fi

cd fuzz
nice cargo fuzz build "${build_flags[@]}"
for t in $TARGETS; do
  echo "fuzz: $t for ${SECONDS_EACH}s" >&2
  mkdir -p "corpus/$t" "artifacts/$t"
  nice cargo fuzz run "${build_flags[@]}" "$t" "corpus/$t" -- \
    -max_total_time="$SECONDS_EACH" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 2>&1 | tail -n 25
done
echo "fuzz: done; corpora in fuzz/corpus/, crashes (none, or the run failed) in fuzz/artifacts/" >&2
