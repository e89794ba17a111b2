"""One event socket per runner, shared by its jobs (comfy.events), and one look at the queue.

Against private stand-ins launched by our launcher, so their request counts are this test's own.
"""

from __future__ import annotations

import concurrent.futures
import io
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from ryla_modal.comfy.api import BinaryFrame, ComfyAPI, SocketClosed, follow_prompt
from ryla_modal.comfy.events import EventHub
from ryla_modal.comfy.runner import ComfyRunner, RunnerProgress, RunResult
from tests.conftest import ComfyServer, random_color, simple_workflow, slow_workflow, unique
from tests.test_comfy_runner import fake_stats, set_fault


def job() -> str:
    return str(uuid.uuid4())


def websocket_image_workflow(color: int) -> dict[str, Any]:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": color},
        },
        "2": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["1", 0]}},
    }


def rgb_of(data: bytes | None) -> tuple[int, int, int]:
    from PIL import Image

    assert data is not None
    with Image.open(io.BytesIO(data)) as img:
        r, g, b = img.convert("RGB").getpixel((0, 0))  # type: ignore[misc]
    return int(r), int(g), int(b)


def color_rgb(color: int) -> tuple[int, int, int]:
    return (color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF


def run_all(
    runner: ComfyRunner, workflows: dict[str, dict[str, Any]], **kw: Any
) -> tuple[dict[str, RunResult], dict[str, list[RunnerProgress]]]:
    """Run every workflow at once (one thread each), as the gateway's workers do."""
    seen: dict[str, list[RunnerProgress]] = {job_id: [] for job_id in workflows}
    with concurrent.futures.ThreadPoolExecutor(len(workflows)) as pool:
        futures = {
            job_id: pool.submit(
                runner.run,
                wf,
                job_id=job_id,
                on_progress=seen[job_id].append,
                timeout_s=60,
                **kw,
            )
            for job_id, wf in workflows.items()
        }
        return {job_id: f.result(timeout=90) for job_id, f in futures.items()}, seen


@pytest.mark.parametrize("metadata", [True, False], ids=["event4", "legacy-event1"])
def test_concurrent_jobs_share_one_socket_and_each_gets_its_own_images(
    launch_stub: Callable[..., ComfyServer], metadata: bool
) -> None:
    """Frames are routed by the prompt they name, or (event 1) by the prompt executing."""
    server = launch_stub()
    colors = {job(): random_color() for _ in range(6)}
    with ComfyRunner(server.base_url, process=server.process) as runner:
        runner.api.preview_metadata = metadata
        results, seen = run_all(
            runner, {job_id: websocket_image_workflow(c) for job_id, c in colors.items()}
        )
    assert fake_stats(server)["requests"].get("GET /ws") == 1
    for job_id, color in colors.items():
        [out] = results[job_id].outputs
        assert out.type == "websocket"
        assert rgb_of(out.data) == color_rgb(color), f"job {job_id} got another job's image"
        phases = [p.phase for p in seen[job_id]]
        assert "executing" in phases and phases[-1] == "done"
        ran = {p.node_id for p in seen[job_id] if p.phase == "executing" and p.node_id}
        assert ran == {"1", "2"}, "each job heard its own nodes' events"


def test_the_whole_queue_is_asked_once_per_runner_not_once_per_job(
    launch_stub: Callable[..., ComfyServer],
) -> None:
    server = launch_stub()
    with ComfyRunner(server.base_url, process=server.process) as runner:
        results, _ = run_all(runner, {job(): simple_workflow(unique("q")) for _ in range(5)})
        runner.run(simple_workflow(unique("q1")), job_id=job(), timeout_s=60)
    stats = fake_stats(server)
    assert all(len(r.outputs) == 1 for r in results.values())
    assert stats["prompts_received"] == 6
    assert stats["requests"].get("GET /queue") == 1


def test_a_prompt_queued_before_the_first_look_is_followed_not_submitted_again(
    launch_stub: Callable[..., ComfyServer],
) -> None:
    """What a restarted server meets: ComfyUI still has the prompt its earlier process sent."""
    server = launch_stub()
    job_id = job()
    wf = slow_workflow("stub", unique("early"), steps=10, step_seconds=0.1)
    with ComfyRunner(server.base_url, process=server.process) as earlier:
        earlier.api.submit(wf, prompt_id=job_id, client_id="an-earlier-process")
    with ComfyRunner(server.base_url, process=server.process) as runner:
        result = runner.run(wf, job_id=job_id, timeout_s=60)
    assert len(result.outputs) == 1
    assert fake_stats(server)["prompt_ids"].count(job_id) == 1


def test_a_submit_whose_answer_was_lost_is_not_sent_again(
    launch_stub: Callable[..., ComfyServer],
) -> None:
    """The runner remembers what it sent until it sees the end, so a retry asks the queue."""
    server = launch_stub()
    job_id = job()
    wf = slow_workflow("stub", unique("lost"), steps=10, step_seconds=0.1)
    with ComfyRunner(server.base_url, process=server.process) as runner:
        runner.run(simple_workflow(unique("first")), job_id=job(), timeout_s=60)  # first look
        runner._in_flight.add(job_id)  # as _submit does before sending
        runner.api.submit(wf, prompt_id=job_id, client_id=runner.events.client_id)
        result = runner.run(wf, job_id=job_id, timeout_s=60)
    assert len(result.outputs) == 1
    assert fake_stats(server)["prompt_ids"].count(job_id) == 1
    assert job_id not in runner._in_flight, "forgotten once its history entry was read"


def test_a_dropped_socket_is_reopened_once_for_all_jobs_in_flight(
    launch_stub: Callable[..., ComfyServer],
) -> None:
    server = launch_stub()
    set_fault(server, "drop-socket", after_node=1)
    workflows = {
        job(): slow_workflow("stub", unique("drop"), steps=4, step_seconds=0.05) for _ in range(4)
    }
    with ComfyRunner(server.base_url, process=server.process, history_poll_s=0.1) as runner:
        results, _ = run_all(runner, workflows)
        after_drop = runner.run(simple_workflow(unique("after")), job_id=job(), timeout_s=60)
    assert "fault drop-socket" in server.process.log_tail(400)
    assert all(len(r.outputs) == 1 for r in results.values())
    assert len(after_drop.outputs) == 1
    sockets = fake_stats(server)["requests"].get("GET /ws", 0)
    assert 2 <= sockets <= 1 + len(workflows) + 1, "reopened, not once per job and retry"


# --- the hub itself ------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_a_failed_connect_makes_the_next_subscribers_fail_fast_naming_it() -> None:
    with ComfyAPI(f"http://127.0.0.1:{closed_port()}") as api:
        hub = EventHub(api, retry_s=60.0)
        with pytest.raises(SocketClosed, match="cannot open"):
            hub.subscribe("a", open_timeout=2)
        with pytest.raises(SocketClosed, match=r"could not be opened .* s ago"):
            hub.subscribe("b", open_timeout=2)
        hub.close()


def test_subscriptions_hear_their_own_prompt_and_the_closed_hub_refuses(
    launch_stub: Callable[..., ComfyServer],
) -> None:
    server = launch_stub()
    with ComfyAPI(server.base_url) as api:
        hub = EventHub(api)
        mine, other = job(), job()
        sub = hub.subscribe(mine)
        api.submit(simple_workflow(unique("o")), prompt_id=other, client_id=hub.client_id)
        api.submit(simple_workflow(unique("m")), prompt_id=mine, client_id=hub.client_id)
        kinds: list[str] = []
        for _ in range(200):  # bounded: the prompt ends within a few dozen messages
            msg = sub.recv(5.0)
            assert msg is not None, "no message within 5 s"
            if isinstance(msg, BinaryFrame):
                continue
            assert msg["data"].get("prompt_id") == mine, "another prompt's message leaked in"
            kinds.append(msg["type"])
            if msg["type"] == "execution_success":
                break
        assert kinds[0] == "execution_start" and kinds[-1] == "execution_success"
        hub.close()
        with pytest.raises(SocketClosed):  # after what was already queued for it
            for _ in range(50):
                sub.recv(1.0)
        with pytest.raises(SocketClosed, match="closed"):
            hub.subscribe(job())


def test_reader_thread_ends_with_the_hub(launch_stub: Callable[..., ComfyServer]) -> None:
    server = launch_stub()
    with ComfyAPI(server.base_url) as api:
        hub = EventHub(api)
        hub.subscribe(job()).close()
        readers = [t for t in threading.enumerate() if t.name == "ryla-comfy-events"]
        assert readers
        hub.close()
        for t in readers:
            t.join(timeout=5)
        assert not any(t.is_alive() for t in readers)


def test_looks_at_the_queue_are_shared_by_the_callers_that_can_use_them(
    launch_stub: Callable[..., ComfyServer],
) -> None:
    """N jobs waiting in ComfyUI's queue look at it now and then: one GET serves them all."""
    server = launch_stub()
    with ComfyAPI(server.base_url) as api:
        before = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            looks = list(pool.map(lambda _: api.queued_since(before), range(16)))
        assert fake_stats(server)["requests"].get("GET /queue") == 1
        assert all(look == {} for look in looks)
        api.queued_since(before)  # that look is still recent enough for this caller
        assert fake_stats(server)["requests"].get("GET /queue") == 1
        api.queued_since(time.monotonic())  # it began before what this caller needs: a new one
        assert fake_stats(server)["requests"].get("GET /queue") == 2


def test_a_look_at_the_queue_from_before_a_prompt_was_queued_does_not_count_for_it(
    launch_stub: Callable[..., ComfyServer],
) -> None:
    """An empty queue seen before the submit must not make the prompt look deleted."""
    server = launch_stub()
    with ComfyAPI(server.base_url) as api:
        assert api.queued_since(time.monotonic()) == {}  # the queue, empty, before the submit
        blocker = slow_workflow("stub", unique("blocker"), steps=20, step_seconds=0.1)
        api.submit(blocker, prompt_id=job(), client_id="other")
        waiting = job()
        api.submit(simple_workflow(unique("waiting")), prompt_id=waiting, client_id="other")
        # No socket: the follower looks at the history and the queue every few polls while
        # the blocker runs; the earlier look says the queue is empty.
        entry = follow_prompt(
            api, waiting, socket=None, deadline=time.monotonic() + 60, poll_s=0.05
        )
    assert entry["status"]["completed"] is True
    assert fake_stats(server)["requests"].get("GET /queue", 0) >= 2
