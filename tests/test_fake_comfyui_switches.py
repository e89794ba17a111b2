"""The stand-in's own switches: flags, start-up, fault switches, counters and the slow node.

The protocol itself is compared with the real server's transcripts in
``test_fake_comfyui_vs_transcripts.py``; these tests pin what other tests build on.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ComfyServer, simple_workflow, slow_workflow, unique
from tests.fakes.comfyui_command import fake_comfyui_command
from tests.fakes.ws_recorder import Message, WsRecorder

Launch = Callable[..., ComfyServer]
T = httpx.Timeout(10.0)


def submit(server: ComfyServer, prompt: dict[str, Any], client_id: str) -> str:
    resp = httpx.post(
        f"{server.base_url}/prompt", json={"prompt": prompt, "client_id": client_id}, timeout=T
    )
    assert resp.status_code == 200, resp.text
    prompt_id: str = resp.json()["prompt_id"]
    return prompt_id


def arm(server: ComfyServer, fault: str, after_node: int = 1) -> None:
    resp = httpx.post(
        f"{server.base_url}/_fake/fault", json={"fault": fault, "after_node": after_node}, timeout=T
    )
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"fault": fault, "after_node": after_node}


def is_end(prompt_id: str) -> Callable[[Message], bool]:
    return lambda m: (
        m["type"] == "executing" and m["data"] == {"node": None, "prompt_id": prompt_id}
    )


def history(server: ComfyServer, prompt_id: str) -> dict[str, Any]:
    data: dict[str, Any] = httpx.get(f"{server.base_url}/history/{prompt_id}", timeout=T).json()
    return data


def wait_history(server: ComfyServer, prompt_id: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = history(server, prompt_id)
        if prompt_id in entry:
            return entry[prompt_id]  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"{prompt_id} not in history after {timeout} s")


@dataclass
class Direct:
    proc: subprocess.Popen[bytes]
    log: Path


@pytest.fixture
def run_direct(tmp_path: Path) -> Iterator[Callable[..., Direct]]:
    """Start the stand-in without our launcher (to see its own exit status and output)."""
    started: list[Direct] = []

    def start(*args: str) -> Direct:
        log = tmp_path / f"direct{len(started)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                fake_comfyui_command(*args, "--output-directory", str(tmp_path / "out")),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        started.append(Direct(proc, log))
        return started[-1]

    try:
        yield start
    finally:
        for direct in started:
            if direct.proc.poll() is None:
                os.killpg(direct.proc.pid, signal.SIGKILL)
            direct.proc.wait(timeout=5)


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# --- start-up and flags ----------------------------------------------------------------------


def test_real_comfyui_flags_are_accepted_and_metadata_can_be_disabled(launch_stub: Launch) -> None:
    plain = launch_stub("--cpu", "--disable-auto-launch", "--preview-method", "auto")
    bare = launch_stub("--cpu", "--disable-metadata")
    log = plain.process.log_tail(200)
    assert f"To see the GUI go to: http://127.0.0.1:{plain.process.port}" in log
    assert "ignoring ComfyUI flags --cpu --disable-auto-launch --preview-method auto" in log
    from PIL import Image

    texts = []
    for server in (plain, bare):
        prefix = unique("meta")
        pid = submit(server, simple_workflow(prefix), str(uuid.uuid4()))
        entry = wait_history(server, pid)
        (image,) = entry["outputs"]["4"]["images"]
        with Image.open(server.output_dir / image["subfolder"] / image["filename"]) as img:
            assert img.format == "PNG" and img.size == (64, 64)
            texts.append(dict(getattr(img, "text", {})))
    assert '"class_type": "EmptyImage"' in texts[0]["prompt"], "the prompt rides in the PNG"
    assert texts[1] == {}, "--disable-metadata writes none"
    # ComfyUI's /view: preview=jpeg without a channel is a JPEG; with channel=a always WebP.
    query = {"filename": image["filename"], "type": "output", "preview": "jpeg;80"}
    jpeg = httpx.get(f"{bare.base_url}/view", params=query, timeout=T)
    webp = httpx.get(f"{bare.base_url}/view", params={**query, "channel": "a"}, timeout=T)
    assert jpeg.headers["content-type"] == "image/jpeg" and jpeg.content[:2] == b"\xff\xd8"
    assert webp.headers["content-type"] == "image/webp" and webp.content[8:12] == b"WEBP"


def test_taken_port_fails_like_comfyui(run_direct: Callable[..., Direct]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        direct = run_direct("--listen", "127.0.0.1", "--port", str(port))
        code = direct.proc.wait(timeout=20)
    assert code != 0
    text = direct.log.read_text()
    assert "Traceback (most recent call last)" in text
    assert "OSError" in text and "address already in use" in text
    assert "To see the GUI" not in text


def test_startup_delay_and_never_ready(run_direct: Callable[..., Direct]) -> None:
    from ryla_modal.comfy.process import free_port

    slow_port, never_port = free_port(), free_port()
    run_direct("--listen", "127.0.0.1", "--port", str(slow_port), "--startup-delay", "1.0")
    never = run_direct("--listen", "127.0.0.1", "--port", str(never_port), "--never-ready")
    started = time.monotonic()
    time.sleep(0.5)
    assert not listening(slow_port), "still in its start-up delay"
    deadline = started + 10
    while not listening(slow_port) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert listening(slow_port)
    assert time.monotonic() - started >= 1.0
    assert never.proc.poll() is None and not listening(never_port), "alive, never listening"
    assert "never listens" in never.log.read_text()


# --- counters --------------------------------------------------------------------------------


def test_stats_count_what_post_prompt_received(launch_stub: Launch) -> None:
    server = launch_stub()
    url = f"{server.base_url}/prompt"
    assert httpx.post(url, content=b"{nope", timeout=T).status_code == 500  # never parsed
    assert httpx.post(url, json={"client_id": "x"}, timeout=T).status_code == 400  # no prompt
    bad = {"prompt": {"1": {"class_type": "NoSuchNode", "inputs": {}}}, "prompt_id": "bad-1"}
    assert httpx.post(url, json=bad, timeout=T).status_code == 400
    good = submit(server, simple_workflow(unique("stats")), "c")
    wait_history(server, good)
    stats = httpx.get(f"{server.base_url}/_fake/stats", timeout=T).json()
    requests = stats.pop("requests")
    assert requests["POST /prompt"] == 4, "every request counts, parsed or not"
    assert requests["GET /history/{prompt_id}"] >= 1
    assert stats == {
        "prompts_received": 3,
        "prompts_queued": 1,
        "prompts_executed": 1,
        "prompt_ids": ["bad-1", good],
        "device": "gpu",  # not started with RYLA_COMFYUI_DEFER_GPU=1
        "prompts_on_cpu": 0,
    }


# --- faults ----------------------------------------------------------------------------------


def test_bad_fault_requests_are_refused(launch_stub: Launch) -> None:
    server = launch_stub()
    resp = httpx.post(f"{server.base_url}/_fake/fault", json={"fault": "explode"}, timeout=T)
    assert resp.status_code == 400 and "unknown fault 'explode'" in resp.json()["error"]
    resp = httpx.post(f"{server.base_url}/_fake/fault", content=b"[]", timeout=T)
    assert resp.status_code == 400


def test_drop_socket_cuts_sockets_but_the_job_finishes(launch_stub: Launch) -> None:
    server = launch_stub()
    arm(server, "drop-socket", after_node=1)
    client_id = str(uuid.uuid4())
    # Node 2 runs 4 s: time enough for the reconnect below to hear it on any machine.
    wf = slow_workflow("stub", unique("drop"), steps=4, step_seconds=1.0)
    with WsRecorder(server.base_url, client_id) as ws:
        pid = submit(server, wf, client_id)
        assert ws.closed.wait(10), "the socket was cut"
        got = ws.snapshot()
    assert not any(is_end(pid)(m) for m in got), "cut before the end"
    # A reconnect while the prompt runs hears the node it is on, as ComfyUI does.
    with WsRecorder(server.base_url, client_id) as again:
        first = again.wait_count(1)[0]
        assert first["type"] == "status" and first["data"]["sid"] == client_id
        again.wait_for(is_end(pid))
        assert {"type": "executing", "data": {"node": "2"}} in again.snapshot()
    entry = wait_history(server, pid)
    assert entry["status"]["status_str"] == "success"
    (image,) = entry["outputs"]["3"]["images"]
    assert (server.output_dir / image["filename"]).is_file()
    # One-shot: the next job keeps its socket to the end.
    with WsRecorder(server.base_url, client_id) as ws:
        pid = submit(server, simple_workflow(unique("after")), client_id)
        ws.wait_for(is_end(pid))
        assert not ws.closed.is_set()


def test_die_exits_mid_job_with_a_line_on_stderr(launch_stub: Launch) -> None:
    server = launch_stub("--fault", "die", "--fault-after-node", "2")
    client_id = str(uuid.uuid4())
    with WsRecorder(server.base_url, client_id) as ws:
        pid = submit(server, simple_workflow(unique("die")), client_id)
        deadline = time.monotonic() + 10
        while server.process.returncode is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.process.returncode == 1
        assert ws.closed.wait(5)
        assert not any(is_end(pid)(m) for m in ws.snapshot())
    assert "fault die: exiting mid-job" in server.process.log_tail()
    assert not list(server.output_dir.iterdir()), "died before SaveImage"


def test_stall_never_finishes_but_http_answers(launch_stub: Launch) -> None:
    server = launch_stub()
    arm(server, "stall", after_node=1)
    client_id = str(uuid.uuid4())
    with WsRecorder(server.base_url, client_id) as ws:
        pid = submit(server, simple_workflow(unique("stall")), client_id)
        ws.wait_for(lambda m: m["type"] == "progress_state" and "1" in m["data"]["nodes"])
        time.sleep(1.0)
        assert not any(is_end(pid)(m) for m in ws.snapshot())
        queue = httpx.get(f"{server.base_url}/queue", timeout=T).json()
        assert [item[1] for item in queue["queue_running"]] == [pid]
        assert httpx.get(f"{server.base_url}/system_stats", timeout=T).status_code == 200
        assert httpx.post(f"{server.base_url}/interrupt", timeout=T).status_code == 200
        time.sleep(0.3)
        assert not ws.closed.is_set()
        assert history(server, pid) == {}, "a stalled job never reaches history"


def test_hold_keeps_a_node_running_until_the_interrupt_which_lands_at_the_next(
    launch_stub: Launch,
) -> None:
    server = launch_stub()
    arm(server, "hold", after_node=1)
    client_id = str(uuid.uuid4())
    with WsRecorder(server.base_url, client_id) as ws:
        pid = submit(server, simple_workflow(unique("hold")), client_id)
        ws.wait_for(lambda m: m["type"] == "executing" and m["data"]["node"] == "2")
        queue = httpx.get(f"{server.base_url}/queue", timeout=T).json()
        assert [item[1] for item in queue["queue_running"]] == [pid], "held at node 2"
        body = {"prompt_id": pid}
        assert httpx.post(f"{server.base_url}/interrupt", json=body, timeout=T).status_code == 200
        ws.wait_for(is_end(pid))
        msgs = ws.snapshot()
    # Node 2 (ImageInvert, which never checks) finished; the interrupt landed at node 3.
    (stop,) = [m["data"] for m in msgs if m["type"] == "execution_interrupted"]
    assert (stop["node_id"], stop["node_type"], stop["executed"]) == ("3", "ImageBlur", ["2", "1"])
    assert wait_history(server, pid)["status"]["status_str"] == "error"
    # One-shot: the next job runs straight through.
    with WsRecorder(server.base_url, client_id) as ws:
        pid = submit(server, simple_workflow(unique("after")), client_id)
        ws.wait_for(is_end(pid))
    assert wait_history(server, pid)["status"]["status_str"] == "success"


# --- the slow node ---------------------------------------------------------------------------


def test_slow_node_reports_each_step(launch_stub: Launch) -> None:
    server = launch_stub("--step-seconds", "0.01")
    client_id = str(uuid.uuid4())
    wf = slow_workflow("stub", unique("steps"), steps=3)
    del wf["2"]["inputs"]["step_seconds"]  # optional: the --step-seconds default applies
    with WsRecorder(server.base_url, client_id) as ws:
        pid = submit(server, wf, client_id)
        ws.wait_for(is_end(pid))
        msgs = ws.snapshot()
    progress = [m["data"] for m in msgs if m["type"] == "progress"]
    assert progress == [{"value": v, "max": 3, "prompt_id": pid, "node": "2"} for v in (1, 2, 3)]
    for i, m in enumerate(msgs):  # each step: the state map first, then the progress message
        if m["type"] == "progress":
            state = msgs[i - 1]
            assert state["type"] == "progress_state"
            assert state["data"]["nodes"]["2"]["value"] == m["data"]["value"]
            assert state["data"]["nodes"]["2"]["state"] == "running"
    info = httpx.get(f"{server.base_url}/object_info/RylaSlowSteps", timeout=T).json()
    assert info["RylaSlowSteps"]["input"]["optional"]["step_seconds"][1]["default"] == 0.01


def test_slow_node_stops_mid_step_when_interrupted(launch_stub: Launch) -> None:
    # A step far longer than the wait below: the node can only end in time by waking on the
    # interrupt, so the test does not depend on how fast this machine is.
    server = launch_stub()
    client_id = str(uuid.uuid4())
    wf = slow_workflow("stub", unique("int"), steps=3, step_seconds=600.0)
    with WsRecorder(server.base_url, client_id) as ws:
        pid = submit(server, wf, client_id)
        ws.wait_for(lambda m: m["type"] == "executing" and m["data"]["node"] == "2")
        body = {"prompt_id": pid}
        assert httpx.post(f"{server.base_url}/interrupt", json=body, timeout=T).status_code == 200
        ws.wait_for(is_end(pid), timeout=30.0)
        msgs = ws.snapshot()
    types = [m["type"] for m in msgs]
    stop = types.index("execution_interrupted")
    assert msgs[stop]["data"]["node_id"] == "2"
    assert msgs[stop]["data"]["node_type"] == "RylaSlowSteps"
    assert msgs[stop]["data"]["executed"] == ["1"]
    assert types[stop + 1 :] == ["status", "executing"]
    assert "progress" not in types  # no step finished, and none was reported after the stop
    assert wait_history(server, pid)["status"]["status_str"] == "error"
