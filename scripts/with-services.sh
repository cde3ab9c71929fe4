#!/usr/bin/env bash
# Runs a command with the local services started, and stops them afterwards whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."
started=0
# (the status captured first: `grep -q` would close the pipe early, a failure under pipefail)
if [[ "$(scripts/services.sh status)" != *"moto-cloud running"* ]]; then
  scripts/services.sh start
  started=1
fi
cleanup() { if [ "$started" = 1 ]; then scripts/services.sh stop; fi; }
trap cleanup EXIT
eval "$(scripts/services.sh env)"
"$@"
