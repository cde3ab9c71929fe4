#!/usr/bin/env python3
"""Checks that the JSON infra/template.yaml hands the functions is what the functions accept.

For a few sets of sample stack parameters it resolves, offline, each function's SNAPSTAGE_DEFAULTS
and the pipeline's UserParameters / CodeBuild EnvironmentVariables (Ref, Fn::Sub, Fn::Join, Fn::If
and the Conditions), then:
  - every value must be valid JSON of the right shape; UserParameters at most 1000 characters;
  - the pipeline's snapshot action keeps the stack's SnapshotRetain snapshots (`retain`);
  - each function's real binary (target/debug/<name>, from `cargo build`) must accept the merged
    parameters (of the pipeline action, and of each EventBridge rule's Input to it: the TTL sweep): a direct request with dryRun=true and AWS endpoints pointed at a closed loopback
    port must fail, if at all, for the unreachable endpoint and never with ConfigurationError
    (unknown key, wrong type, missing required parameter).
Each scenario is also a stack CloudFormation would create (every value passes its parameter's
AllowedPattern / AllowedValues and every Rule holds), and its roles are least privilege for its
StorageBackend / ArtifactReplication choice (EC2 snapshot and volume actions only for "ebs";
Secrets Manager reads of exactly the secrets each function opens; eks:DescribeCluster of exactly
the clusters it talks to; no S3 object access in array mode).

`--variants DIR` writes instead, for each backend choice in VARIANTS, a copy of the template
(JSON) whose parameter defaults are that choice's scenario, and prints the paths: scripts/lint-infra.sh
runs cfn-lint, `sam validate --lint` and checkov (which evaluates Conditions from the defaults) on
each, so every choice's resources are linted as they would be deployed.

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
    "Restore.Namespace": "snapstage-staging",
    "Restore.PvcName": "orders-db-data-staging",
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

# A CA bundle the size of a real one (one certificate, 64-character lines), as the stack
# parameter carries it: one line, a literal \n after each PEM line.
CA_BUNDLE = "\\n".join(
    ["-----BEGIN CERTIFICATE-----"] + ["MIIDdzCCAl+gAwIBAgIUQ2FzbmFwc3RhZ2UtdGVzdC1jYS1ib2R5LWxpbmUtcGFk"] * 18
    + ["-----END CERTIFICATE-----", ""])
SECRET = "arn:aws:secretsmanager:us-east-1:123456789012:secret:snapstage/"
ARRAYS = {
    "StorageBackend": "flasharray",
    "ProductionVolumeIds": [],
    "StagingAvailabilityZone": "",
    "FlashArrayEndpoint": "https://fa-onprem.corp.example",
    "FlashArrayTokenSecretArn": SECRET + "fa-token-AbCdEf",
    "FlashArrayName": "fa-onprem",
    "FlashArrayProtectionGroup": "pg-orders",
    "FlashArrayVolume": "orders-data",
    "CloudArrayEndpoint": "https://cbs.vpc.example",
    "CloudArrayTokenSecretArn": SECRET + "cbs-token-AbCdEf",
    "VpcSubnetIds": ["subnet-0123456789abcdef0"],
    "VpcSecurityGroupIds": ["sg-0123456789abcdef0"],
}
MASKING = {
    "MaskingImage": "registry.example.com/db/mask:1.4",
    "MaskingCommand": '["psql", "-v", "ON_ERROR_STOP=1", "-f", "/scripts/mask.sql"]',
    "MaskingScriptsConfigMap": "mask-sql",
    "MaskingTimeoutMinutes": "30",
    "MigrationImage": "flyway/flyway:10",
    "MigrationCommand": '["flyway", "-locations=filesystem:/scripts", "migrate"]',
    "MigrationAllowFailure": "true",
}
SCENARIOS.update({
    "ebs with masking and a migration check": {**BASE, **MASKING, "EksClusterName": "staging",
                                               "StagingDbPlanOnly": "true"},
    "csi on EKS, PVC names": {
        **BASE,
        "StorageBackend": "csi",
        "StagingAvailabilityZone": "",
        "ProductionVolumeIds": ["orders-db-data", "orders-db-wal"],
        "CsiEksClusterName": "prod",
        "CsiProductionNamespace": "orders",
        "CsiStagingNamespace": "snapstage-staging",
        "CsiSnapshotClass": "csi-aws-vsc",
        "CsiStorageClass": "gp3",
        "EksClusterName": "staging",
        "StagingDbPlanOnly": "true",
    },
    "csi by kubeconfig, a selector and a group snapshot class, masking": {
        **BASE, **MASKING,
        "StorageBackend": "csi",
        "StagingAvailabilityZone": "",
        "ProductionVolumeIds": [],
        "ProductionSelector": "app=orders-db",
        "CsiKubeconfigSecretArn": SECRET + "prod-kubeconfig-AbCdEf",
        "CsiProductionNamespace": "orders",
        "CsiStagingNamespace": "snapstage-staging",
        "CsiGroupSnapshotClass": "csi-group-vsc",
        "StagingDbPlanOnly": "true",
    },
    "flasharray pair, CA bundles, array replication, masking and migration": {
        **BASE, **ARRAYS, **MASKING,
        "FlashArrayCaBundle": CA_BUNDLE,
        "CloudArrayCaBundle": CA_BUNDLE,
        "CloudArrayName": "cbs-cloud",
        "ArtifactReplication": "array",
        "ArtifactBucketName": "",
        "OnPremBucket": "",
        "ArtifactProtectionGroup": "pg-nexus",
        "ArtifactVolume": "nexus-blobs",
        "ArtifactTargetVolume": "nexus-onprem",
        "ArtifactOverwrite": "true",
        "EksClusterName": "staging",
        "StagingDbArrayDriver": "px-csi",
        "IntegrationTestVpcId": "vpc-0123456789abcdef0",
        "IntegrationTestSubnetIds": ["subnet-0123456789abcdef1"],
        "IntegrationTestSecurityGroupIds": ["sg-0123456789abcdef1"],
    },
    "flasharray pair, a read-only deploy token, objects back to S3": {
        **BASE, **ARRAYS,
        "DeployFlashArrayTokenSecretArn": SECRET + "fa-readonly-AbCdEf",
        "OnPremEndpoint": "https://flashblade.corp.example:443",
        "OnPremCredentialsSecretArn": SECRET + "onprem-AbCdEf",
        "StagingDbPlanOnly": "true",
    },
})

# One scenario per backend choice for --variants ("ebs" is the template as it is, by its defaults).
VARIANTS = {
    "csi-eks": "csi on EKS, PVC names",
    "csi-kubeconfig": "csi by kubeconfig, a selector and a group snapshot class, masking",
    "flasharray": "flasharray pair, CA bundles, array replication, masking and migration",
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
            if spec.get("Type", "").startswith(("List<", "CommaDelimitedList")):
                # As CloudFormation resolves it: an empty list parameter is [""].
                v = v.split(",") if isinstance(v, str) else (v or [""])
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
            if k == "Fn::Contains":  # Rules only
                return self.value(v[1]) in self.value(v[0])
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

def check_stack_parameters(template, r, scenario, findings):
    """The sample stack is one CloudFormation would create: every value passes its parameter's
    AllowedPattern / AllowedValues, and every Rule's assertions hold."""
    for name, spec in template["Parameters"].items():
        v = r.params[name]
        for item in (v if isinstance(v, list) else [v]):
            if "AllowedPattern" in spec and not re.fullmatch(spec["AllowedPattern"], item):
                findings.append(f"[{scenario}] parameter {name}: {item!r} does not match its AllowedPattern")
            if "AllowedValues" in spec and item not in [str(x) for x in spec["AllowedValues"]]:
                findings.append(f"[{scenario}] parameter {name}: {item!r} is not one of its AllowedValues")
    for name, rule in template.get("Rules", {}).items():
        if "RuleCondition" in rule and not r.value(rule["RuleCondition"]):
            continue
        for a in rule["Assertions"]:
            if not r.value(a["Assert"]):
                findings.append(f"[{scenario}] rule {name} fails: {a.get('AssertDescription')}")


ROLES = {
    "SnapshotProductionRole": "snapshot-production",
    "RestoreToStagingRole": "restore-to-staging",
    "DeployStagingDbRole": "deploy-staging-db",
    "ReplicateArtifactsBackRole": "replicate-artifacts-back",
}
# The network interfaces of a function in a VPC (FunctionVpcPolicy): not the backend's EC2 use.
ENI_ACTIONS = {"ec2:CreateNetworkInterface", "ec2:DeleteNetworkInterface", "ec2:DescribeNetworkInterfaces",
               "ec2:DescribeSubnets", "ec2:AssignPrivateIpAddresses", "ec2:UnassignPrivateIpAddresses"}


def role_statements(template, r, role):
    """Every statement the stack grants `role` (its inline policies, the AWS::IAM::Policy resources
    naming it, its ManagedPolicyArns from this template), resolved for the scenario."""
    resources = template["Resources"]

    def present(logical):
        res = resources[logical]
        return "Condition" not in res or r.condition(res["Condition"])

    docs = []
    props = resources[role]["Properties"]
    docs += [p["PolicyDocument"] for p in r.value(props.get("Policies", []))]
    for arn in r.value(props.get("ManagedPolicyArns", [])):
        logical = arn  # Ref of a managed policy resolves to its logical id + "-physical-id"
        logical = logical[: -len("-physical-id")] if logical.endswith("-physical-id") else logical
        if logical in resources and present(logical):
            docs.append(r.value(resources[logical]["Properties"]["PolicyDocument"]))
    for logical, res in resources.items():
        if res.get("Type") == "AWS::IAM::Policy" and present(logical):
            roles = [x.get("Ref") for x in res["Properties"]["Roles"] if isinstance(x, dict)]
            if role in roles:
                doc = r.value(res["Properties"]["PolicyDocument"])
                docs.append(json.loads(doc) if isinstance(doc, str) else doc)
    out = []
    for d in docs:
        st = d["Statement"]
        out += st if isinstance(st, list) else [st]
    return out


def granted(statements, action):
    res = set()
    for st in statements:
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        if action in actions:
            res |= set(st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]])
    return res


def check_permissions(template, r, scenario, findings):
    """Least privilege per backend choice: EC2 snapshot/volume actions only for "ebs"; Secrets
    Manager reads of exactly the secrets each function opens; eks:DescribeCluster of exactly the
    clusters it talks to."""
    p = r.params
    backend, array_mode = p["StorageBackend"], p["ArtifactReplication"] == "array"
    cluster_arn = "arn:aws:eks:us-east-1:123456789012:cluster/{}".format
    kubeconfig = {p["CsiKubeconfigSecretArn"]} if backend == "csi" and p["CsiKubeconfigSecretArn"] else set()
    deploy_token = p["DeployFlashArrayTokenSecretArn"] or (p["CloudArrayTokenSecretArn"] if backend == "flasharray" else "")
    want_secrets = {
        "SnapshotProductionRole": ({p["FlashArrayTokenSecretArn"]} if backend == "flasharray" else set()) | kubeconfig,
        "RestoreToStagingRole": ({p["CloudArrayTokenSecretArn"]} if backend == "flasharray" else set()) | kubeconfig,
        "DeployStagingDbRole": {deploy_token} - {""},
        "ReplicateArtifactsBackRole": ({p["FlashArrayTokenSecretArn"], p["CloudArrayTokenSecretArn"]} if array_mode
                                       else {p["OnPremCredentialsSecretArn"]} - {""}),
    }
    csi_cluster = {cluster_arn(p["CsiEksClusterName"])} if p["CsiEksClusterName"] else set()
    want_clusters = {
        "SnapshotProductionRole": csi_cluster,
        "RestoreToStagingRole": csi_cluster,
        "DeployStagingDbRole": {cluster_arn(p["EksClusterName"])} if p["EksClusterName"] else set(),
        "ReplicateArtifactsBackRole": set(),
    }
    for role, fn in ROLES.items():
        st = role_statements(template, r, role)
        where = f"[{scenario}] {fn} role"
        ec2 = sorted({a for s_ in st for a in (s_["Action"] if isinstance(s_["Action"], list) else [s_["Action"]])
                      if a.startswith("ec2:") and a not in ENI_ACTIONS})
        if backend != "ebs" and ec2:
            findings.append(f"{where}: EC2 actions with StorageBackend {backend!r}: {', '.join(ec2)}")
        if backend == "ebs" and role != "ReplicateArtifactsBackRole" and not ec2:
            findings.append(f"{where}: no EC2 actions with StorageBackend 'ebs'")
        got = granted(st, "secretsmanager:GetSecretValue")
        if got != want_secrets[role]:
            findings.append(f"{where}: secretsmanager:GetSecretValue on {sorted(got)}, expected {sorted(want_secrets[role])}")
        got = granted(st, "eks:DescribeCluster")
        if got != want_clusters[role]:
            findings.append(f"{where}: eks:DescribeCluster on {sorted(got)}, expected {sorted(want_clusters[role])}")
        s3 = granted(st, "s3:GetObject") | granted(st, "s3:PutObject")
        if role == "ReplicateArtifactsBackRole" and array_mode and s3:
            findings.append(f"{where}: S3 object access in array mode: {sorted(s3)}")


def main():
    findings = []
    template = load(TEMPLATE)
    check_variables(template, findings)
    env_globals = template["Globals"]["Function"]["Environment"]["Variables"]
    for scenario, overrides in SCENARIOS.items():
        r = Resolver(template, overrides)
        check_stack_parameters(template, r, scenario, findings)
        check_permissions(template, r, scenario, findings)
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
            # The pipeline action's request, and each scheduled rule's Input (the TTL sweep).
            requests = [("pipeline", user_params.get(logical, {}))]
            for rule_id, rule in template["Resources"].items():
                if rule.get("Type") != "AWS::Events::Rule" or (
                        "Condition" in rule and not r.condition(rule["Condition"])):
                    continue
                for target in rule["Properties"].get("Targets", []):
                    if isinstance(target, dict) and "Input" in target and \
                            target.get("Arn") == {"Fn::GetAtt": [logical, "Arn"]}:
                        requests.append((f"rule {rule_id}", json.loads(target["Input"])))
            for source, params in requests:
                request = dict(params)
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
                    findings.append(f"{where} ({source}): no JSON result (exit {p.returncode}): {p.stderr[-500:]}")
                    continue
                if result.get("failureType") == "ConfigurationError":
                    findings.append(f"{where} ({source}): the function rejects the template's parameters: "
                                    f"{result.get('message')}")
                else:
                    print(f"ok: {where} ({source}): parameters accepted ({result.get('status')}"
                          f"{', ' + result.get('failureType') if result.get('failureType') else ''})")
        # Snapshot retention is a stack parameter: the pipeline's snapshot action keeps that many
        # (a FlashArray protection group keeps its own retention policy: no retain).
        retain = user_params.get("SnapshotProductionFunction", {}).get("retain")
        want = int(r.params["SnapshotRetain"]) if "SnapshotRetain" in r.params else None
        if r.params.get("StorageBackend") == "flasharray":
            if retain is not None:
                findings.append(f"[{scenario}] pipeline SnapshotProduction: retain with a protection group "
                                "(snapshot-production refuses it)")
        elif want is None:
            findings.append(f"[{scenario}] the stack has no SnapshotRetain parameter: snapshots pile up")
        elif retain != want:
            findings.append(f"[{scenario}] pipeline SnapshotProduction: retain is {retain!r}, "
                            f"expected the stack's SnapshotRetain ({want})")
    for f in findings:
        print(f"FINDING: {f}")
    return 1 if findings else 0


def write_variants(out_dir):
    """A copy of the template per VARIANTS entry, with the scenario's values as the defaults."""
    template = load(TEMPLATE)
    os.makedirs(out_dir, exist_ok=True)
    for key, scenario in VARIANTS.items():
        overrides = SCENARIOS[scenario]
        t = json.loads(json.dumps(template))
        for name, spec in t["Parameters"].items():
            if name in overrides:
                v = overrides[name]
                spec["Default"] = ",".join(v) if isinstance(v, list) else str(v)
        path = os.path.join(out_dir, f"template-{key}.json")
        with open(path, "w") as f:
            json.dump(t, f, indent=1)
        print(path)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--variants":
        sys.exit(write_variants(sys.argv[2]))
    if len(sys.argv) != 1:
        print("usage: check-template-params.py [--variants DIR]", file=sys.stderr)
        sys.exit(2)
    sys.exit(main())
