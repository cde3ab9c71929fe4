"""A minimal local AWS Lambda Runtime API (stdlib only) for measuring cold starts.

It speaks the part of the Runtime API a runtime uses for invocations
(https://docs.aws.amazon.com/lambda/latest/dg/runtimes-api.html):

  GET  /2018-06-01/runtime/invocation/next               -> the next event
  POST /2018-06-01/runtime/invocation/{id}/response      -> 202
  POST /2018-06-01/runtime/invocation/{id}/error         -> 202
  POST /2018-06-01/runtime/init/error                    -> 202

One server is one *run* (one process): `arm()` starts a server on a fresh port with a list of
events; each GET /next serves the next one and records the monotonic time (time.monotonic(), the
same clock the driver reads before it execs the process) at which the request arrived, at which
the event was sent and at which the answer came back. When the events are used up, /next blocks
until the run is finished (the driver then kills the process), as a real Runtime API does between
invocations. A fresh port per run means a request a killed process left in flight can never take
the next run's event.

Listens on 127.0.0.1 only.

Standalone (to try a binary by hand):
  python3 bench/runtime_api.py --port 9001 --event events/direct/deploy-staging-db.json
  AWS_LAMBDA_RUNTIME_API=127.0.0.1:9001 ... target/release/deploy-staging-db
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PREFIX = "/2018-06-01/runtime"


@dataclass
class Invocation:
    request_id: str
    event: object  # bytes, or a callable(Run) -> bytes
    next_arrived: float | None = None  # GET /next arrived
    sent: float | None = None  # event written
    answered: float | None = None  # POST response/error arrived
    outcome: str | None = None  # "response" | "error"
    body: bytes = b""


@dataclass
class Run:
    name: str
    invocations: list[Invocation]
    served: int = 0
    init_error: bytes | None = None
    first_next: float | None = None
    address: str = ""
    done: threading.Event = field(default_factory=threading.Event)
    all_answered: threading.Event = field(default_factory=threading.Event)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # a killed client is normal here
        pass


def _handler(run: Run, deadline_ms: int) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_args) -> None:  # quiet
            pass

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    line = self.rfile.readline().strip()
                    size = int(line.split(b";")[0] or b"0", 16)
                    if size == 0:
                        while self.rfile.readline().strip():  # trailers
                            pass
                        break
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                return b"".join(chunks)
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def _reply(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body:
                self.wfile.write(body)
            self.wfile.flush()

        def do_GET(self) -> None:  # noqa: N802
            now = time.monotonic()
            if self.path != f"{PREFIX}/invocation/next":
                self._reply(404, b'{"errorMessage":"not found"}')
                return
            with run._lock:
                if run.first_next is None:
                    run.first_next = now
                inv = None
                if run.served < len(run.invocations):
                    inv = run.invocations[run.served]
                    inv.next_arrived = now
                    run.served += 1
            if inv is None:
                # Nothing more to serve: hold the request like a frozen sandbox.
                run.done.wait(120)
                self._reply(503, b'{"errorMessage":"no more events"}')
                return
            event = inv.event(run) if callable(inv.event) else inv.event
            headers = {
                "Lambda-Runtime-Aws-Request-Id": inv.request_id,
                "Lambda-Runtime-Deadline-Ms": str(int(time.time() * 1000) + deadline_ms),
                "Lambda-Runtime-Invoked-Function-Arn": (
                    f"arn:aws:lambda:us-east-1:123456789012:function:{run.name}"
                ),
                "Lambda-Runtime-Trace-Id": "Root=1-00000000-000000000000000000000000;Sampled=0",
            }
            inv.sent = time.monotonic()
            self._reply(200, event, headers)

        def do_POST(self) -> None:  # noqa: N802
            body = self._read_body()
            now = time.monotonic()
            parts = self.path[len(PREFIX) :].strip("/").split("/")
            with run._lock:
                if parts == ["init", "error"]:
                    run.init_error = body
                    run.all_answered.set()
                elif len(parts) == 3 and parts[0] == "invocation" and parts[2] in ("response", "error"):
                    for inv in run.invocations:
                        if inv.request_id == parts[1] and inv.answered is None:
                            inv.answered = now
                            inv.outcome = parts[2]
                            inv.body = body
                    if all(inv.answered is not None for inv in run.invocations):
                        run.all_answered.set()
            self._reply(202, b'{"status":"OK"}')

    return Handler


class RuntimeAPI:
    """Runs a Runtime API per run, each on its own 127.0.0.1 port."""

    def __init__(self, deadline_ms: int = 900_000, port: int = 0):
        self.deadline_ms = deadline_ms
        self.port = port
        self._current: Run | None = None

    def start(self) -> "RuntimeAPI":
        return self

    def arm(self, name: str, events: list) -> Run:
        """Starts the server of a new run (the previous one is finished). An event is bytes, or a
        callable taking the Run and returning bytes (built when it is served, e.g. from an
        earlier answer)."""
        if self._current is not None:
            self.finish(self._current)
        run = Run(name, [Invocation(str(uuid.uuid4()), e) for e in events])
        server = _QuietServer(("127.0.0.1", self.port), _handler(run, self.deadline_ms))
        run._server = server
        host, port = server.server_address[:2]
        run.address = f"{host}:{port}"
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._current = run
        return run

    def finish(self, run: Run) -> None:
        run.done.set()
        if run._server is not None:
            run._server.shutdown()
            run._server.server_close()
            run._server = None
        if self._current is run:
            self._current = None

    def stop(self) -> None:
        if self._current is not None:
            self.finish(self._current)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=9001)
    ap.add_argument("--event", required=True, help="JSON file served as every event")
    ap.add_argument("--count", type=int, default=1, help="events to serve")
    a = ap.parse_args()
    with open(a.event, "rb") as f:
        event = f.read()
    api = RuntimeAPI(port=a.port)
    run = api.arm("local", [event] * a.count)
    print(f"Runtime API on {run.address}; waiting for {a.count} answer(s)", flush=True)
    try:
        while not run.all_answered.wait(1):
            pass
        for inv in run.invocations:
            took = (inv.answered or 0) - (inv.sent or 0)
            print(json.dumps({"requestId": inv.request_id, "outcome": inv.outcome, "ms": round(took * 1000, 2),
                              "body": inv.body.decode("utf-8", "replace")[:2000]}))
        if run.init_error:
            print("init error:", run.init_error.decode("utf-8", "replace"))
    finally:
        api.stop()


if __name__ == "__main__":
    main()
