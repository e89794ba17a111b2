"""`ryla serve` as a real subprocess in front of the ComfyUI stand-in: start, stop, restart."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from ryla_modal.gateway.store import SQLiteJobStore
from tests._pids import pid_alive, wait_dead
from tests.conftest import ComfyServer, simple_workflow, slow_workflow, unique
from tests.fakes.comfyui_command import fake_comfyui_command
from tests.gateway_fixtures import TOKEN, sha256, wait_job

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 30.0


@dataclass
class Serve:
    proc: subprocess.Popen[str]
    url: str
    comfy_pid: int | None
    lines: list[str] = field(default_factory=list)

    def client(self, token: str | None = TOKEN) -> httpx.Client:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=40, trust_env=False)

    def stderr(self) -> str:
        return "\n".join(self.lines)

    def comfy_url(self) -> str:
        for line in self.lines:
            m = re.search(r"ComfyUI ready at (\S+)", line)
            if m:
                return m.group(1)
        raise AssertionError("no ComfyUI URL in the log:\n" + self.stderr())


def _env(token: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RYLA_TOKEN"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if token:
        env["RYLA_TOKEN"] = token
    return env


@pytest.fixture
def launch_serve(tmp_path: Path) -> Iterator[Callable[..., Serve]]:
    """Start `ryla serve` subprocesses; at the end every one of them and its ComfyUI is gone."""
    started: list[Serve] = []

    def launch(data_dir: Path, *extra: str, token: str | None = TOKEN) -> Serve:
        comfy_root = tmp_path / f"comfy{len(started)}"
        comfy_args = []
        for flag in ("--output-directory", "--input-directory", "--temp-directory"):
            folder = comfy_root / flag.strip("-").split("-")[0]
            folder.mkdir(parents=True, exist_ok=True)
            comfy_args += [f"--comfyui-arg={flag}", f"--comfyui-arg={folder}"]
        source = ["--comfyui-command", shlex.join(fake_comfyui_command()), *comfy_args]
        if "--comfyui-url" in extra:
            source = []
        argv = [sys.executable, "-m", "ryla_modal.cli", "serve", *source, "--port", "0"]
        argv += ["--data-dir", str(data_dir), *extra]
        proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env=_env(token),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        serve = Serve(proc, "", None)
        started.append(serve)
        ready = threading.Event()

        def pump() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                serve.lines.append(line.rstrip("\n"))
                m = re.search(r"listening on (http://\S+)", line)
                if m:
                    serve.url = m.group(1)
                    ready.set()
                m = re.search(r"\(pid (\d+)\)", line)
                if m:
                    serve.comfy_pid = int(m.group(1))
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        ready.wait(START_TIMEOUT_S)
        assert serve.url, f"ryla serve did not start:\n{serve.stderr()}"
        return serve

    try:
        yield launch
    finally:
        for s in started:
            if s.proc.poll() is None:
                with _suppress():
                    os.killpg(s.proc.pid, signal.SIGKILL)
            s.proc.wait(timeout=10)
            if s.comfy_pid and pid_alive(s.comfy_pid):
                with _suppress():
                    os.killpg(s.comfy_pid, signal.SIGKILL)
            assert not wait_dead([p for p in (s.comfy_pid,) if p], within=5)


def _suppress() -> contextlib.AbstractContextManager[None]:
    return contextlib.suppress(ProcessLookupError, PermissionError)


def _wait_running(c: httpx.Client, job_id: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        job = c.get(f"/jobs/{job_id}", params={"wait": 2}).json()
        if job["status"] == "running" and (job["progress"] or {}).get("step"):
            return
        assert job["status"] in {"queued", "running"}, job
        assert time.monotonic() < deadline, job


def test_restart_mid_job_keeps_records_and_says_what_happened(
    launch_serve: Callable[..., Serve], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    first = launch_serve(data)
    with first.client() as c:
        done_id, slow_id = str(uuid.uuid4()), str(uuid.uuid4())
        assert c.post("/jobs", json={"job_id": done_id, "workflow": simple_workflow(unique("a"))})
        done = wait_job(c, done_id)
        assert done["status"] == "succeeded"
        body = c.get(f"/jobs/{done_id}/outputs/0").content
        slow = slow_workflow("stub", unique("slow"), steps=400, step_seconds=0.05)
        assert c.post("/jobs", json={"job_id": slow_id, "workflow": slow}).status_code == 202
        _wait_running(c, slow_id)

    os.killpg(first.proc.pid, signal.SIGKILL)  # a crash: no cleanup at all
    first.proc.wait(timeout=10)
    assert first.comfy_pid is not None
    assert not wait_dead([first.comfy_pid], within=5), "ComfyUI outlived a SIGKILLed serve"

    second = launch_serve(data)
    with second.client() as c:
        job = c.get(f"/jobs/{slow_id}").json()
        assert job["status"] == "failed"
        assert job["error"]["type"] == "server_restarted"
        assert "restarted while this job was running" in job["error"]["message"]
        assert "new job_id" in job["error"]["message"]
        # The finished job and its file survived.
        assert c.get(f"/jobs/{done_id}").json() == done
        resp = c.get(f"/jobs/{done_id}/outputs/0")
        assert resp.content == body and resp.headers["x-sha256"] == sha256(body)
        # Posting the same job again does not run it again.
        again = c.post("/jobs", json={"job_id": slow_id, "workflow": slow})
        assert again.status_code == 200 and again.json()["status"] == "failed"
        stats = httpx.get(f"{second.comfy_url()}/_fake/stats", timeout=10).json()
        assert stats["prompts_received"] == 0
    assert f"job {slow_id} failed: server_restarted" in second.stderr()


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_stop_signal_interrupts_jobs_and_stops_comfyui(
    launch_serve: Callable[..., Serve], tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    data = tmp_path / "data"
    serve = launch_serve(data)
    job_id = str(uuid.uuid4())
    with serve.client() as c:
        slow = slow_workflow("stub", unique("stop"), steps=400, step_seconds=0.05)
        assert c.post("/jobs", json={"job_id": job_id, "workflow": slow}).status_code == 202
        _wait_running(c, job_id)
    assert serve.comfy_pid is not None and pid_alive(serve.comfy_pid)

    os.kill(serve.proc.pid, sig)
    assert serve.proc.wait(timeout=30) == code, serve.stderr()
    assert not wait_dead([serve.comfy_pid], within=5), "ComfyUI outlived ryla serve"

    store = SQLiteJobStore(data)
    try:
        record = store.get(job_id)
    finally:
        store.close()
    assert record is not None and record.status == "failed"
    assert record.error is not None and record.error.type == "server_stopped"
    assert "stopped while this job was running" in record.error.message
    log = serve.stderr()
    assert f"job {job_id} queued" in log and f"job {job_id} running" in log
    assert f"job {job_id} failed: server_stopped" in log
    assert TOKEN not in log


def test_token_is_required_and_never_logged(
    launch_serve: Callable[..., Serve], tmp_path: Path
) -> None:
    serve = launch_serve(tmp_path / "data")
    with serve.client(token=None) as anon:
        assert anon.get("/health").status_code == 401
    with serve.client() as c:
        assert c.get("/health").json() == {
            "status": "ok",
            "version": _version(),
            "executor": "local",
            "comfyui": "ok",
            "comfyui_restarts": 0,
        }
    assert TOKEN not in serve.stderr()


def test_comfyui_url_mode_uses_a_running_comfyui(
    launch_serve: Callable[..., Serve], launch_stub: Callable[..., ComfyServer], tmp_path: Path
) -> None:
    comfy = launch_stub()
    serve = launch_serve(tmp_path / "data", "--comfyui-url", comfy.base_url, token=None)
    with serve.client(token=None) as c:
        job_id = c.post("/jobs", json={"workflow": simple_workflow(unique("url"))}).json()["job_id"]
        assert wait_job(c, job_id)["status"] == "succeeded"
    serve.proc.send_signal(signal.SIGTERM)
    assert serve.proc.wait(timeout=30) == 143
    assert comfy.process.returncode is None  # not ours to stop


def test_a_header_flood_is_refused_and_serve_goes_on(
    launch_serve: Callable[..., Serve], launch_stub: Callable[..., ComfyServer], tmp_path: Path
) -> None:
    """serve parses HTTP with h11, whose 16 KiB bound on a request head refuses a flood of
    headers; uvicorn's "auto" would take httptools when it is installed, which has no bound."""
    comfy = launch_stub()
    serve = launch_serve(tmp_path / "data", "--comfyui-url", comfy.base_url)
    host, port = httpx.URL(serve.url).host, httpx.URL(serve.url).port
    assert port is not None
    with socket.create_connection((host, port), timeout=10) as conn:
        conn.settimeout(10)
        flood = b"x-pad: " + b"a" * 8000 + b"\r\n"
        head = b"GET /health HTTP/1.1\r\nhost: " + host.encode() + b"\r\n"
        answer = b""
        with contextlib.suppress(OSError):  # it may close before the whole flood is sent
            conn.sendall(head + flood * 8)  # 64 KiB of headers, never ended
        deadline = time.monotonic() + 10
        while b"\r\n\r\n" not in answer:
            assert time.monotonic() < deadline, answer
            try:
                chunk = conn.recv(4096)
            except OSError:
                break
            if not chunk:
                break
            answer += chunk
    assert answer.split(b" ", 2)[1:2] in ([b"400"], [b"431"]), answer[:200]
    with serve.client() as c:
        assert c.get("/health").status_code == 200


def _run(*args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ryla_modal.cli", "serve", *args],
        cwd=REPO,
        env=_env(token),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_refuses_a_public_address_without_a_token(tmp_path: Path) -> None:
    r = _run(
        "--host", "0.0.0.0", "--comfyui-url", "http://127.0.0.1:9", "--data-dir", str(tmp_path)
    )
    assert r.returncode == 2
    assert "refusing to listen on 0.0.0.0 without a token" in r.stderr
    assert "RYLA_TOKEN" in r.stderr
    assert not (tmp_path / "jobs.sqlite3").exists()  # refused before touching anything


def test_usage_errors(tmp_path: Path) -> None:
    r = _run("--data-dir", str(tmp_path))
    assert r.returncode == 2 and "exactly one of --comfyui-dir" in r.stderr
    r = _run("--comfyui-url", "http://127.0.0.1:9", "--comfyui-arg=--cpu")
    assert r.returncode == 2 and "--comfyui-arg" in r.stderr
    r = _run("--comfyui-dir", str(tmp_path), "--data-dir", str(tmp_path / "d"), "--port", "0")
    assert r.returncode == 5 and "not a ComfyUI checkout" in r.stderr


def test_unreachable_comfyui_url_is_a_clear_error(tmp_path: Path) -> None:
    r = _run("--comfyui-url", "http://127.0.0.1:9", "--data-dir", str(tmp_path), "--port", "0")
    assert r.returncode == 1
    assert "no ComfyUI answers at http://127.0.0.1:9" in r.stderr


def _version() -> str:
    from ryla_modal import __version__

    return __version__


def test_allow_private_urls_lets_local_inputs_by_url_through(
    launch_serve: Callable[..., Serve], tmp_path: Path
) -> None:
    """By default a loopback URL is refused at submit; `--allow-private-urls` fetches it."""
    from tests._file_server import file_server
    from tests.gateway_fixtures import load_image_workflow, png_bytes

    name = f"{unique('srvurl')}.png"
    strict = launch_serve(tmp_path / "strict")
    allowing = launch_serve(tmp_path / "allowing", "--allow-private-urls")
    with file_server() as files, strict.client() as sc, allowing.client() as ac:
        files.files[name] = png_bytes(size=5)
        body = {
            "workflow": load_image_workflow(name, unique("srvurl")),
            "inputs": [{"name": name, "url": files.url(f"/files/{name}")}],
        }
        refused = sc.post("/jobs", json=body)
        assert refused.status_code == 422
        assert refused.json()["error"]["type"] == "input_url_refused"
        accepted = ac.post("/jobs", json=body)
        assert accepted.status_code == 202, accepted.text
        job = wait_job(ac, accepted.json()["job_id"])
        assert job["status"] == "succeeded", job
        assert files.hits[f"/files/{name}"] == 1
