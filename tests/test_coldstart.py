"""The cold start, explained and shortened: memory snapshots and the timings of every job.

- the deployed ``ComfyWorker`` carries the snapshot flags of each setting (the REAL ``modal
  deploy`` against the control-plane stand-in);
- the worker's enter(snap=True) → restore path with the ComfyUI stand-in: ComfyUI starts off
  the GPU, moves onto it after the restore, and the jobs that waited say ``restored``;
- the phases: container start, ComfyUI start, model load (time in loader nodes) — in order,
  non-overlapping, labelled for any renderer.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import modal
import pytest

from ryla_modal import job as client_job
from ryla_modal.cloud import image as modal_image
from ryla_modal.cloud.snapshot_node import DEFER_GPU_ENV, GPU_ROUTE, node_files
from ryla_modal.cloud.store import DictJobStore
from ryla_modal.cloud.worker import ModalWorker, process_started_at
from ryla_modal.comfy.runner import RunnerProgress, _ProgressTracker, is_model_loader
from ryla_modal.gateway import schemas
from ryla_modal.gateway.schemas import JobRecord
from tests.fakes.comfyui_command import fake_comfyui_command
from tests.fakes.modal_control import FakeModalControl, function_definition
from tests.test_cloud_backend import MemoryDict, MemoryQueue
from tests.test_modal_app import RYLA_ENV, deploy

WORKFLOW = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0x102030},
    },
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "s"}},
}


# --- the snapshot flags the deploy declares ------------------------------------------------------


@pytest.fixture
def fake() -> Iterator[FakeModalControl]:
    with FakeModalControl() as control:
        yield control
    assert control.errors == [], f"the fake itself failed: {control.errors}"


@pytest.mark.parametrize("mode", ["off", "cpu", "gpu"])
def test_the_worker_class_carries_the_snapshot_setting(
    fake: FakeModalControl, tmp_path: Path, mode: str
) -> None:
    deploy(fake, tmp_path, **{**RYLA_ENV, "RYLA_SNAPSHOT": mode})

    functions = fake.deployed["ryla-deploy-test"]["functions"]
    worker = function_definition(functions["ComfyWorker.*"])
    assert worker.checkpointing_enabled is (mode != "off")
    gpu_snapshot = dict(worker.experimental_options).get("enable_gpu_snapshot")
    assert gpu_snapshot == ("True" if mode == "gpu" else None)
    gateway = function_definition(functions["gateway"])
    assert not gateway.checkpointing_enabled  # the CPU gateway starts in a second anyway
    assert worker.resources.gpu_config.gpu_type == "A100"
    # The node that keeps ComfyUI off the GPU until the restore is in the image for "cpu" only.
    commands = [
        c for req in fake.calls_named("ImageGetOrCreate") for c in req.image.dockerfile_commands
    ]
    node_dir = f"custom_nodes/{'ryla_snapshot'}/"
    assert any(node_dir in c for c in commands) is (mode == "cpu")


def test_the_snapshot_node_is_valid_python_calling_its_hook() -> None:
    files = node_files()
    assert set(files) == {"prestartup_script.py", "__init__.py"}
    for name, text in files.items():
        tree = ast.parse(text, filename=name)  # ComfyUI imports these in its own process
        last = tree.body[-2] if name == "__init__.py" else tree.body[-1]
        assert isinstance(last, ast.Expr) and isinstance(last.value, ast.Call)
        assert isinstance(last.value.func, ast.Name)
        assert last.value.func.id == ("register_route" if name == "__init__.py" else "defer_gpu")
    assert "NODE_CLASS_MAPPINGS" in files["__init__.py"]
    command = " ".join(modal_image.snapshot_node_commands())
    assert f"{modal_image.COMFY_DIR}/custom_nodes/ryla_snapshot/prestartup_script.py" in command


# --- the worker's enter / snapshot / restore path -----------------------------------------------


def _worker_env(tmp_path: Path, mode: str, *comfy_flags: str) -> dict[str, str]:
    command = fake_comfyui_command(
        "--output-directory", str(tmp_path / "comfy-out"),
        "--input-directory", str(tmp_path / "comfy-in"),
        "--temp-directory", str(tmp_path / "comfy-tmp"),
        *comfy_flags,
    )  # fmt: skip
    return {
        "RYLA_SNAPSHOT": mode,
        "RYLA_COMFYUI_COMMAND": json.dumps(command),
        "RYLA_OUTPUTS_DIR": str(tmp_path / "volume"),
        "RYLA_WORKER_STARTUP_TIMEOUT": "30",
        "MODAL_TASK_ID": "ta-snapshotter",
    }


@pytest.fixture
def jobs(monkeypatch: pytest.MonkeyPatch) -> MemoryDict:
    """modal.Dict and modal.Queue replaced by in-memory twins (Modal's cloud cannot exist)."""
    d, q = MemoryDict(), MemoryQueue()
    monkeypatch.setattr(modal.Dict, "from_name", staticmethod(lambda *a, **k: d))
    monkeypatch.setattr(modal.Queue, "from_name", staticmethod(lambda *a, **k: q))
    return d


def _stats(worker: ModalWorker) -> dict[str, Any]:
    resp = httpx.get(worker.process.base_url + "/_fake/stats", timeout=10, trust_env=False)
    resp.raise_for_status()
    stats: dict[str, Any] = resp.json()
    return stats


def _queued_job(jobs: MemoryDict, tmp_path: Path) -> JobRecord:
    gateway = DictJobStore(jobs, outputs_dir=tmp_path / "volume")
    now = time.time()
    record = JobRecord(
        job_id=str(uuid.uuid4()),
        status="queued",
        created_at=now,
        updated_at=now,
        workflow_sha256="5" * 64,
    )
    gateway.create_if_absent(record)
    return record


def _run(worker: ModalWorker, job: JobRecord) -> JobRecord:
    result = worker.run({"job_id": job.job_id, "workflow": WORKFLOW})
    assert result["status"] == "succeeded", result
    return JobRecord.model_validate({**job.model_dump(), **result})


def test_cpu_snapshot_restore_moves_comfyui_onto_the_gpu_and_jobs_say_restored(
    jobs: MemoryDict, tmp_path: Path
) -> None:
    env = _worker_env(tmp_path, "cpu")
    worker = ModalWorker.from_env(environ=env)
    try:
        worker.start_before_snapshot()  # @modal.enter(snap=True): Modal saves memory after this
        assert _stats(worker)["device"] == "cpu"  # nothing touched CUDA before the snapshot
        assert worker.container_window is not None

        waiting = _queued_job(jobs, tmp_path)  # a job that triggered this container
        env["MODAL_TASK_ID"] = "ta-restored"  # Modal rewrites it when it restores a container
        worker.after_restore()  # @modal.enter(snap=False)
        assert (worker.restored, worker.startup().container_window) == (True, None)
        assert _stats(worker)["device"] == "gpu"

        done = _run(worker, waiting)
        assert done.timings.restored is True
        assert done.timings.starting_comfyui is not None and done.timings.starting_comfyui > 0
        assert done.timings.container_start is None  # a restore: Modal's work, left in queued

        later = _run(worker, _queued_job(jobs, tmp_path))  # a warm container: no start waited
        assert later.timings.restored is None
        stats = _stats(worker)
        assert stats["prompts_executed"] == 2 and stats["prompts_on_cpu"] == 0
    finally:
        worker.stop()


def test_the_container_that_took_the_snapshot_starts_cold(jobs: MemoryDict, tmp_path: Path) -> None:
    env = _worker_env(tmp_path, "cpu")
    worker = ModalWorker.from_env(environ=env)
    try:
        waiting = _queued_job(jobs, tmp_path)  # created before the container's enter hook
        worker.start_before_snapshot()
        worker.after_restore()  # same task id: this container took the snapshot itself
        assert worker.restored is False and _stats(worker)["device"] == "gpu"

        done = _run(worker, waiting)
        timings = client_job.Timings.from_dict(done.timings.model_dump())
        assert timings.restored is False
        assert timings.container_start is not None and timings.container_start > 0
        phases = timings.phases()
        assert list(phases)[:3] == ["queued", "container_start", "starting_comfyui"]
        assert timings.total is not None and sum(phases.values()) <= timings.total + 1e-6
    finally:
        worker.stop()


def test_a_failed_gpu_move_restarts_comfyui_rather_than_running_on_the_cpu(
    jobs: MemoryDict, tmp_path: Path
) -> None:
    env = _worker_env(tmp_path, "cpu", "--gpu-move-fails")
    worker = ModalWorker.from_env(environ=env)
    try:
        worker.start_before_snapshot()
        first = worker.process.pid
        env["MODAL_TASK_ID"] = "ta-restored"
        with pytest.raises(Exception, match=GPU_ROUTE):
            worker.after_restore()  # the fresh ComfyUI cannot move either: the enter hook fails
        assert worker.process.pid != first  # it did try a fresh ComfyUI before giving up
    finally:
        worker.stop()


@pytest.mark.filterwarnings("ignore:The ComfyWorker.run function is executing locally")
def test_without_snapshots_local_runs_both_enter_hooks_and_jobs_say_cold(
    jobs: MemoryDict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ComfyWorker().run.local()``: Modal runs the enter hooks in order, as in a container."""
    for key, value in _worker_env(tmp_path, "off").items():
        if key != "RYLA_SNAPSHOT":
            monkeypatch.setenv(key, value)
    import modal_apps.comfyui_app as comfyui_app

    import ryla_modal.cloud.app as packaged

    class Volume:
        def commit(self) -> None:
            pass

    monkeypatch.setattr(packaged, "outputs", Volume())
    assert packaged.settings.snapshot == "off"  # imported without RYLA_SNAPSHOT
    worker = comfyui_app.ComfyWorker()
    waiting = _queued_job(jobs, tmp_path)
    try:
        result = worker.run.local({"job_id": waiting.job_id, "workflow": WORKFLOW})
        assert result["status"] == "succeeded", result
        assert result["timings"]["restored"] is False
        assert result["timings"]["container_start"] is not None
        instance = worker._cached_user_cls_instance()  # type: ignore[attr-defined]
        assert instance.worker.snapshot == "off"
        assert DEFER_GPU_ENV not in instance.worker.process._extra_env
    finally:
        from modal._partial_function import _find_callables_for_obj, _PartialFunctionFlags

        instance = worker._cached_user_cls_instance()  # type: ignore[attr-defined]
        for hook in _find_callables_for_obj(instance, _PartialFunctionFlags.EXIT).values():
            hook()


def test_process_start_is_before_now() -> None:
    started = process_started_at()
    assert started <= time.time()


# --- model load: time in loader nodes ------------------------------------------------------------


def test_loader_nodes_are_model_load() -> None:
    for name in (
        "CheckpointLoaderSimple",
        "LoraLoaderModelOnly",
        "UNETLoader",
        "UnetLoaderGGUF",
        "VAELoader",
        "DualCLIPLoader",
        "UpscaleModelLoader",
    ):
        assert is_model_loader(name), name
    for other in ("KSampler", "LoadImage", "SaveImage", "VAEDecode", None, ""):
        assert not is_model_loader(other), other


def test_the_tracker_attributes_each_nodes_span_to_loader_or_not() -> None:
    workflow = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {}},
        "2": {"class_type": "LoraLoader", "inputs": {}},
        "3": {"class_type": "KSampler", "inputs": {}},
        "4": {"class_type": "SaveImage", "inputs": {}},
    }
    now = [100.0]
    seen: list[RunnerProgress] = []
    tracker = _ProgressTracker(workflow, seen.append, clock=lambda: now[0])

    def at(t: float, kind: str, **data: Any) -> None:
        now[0] = t
        tracker.on_event(kind, data)

    at(100.0, "execution_start")
    at(100.5, "executing", node="1")
    at(103.5, "executing", node="2")  # the checkpoint took 3 s
    at(104.0, "executing", node="3")  # the LoRA 0.5 s
    at(104.2, "progress", value=1, max=2, node="3")
    at(109.0, "executing", node="4")  # the sampler 5 s: not model load
    at(109.5, "executing", node=None)
    assert tracker.model_load == pytest.approx(3.5)

    cached = _ProgressTracker(workflow, seen.append, clock=lambda: now[0])
    cached.on_event("execution_cached", {"nodes": ["1", "2"]})
    cached.on_event("executing", {"node": "3"})
    cached.finished()
    assert cached.model_load is None  # no loader ran: no model load phase


# --- the phases, in order, for any renderer ------------------------------------------------------


def test_timing_phases_are_the_fields_in_order_on_both_sides() -> None:
    names = [name for name, _ in client_job.TIMING_PHASES]
    plain = [f.name for f in dataclasses.fields(client_job.Timings)]
    assert plain == [*names, "total", "restored"]
    assert list(schemas.Timings.model_fields) == plain
    for name in plain:  # every field says what it measures, in the OpenAPI document too
        assert schemas.Timings.model_fields[name].description, name


def test_labelled_timings_read_as_the_cold_start_story() -> None:
    timings = client_job.Timings.from_dict(
        {
            "queued": 1.0,
            "container_start": 2.0,
            "starting_comfyui": 0.5,
            "model_load": 3.0,
            "executing": 4.0,
            "storing_outputs": 0.25,
            "total": 11.0,
            "restored": True,
        }
    )
    assert timings.restored is True
    labels = [label for label, _ in timings.labelled(downloaded=0.75)]
    assert labels == [
        "queued",
        "container start",
        "ComfyUI start (restored from a snapshot)",
        "model load",
        "executing",
        "storing outputs",
        "downloaded",
    ]
    line = timings.summary(downloaded=0.75)
    assert line.startswith("11.0 s: queued 1.0 s · container start 2.0 s")
    assert line.endswith("downloaded 750 ms")  # under a second: milliseconds
    with pytest.raises(ValueError, match=r"timings\.restored: expected true or false"):
        client_job.Timings.from_dict({"restored": "yes"})
