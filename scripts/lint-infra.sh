#!/usr/bin/env bash
# Lints the deployable stack offline: cfn-lint and `sam validate --lint` on infra/template.yaml,
# scripts/check-template-params.py (the template's JSON parameters against the built functions,
# for every StorageBackend / ArtifactReplication choice, and each choice's permissions),
# scripts/lint-asl.py (the state machine definitions of infra/statemachine/ through cfn-lint's
# Step Functions schema, and their DefinitionSubstitutions against the template),
# checkov on infra/ (CloudFormation and Kubernetes manifests). Then once per backend choice
# (check-template-params.py --variants: a copy of the template whose parameter defaults are that
# choice, so checkov evaluates its Conditions): cfn-lint, `sam validate --lint` and checkov again.
# Exits non-zero on any finding.
# Installs requirements-infra.txt and requirements-checkov.txt into project-local venvs under
# .venv-infra/ on first use (and again when a requirements file changes). Idempotent.
#   scripts/lint-infra.sh            install if needed, then lint
#   scripts/lint-infra.sh --install  install only
# Suppressions live next to what they suppress (`# checkov:skip=CKV_...: reason` in manifests,
# Metadata.checkov.skip in the template), each with its reason; never --skip-check here.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# Two venvs: checkov pins an older boto3 than aws-sam-cli, so they cannot share one.
SAM_VENV=.venv-infra/sam         # cfn-lint, aws-sam-cli   (requirements-infra.txt)
CHECKOV_VENV=.venv-infra/checkov # checkov                 (requirements-checkov.txt)
TEMPLATE=infra/template.yaml

install_venv() { # venv, requirements file
  local venv=$1 req=$2 stamp="$1/.snapstage-requirements"
  if [ ! -x "$venv/bin/python" ]; then
    mkdir -p "$(dirname "$venv")"
    "$PY" -m venv "$venv"
  fi
  if [ ! -f "$stamp" ] || ! cmp -s "$req" "$stamp"; then
    local t0=$SECONDS
    echo "lint-infra: installing $req into $venv (first run takes a minute or two)" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
    cp "$req" "$stamp"
    echo "lint-infra: $venv installed in $((SECONDS - t0)) s" >&2
  fi
}

install() {
  install_venv "$SAM_VENV" requirements-infra.txt
  install_venv "$CHECKOV_VENV" requirements-checkov.txt
}

install
[ "${1:-}" = "--install" ] && exit 0

# Everything below is offline: no AWS account is contacted and no credentials are needed
# (`sam validate --lint` runs the SAM transform and cfn-lint locally; measured here with no
# credentials, no region and no ~/.aws). The region only picks cfn-lint's regional specs.
export AWS_DEFAULT_REGION=${AWS_DEFAULT_REGION:-us-east-1}
export AWS_EC2_METADATA_DISABLED=true
export SAM_CLI_TELEMETRY=0
export BC_SKIP_MAPPING=TRUE # checkov: no download of the Bridgecrew guideline mapping

failed=()
run() { # name, command...
  local name=$1; shift
  local t0=$SECONDS
  echo "== $name: $*"
  if "$@"; then
    echo "-- $name: ok ($((SECONDS - t0)) s)"
  else
    echo "-- $name: FAILED ($((SECONDS - t0)) s)"
    failed+=("$name")
  fi
}

run cfn-lint "$SAM_VENV/bin/cfn-lint" "$TEMPLATE" infra/k8s/eks-access-entry.yaml
run sam-validate "$SAM_VENV/bin/sam" validate --lint --template-file "$TEMPLATE" --region "$AWS_DEFAULT_REGION"
# A DefinitionUri file is not validated by cfn-lint: this inlines each and lints that.
run asl "$SAM_VENV/bin/python" scripts/lint-asl.py
# The JSON the template hands the functions (SNAPSTAGE_DEFAULTS, UserParameters, #{Ns.Key}) against
# the real binaries in target/debug (a printed SKIP for any not built: run `make build` first).
run template-params "$SAM_VENV/bin/python" scripts/check-template-params.py
run checkov "$CHECKOV_VENV/bin/checkov" -d infra --framework cloudformation kubernetes --quiet --compact \
  --skip-download

# Every backend choice as it would be deployed ("ebs" is the template above, by its defaults).
variants=$(mktemp -d)
trap 'rm -rf "$variants"' EXIT
mapfile -t copies < <("$SAM_VENV/bin/python" scripts/check-template-params.py --variants "$variants")
[ ${#copies[@]} -gt 0 ] || failed+=("template-variants")
# One cfn-lint and one checkov process for all of them (each finding names its file).
run "cfn-lint[choices]" "$SAM_VENV/bin/cfn-lint" "${copies[@]}"
for v in "${copies[@]}"; do
  choice=$(basename "$v" .json)
  run "sam-validate[${choice#template-}]" "$SAM_VENV/bin/sam" validate --lint --template-file "$v" \
    --region "$AWS_DEFAULT_REGION"
done
checkov_files=()
for v in "${copies[@]}"; do checkov_files+=(-f "$v"); done
run "checkov[choices]" "$CHECKOV_VENV/bin/checkov" "${checkov_files[@]}" --framework cloudformation --quiet \
  --compact --skip-download

if [ ${#failed[@]} -gt 0 ]; then
  echo "lint-infra: findings from: ${failed[*]}" >&2
  exit 1
fi
echo "lint-infra: cfn-lint, sam validate --lint, asl, template-params and checkov found nothing (every backend choice)"
