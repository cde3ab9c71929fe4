"""The Python peer for the cold-start figures: what the reference Python Lambda does at import
(boto3 and the Kubernetes client imported at module level, an EC2 client created once), then,
per event, one EC2 call like our dry runs make (DescribeVolumes of the requested volumes).

Run under the official Runtime Interface Client: `python -m awslambdaric peer_handler.handler`.
"""

import boto3
import kubernetes  # noqa: F401  (imported at module level, as the reference does)
from kubernetes import client as k8s_client  # noqa: F401
from kubernetes import config as k8s_config  # noqa: F401

ec2 = boto3.client("ec2")


def handler(event, _context):
    ids = event.get("volumeIds") or []
    volumes = ec2.describe_volumes(VolumeIds=ids)["Volumes"] if ids else []
    return {
        "status": "Succeeded",
        "summary": "dry run: " + ", ".join(f"{v['VolumeId']} ({v['Size']} GiB)" for v in volumes),
    }
