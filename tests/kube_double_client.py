"""Checks the Kubernetes API server double with the official Python client (PyPI `kubernetes`), an
independent client: its typed core/v1 calls must deserialize what the double answers, its
ApiException must carry the status and the Status `reason` the real API server sends, and
CustomObjectsApi must see VolumeSnapshots the way the snapshot controller leaves them.

Usage: python kube_double_client.py URL
Prints "kubernetes client: all checks passed" and exits 0 on success.
"""

import datetime
import json
import sys

from kubernetes import client
from kubernetes.client.rest import ApiException

SNAP = ("snapshot.storage.k8s.io", "v1")


def expect_error(status, reason, call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except ApiException as e:
        body = json.loads(e.body)
        assert e.status == status, f"expected {status}, got {e.status}: {e.body}"
        assert body["kind"] == "Status" and body["status"] == "Failure", body
        assert body["reason"] == reason, f"expected {reason}, got {body['reason']}"
        assert body["code"] == status, body
        return body
    raise AssertionError(f"expected {status} {reason}, the call succeeded")


def pvc(name, labels, storage="1Gi", data_source=None):
    return client.V1PersistentVolumeClaim(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1PersistentVolumeClaimSpec(
            access_modes=["ReadWriteOnce"],
            resources=client.V1VolumeResourceRequirements(requests={"storage": storage}),
            data_source=data_source,
        ),
    )


def main(url):
    conf = client.Configuration()
    conf.host = url
    api = client.ApiClient(conf)
    core = client.CoreV1Api(api)
    custom = client.CustomObjectsApi(api)

    # Namespaces: typed create/read, 409 AlreadyExists, 404 NotFound.
    ns = core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name="shop", labels={"env": "staging"}))
    )
    assert ns.metadata.uid and ns.metadata.resource_version, ns.metadata
    assert isinstance(ns.metadata.creation_timestamp, datetime.datetime), ns.metadata
    assert ns.status.phase == "Active", ns.status
    expect_error(409, "AlreadyExists", core.create_namespace,
                 client.V1Namespace(metadata=client.V1ObjectMeta(name="shop")))
    expect_error(404, "NotFound", core.read_namespace, "nowhere")
    assert core.read_namespace("shop").metadata.labels["env"] == "staging"

    # PVCs: create, read, 422 for a missing required field, 404 in a missing namespace.
    a = core.create_namespaced_persistent_volume_claim("shop", pvc("data-a", {"app": "db", "tier": "gold"}))
    b = core.create_namespaced_persistent_volume_claim("shop", pvc("data-b", {"app": "db"}))
    core.create_namespaced_persistent_volume_claim("shop", pvc("logs", {"app": "web"}))
    assert a.metadata.creation_timestamp < b.metadata.creation_timestamp, "creates are ordered"
    assert int(b.metadata.resource_version) > int(a.metadata.resource_version)
    assert a.metadata.namespace == "shop" and a.status.phase == "Pending", a
    got = core.read_namespaced_persistent_volume_claim("data-a", "shop")
    assert got.metadata.uid == a.metadata.uid
    assert got.spec.resources.requests["storage"] == "1Gi", got.spec
    bad = pvc("no-size", {})
    bad.spec.resources = None
    body = expect_error(422, "Invalid", core.create_namespaced_persistent_volume_claim, "shop", bad)
    assert body["details"]["causes"][0]["field"] == "spec.resources[storage]", body
    expect_error(422, "Invalid", core.create_namespaced_persistent_volume_claim, "shop", pvc("Bad_Name", {}))
    expect_error(404, "NotFound", core.create_namespaced_persistent_volume_claim, "nowhere", pvc("x", {}))
    expect_error(409, "AlreadyExists", core.create_namespaced_persistent_volume_claim, "shop",
                 pvc("data-a", {}))

    # Label selectors as the API server reads them.
    def names(selector):
        out = core.list_namespaced_persistent_volume_claim("shop", label_selector=selector)
        return [p.metadata.name for p in out.items]

    assert names("app=db") == ["data-a", "data-b"], names("app=db")
    assert names("app==db,tier=gold") == ["data-a"]
    assert names("app!=db") == ["logs"]
    assert names("app in (db,web)") == ["data-a", "data-b", "logs"]
    assert names("app notin (web)") == ["data-a", "data-b"]
    assert names("tier") == ["data-a"]
    assert names("!tier") == ["data-b", "logs"]
    assert names("") == ["data-a", "data-b", "logs"]
    everywhere = core.list_persistent_volume_claim_for_all_namespaces(field_selector="metadata.name=logs")
    assert [p.metadata.name for p in everywhere.items] == ["logs"]
    expect_error(400, "BadRequest", core.list_namespaced_persistent_volume_claim, "shop",
                 label_selector="app in db")

    # Patches: strategic merge (the client's default for a dict), JSON patch, server-side apply.
    p = core.patch_namespaced_persistent_volume_claim("data-b", "shop", {"metadata": {"labels": {"tier": "silver"}}})
    assert p.metadata.labels == {"app": "db", "tier": "silver"}, p.metadata.labels
    assert int(p.metadata.resource_version) > int(b.metadata.resource_version)
    p = core.patch_namespaced_persistent_volume_claim(
        "data-b", "shop", [{"op": "remove", "path": "/metadata/labels/tier"}])
    assert p.metadata.labels == {"app": "db"}, p.metadata.labels
    ns2 = core.patch_namespace(
        "applied", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "applied", "labels": {"a": "1"}}},
        field_manager="py-client", _content_type="application/apply-patch+yaml")
    assert ns2.metadata.labels["a"] == "1" and ns2.metadata.uid, ns2.metadata
    body = expect_error(409, "Conflict", core.patch_namespace, "applied",
                        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "applied", "labels": {"a": "2"}}},
                        field_manager="someone-else", _content_type="application/apply-patch+yaml")
    assert "py-client" in body["message"], body
    forced = core.patch_namespace(
        "applied", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "applied", "labels": {"a": "2"}}},
        field_manager="someone-else", force=True, _content_type="application/apply-patch+yaml")
    assert forced.metadata.labels["a"] == "2" and forced.metadata.uid == ns2.metadata.uid

    # Delete: the object comes back, then it is gone; a wrong UID precondition is a conflict.
    expect_error(409, "Conflict", core.delete_namespaced_persistent_volume_claim, "logs", "shop",
                 body=client.V1DeleteOptions(preconditions=client.V1Preconditions(uid="not-its-uid")))
    core.delete_namespaced_persistent_volume_claim("logs", "shop")
    expect_error(404, "NotFound", core.read_namespaced_persistent_volume_claim, "logs", "shop")
    expect_error(404, "NotFound", core.delete_namespaced_persistent_volume_claim, "logs", "shop")

    # VolumeSnapshots through CustomObjectsApi; the simulated controller binds and readies them.
    # The caller seeded namespace "prod" with a Bound 8Gi PVC "orders-db" and a default class.
    snap = {"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
            "metadata": {"name": "orders-snap", "labels": {"app": "orders"}},
            "spec": {"source": {"persistentVolumeClaimName": "orders-db"}}}
    made = custom.create_namespaced_custom_object(*SNAP, "prod", "volumesnapshots", snap)
    assert made["metadata"]["uid"] and made["kind"] == "VolumeSnapshot", made
    expect_error(409, "AlreadyExists", custom.create_namespaced_custom_object, *SNAP, "prod",
                 "volumesnapshots", snap)
    both = dict(snap, metadata={"name": "snap-bad"},
                spec={"source": {"persistentVolumeClaimName": "x", "volumeSnapshotContentName": "y"}})
    expect_error(422, "Invalid", custom.create_namespaced_custom_object, *SNAP, "prod",
                 "volumesnapshots", both)
    expect_error(404, "NotFound", custom.get_namespaced_custom_object, *SNAP, "prod",
                 "volumesnapshots", "none")
    for _ in range(5):
        s = custom.get_namespaced_custom_object(*SNAP, "prod", "volumesnapshots", "orders-snap")
        if (s.get("status") or {}).get("readyToUse"):
            break
    st = s["status"]
    assert st["readyToUse"] is True and st["restoreSize"] == "8Gi", st
    assert "error" not in st and st["creationTime"], st
    contents = custom.list_cluster_custom_object(*SNAP, "volumesnapshotcontents")
    mine = [c for c in contents["items"]
            if c["metadata"]["name"] == st["boundVolumeSnapshotContentName"]]
    assert len(mine) == 1, contents
    c = mine[0]
    assert c["spec"]["volumeSnapshotRef"]["name"] == "orders-snap", c
    assert c["spec"]["volumeSnapshotRef"]["namespace"] == "prod", c
    assert c["spec"]["volumeSnapshotRef"]["uid"] == made["metadata"]["uid"], c
    assert c["status"]["readyToUse"] is True and c["status"]["restoreSize"] == 8 << 30, c
    assert c["status"]["snapshotHandle"], c
    listed = custom.list_namespaced_custom_object(*SNAP, "prod", "volumesnapshots",
                                                  label_selector="app=orders")
    assert listed["kind"] == "VolumeSnapshotList", listed
    assert [x["metadata"]["name"] for x in listed["items"]] == ["orders-snap"], listed
    patched = custom.patch_namespaced_custom_object(*SNAP, "prod", "volumesnapshots", "orders-snap",
                                                    {"metadata": {"labels": {"kept": "yes"}}})
    assert patched["metadata"]["labels"] == {"app": "orders", "kept": "yes"}, patched["metadata"]
    body = expect_error(422, "Invalid", custom.patch_namespaced_custom_object, *SNAP, "prod",
                        "volumesnapshots", "orders-snap",
                        {"spec": {"source": {"persistentVolumeClaimName": "other"}}})
    assert body["details"]["causes"][0]["field"] == "spec.source", body

    # A snapshot of a missing PVC reports the controller's error, never readiness.
    gone = dict(snap, metadata={"name": "of-nothing"},
                spec={"source": {"persistentVolumeClaimName": "no-such-pvc"}})
    custom.create_namespaced_custom_object(*SNAP, "prod", "volumesnapshots", gone)
    s = custom.get_namespaced_custom_object(*SNAP, "prod", "volumesnapshots", "of-nothing")
    assert s["status"]["readyToUse"] is False and "no-such-pvc" in s["status"]["error"]["message"], s

    # A PVC restoring from the ready snapshot is Bound, sized by it.
    src = client.V1TypedLocalObjectReference(api_group="snapshot.storage.k8s.io",
                                             kind="VolumeSnapshot", name="orders-snap")
    core.create_namespaced_persistent_volume_claim("prod", pvc("orders-copy", {}, "8Gi", src))
    r = core.read_namespaced_persistent_volume_claim("orders-copy", "prod")
    assert r.status.phase == "Bound" and r.status.capacity["storage"] == "8Gi", r.status
    pv = core.read_persistent_volume(r.spec.volume_name)
    assert pv.spec.claim_ref.name == "orders-copy" and pv.spec.csi.volume_handle, pv.spec

    # Deleting the snapshot deletes its content (deletionPolicy Delete from the class).
    custom.delete_namespaced_custom_object(*SNAP, "prod", "volumesnapshots", "orders-snap")
    expect_error(404, "NotFound", custom.get_cluster_custom_object, *SNAP,
                 "volumesnapshotcontents", c["metadata"]["name"])


if __name__ == "__main__":
    main(sys.argv[1])
    print("kubernetes client: all checks passed")
