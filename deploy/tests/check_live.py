#!/usr/bin/env python3
"""Runs the real `sentinel` binary the way the chart's objects would, on a fresh database.

  - the migration Job: its args and environment on an empty database, twice (install, then an
    upgrade with nothing new);
  - the server: the Deployment's args with the ConfigMap's settings (only the listen addresses
    moved to 127.0.0.1:0, since this machine is shared), then every gRPC probe the Deployment
    declares must answer SERVING;
  - the chart's `helm test` script (files/claim-complete.sh) against that server;
  - SIGTERM: the server must be gone before the kubelet would kill it.

Needs SENTINEL_BIN and SENTINEL_DATABASE_URL (an admin URL: a database is created and dropped),
as exported by scripts/with-server.sh. Usage: check_live.py HELM GRPCURL.
Ends with "N passed, N failed"; exits 1 when anything failed.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import yaml

DEPLOY = Path(__file__).resolve().parent.parent
CHART = DEPLOY / "helm" / "sentinel"
SCRIPT = CHART / "files" / "claim-complete.sh"
FULLNAME = "prod-sentinel"


class Report:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def check(self, ok: bool, what: str, detail: str = "") -> bool:
        if ok:
            self.passed += 1
            print(f"ok: {what}")
        else:
            self.failed += 1
            print(f"FAIL: {what}{': ' + detail if detail else ''}")
        return ok


R = Report()


def rendered(helm: str) -> dict[tuple[str, str], dict]:
    out = subprocess.run(
        [helm, "template", "prod", str(CHART), "--kube-version", "1.37.0", "--set", "database.existingSecret=db"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def container_env(container: dict, database_url: str) -> dict[str, str]:
    """The container's env entries; the Secret reference resolves to the test database."""
    env = {}
    for entry in container.get("env") or []:
        if dig(entry, "valueFrom", "secretKeyRef") is not None:
            if entry["name"] != "SENTINEL_DATABASE_URL":
                raise SystemExit(f"unexpected secret env {entry['name']}")
            env[entry["name"]] = database_url
        else:
            env[entry["name"]] = entry["value"]
    return env


def dig(obj, *path):
    for step in path:
        if not isinstance(obj, dict) or step not in obj:
            return None
        obj = obj[step]
    return obj


def psql(admin_url: str, sql: str) -> None:
    subprocess.run(["psql", admin_url, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql], check=True)


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def run_job(bin_path: str, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([bin_path, *args], env=env, capture_output=True, text=True, timeout=120, check=False)


def health(grpcurl: str, addr: str, service: str) -> str:
    out = subprocess.run(
        [
            grpcurl,
            "-plaintext",
            "-max-time",
            "10",
            "-d",
            f'{{"service":"{service}"}}',
            addr,
            "grpc.health.v1.Health/Check",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(r'"status":\s*"(\w+)"', out.stdout)
    return found.group(1) if found else f"error: {out.stderr.strip()}"


def open_heartbeat(grpcurl: str, addr: str, workdir: Path) -> subprocess.Popen | None:
    """Claims a key and keeps a Heartbeat stream for it open; None if no ALIVE came back."""
    request = {"namespace": f"deploy-drain-{secrets.token_hex(4)}", "key": "drain", "leaseTtl": "60s"}
    claim = subprocess.run(
        [
            grpcurl,
            "-plaintext",
            "-max-time",
            "10",
            "-d",
            json.dumps(request),
            addr,
            "sentinel.v1.SentinelService/Claim",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    token = dig(json.loads(claim.stdout or "{}"), "acquired", "token")
    if token is None:
        print(f"claim for the drain check failed: {claim.stdout} {claim.stderr}")
        return None
    out_path = workdir / "heartbeat.out"
    with out_path.open("w") as out_file:
        stream = subprocess.Popen(
            [grpcurl, "-plaintext", "-d", "@", addr, "sentinel.v1.SentinelService/Heartbeat"],
            stdin=subprocess.PIPE,
            stdout=out_file,
            stderr=subprocess.STDOUT,
            text=True,
        )
    # stdin stays open, so grpcurl keeps the stream open after this one request.
    stream.stdin.write(json.dumps({"namespace": request["namespace"], "key": "drain", "token": token}) + "\n")
    stream.stdin.flush()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and stream.poll() is None:
        if '"alive"' in out_path.read_text():
            return stream
        time.sleep(0.1)
    print(f"no ALIVE on the heartbeat stream: {out_path.read_text()}")
    stream.kill()
    stream.wait()
    return None


def main(helm: str, grpcurl: str) -> int:
    bin_path = os.environ.get("SENTINEL_BIN")
    admin_url = os.environ.get("SENTINEL_DATABASE_URL")
    if not bin_path or not admin_url:
        print("FAIL: SENTINEL_BIN and SENTINEL_DATABASE_URL must be set (run under scripts/with-server.sh)")
        return 1

    objects = rendered(helm)
    settings = objects[("ConfigMap", FULLNAME)]["data"]
    deployment = objects[("Deployment", FULLNAME)]
    server = deployment["spec"]["template"]["spec"]["containers"][0]
    job = objects[("Job", f"{FULLNAME}-migrate")]["spec"]["template"]["spec"]["containers"][0]
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    pre_stop = dig(server, "lifecycle", "preStop", "sleep", "seconds") or 0

    database = f"deploytest_{secrets.token_hex(4)}"
    url = with_database(admin_url, database)
    base_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    psql(admin_url, f"CREATE DATABASE {database}")
    proc = stream = None
    workdir = tempfile.mkdtemp(prefix="sentinel-deploy-")
    try:
        # The migration Job, as at install on an empty database and at an upgrade.
        job_env = base_env | container_env(job, url)
        for attempt in ("install", "upgrade"):
            out = run_job(bin_path, job["args"], job_env)
            R.check(out.returncode == 0, f"migration Job ({attempt}) exits 0", out.stderr.strip()[-2000:])

        # The server with the ConfigMap's settings and the Deployment's env and args.
        env = base_env | settings | container_env(server, url)
        env["SENTINEL_LISTEN"] = "127.0.0.1:0"
        if "SENTINEL_METRICS_LISTEN" in env:
            env["SENTINEL_METRICS_LISTEN"] = "127.0.0.1:0"
        # Logs go to files: a pipe nobody reads would fill and stall the server.
        out_path, err_path = Path(workdir) / "server.out", Path(workdir) / "server.err"
        with out_path.open("w") as out_file, err_path.open("w") as err_file:
            proc = subprocess.Popen([bin_path, *server["args"]], env=env, stdout=out_file, stderr=err_file)
        addr = None
        deadline = time.monotonic() + 60
        while addr is None and time.monotonic() < deadline and proc.poll() is None:
            found = re.search(r"(?m)^sentinel listening on (\S+)$", out_path.read_text())
            addr = found.group(1) if found else None
            time.sleep(0.1)
        if not R.check(addr is not None, f"server starts with the chart's settings {sorted(settings)}"):
            print(err_path.read_text()[-2000:])
            print(f"{R.passed} passed, {R.failed} failed")
            return 1

        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            service = server[probe]["grpc"]["service"]
            status = health(grpcurl, addr, service)
            R.check(status == "SERVING", f"{probe} (grpc service {service!r}) answers {status}")

        script = subprocess.run(
            ["sh", str(SCRIPT)],
            env=base_env
            | {
                "PATH": f"{Path(grpcurl).parent}:{base_env['PATH']}",
                "SENTINEL_ADDR": addr,
                "SENTINEL_TEST_NAMESPACE": f"deploy-test-{secrets.token_hex(4)}",
            },
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        print(script.stdout.strip())
        R.check(script.returncode == 0, "helm test script passes", script.stderr.strip())

        # A heartbeat stream never ends by itself: it is what makes a drain last. Hold one open.
        stream = open_heartbeat(grpcurl, addr, Path(workdir))
        R.check(stream is not None, "a heartbeat stream is open (ALIVE received) before SIGTERM")

        # SIGTERM comes after the preStop sleep; the rest of the grace period is the server's.
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        budget = grace - pre_stop
        try:
            code = proc.wait(timeout=budget)
            took = time.monotonic() - started
            R.check(took <= budget, f"server exits {took:.1f}s after SIGTERM with a stream open (budget {budget}s)")
            R.check(code == 0, f"server exits 0 after SIGTERM, exit code {code}")
        except subprocess.TimeoutExpired:
            R.check(False, f"server still running {budget}s after SIGTERM: the kubelet would kill it")
    finally:
        for child in (proc, stream):
            if child is not None and child.poll() is None:
                child.kill()
                child.wait()
        psql(admin_url, f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"{R.passed} passed, {R.failed} failed")
    return 1 if R.failed else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: check_live.py HELM GRPCURL")
    sys.exit(main(sys.argv[1], sys.argv[2]))
