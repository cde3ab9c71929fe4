#!/usr/bin/env python3
"""make bench: snapstage's release binaries measured side by side with their peers.

Figures, not tests: nothing here asserts a time. Every comparison runs A B A B in the same run and
reports medians (p50), p95 and the ratio. See bench/README.md for the method.

  bench/out/venv/bin/python bench/bench.py --bin-dir target/release [--s3s-fs PATH]

Starts (and stops) on 127.0.0.1 only: a local Lambda Runtime API (bench/runtime_api.py), two moto
servers (EC2/S3 for the dry runs), two s3s-fs servers (throughput). Writes bench/results.md.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import json
import math
import multiprocessing
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
from botocore.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runtime_api import RuntimeAPI  # noqa: E402

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
FUNCTIONS = ["snapshot-production", "restore-to-staging", "deploy-staging-db", "replicate-artifacts-back",
             "roll-out-release"]
# roll-out-release plans a release (dryRun) of this moto group; only this group is allowed.
BENCH_GROUP = "bench-web"
PYTHON_PEER = "python-peer"
MiB = 1024 * 1024
GiB = 1024 * MiB


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# statistics


def p50(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def p95(xs: list[float]) -> float:
    """Nearest rank."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[max(0, math.ceil(0.95 * len(s)) - 1)]


def fmt(x: float, digits: int = 1) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.{digits}f}"


# ---------------------------------------------------------------------------------------------
# processes


class Services:
    """The servers this run started; stopped (by pid) in reverse order, always."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], env: dict, logfile: Path, ready_url: str) -> subprocess.Popen:
        out = open(logfile, "ab")
        p = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs.append((name, p))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited ({p.returncode}); see {logfile}")
            try:
                urllib.request.urlopen(ready_url, timeout=1).close()
                return p
            except urllib.error.HTTPError:
                return p  # it answers (403/404 without credentials is an answer)
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{name} did not answer on {ready_url} within 60 s; see {logfile}")

    def stop(self, name: str) -> None:
        for i, (n, p) in enumerate(self.procs):
            if n == name:
                self._stop(n, p)
                del self.procs[i]
                return

    @staticmethod
    def _stop(name: str, p: subprocess.Popen) -> None:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        log(f"stopped {name} (pid {p.pid})")

    def stop_all(self) -> None:
        for name, p in reversed(self.procs):
            self._stop(name, p)
        self.procs.clear()


class Measured:
    """One measured child: exec time, exit time, peak RSS and CPU time (user + system, wait4).

    Peak RSS is the child's own VmHWM (/proc/PID/status), sampled every 20 ms while it runs and
    once more by `sample()`; VmHWM only grows, so the last reading is the peak up to then.
    (wait4's ru_maxrss is not used: Linux folds the RSS of the forking parent, this Python with
    boto3 loaded, into the child's ru_maxrss at exec.)"""

    def __init__(self, argv: list[str], env: dict, cwd: Path | None = None, stdout=None, stderr=None):
        self.t0 = time.monotonic()
        self.p = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=stdout if stdout is not None else subprocess.DEVNULL,
            stderr=stderr if stderr is not None else subprocess.DEVNULL,
        )
        self.exe = os.path.realpath(argv[0]) if os.path.sep in argv[0] else shutil.which(argv[0])
        self.t_exit: float | None = None
        self.status: int | None = None
        self.hwm_kib: int = 0
        self.cpu_s: float = 0.0
        self._reaped = threading.Event()
        threading.Thread(target=self._reap, daemon=True).start()
        threading.Thread(target=self._sampler, daemon=True).start()

    def _reap(self) -> None:
        _, status, ru = os.wait4(self.p.pid, 0)
        self.t_exit = time.monotonic()
        self.cpu_s = ru.ru_utime + ru.ru_stime
        self.status = os.waitstatus_to_exitcode(status)
        self.p.returncode = self.status
        self._reaped.set()

    def sample(self) -> None:
        pid = self.p.pid
        try:
            if self.exe and os.path.realpath(f"/proc/{pid}/exe") != os.path.realpath(self.exe):
                return  # not yet exec'ed: the forked copy of this process
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        self.hwm_kib = int(line.split()[1])
                        return
        except OSError:
            pass

    def _sampler(self) -> None:
        while not self._reaped.wait(0.02):
            self.sample()

    def wait(self, timeout: float) -> bool:
        return self._reaped.wait(timeout)

    @property
    def exited(self) -> bool:
        return self._reaped.is_set()

    def kill(self) -> None:
        if not self._reaped.is_set():
            try:
                os.kill(self.p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._reaped.wait(30)

    @property
    def wall_ms(self) -> float:
        return ((self.t_exit or time.monotonic()) - self.t0) * 1000


class Sequence:
    """Measured children run one after another, counted as one run (s5cmd's download then upload):
    wall and CPU added up, peak RSS the largest, exit status the first that is not 0."""

    def __init__(self, parts: list[Measured]):
        self.parts = parts
        self.wall_ms = sum(p.wall_ms for p in parts)
        self.cpu_s = sum(p.cpu_s for p in parts)
        self.hwm_kib = max((p.hwm_kib for p in parts), default=0)
        self.status = next((p.status for p in parts if p.status != 0), parts[-1].status if parts else None)


def run_measured(argv: list[str], env: dict, timeout: float, what: str, stdout=None, stderr=None) -> Measured:
    """One measured child, killed at its timeout (and said so)."""
    m = Measured(argv, env, stdout=stdout, stderr=stderr)
    if not m.wait(timeout):
        log(f"{what}: timed out after {timeout:.0f} s; killed")
        m.kill()
    return m


# ---------------------------------------------------------------------------------------------
# environment


def aws_env(home: Path, **extra: str) -> dict:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),  # no ~/.aws of the machine
        "LANG": "C.UTF-8",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    env.update(extra)
    return env


def lambda_env(home: Path, name: str, moto_cloud: str) -> dict:
    """AWS_LAMBDA_RUNTIME_API is set per run (each run has its own Runtime API port)."""
    return aws_env(
        home,
        AWS_ENDPOINT_URL=moto_cloud,
        AWS_LAMBDA_FUNCTION_NAME=name,
        AWS_LAMBDA_FUNCTION_VERSION="$LATEST",
        AWS_LAMBDA_FUNCTION_MEMORY_SIZE="128",
        AWS_LAMBDA_LOG_GROUP_NAME=f"/aws/lambda/{name}",
        AWS_LAMBDA_LOG_STREAM_NAME="bench",
        SNAPSTAGE_ROLLOUT_ALLOWED_GROUPS=BENCH_GROUP,
    )


def s3_client(endpoint: str, key: str, secret: str):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"max_attempts": 3},
        ),
    )


def machine() -> dict:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass

    def cmd(*a: str) -> str:
        try:
            return subprocess.run(a, capture_output=True, text=True, timeout=10, cwd=ROOT).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "?"

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "arch": platform.machine(),
        "rustc": cmd("rustc", "--version"),
        "python": platform.python_version(),
        "commit": cmd("git", "rev-parse", "--short", "HEAD"),
    }


# ---------------------------------------------------------------------------------------------
# 1. cold start


def seed_moto(cloud: str, onprem: str) -> dict:
    ec2 = boto3.client("ec2", endpoint_url=cloud, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    vol = ec2.create_volume(
        AvailabilityZone="us-east-1a", Size=20, VolumeType="gp3",
        TagSpecifications=[{"ResourceType": "volume", "Tags": [
            {"Key": "Name", "Value": "bench-db-prod"}, {"Key": "environment", "Value": "production"}]}],
    )["VolumeId"]
    snap = ec2.create_snapshot(VolumeId=vol, Description="bench")["SnapshotId"]
    s3c = boto3.client("s3", endpoint_url=cloud, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    s3c.create_bucket(Bucket="bench-dry-src")
    for i in range(20):
        s3c.put_object(Bucket="bench-dry-src", Key=f"nexus/blobs/content/{i:04d}.bytes", Body=os.urandom(1024))
    s3o = boto3.client("s3", endpoint_url=onprem, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    s3o.create_bucket(Bucket="bench-dry-dst")
    # deploy-staging-db's interlock reads the volume it imports (DescribeVolumes): one that is
    # not production, named by allowUnmanagedVolume in its event.
    staging = ec2.create_volume(AvailabilityZone="us-east-1a", Size=20, VolumeType="gp3")["VolumeId"]
    # roll-out-release: a group of 2 on a launch template, and a second image to release.
    images = sorted(i["ImageId"] for i in ec2.describe_images(Owners=["amazon"])["Images"])[:2]
    asg = boto3.client("autoscaling", endpoint_url=cloud, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    lt = ec2.create_launch_template(LaunchTemplateName="bench-web-lt",
                                    LaunchTemplateData={"ImageId": images[0], "InstanceType": "t3.micro"})
    asg.create_auto_scaling_group(
        AutoScalingGroupName=BENCH_GROUP, MinSize=2, MaxSize=2, DesiredCapacity=2,
        AvailabilityZones=["us-east-1a"],
        LaunchTemplate={"LaunchTemplateId": lt["LaunchTemplate"]["LaunchTemplateId"], "Version": "1"})
    return {"volume": vol, "snapshot": snap, "staging_volume": staging, "release_image": images[1]}


def cold_events(seed: dict, onprem: str) -> dict[str, bytes]:
    deploy = json.loads((ROOT / "events/direct/deploy-staging-db.json").read_text())
    deploy.pop("executionId", None)
    deploy["volumeId"] = deploy["allowUnmanagedVolume"] = seed["staging_volume"]
    ev = {
        "snapshot-production": {"volumeIds": [seed["volume"]], "dryRun": True},
        "restore-to-staging": {"snapshotId": seed["snapshot"], "availabilityZone": "us-east-1a", "dryRun": True},
        "deploy-staging-db": deploy,
        "replicate-artifacts-back": {
            "sourceBucket": "bench-dry-src", "sourcePrefix": "nexus/blobs/",
            "destinationBucket": "bench-dry-dst", "destinationEndpoint": onprem, "dryRun": True,
        },
        "roll-out-release": {"autoScalingGroupName": BENCH_GROUP, "imageId": seed["release_image"], "dryRun": True},
        PYTHON_PEER: {"volumeIds": [seed["volume"]]},
    }
    return {k: json.dumps(v).encode() for k, v in ev.items()}


def succeeded(body: bytes) -> bool:
    try:
        return json.loads(body).get("status") == "Succeeded"
    except (ValueError, AttributeError):
        return False


def one_cold_start(api: RuntimeAPI, subject: str, argv: list[str], env: dict, cwd: Path | None,
                   events: list, errlog, timeout: float = 60) -> dict:
    run = api.arm(subject, events)
    m = Measured(argv, {**env, "AWS_LAMBDA_RUNTIME_API": run.address}, cwd=cwd, stderr=errlog)
    deadline = time.monotonic() + timeout
    try:
        while not run.all_answered.wait(0.02) and not m.exited and time.monotonic() < deadline:
            pass
    finally:
        m.sample()  # the high-water mark up to the answer, read before the kill
        m.kill()
        api.finish(run)
    invs = run.invocations
    res = {
        "first_next_ms": (run.first_next - m.t0) * 1000 if run.first_next else None,
        "first_response_ms": (invs[0].answered - m.t0) * 1000 if invs[0].answered else None,
        "handler_ms": [((i.answered - i.sent) * 1000) if i.answered and i.sent else None for i in invs],
        "ok": [i.outcome == "response" and succeeded(i.body) for i in invs],
        "bodies": [i.body for i in invs],
        "rss_mib": m.hwm_kib / 1024,
        "init_error": run.init_error,
    }
    return res


def bench_cold_start(args, api: RuntimeAPI, home: Path, moto_cloud: str, events: dict[str, bytes],
                     venv_python: str, out: Path) -> dict:
    subjects = {f: ([str(Path(args.bin_dir) / f)], None) for f in FUNCTIONS}
    subjects[PYTHON_PEER] = ([venv_python, "-m", "awslambdaric", "peer_handler.handler"], BENCH)
    envs = {}
    for s in subjects:
        e = lambda_env(home, s, moto_cloud)
        if s == PYTHON_PEER:
            e.update(PYTHONPATH=str(BENCH), LAMBDA_TASK_ROOT=str(BENCH), PYTHONDONTWRITEBYTECODE="1")
        envs[s] = e
    names = list(subjects)
    samples: dict[str, list[dict]] = {s: [] for s in names}
    with open(out / "cold-start.stderr.log", "ab") as errlog:
        log(f"cold start: one warm-up run each (not counted), then {args.runs} rounds of {len(names)}, interleaved")
        for s in names:
            r = one_cold_start(api, s, subjects[s][0], envs[s], subjects[s][1], [events[s]], errlog)
            if not r["ok"][0]:
                body = r["bodies"][0].decode("utf-8", "replace")[:400]
                log(f"WARNING: warm-up of {s} did not succeed: {body or r['init_error']}")
        for i in range(args.runs):
            order = names[i % len(names):] + names[: i % len(names)]  # rotate who goes first
            for s in order:
                samples[s].append(one_cold_start(api, s, subjects[s][0], envs[s], subjects[s][1], [events[s]], errlog))
    result = {}
    for s in names:
        xs = samples[s]
        result[s] = {
            "n": len(xs),
            "ok": sum(1 for x in xs if x["ok"][0]),
            "next": [x["first_next_ms"] for x in xs if x["first_next_ms"] is not None],
            "resp": [x["first_response_ms"] for x in xs if x["first_response_ms"] is not None],
            "rss": [x["rss_mib"] for x in xs],
        }
    return result


# ---------------------------------------------------------------------------------------------
# 2. package size


def bench_sizes(args, out: Path) -> dict:
    zips = out / "zips"
    zips.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for f in FUNCTIONS:
        binary = Path(args.bin_dir) / f
        z = zips / f"{f}.zip"
        info = zipfile.ZipInfo("bootstrap", date_time=(2020, 1, 1, 0, 0, 0))
        info.external_attr = (0o100755 & 0xFFFF) << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        with zipfile.ZipFile(z, "w") as zf:
            zf.writestr(info, binary.read_bytes(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=6)
        sizes[f] = {"binary": binary.stat().st_size, "zip": z.stat().st_size}
        # The Lambda artifact itself, when `make package` has built it (arm64, cargo lambda).
        target = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")
        arm = target / "lambda" / f / "bootstrap.zip"
        if arm.is_file():
            built = arm.stat().st_mtime
            sizes[f]["arm64_zip"] = arm.stat().st_size
            sizes[f]["arm64_built"] = datetime.datetime.fromtimestamp(built, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
            sizes[f]["arm64_stale"] = built < head_commit_time()
    return sizes


def head_commit_time() -> float:
    try:
        return float(subprocess.run(["git", "log", "-1", "--format=%ct"], cwd=ROOT, capture_output=True,
                                    text=True, check=True).stdout.strip())
    except (OSError, ValueError, subprocess.CalledProcessError):
        return float("inf")


# ---------------------------------------------------------------------------------------------
# 3. control-plane cost of a long wait


def resume_token(execution: str, snapshot_ids: list[str]) -> str:
    body = json.dumps({"f": "snapshot-production", "e": execution, "n": 0, "s": {"ids": snapshot_ids}},
                      separators=(",", ":")).encode()
    return "ss1." + base64.urlsafe_b64encode(body).rstrip(b"=").decode()


def bench_polling(args, api: RuntimeAPI, home: Path, moto_cloud: str, seed: dict, out: Path) -> dict:
    """Invocation 1 (cold) snapshots; invocations 2..11 in the same sandbox (warm) resume with a token
    whose snapshot is being waited for: one DescribeSnapshots each. Then fresh sandboxes (cold)
    answering one resume each."""
    binary = [str(Path(args.bin_dir) / "snapshot-production")]
    env = lambda_env(home, "snapshot-production", moto_cloud)
    execution = f"bench-poll-{int(time.time())}"
    create = {"volumeIds": [seed["volume"]], "executionId": execution}
    polls = args.polls
    with open(out / "polling.stderr.log", "ab") as errlog:
        first = one_cold_start(api, "snapshot-production", binary, env, None, [json.dumps(create).encode()], errlog)
        if not first["ok"][0]:
            raise RuntimeError(f"snapshot-production did not succeed: {first['bodies'][0][:400]!r}")
        snap = json.loads(first["bodies"][0])["outputVariables"]["SnapshotId"]
        resume = json.dumps({**create, "continuationToken": resume_token(execution, [snap])}).encode()
        warm = one_cold_start(api, "snapshot-production", binary, env, None,
                              [json.dumps(create).encode()] + [resume] * polls, errlog)
        colds = [one_cold_start(api, "snapshot-production", binary, env, None, [resume], errlog)
                 for _ in range(polls)]
    ok = all(warm["ok"]) and all(c["ok"][0] for c in colds)
    return {
        "snapshot": snap,
        "create_cold_ms": first["first_response_ms"],
        "create_warm_sandbox_cold_ms": warm["first_response_ms"],
        "resume_warm_ms": [x for x in warm["handler_ms"][1:] if x is not None],
        "resume_cold_ms": [c["first_response_ms"] for c in colds if c["first_response_ms"] is not None],
        "rss_mib": warm["rss_mib"],
        "ok": ok,
        "summary": json.loads(warm["bodies"][-1]).get("summary", "") if warm["bodies"][-1] else "",
    }


# ---------------------------------------------------------------------------------------------
# 4. replication throughput


S3_KEY, S3_SECRET = "benchaccesskey", "benchsecretkey"
DATA_BUCKET, DATA_PREFIX = "bench-artifacts", "nexus/blobs/"


def dataset(count: int, total: int, seed: int = 7) -> list[tuple[str, int]]:
    """count objects, exactly total bytes: 80% small (512 B-64 KiB), 18% medium (64 KiB-4 MiB),
    2% large (the remainder, shared, each <= 64 MiB)."""
    rnd = random.Random(seed)
    n_small, n_medium = int(count * 0.80), int(count * 0.18)
    n_large = count - n_small - n_medium
    logu = lambda lo, hi: int(math.exp(rnd.uniform(math.log(lo), math.log(hi))))  # noqa: E731
    sizes = [logu(512, 64 * 1024) for _ in range(n_small)] + [logu(64 * 1024, 4 * MiB) for _ in range(n_medium)]
    rest = total - sum(sizes)
    if n_large <= 0 or rest < n_large or rest > n_large * 64 * MiB:
        raise ValueError(f"cannot make {count} objects of {total} bytes with large objects <= 64 MiB")
    base = rest // n_large
    sizes += [base + (1 if i < rest - base * n_large else 0) for i in range(n_large)]
    rnd.shuffle(sizes)
    objs = []
    for i, s in enumerate(sizes):
        vol, chap = i % 43, i % 47
        ext = ".properties" if s < 2048 else ".bytes"
        objs.append((f"{DATA_PREFIX}content/vol-{vol:02d}/chap-{chap:02d}/{i:08x}-bench{ext}", s))
    return objs


def listing(s3, bucket: str, prefix: str = "") -> tuple[int, int, set[str]]:
    n = b = 0
    keys = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            n += 1
            b += o["Size"]
            keys.add(o["Key"])
    return n, b, keys


def ensure_dataset(s3, objs: list[tuple[str, int]]) -> float:
    want = (len(objs), sum(s for _, s in objs), {k for k, _ in objs})
    try:
        have = listing(s3, DATA_BUCKET, DATA_PREFIX)
        if have == want:
            log(f"data set present: {want[0]} objects, {want[1] / MiB:.0f} MiB")
            return 0.0
    except s3.exceptions.NoSuchBucket:
        pass
    except Exception as e:  # noqa: BLE001 - any listing failure: (re)create
        log(f"listing the data set failed ({e}); creating it")
    else:
        # Keys of another data set (a smaller run's) left under the prefix: removed, not counted.
        extra = sorted(have[2] - want[2])
        for i in range(0, len(extra), 1000):
            s3.delete_objects(Bucket=DATA_BUCKET, Delete={"Objects": [{"Key": k} for k in extra[i:i + 1000]]})
        if extra:
            log(f"removed {len(extra)} objects of another data set")
    t = time.monotonic()
    try:
        s3.create_bucket(Bucket=DATA_BUCKET)
    except Exception:  # noqa: BLE001 - already there
        pass
    log(f"creating the data set: {want[0]} objects, {want[1] / MiB:.0f} MiB (once)")

    def put(obj: tuple[str, int]) -> None:
        key, size = obj
        s3.put_object(Bucket=DATA_BUCKET, Key=key, Body=os.urandom(size))

    with ThreadPoolExecutor(4) as ex:
        list(ex.map(put, objs))
    have = listing(s3, DATA_BUCKET, DATA_PREFIX)
    if have != want:
        raise RuntimeError(f"data set incomplete after upload: {have[0]} objects, {have[1]} bytes")
    return time.monotonic() - t


def start_versitygw(services: Services, vgw: str, name: str, url: str, data: Path, out: Path) -> None:
    """versitygw on its POSIX backend over `data` (buckets are its directories)."""
    data.mkdir(parents=True, exist_ok=True)
    services.start(name, [vgw, "--access", S3_KEY, "--secret", S3_SECRET, "--port", url.removeprefix("http://"),
                          "--quiet", "posix", str(data)],
                   {"PATH": os.environ.get("PATH", "")}, out / f"{name}.log", url)


def executable(path: str | None) -> bool:
    return bool(path) and Path(path).is_file() and os.access(path, os.X_OK)


def rclone_env(home: Path, src_url: str, dst_url: str) -> dict:
    """rclone's two remotes (src:, dst:) from RCLONE_CONFIG_* variables: type s3, provider Other, path style."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "RCLONE_CONFIG": str(home / "no-rclone.conf")}
    for r, url in (("SRC", src_url), ("DST", dst_url)):
        env.update({
            f"RCLONE_CONFIG_{r}_TYPE": "s3", f"RCLONE_CONFIG_{r}_PROVIDER": "Other",
            f"RCLONE_CONFIG_{r}_ENDPOINT": url, f"RCLONE_CONFIG_{r}_REGION": "us-east-1",
            f"RCLONE_CONFIG_{r}_ACCESS_KEY_ID": S3_KEY, f"RCLONE_CONFIG_{r}_SECRET_ACCESS_KEY": S3_SECRET,
            f"RCLONE_CONFIG_{r}_FORCE_PATH_STYLE": "true",
        })
    env["RCLONE_CONFIG_DST_NO_CHECK_BUCKET"] = "true"
    return env


def s5cmd_module_version() -> str:
    """The s5cmd version pinned in tools/s5cmd/go.mod (what scripts/s5cmd.sh builds)."""
    for line in (ROOT / "tools/s5cmd/go.mod").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[:2] == ["require", "github.com/peak/s5cmd/v2"]:
            return parts[2]
    return "?"


def tool_version(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "?"


def bench_throughput(args, home: Path, services: Services, out: Path, venv: Path) -> dict:
    objs = dataset(args.objects, args.total_bytes)
    total = sum(s for _, s in objs)
    root = Path(args.data_dir)
    cloud_url, onprem_url = f"http://127.0.0.1:{args.port_base + 2}", f"http://127.0.0.1:{args.port_base + 3}"
    s3s = args.s3s_fs
    have_s3s = bool(s3s) and Path(s3s).is_file() and os.access(s3s, os.X_OK)
    # (label, LD_PRELOAD or None)
    if have_s3s:
        variants: list[tuple[str, str | None]] = [("s3s-fs", None)]
        shim = args.nodelay_shim
        if shim and Path(shim).is_file():
            variants.append(("s3s-fs + TCP_NODELAY", str(Path(shim).resolve())))
        else:
            log("note: no TCP_NODELAY shim (bench/out/nodelay.so); only the plain s3s-fs variant runs")
    else:
        variants = [("moto", None)]
        log("!" * 78)
        log("WARNING: s3s-fs not found: the throughput figures use two MOTO servers. moto is a Python")
        log("server and measures itself: these numbers say little about snapstage or rclone.")
        log("!" * 78)
    vgw = args.versitygw
    if vgw and Path(vgw).is_file() and os.access(vgw, os.X_OK):
        # A real S3 server as on-prem shops run one (Go, sets TCP_NODELAY, POSIX backend).
        variants.append(("versitygw", None))
    else:
        log("note: no versitygw binary (scripts/onprem-s3.sh build); its server variant does not run")

    def start_pair(label: str, preload: str | None) -> list[str]:
        names = []
        for side, url in (("cloud", cloud_url), ("onprem", onprem_url)):
            port = url.rsplit(":", 1)[1]
            name = f"{label.split()[0]}-{side}" + ("-nodelay" if preload else "")
            if label == "moto":
                services.start(name, [str(ROOT / ".venv/bin/moto_server"), "-H", "127.0.0.1", "-p", port],
                               dict(os.environ), out / f"{name}.log", url + "/moto-api/")
            elif label == "versitygw":
                start_versitygw(services, vgw, name, url, root / "versitygw" / side, out)
            else:
                d = root / side
                d.mkdir(parents=True, exist_ok=True)
                env = {"PATH": os.environ.get("PATH", ""), "RUST_LOG": "warn"}
                if preload:
                    env["LD_PRELOAD"] = preload
                services.start(name, [s3s, "--host", "127.0.0.1", "--port", port, "--access-key", S3_KEY,
                                      "--secret-key", S3_SECRET, str(d)], env, out / f"{name}.log", url)
            names.append(name)
        return names

    rclone = str(venv / "bin" / "rclone")
    rclone_version = tool_version([rclone, "version"])
    s5cmd = args.s5cmd if executable(args.s5cmd) else ""
    if not s5cmd:
        log("note: no s5cmd binary (scripts/s5cmd.sh); its rows do not run")
    want = (len(objs), total, {k for k, _ in objs})

    def clean(label: str, bucket: str) -> None:
        if label == "moto":
            urllib.request.urlopen(urllib.request.Request(onprem_url + "/moto-api/reset", method="POST")).close()
        elif label == "versitygw":
            shutil.rmtree(root / "versitygw" / "onprem" / bucket, ignore_errors=True)
        else:
            shutil.rmtree(root / "onprem" / bucket, ignore_errors=True)

    def run_snapstage(bucket: str, tag: str) -> Measured:
        ev = {"sourceBucket": DATA_BUCKET, "sourcePrefix": DATA_PREFIX, "destinationBucket": bucket,
              "destinationEndpoint": onprem_url, "executionId": f"bench-throughput-{bucket}"}
        evf = out / f"replicate-{tag}.json"
        evf.write_text(json.dumps(ev))
        env = aws_env(home, AWS_ENDPOINT_URL_S3=cloud_url, AWS_ACCESS_KEY_ID=S3_KEY, AWS_SECRET_ACCESS_KEY=S3_SECRET)
        with open(out / f"replicate-{tag}.stdout", "wb") as so, open(out / f"replicate-{tag}.stderr", "wb") as se:
            return run_measured([str(Path(args.bin_dir) / "replicate-artifacts-back"), "--event", str(evf),
                                 "--poll-interval", "0"], env, args.copy_timeout,
                                f"replicate-artifacts-back {tag}", stdout=so, stderr=se)

    def run_rclone(bucket: str, tag: str) -> Measured:
        with open(out / f"rclone-{tag}.log", "wb") as lf:
            return run_measured([rclone, "copy", f"src:{DATA_BUCKET}/{DATA_PREFIX}", f"dst:{bucket}/{DATA_PREFIX}"],
                                rclone_env(home, cloud_url, onprem_url), args.copy_timeout, f"rclone {tag}",
                                stdout=lf, stderr=lf)

    def run_s5cmd(bucket: str, tag: str) -> Sequence:
        # s5cmd takes one endpoint per command: between two endpoints it copies through a local
        # directory, on the same disk as the servers' data, deleted after (not counted).
        tmp = root / f"s5cmd-{tag}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        env = aws_env(home, AWS_ACCESS_KEY_ID=S3_KEY, AWS_SECRET_ACCESS_KEY=S3_SECRET)
        phases: list[Measured] = []
        try:
            with open(out / f"s5cmd-{tag}.log", "wb") as lf:
                for phase, argv in (
                        ("download", [s5cmd, "--endpoint-url", cloud_url, "cp", f"s3://{DATA_BUCKET}/{DATA_PREFIX}*",
                                      f"{tmp}/"]),
                        ("upload", [s5cmd, "--endpoint-url", onprem_url, "cp", f"{tmp}/*",
                                    f"s3://{bucket}/{DATA_PREFIX}"])):
                    phases.append(run_measured(argv, env, args.copy_timeout, f"s5cmd {phase} {tag}", stdout=lf, stderr=lf))
                    if phases[-1].status != 0:
                        break
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return Sequence(phases)

    runners = {"snapstage": run_snapstage, "rclone": run_rclone}
    if s5cmd:
        runners["s5cmd"] = run_s5cmd
    results: dict[str, dict[str, list[dict]]] = {}
    created_s = 0.0
    for label, preload in variants:
        names = start_pair(label, preload)
        try:
            src = s3_client(cloud_url, S3_KEY, S3_SECRET)
            dst = s3_client(onprem_url, S3_KEY, S3_SECRET)
            created_s += ensure_dataset(src, objs)
            rows: dict[str, list[dict]] = {k: [] for k in runners}
            for rnd in range(1, args.rounds + 1):
                for tool, fn in runners.items():  # A B C A B C
                    bucket = f"dst-{tool}-r{rnd}"
                    tag = f"{bucket}{'-nodelay' if preload else ''}"
                    clean(label, bucket)
                    dst.create_bucket(Bucket=bucket)
                    log(f"throughput [{label}] round {rnd}: {tool} -> {bucket}")
                    m = fn(bucket, tag)
                    have = listing(dst, bucket, DATA_PREFIX)
                    complete = have == want
                    rows[tool].append({"wall_s": m.wall_ms / 1000, "rss_mib": m.hwm_kib / 1024, "exit": m.status,
                                       "cpu_s": m.cpu_s,
                                       "objects": have[0], "bytes": have[1], "complete": complete})
                    log(f"  {tool}: {m.wall_ms / 1000:.1f} s, exit {m.status}, {have[0]} objects, {have[1]} bytes, "
                        f"complete={complete}, peak RSS {m.hwm_kib / 1024:.0f} MiB")
                    clean(label, bucket)
            results[label] = rows
        finally:
            for n in reversed(names):
                services.stop(n)
    return {"server": "s3s-fs" if have_s3s else "moto", "objects": len(objs), "bytes": total,
            "variants": results, "created_s": created_s, "rclone_version": rclone_version,
            "s5cmd_version": f"s5cmd {s5cmd_module_version()}" if s5cmd else None,
            "sizes": {"small": sum(1 for _, s in objs if s <= 64 * 1024),
                      "medium": sum(1 for _, s in objs if 64 * 1024 < s <= 4 * MiB),
                      "large": sum(1 for _, s in objs if s > 4 * MiB),
                      "max": max(s for _, s in objs)}}


# ---------------------------------------------------------------------------------------------
# 5. many small objects


MANY_BUCKET, MANY_PREFIX = "bench-many", "nexus/blobs/"
MANY_FORMAT = 1  # bump when many_object() changes: a cached set of another format is made anew
MANY_CHUNK = 10_000


def many_object(i: int, n: int) -> tuple[str, int]:
    """Key and size of object i of n, deterministic (the content is random): a Nexus blob store,
    blob j = i // 2 as content/vol-XX/chap-YY/<uuid>.bytes (1-4 KiB) and .properties (256 B-1 KiB),
    and metadata.properties at the root as the last object."""
    if i == n - 1:
        return f"{MANY_PREFIX}metadata.properties", 300
    h = hashlib.md5(f"snapstage-bench-many-{i // 2}".encode()).digest()
    vol, chap = h[0] % 43 + 1, h[1] % 47 + 1
    blob = uuid.UUID(bytes=h, version=4)
    if i % 2 == 0:
        return f"{MANY_PREFIX}content/vol-{vol:02d}/chap-{chap:02d}/{blob}.bytes", 1024 + int.from_bytes(h[2:4]) % 3073
    return f"{MANY_PREFIX}content/vol-{vol:02d}/chap-{chap:02d}/{blob}.properties", 256 + int.from_bytes(h[4:6]) % 768


def many_write_chunk(job: tuple[str, int, int, int]) -> tuple[int, int]:
    """Writes objects [lo, hi) of n as versitygw's POSIX backend stores a PutObject: the body as
    the file <bucket dir>/<key>, the quoted MD5 hex as xattr user.etag, user.content-type.
    (A worker of a multiprocessing pool: top level, plain arguments.)"""
    bucket_dir, lo, hi, n = job
    count = total = 0
    for i in range(lo, hi):
        key, size = many_object(i, n)
        body = os.urandom(size)
        fd = os.open(os.path.join(bucket_dir, key), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, body)
            os.setxattr(fd, "user.etag", f'"{hashlib.md5(body).hexdigest()}"'.encode())
            os.setxattr(fd, "user.content-type", b"application/octet-stream")
        finally:
            os.close(fd)
        count += 1
        total += size
    return count, total


def ensure_many(args, home: Path, s3, url: str, data: Path) -> dict:
    """The many-objects set in the cloud versitygw (`data` is its root, `url` its endpoint): reused
    when its marker names the same count and format and a listing still has that count and byte
    total, else written directly on its file system (the S3 API at 10^6 objects is slow) and then
    proven through the API: the listing has every key with the byte count, and sampled GETs return
    bodies whose MD5 is the listed ETag."""
    n = args.many
    marker = data.parent / "cloud-set.json"
    bucket_dir = data / MANY_BUCKET
    try:
        have = json.loads(marker.read_text())
        if have.get("format") == MANY_FORMAT and have.get("objects") == n and bucket_dir.is_dir():
            listed = count_objects(args, home, s3, url, MANY_BUCKET, MANY_PREFIX)
            if listed == (n, have.get("bytes")):
                log(f"many: data set present ({n:,} objects, cached; generated in {have['generated_s']:.0f} s)")
                return have
            log(f"many: the cached set lists {listed[0]:,} objects, {listed[1]:,} bytes; writing it anew")
    except (OSError, ValueError, RuntimeError):
        pass
    marker.unlink(missing_ok=True)
    remove_tree(bucket_dir)  # a set of another count or format
    t = time.monotonic()
    keys = [many_object(i, n) for i in range(n)]
    want = {"format": MANY_FORMAT, "objects": n, "bytes": sum(s for _, s in keys)}
    s3.create_bucket(Bucket=MANY_BUCKET)
    for vol in range(1, 44):
        for chap in range(1, 48):
            (bucket_dir / MANY_PREFIX / f"content/vol-{vol:02d}/chap-{chap:02d}").mkdir(parents=True, exist_ok=True)
    log(f"many: writing {n:,} objects ({want['bytes'] / MiB:.0f} MiB) into {bucket_dir} (once; cached)")
    jobs = [(str(bucket_dir), lo, min(lo + MANY_CHUNK, n), n) for lo in range(0, n, MANY_CHUNK)]
    with multiprocessing.get_context("fork").Pool(os.cpu_count() or 2) as pool:
        done = [0, 0]
        for c, b in pool.imap_unordered(many_write_chunk, jobs):
            done[0] += c
            done[1] += b
            if done[0] % 100_000 < MANY_CHUNK:
                log(f"many: {done[0]:,} objects written ({time.monotonic() - t:.0f} s)")
    written_s = time.monotonic() - t
    # The proof, through versitygw's S3 API.
    got = listing(s3, MANY_BUCKET, MANY_PREFIX)
    if got != (n, want["bytes"], {k for k, _ in keys}):
        raise RuntimeError(f"many: versitygw lists {got[0]} objects, {got[1]} bytes; expected {n}, {want['bytes']}")
    listed = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=MANY_BUCKET, Prefix=MANY_PREFIX, MaxKeys=1000):
        listed.update({o["Key"]: o["ETag"] for o in page.get("Contents", [])})
        break  # the first page's ETags are enough for the sample
    sample = random.Random(n).sample(sorted(listed), min(20, len(listed))) + [keys[-1][0]]
    for key in sample:
        r = s3.get_object(Bucket=MANY_BUCKET, Key=key)
        body = r["Body"].read()
        md5 = f'"{hashlib.md5(body).hexdigest()}"'
        if r["ETag"] != md5 or listed.get(key, md5) != md5:
            raise RuntimeError(f"many: {key}: GET ETag {r['ETag']}, listed {listed.get(key)}, body MD5 {md5}")
    want.update({"generated_s": time.monotonic() - t, "written_s": written_s, "proven_gets": len(sample)})
    marker.write_text(json.dumps(want))
    log(f"many: written in {written_s:.0f} s, proven through the S3 API in {want['generated_s'] - written_s:.0f} s "
        f"(listing: {n:,} keys, {want['bytes']:,} bytes; {len(sample)} GETs: body MD5 = ETag)")
    return want


def free_space(path: Path) -> tuple[int, int]:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize, st.f_favail


def bench_many(args, home: Path, services: Services, out: Path, venv: Path) -> dict:
    """10^6 small objects, versitygw -> versitygw: snapstage's full copy into an empty bucket and its
    no-op re-run (a new execution id), then rclone's (when --many-peers has it)."""
    vgw = args.versitygw
    if not executable(vgw):
        log("note: no versitygw binary: the many-objects section does not run")
        return {"objects": args.many, "skipped": "no versitygw binary (scripts/onprem-s3.sh build needs Go)"}
    n = args.many
    root = Path(args.data_dir) / "many"
    root.mkdir(parents=True, exist_ok=True)
    try:
        cached = json.loads((root / "cloud-set.json").read_text()).get("objects") == n
    except (OSError, ValueError, AttributeError):
        cached = False
    # Each copy (measured: 100 000 objects took 790 MB): one 4 KiB block per file, one more for its
    # xattrs, an inode per file; the source set needs the same again unless cached.
    need_bytes, need_inodes = n * 8192 * (1 if cached else 2) + 2 * GiB, int(n * 1.1) * (1 if cached else 2)
    free_b, free_i = free_space(root)
    if free_b < need_bytes or free_i < need_inodes:
        log(f"many: SKIPPED: {root} has {free_b / GiB:.1f} GiB and {free_i:,} inodes free; "
            f"{n:,} objects need about {need_bytes / GiB:.1f} GiB and {need_inodes:,} inodes")
        return {"skipped": f"not enough disk: {free_b / GiB:.1f} GiB / {free_i:,} inodes free, "
                           f"about {need_bytes / GiB:.1f} GiB / {need_inodes:,} needed", "objects": n}
    cloud_url, onprem_url = f"http://127.0.0.1:{args.port_base + 2}", f"http://127.0.0.1:{args.port_base + 3}"
    checkpoints = root / "checkpoints"
    res: dict = {"objects": n, "runs": {}}
    start_versitygw(services, vgw, "versitygw-many-cloud", cloud_url, root / "cloud", out)
    start_versitygw(services, vgw, "versitygw-many-onprem", onprem_url, root / "onprem", out)
    try:
        src = s3_client(cloud_url, S3_KEY, S3_SECRET)
        dst = s3_client(onprem_url, S3_KEY, S3_SECRET)
        res["set"] = ensure_many(args, home, src, cloud_url, root / "cloud")
        want = (n, res["set"]["bytes"])

        def snapstage(bucket: str, run: str) -> Measured:
            ev = {"sourceBucket": MANY_BUCKET, "sourcePrefix": MANY_PREFIX, "destinationBucket": bucket,
                  "destinationEndpoint": onprem_url, "executionId": f"bench-many-{run}-{n}",
                  "checkpoint": str(checkpoints)}
            evf = out / f"many-{run}.json"
            evf.write_text(json.dumps(ev))
            env = aws_env(home, AWS_ENDPOINT_URL_S3=cloud_url, AWS_ACCESS_KEY_ID=S3_KEY, AWS_SECRET_ACCESS_KEY=S3_SECRET)
            with open(out / f"many-{run}.stdout", "wb") as so, open(out / f"many-{run}.stderr", "wb") as se:
                m = run_measured([str(Path(args.bin_dir) / "replicate-artifacts-back"), "--event", str(evf),
                                  "--poll-interval", "0"], env, args.many_timeout, f"many {run}", stdout=so, stderr=se)
            keep_tail(out / f"many-{run}.stderr", 256 * 1024)  # one INFO line per object: the tail is enough
            return m

        def rclone(bucket: str, run: str) -> Measured:
            with open(out / f"many-{run}.log", "wb") as lf:
                return run_measured([str(venv / "bin" / "rclone"), "copy", f"src:{MANY_BUCKET}/{MANY_PREFIX}",
                                     f"dst:{bucket}/{MANY_PREFIX}"], rclone_env(home, cloud_url, onprem_url),
                                    args.many_timeout, f"many {run}", stdout=lf, stderr=lf)

        tools = [("snapstage", snapstage)] + ([("rclone", rclone)] if "rclone" in args.many_peers.split(",") else [])
        for tool, fn in tools:
            bucket = f"many-{tool}"
            remove_tree(root / "onprem" / bucket)
            remove_tree(checkpoints)
            dst.create_bucket(Bucket=bucket)
            for kind in ("full", "noop"):
                run = f"{tool}-{kind}"
                log(f"many: {tool} {'full copy' if kind == 'full' else 'no-op re-run'} of {n:,} objects -> {bucket}")
                m = fn(bucket, run)
                t = time.monotonic()
                have = count_objects(args, home, dst, onprem_url, bucket, MANY_PREFIX)
                row = {"wall_s": m.wall_ms / 1000, "cpu_s": m.cpu_s, "rss_mib": m.hwm_kib / 1024, "exit": m.status,
                       "objects": have[0], "bytes": have[1], "complete": have == want,
                       "listing_s": time.monotonic() - t}
                if tool == "snapstage":
                    row["output"] = cli_output(out / f"many-{run}.stdout")
                res["runs"][run] = row
                log(f"  {run}: {row['wall_s']:.1f} s, CPU {row['cpu_s']:.1f} s, peak RSS {row['rss_mib']:.0f} MiB, "
                    f"exit {m.status}, destination {have[0]:,} objects, complete={row['complete']} "
                    f"{row.get('output', '')}")
                if kind == "full" and m.status != 0:
                    break  # no re-run of a copy that did not finish
            t = time.monotonic()
            remove_tree(root / "onprem" / bucket)
            log(f"many: removed {bucket} ({time.monotonic() - t:.0f} s)")
    finally:
        services.stop("versitygw-many-onprem")
        services.stop("versitygw-many-cloud")
        remove_tree(root / "onprem")
        remove_tree(checkpoints)
    res["rclone_version"] = tool_version([str(venv / "bin" / "rclone"), "version"])
    return res


def count_objects(args, home: Path, s3, url: str, bucket: str, prefix: str) -> tuple[int, int]:
    """Objects and bytes a ListObjectsV2 of bucket/prefix returns: through `s5cmd ls` when there is
    one (at 10^6 keys ~5x as fast as boto3's paginator), else boto3."""
    if not executable(args.s5cmd):
        return listing(s3, bucket, prefix)[:2]
    env = aws_env(home, AWS_ACCESS_KEY_ID=S3_KEY, AWS_SECRET_ACCESS_KEY=S3_SECRET)
    p = subprocess.run([args.s5cmd, "--endpoint-url", url, "ls", f"s3://{bucket}/{prefix}*"], env=env,
                       capture_output=True, text=True, timeout=3600)
    n = b = 0
    for line in p.stdout.splitlines():  # "2026/12/07 19:19:53        11  key"
        f = line.split()
        if len(f) >= 4 and f[2].isdigit():
            n += 1
            b += int(f[2])
    if p.returncode != 0 and n == 0 and "no object found" not in p.stderr:
        raise RuntimeError(f"s5cmd ls s3://{bucket}/{prefix}: exit {p.returncode}: {p.stderr.strip()[:300]}")
    return n, b


def remove_tree(path: Path) -> None:
    """rm -rf, bounded: on this disk shutil.rmtree took 160 s for a tree of 20 000 files that
    rm -rf removes in 8 s."""
    if path.exists():
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], timeout=3600, check=False)


def keep_tail(path: Path, size: int) -> None:
    try:
        if path.stat().st_size > size:
            with open(path, "rb") as f:
                f.seek(-size, os.SEEK_END)
                tail = f.read()
            path.write_bytes(b"[... truncated by bench.py ...]\n" + tail)
    except OSError:
        pass


def cli_output(stdout: Path) -> dict:
    """The counters of replicate-artifacts-back's JSON answer (ObjectsCopied, ObjectsSkipped, ...)."""
    try:
        ans = json.loads(stdout.read_text().strip().splitlines()[-1])
        v = ans.get("outputVariables", {})
        return {"status": ans.get("status"), "copied": v.get("ObjectsCopied"), "skipped": v.get("ObjectsSkipped"),
                "verified": v.get("ObjectsVerified")}
    except (OSError, ValueError, IndexError, AttributeError):
        return {}


# ---------------------------------------------------------------------------------------------
# report


def report(m: dict, cold: dict | None, sizes: dict | None, poll: dict | None, tp: dict | None, many: dict | None,
           args) -> str:
    L: list[str] = []
    L.append("# snapstage benchmark results\n")
    L.append(f"Generated by `make bench` (bench/run.sh) on {m['date']}, commit `{m['commit']}`.\n")
    L.append(f"Machine: {m['nproc']} CPUs, {m['cpu']}, {m['memory']} RAM, Linux {m['kernel']} {m['arch']}; "
             f"{m['rustc']}; Python {m['python']}. Binaries: `{args.bin_dir}` (x86_64 release build).\n")
    L.append("All figures are from this one run; comparisons are interleaved (A B A B, A B C A B C). p95 is nearest-rank. "
             "Nothing here is a pass/fail threshold.\n")
    if cold:
        peer = cold[PYTHON_PEER]
        L.append("## 1. Cold start (measured)\n")
        L.append(f"Exec of the process until its first `GET /2018-06-01/runtime/invocation/next` on a local "
                 f"Runtime API (bench/runtime_api.py), and until its answer to the first event "
                 f"(a dry run / plan request: one or two AWS calls to a local moto server, which is Python "
                 f"and slow, so the *response* column is dominated by moto). {args.runs} runs each, after one "
                 f"uncounted warm-up each, rounds rotated. Peer: `peer_handler.py` (imports boto3 and the "
                 f"kubernetes client, creates an EC2 client, answers with one DescribeVolumes) under "
                 f"`awslambdaric` (the official Python Runtime Interface Client, from PyPI).\n")
        L.append("| function | ok | exec → first /next p50 | p95 | ratio to Python (p50) | exec → response p50 | p95 | ratio | peak RSS p50 |")
        L.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for s in FUNCTIONS + [PYTHON_PEER]:
            r = cold[s]
            label = f"`{s}`" if s != PYTHON_PEER else "Python peer (boto3 + kubernetes, awslambdaric)"
            rn = p50(r["next"]) / p50(peer["next"]) if peer["next"] else float("nan")
            rr = p50(r["resp"]) / p50(peer["resp"]) if peer["resp"] else float("nan")
            L.append(f"| {label} | {r['ok']}/{r['n']} | {fmt(p50(r['next']))} ms | {fmt(p95(r['next']))} ms | "
                     f"{fmt(rn, 3)} | {fmt(p50(r['resp']))} ms | {fmt(p95(r['resp']))} ms | {fmt(rr, 3)} | "
                     f"{fmt(p50(r['rss']))} MiB |")
        ours = [p50(cold[f]["next"]) for f in FUNCTIONS]
        if peer["next"] and all(not math.isnan(x) for x in ours):
            L.append(f"\nTo the first /next, p50: snapstage {fmt(min(ours))}–{fmt(max(ours))} ms, the Python peer "
                     f"{fmt(p50(peer['next']))} ms ({fmt(p50(peer['next']) / max(ours), 0)}–"
                     f"{fmt(p50(peer['next']) / min(ours), 0)}× as long). Not included, for either: Lambda's own "
                     f"sandbox start.")
        L.append("")
    if sizes:
        L.append("## 2. Package size (measured)\n")
        L.append("Release binaries (`strip = \"symbols\"`, fat LTO, opt-level \"s\") of this x86_64 machine, and a zip "
                 "holding the binary as `bootstrap` (Python zipfile, deflate level 6). The Lambda artifacts are "
                 "arm64 zips (`make package`, cargo lambda), shown beside them when target/lambda has them.\n")
        arm = all("arm64_zip" in s for s in sizes.values())
        if arm:
            L.append("| function | binary (x86_64) | bootstrap zip (x86_64) | bootstrap.zip (arm64, `make package`) |")
            L.append("| --- | ---: | ---: | ---: |")
        else:
            L.append("| function | binary | bootstrap zip |")
            L.append("| --- | ---: | ---: |")
        for f, s in sizes.items():
            row = f"| `{f}` | {s['binary'] / 1e6:.2f} MB | {s['zip'] / 1e6:.2f} MB |"
            if arm:
                row += f" {s['arm64_zip'] / 1e6:.2f} MB{' (stale)' if s['arm64_stale'] else ''} |"
            L.append(row)
        if arm:
            built = sorted({s["arm64_built"] for s in sizes.values()})
            stale = any(s["arm64_stale"] for s in sizes.values())
            L.append(f"\narm64 zips as `make package` left them in target/lambda (built {', '.join(built)})"
                     + ("; **stale**: built before the current commit, so they may not match it." if stale
                        else "; built after the current commit.") + " The deployable artifact is this arm64 zip.")
        L.append("")
    if poll:
        warm, coldr = poll["resume_warm_ms"], poll["resume_cold_ms"]
        n = args.polls
        first = poll["create_cold_ms"]
        billed_warm = first + n * p50(warm)
        billed_cold = first + n * p50(coldr)
        ref = 10 * 60 * 1000
        L.append("## 3. Control-plane cost of a 10-minute wait\n")
        L.append("snapshot-production never sleeps: while a snapshot is pending it answers \"in progress\" with a "
                 "continuation token, and CodePipeline invokes it again. One such re-invocation is a "
                 "DescribeSnapshots and an answer. moto completes snapshots at once, so the re-invocation is "
                 "measured with a token (issued as the function issues it) naming the snapshot the first "
                 "invocation made: same work, one DescribeSnapshots against moto.\n")
        L.append("| | figure | how |")
        L.append("| --- | ---: | --- |")
        L.append(f"| first invocation (cold: exec → answer, creates the snapshot) | {fmt(first)} ms | measured |")
        L.append(f"| one re-invocation, warm sandbox (event sent → answer), p50 of {len(warm)} | "
                 f"{fmt(p50(warm))} ms (p95 {fmt(p95(warm))}) | measured |")
        L.append(f"| one re-invocation, fresh sandbox (exec → answer), p50 of {len(coldr)} | "
                 f"{fmt(p50(coldr))} ms (p95 {fmt(p95(coldr))}) | measured |")
        L.append(f"| peak RSS of the sandbox over {n + 1} invocations | {fmt(poll['rss_mib'])} MiB | measured |")
        L.append(f"| snapstage, snapshot pending 10 min, one re-invocation a minute: first + {n} × warm | "
                 f"**{fmt(billed_warm, 0)} ms billed** | computed from the measured figures |")
        L.append(f"| the same if every re-invocation were a cold start: first + {n} × fresh | "
                 f"{fmt(billed_cold, 0)} ms billed | computed |")
        L.append(f"| reference Python Lambda: sleeps in the function for the 10 minutes | "
                 f"**≥ {ref:,} ms billed** | computed (the sleep alone; its first call and imports come on top) |")
        L.append(f"| ratio reference / snapstage (warm) | {fmt(ref / billed_warm, 0)}× | computed |")
        L.append("")
        L.append("At the same memory size Lambda's compute charge is proportional to billed milliseconds (1 ms "
                 "granularity); the reference also holds an execution environment for the whole wait and dies at "
                 "Lambda's 15-minute limit on a longer one. The re-invocation time here is mostly moto's "
                 "DescribeSnapshots latency.\n")
        L.append(f"Last answer: {poll['summary']!r}; all invocations succeeded: {poll['ok']}.\n")
    if tp:
        L.append("## 4. Replication throughput vs `rclone copy` and s5cmd (measured)\n")
        if tp["server"] != "s3s-fs":
            L.append("**WARNING: s3s-fs was not available: both endpoints are moto servers. moto is a Python server "
                     "and measures itself; these throughput figures say little about either tool.**\n")
        sz = tp["sizes"]
        tools = "A B C" if tp.get("s5cmd_version") else "A B"
        L.append(f"{tp['objects']} objects, {tp['bytes'] / GiB:.2f} GiB ({tp['bytes']:,} bytes): {sz['small']} ≤ 64 KiB, "
                 f"{sz['medium']} of 64 KiB–4 MiB, {sz['large']} larger (max {sz['max'] / MiB:.1f} MiB), random "
                 f"content, from one {tp['server']} server (\"cloud\") to another (\"on-prem\") on 127.0.0.1, each "
                 f"copy into a fresh destination bucket, {args.rounds} rounds {tools} per server variant. snapstage: "
                 f"`replicate-artifacts-back --event` (CLI, default settings: 8 objects at once, "
                 f"objects up to 64 MiB whose ETag is their MD5 as one PutObject streamed from the GET, "
                 f"Content-MD5 the source ETag, the ETag the destination answers checked against it, SHA-256 "
                 f"of every byte for the manifest; larger ones as streamed multipart uploads, MD5-checked against "
                 f"the source ETag and HEAD-verified; Nexus order kept). Peer: `{tp['rclone_version']}` "
                 f"(`rclone copy`, default settings: 4 transfers, 8 checkers, MD5 compared after upload). "
                 f"Complete = the destination listing has every key and the total byte count. CPU = the "
                 f"tool's own user + system time (wait4); CPU s/GiB = that ÷ the GiB copied; the two servers share "
                 f"the same 2 cores. MB = 10^6 bytes.\n")
        if tp.get("s5cmd_version"):
            L.append(f"Second peer: `{tp['s5cmd_version']}` (MIT, built from its Go module pinned in tools/s5cmd/go.mod), "
                     f"default settings (256 workers, 5 parts at once per object, 50 MiB parts). It takes one "
                     f"endpoint per command, so it copies between two endpoints as a user must: "
                     f"`s5cmd cp 's3://src/prefix/*' <dir>/` with the cloud endpoint, then "
                     f"`s5cmd cp '<dir>/*' s3://dst/prefix/` with the on-prem one, through a directory on the "
                     f"servers' disk (deleted after, not counted); its wall and CPU are the sum of both commands, its "
                     f"peak RSS the larger. What it verifies: the upload sends Content-MD5 computed from the local "
                     f"file (aws-sdk-go v1 does so for PutObject and UploadPart), so the server rejects a body "
                     f"damaged in transit; the download is not checked (no ETag comparison, no checksum over the GET "
                     f"body: aws-sdk-go v1 has that check disabled), and nothing compares the destination with the "
                     f"source.\n")
        if "s3s-fs + TCP_NODELAY" in tp["variants"]:
            L.append("Two s3s-fs variants: s3s-fs 0.14.1 as it is, which does not set TCP_NODELAY, so a response "
                     "body smaller than the MSS that follows its headers in a second write waits for the client's "
                     "delayed ACK (~40 ms on Linux: seen with strace on about half of the small GETs); and the same "
                     "server with TCP_NODELAY set on its sockets (bench/nodelay.c, LD_PRELOAD), as AWS S3 and MinIO "
                     "(Go sets it by default) behave. A client copying one object at a time pays each stall; "
                     "parallel transfers (snapstage's 8, rclone's 4, s5cmd's 256) overlap them.\n")
        if "versitygw" in tp["variants"]:
            L.append("The versitygw rows: Versity's S3 gateway (Go, Apache-2.0; the version pinned in tools/s3/go.mod) "
                     "on its POSIX backend for both the cloud and the on-prem side, the kind of S3 server an on-prem "
                     "shop runs over its file system (object metadata in extended attributes). It is the third "
                     "server in place of MinIO: MinIO's server is AGPL-licensed, which this project does not take "
                     "in (not even as a test tool).\n")
        else:
            L.append("No third server variant in this run: versitygw (scripts/onprem-s3.sh build, needs Go) was not "
                     "available. MinIO is not used in its place: its server is AGPL-licensed, which this project "
                     "does not take in.\n")
        gib = tp["bytes"] / GiB
        L.append("| server | tool | round | wall | MB/s | CPU | CPU s/GiB | peak RSS | exit | objects | complete |")
        L.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
        for label, rowsets in tp["variants"].items():
            for tool, rows in rowsets.items():
                for i, r in enumerate(rows, 1):
                    cpu = r.get("cpu_s", float("nan"))
                    L.append(f"| {label} | {tool} | {i} | {r['wall_s']:.1f} s | {tp['bytes'] / 1e6 / r['wall_s']:.1f} | "
                             f"{cpu:.1f} s | {cpu / gib:.2f} | "
                             f"{r['rss_mib']:.0f} MiB | {r['exit']} | {r['objects']} | {'yes' if r['complete'] else 'NO'} |")
        L.append("")
        L.append("Throughput ratio = the peer's median wall ÷ snapstage's (above 1: snapstage is faster).\n")
        L.append("| server | tool | median wall | median MB/s | median CPU | median CPU s/GiB | median peak RSS "
                 "| ratio snapstage / rclone | ratio snapstage / s5cmd |")
        L.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for label, rowsets in tp["variants"].items():
            med = {t: p50([r["wall_s"] for r in rows]) for t, rows in rowsets.items()}
            rss = {t: p50([r["rss_mib"] for r in rows]) for t, rows in rowsets.items()}
            cpu = {t: p50([r.get("cpu_s", float("nan")) for r in rows]) for t, rows in rowsets.items()}
            ours = med.get("snapstage")
            ratio = {peer: med[peer] / ours if ours and peer in med else float("nan") for peer in ("rclone", "s5cmd")}
            for t in med:
                cells = [f"**{fmt(ratio[peer], 2)}**" if t == "snapstage" and peer in med else "" for peer in ("rclone", "s5cmd")]
                L.append(f"| {label} | {t} | {med[t]:.1f} s | {tp['bytes'] / 1e6 / med[t]:.1f} | {cpu[t]:.1f} s | "
                         f"{cpu[t] / gib:.2f} | {rss[t]:.0f} MiB | {cells[0]} | {cells[1]} |")
        L.append("")
    if many:
        L.extend(report_many(many, args))
    return "\n".join(L) + "\n"


def report_many(many: dict, args) -> list[str]:
    n = many["objects"]
    L = [f"## 5. {n:,} small objects: full copy and no-op re-run (measured)\n"]
    if "skipped" in many:
        return L + [f"**Not measured**: {many['skipped']}.\n"]
    st = many["set"]
    L.append(f"A Nexus-like blob store of {n:,} objects, {st['bytes'] / MiB:,.0f} MiB "
             f"(`content/vol-XX/chap-YY/<uuid>.bytes` of 1–4 KiB and `.properties` of 256 B–1 KiB, random content, "
             f"and `metadata.properties`) in one versitygw (POSIX backend) standing for the cloud bucket, copied to a "
             f"second one (on-prem) into an empty bucket (**full**), then again with a new execution id into the "
             f"same bucket (**no-op**: nothing changed, nothing to copy). The set is written directly as versitygw "
             f"stores objects (file + `user.etag` xattr), proven through its S3 API (the listing has every key "
             f"and byte, sampled GETs return bodies whose MD5 is the ETag), and kept between runs "
             f"(written in {st['written_s']:.0f} s, not measured). snapstage: `replicate-artifacts-back --event`, "
             f"default settings, checkpoint in a local directory. Peak RSS: the process's own VmHWM, sampled every "
             f"20 ms. Complete = the destination listing has all {n:,} objects and the byte count. "
             f"Each run is bounded by {args.many_timeout:.0f} s.\n")
    L.append("| tool | run | wall | objects/s | CPU | peak RSS | exit | destination objects | complete | answer |")
    L.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |")
    runs = many["runs"]
    for run, r in runs.items():
        tool, kind = run.split("-", 1)
        o = r.get("output") or {}
        answer = (f"{o.get('status')}: {o.get('copied')} copied, {o.get('skipped')} skipped, {o.get('verified')} verified"
                  if o else "")
        L.append(f"| {tool} | {'full copy' if kind == 'full' else 'no-op re-run'} | {r['wall_s']:,.1f} s | "
                 f"{n / r['wall_s']:,.0f} | {r['cpu_s']:,.1f} s | {r['rss_mib']:,.0f} MiB | {r['exit']} | "
                 f"{r['objects']:,} | {'yes' if r['complete'] else 'NO'} | {answer} |")
    L.append("")
    for tool in ("snapstage", "rclone"):
        full, noop = runs.get(f"{tool}-full"), runs.get(f"{tool}-noop")
        if full and noop:
            L.append(f"{tool}: the no-op re-run took **{100 * noop['wall_s'] / full['wall_s']:.1f}%** of the full "
                     f"copy's wall time ({noop['wall_s']:,.1f} s / {full['wall_s']:,.1f} s)"
                     + (" (goal ≤ 5%)." if tool == "snapstage" else "."))
    full_s, full_r = runs.get("snapstage-full"), runs.get("rclone-full")
    if full_s and full_r:
        L.append(f"\nFull copy, rclone's wall ÷ snapstage's: **{full_r['wall_s'] / full_s['wall_s']:.2f}**. "
                 f"Peer: `{many.get('rclone_version')}`, `rclone copy`, default settings (its no-op compares size "
                 f"and modification time).")
    L.append("")
    return L


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin-dir", default=str(ROOT / "target/release"))
    ap.add_argument("--s3s-fs", default="", help="the s3s-fs binary (absent: moto fallback, loudly)")
    ap.add_argument("--versitygw", default="", help="the versitygw binary (a third server variant; absent: skipped)")
    ap.add_argument("--s5cmd", default="", help="the s5cmd binary (scripts/s5cmd.sh; absent: its rows are skipped)")
    ap.add_argument("--nodelay-shim", default=str(BENCH / "out/nodelay.so"),
                    help="LD_PRELOAD shim setting TCP_NODELAY on s3s-fs's sockets (bench/nodelay.c)")
    ap.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", "20")))
    ap.add_argument("--polls", type=int, default=10, help="re-invocations of a 10-minute wait")
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", "2")))
    ap.add_argument("--objects", type=int, default=1000)
    ap.add_argument("--total-bytes", type=int, default=GiB)
    ap.add_argument("--copy-timeout", type=float, default=300)
    ap.add_argument("--data-dir", default=os.environ.get("BENCH_DATA_DIR", "/tmp/snapstage-bench"))
    ap.add_argument("--port-base", type=int, default=int(os.environ.get("BENCH_PORT_BASE", "5190")))
    ap.add_argument("--many", type=int, default=int(os.environ.get("BENCH_MANY", "1000000")),
                    help="objects of the many-small-objects set (section 5)")
    ap.add_argument("--many-timeout", type=float, default=float(os.environ.get("BENCH_MANY_TIMEOUT", "7200")),
                    help="seconds any one run of section 5 may take before it is killed")
    ap.add_argument("--many-peers", default=os.environ.get("BENCH_MANY_PEERS", "none"),
                    help="peers of section 5 beside snapstage: rclone or none")
    ap.add_argument("--only", default="cold,size,poll,throughput,many")
    ap.add_argument("--results", default=str(BENCH / "results.md"))
    ap.add_argument("--out", default=os.environ.get("BENCH_OUT", str(BENCH / "out")),
                    help="logs, events, raw.json (default bench/out)")
    args = ap.parse_args()
    only = set(args.only.split(","))
    # make (or a CI runner) stops us with SIGTERM: unwind so every server we started is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    missing = [f for f in FUNCTIONS if not (Path(args.bin_dir) / f).is_file()]
    if missing:
        print(f"bench: no release binaries {missing} in {args.bin_dir} (cargo build --release --bins)", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    venv = Path(sys.executable).parent.parent
    home = Path(tempfile.mkdtemp(prefix="snapstage-bench-home-"))
    services = Services()
    api = RuntimeAPI().start()
    cold = sizes = poll = tp = many = None
    t_start = time.monotonic()
    try:
        moto_cloud = f"http://127.0.0.1:{args.port_base}"
        moto_onprem = f"http://127.0.0.1:{args.port_base + 1}"
        if only & {"cold", "poll"}:
            moto = str(ROOT / ".venv/bin/moto_server")
            for name, url in (("moto-cloud", moto_cloud), ("moto-onprem", moto_onprem)):
                services.start(name, [moto, "-H", "127.0.0.1", "-p", url.rsplit(":", 1)[1]], dict(os.environ),
                               out / f"{name}.log", url + "/moto-api/")
            seed = seed_moto(moto_cloud, moto_onprem)
        if "cold" in only:
            cold = bench_cold_start(args, api, home, moto_cloud, cold_events(seed, moto_onprem), sys.executable, out)
            log(f"cold start done ({time.monotonic() - t_start:.0f} s)")
        if "size" in only:
            sizes = bench_sizes(args, out)
        if "poll" in only:
            poll = bench_polling(args, api, home, moto_cloud, seed, out)
            log(f"polling cost done ({time.monotonic() - t_start:.0f} s)")
        if "throughput" in only:
            tp = bench_throughput(args, home, services, out, venv)
            log(f"throughput done ({time.monotonic() - t_start:.0f} s)")
        if "many" in only:
            try:
                many = bench_many(args, home, services, out, venv)
            except Exception as e:  # noqa: BLE001 - the other sections' figures are still reported
                log(f"many: FAILED: {e!r}")
                many = {"objects": args.many, "skipped": f"failed: {e!r}"}
            log(f"many small objects done ({time.monotonic() - t_start:.0f} s)")
    finally:
        api.stop()
        services.stop_all()
        shutil.rmtree(home, ignore_errors=True)
    m = machine()
    raw = {"machine": m, "cold_start": cold, "sizes": sizes, "polling": poll, "throughput": tp, "many": many}
    (out / "raw.json").write_text(json.dumps(raw, indent=1, default=lambda o: o.decode("utf-8", "replace")
                                             if isinstance(o, bytes) else str(o)))
    text = report(m, cold, sizes, poll, tp, many, args)
    text += f"\nBench wall time (excluding builds and installs): {time.monotonic() - t_start:.0f} s.\n"
    Path(args.results).write_text(text)
    print(text)
    log(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
