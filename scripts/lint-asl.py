#!/usr/bin/env python3
"""Validates the state machine definitions in infra/statemachine/ offline.

cfn-lint checks an inline `Definition` against the Step Functions (ASL) schema, but not a
`DefinitionUri` file. So, for every AWS::Serverless::StateMachine of infra/template.yaml with a
local DefinitionUri, this script
  1. checks every ${placeholder} of the file is one of the resource's DefinitionSubstitutions,
     and every substitution is used;
  2. writes a one-resource template with the file inlined as `Definition` (placeholders replaced
     by sample values of the right kind) and runs cfn-lint on it.
Exits non-zero on any finding. Run by scripts/lint-infra.sh with its cfn-lint.
"""
import json
import pathlib
import re
import subprocess
import sys
import tempfile

from cfnlint.decode import cfn_yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "infra" / "template.yaml"
PLACEHOLDER = re.compile(r"\$\{([A-Za-z0-9_]+)\}")
# Sample values by substitution name: ARNs where the definition expects one.
SAMPLES = {"ReplicateFunctionArn": "arn:aws:lambda:us-east-1:123456789012:function:sample"}


def main() -> int:
    template = cfn_yaml.load(str(TEMPLATE))
    failed = False
    for name, res in template.get("Resources", {}).items():
        if res.get("Type") != "AWS::Serverless::StateMachine":
            continue
        props = res.get("Properties", {})
        uri = props.get("DefinitionUri")
        if not isinstance(uri, str):
            continue
        path = TEMPLATE.parent / uri
        text = path.read_text()
        used = set(PLACEHOLDER.findall(text))
        given = set(props.get("DefinitionSubstitutions", {}))
        for missing in sorted(used - given):
            print(f"{path}: ${{{missing}}} is not in {name}.DefinitionSubstitutions")
            failed = True
        for unused in sorted(given - used):
            print(f"{name}.DefinitionSubstitutions.{unused} is not used in {path}")
            failed = True
        rendered = PLACEHOLDER.sub(lambda m: SAMPLES.get(m.group(1), "sample"), text)
        doc = {
            "AWSTemplateFormatVersion": "2010-09-09",
            "Resources": {
                name: {
                    "Type": "AWS::StepFunctions::StateMachine",
                    "Properties": {
                        "RoleArn": "arn:aws:iam::123456789012:role/sample",
                        "Definition": json.loads(rendered),
                    },
                }
            },
        }
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(doc, f)
        r = subprocess.run([str(pathlib.Path(sys.executable).parent / "cfn-lint"), f.name])
        pathlib.Path(f.name).unlink()
        if r.returncode != 0:
            print(f"{path}: cfn-lint found the above in the definition")
            failed = True
        else:
            print(f"{path}: valid ASL ({name}), substitutions match")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
