"""The fault matrix of issue 11: one fault × one command or API call per row, over real sockets.

Every row asserts the same five promises:
- the call returns by its deadline (+1 s, a hang guard: the call runs in a thread we join);
- with the exit code or exception type the row names;
- nothing lost: every job the gateway accepted reaches a final state, with outputs or a named
  error;
- nothing run twice: the ComfyUI stand-in's own count of prompts per job id is at most one;
- no partial files in the output folder.

Network faults sit in a ``FaultProxy`` in front of a real gateway (uvicorn on 127.0.0.1, a
``LocalExecutor``, the ComfyUI stand-in launched by ``ComfyProcess``); process faults kill, stop
or mute real processes (the stand-in, ``ryla serve``, the ``ryla`` CLI).
"""

from __future__ import annotations

import email.utils
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from ryla_modal.client import RylaClient
from ryla_modal.errors import EndpointUnavailable, ExecutionError, RylaTimeout
from ryla_modal.gateway.store import JobStore
from ryla_modal.policy import RetryPolicy
from tests._hang_servers import closed_port
from tests.conftest import ComfyServer, simple_workflow, slow_workflow, stub_process, unique
from tests.fakes.fault_proxy import FaultProxy
from tests.gateway_fixtures import TOKEN, Gateway, running_gateway
from tests.test_serve_cli import Serve, launch_serve

__all__ = ["launch_serve"]  # the fixture, shared with test_serve_cli

REPO = Path(__file__).resolve().parent.parent
HANG_GUARD_S = 1.0
FAST = RetryPolicy(max_attempts=6, initial_delay_s=0.05, max_delay_s=0.3, retry_after_cap_s=5.0)
TERMINAL = {"succeeded", "failed", "cancelled"}


# --- the shared stack: one stand-in and one gateway per test module (per xdist worker) --------


@dataclass
class Stack:
    comfy: ComfyServer
    gateway: Gateway
    done_job: str  # a finished job with one output, for status and download rows


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("matrix")
    comfy = stub_process(root / "comfy")
    comfy.process.start(ready_timeout=20)
    try:
        with running_gateway(comfy, root / "work", workers=4) as gw:
            done = str(uuid.uuid4())
            with gw.client() as c:
                wf = simple_workflow(unique("matrix"))
                c.post("/jobs", json={"job_id": done, "workflow": wf}).raise_for_status()
                _wait_final(gw.store, done, 30)
            yield Stack(comfy, gw, done)
    finally:
        comfy.stop()


# --- one row's world ---------------------------------------------------------------------------


@dataclass
class World:
    """What a row's call sees, and what the checks look at afterwards."""

    endpoint: str
    out: Path
    comfy_url: str
    store: JobStore | None  # the gateway's store, read directly (not through the fault)
    proxy: FaultProxy | None = None
    job_ids: list[str] = field(default_factory=list)
    done_job: str = ""
    serve: Callable[..., Serve] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def client(self) -> RylaClient:
        return RylaClient(
            self.endpoint,
            token=TOKEN,
            retry_policy=FAST,
            cold_start_timeout=6,
            execution_timeout=6,
        )

    def new_job(self) -> str:
        job_id = str(uuid.uuid4())
        self.job_ids.append(job_id)
        return job_id


# --- calls -------------------------------------------------------------------------------------


def call_health(w: World, deadline: float) -> object:
    with w.client() as c:
        return c.health(timeout=deadline)


def call_status(w: World, deadline: float) -> object:
    with w.client() as c:
        return c.status(w.done_job, timeout=deadline)


def call_submit(w: World, deadline: float) -> object:
    job_id = w.new_job()
    with w.client() as c:
        return c.submit(simple_workflow(unique("mx")), job_id=job_id, timeout=deadline)


def call_generate(w: World, deadline: float) -> object:
    job_id = w.new_job()
    with w.client() as c:
        return c.generate(
            simple_workflow(unique("mx")), job_id=job_id, out_dir=w.out, timeout=deadline
        )


def call_slow_generate(w: World, deadline: float) -> object:
    job_id = w.new_job()
    wf = slow_workflow("stub", unique("mx"), steps=10, step_seconds=0.1)
    with w.client() as c:
        return c.generate(wf, job_id=job_id, out_dir=w.out, timeout=deadline)


def call_download(w: World, deadline: float) -> object:
    with w.client() as c:
        job = c.status(w.done_job)
        return c.download(job, w.out, timeout=deadline)


def call_wait(w: World, deadline: float) -> object:
    """Wait for the job the fault set up (it was submitted before the fault struck)."""
    with RylaClient(w.endpoint, token=TOKEN, cold_start_timeout=20, execution_timeout=20) as c:
        return c.wait(w.extra["job_id"])


# --- network faults (a FaultProxy in front of the shared gateway) ------------------------------


def _http_date(seconds_ahead: float) -> str:
    return email.utils.formatdate(time.time() + seconds_ahead, usegmt=True)


def arm(*args: Any, **kw: Any) -> Callable[[World], None]:
    def go(w: World) -> None:
        assert w.proxy is not None
        w.proxy.arm(*args, **kw)

    return go


def refused(w: World) -> None:
    w.endpoint = f"http://127.0.0.1:{closed_port()}"


def reset_connects(n: int) -> Callable[[World], None]:
    def go(w: World) -> None:
        assert w.proxy is not None
        w.proxy.reset_connects(n)

    return go


def nothing(w: World) -> None:
    return None


JOB = r"/jobs/[^/]+"
OUTPUT = r"/jobs/[^/]+/outputs/\d+"


@dataclass(frozen=True)
class Row:
    id: str
    fault: Callable[[World], None]
    call: Callable[[World, float], object]
    raises: type[BaseException] | None  # None: the call succeeds
    deadline: float = 4.0


NET_ROWS = [
    Row("refused x health", refused, call_health, EndpointUnavailable),
    Row("refused x generate", refused, call_generate, EndpointUnavailable),
    Row("silence x health", arm("GET", "/health", "silence"), call_health, RylaTimeout, 2.0),
    Row("silence x submit", arm("POST", "/jobs", "silence"), call_submit, RylaTimeout, 2.0),
    Row("trickle x status", arm("GET", JOB, "trickle", delay_s=0.2), call_status, RylaTimeout,
        2.0),
    Row("trickle x download", arm("GET", OUTPUT, "trickle", delay_s=0.2), call_download,
        RylaTimeout, 2.0),
    Row("headers then silence x health", arm("GET", "/health", "headers_then_silence"),
        call_health, RylaTimeout, 2.0),
    Row("headers then silence x download", arm("GET", OUTPUT, "headers_then_silence"),
        call_download, RylaTimeout, 2.0),
    Row("reset before the request x generate", reset_connects(2), call_generate, None),
    Row("reset before forwarding x submit", arm("POST", "/jobs", "reset", times=2), call_submit,
        None),
    Row("reset after the request x generate", arm("POST", "/jobs", "drop_response"),
        call_generate, None),
    Row("reset mid-download x download", arm("GET", OUTPUT, "reset_mid_body"), call_download,
        None),
    Row("502 burst x generate", arm("POST", "/jobs", "status", status=502, times=3),
        call_generate, None),
    Row("503 burst x status", arm("GET", JOB, "status", status=503, times=3), call_status, None),
    Row("504 burst x download", arm("GET", OUTPUT, "status", status=504, times=3), call_download,
        None),
    Row("503 forever x health", arm("GET", "/health", "status", status=503, times=99),
        call_health, EndpointUnavailable),
    Row("429 Retry-After seconds x submit",
        arm("POST", "/jobs", "status", status=429, retry_after="1"), call_submit, None),
    Row("429 Retry-After date x health",
        lambda w: arm("GET", "/health", "status", status=429, retry_after=_http_date(1))(w),
        call_health, None),
    Row("429 Retry-After absurd x health",
        arm("GET", "/health", "status", status=429, retry_after="999999", times=99),
        call_health, EndpointUnavailable),
    Row("303 chain x generate", arm("POST", "/jobs", "redirect", hops=4), call_generate, None),
    Row("303 loop x health", arm("GET", "/health", "redirect_loop", times=99), call_health,
        EndpointUnavailable),
    Row("truncated JSON x status", arm("GET", JOB, "truncate_json"), call_status,
        EndpointUnavailable),
    Row("HTML error page x generate", arm("POST", "/jobs", "html", status=502, times=2),
        call_generate, None),
    Row("HTML error page forever x health", arm("GET", "/health", "html", status=502, times=99),
        call_health, EndpointUnavailable),
]  # fmt: skip


def _param(row: Row) -> Any:
    return pytest.param(row, id=row.id)


@pytest.mark.parametrize("row", [_param(r) for r in NET_ROWS])
def test_network_fault(row: Row, stack: Stack, tmp_path: Path) -> None:
    with FaultProxy(int(stack.gateway.url.rsplit(":", 1)[1])) as proxy:
        world = World(
            endpoint=proxy.url,
            out=tmp_path / "out",
            comfy_url=stack.comfy.base_url,
            store=stack.gateway.store,
            proxy=proxy,
            done_job=stack.done_job,
        )
        row.fault(world)
        run_row(row, world)


# --- process faults ----------------------------------------------------------------------------


def _fake(comfy_url: str, fault: str, after_node: int = 1) -> None:
    httpx.post(
        f"{comfy_url}/_fake/fault", json={"fault": fault, "after_node": after_node}, timeout=10
    ).raise_for_status()


def _stopped_for(pid: int, seconds: float) -> None:
    os.kill(pid, signal.SIGSTOP)
    timer = threading.Timer(seconds, os.kill, args=(pid, signal.SIGCONT))
    timer.daemon = True
    timer.start()


@dataclass(frozen=True)
class ProcRow:
    id: str
    setup: Callable[[World, ComfyServer], None]
    call: Callable[[World, float], object]
    raises: type[BaseException] | None
    deadline: float = 10.0
    needs: str | None = None


def comfy_killed(w: World, comfy: ComfyServer) -> None:
    _fake(comfy.base_url, "die", after_node=1)


def comfy_stopped(w: World, comfy: ComfyServer) -> None:
    assert comfy.process.pid is not None
    _stopped_for(comfy.process.pid, 2.0)


def ws_dropped(w: World, comfy: ComfyServer) -> None:
    _fake(comfy.base_url, "drop-socket", after_node=1)


def ws_muted(w: World, comfy: ComfyServer) -> None:
    _fake(comfy.base_url, "mute-socket", after_node=1)


PROC_ROWS = [
    ProcRow("ComfyUI killed mid-job x generate", comfy_killed, call_slow_generate, ExecutionError),
    ProcRow("ComfyUI stopped (SIGSTOP) x generate", comfy_stopped, call_generate, None),
    ProcRow("ComfyUI websocket dropped x generate", ws_dropped, call_slow_generate, None),
    ProcRow("ComfyUI websocket silent, history advances x generate", ws_muted,
            call_slow_generate, None),
]  # fmt: skip


@pytest.mark.parametrize("row", [pytest.param(r, id=r.id) for r in PROC_ROWS])
def test_comfyui_fault(row: ProcRow, tmp_path: Path) -> None:
    comfy = stub_process(tmp_path / "comfy")
    comfy.process.start(ready_timeout=20)
    try:
        with running_gateway(comfy, tmp_path / "work", workers=2) as gw:
            world = World(
                endpoint=gw.url, out=tmp_path / "out", comfy_url=comfy.base_url, store=gw.store
            )
            row.setup(world, comfy)
            run_row(row, world, comfy_alive=row.setup is not comfy_killed)
    finally:
        comfy.stop()


# --- the gateway killed or stopped mid-job: the client rides through the restart -------------


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_gateway_killed_mid_job_re_adopts(
    sig: signal.Signals,
    launch_serve: Callable[..., Serve],
    tmp_path: Path,
) -> None:
    comfy = stub_process(tmp_path / "comfy")
    comfy.process.start(ready_timeout=20)
    try:
        data = tmp_path / "data"
        first = launch_serve(data, "--comfyui-url", comfy.base_url)
        port = first.url.rsplit(":", 1)[1]
        world = World(
            endpoint=first.url, out=tmp_path / "out", comfy_url=comfy.base_url, store=None
        )
        job_id = world.new_job()
        world.extra["job_id"] = job_id
        with first.client() as c:
            wf = slow_workflow("stub", unique("gw"), steps=20, step_seconds=0.1)
            assert c.post("/jobs", json={"job_id": job_id, "workflow": wf}).status_code == 202

        def restart() -> None:
            time.sleep(0.5)
            os.killpg(first.proc.pid, sig) if sig == signal.SIGKILL else first.proc.send_signal(sig)
            first.proc.wait(timeout=15)
            launch_serve(data, "--comfyui-url", comfy.base_url, "--port", port)

        killer = threading.Thread(target=restart)
        killer.start()
        row = Row(f"gateway {sig.name} mid-job x wait", nothing, call_wait, None, deadline=20)
        run_row(row, world)
        killer.join(20)
    finally:
        comfy.stop()


# --- the CLI: disk full, Ctrl-C and SIGTERM mid-download ---------------------------------------


def _cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RYLA_", "MODAL_"))}
    env.update({"RYLA_CONFIG_DIR": str(tmp_path / "cfg"), "RYLA_TOKEN": TOKEN})
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _small_files() -> None:
    """In the child: writes past 64 bytes fail with EFBIG (SIGXFSZ ignored), like a full disk."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("disk full while saving", 1),
        ("Ctrl-C mid-download", 130),
        ("SIGTERM mid-download", 130),  # SIGTERM is taken as Ctrl-C: interrupted, cleaned up
    ],
)
def test_cli_fault(case: str, code: int, stack: Stack, tmp_path: Path) -> None:
    with FaultProxy(int(stack.gateway.url.rsplit(":", 1)[1])) as proxy:
        world = World(
            endpoint=proxy.url,
            out=tmp_path / "out",
            comfy_url=stack.comfy.base_url,
            store=stack.gateway.store,
            proxy=proxy,
        )
        wf_path = tmp_path / "wf.json"
        wf = simple_workflow(unique("cli"))
        if case != "disk full while saving":
            proxy.arm("GET", OUTPUT, "trickle", delay_s=0.02)
        wf_path.write_text(json.dumps(wf))
        argv = [sys.executable, "-m", "ryla_modal.cli", "generate", str(wf_path)]
        argv += ["--endpoint", proxy.url, "--out", str(world.out), "--json"]
        argv += ["--execution-timeout", "20", "--cold-start-timeout", "20"]

        def run_cli(w: World, deadline: float) -> object:
            proc = subprocess.Popen(
                argv,
                env=_cli_env(tmp_path),
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                preexec_fn=_small_files if case == "disk full while saving" else None,
            )
            if case != "disk full while saving":
                _wait_for(
                    lambda: (
                        any(what == "trickle" for _, _, what in proxy.log.seen)
                        or proc.poll() is not None
                    ),
                    15,
                )
                assert proc.poll() is None, (proc.returncode, proc.communicate())
                time.sleep(0.3)  # some bytes are on disk now
                proc.send_signal(signal.SIGINT if "Ctrl-C" in case else signal.SIGTERM)
            try:
                out, err = proc.communicate(timeout=deadline)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            for line in out.splitlines():
                event = json.loads(line)
                if event.get("type") == "submitted":
                    w.job_ids.append(event["job_id"])
            return proc.returncode, err

        row = Row(case, nothing, run_cli, None, deadline=25)
        result = run_row(row, world)
        assert isinstance(result, tuple)
        returncode, err = result
        assert returncode == code, err
        if case == "disk full while saving":
            assert "File too large" in err, err  # EFBIG, said as the OS says it


# --- the checks every row makes ----------------------------------------------------------------


def _wait_for(cond: Callable[[], bool], within: float) -> None:
    deadline = time.monotonic() + within
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def _wait_final(store: JobStore, job_id: str, within: float) -> None:
    def final() -> bool:
        record = store.get(job_id)
        return record is None or record.status in TERMINAL

    _wait_for(final, within)


def run_row(row: Row | ProcRow, world: World, *, comfy_alive: bool = True) -> object:
    """Run the row's call under the hang guard, then check the five promises."""
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["value"] = row.call(world, row.deadline)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(row.deadline + HANG_GUARD_S)
    assert not thread.is_alive(), f"{row.id}: still running {row.deadline + HANG_GUARD_S:g} s on"
    error = outcome.get("error")
    if row.raises is None:
        assert error is None, f"{row.id}: {error!r}"
    else:
        assert isinstance(error, row.raises), f"{row.id}: {error!r}, not {row.raises.__name__}"
        assert str(error), "an error says what happened"

    # Nothing lost: every job the gateway holds ends final, with outputs or a named error.
    if world.store is not None:
        for job_id in world.job_ids:
            _wait_final(world.store, job_id, 30)
            record = world.store.get(job_id)
            if record is None:
                continue  # never accepted (refused, reset before the request)
            if record.status == "succeeded":
                assert record.outputs, record
            else:
                assert record.error is not None and record.error.type, record
    # Nothing run twice: ComfyUI's own count.
    if comfy_alive and world.job_ids:
        ids = httpx.get(f"{world.comfy_url}/_fake/stats", timeout=10).json()["prompt_ids"]
        for job_id in world.job_ids:
            assert ids.count(job_id) <= 1, f"{job_id} ran {ids.count(job_id)} times"
    # No partial files.
    if world.out.exists():
        stray = [p.name for p in world.out.rglob("*") if ".partial" in p.name or p.suffix == ".tmp"]
        assert not stray, stray
    return outcome.get("value")


def test_the_matrix_has_at_least_30_rows() -> None:
    rows = len(NET_ROWS) + len(PROC_ROWS) + 2 + 3
    assert rows >= 30, rows
