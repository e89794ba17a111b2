"""The CLI facing a misbehaving gateway or a signal, run as a user runs it (a subprocess).

Each test here failed before issue 11's fixes: a silent gateway held `ryla` for 121 s and exited
1; retries were silent; SIGINT/SIGTERM left ``.partial-*.tmp`` files; a job id went into the URL
unescaped.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._hang_servers import SilentPeer, closed_port
from tests._http_server import Answer, ScriptedServer, job_answer, json_answer
from tests.cli_helpers import ryla, ryla_env
from tests.conftest import simple_workflow

HANG_GUARD_S = 1.0
STARTUP_S = 3.0  # a Python process starting on a loaded machine


def workflow_file(tmp_path: Path) -> Path:
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(simple_workflow("cli-faults")))
    return path


def test_a_silent_gateway_ends_in_a_timeout_naming_the_phase(tmp_path: Path) -> None:
    """`ryla generate --cold-start-timeout 2` against a gateway that accepts and never answers:
    exit 124 naming the phase and the resume command (was: nothing for 121 s, then exit 1).
    The +1 s bound is a hang guard."""
    wf = workflow_file(tmp_path)
    with SilentPeer() as peer:
        env = ryla_env(tmp_path, RYLA_ENDPOINT=peer.url)
        started = time.monotonic()
        proc = ryla("generate", str(wf), "--cold-start-timeout", "2", env=env, cwd=tmp_path)
        took = time.monotonic() - started
    assert proc.returncode == 124, proc.stderr
    assert "submit ran out of time (the cold-start budget of 2s passed)" in proc.stderr
    assert "ryla jobs wait" in proc.stderr
    assert took < 2 + HANG_GUARD_S + STARTUP_S


def test_cli_shows_each_retry_on_stderr_and_as_json(tmp_path: Path) -> None:
    wf = workflow_file(tmp_path)
    env = ryla_env(tmp_path, RYLA_RETRIES="2")
    url = f"http://127.0.0.1:{closed_port()}"
    plain = ryla("generate", str(wf), "--endpoint", url, env=env, cwd=tmp_path)
    assert plain.returncode == 1
    shown = [line for line in plain.stderr.splitlines() if "retrying POST /jobs" in line]
    assert len(shown) == 2 and "attempt 1 of 3" in shown[0], plain.stderr

    as_json = ryla("generate", str(wf), "--endpoint", url, "--json", env=env, cwd=tmp_path)
    lines = [json.loads(line) for line in as_json.stdout.splitlines()]
    retries = [line for line in lines if line["type"] == "retry"]
    assert [r["attempt"] for r in retries] == [1, 2]
    assert {"delay_s", "cause", "job_id", "max_attempts"} <= set(retries[0])


# --------------------------------------------------------------------------- signals
SIZE = 64 * 1024 * 1024  # never sent in full: the stream is interrupted long before
PAYLOAD_SHA = hashlib.sha256(b"").hexdigest()  # a wrong checksum is never reached


@pytest.fixture
def slow_outputs() -> Iterator[ScriptedServer]:
    """Every job is done with one big output, served at a crawl."""
    stop = threading.Event()

    def crawl() -> Iterator[bytes]:
        for _ in range(SIZE // 4096):
            if stop.wait(0.05):
                return
            yield b"\0" * 4096

    def app(method: str, path: str, query: dict[str, list[str]], body: bytes) -> Answer:
        parts = path.strip("/").split("/")
        if method == "POST" and parts == ["jobs"]:
            return job_answer(json.loads(body)["job_id"], "queued", phase="waiting_for_gpu")
        if len(parts) == 4 and parts[2] == "outputs":
            headers = {"content-type": "image/png", "content-length": str(SIZE)}
            return 200, headers, crawl()
        output = {
            "index": 0,
            "node_id": "9",
            "filename": "big.png",
            "kind": "images",
            "mime": "image/png",
            "size": SIZE,
            "sha256": PAYLOAD_SHA,
        }
        return job_answer(parts[1], "succeeded", phase="done", outputs=[output])

    with ScriptedServer(app) as server:
        yield server
        stop.set()


@pytest.mark.parametrize(
    ("sig", "count"), [(signal.SIGINT, 2), (signal.SIGTERM, 1), (signal.SIGTERM, 2)]
)
def test_a_signal_mid_download_leaves_no_partial_files(
    slow_outputs: ScriptedServer, tmp_path: Path, sig: signal.Signals, count: int
) -> None:
    out = tmp_path / "out"
    env = ryla_env(tmp_path, RYLA_ENDPOINT=slow_outputs.url)
    child = subprocess.Popen(
        [sys.executable, "-m", "ryla_modal.cli", "jobs", "wait", "job-1", "--out", str(out)]
        if count == 1
        else [
            sys.executable,
            "-m",
            "ryla_modal.cli",
            "generate",
            str(workflow_file(tmp_path)),
            "--count",
            str(count),
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
        start_new_session=True,
    )
    try:
        for _ in range(300):  # until every download has its partial file (bounded: 30 s)
            if len(list(out.glob(".partial-*"))) >= count or child.poll() is not None:
                break
            time.sleep(0.1)
        assert len(list(out.glob(".partial-*"))) == count, child.communicate(timeout=5)
        child.send_signal(sig)
        _, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    assert child.returncode == 130, err
    assert list(out.glob(".partial-*")) == [], err
    assert "ryla jobs wait" in err


# --------------------------------------------------------------------------- job ids
def test_a_job_id_never_becomes_another_path(tmp_path: Path) -> None:
    with ScriptedServer(lambda method, path, query, body: json_answer({"status": "ok"})) as server:
        env = ryla_env(tmp_path, RYLA_ENDPOINT=server.url)
        proc = ryla("jobs", "status", "../../health", env=env, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "is not a job id" in proc.stderr
    assert server.requests == []  # nothing was sent, least of all GET /health
