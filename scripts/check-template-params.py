#!/usr/bin/env python3
"""Checks that the JSON infra/template.yaml hands the functions is what the functions accept.

For a few sets of sample stack parameters it resolves, offline, each function's SNAPSTAGE_DEFAULTS
and the pipeline's UserParameters / CodeBuild EnvironmentVariables (Ref, Fn::Sub, Fn::Join, Fn::If
and the Conditions), then:
  - every value must be valid JSON of the right shape; UserParameters at most 1000 characters;
  - the pipeline's snapshot action keeps the stack's SnapshotRetain snapshots (`retain`);
  - each function's real binary (target/debug/<name>, from `cargo build`) must accept the merged
    parameters: a direct request with dryRun=true and AWS endpoints pointed at a closed loopback
    port must fail, if at all, for the unreachable endpoint and never with ConfigurationError
    (unknown key, wrong type, missing required parameter).
Run by scripts/lint-infra.sh with the venv that has cfn-lint (its YAML loader reads the !Tags).
Exit status: 0 ok, 1 findings, 2 usage. A missing binary is a printed SKIP, never silent.
"""
import json
import os
import re
import subprocess
import sys

from cfnlint.decode.cfn_yaml import load

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The binaries `cargo build` made (CARGO_TARGET_DIR, as cargo reads it, else target/).
BIN_DIR = os.path.join(os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target"), "debug")
TEMPLATE = os.environ.get("SNAPSTAGE_TEMPLATE", os.path.join(ROOT, "infra", "template.yaml"))

FUNCTIONS = {
    "SnapshotProductionFunction": "snapshot-production",
    "RestoreToStagingFunction": "restore-to-staging",
    "DeployStagingDbFunction": "deploy-staging-db",
    "ReplicateArtifactsBackFunction": "replicate-artifacts-back",
    "RollOutReleaseFunction": "roll-out-release",
}

# What upstream actions publish, for #{Namespace.Key} in UserParameters.
PIPELINE_VARIABLES = {
    "SourceVariables.CommitId": "0123456789abcdef0123456789abcdef01234567",
    "Build.ImageId": "ami-0123456789abcdef0",
    "codepipeline.PipelineExecutionId": "3f2a1b4c-5d6e-4f70-8a9b-0c1d2e3f4a5b",
    "Snapshot.SnapshotId": "snap-0123456789abcdef0",
    "Restore.VolumeId": "vol-0fedcba9876543210",
    "Restore.AvailabilityZone": "us-east-1a",
    "StagingDb.Endpoint": "postgresql.snapstage-1a2b3c.svc.cluster.local:5432",
    "StagingDb.Namespace": "snapstage-1a2b3c",
    "StagingDb.SecretName": "postgresql-credentials",
    "StagingDb.Mode": "applied",
    "StagingDb.Engine": "postgresql",
    "StagingDb.Port": "5432",
    "StagingDb.Service": "staging-db",
}

BASE = {
    "ProductionVolumeIds": ["vol-0123456789abcdef0", "vol-0123456789abcdef1"],
    "StagingAvailabilityZone": "us-east-1a",
    "ArtifactBucketName": "acme-nexus-blobs",
    "OnPremBucket": "nexus-backup",
    "RepositoryName": "shop-api",
}
SCENARIOS = {
    "on-prem endpoint with a credentials secret": {
        **BASE,
        "ArtifactPrefix": "nexus/blobs/",
        "OnPremEndpoint": "https://flashblade.corp.example:443",
        "OnPremCredentialsSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:snapstage/onprem-AbCdEf",
        "EksClusterName": "staging",
        "StagingDbEngine": "mysql",
        "VpcSubnetIds": ["subnet-0123456789abcdef0"],
        "VpcSecurityGroupIds": ["sg-0123456789abcdef0"],
        "IntegrationTestVpcId": "vpc-0123456789abcdef0",
        "IntegrationTestSubnetIds": ["subnet-0123456789abcdef1", "subnet-0123456789abcdef2"],
        "IntegrationTestSecurityGroupIds": ["sg-0123456789abcdef1"],
    },
    "destination bucket in AWS, all defaults": dict(BASE),
    "plan only, no cluster": {**BASE, "StagingDbPlanOnly": "true"},
    "snapshots kept for a month": {**BASE, "SnapshotRetain": "30"},
    "release to production with an alarm and more groups": {
        **BASE,
        "RolloutAutoScalingGroupName": "shop-web-prod",
        "RolloutAllowedGroups": "shop-web-canary,shop-api-*",
        "RolloutAlarmName": "shop-web-5xx",
        "RolloutMinHealthyPercentage": "75",
        "RolloutInstanceRoleArn": "arn:aws:iam::123456789012:role/shop-web-instance",
    },
    "release of a fixed AMI": {**BASE, "RolloutAutoScalingGroupName": "shop-web-prod",
                               "RolloutImageId": "ami-0fedcba9876543210"},
}

PSEUDO = {
    "AWS::Region": "us-east-1",
    "AWS::AccountId": "123456789012",
    "AWS::Partition": "aws",
    "AWS::StackName": "snapstage",
    "AWS::URLSuffix": "amazonaws.com",
}

NO_VALUE = object()


class Resolver:
    def __init__(self, template, overrides):
        self.t = template
        self.params = {}
        for name, spec in template.get("Parameters", {}).items():
            if name in overrides:
                v = overrides[name]
            elif "Default" in spec:
                v = spec["Default"]
            else:
                raise SystemExit(f"check-template-params: sample parameters lack {name}")
            if spec.get("Type", "").startswith(("List<", "CommaDelimitedList")) and isinstance(v, str):
                v = [] if v == "" else v.split(",")
            self.params[name] = v if isinstance(v, list) else str(v)
        self.conditions = {}

    def condition(self, name):
        if name not in self.conditions:
            self.conditions[name] = bool(self.value(self.t["Conditions"][name]))
        return self.conditions[name]

    def ref(self, name):
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in PSEUDO:
            return PSEUDO[name]
        if name in self.params:
            return self.params[name]
        return f"{name}-physical-id"  # a resource

    def sub(self, text, extra):
        def repl(m):
            key = m.group(1)
            if key.startswith("!"):
                return "${" + key[1:] + "}"
            if key in extra:
                return str(extra[key])
            if "." in key:
                return f"{key}-attribute"
            v = self.ref(key)
            if isinstance(v, list):
                raise ValueError(f"Fn::Sub of the list parameter {key}")
            return str(v)

        return re.sub(r"\$\{([^}]+)\}", repl, text)

    def value(self, node):
        if isinstance(node, list):
            out = [self.value(v) for v in node]
            return [v for v in out if v is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (k, v), = node.items()
            if k == "Ref":
                return self.ref(v)
            if k == "Fn::Sub":
                if isinstance(v, str):
                    return self.sub(v, {})
                return self.sub(v[0], {n: self.value(x) for n, x in v[1].items()})
            if k == "Fn::Join":
                return v[0].join(str(x) for x in self.value(v[1]))
            if k == "Fn::If":
                return self.value(v[1] if self.condition(v[0]) else v[2])
            if k == "Fn::Equals":
                a, b = (self.value(x) for x in v)
                return str(a) == str(b)
            if k == "Fn::Not":
                return not self.value(v[0])
            if k == "Fn::And":
                return all(self.value(x) for x in v)
            if k == "Fn::Or":
                return any(self.value(x) for x in v)
            if k == "Condition":
                return self.condition(v)
            if k == "Fn::GetAtt":
                target = v if isinstance(v, str) else ".".join(v)
                return f"{target}-attribute"
        return {k: self.value(v) for k, v in node.items() if self.value(v) is not NO_VALUE}


def pipeline_vars(text):
    return re.sub(r"#\{([^}]+)\}", lambda m: PIPELINE_VARIABLES.get(m.group(1), "unknown"), text)


def help_outputs(exe):
    """The output variable names a function's --help lists."""
    text = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=30).stdout
    section = text.split("OUTPUT VARIABLES:", 1)[-1].split("\n\n", 1)[0]
    return set(re.findall(r"(?:^|\s)([A-Z][A-Za-z0-9]+)\b", section))


def check_variables(template, findings):
    """Every #{Namespace.Key} names a namespace of an earlier action and, for snapstage's
    functions, an output variable the function's --help lists."""
    namespaces = {}  # namespace -> binary (or None for non-snapstage actions)
    for stage in template["Resources"]["Pipeline"]["Properties"]["Stages"]:
        if isinstance(stage, dict) and "Fn::If" in stage:  # an optional stage: check it as if present
            stage = stage["Fn::If"][1]
        orders = sorted({int(a.get("RunOrder", 1)) for a in stage["Actions"]})
        for order in orders:
            group = [a for a in stage["Actions"] if int(a.get("RunOrder", 1)) == order]
            for action in group:
                text = json.dumps(action.get("Configuration", {}))
                for ns, key in re.findall(r"#\{([A-Za-z0-9@_-]+)\.([A-Za-z0-9@_-]+)\}", text):
                    where = f"pipeline {stage['Name']}/{action['Name']}: #{{{ns}.{key}}}"
                    if ns == "codepipeline":
                        continue
                    if ns not in namespaces:
                        findings.append(f"{where}: no earlier action has the namespace {ns}")
                        continue
                    binary = namespaces[ns]
                    if binary is None:
                        continue
                    exe = os.path.join(BIN_DIR, binary)
                    if not os.access(exe, os.X_OK):
                        print(f"SKIP: {where}: {exe} not built; output name not checked", file=sys.stderr)
                    elif key not in help_outputs(exe):
                        findings.append(f"{where}: {binary} publishes no output variable {key}")
            for action in group:
                if "Namespace" in action:
                    ref = action.get("Configuration", {}).get("FunctionName", {})
                    binary = FUNCTIONS.get(ref.get("Ref")) if isinstance(ref, dict) else None
                    namespaces[action["Namespace"]] = binary

def main():
    findings = []
    template = load(TEMPLATE)
    check_variables(template, findings)
    env_globals = template["Globals"]["Function"]["Environment"]["Variables"]
    for scenario, overrides in SCENARIOS.items():
        r = Resolver(template, overrides)
        # Which function each pipeline action invokes, and its UserParameters.
        user_params = {}
        for stage in template["Resources"]["Pipeline"]["Properties"]["Stages"]:
            if isinstance(stage, dict) and "Fn::If" in stage:  # an optional stage
                cond, yes, no = stage["Fn::If"]
                stage = yes if r.condition(cond) else no
                if stage == {"Ref": "AWS::NoValue"}:
                    continue
            for action in stage["Actions"]:
                config = action.get("Configuration", {})
                where = f"[{scenario}] pipeline {stage['Name']}/{action['Name']}"
                if "UserParameters" in config:
                    raw = r.value(config["UserParameters"])
                    if len(raw) > 1000:
                        findings.append(f"{where}: UserParameters is {len(raw)} chars (max 1000)")
                    try:
                        parsed = json.loads(pipeline_vars(raw))
                        if not isinstance(parsed, dict):
                            findings.append(f"{where}: UserParameters is not a JSON object")
                    except ValueError as e:
                        findings.append(f"{where}: UserParameters is not JSON: {e}")
                        parsed = {}
                else:
                    parsed = {}
                if "FunctionName" in config:
                    fn_ref = config["FunctionName"].get("Ref")
                    user_params[fn_ref] = parsed
                if "EnvironmentVariables" in config:
                    try:
                        ev = json.loads(pipeline_vars(r.value(config["EnvironmentVariables"])))
                        assert isinstance(ev, list) and all({"name", "value"} <= set(x) for x in ev)
                    except (ValueError, AssertionError) as e:
                        findings.append(f"{where}: EnvironmentVariables is not a JSON list of name/value: {e}")

        for logical, binary in FUNCTIONS.items():
            resource = template["Resources"][logical]
            if "Condition" in resource and not r.condition(resource["Condition"]):
                continue  # not in this stack (an optional function)
            props = resource["Properties"]
            env = dict(env_globals)
            env.update(props["Environment"]["Variables"])
            env = {k: str(r.value(v)) for k, v in env.items()}
            where = f"[{scenario}] {binary}"
            size = sum(len(k) + len(v) for k, v in env.items())
            if size > 4096:
                findings.append(f"{where}: environment is {size} bytes (Lambda allows 4 KB)")
            try:
                defaults = json.loads(env["SNAPSTAGE_DEFAULTS"])
                assert isinstance(defaults, dict), "not a JSON object"
            except (ValueError, AssertionError) as e:
                findings.append(f"{where}: SNAPSTAGE_DEFAULTS is not a JSON object: {e}: {env['SNAPSTAGE_DEFAULTS']}")
                continue
            if logical not in user_params:
                findings.append(f"{where}: no pipeline action invokes it")
            exe = os.path.join(BIN_DIR, binary)
            if not os.access(exe, os.X_OK):
                print(f"SKIP: {where}: {exe} not built (run `cargo build --workspace --bins`); JSON shape checked only",
                      file=sys.stderr)
                continue
            request = dict(user_params.get(logical, {}))
            request["dryRun"] = True
            request["executionId"] = "check-template-params"
            run_env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "AWS_REGION": "us-east-1",
                "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
                "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                "AWS_ENDPOINT_URL": "http://127.0.0.1:9",  # closed port: fails fast, offline
                "AWS_MAX_ATTEMPTS": "1",
                "AWS_EC2_METADATA_DISABLED": "true",
                "RUST_LOG": "error",
                **env,
            }
            p = subprocess.run([exe, "--event", "-", "--no-follow"], input=json.dumps(request),
                               capture_output=True, text=True, env=run_env, timeout=60)
            try:
                result = json.loads(p.stdout.strip().splitlines()[-1])
            except (ValueError, IndexError):
                findings.append(f"{where}: no JSON result (exit {p.returncode}): {p.stderr[-500:]}")
                continue
            if result.get("failureType") == "ConfigurationError":
                findings.append(f"{where}: the function rejects the template's parameters: {result.get('message')}")
            else:
                print(f"ok: {where}: parameters accepted ({result.get('status')}"
                      f"{', ' + result.get('failureType') if result.get('failureType') else ''})")
        # Snapshot retention is a stack parameter: the pipeline's snapshot action keeps that many.
        retain = user_params.get("SnapshotProductionFunction", {}).get("retain")
        want = int(r.params["SnapshotRetain"]) if "SnapshotRetain" in r.params else None
        if want is None:
            findings.append(f"[{scenario}] the stack has no SnapshotRetain parameter: snapshots pile up")
        elif retain != want:
            findings.append(f"[{scenario}] pipeline SnapshotProduction: retain is {retain!r}, "
                            f"expected the stack's SnapshotRetain ({want})")
    for f in findings:
        print(f"FINDING: {f}")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
