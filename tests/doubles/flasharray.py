#!/usr/bin/env python3
"""A small, faithful double of Pure Storage FlashArray / Cloud Block Store REST 2.x.

It serves one or more arrays on 127.0.0.1 (one port each, one process, shared memory so that a
protection group on one array can replicate to another), implements exactly the endpoints
snapstage's client uses, and checks itself against the official OpenAPI spec
(`flasharray-rest-2.56.yaml`) with an independent validator (PyPI `openapi-core`):

* every request is validated against the spec (path, operation, security, parameters, body),
  plus the rules the spec states in prose for these operations (mutually exclusive parameters,
  required `names`, ...), unknown query parameters and unknown or read-only body properties;
  a request that breaks a rule gets HTTP 400 with a body naming the rule, and is recorded;
* every response the double sends is validated against the operation's response schema (error
  bodies against the spec's `_errorContextResponse`), and unknown properties are refused too,
  so the double cannot invent fields the real array does not have.

Recorded violations are listed by `GET /_double/violations`; tests assert the list is empty.

Control endpoints (not part of the FlashArray API):

    GET    /_double/violations        {"violations": [...]}
    GET    /_double/state             arrays, volumes, snapshots, transfers, sessions, counters
    POST   /_double/faults            {"status": 429|503|401|..., "count": n, "path": "/volumes",
                                       "method": "GET"?, "array": "name"?, "retry_after": s?}
    DELETE /_double/faults
    POST   /_double/seed              {"array"?, "volumes": [{"name", "provisioned"?, "tags"?, "files"?}],
                                       "snapshots": [{"source", "suffix", "created"?}],
                                       "pgroups": [{"name", "volumes": [...], "targets": [...],
                                                    "tags"?}]}
                                       (tags: [{"key", "value", "namespace"?}])
    POST   /_double/config            {"array"?, "versions": [...], "transfer_step": 0.25,
                                       "max_page_size": n}
    POST   /_double/connections       {"array"?, "volume": "name", "hosts": ["host", ...]} or
                                       {"count": n} (hosts host-1..n): the hosts connected to the
                                       volume, listed by GET /connections; a connected volume
                                       cannot be destroyed
    POST   /_double/files             {"array"?, "volume": "name", "files": {"path": "content"}}
                                       replaces the volume's content (an opaque map)
    GET    /_double/files             {"array"?, "volume": "name"} -> {"files": {...}}

Volume content: each volume holds an opaque `files` map (path -> content, e.g. a SHA-256), not
visible through the REST API. Snapshots keep the content they were taken with; a copy
(`POST /volumes` with a source, overwrite included) takes its source's; a replicated protection
group snapshot carries each volume's content to the target array.

Usage: flasharray.py [--array NAME=PORT ...] [--api-token TOKEN] [--spec PATH]
Prints one JSON line `{"arrays": {"NAME": PORT, ...}}` on stdout when ready.
Exit status 3: a prerequisite (the spec, PyYAML, openapi-core) is missing.
"""

from __future__ import annotations

import argparse
import fnmatch
import http.server
import json
import os
import re
import sys
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

SPEC_VERSION = "2.56"
DEFAULT_SPEC = (
    Path(__file__).resolve().parents[2].parent / "shared" / "specs" / "flasharray-rest-2.56.yaml"
)
DEFAULT_VERSIONS = [f"1.{n}" for n in range(0, 20)] + [f"2.{n}" for n in range(0, 61)]
GIB = 1 << 30

# Purity naming rules (the spec states them for managed directory suffixes, "between 1 and 63
# characters (alphanumeric and '-') in length and must begin and end with a letter or number ...
# must include at least one letter or '-'"; Purity applies the same rule to snapshot suffixes).
SUFFIX_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
# Volume names: 1-63 characters, letters, digits, '-' and '_', beginning and ending with a letter
# or digit, at least one letter, '-' or '_'.
VOLUME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?$")


def die(msg: str) -> None:
    print(f"flasharray double: {msg}", file=sys.stderr, flush=True)
    sys.exit(3)


# --------------------------------------------------------------------------------------------
# The spec and the validator
# --------------------------------------------------------------------------------------------


class Spec:
    """The official spec, loaded once, with openapi-core for validation."""

    def __init__(self, path: Path):
        try:
            import yaml
        except ImportError:
            die("PyYAML is not installed (pip install -r requirements-dev.txt)")
        try:
            from openapi_core import Config, OpenAPI
            from openapi_core.testing import MockRequest, MockResponse
        except ImportError:
            die("openapi-core is not installed (pip install -r requirements-dev.txt)")
        if not path.is_file():
            die(f"spec not found at {path} (pass --spec)")
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        with open(path, encoding="utf-8") as f:
            self.doc = yaml.load(f, Loader=loader)
        # The spec applies its global security (x-auth-token or Authorization) to /login by
        # omission; the array does not ask a session token to create one. Validate login with
        # the security it really has: none (it is authenticated by its api-token header).
        self.doc["paths"][f"/api/{SPEC_VERSION}/login"]["post"]["security"] = []
        self.api = OpenAPI.from_dict(self.doc, config=Config(spec_validator_cls=None))
        self.MockRequest = MockRequest
        self.MockResponse = MockResponse
        from openapi_schema_validator import OAS30Validator

        self.OAS30Validator = OAS30Validator
        comps = self.doc["components"]
        self.error_schema = comps["schemas"]["_errorContextResponse"]

    # -- helpers over the raw document --

    def deref(self, node):
        while isinstance(node, dict) and "$ref" in node:
            parts = node["$ref"].lstrip("#/").split("/")
            cur = self.doc
            for p in parts:
                cur = cur[p]
            node = cur
        return node

    def operation(self, path: str, method: str):
        item = self.doc["paths"].get(path)
        if item is None:
            return None
        return item.get(method.lower())

    def query_params(self, op) -> set[str]:
        names = set()
        for p in op.get("parameters", []):
            p = self.deref(p)
            if p.get("in") == "query":
                names.add(p["name"])
        return names

    def properties(self, schema) -> tuple[dict, bool]:
        """Properties of a schema with allOf/oneOf/anyOf merged; and whether it is open."""
        schema = self.deref(schema)
        props: dict = {}
        open_ = False
        for key in ("allOf", "oneOf", "anyOf"):
            for sub in schema.get(key, []):
                p, o = self.properties(sub)
                props.update(p)
                open_ = open_ or o
        props.update(schema.get("properties", {}))
        ap = schema.get("additionalProperties")
        if ap is True or isinstance(ap, dict):
            open_ = True
        if not props and not any(k in schema for k in ("allOf", "oneOf", "anyOf")):
            open_ = True  # a free-form object
        return props, open_

    def strict_errors(self, value, schema, where: str, request: bool) -> list[str]:
        """Unknown properties anywhere in `value`; read-only properties in a request."""
        out: list[str] = []
        schema = self.deref(schema)
        if isinstance(value, dict):
            props, open_ = self.properties(schema)
            for k, v in value.items():
                if k not in props:
                    if not open_:
                        out.append(f"{where}.{k}: property not in the spec's schema")
                    continue
                sub = self.deref(props[k])
                if request and (sub.get("readOnly") or props[k].get("readOnly")):
                    out.append(f"{where}.{k}: read-only property sent in a request")
                out.extend(self.strict_errors(v, sub, f"{where}.{k}", request))
        elif isinstance(value, list):
            items = schema.get("items")
            if items is None:
                for sub in schema.get("allOf", []):
                    items = self.deref(sub).get("items") or items
            if items is not None:
                for i, v in enumerate(value):
                    out.extend(self.strict_errors(v, items, f"{where}[{i}]", request))
        return out

    # -- validation --

    def request(self, method, path, query: dict[str, str], headers: dict, body: bytes | None):
        return self.MockRequest(
            "http://127.0.0.1",
            method.lower(),
            path,
            args=query,
            headers=headers,
            data=body.decode("utf-8", "replace") if body else None,
            content_type=headers.get("content-type") or headers.get("Content-Type"),
        )

    def request_errors(self, req, op, query: dict[str, str], body_json) -> list[str]:
        errors = [describe(e) for e in self.api.iter_request_errors(req)]
        declared = self.query_params(op)
        for k in query:
            if k not in declared:
                errors.append(f"query parameter {k!r} is not defined for this operation")
        rb = op.get("requestBody")
        if body_json is not None and rb is not None:
            schema = self.deref(rb)["content"]["application/json"]["schema"]
            errors.extend(self.strict_errors(body_json, schema, "body", request=True))
        elif body_json is not None and rb is None:
            errors.append("a request body was sent but the operation defines none")
        return errors

    def response_errors(self, req, op, status: int, headers: dict, body: bytes) -> list[str]:
        if status >= 400:
            try:
                doc = json.loads(body)
            except ValueError:
                return ["error response is not JSON"]
            v = self.OAS30Validator(
                {
                    "allOf": [{"$ref": "#/components/schemas/_errorContextResponse"}],
                    "components": self.doc["components"],
                }
            )
            errs = [f"error body: {e.message}" for e in v.iter_errors(doc)]
            errs += self.strict_errors(doc, self.error_schema, "error", request=False)
            return errs
        spec_resp = (op.get("responses") or {}).get(str(status))
        if spec_resp is None:
            return [f"status {status} is not a documented response"]
        spec_resp = self.deref(spec_resp)
        content = spec_resp.get("content") or {}
        if not content:
            return [] if not body else ["a body was sent for a response without content"]
        resp = self.MockResponse(
            body,
            status_code=status,
            headers=headers,
            content_type="application/json",
        )
        errs = [describe(e) for e in self.api.iter_response_errors(req, resp)]
        schema = content["application/json"]["schema"]
        errs += self.strict_errors(json.loads(body), schema, "response", request=False)
        return errs


def describe(exc: BaseException) -> str:
    """A readable one-line description of an openapi-core error and its schema errors."""
    parts = [str(exc)]
    cause = exc.__cause__
    seen = 0
    while cause is not None and seen < 4:
        schema_errors = getattr(cause, "schema_errors", None)
        if schema_errors:
            msgs = []
            for se in schema_errors:
                loc = "/".join(str(p) for p in getattr(se, "absolute_path", []))
                msgs.append(f"{loc or '<root>'}: {getattr(se, 'message', se)}")
            parts.append("; ".join(sorted(set(msgs))))
        else:
            parts.append(repr(cause))
        cause = cause.__cause__
        seen += 1
    return " -- ".join(parts)


# --------------------------------------------------------------------------------------------
# In-memory arrays
# --------------------------------------------------------------------------------------------


class ApiError(Exception):
    def __init__(self, status: int, message: str, context: str | None = None, violation=False):
        super().__init__(message)
        self.status = status
        self.message = message
        self.context = context
        self.violation = violation


def now_ms() -> int:
    return int(time.time() * 1000)


def new_id() -> str:
    return str(uuid.uuid4())


def serial() -> str:
    return uuid.uuid4().hex[:24].upper()


class Array:
    def __init__(self, name: str):
        self.name = name
        self.versions = list(DEFAULT_VERSIONS)
        self.volumes: dict[str, dict] = {}
        self.vsnaps: dict[str, dict] = {}
        self.pgroups: dict[str, dict] = {}
        self.pgsnaps: dict[str, dict] = {}
        self.transfers: dict[str, dict] = {}  # pgroup snapshot name -> shared transfer record
        # resource name -> {(namespace, key): tag}, for volumes and protection groups
        self.volume_tags: dict[str, dict] = {}
        self.pgroup_tags: dict[str, dict] = {}
        self.sessions: dict[str, str] = {}
        self.counters = {"logins": 0, "logouts": 0, "failed_logins": 0, "requests": {}}
        self.clock = 0  # keeps created times strictly increasing

    def tick(self) -> int:
        self.clock = max(self.clock + 1, now_ms())
        return self.clock

    def add_volume(self, name, provisioned=10 * GIB, source=None, created=None, files=None):
        vol = {
            "id": new_id(),
            "name": name,
            "serial": serial(),
            "created": created if created is not None else self.tick(),
            "destroyed": False,
            "provisioned": provisioned,
            "subtype": "regular",
            "files": dict(files or {}),
        }
        if source is not None:
            vol["source"] = source
        self.volumes[name] = vol
        return vol

    def add_vsnap(self, source_vol: dict, suffix: str, created=None, name=None):
        name = name or f"{source_vol['name']}.{suffix}"
        snap = {
            "id": new_id(),
            "name": name,
            "serial": serial(),
            "created": created if created is not None else self.tick(),
            "destroyed": False,
            "provisioned": source_vol["provisioned"],
            "source": {"id": source_vol["id"], "name": source_vol["name"]},
            "suffix": suffix,
            "files": dict(source_vol.get("files") or {}),
        }
        self.vsnaps[name] = snap
        return snap


class World:
    def __init__(self, spec: Spec, api_token: str):
        self.spec = spec
        self.api_token = api_token
        self.lock = threading.RLock()
        self.arrays: dict[str, Array] = {}
        self.violations: list[dict] = []
        self.faults: list[dict] = []
        self.pages: dict[str, dict] = {}
        self.transfer_step = 0.25
        self.max_page_size = 1000

    def violation(self, array: str, method: str, path: str, rule: str):
        self.violations.append({"array": array, "method": method, "path": path, "rule": rule})


# --------------------------------------------------------------------------------------------
# Query helpers: names lists, filter, sort, paging
# --------------------------------------------------------------------------------------------


def csv(query: dict, key: str) -> list[str] | None:
    v = query.get(key)
    if v is None:
        return None
    return [x for x in v.split(",") if x]


def truthy(query: dict, key: str) -> bool | None:
    v = query.get(key)
    if v is None:
        return None
    return v.lower() == "true"


FILTER_TERM = re.compile(r"""^\s*([a-z_]+(?:\.[a-z_]+)*)\s*(=|!=)\s*(?:'([^']*)'|"([^"]*)")\s*$""")


def parse_filter(expr: str):
    """The subset of Purity's filter language the double understands: `field='glob'` and
    `field!='glob'` terms (with `*` wildcards) joined by ` and `."""
    terms = []
    for raw in re.split(r"\s+and\s+", expr.strip()):
        m = FILTER_TERM.match(raw)
        if not m:
            raise ApiError(400, f"Unsupported filter term: {raw!r}", violation=True)
        field, op, a, b = m.groups()
        terms.append((field.split("."), op, a if a is not None else b))
    return terms


def field_value(item: dict, path: list[str]):
    cur = item
    for p in path:
        if not isinstance(cur, dict):
            return None
        cur = cur.get(p)
    return cur


def matches(item: dict, terms) -> bool:
    for path, op, pattern in terms:
        v = field_value(item, path)
        hit = v is not None and fnmatch.fnmatchcase(str(v).lower() if isinstance(v, bool) else str(v), pattern)
        if (op == "=") != hit:
            return False
    return True


def sort_items(items: list[dict], sort: list[str]) -> list[dict]:
    for key in reversed(sort):
        desc = key.endswith("-")
        field = key.rstrip("-")
        items = sorted(
            items,
            key=lambda it: (field_value(it, field.split(".")) is None, field_value(it, field.split(".")) or 0),
            reverse=desc,
        )
    return items


# --------------------------------------------------------------------------------------------
# The HTTP handler
# --------------------------------------------------------------------------------------------

API_PREFIX = re.compile(r"^/api/(\d+\.\d+)(/.*)$")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Purity//FA"
    world: World = None  # set on the class per server
    array_name: str = ""

    def log_message(self, fmt, *args):  # quiet unless asked
        if os.environ.get("FLASHARRAY_DOUBLE_VERBOSE"):
            sys.stderr.write(f"[{self.array_name}] {fmt % args}\n")

    # -- plumbing --

    def _read_body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def _send(self, status: int, body, headers: dict | None = None):
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_PUT(self):
        self._handle("PUT")

    def do_PATCH(self):
        self._handle("PATCH")

    def do_DELETE(self):
        self._handle("DELETE")

    def _handle(self, method: str):
        url = urllib.parse.urlsplit(self.path)
        pairs = urllib.parse.parse_qsl(url.query, keep_blank_values=True)
        query = dict(pairs)
        body = self._read_body()
        w = self.world
        if url.path.startswith("/_double/"):
            with w.lock:
                status, out = self._control(method, url.path, body)
            self._send(status, out)
            return
        with w.lock:
            try:
                status, headers, out = self._api(method, url.path, query, pairs, body)
            except Exception as e:  # a bug in the double: say so, and record it
                import traceback

                traceback.print_exc()
                w.violation(self.array_name, method, url.path, f"double crashed: {e!r}")
                status, headers, out = 500, {}, {"errors": [{"message": f"double crashed: {e!r}"}]}
        self._send(status, out, headers)

    # -- control endpoints --

    def _control(self, method: str, path: str, body: bytes):
        w = self.world
        doc = json.loads(body) if body else {}
        arr = w.arrays.get(doc.get("array") or self.array_name) if isinstance(doc, dict) else None
        if path == "/_double/violations" and method == "GET":
            return 200, {"violations": w.violations}
        if path == "/_double/state" and method == "GET":
            return 200, {"arrays": {n: state_of(a) for n, a in w.arrays.items()}}
        if path == "/_double/faults" and method == "POST":
            fault = {
                "status": int(doc["status"]),
                "count": int(doc.get("count", 1)),
                "path": doc.get("path", "*"),
                "method": (doc.get("method") or "").upper() or None,
                "array": doc.get("array"),
                "retry_after": doc.get("retry_after"),
            }
            w.faults.append(fault)
            return 200, {"faults": w.faults}
        if path == "/_double/faults" and method == "DELETE":
            w.faults.clear()
            return 200, {"faults": []}
        if arr is None:
            return 404, {"error": f"unknown array {doc.get('array')!r}"}
        if path == "/_double/seed" and method == "POST":
            for v in doc.get("volumes", []):
                arr.add_volume(
                    v["name"], int(v.get("provisioned", 10 * GIB)), created=v.get("created"), files=v.get("files")
                )
                for t in v.get("tags", []):
                    put_tag(arr.volume_tags, arr.volumes[v["name"]], t)
            for s in doc.get("snapshots", []):
                vol = arr.volumes[s["source"]]
                arr.add_vsnap(vol, s["suffix"], created=s.get("created"))
            for g in doc.get("pgroups", []):
                for v in g.get("volumes", []):
                    if v not in arr.volumes:
                        arr.add_volume(v)
                arr.pgroups[g["name"]] = {
                    "id": new_id(),
                    "name": g["name"],
                    "volumes": list(g.get("volumes", [])),
                    "targets": list(g.get("targets", [])),
                }
                for t in g.get("tags", []):
                    put_tag(arr.pgroup_tags, arr.pgroups[g["name"]], t)
            return 200, {"array": state_of(arr)}
        if path == "/_double/connections" and method == "POST":
            vol = arr.volumes.get(doc.get("volume"))
            if vol is None:
                return 404, {"error": f"no volume {doc.get('volume')!r}"}
            if "hosts" in doc:
                hosts = [str(h) for h in doc["hosts"]]
            else:
                hosts = [f"host-{i + 1}" for i in range(int(doc.get("count", 0)))]
            vol["hosts"] = hosts
            vol["connection_count"] = len(hosts)
            return 200, {"array": state_of(arr)}
        if path == "/_double/files":
            vol = arr.volumes.get(doc.get("volume"))
            if vol is None:
                return 404, {"error": f"no volume {doc.get('volume')!r}"}
            if method == "POST":
                files = doc.get("files") or {}
                if not isinstance(files, dict):
                    return 400, {"error": "files: expected an object {path: content}"}
                vol["files"] = {str(k): v for k, v in files.items()}
                return 200, {"files": vol["files"]}
            if method == "GET":
                return 200, {"files": dict(vol.get("files") or {})}
        if path == "/_double/config" and method == "POST":
            if "versions" in doc:
                arr.versions = list(doc["versions"])
            if "transfer_step" in doc:
                w.transfer_step = float(doc["transfer_step"])
            if "max_page_size" in doc:
                w.max_page_size = int(doc["max_page_size"])
            return 200, {"versions": arr.versions, "transfer_step": w.transfer_step}
        return 404, {"error": f"no control endpoint {method} {path}"}

    # -- the API --

    def _api(self, method, path, query, pairs, body):
        """Returns (status, headers, body)."""
        w = self.world
        arr = w.arrays[self.array_name]
        headers = {k.lower(): v for k, v in self.headers.items()}
        counts = arr.counters["requests"]
        key = f"{method} {path}"
        counts[key] = counts.get(key, 0) + 1

        # Which spec path does this request use?
        if path == "/api/api_version":
            spec_path, rel, version = path, "/api_version", None
        else:
            m = API_PREFIX.match(path)
            if not m:
                w.violation(arr.name, method, path, "path is not an /api/... path of the spec")
                return self._error(404, "Not found.", None, None, None, path)
            version, rel = m.group(1), m.group(2)
            spec_path = f"/api/{SPEC_VERSION}{rel}"
            if version not in arr.versions or not version.startswith("2."):
                rule = f"API version {version} is not offered by this array ({arr.name})"
                w.violation(arr.name, method, path, rule)
                return self._error(404, rule, None, None, None, path)
        op = w.spec.operation(spec_path, method)
        if op is None:
            rule = f"{method} {spec_path} is not an operation of the spec"
            w.violation(arr.name, method, path, rule)
            return self._error(404 if spec_path not in w.spec.doc["paths"] else 405, rule, None, None, None, path)

        # Faults first: the array is throttling or unavailable before it looks at anything.
        for f in w.faults:
            if f["count"] <= 0:
                continue
            if f["array"] and f["array"] != arr.name:
                continue
            if f["method"] and f["method"] != method:
                continue
            if f["path"] not in ("*", rel, path):
                continue
            f["count"] -= 1
            extra = {}
            if f["retry_after"] is not None:
                extra["Retry-After"] = str(f["retry_after"])
            msg = {
                401: "Authentication failed.",
                403: "Permission denied.",
                429: "Too many requests.",
                503: "The system is temporarily unavailable.",
            }.get(f["status"], "Injected fault.")
            req = w.spec.request(method, spec_path, query, headers, body or None)
            return self._error(f["status"], msg, None, req, op, path, extra)

        # Validate the request against the spec.
        body_json = None
        if body:
            try:
                body_json = json.loads(body)
            except ValueError:
                w.violation(arr.name, method, path, "request body is not JSON")
                return self._error(400, "Request body is not valid JSON.", None, None, None, path)
        req = w.spec.request(method, spec_path, query, headers, body or None)
        if len(pairs) != len(query):
            errors = ["a query parameter is repeated (the spec uses comma-separated lists)"]
        else:
            errors = []
        errors += w.spec.request_errors(req, op, query, body_json)
        if errors:
            for e in errors:
                w.violation(arr.name, method, path, e)
            return self._error(400, "Request does not match the API spec: " + "; ".join(errors), None, req, op, path)

        # Authentication.
        if rel not in ("/api_version", "/login"):
            token = headers.get("x-auth-token")
            if not token or token not in arr.sessions:
                return self._error(401, "Invalid or expired session token.", None, req, op, path)

        try:
            status, out, extra = self._dispatch(arr, method, rel, query, headers, body_json)
        except ApiError as e:
            if e.violation:
                w.violation(arr.name, method, path, e.message)
            return self._error(e.status, e.message, e.context, req, op, path)
        data = b"" if out is None else json.dumps(out).encode()
        resp_headers = {"Content-Type": "application/json"} if out is not None else {}
        resp_headers.update(extra)
        for err in w.spec.response_errors(req, op, status, resp_headers, data):
            w.violation(arr.name, method, path, f"double's own response: {err}")
        return status, extra, out

    def _error(self, status, message, context, req, op, path, extra=None):
        err = {"message": message}
        if context is not None:
            err["context"] = context
        out = {"errors": [err]}
        if op is not None and req is not None:
            for e in self.world.spec.response_errors(req, op, status, {}, json.dumps(out).encode()):
                self.world.violation(self.array_name, "?", path, f"double's own error response: {e}")
        return status, dict(extra or {}), out

    def _dispatch(self, arr: Array, method, rel, query, headers, body):
        w = self.world
        if rel == "/api_version" and method == "GET":
            return 200, {"version": arr.versions}, {}
        if rel == "/login" and method == "POST":
            if headers.get("api-token") != w.api_token:
                arr.counters["failed_logins"] += 1
                raise ApiError(401, "Invalid API token.")
            tok = new_id()
            arr.sessions[tok] = "pureuser"
            arr.counters["logins"] += 1
            return 200, {"items": [{"username": "pureuser"}]}, {"x-auth-token": tok}
        if rel == "/logout" and method == "POST":
            tok = headers.get("x-auth-token")
            if tok in arr.sessions:
                del arr.sessions[tok]
                arr.counters["logouts"] += 1
            return 200, None, {}
        if rel == "/volumes" and method == "GET":
            return self._list(arr, query, arr.volumes, "Volume", render_volume, sources=None)
        if rel == "/volumes" and method == "POST":
            return self._post_volume(arr, query, body)
        if rel == "/volumes" and method == "PATCH":
            return self._patch_volume(arr, query, body)
        if rel == "/volume-snapshots" and method == "GET":
            return self._list(arr, query, arr.vsnaps, "Snapshot", render_vsnap, sources=arr.volumes)
        if rel == "/volume-snapshots" and method == "POST":
            return self._post_vsnap(arr, query, body)
        if rel == "/volume-snapshots" and method == "PATCH":
            return self._patch_vsnap(arr, query, body)
        if rel == "/protection-group-snapshots" and method == "GET":
            return self._list(arr, query, arr.pgsnaps, "Protection group snapshot", render_pgsnap, sources=arr.pgroups)
        if rel == "/protection-group-snapshots" and method == "POST":
            return self._post_pgsnap(arr, query, body)
        if rel == "/protection-group-snapshots/transfer" and method == "GET":
            return self._list(arr, query, arr.pgsnaps, "Protection group snapshot", self._render_transfer(arr), sources=arr.pgroups)
        if rel == "/volumes/tags" and method == "GET":
            return self._list_tags(arr, query, arr.volumes, arr.volume_tags, "Volume")
        if rel == "/volumes/tags/batch" and method == "PUT":
            return self._put_tags(arr, query, body, arr.volumes, arr.volume_tags, "Volume")
        if rel == "/protection-groups/tags" and method == "GET":
            return self._list_tags(arr, query, arr.pgroups, arr.pgroup_tags, "Protection group")
        if rel == "/protection-groups/volumes" and method == "GET":
            return self._pgroup_members(arr, query)
        if rel == "/connections" and method == "GET":
            return self._connections(arr, query)
        raise ApiError(501, f"The double does not implement {method} {rel}.", violation=True)

    # -- tags and protection group membership --

    def _resources(self, query, table: dict, kind: str) -> list[dict]:
        names = csv(query, "resource_names")
        if not names:
            raise ApiError(400, "resource_names is required by this double.", violation=True)
        out = []
        for n in names:
            obj = table.get(n)
            if obj is None:
                raise ApiError(400, f"{kind} does not exist.", context=n)
            out.append(obj)
        return out

    def _list_tags(self, arr, query, table, tags, kind):
        items = [t for obj in self._resources(query, table, kind) for t in tags.get(obj["name"], {}).values()]
        namespaces = csv(query, "namespaces")
        if namespaces is not None:
            items = [t for t in items if t["namespace"] in namespaces]
        return self._page(arr, query, [dict(t, resource=dict(t["resource"])) for t in items])

    def _put_tags(self, arr, query, body, table, tags, kind):
        if not isinstance(body, list) or not body:
            raise ApiError(400, "A list of tags is required.", violation=True)
        out = []
        for obj in self._resources(query, table, kind):
            for t in body:
                if not t.get("key"):
                    raise ApiError(400, "A tag needs a key.", context=obj["name"])
                out.append(put_tag(tags, obj, t))
        return 200, {"items": out}, {}

    def _pgroup_members(self, arr, query):
        members = csv(query, "member_names")
        if not members:
            raise ApiError(400, "member_names is required by this double.", violation=True)
        items = []
        for m in members:
            vol = arr.volumes.get(m)
            if vol is None:
                raise ApiError(400, "Volume does not exist.", context=m)
            for g in arr.pgroups.values():
                if m in g["volumes"]:
                    items.append({"group": {"id": g["id"], "name": g["name"]}, "member": {"id": vol["id"], "name": m}})
        return self._page(arr, query, items)

    def _connections(self, arr, query):
        """`GET /connections?volume_names=...`: the host connections of those volumes."""
        names = csv(query, "volume_names")
        if not names:
            raise ApiError(400, "volume_names is required by this double.", violation=True)
        for k in ("volume_ids", "host_names", "host_group_names", "protocol_endpoint_ids", "protocol_endpoint_names", "filter", "sort"):
            if query.get(k) is not None:
                raise ApiError(501, f"The double does not implement {k} on GET /connections.", violation=True)
        items = []
        for n in names:
            vol = arr.volumes.get(n)
            if vol is None or vol["destroyed"]:
                raise ApiError(400, "Volume does not exist.", context=n)
            for i, h in enumerate(vol.get("hosts") or []):
                items.append({"host": {"name": h}, "volume": {"id": vol["id"], "name": n}, "lun": i + 1})
        return self._page(arr, query, items)

    def _page(self, arr, query, items):
        w = self.world
        offset = int(query.get("offset") or 0)
        token = query.get("continuation_token")
        if token is not None:
            page = w.pages.pop(token, None)
            if page is None or page["array"] != arr.name:
                raise ApiError(400, "Invalid continuation token.", violation=True)
            offset = page["offset"]
        limit = query.get("limit")
        size = w.max_page_size if limit is None else min(int(limit), w.max_page_size)
        page_items = items[offset : offset + size] if size > 0 else []
        more = offset + len(page_items) < len(items)
        out = {"items": page_items, "more_items_remaining": more}
        extra = {}
        if more and size > 0:
            tok = new_id().replace("-", "")
            w.pages[tok] = {"array": arr.name, "offset": offset + len(page_items)}
            out["continuation_token"] = tok
            extra["x-next-token"] = tok
        return 200, out, extra

    # -- GET lists with names/ids/source_names/destroyed/filter/sort/limit/offset/paging --

    def _list(self, arr, query, table: dict, kind: str, render, sources):
        w = self.world
        if query.get("names") is not None and query.get("ids") is not None:
            raise ApiError(400, "names and ids cannot be used together.", violation=True)
        if query.get("source_names") is not None and query.get("source_ids") is not None:
            raise ApiError(400, "source_names and source_ids cannot be used together.", violation=True)
        if query.get("sort") is not None and query.get("continuation_token") is not None:
            raise ApiError(400, "continuation_token cannot be used with sort.", violation=True)
        destroyed = truthy(query, "destroyed")
        names = csv(query, "names")
        items = list(table.values())
        if names is not None:
            for n in names:
                obj = table.get(n)
                if obj is None or (destroyed is not None and obj["destroyed"] != destroyed):
                    raise ApiError(400, f"{kind} does not exist.", context=n)
            items = [table[n] for n in names]
        ids = csv(query, "ids")
        if ids is not None:
            by_id = {o["id"]: o for o in table.values()}
            for i in ids:
                if i not in by_id:
                    raise ApiError(400, f"{kind} does not exist.", context=i)
            items = [by_id[i] for i in ids]
        srcs = csv(query, "source_names")
        if srcs is not None:
            for s in srcs:
                if sources is None or s not in sources:
                    raise ApiError(400, "Source does not exist.", context=s)
            items = [o for o in items if o["source"]["name"] in srcs]
        if destroyed is not None:
            items = [o for o in items if o["destroyed"] == destroyed]
        rendered = [render(o) for o in items]
        if query.get("filter"):
            terms = parse_filter(query["filter"])
            rendered = [r for r in rendered if matches(r, terms)]
        sort = csv(query, "sort")
        token = query.get("continuation_token")
        if sort:
            rendered = sort_items(rendered, sort)
        offset = int(query.get("offset") or 0)
        if token is not None:
            page = w.pages.pop(token, None)
            if page is None or page["array"] != arr.name:
                raise ApiError(400, "Invalid continuation token.", violation=True)
            offset = page["offset"]
        limit = query.get("limit")
        size = w.max_page_size if limit is None else min(int(limit), w.max_page_size)
        total = len(rendered)
        page_items = rendered[offset : offset + size] if size > 0 else []
        more = offset + len(page_items) < total
        out = {"items": page_items, "more_items_remaining": more}
        if truthy(query, "total_item_count"):
            out["total_item_count"] = total
        extra = {}
        if more and not sort and size > 0:
            tok = new_id().replace("-", "")
            w.pages[tok] = {"array": arr.name, "offset": offset + len(page_items)}
            out["continuation_token"] = tok
            extra["x-next-token"] = tok
        return 200, out, extra

    def _render_transfer(self, arr):
        w = self.world

        def render(pgsnap):
            rec = arr.transfers.get(pgsnap["name"])
            out = {"id": pgsnap["id"], "name": pgsnap["name"], "destroyed": pgsnap["destroyed"]}
            if rec is None:
                return out
            # Each look at a running transfer moves it on by one step.
            if rec.get("completed") is None:
                rec["progress"] = min(1.0, round(rec["progress"] + w.transfer_step, 4))
                rec["data_transferred"] = int(rec["bytes"] * rec["progress"])
                if rec["progress"] >= 1.0:
                    rec["completed"] = arr.tick()
                    for target in rec["targets"]:
                        materialise_replica(w, rec, target)
            out.update(
                progress=rec["progress"],
                started=rec["started"],
                data_transferred=rec["data_transferred"],
                physical_bytes_written=rec["data_transferred"],
            )
            if rec.get("completed") is not None:
                out["completed"] = rec["completed"]
            return out

        return render

    # -- POSTs --

    def _patch_volume(self, arr, query, body):
        """Destroy (or recover) volumes: {"destroyed": bool}; nothing else is implemented."""
        names = csv(query, "names")
        if not names or query.get("ids") is not None:
            raise ApiError(400, "Exactly one of names or ids is required.", violation=True)
        body = body or {}
        if set(body) - {"destroyed"}:
            raise ApiError(501, f"The double implements only destroyed, not {sorted(set(body) - {'destroyed'})}.", violation=True)
        out = []
        for n in names:
            vol = arr.volumes.get(n)
            if vol is None:
                raise ApiError(400, "Volume does not exist.", context=n)
            if body.get("destroyed") and vol.get("connection_count", 0) > 0:
                raise ApiError(400, "Volume has host or host group connections.", context=n)
            if "destroyed" in body:
                vol["destroyed"] = bool(body["destroyed"])
            out.append(render_volume(vol))
        arr.counters["volume_patches"] = arr.counters.get("volume_patches", 0) + 1
        return 200, {"items": out}, {}

    def _patch_vsnap(self, arr, query, body):
        names = csv(query, "names")
        if not names:
            raise ApiError(400, "names is required.", violation=True)
        out = []
        for n in names:
            snap = arr.vsnaps.get(n)
            if snap is None:
                raise ApiError(400, "Snapshot does not exist.", n)
            if "destroyed" in (body or {}):
                snap["destroyed"] = bool(body["destroyed"])
            out.append(render_vsnap(snap))
        arr.counters["vsnap_patches"] = arr.counters.get("vsnap_patches", 0) + 1
        return 200, {"items": out}, {}

    def _post_vsnap(self, arr, query, body):
        srcs = csv(query, "source_names")
        if srcs is None or query.get("source_ids") is not None:
            raise ApiError(400, "Exactly one of source_names or source_ids is required.", violation=True)
        suffix = (body or {}).get("suffix")
        out = []
        for s in srcs:
            vol = arr.volumes.get(s)
            if vol is None or vol["destroyed"]:
                raise ApiError(400, "Volume does not exist.", context=s)
            if suffix is None:
                n = 1 + sum(1 for x in arr.vsnaps.values() if x["source"]["name"] == s)
                sfx = str(n)
            else:
                if not SUFFIX_RE.match(suffix) or suffix.isdigit():
                    raise ApiError(400, "Invalid suffix.", context=suffix)
                sfx = suffix
            name = f"{s}.{sfx}"
            if name in arr.vsnaps:
                raise ApiError(400, "Snapshot already exists.", context=name)
            out.append(render_vsnap(arr.add_vsnap(vol, sfx)))
        return 200, {"items": out}, {}

    def _post_volume(self, arr, query, body):
        names = csv(query, "names")
        if not names:
            raise ApiError(400, "The names query parameter is required.", violation=True)
        overwrite = truthy(query, "overwrite") is True
        if overwrite and (query.get("add_to_protection_group_names") or query.get("with_default_protection")):
            raise ApiError(
                400,
                "add_to_protection_group_names and with_default_protection cannot be used with overwrite.",
                violation=True,
            )
        body = body or {}
        src = body.get("source")
        out = []
        for n in names:
            if not VOLUME_RE.match(n) or not re.search(r"[A-Za-z_-]", n):
                raise ApiError(400, "Invalid volume name.", context=n)
            if src is not None:
                sname = src.get("name")
                if sname in arr.volumes and not arr.volumes[sname]["destroyed"]:
                    origin = arr.volumes[sname]
                elif sname in arr.vsnaps and not arr.vsnaps[sname]["destroyed"]:
                    origin = arr.vsnaps[sname]
                else:
                    raise ApiError(400, "Source does not exist.", context=sname)
                provisioned = origin["provisioned"]
                ref = {"id": origin["id"], "name": origin["name"]}
                files = dict(origin.get("files") or {})
            else:
                provisioned = int(body.get("provisioned") or (1 << 20))
                ref = None
                files = {}
            existing = arr.volumes.get(n)
            if existing is not None:
                if not overwrite or src is None:
                    raise ApiError(400, "Volume already exists.", context=n)
                existing["provisioned"] = provisioned
                existing["source"] = ref
                existing["files"] = files
                existing["overwritten"] = existing.get("overwritten", 0) + 1
                vol = existing
            else:
                vol = arr.add_volume(n, provisioned, source=ref, files=files)
            out.append(render_volume(vol))
        return 200, {"items": out}, {}

    def _post_pgsnap(self, arr, query, body):
        w = self.world
        srcs = csv(query, "source_names")
        if srcs is None or query.get("source_ids") is not None:
            raise ApiError(400, "Exactly one of source_names or source_ids is required.", violation=True)
        if query.get("replicate") is not None and query.get("replicate_now") is not None:
            raise ApiError(400, "replicate and replicate_now cannot be used together.", violation=True)
        replicate_now = truthy(query, "replicate_now") is True
        suffix = (body or {}).get("suffix")
        out = []
        for pg_name in srcs:
            pg = arr.pgroups.get(pg_name)
            if pg is None:
                raise ApiError(400, "Protection group does not exist.", context=pg_name)
            if suffix is None:
                sfx = str(1 + sum(1 for x in arr.pgsnaps.values() if x["source"]["name"] == pg_name))
            elif not SUFFIX_RE.match(suffix) or suffix.isdigit():
                raise ApiError(400, "Invalid suffix.", context=suffix)
            else:
                sfx = suffix
            name = f"{pg_name}.{sfx}"
            if name in arr.pgsnaps:
                raise ApiError(400, "Protection group snapshot already exists.", context=name)
            created = arr.tick()
            snap = {
                "id": new_id(),
                "name": name,
                "created": created,
                "destroyed": False,
                "source": {"id": pg["id"], "name": pg_name},
                "suffix": sfx,
            }
            arr.pgsnaps[name] = snap
            size = 0
            for v in pg["volumes"]:
                vol = arr.volumes[v]
                size += vol["provisioned"]
                arr.add_vsnap(vol, sfx, created=created, name=f"{name}.{v}")
            if replicate_now and pg["targets"]:
                rec = {
                    "source_array": arr.name,
                    "pgroup": pg_name,
                    "snapshot": name,
                    "suffix": sfx,
                    "created": created,
                    "volumes": [(v, arr.volumes[v]["provisioned"]) for v in pg["volumes"]],
                    # the content as snapshotted: what arrives on the target
                    "files": {v: dict(arr.volumes[v].get("files") or {}) for v in pg["volumes"]},
                    "targets": list(pg["targets"]),
                    "progress": 0.0,
                    "started": created,
                    "bytes": size,
                    "data_transferred": 0,
                }
                arr.transfers[name] = rec
                for t in pg["targets"]:
                    if t not in w.arrays:
                        raise ApiError(400, "Target does not exist.", context=t)
            out.append(render_pgsnap(snap))
        return 200, {"items": out}, {}


def materialise_replica(w: World, rec: dict, target: str):
    """A completed transfer: the snapshot appears on the target as `SOURCE:PG.SUFFIX`, its volume
    snapshots as `SOURCE:PG.SUFFIX.VOL`, in the replica protection group `SOURCE:PG`."""
    t = w.arrays[target]
    rpg = f"{rec['source_array']}:{rec['pgroup']}"
    if rpg not in t.pgroups:
        t.pgroups[rpg] = {"id": new_id(), "name": rpg, "volumes": [], "targets": []}
    name = f"{rpg}.{rec['suffix']}"
    if name in t.pgsnaps:
        return
    t.pgsnaps[name] = {
        "id": new_id(),
        "name": name,
        "created": rec["created"],
        "destroyed": False,
        "source": {"id": t.pgroups[rpg]["id"], "name": rpg},
        "suffix": rec["suffix"],
    }
    t.transfers[name] = rec
    for vname, prov in rec["volumes"]:
        replica_vol = {
            "id": new_id(),
            "name": f"{rec['source_array']}:{vname}",
            "provisioned": prov,
            "files": (rec.get("files") or {}).get(vname, {}),
        }
        t.add_vsnap(replica_vol, rec["suffix"], created=rec["created"], name=f"{name}.{vname}")


def put_tag(tags: dict, obj: dict, t: dict) -> dict:
    """Creates or updates one tag of `obj` (a volume or protection group); returns it."""
    ns = t.get("namespace") or "default"
    tag = {
        "key": t["key"],
        "value": t.get("value", ""),
        "namespace": ns,
        "copyable": t.get("copyable", True),
        "resource": {"id": obj["id"], "name": obj["name"]},
    }
    tags.setdefault(obj["name"], {})[(ns, t["key"])] = tag
    return tag


def render_volume(v: dict) -> dict:
    out = {k: v[k] for k in ("id", "name", "serial", "created", "destroyed", "provisioned", "subtype")}
    out["connection_count"] = v.get("connection_count", 0)
    if v.get("source"):
        out["source"] = dict(v["source"])
    return out


def render_vsnap(s: dict) -> dict:
    return {
        k: (dict(s[k]) if isinstance(s[k], dict) else s[k])
        for k in ("id", "name", "serial", "created", "destroyed", "provisioned", "source", "suffix")
    }


def render_pgsnap(s: dict) -> dict:
    return {
        k: (dict(s[k]) if isinstance(s[k], dict) else s[k])
        for k in ("id", "name", "created", "destroyed", "source", "suffix")
    }


def state_of(a: Array) -> dict:
    return {
        "versions": a.versions,
        "volumes": {n: render_volume(v) | {"overwritten": v.get("overwritten", 0)} for n, v in a.volumes.items()},
        "volume_snapshots": sorted(a.vsnaps),
        "destroyed_volumes": sorted(n for n, v in a.volumes.items() if v.get("destroyed")),
        "destroyed_volume_snapshots": sorted(n for n, s in a.vsnaps.items() if s.get("destroyed")),
        "protection_groups": {n: {"volumes": g["volumes"], "targets": g["targets"]} for n, g in a.pgroups.items()},
        "volume_tags": {n: {f"{ns}/{k}": t["value"] for (ns, k), t in tags.items()} for n, tags in a.volume_tags.items()},
        "protection_group_snapshots": sorted(a.pgsnaps),
        "transfers": {
            n: {"progress": r["progress"], "completed": r.get("completed")} for n, r in a.transfers.items()
        },
        "sessions": len(a.sessions),
        "logins": a.counters["logins"],
        "logouts": a.counters["logouts"],
        "failed_logins": a.counters["failed_logins"],
        "requests": a.counters["requests"],
    }


# --------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--array", action="append", default=[], help="NAME=PORT (port 0: any free port)")
    ap.add_argument("--api-token", default=os.environ.get("FLASHARRAY_DOUBLE_API_TOKEN", "snapstage-test-api-token"))
    ap.add_argument("--spec", default=os.environ.get("FLASHARRAY_SPEC", str(DEFAULT_SPEC)))
    ap.add_argument(
        "--exit-with-stdin",
        action="store_true",
        help="exit when stdin closes (a test harness that dies takes the double with it)",
    )
    args = ap.parse_args()
    arrays = args.array or ["fa-onprem=0"]

    world = World(Spec(Path(args.spec)), args.api_token)
    servers = {}
    for a in arrays:
        name, _, port = a.partition("=")
        world.arrays[name] = Array(name)
        handler = type(f"Handler_{name}", (Handler,), {"world": world, "array_name": name})
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", int(port or 0)), handler)
        srv.daemon_threads = True
        servers[name] = srv
    for srv in servers.values():
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    print(json.dumps({"arrays": {n: s.server_address[1] for n, s in servers.items()}}), flush=True)
    try:
        if args.exit_with_stdin:
            while sys.stdin.read(1):
                pass
        else:
            threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        for srv in servers.values():
            srv.shutdown()


if __name__ == "__main__":
    main()
