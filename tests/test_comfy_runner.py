"""One job end to end against a ComfyUI launched by our launcher (stand-in; real when set).

Fault-switch tests (socket dropped, process dies, stall) use a private stand-in each.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from ryla_modal.comfy.runner import (
    ComfyRunner,
    InputFile,
    RunnerProgress,
    RunResult,
    stored_input_name,
)
from ryla_modal.errors import (
    ComfyUIUnavailable,
    ExecutionError,
    ExecutionTimeout,
    JobCancelled,
    WorkflowValidationError,
)
from tests.conftest import ComfyServer, random_color, simple_workflow, slow_workflow, unique

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def job() -> str:
    return str(uuid.uuid4())


def runner_for(server: ComfyServer, **kw: Any) -> ComfyRunner:
    return ComfyRunner(server.base_url, process=server.process, **kw)


def fake_stats(server: ComfyServer) -> dict[str, Any]:
    resp = httpx.get(f"{server.base_url}/_fake/stats", timeout=5)
    resp.raise_for_status()
    data: dict[str, Any] = resp.json()
    return data


def set_fault(server: ComfyServer, fault: str, after_node: int = 1) -> None:
    resp = httpx.post(
        f"{server.base_url}/_fake/fault", json={"fault": fault, "after_node": after_node}, timeout=5
    )
    resp.raise_for_status()


def on_disk(server: ComfyServer, result: RunResult, index: int = 0) -> bytes:
    out = result.outputs[index]
    return (server.output_dir / out.subfolder / out.filename).read_bytes()


def png_bytes(width: int = 8, height: int = 8) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def pixels(data: bytes | None) -> bytes:
    from PIL import Image

    assert data is not None
    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGBA").tobytes()


def run_in_thread(fn: Callable[[], RunResult]) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, box


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


class NoSocketProxy:
    """A TCP proxy to a ComfyUI that refuses every WebSocket upgrade (GET /ws → 404).

    Plain HTTP passes through untouched, so the runner must finish the job by polling /history.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.refused = 0
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            self._conns.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        client.settimeout(10)
        try:
            first = client.recv(65536)
        except OSError:
            client.close()
            return
        if first.startswith(b"GET /ws"):
            self.refused += 1
            client.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            client.close()
            return
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=10)
        self._conns.append(upstream)
        upstream.sendall(first)
        threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()
        self._pump(client, upstream)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        src.settimeout(None)
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._server.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.close()


# --- success ----------------------------------------------------------------------------------


def test_success_downloads_every_output_with_checksums(comfy: ComfyServer) -> None:
    seen: list[RunnerProgress] = []
    job_id = job()
    with runner_for(comfy) as runner:
        result = runner.run(
            simple_workflow(unique("ok")), job_id=job_id, on_progress=seen.append, timeout_s=60
        )
    assert result.job_id == job_id
    assert len(result.outputs) == 1
    out = result.outputs[0]
    assert (out.node_id, out.kind, out.type, out.mime) == ("4", "images", "output", "image/png")
    assert out.data is not None and out.data.startswith(PNG_MAGIC)
    assert out.size == len(out.data)
    # The checksum is of the bytes ComfyUI wrote, not only of what we received.
    assert out.sha256 == hashlib.sha256(on_disk(comfy, result)).hexdigest()
    assert out.path is None
    phases = [p.phase for p in seen]
    assert phases[0] == "executing" and phases[-1] == "done"
    assert "collecting_outputs" in phases
    executing = [p for p in seen if p.phase == "executing" and p.node_id]
    assert {p.node_id for p in executing} >= {"1", "2", "3", "4"}
    assert {p.node_type for p in executing} >= {"EmptyImage", "SaveImage"}
    assert max(p.nodes_done for p in seen) == 4 and all(p.nodes_total == 4 for p in seen)
    assert result.timings.executing > 0 and result.timings.collecting_outputs > 0
    assert result.timings.fetching_inputs is None  # no inputs by URL: a step not taken
    assert all(v is None or v >= 0 for v in vars(result.timings).values())
    assert result.nodes_total == 4


def test_outputs_stream_to_work_dir(comfy: ComfyServer, tmp_path: Path) -> None:
    job_id = job()
    with runner_for(comfy, work_dir=tmp_path) as runner:
        result = runner.run(simple_workflow(unique("wd")), job_id=job_id, timeout_s=60)
    out = result.outputs[0]
    assert out.data is None and out.path is not None
    assert out.path.parent == tmp_path / job_id
    content = out.path.read_bytes()
    assert (
        hashlib.sha256(content).hexdigest()
        == out.sha256
        == hashlib.sha256(on_disk(comfy, result)).hexdigest()
    )
    assert [p.name for p in out.path.parent.iterdir()] == [out.path.name], "no temp files left"


def test_fully_cached_rerun_still_returns_its_outputs(comfy: ComfyServer) -> None:
    wf = simple_workflow(unique("cache"), sigma=1.25)
    seen: list[RunnerProgress] = []
    with runner_for(comfy) as runner:
        first = runner.run(wf, job_id=job(), timeout_s=60)
        second = runner.run(wf, job_id=job(), timeout_s=60, on_progress=seen.append)
    assert len(second.outputs) == 1
    assert second.outputs[0].filename == first.outputs[0].filename
    assert second.outputs[0].sha256 == first.outputs[0].sha256
    # Every node came from the cache (execution_cached), so all count as done.
    assert max(p.nodes_done for p in seen) == 4


def test_partial_rerun_runs_only_changed_nodes(comfy: ComfyServer) -> None:
    prefix, color = unique("partial"), random_color()
    seen: list[RunnerProgress] = []
    with runner_for(comfy) as runner:
        first = runner.run(simple_workflow(prefix, sigma=1.5, color=color), job_id=job())
        second = runner.run(
            simple_workflow(prefix, sigma=2.5, color=color), job_id=job(), on_progress=seen.append
        )
    assert second.outputs[0].filename != first.outputs[0].filename, "node 4 wrote a new file"
    ran = {p.node_id for p in seen if p.phase == "executing" and p.node_id}
    assert ran == {"3", "4"}, "nodes 1 and 2 came from the cache"


def test_rerun_with_the_same_job_id_does_not_submit_again(comfy: ComfyServer) -> None:
    job_id = job()
    wf = simple_workflow(unique("idem"))
    with runner_for(comfy) as runner:
        first = runner.run(wf, job_id=job_id, timeout_s=60)
        before = comfy.prompts_received()
        again = runner.run(wf, job_id=job_id, timeout_s=60)
    assert comfy.prompts_received() == before
    assert [o.sha256 for o in again.outputs] == [o.sha256 for o in first.outputs]


def test_inputs_are_uploaded_and_loaded(comfy: ComfyServer) -> None:
    name = f"{unique('in')}.png"
    data = png_bytes(8, 8)
    wf = {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {
            "class_type": "SaveImage",
            "inputs": {"images": ["2", 0], "filename_prefix": unique("inv")},
        },
    }
    seen: list[RunnerProgress] = []
    with runner_for(comfy) as runner:
        result = runner.run(
            wf, job_id=job(), inputs=[InputFile(name, data)], on_progress=seen.append, timeout_s=60
        )
    assert (comfy.input_dir / stored_input_name(name, data)).read_bytes() == data
    assert seen[0].phase == "uploading_inputs"
    assert result.outputs[0].data is not None and result.outputs[0].data.startswith(PNG_MAGIC)
    assert result.timings.uploading_inputs > 0


def png_of(color: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def test_queued_jobs_with_one_input_name_each_load_their_own_file(comfy: ComfyServer) -> None:
    """Every web upload is ``image.png``: job A's file must not be replaced by job B's while A
    waits in ComfyUI's queue."""
    name = f"{unique('same')}.png"
    red, blue = png_of((220, 20, 20)), png_of((20, 20, 220))

    def load_and_save(prefix: str) -> dict[str, Any]:
        save = {"images": ["1", 0], "filename_prefix": prefix}
        return {
            "1": {"class_type": "LoadImage", "inputs": {"image": name}},
            "2": {"class_type": "SaveImage", "inputs": save},
        }

    blocker_id, a_id, b_id = job(), job(), job()
    blocker_started = threading.Event()
    runner = runner_for(comfy)
    # On the stand-in the blocker runs until interrupted below, however slow this machine.
    t0, box0 = run_in_thread(
        lambda: runner.run(
            slow_workflow(comfy.backend, unique("block"), steps=3, step_seconds=600.0),
            job_id=blocker_id,
            on_progress=lambda p: blocker_started.set() if p.node_id == "2" else None,
            timeout_s=60,
        )
    )
    try:
        assert blocker_started.wait(30)
        ta, box_a = run_in_thread(
            lambda: runner.run(load_and_save("a"), job_id=a_id, inputs=[InputFile(name, red)])
        )
        wait_for(lambda: runner.api.queue_state(a_id) == "pending")  # uploaded, waiting
        tb, box_b = run_in_thread(
            lambda: runner.run(
                load_and_save(unique("b")),
                job_id=b_id,
                inputs=[InputFile(name, blue)],
                timeout_s=60,
            )
        )
        wait_for(lambda: runner.api.queue_state(b_id) == "pending")
        runner.interrupt(blocker_id)
        ta.join(timeout=60)
        tb.join(timeout=60)
    finally:
        runner.interrupt(blocker_id)
        t0.join(timeout=60)
        runner.close()
    if comfy.backend == "stub":
        assert isinstance(box0.get("error"), JobCancelled), box0
    else:  # real ComfyUI's blocker may have ended on its own before the interrupt
        assert "result" in box0 or isinstance(box0.get("error"), JobCancelled), box0
    result_a, result_b = box_a.get("result"), box_b.get("result")
    assert result_a is not None and result_b is not None, (box_a, box_b)
    assert pixels(result_a.outputs[0].data) == pixels(red)
    assert pixels(result_b.outputs[0].data) == pixels(blue)


def test_preview_files_only_when_asked(comfy: ComfyServer) -> None:
    wf = simple_workflow(unique("prev"), sigma=0.75)
    wf["5"] = {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}
    with runner_for(comfy) as runner:
        plain = runner.run(wf, job_id=job(), timeout_s=60)
    with runner_for(comfy, include_temp=True) as runner:
        with_temp = runner.run(wf, job_id=job(), timeout_s=60)
    assert [o.type for o in plain.outputs] == ["output"]
    assert sorted(o.type for o in with_temp.outputs) == ["output", "temp"]
    assert [o.index for o in with_temp.outputs] == [0, 1]


def test_delete_outputs_frees_comfy_disk_and_reruns_still_work(comfy: ComfyServer) -> None:
    wf = simple_workflow(unique("del"), sigma=1.75)
    kw: dict[str, Any] = {"comfy_output_dir": comfy.output_dir, "delete_outputs": True}
    with runner_for(comfy, **kw) as runner:
        first = runner.run(wf, job_id=job(), timeout_s=60)
        assert not (comfy.output_dir / first.outputs[0].filename).exists()
        # Identical graph: without care ComfyUI would answer from cache with the deleted file.
        seen: list[RunnerProgress] = []
        second = runner.run(wf, job_id=job(), timeout_s=60, on_progress=seen.append)
    # The save node ran again (upstream nodes came from the cache) and wrote a fresh file:
    # same pixels; the bytes differ because SaveImage embeds the prompt (with the job id).
    ran = {p.node_id for p in seen if p.phase == "executing" and p.node_id}
    assert ran == {"4"}
    assert pixels(second.outputs[0].data) == pixels(first.outputs[0].data)
    assert not (comfy.output_dir / second.outputs[0].filename).exists()


# --- ComfyUI says no ----------------------------------------------------------------------------


def test_validation_error_has_per_node_detail(comfy: ComfyServer) -> None:
    wf = simple_workflow(unique("bad"))
    wf["1"]["inputs"]["width"] = 0
    wf["3"]["inputs"]["blur_radius"] = 99
    with runner_for(comfy) as runner, pytest.raises(WorkflowValidationError) as info:
        runner.run(wf, job_id=job(), timeout_s=60)
    err = info.value
    assert set(err.node_errors) == {"1", "3"}
    assert err.node_errors["1"]["class_type"] == "EmptyImage"
    assert err.node_errors["1"]["errors"][0]["type"] == "value_smaller_than_min"
    assert "node 3 (ImageBlur)" in str(err)


def test_unknown_node_is_an_invalid_prompt(comfy: ComfyServer) -> None:
    wf = simple_workflow(unique("unk"))
    wf["2"]["class_type"] = "NoSuchNode"
    with runner_for(comfy) as runner, pytest.raises(WorkflowValidationError) as info:
        runner.run(wf, job_id=job(), timeout_s=60)
    assert info.value.error.get("type") == "invalid_prompt"
    assert "NoSuchNode" in str(info.value)


def test_runtime_error_names_the_node_and_exception(comfy: ComfyServer) -> None:
    name = f"{unique('corrupt')}.png"
    wf = {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "err"}},
    }
    job_id = job()
    with runner_for(comfy) as runner, pytest.raises(ExecutionError) as info:
        runner.run(
            wf, job_id=job_id, inputs=[InputFile(name, b"this is not a png file\n")], timeout_s=60
        )
    err = info.value
    assert (err.node_id, err.node_type, err.job_id) == ("1", "LoadImage", job_id)
    assert err.exception_type and "UnidentifiedImageError" in err.exception_type
    assert err.traceback_tail, "the traceback tail travels with the error"


# --- stopping a job -----------------------------------------------------------------------------


def test_cancel_interrupts_a_running_job(comfy: ComfyServer) -> None:
    cancel = threading.Event()
    seen: list[RunnerProgress] = []
    runner = runner_for(comfy)

    def on_progress(p: RunnerProgress) -> None:
        seen.append(p)
        if p.node_id == "2":
            cancel.set()

    t, box = run_in_thread(
        lambda: runner.run(
            slow_workflow(comfy.backend, unique("slow")),
            job_id=job(),
            on_progress=on_progress,
            cancel=cancel,
            timeout_s=60,
        )
    )
    t.join(timeout=45)
    runner.close()
    assert not t.is_alive()
    assert isinstance(box.get("error"), JobCancelled), box


def test_interrupt_by_job_id_from_another_thread(comfy: ComfyServer) -> None:
    job_id = job()
    started = threading.Event()
    runner = runner_for(comfy)

    def on_progress(p: RunnerProgress) -> None:
        if p.node_id == "2":
            started.set()

    t, box = run_in_thread(
        lambda: runner.run(
            slow_workflow(comfy.backend, unique("slow")),
            job_id=job_id,
            on_progress=on_progress,
            timeout_s=60,
        )
    )
    assert started.wait(30)
    runner.interrupt(job_id)
    t.join(timeout=45)
    runner.close()
    assert isinstance(box.get("error"), JobCancelled), box
    assert box["error"].job_id == job_id


def test_cancel_a_job_still_waiting_in_the_queue(comfy: ComfyServer) -> None:
    blocker_id = job()
    blocker_started = threading.Event()
    runner = runner_for(comfy)
    t1, box1 = run_in_thread(
        lambda: runner.run(
            slow_workflow(comfy.backend, unique("block"), steps=3, step_seconds=600.0),
            job_id=blocker_id,
            on_progress=lambda p: blocker_started.set() if p.node_id == "2" else None,
            timeout_s=60,
        )
    )
    try:
        assert blocker_started.wait(30)
        cancel = threading.Event()
        queued_id = job()
        t2, box2 = run_in_thread(
            lambda: runner.run(
                simple_workflow(unique("queued")), job_id=queued_id, cancel=cancel, timeout_s=60
            )
        )
        wait_for(lambda: runner.api.queue_state(queued_id) == "pending")
        cancel.set()
        t2.join(timeout=30)
        assert isinstance(box2.get("error"), JobCancelled), box2
        assert "cancelled before it ran" in str(box2["error"])
        assert runner.api.history(queued_id) is None, "the cancelled job never ran"
    finally:
        runner.interrupt(blocker_id)
        t1.join(timeout=45)
        runner.close()
    assert isinstance(box1.get("error"), JobCancelled), box1


def test_cancel_before_submit_never_reaches_comfyui(comfy: ComfyServer) -> None:
    cancel = threading.Event()
    cancel.set()
    job_id = job()
    with runner_for(comfy) as runner:
        with pytest.raises(JobCancelled, match="before it was submitted"):
            runner.run(simple_workflow(unique("pre")), job_id=job_id, cancel=cancel)
        assert runner.api.history(job_id) is None
        assert runner.api.queue_state(job_id) is None


def test_timeout_interrupts_and_names_the_job(comfy: ComfyServer) -> None:
    job_id = job()
    with runner_for(comfy) as runner:
        started = time.monotonic()
        with pytest.raises(ExecutionTimeout) as info:
            runner.run(slow_workflow(comfy.backend, unique("slow")), job_id=job_id, timeout_s=1.0)
        assert time.monotonic() - started < 5.0
        assert info.value.job_id == job_id
        assert isinstance(info.value, TimeoutError)
        # The prompt was interrupted, not left running for nobody.
        wait_for(lambda: runner.api.queue_state(job_id) is None)


# --- faults (stand-in only) -----------------------------------------------------------------------


def test_socket_dropped_mid_job_still_completes_via_history(
    launch_stub: Callable[..., ComfyServer],
) -> None:
    server = launch_stub()
    set_fault(server, "drop-socket", after_node=1)
    seen: list[RunnerProgress] = []
    with runner_for(server, history_poll_s=0.1) as runner:
        result = runner.run(
            simple_workflow(unique("drop")), job_id=job(), on_progress=seen.append, timeout_s=30
        )
    assert "fault drop-socket" in server.process.log_tail(200), "the socket really was dropped"
    assert len(result.outputs) == 1
    assert result.outputs[0].sha256 == hashlib.sha256(on_disk(server, result)).hexdigest()
    assert seen[-1].phase == "done"


def test_socket_dropped_during_slow_job(launch_stub: Callable[..., ComfyServer]) -> None:
    server = launch_stub("--fault", "drop-socket", "--fault-after-node", "1")
    with runner_for(server, history_poll_s=0.1) as runner:
        result = runner.run(
            slow_workflow("stub", unique("dropslow"), steps=10, step_seconds=0.1),
            job_id=job(),
            timeout_s=30,
        )
    assert "fault drop-socket" in server.process.log_tail(200)
    assert len(result.outputs) == 1


def test_comfyui_dying_mid_job_is_a_clear_error_within_seconds(
    launch_stub: Callable[..., ComfyServer],
) -> None:
    server = launch_stub()
    set_fault(server, "die", after_node=1)
    started = time.monotonic()
    with runner_for(server) as runner, pytest.raises(ComfyUIUnavailable) as info:
        runner.run(simple_workflow(unique("die")), job_id=job(), timeout_s=60)
    assert time.monotonic() - started < 5.0
    assert "no longer running" in str(info.value)
    assert "exit code 1" in str(info.value)
    assert "fault die" in info.value.log_tail, "the error carries ComfyUI's last words"


def test_dead_comfyui_is_reported_before_the_next_job(
    launch_stub: Callable[..., ComfyServer],
) -> None:
    server = launch_stub()
    server.process.stop(grace=2.0)
    with runner_for(server) as runner, pytest.raises(ComfyUIUnavailable, match="no longer"):
        runner.run(simple_workflow(unique("x")), job_id=job(), timeout_s=60)


def test_stalled_comfyui_hits_the_job_timeout(launch_stub: Callable[..., ComfyServer]) -> None:
    server = launch_stub()
    set_fault(server, "stall", after_node=1)
    job_id = job()
    started = time.monotonic()
    with runner_for(server, history_poll_s=0.1) as runner, pytest.raises(ExecutionTimeout) as info:
        runner.run(simple_workflow(unique("stall")), job_id=job_id, timeout_s=2.0)
    assert 2.0 <= time.monotonic() - started < 10.0
    assert info.value.job_id == job_id
    assert "fault stall" in server.process.log_tail(200)


def test_socket_that_never_opens_falls_back_to_history(comfy: ComfyServer) -> None:
    proxy = NoSocketProxy(comfy.process.port)
    seen: list[RunnerProgress] = []
    try:
        with ComfyRunner(proxy.url, process=comfy.process, history_poll_s=0.1) as runner:
            result = runner.run(
                simple_workflow(unique("nows")), job_id=job(), on_progress=seen.append, timeout_s=60
            )
    finally:
        proxy.close()
    assert proxy.refused >= 1
    assert result.outputs[0].sha256 == hashlib.sha256(on_disk(comfy, result)).hexdigest()
    assert seen[-1].phase == "done"


def test_ui_format_workflow_gets_the_plain_text_500_as_a_workflow_error(
    comfy: ComfyServer,
) -> None:
    # Transcript 10: a UI-format workflow passed as "prompt" makes ComfyUI answer a text/plain 500.
    ui = {"last_node_id": 1, "last_link_id": 0, "nodes": [{"id": 1, "type": "EmptyImage"}]}
    with runner_for(comfy) as runner, pytest.raises(WorkflowValidationError) as info:
        runner.run(ui, job_id=job(), timeout_s=30)
    assert "HTTP 500" in str(info.value)
    assert info.value.hint and "API format" in info.value.hint
