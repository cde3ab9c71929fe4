#!/usr/bin/env python3
"""A small, faithful, stateful double of the Kubernetes API server, for what snapstage's CSI
backend sends (shared/src/storage/csi/), plus a simulated CSI snapshot controller.

Resources (plain JSON, no protobuf, no watch):

    core/v1                              namespaces, persistentvolumes (cluster-scoped),
                                         persistentvolumeclaims, pods, secrets, configmaps,
                                         services, events (namespaced)
    apps/v1, batch/v1                    statefulsets, deployments, jobs (deploy-staging-db)
    networking.k8s.io/v1                 networkpolicies
    snapshot.storage.k8s.io/v1           volumesnapshots (namespaced),
                                         volumesnapshotcontents, volumesnapshotclasses (cluster)
    groupsnapshot.storage.k8s.io/v1beta1 volumegroupsnapshots (namespaced),
                                         volumegroupsnapshotcontents, volumegroupsnapshotclasses
                                         (cluster)

Verbs, as the API server answers them:

* GET one (404 NotFound `Status`), LIST (namespaced or across namespaces) with `labelSelector`
  (`k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`; a bad selector is 400
  BadRequest) and `fieldSelector` (`metadata.name`, `metadata.namespace`, `status.phase`, with
  `=`, `==`, `!=`). Lists are sorted by namespace and name; `limit`/`continue` are ignored (the
  whole list is one page, as a server without chunking answers). Built-in list items carry no
  kind/apiVersion; custom resource items do.
* POST create: 201 with `metadata.uid`, `resourceVersion` (one counter for every write),
  `creationTimestamp` (RFC 3339, seconds; strictly increasing per create, so "newest" is
  deterministic), `generation`; 409 AlreadyExists; 404 when the namespace does not exist; 422
  Invalid for a bad name or a missing required field (the rules below); `dryRun=All` stores
  nothing.
* PATCH: server-side apply (`application/apply-patch+yaml`, `fieldManager` required, creates a
  missing object, 409 Conflict when another manager applied a field to another value unless
  `force=true`); `application/merge-patch+json` (RFC 7386); `application/strategic-merge-patch+json`
  on built-in kinds only (treated as a merge patch; custom resources answer 415 as the server
  does); `application/json-patch+json` (add, remove, replace, test). A patch that changes `spec`
  of a VolumeSnapshot or a VolumeSnapshotContent's source is 422 (immutable).
* DELETE: 200 with the object; `preconditions.uid` that differs is 409 Conflict; an object with
  `metadata.finalizers` gets `deletionTimestamp` and stays until a patch removes them.

Required fields (422): every object a DNS-1123 name (namespace: a DNS-1123 label); PVC
`spec.accessModes` and `spec.resources.requests.storage`; pod `spec.containers`; VolumeSnapshot
exactly one of `spec.source.persistentVolumeClaimName` / `volumeSnapshotContentName`;
VolumeSnapshotContent `spec.deletionPolicy` (Delete|Retain), `spec.driver`, exactly one of
`spec.source.snapshotHandle` / `volumeHandle`, `spec.volumeSnapshotRef.name` and `.namespace`.

The simulated snapshot controller (runs before each API request):

* a VolumeSnapshot of a Bound PVC is bound at once to a new VolumeSnapshotContent
  (`snapcontent-<uid>`, driver and deletionPolicy from its class or the default class, the PV's
  volumeHandle); `status.creationTime`, `restoreSize` (the PVC's capacity) and
  `readyToUse: false`; after the snapshot has been read `ready_after_reads` times (GET or in a
  LIST; default 1) `readyToUse` turns true, on the content too. A snapshot whose PVC or PVC name
  is configured to fail gets `status.error` instead. No PVC, no class: `status.error` too.
* a VolumeSnapshot of a pre-provisioned content (`source.snapshotHandle`, `volumeSnapshotRef`
  naming it) binds to it and becomes ready the same way, sized by the handle's snapshot.
* deleting a bound VolumeSnapshot deletes its content when the content's policy is Delete.
* a PVC with `dataSource` a ready VolumeSnapshot becomes Bound to a new PV of the snapshot's size.
* a VolumeGroupSnapshot (`spec.source.selector`: matchLabels, matchExpressions) of Bound PVCs, as
  external-snapshotter 8.x makes it: a VolumeGroupSnapshotContent, and per PVC a member
  VolumeSnapshotContent (`snapcontent-<sha256(group uid + volume handle)>`) and a member
  VolumeSnapshot (`snapshot-<same>`, owned by the group, `spec.source.persistentVolumeClaimName`,
  the in-group finalizer, `status.volumeGroupSnapshotName`); all ready after the group has been
  read `ready_after_reads` times. No PVC selected, or no class: `status.error`.
* a PVC naming an existing PV (`spec.volumeName`) is Bound to it; a StatefulSet, Deployment or
  Job, once read `ready_after_reads` times, gets its pods (Running and Ready; a Job's Succeeded)
  and a rolled-out status (observedGeneration, ready/updated/available replicas, one revision).

Control endpoints (not part of the Kubernetes API; reads here never count as reads):

    GET  /_double/state      {"objects": {plural: [object, ...]}, "requests": [...], "rv": n}
    POST /_double/seed       {"objects": [object, ...]} stored as given (status too);
                             {"pvcs": [{"namespace", "name", "size"?, "labels"?}]} a Bound PVC
                             and its PV
    POST /_double/config     {"ready_after_reads": n, "fail": {"<pvc or snapshot name>": "message"}}

Usage: kubernetes.py [--port N] [--exit-with-stdin]
Prints one JSON line `{"port": N}` on stdout when ready.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import datetime as dt
import http.server
import json
import re
import sys
import threading
import urllib.parse
import uuid

GIB = 1 << 30

RESOURCES = {
    # (group, version, plural): (kind, namespaced)
    ("", "v1", "namespaces"): ("Namespace", False),
    ("", "v1", "persistentvolumes"): ("PersistentVolume", False),
    ("", "v1", "persistentvolumeclaims"): ("PersistentVolumeClaim", True),
    ("", "v1", "pods"): ("Pod", True),
    ("", "v1", "secrets"): ("Secret", True),
    ("", "v1", "configmaps"): ("ConfigMap", True),
    ("", "v1", "services"): ("Service", True),
    ("", "v1", "events"): ("Event", True),
    ("apps", "v1", "statefulsets"): ("StatefulSet", True),
    ("apps", "v1", "deployments"): ("Deployment", True),
    ("batch", "v1", "jobs"): ("Job", True),
    ("networking.k8s.io", "v1", "networkpolicies"): ("NetworkPolicy", True),
    ("snapshot.storage.k8s.io", "v1", "volumesnapshots"): ("VolumeSnapshot", True),
    ("snapshot.storage.k8s.io", "v1", "volumesnapshotcontents"): ("VolumeSnapshotContent", False),
    ("snapshot.storage.k8s.io", "v1", "volumesnapshotclasses"): ("VolumeSnapshotClass", False),
    ("groupsnapshot.storage.k8s.io", "v1beta1", "volumegroupsnapshots"): (
        "VolumeGroupSnapshot",
        True,
    ),
    ("groupsnapshot.storage.k8s.io", "v1beta1", "volumegroupsnapshotcontents"): (
        "VolumeGroupSnapshotContent",
        False,
    ),
    ("groupsnapshot.storage.k8s.io", "v1beta1", "volumegroupsnapshotclasses"): (
        "VolumeGroupSnapshotClass",
        False,
    ),
}
GROUP = "groupsnapshot.storage.k8s.io"
IN_GROUP_FINALIZER = "groupsnapshot.storage.kubernetes.io/volumesnapshot-in-group-protection"
PLURAL_OF_KIND = {kind: key for key, (kind, _) in RESOURCES.items()}

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
QUANTITY = re.compile(r"^([0-9.]+)([KMGTPE]i|[kMGTPE]|)$")
SUFFIX = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
          "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50, "Ei": 1 << 60}


def quantity_bytes(q) -> int | None:
    m = QUANTITY.match(str(q))
    if not m:
        return None
    return int(float(m.group(1)) * SUFFIX[m.group(2)])


def quantity_of(n: int) -> str:
    return f"{n // GIB}Gi" if n % GIB == 0 else str(n)


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict:
        s = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
             "message": self.message, "reason": self.reason, "code": self.code}
        if self.details is not None:
            s["details"] = self.details
        return s


def qualified(group: str, plural: str) -> str:
    return f"{plural}.{group}" if group else plural


def details(group: str, plural: str, name: str, causes=None) -> dict:
    d = {"name": name, "kind": plural}
    if group:
        d["group"] = group
    if causes:
        d["causes"] = causes
    return d


def not_found(group, plural, name):
    return ApiError(404, "NotFound", f'{qualified(group, plural)} "{name}" not found',
                    details(group, plural, name))


def invalid(group, kind, plural, name, field, why="Required value", reason="FieldValueRequired"):
    return ApiError(
        422, "Invalid", f'{kind}.{group or "core"} "{name}" is invalid: {field}: {why}'
        if group else f'{kind} "{name}" is invalid: {field}: {why}',
        details(group, plural, name, [{"reason": reason, "message": why, "field": field}]),
    )


def bad_request(message):
    return ApiError(400, "BadRequest", message)


# ---------------------------------------------------------------------------------------------
# Selectors
# ---------------------------------------------------------------------------------------------

def split_terms(s: str) -> list[str]:
    terms, depth, cur = [], 0, ""
    for c in s:
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        if c == "," and depth == 0:
            terms.append(cur.strip())
            cur = ""
        else:
            cur += c
    if cur.strip():
        terms.append(cur.strip())
    return terms


SET_TERM = re.compile(r"^([A-Za-z0-9./_-]+)\s+(in|notin)\s+\(([^)]*)\)$")
KEY = re.compile(r"^[A-Za-z0-9./_-]+$")


def parse_label_selector(s: str):
    reqs = []
    for t in split_terms(s):
        m = SET_TERM.match(t)
        if m:
            vals = {v.strip() for v in m.group(3).split(",") if v.strip()}
            reqs.append((m.group(1), m.group(2), vals))
            continue
        for op in ("!=", "==", "="):
            if op in t:
                k, v = t.split(op, 1)
                k, v = k.strip(), v.strip()
                if not KEY.match(k) or (v and not re.match(r"^[A-Za-z0-9._-]+$", v)):
                    raise bad_request(f"unable to parse requirement: {t!r}")
                reqs.append((k, "!=" if op == "!=" else "=", v))
                break
        else:
            if t.startswith("!") and KEY.match(t[1:]):
                reqs.append((t[1:], "!exists", None))
            elif KEY.match(t):
                reqs.append((t, "exists", None))
            else:
                raise bad_request(f"unable to parse requirement: {t!r}")
    return reqs


def selector_match(selector: dict, labels: dict) -> bool:
    """A metav1.LabelSelector (matchLabels, matchExpressions) against labels."""
    reqs = [(k, "=", v) for k, v in (selector.get("matchLabels") or {}).items()]
    ops = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!exists"}
    for e in selector.get("matchExpressions") or []:
        reqs.append((e["key"], ops[e["operator"]], set(e.get("values") or [])))
    return labels_match(reqs, labels)


def labels_match(reqs, labels: dict) -> bool:
    for k, op, v in reqs:
        has, val = k in labels, labels.get(k)
        ok = {
            "=": has and val == v,
            "!=": not has or val != v,
            "in": has and val in (v or ()),
            "notin": not has or val not in (v or ()),
            "exists": has,
            "!exists": not has,
        }[op]
        if not ok:
            return False
    return True


FIELDS = {
    "metadata.name": lambda o: o["metadata"].get("name"),
    "metadata.namespace": lambda o: o["metadata"].get("namespace", ""),
    "status.phase": lambda o: (o.get("status") or {}).get("phase", ""),
    "spec.nodeName": lambda o: (o.get("spec") or {}).get("nodeName", ""),
    "involvedObject.kind": lambda o: (o.get("involvedObject") or {}).get("kind", ""),
    "involvedObject.name": lambda o: (o.get("involvedObject") or {}).get("name", ""),
    "involvedObject.namespace": lambda o: (o.get("involvedObject") or {}).get("namespace", ""),
    "reason": lambda o: o.get("reason", ""),
    "type": lambda o: o.get("type", ""),
}


def parse_field_selector(s: str):
    reqs = []
    for t in split_terms(s):
        for op in ("!=", "==", "="):
            if op in t:
                k, v = (x.strip() for x in t.split(op, 1))
                if k not in FIELDS:
                    raise bad_request(f'"{k}" is not a known field selector: only "metadata.name", '
                                      '"metadata.namespace"')
                reqs.append((k, op != "!=", v))
                break
        else:
            raise bad_request(f"invalid selector: {t!r}; can't understand {t!r}")
    return reqs


def fields_match(reqs, obj) -> bool:
    return all((FIELDS[k](obj) == v) == eq for k, eq, v in reqs)


# ---------------------------------------------------------------------------------------------
# Patches
# ---------------------------------------------------------------------------------------------

def merge_patch(target, patch):
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise bad_request(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def json_patch(doc, ops):
    doc = copy.deepcopy(doc)
    for op in ops:
        parts = pointer(op.get("path", ""))
        parent = doc
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent.get(p)
            if parent is None:
                raise ApiError(422, "Invalid", f"jsonpatch {op.get('op')}: missing path {op['path']}")
        last, kind = parts[-1], op.get("op")
        if kind == "test":
            cur = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if cur != op.get("value"):
                raise ApiError(422, "Invalid", f"the server rejected our request due to an error in "
                               f"our request: testing value {op['path']} failed")
        elif kind in ("add", "replace"):
            if isinstance(parent, list):
                if last == "-":
                    parent.append(op["value"])
                elif kind == "add":
                    parent.insert(int(last), op["value"])
                else:
                    parent[int(last)] = op["value"]
            else:
                if kind == "replace" and last not in parent:
                    raise ApiError(422, "Invalid", f"jsonpatch replace operation does not apply: "
                                   f"doc is missing key: {op['path']}")
                parent[last] = op["value"]
        elif kind == "remove":
            if isinstance(parent, list):
                del parent[int(last)]
            elif last in parent:
                del parent[last]
            else:
                raise ApiError(422, "Invalid", f"jsonpatch remove operation does not apply: "
                               f"doc is missing path: {op['path']}")
        else:
            raise bad_request(f"unknown JSON patch op {kind!r}")
    return doc


def leaves(obj, prefix=()):
    """(path, value) for every leaf of the applied configuration (lists are leaves)."""
    if isinstance(obj, dict) and obj:
        for k, v in obj.items():
            yield from leaves(v, prefix + (k,))
    else:
        yield prefix, obj


def drop(obj, path):
    for p in path[:-1]:
        if not isinstance(obj, dict) or p not in obj:
            return
        obj = obj[p]
    if isinstance(obj, dict) and path:
        obj.pop(path[-1], None)


def at(obj, path):
    for p in path:
        if not isinstance(obj, dict) or p not in obj:
            return None
        obj = obj[p]
    return obj


# ---------------------------------------------------------------------------------------------
# The store and the controller
# ---------------------------------------------------------------------------------------------

class Store:
    def __init__(self):
        self.lock = threading.RLock()
        self.objects: dict[tuple, dict] = {}  # (group, plural, ns, name) -> object
        self.rv = 100
        self.clock = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        self.reads: dict[str, int] = {}  # uid -> reads
        self.applied: dict[str, dict] = {}  # uid -> {manager: applied config}
        self.handles: dict[str, int] = {}  # storage snapshot handle -> bytes
        self.ready_after_reads = 1
        self.fail: dict[str, str] = {}
        self.requests: list[str] = []

    # -- basics --
    def next_rv(self) -> str:
        self.rv += 1
        return str(self.rv)

    def next_time(self) -> str:
        now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        self.clock = max(now, self.clock + dt.timedelta(seconds=1))
        return self.clock.strftime("%Y-%m-%dT%H:%M:%SZ")

    def get(self, group, plural, ns, name):
        return self.objects.get((group, plural, ns or "", name))

    def of(self, group, plural):
        return [o for (g, p, _, _), o in sorted(self.objects.items()) if g == group and p == plural]

    def put(self, group, plural, obj):
        m = obj["metadata"]
        m["resourceVersion"] = self.next_rv()
        self.objects[(group, plural, m.get("namespace", ""), m["name"])] = obj

    def remove(self, group, plural, obj):
        m = obj["metadata"]
        self.objects.pop((group, plural, m.get("namespace", ""), m["name"]), None)

    # -- validation --
    def validate(self, group, kind, plural, namespaced, obj):
        m = obj.get("metadata") or {}
        name = m.get("name") or ""
        pattern = DNS1123_LABEL if plural == "namespaces" else DNS1123_SUBDOMAIN
        if not name:
            raise invalid(group, kind, plural, name, "metadata.name",
                          "Required value: name or generateName is required")
        if len(name) > (63 if plural == "namespaces" else 253) or not pattern.match(name):
            raise invalid(group, kind, plural, name, "metadata.name",
                          f'Invalid value: "{name}": a lowercase RFC 1123 name must consist of lower '
                          "case alphanumeric characters, '-' or '.'", "FieldValueInvalid")
        for k, v in (m.get("labels") or {}).items():
            if not isinstance(v, str) or len(v) > 63 or (v and not re.match(
                    r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$", v)):
                raise invalid(group, kind, plural, name, f"metadata.labels",
                              f'Invalid value: "{v}": a valid label must be an empty string or '
                              "consist of alphanumeric characters, '-', '_' or '.'",
                              "FieldValueInvalid")
        spec = obj.get("spec") or {}
        req = lambda field: (_ for _ in ()).throw(invalid(group, kind, plural, name, field))  # noqa: E731
        if plural == "persistentvolumeclaims":
            if not spec.get("accessModes"):
                req("spec.accessModes")
            if not ((spec.get("resources") or {}).get("requests") or {}).get("storage"):
                req("spec.resources[storage]")
        elif plural == "pods":
            if not spec.get("containers"):
                req("spec.containers")
        elif plural == "services":
            if not spec.get("ports") and spec.get("clusterIP") != "None":
                req("spec.ports")
        elif plural in ("statefulsets", "deployments", "jobs"):
            if plural != "jobs" and not spec.get("selector"):
                req("spec.selector")
            if not ((spec.get("template") or {}).get("spec") or {}).get("containers"):
                req("spec.template.spec.containers")
        elif plural == "volumesnapshots":
            src = spec.get("source") or {}
            if bool(src.get("persistentVolumeClaimName")) == bool(src.get("volumeSnapshotContentName")):
                raise invalid(group, kind, plural, name, "spec.source",
                              "Invalid value: exactly one of persistentVolumeClaimName and "
                              "volumeSnapshotContentName should be specified", "FieldValueInvalid")
        elif plural == "volumesnapshotcontents":
            if spec.get("deletionPolicy") not in ("Delete", "Retain"):
                raise invalid(group, kind, plural, name, "spec.deletionPolicy",
                              'Unsupported value: supported values: "Delete", "Retain"',
                              "FieldValueNotSupported")
            if not spec.get("driver"):
                req("spec.driver")
            src = spec.get("source") or {}
            if bool(src.get("snapshotHandle")) == bool(src.get("volumeHandle")):
                raise invalid(group, kind, plural, name, "spec.source",
                              "Invalid value: exactly one of snapshotHandle and volumeHandle "
                              "should be specified", "FieldValueInvalid")
            ref = spec.get("volumeSnapshotRef") or {}
            if not ref.get("name"):
                req("spec.volumeSnapshotRef.name")
            if not ref.get("namespace"):
                req("spec.volumeSnapshotRef.namespace")
        elif plural == "volumegroupsnapshots":
            src = spec.get("source") or {}
            if bool(src.get("selector")) == bool(src.get("volumeGroupSnapshotContentName")):
                raise invalid(group, kind, plural, name, "spec.source",
                              "Invalid value: exactly one of selector and "
                              "volumeGroupSnapshotContentName is required", "FieldValueInvalid")
        elif plural in ("volumesnapshotclasses", "volumegroupsnapshotclasses"):
            if not obj.get("driver"):
                req("driver")
            if obj.get("deletionPolicy") not in ("Delete", "Retain"):
                req("deletionPolicy")

    def check_immutable(self, group, kind, plural, old, new):
        name = old["metadata"]["name"]
        if plural == "volumesnapshots" and (old.get("spec") or {}).get("source") != (new.get("spec") or {}).get("source"):
            raise invalid(group, kind, plural, name, "spec.source", "Invalid value: spec.source is immutable",
                          "FieldValueInvalid")
        if plural == "volumesnapshotcontents" and (old.get("spec") or {}).get("source") != (new.get("spec") or {}).get("source"):
            raise invalid(group, kind, plural, name, "spec.source", "Invalid value: spec.source is immutable",
                          "FieldValueInvalid")

    # -- create --
    def create(self, group, version, plural, ns, body, keep_status=False, dry_run=False):
        kind, namespaced = RESOURCES[(group, version, plural)]
        if not isinstance(body, dict):
            raise bad_request("the body of the request is not an object")
        api_version = f"{group}/{version}" if group else version
        if body.get("kind") not in (None, "", kind) or body.get("apiVersion") not in (None, "", api_version):
            raise bad_request(f"the API version in the data ({body.get('apiVersion')}) does not match "
                              f"the expected API version ({api_version})")
        obj = copy.deepcopy(body)
        obj["kind"], obj["apiVersion"] = kind, api_version
        m = obj.setdefault("metadata", {})
        if m.get("generateName") and not m.get("name"):
            m["name"] = m["generateName"] + uuid.uuid4().hex[:5]
        if namespaced:
            if m.get("namespace") not in (None, ns):
                raise bad_request("the namespace of the provided object does not match the "
                                  "namespace sent on the request")
            m["namespace"] = ns
        else:
            m.pop("namespace", None)
        self.validate(group, kind, plural, namespaced, obj)
        name = m["name"]
        if namespaced and not self.get("", "namespaces", "", ns):
            raise ApiError(404, "NotFound", f'namespaces "{ns}" not found',
                           details("", "namespaces", ns))
        if self.get(group, plural, ns if namespaced else "", name):
            raise ApiError(409, "AlreadyExists", f'{qualified(group, plural)} "{name}" already exists',
                           details(group, plural, name))
        for k in ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp", "managedFields"):
            m.pop(k, None)
        if not keep_status:
            obj.pop("status", None)
        if dry_run:
            m["uid"] = str(uuid.uuid4())
            m["creationTimestamp"] = self.clock.strftime("%Y-%m-%dT%H:%M:%SZ")
            return obj
        m["uid"] = str(uuid.uuid4())
        m["creationTimestamp"] = self.next_time()
        m["generation"] = 1
        if plural == "namespaces":
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
            obj["status"] = {"phase": "Active"}
            m.setdefault("labels", {})["kubernetes.io/metadata.name"] = name
        if plural == "persistentvolumeclaims" and not keep_status:
            obj["status"] = {"phase": "Pending"}
            obj["spec"].setdefault("volumeMode", "Filesystem")
        if plural == "pods" and not keep_status:
            obj["status"] = {"phase": "Pending"}
        self.put(group, plural, obj)
        return obj

    # -- controller --
    def default_class(self):
        for c in self.of("snapshot.storage.k8s.io", "volumesnapshotclasses"):
            if (c["metadata"].get("annotations") or {}).get(
                    "snapshot.storage.kubernetes.io/is-default-class") == "true":
                return c
        return None

    def set_status(self, group, plural, obj, status):
        if obj.get("status") != status:
            obj["status"] = status
            self.put(group, plural, obj)

    def reconcile(self):
        self.reconcile_groups()
        self.reconcile_workloads()
        g = "snapshot.storage.k8s.io"
        for snap in self.of(g, "volumesnapshots"):
            if snap["metadata"].get("deletionTimestamp"):
                continue
            st = copy.deepcopy(snap.get("status") or {})
            if st.get("error") or st.get("readyToUse"):
                continue
            ns, name = snap["metadata"]["namespace"], snap["metadata"]["name"]
            src = snap["spec"]["source"]
            content = None
            if st.get("boundVolumeSnapshotContentName"):
                content = self.get(g, "volumesnapshotcontents", "", st["boundVolumeSnapshotContentName"])
            elif src.get("persistentVolumeClaimName"):
                pvc_name = src["persistentVolumeClaimName"]
                message = self.fail.get(pvc_name) or self.fail.get(name)
                pvc = self.get("", "persistentvolumeclaims", ns, pvc_name)
                cls = (self.get(g, "volumesnapshotclasses", "", snap["spec"]["volumeSnapshotClassName"])
                       if snap["spec"].get("volumeSnapshotClassName") else self.default_class())
                if message is None and pvc is None:
                    message = (f'failed to get input parameters to create snapshot {name}: '
                               f'"persistentvolumeclaims \\"{pvc_name}\\" not found"')
                if message is None and (pvc.get("status") or {}).get("phase") != "Bound":
                    continue  # waits for the PVC to be bound
                if message is None and cls is None:
                    message = "Failed to get snapshot class with error cannot find default snapshot class"
                if message is not None:
                    st["error"] = {"message": message, "time": self.next_time()}
                    st["readyToUse"] = False
                    self.set_status(g, "volumesnapshots", snap, st)
                    continue
                size = quantity_bytes((pvc["status"].get("capacity") or {}).get("storage")
                                      or pvc["spec"]["resources"]["requests"]["storage"]) or GIB
                pv = self.get("", "persistentvolumes", "", pvc["spec"].get("volumeName", ""))
                handle = f"snap-{uuid.uuid4().hex[:17]}"
                self.handles[handle] = size
                content = {
                    "apiVersion": f"{g}/v1", "kind": "VolumeSnapshotContent",
                    "metadata": {"name": f"snapcontent-{snap['metadata']['uid']}"},
                    "spec": {
                        "deletionPolicy": cls.get("deletionPolicy", "Delete"), "driver": cls["driver"],
                        "source": {"volumeHandle": ((pv or {}).get("spec", {}).get("csi") or {}).get(
                            "volumeHandle", f"vol-{pvc['metadata']['uid'][:8]}")},
                        "sourceVolumeMode": pvc["spec"].get("volumeMode", "Filesystem"),
                        "volumeSnapshotClassName": cls["metadata"]["name"],
                        "volumeSnapshotRef": {"apiVersion": f"{g}/v1", "kind": "VolumeSnapshot",
                                              "name": name, "namespace": ns,
                                              "uid": snap["metadata"]["uid"]},
                    },
                }
                content = self.create(g, "v1", "volumesnapshotcontents", "", content)
                content["status"] = {"snapshotHandle": handle, "readyToUse": False,
                                     "restoreSize": size,
                                     "creationTime": int(self.clock.timestamp() * 1e9)}
                self.put(g, "volumesnapshotcontents", content)
                st.update({"boundVolumeSnapshotContentName": content["metadata"]["name"],
                           "creationTime": snap["metadata"]["creationTimestamp"],
                           "readyToUse": False, "restoreSize": quantity_of(size)})
                self.set_status(g, "volumesnapshots", snap, st)
            else:
                c = self.get(g, "volumesnapshotcontents", "", src["volumeSnapshotContentName"])
                ref = ((c or {}).get("spec") or {}).get("volumeSnapshotRef") or {}
                if c is None or ref.get("name") != name or ref.get("namespace") != ns:
                    continue  # waits for its content
                handle = c["spec"]["source"].get("snapshotHandle")
                if handle not in self.handles:
                    st["error"] = {"message": f"snapshot handle {handle} does not exist on the storage",
                                   "time": self.next_time()}
                    self.set_status(g, "volumesnapshots", snap, st)
                    continue
                if not c.get("status"):
                    c["status"] = {"snapshotHandle": handle, "readyToUse": False,
                                   "restoreSize": self.handles[handle],
                                   "creationTime": int(self.clock.timestamp() * 1e9)}
                    c["spec"]["volumeSnapshotRef"]["uid"] = snap["metadata"]["uid"]
                    self.put(g, "volumesnapshotcontents", c)
                content = c
                st.update({"boundVolumeSnapshotContentName": c["metadata"]["name"],
                           "creationTime": snap["metadata"]["creationTimestamp"],
                           "readyToUse": False, "restoreSize": quantity_of(self.handles[handle])})
                self.set_status(g, "volumesnapshots", snap, st)
            if content is not None and self.reads.get(snap["metadata"]["uid"], 0) >= self.ready_after_reads:
                st["readyToUse"] = True
                self.set_status(g, "volumesnapshots", snap, st)
                cst = copy.deepcopy(content.get("status") or {})
                cst["readyToUse"] = True
                self.set_status(g, "volumesnapshotcontents", content, cst)
        for pvc in self.of("", "persistentvolumeclaims"):
            ds = pvc["spec"].get("dataSource") or pvc["spec"].get("dataSourceRef")
            if not ds or (pvc.get("status") or {}).get("phase") == "Bound" or ds.get("kind") != "VolumeSnapshot":
                continue
            snap = self.get(g, "volumesnapshots", pvc["metadata"]["namespace"], ds.get("name"))
            if not snap or not (snap.get("status") or {}).get("readyToUse"):
                continue
            self.bind_pvc(pvc, quantity_bytes(snap["status"].get("restoreSize")) or GIB)

    def reconcile_groups(self):
        g = "snapshot.storage.k8s.io"
        for grp in self.of(GROUP, "volumegroupsnapshots"):
            st = copy.deepcopy(grp.get("status") or {})
            if st.get("error") or st.get("readyToUse") or grp["metadata"].get("deletionTimestamp"):
                continue
            ns, name, uid = grp["metadata"]["namespace"], grp["metadata"]["name"], grp["metadata"]["uid"]
            if not st.get("boundVolumeGroupSnapshotContentName"):
                selector = grp["spec"]["source"].get("selector")
                if not selector:
                    continue  # pre-provisioned group contents are not simulated
                cname = grp["spec"].get("volumeGroupSnapshotClassName")
                cls = self.get(GROUP, "volumegroupsnapshotclasses", "", cname) if cname else None
                pvcs = [p for p in self.of("", "persistentvolumeclaims")
                        if p["metadata"]["namespace"] == ns
                        and selector_match(selector, p["metadata"].get("labels") or {})]
                message = self.fail.get(name)
                if message is None and cls is None:
                    message = f"failed to get group snapshot class {cname!r}"
                if message is None and not pvcs:
                    message = f"no PersistentVolumeClaim in {ns} matches the group's selector"
                if message is None and any((p.get("status") or {}).get("phase") != "Bound" for p in pvcs):
                    continue
                if message is not None:
                    st.update({"error": {"message": message, "time": self.next_time()}, "readyToUse": False})
                    self.set_status(GROUP, "volumegroupsnapshots", grp, st)
                    continue
                created = self.next_time()
                handles = []
                for p in pvcs:
                    pv = self.get("", "persistentvolumes", "", p["spec"].get("volumeName", "")) or {}
                    vh = ((pv.get("spec") or {}).get("csi") or {}).get("volumeHandle") or f"vol-{p['metadata']['uid'][:8]}"
                    handles.append(vh)
                    h = hashlib.sha256((uid + vh).encode()).hexdigest()
                    size = quantity_bytes((p["status"].get("capacity") or {}).get("storage")) or GIB
                    snap_handle = f"snap-{uuid.uuid4().hex[:17]}"
                    self.handles[snap_handle] = size
                    content = self.create(g, "v1", "volumesnapshotcontents", "", {
                        "metadata": {"name": f"snapcontent-{h}"},
                        "spec": {"volumeSnapshotRef": {"kind": "VolumeSnapshot", "name": f"snapshot-{h}",
                                                       "namespace": ns},
                                 "deletionPolicy": cls.get("deletionPolicy", "Delete"),
                                 "driver": cls["driver"], "source": {"volumeHandle": vh},
                                 "sourceVolumeMode": (pv.get("spec") or {}).get("volumeMode", "Filesystem")}})
                    member = self.create(g, "v1", "volumesnapshots", ns, {
                        "metadata": {"name": f"snapshot-{h}", "finalizers": [IN_GROUP_FINALIZER],
                                     "ownerReferences": [{"apiVersion": f"{GROUP}/v1beta1",
                                                          "kind": "VolumeGroupSnapshot", "name": name,
                                                          "uid": uid, "controller": True}]},
                        "spec": {"source": {"persistentVolumeClaimName": p["metadata"]["name"]}}})
                    content["spec"]["volumeSnapshotRef"]["uid"] = member["metadata"]["uid"]
                    content["status"] = {"snapshotHandle": snap_handle, "readyToUse": False,
                                         "restoreSize": size, "creationTime": int(self.clock.timestamp() * 1e9)}
                    self.put(g, "volumesnapshotcontents", content)
                    member["status"] = {"boundVolumeSnapshotContentName": content["metadata"]["name"],
                                        "creationTime": created, "readyToUse": False,
                                        "restoreSize": quantity_of(size), "volumeGroupSnapshotName": name}
                    self.put(g, "volumesnapshots", member)
                gc = self.create(GROUP, "v1beta1", "volumegroupsnapshotcontents", "", {
                    "metadata": {"name": f"groupsnapcontent-{uid}"},
                    "spec": {"deletionPolicy": cls.get("deletionPolicy", "Delete"), "driver": cls["driver"],
                             "source": {"volumeHandles": handles},
                             "volumeGroupSnapshotClassName": cname,
                             "volumeGroupSnapshotRef": {"kind": "VolumeGroupSnapshot", "name": name,
                                                        "namespace": ns, "uid": uid}}})
                gc["status"] = {"volumeGroupSnapshotHandle": f"group-{uuid.uuid4().hex[:12]}",
                                "readyToUse": False}
                self.put(GROUP, "volumegroupsnapshotcontents", gc)
                st.update({"boundVolumeGroupSnapshotContentName": gc["metadata"]["name"],
                           "creationTime": created, "readyToUse": False})
                self.set_status(GROUP, "volumegroupsnapshots", grp, st)
            if self.reads.get(uid, 0) >= self.ready_after_reads:
                st["readyToUse"] = True
                self.set_status(GROUP, "volumegroupsnapshots", grp, st)
                for m in self.of(g, "volumesnapshots"):
                    if any(o.get("uid") == uid for o in m["metadata"].get("ownerReferences") or []):
                        mst = copy.deepcopy(m["status"])
                        mst["readyToUse"] = True
                        self.set_status(g, "volumesnapshots", m, mst)
                        c = self.get(g, "volumesnapshotcontents", "", mst["boundVolumeSnapshotContentName"])
                        if c:
                            cst = copy.deepcopy(c["status"])
                            cst["readyToUse"] = True
                            self.set_status(g, "volumesnapshotcontents", c, cst)

    def pod_for(self, ns, name, template, owner_kind, owner):
        if self.get("", "pods", ns, name):
            return
        tpl = copy.deepcopy(template)
        pod = self.create("", "v1", "pods", ns, {
            "metadata": {"name": name, "labels": (tpl.get("metadata") or {}).get("labels", {}),
                         "ownerReferences": [{"apiVersion": owner["apiVersion"], "kind": owner_kind,
                                              "name": owner["metadata"]["name"],
                                              "uid": owner["metadata"]["uid"], "controller": True}]},
            "spec": tpl["spec"]})
        now = self.next_time()
        done = owner_kind == "Job"
        pod["spec"]["nodeName"] = "double-node-1"
        pod["status"] = {
            "phase": "Succeeded" if done else "Running", "startTime": now,
            "conditions": [{"type": "PodScheduled", "status": "True"},
                           {"type": "Ready", "status": "False" if done else "True"}],
            "containerStatuses": [
                {"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": not done,
                 "restartCount": 0, "started": not done,
                 "state": ({"terminated": {"exitCode": 0, "reason": "Completed"}} if done
                           else {"running": {"startedAt": now}})}
                for c in tpl["spec"]["containers"]]}
        self.put("", "pods", pod)

    def reconcile_workloads(self):
        # a PVC naming its PV binds when the PV exists
        for pvc in self.of("", "persistentvolumeclaims"):
            vn = pvc["spec"].get("volumeName")
            pv = vn and self.get("", "persistentvolumes", "", vn)
            if pv and (pvc.get("status") or {}).get("phase") != "Bound":
                pvc["status"] = {"phase": "Bound", "accessModes": pvc["spec"].get("accessModes"),
                                 "capacity": (pv.get("spec") or {}).get("capacity", {})}
                self.put("", "persistentvolumeclaims", pvc)
                pv["status"] = {"phase": "Bound"}
                self.put("", "persistentvolumes", pv)
        for kind, plural in (("StatefulSet", "statefulsets"), ("Deployment", "deployments"), ("Job", "jobs")):
            group = "batch" if plural == "jobs" else "apps"
            for w in self.of(group, plural):
                m = w["metadata"]
                gen = m.get("generation", 1)
                st = w.get("status") or {}
                if st.get("succeeded") or (st.get("observedGeneration") == gen
                                           and st.get("updateRevision") == f"{m['name']}-{gen}"):
                    continue  # rolled out (or completed)
                if self.reads.get(m["uid"], 0) < self.ready_after_reads:
                    if st.get("observedGeneration") != gen:
                        w["status"] = {"observedGeneration": gen, "replicas": 0}
                        self.put(group, plural, w)
                    continue
                ns = m["namespace"]
                n = 1 if plural == "jobs" else int(w["spec"].get("replicas", 1))
                for i in range(n):
                    name = f"{m['name']}-{i}" if plural == "statefulsets" else f"{m['name']}-{m['uid'][:5]}{i}"
                    self.pod_for(ns, name, w["spec"]["template"], kind, w)
                rev = f"{m['name']}-{gen}"
                if plural == "jobs":
                    w["status"] = {"succeeded": 1, "startTime": self.next_time(),
                                   "completionTime": self.next_time(),
                                   "conditions": [{"type": "Complete", "status": "True"}]}
                else:
                    w["status"] = {"observedGeneration": gen, "replicas": n, "readyReplicas": n,
                                   "currentReplicas": n, "updatedReplicas": n, "availableReplicas": n,
                                   "currentRevision": rev, "updateRevision": rev}
                self.put(group, plural, w)

    def bind_pvc(self, pvc, size):
        pv_name = f"pvc-{pvc['metadata']['uid']}"
        if not self.get("", "persistentvolumes", "", pv_name):
            pv = {"metadata": {"name": pv_name},
                  "spec": {"capacity": {"storage": quantity_of(size)},
                           "accessModes": pvc["spec"].get("accessModes", ["ReadWriteOnce"]),
                           "csi": {"driver": "csi.double.snapstage.io",
                                   "volumeHandle": f"vol-{uuid.uuid4().hex[:17]}"},
                           "claimRef": {"kind": "PersistentVolumeClaim",
                                        "namespace": pvc["metadata"]["namespace"],
                                        "name": pvc["metadata"]["name"], "uid": pvc["metadata"]["uid"]},
                           "persistentVolumeReclaimPolicy": "Delete",
                           "volumeMode": pvc["spec"].get("volumeMode", "Filesystem")}}
            pv = self.create("", "v1", "persistentvolumes", "", pv)
            pv["status"] = {"phase": "Bound"}
            self.put("", "persistentvolumes", pv)
        pvc["spec"]["volumeName"] = pv_name
        pvc["status"] = {"phase": "Bound", "accessModes": pvc["spec"].get("accessModes"),
                         "capacity": {"storage": quantity_of(size)}}
        self.put("", "persistentvolumeclaims", pvc)

    def counted_read(self, obj):
        uid = obj["metadata"].get("uid")
        if uid:
            self.reads[uid] = self.reads.get(uid, 0) + 1

    def on_delete(self, group, plural, obj):
        if plural == "volumesnapshots":
            cname = (obj.get("status") or {}).get("boundVolumeSnapshotContentName")
            c = cname and self.get(group, "volumesnapshotcontents", "", cname)
            if c and c["spec"].get("deletionPolicy") == "Delete":
                self.handles.pop((c.get("status") or {}).get("snapshotHandle"), None)
                self.remove(group, "volumesnapshotcontents", c)


# ---------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------

STORE = Store()


def route(path: str):
    """(group, version, plural, namespace, name) of an API path, or None."""
    parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
    if parts[:2] == ["api", "v1"]:
        group, version, rest = "", "v1", parts[2:]
    elif parts[0] == "apis" and len(parts) >= 3:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    ns = ""
    if len(rest) >= 3 and rest[0] == "namespaces":
        ns, rest = rest[1], rest[2:]
    if not rest or len(rest) > 2 or (group, version, rest[0]) not in RESOURCES:
        return None
    kind, namespaced = RESOURCES[(group, version, rest[0])]
    if ns and not namespaced:
        return None
    return group, version, rest[0], ns, (rest[1] if len(rest) == 2 else None)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kube-apiserver-double/1"

    def log_message(self, fmt, *args):  # quiet
        pass

    def send(self, code: int, body: dict):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        raw = self.raw
        if not raw:
            return None
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        try:
            return json.loads(raw)
        except ValueError:
            if ctype == "application/apply-patch+yaml":
                try:
                    import yaml  # PyYAML, present in the dev venv
                    return yaml.safe_load(raw)
                except Exception as e:  # noqa: BLE001
                    raise bad_request(f"error decoding YAML: {e}")
            raise bad_request("the body of the request was not valid JSON")

    def do_GET(self):
        self.dispatch("GET")

    def do_POST(self):
        self.dispatch("POST")

    def do_PATCH(self):
        self.dispatch("PATCH")

    def do_DELETE(self):
        self.dispatch("DELETE")

    def do_PUT(self):
        self.dispatch("PUT")

    def dispatch(self, method):
        # Read the whole body first, whatever the answer: the connection is kept alive.
        n = int(self.headers.get("Content-Length") or 0)
        self.raw = self.rfile.read(n) if n else b""
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        try:
            if url.path.startswith("/_double/"):
                return self.control(method, url.path)
            with STORE.lock:
                STORE.requests.append(f"{method} {url.path}")
                r = route(url.path)
                if r is None:
                    raise ApiError(404, "NotFound", "the server could not find the requested resource",
                                   {})
                STORE.reconcile()
                code, out = self.api(method, query, *r)
                STORE.reconcile()
            self.send(code, out)
        except ApiError as e:
            self.send(e.code, e.status())

    def api(self, method, query, group, version, plural, ns, name):
        kind, namespaced = RESOURCES[(group, version, plural)]
        if namespaced and not ns and method != "GET":
            raise ApiError(404, "NotFound", "the server could not find the requested resource", {})
        if name is None:
            if method == "GET":
                return 200, self.list(query, group, version, plural, kind, ns)
            if method == "POST":
                obj = STORE.create(group, version, plural, ns, self.body(),
                                   dry_run=query.get("dryRun") == "All")
                return 201, obj
            raise ApiError(405, "MethodNotAllowed", f"the server does not allow this method on the "
                           f"requested resource", {})
        key_ns = ns if namespaced else ""
        obj = STORE.get(group, plural, key_ns, name)
        if method == "GET":
            if obj is None:
                raise not_found(group, plural, name)
            STORE.counted_read(obj)
            STORE.reconcile()
            return 200, STORE.get(group, plural, key_ns, name)
        if method == "DELETE":
            if obj is None:
                raise not_found(group, plural, name)
            opts = self.body() or {}
            want = (opts.get("preconditions") or {}).get("uid")
            if want and want != obj["metadata"]["uid"]:
                raise ApiError(409, "Conflict",
                               f"Operation cannot be fulfilled on {qualified(group, plural)} \"{name}\": "
                               f"Precondition failed: UID in precondition: {want}, UID in object meta: "
                               f"{obj['metadata']['uid']}", details(group, plural, name))
            if obj["metadata"].get("finalizers"):
                if not obj["metadata"].get("deletionTimestamp"):
                    obj["metadata"]["deletionTimestamp"] = STORE.next_time()
                    STORE.put(group, plural, obj)
                return 200, obj
            STORE.remove(group, plural, obj)
            STORE.on_delete(group, plural, obj)
            return 200, obj
        if method == "PATCH":
            return self.patch(query, group, version, plural, kind, key_ns, name, obj)
        raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the "
                       "requested resource", {})

    def list(self, query, group, version, plural, kind, ns):
        lreqs = parse_label_selector(query.get("labelSelector", ""))
        freqs = parse_field_selector(query.get("fieldSelector", ""))
        items = []
        for o in STORE.of(group, plural):
            if ns and o["metadata"].get("namespace") != ns:
                continue
            if not labels_match(lreqs, o["metadata"].get("labels") or {}):
                continue
            if not fields_match(freqs, o):
                continue
            STORE.counted_read(o)
            items.append(o)
        STORE.reconcile()
        out = []
        for o in items:
            o = STORE.get(group, plural, o["metadata"].get("namespace", ""), o["metadata"]["name"]) or o
            o = copy.deepcopy(o)
            if not group:  # built-in list items carry no type
                o.pop("kind", None)
                o.pop("apiVersion", None)
            out.append(o)
        return {"kind": f"{kind}List", "apiVersion": f"{group}/{version}" if group else version,
                "metadata": {"resourceVersion": str(STORE.rv)}, "items": out}

    def patch(self, query, group, version, plural, kind, ns, name, obj):
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        body = self.body()
        if ctype == "application/apply-patch+yaml":
            manager = query.get("fieldManager")
            if not manager:
                raise invalid(group, kind, plural, name, "fieldManager",
                              "Required value: is required for apply patch")
            if not isinstance(body, dict) or not body.get("apiVersion") or not body.get("kind"):
                raise bad_request("apiVersion and kind must be set in an applied configuration")
            if (body.get("metadata") or {}).get("name") not in (None, name):
                raise bad_request(f"the name of the object ({body['metadata']['name']}) does not "
                                  f"match the name on the URL ({name})")
            applied = copy.deepcopy(body)
            for k in ("status",):
                applied.pop(k, None)
            if obj is None:
                new = STORE.create(group, version, plural, ns, applied)
                STORE.applied[new["metadata"]["uid"]] = {manager: applied}
                new["metadata"]["managedFields"] = [{"manager": manager, "operation": "Apply",
                                                     "apiVersion": new["apiVersion"]}]
                return 201, new
            uid = obj["metadata"]["uid"]
            force = query.get("force", "false") in ("1", "t", "T", "true", "True", "TRUE")
            if force:  # the forcing manager takes the fields over
                for other, conf in STORE.applied.get(uid, {}).items():
                    if other != manager:
                        for path, _ in leaves(applied):
                            drop(conf, path)
            else:
                for other, conf in STORE.applied.get(uid, {}).items():
                    if other == manager:
                        continue
                    for path, value in leaves(applied):
                        theirs = at(conf, path)
                        if theirs is not None and theirs != value:
                            field = ".".join(path)
                            raise ApiError(409, "Conflict", f"Apply failed with 1 conflict: conflict "
                                           f"with \"{other}\": .{field}",
                                           details(group, plural, name, [{
                                               "reason": "FieldManagerConflict",
                                               "message": f'conflict with "{other}"',
                                               "field": "." + field}]))
            new = merge_patch(obj, applied)
            STORE.applied.setdefault(uid, {})[manager] = applied
        elif ctype in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            if ctype.startswith("application/strategic") and group:
                raise ApiError(415, "UnsupportedMediaType",
                               f"the body of the request was in an unknown format - accepted media "
                               f"types include: application/json-patch+json, "
                               f"application/merge-patch+json, application/apply-patch+yaml")
            if obj is None:
                raise not_found(group, plural, name)
            if not isinstance(body, dict):
                raise bad_request("a merge patch must be a JSON object")
            new = merge_patch(obj, body)
        elif ctype == "application/json-patch+json":
            if obj is None:
                raise not_found(group, plural, name)
            if not isinstance(body, list):
                raise bad_request("a JSON patch must be a list of operations")
            new = json_patch(obj, body)
        else:
            raise ApiError(415, "UnsupportedMediaType",
                           f"the body of the request was in an unknown format - accepted media types "
                           f"include: application/json-patch+json, application/merge-patch+json, "
                           f"application/apply-patch+yaml")
        # what a patch may not change
        for k in ("uid", "creationTimestamp", "name", "namespace"):
            if obj["metadata"].get(k) is None:
                new["metadata"].pop(k, None)
            else:
                new["metadata"][k] = obj["metadata"][k]
        new["kind"], new["apiVersion"] = obj["kind"], obj["apiVersion"]
        new["status"] = obj.get("status")
        if new["status"] is None:
            new.pop("status")
        STORE.validate(group, kind, plural, bool(ns), new)
        STORE.check_immutable(group, kind, plural, obj, new)
        if new.get("spec") != obj.get("spec"):
            new["metadata"]["generation"] = obj["metadata"].get("generation", 1) + 1
        if new != obj:
            STORE.put(group, plural, new)
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            STORE.remove(group, plural, new)
            STORE.on_delete(group, plural, new)
        return 200, new

    # -- control --
    def control(self, method, path):
        with STORE.lock:
            if method == "GET" and path == "/_double/state":
                objects: dict[str, list] = {}
                for (g, p, _, _), o in sorted(STORE.objects.items()):
                    objects.setdefault(p, []).append(o)
                return self.send(200, {"objects": objects, "requests": STORE.requests, "rv": STORE.rv})
            body = self.body() or {}
            if method == "POST" and path == "/_double/config":
                if "ready_after_reads" in body:
                    STORE.ready_after_reads = int(body["ready_after_reads"])
                if "fail" in body:
                    STORE.fail = dict(body["fail"])
                return self.send(200, {"ok": True})
            if method == "POST" and path == "/_double/seed":
                made = []
                for o in body.get("objects", []):
                    g, _, v = o["apiVersion"].rpartition("/")
                    key = PLURAL_OF_KIND[o["kind"]]
                    made.append(STORE.create(g, v, key[2], o["metadata"].get("namespace", ""), o,
                                             keep_status=True))
                for p in body.get("pvcs", []):
                    size = int(p.get("size", 8 * GIB))
                    pvc = STORE.create("", "v1", "persistentvolumeclaims", p["namespace"], {
                        "metadata": {"name": p["name"], "labels": p.get("labels", {})},
                        "spec": {"accessModes": ["ReadWriteOnce"],
                                 "resources": {"requests": {"storage": quantity_of(size)}}}})
                    STORE.bind_pvc(pvc, size)
                    made.append(pvc)
                return self.send(200, {"objects": made})
            self.send(404, {"error": f"no control endpoint {method} {path}"})


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--exit-with-stdin", action="store_true",
                    help="exit when stdin closes (the test process ended)")
    a = ap.parse_args()
    srv = Server(("127.0.0.1", a.port), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    print(json.dumps({"port": srv.server_address[1]}), flush=True)
    if a.exit_with_stdin:
        sys.stdin.read()
    else:
        threading.Event().wait()


if __name__ == "__main__":
    main()
