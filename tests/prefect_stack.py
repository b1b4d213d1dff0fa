"""Test helper: a real `prefect server` on 127.0.0.1 (private PREFECT_HOME, free port) and a
`compress-distill serve` process registered against it, plus small REST helpers.

The deployment, browser, cancellation and GPU-limit tests share ONE such stack per pytest
session (`shared_stack`): starting the server and serve is the dearest part of these tests.
Everything is started as its own process group and stopped by pid; logs go to files in the
stack's directory.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from compress_distill.config import load_config
from compress_distill.plan import build_plan
from compress_distill.selection import nodes_for_selection

from .support import SKELETON_ENV

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
# These tests are about orchestration: the stand-in stages (tables with the real schemas, no
# model) keep a mini run at seconds; the real stages have their own tests.
SKELETON = SKELETON_ENV  # the stand-ins, importable in the serve process and its jobs (support/)


def job_nodes(config: Path, select: Mapping[str, str]) -> set[str]:
    """The nodes of a selection that run as jobs (one submission each on a first run)."""
    plan = build_plan(load_config(config))
    return {n for n in nodes_for_selection(plan, select) if plan.nodes[n].job.kind != "cpu"}


def selected_nodes(config: Path, select: Mapping[str, str]) -> list[str]:
    return nodes_for_selection(build_plan(load_config(config)), select)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGINT)  # serve pauses schedules and exits on Ctrl-C
        proc.wait(grace)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


@dataclass
class Stack:
    home: Path
    port: int
    env: dict[str, str]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def ui(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ processes

    def start_server(self, timeout: float = 240.0) -> None:
        log = open(self.home / "server.log", "ab")  # noqa: SIM115 - lives as long as the process
        proc = subprocess.Popen(
            [str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=self.home, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"prefect server exited {proc.returncode}: {self.tail('server.log')}")
            try:
                if httpx.get(f"{self.api}/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise TimeoutError(f"prefect server not healthy after {timeout:g}s: {self.tail('server.log')}")

    def start_serve(self, *args: str, env: Mapping[str, str] | None = None, expect: int = 4,
                    timeout: float = 180.0) -> subprocess.Popen[bytes]:
        log = open(self.home / "serve.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen([str(VENV_BIN / "compress-distill"), "serve", *args], cwd=REPO,
                                env={**self.env, **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append(proc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"serve exited {proc.returncode}: {self.tail('serve.log')}")
            if len(self.deployments()) >= expect and "polling" in self.tail("serve.log", 20000):
                return proc
            time.sleep(1)
        raise TimeoutError(f"deployments not served after {timeout:g}s: {self.tail('serve.log')}")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            _stop(proc)

    def tail(self, name: str, chars: int = 4000) -> str:
        try:
            return (self.home / name).read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # ------------------------------------------------------------------ REST

    def _request(self, method: str, path: str, body: Any = None, attempts: int = 6) -> Any:
        """One REST call. A 503 is SQLite's "database is locked" on a busy box (the transaction was
        rolled back), so it is retried with backoff, as Prefect's own client does."""
        for i in range(attempts):
            try:
                r = httpx.request(method, f"{self.api}{path}", json=body, timeout=30)
            except httpx.TimeoutException:
                # a busy SQLite server can stall one answer past 30 s (seen once in CI, late in the
                # suite); a read is safe to ask again, a write is not (it may have been done)
                if method != "GET" or i == attempts - 1:
                    raise
                time.sleep(0.5 * 2**i)
                continue
            if r.status_code not in (502, 503) or i == attempts - 1:
                break
            time.sleep(0.5 * 2**i)
        r.raise_for_status()
        return r.json() if r.content else None

    def post(self, path: str, body: Any = None) -> Any:
        return self._request("POST", path, body if body is not None else {})

    def get(self, path: str) -> Any:
        return self._request("GET", path)

    def deployments(self) -> dict[str, dict[str, Any]]:
        """'grid/<name>' -> deployment."""
        try:
            deps = self.post("/deployments/filter", {})
        except httpx.HTTPError:
            return {}
        flows = {f["id"]: f["name"] for f in self.post("/flows/filter", {})} if deps else {}
        return {f"{flows.get(d['flow_id'], '?')}/{d['name']}": d for d in deps}

    def trigger(self, deployment: str, params: Mapping[str, Any] | None = None) -> str:
        dep = self.deployments()[deployment]
        body: dict[str, Any] = {}
        if params is not None:
            merged = {**dep["parameters"].get("params", {}), **params}
            body["parameters"] = {"params": merged}
        return str(self.post(f"/deployments/{dep['id']}/create_flow_run", body)["id"])

    def flow_run(self, run_id: str) -> dict[str, Any]:
        return self.get(f"/flow_runs/{run_id}")  # type: ignore[no-any-return]

    def wait_final(self, run_id: str, timeout: float = 600.0) -> dict[str, Any]:
        return self.wait_state(run_id, set(FINAL), timeout, poll_s=2.0)

    def wait_state(self, run_id: str, states: set[str], timeout: float = 300.0,
                   poll_s: float = 1.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.flow_run(run_id)
            if run["state_type"] in states:
                return run
            time.sleep(poll_s)
        raise TimeoutError(f"flow run {run_id} never reached {sorted(states)} in {timeout:g}s "
                           f"(state {self.flow_run(run_id)['state_type']}): {self.tail('serve.log')}")

    def artifacts(self, run_id: str) -> dict[str, dict[str, Any]]:
        arts = self.post("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}})
        return {a["key"]: a for a in arts if a.get("key")}

    def limits(self) -> dict[str, int]:
        return {c["name"]: c["limit"] for c in self.post("/v2/concurrency_limits/filter", {"limit": 200})}


def make_stack(home: Path, extra_env: Mapping[str, str] | None = None) -> Stack:
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({
        "PREFECT_HOME": str(home / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),  # the UI asks this port, not 4200
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",  # the cron test need not wait a minute
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",  # serve picks a triggered run up within a second, not 10
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "PREFECT_UI_SHOW_PROMOTIONAL_CONTENT": "false",
        **SKELETON,
        **(extra_env or {}),
    })
    return Stack(home, port, env)


def run_jobs(store: Path, run_id: str) -> list[dict[str, Any]]:
    """The job submissions a flow run recorded in the store (flows/runlog.py)."""
    path = store / ".runs" / run_id / "jobs.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------------- the shared stack

SHARED_TZ = "Europe/Paris"
SHARED_SELECT = {"student": "tiny", "method": "lora"}  # grid/mini's --mini-select in the shared stack


@dataclass
class Shared:
    """The session's server + serve. grid/mini runs on `store` unless a test passes its own
    store_root; `inject` is the serve process's COMPRESS_DISTILL_INJECT_JOBS file (@FILE)."""

    stack: Stack
    store: Path
    inject: Path

    def reset(self) -> None:
        """A fresh default store and no injection: what every test that uses them starts from."""
        self.inject.write_text("")
        if self.store.exists():
            shutil.rmtree(self.store)


_shared: dict[str, Any] = {}


def shared_stack(tmp_path_factory: Any, config: Any) -> Shared:
    """Start the stack on first use (stopped at the end of the session); later calls reuse it.
    A failed start is remembered, so later modules fail at once instead of waiting again."""
    if "error" in _shared:
        raise RuntimeError(f"the shared Prefect stack failed to start: {_shared['error']}")
    if "stack" not in _shared:
        home = tmp_path_factory.mktemp("stack")
        inject = home / "inject-jobs.txt"
        inject.write_text("")
        s = make_stack(home)
        config.add_cleanup(s.stop)
        try:
            s.start_server()
            s.start_serve("--store", str(home / "store"), "--timezone", SHARED_TZ,
                          *[a for k, v in SHARED_SELECT.items() for a in ("--mini-select", f"{k}={v}")],
                          env={"COMPRESS_DISTILL_INJECT_JOBS": f"@{inject}"})
        except BaseException as err:
            _shared["error"] = f"{type(err).__name__}: {err}"
            s.stop()
            raise
        _shared["stack"] = Shared(s, home / "store", inject)
    shared: Shared = _shared["stack"]
    return shared


def task_runs(stack: Stack, run_id: str) -> list[dict[str, Any]]:
    return stack.post("/task_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}})  # type: ignore[no-any-return]
