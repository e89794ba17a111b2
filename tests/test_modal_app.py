"""modal_apps/comfyui_app.py: imported without a token, deployed with the REAL `modal deploy`.

The deploy goes through `ModalCLI.deploy` (what `ryla deploy` runs) against the control-plane
stand-in; the assertions read what the CLI declared to it (FunctionCreate, ClassCreate, image
layers, volumes, secrets), so they check the app as Modal would receive it.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import modal
import pytest
from modal_proto import api_pb2

from ryla_modal import defaults
from ryla_modal.cloud import image as modal_image
from ryla_modal.cloud.settings import IMAGE_PACKAGES
from ryla_modal.deploy.modal_cli import ModalCLI
from ryla_modal.errors import ModalCLIError
from tests.fakes.modal_control import FakeModalControl, function_definition

ROOT = Path(__file__).resolve().parent.parent
APP_FILE = ROOT / "modal_apps" / "comfyui_app.py"
DEPLOY_TIMEOUT_S = 45.0
NODE_REPO = "https://github.com/example/ComfyUI-Example-Nodes.git"
NODE_COMMIT = "0123456789abcdef0123456789abcdef01234567"

RYLA_ENV = {
    "RYLA_APP": "ryla-deploy-test",
    "RYLA_GPU": "a100",
    "RYLA_SCALEDOWN_WINDOW": "123",
    "RYLA_WORKER_TIMEOUT": "1800",
    "RYLA_WORKER_STARTUP_TIMEOUT": "420",
    "RYLA_MAX_INPUTS": "3",
    "RYLA_GATEWAY_MAX_INPUTS": "40",
    "RYLA_MAX_CONTAINERS": "2",
    "RYLA_SECRETS": "hf-secret",
    "RYLA_MODELS_VOLUME": "test-models",
    "RYLA_OUTPUTS_VOLUME": "test-outputs",
    "RYLA_JOBS_DICT": "test-jobs",
    "RYLA_CUSTOM_NODES": f"{NODE_REPO}@{NODE_COMMIT}",
    "RYLA_GATEWAY_TIMEOUT": "300",
}


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """This environment without any MODAL_* or RYLA_* setting, with an empty HOME."""
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODAL_", "RYLA_"))}
    env.update(HOME=str(home), PYTHONPATH=str(ROOT), **extra)
    return env


@pytest.fixture
def fake() -> Iterator[FakeModalControl]:
    with FakeModalControl() as control:
        yield control
    assert control.errors == [], f"the fake itself failed: {control.errors}"


def deploy(fake: FakeModalControl, tmp_path: Path, **ryla: str) -> object:
    env = fake.env(tmp_path / "home")
    env = {k: v for k, v in env.items() if not k.startswith("RYLA_")}
    env.update(ryla)
    return ModalCLI(env=env, retries=0).deploy(APP_FILE, timeout=DEPLOY_TIMEOUT_S, cwd=tmp_path)


def test_import_needs_no_modal_token(tmp_path: Path) -> None:
    code = "import modal_apps.comfyui_app as m; print(m.app.name, m.settings.gpu)"
    env = clean_env(tmp_path / "home", RYLA_GPU="h100")
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [defaults.DEFAULT_APP_NAME, "H100"]
    assert not (tmp_path / "home" / ".modal.toml").exists()


def test_a_bad_setting_fails_the_import_naming_the_variable(tmp_path: Path) -> None:
    env = clean_env(tmp_path / "home", RYLA_GPU="A1000")
    proc = subprocess.run(
        [sys.executable, "-c", "import modal_apps.comfyui_app"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "RYLA_GPU: 'A1000' is not a Modal GPU type" in proc.stderr


def test_deploy_declares_gpu_volumes_secrets_scaling_and_proxy_auth(
    fake: FakeModalControl, tmp_path: Path
) -> None:
    result = deploy(fake, tmp_path, **RYLA_ENV)

    record = fake.deployed["ryla-deploy-test"]
    assert set(record["functions"]) == {
        "ComfyWorker.*",
        "gateway",
        "download_models",
        "check_workflows",
    }
    assert record["publish"].name == "ryla-deploy-test"
    assert set(record["publish"].class_ids) == {"ComfyWorker"}
    (class_req,) = record["classes"]
    assert class_req.app_id == record["app_id"]
    names = fake.object_names

    worker = function_definition(record["functions"]["ComfyWorker.*"])
    assert worker.is_class
    assert set(worker.method_definitions) == {"run"}
    assert worker.resources.gpu_config.gpu_type == "A100"
    assert worker.resources.gpu_config.count == 1
    assert worker.task_idle_timeout_secs == 123
    assert worker.timeout_secs == 1800
    assert worker.startup_timeout_secs == 420
    assert worker.max_concurrent_inputs == 3
    assert worker.autoscaler_settings.max_containers == 2
    assert {(m.mount_path, names[m.volume_id]) for m in worker.volume_mounts} == {
        (modal_image.MODELS_DIR, "test-models"),
        (modal_image.OUTPUTS_DIR, "test-outputs"),
    }
    assert "hf-secret" in [names.get(s) for s in worker.secret_ids]

    gateway = function_definition(record["functions"]["gateway"])
    assert gateway.webhook_config.type == api_pb2.WEBHOOK_TYPE_ASGI_APP
    assert gateway.webhook_config.requires_proxy_auth is True
    assert not gateway.resources.gpu_config.gpu_type
    assert gateway.max_concurrent_inputs == 40
    assert gateway.timeout_secs == 300
    assert {(m.mount_path, names[m.volume_id]) for m in gateway.volume_mounts} == {
        (modal_image.MODELS_DIR, "test-models"),
        (modal_image.OUTPUTS_DIR, "test-outputs"),
    }
    assert "hf-secret" not in [names.get(s) for s in gateway.secret_ids]  # it needs no token
    assert result.endpoint_url == record["web_urls"]["gateway"]  # type: ignore[attr-defined]

    download = function_definition(record["functions"]["download_models"])
    assert not download.resources.gpu_config.gpu_type
    assert [(m.mount_path, names[m.volume_id]) for m in download.volume_mounts] == [
        (modal_image.MODELS_DIR, "test-models")
    ]
    assert "hf-secret" in [names.get(s) for s in download.secret_ids]

    created = {r.deployment_name: r for r in fake.calls_named("VolumeGetOrCreate")}
    assert set(created) == {"test-models", "test-outputs"}
    assert all(
        r.object_creation_type == api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING
        for r in created.values()
    )


def test_containers_get_the_deploy_time_settings(fake: FakeModalControl, tmp_path: Path) -> None:
    """Modal imports the app file again in each container: it must see the same RYLA_* values."""
    deploy(fake, tmp_path, **RYLA_ENV)

    env_dicts = [dict(r.env_dict) for r in fake.calls_named("SecretGetOrCreate") if r.env_dict]
    assert env_dicts, "no container environment was declared"
    for env in env_dicts:
        for key, value in RYLA_ENV.items():
            expected = value.upper() if key == "RYLA_GPU" else value
            assert env[key] == expected, key
    named = [r.deployment_name for r in fake.calls_named("SecretGetOrCreate") if r.deployment_name]
    assert set(named) == {"hf-secret"}


def test_image_layers_go_from_slow_to_fast_and_our_code_is_not_baked_in(
    fake: FakeModalControl, tmp_path: Path
) -> None:
    deploy(fake, tmp_path, **RYLA_ENV)

    every = [
        c for req in fake.calls_named("ImageGetOrCreate") for c in req.image.dockerfile_commands
    ]
    commands = [c for c in every if c.startswith("RUN")]

    def first(marker: str) -> int:
        hits = [i for i, cmd in enumerate(commands) if marker in cmd]
        assert hits, f"no image layer runs {marker!r}: {commands}"
        return hits[0]

    order = [
        first("apt-get install"),
        first("torch"),
        first(f"git fetch -q --depth 1 origin {defaults.COMFYUI_COMMIT}"),
        first("fastapi"),
        first(NODE_COMMIT),
        first("extra_model_paths.yaml"),
        first(f"--out {modal_image.OBJECT_INFO_PATH}"),
    ]
    assert order == sorted(order), commands
    copied = [c for c in every if c.startswith(("COPY", "ADD")) and "ryla_modal" in c]
    assert copied == [], "ryla_modal must come as a mount, after every layer"
    mounted = [f.filename for req in fake.calls_named("MountGetOrCreate") for f in req.files]
    assert any(name.endswith("/ryla_modal/cloud/settings.py") for name in mounted), mounted


def test_a_missing_secret_fails_the_deploy_naming_it(
    fake: FakeModalControl, tmp_path: Path
) -> None:
    fake.missing_secrets.add("hf-secret")
    with pytest.raises(ModalCLIError) as info:
        deploy(fake, tmp_path, **RYLA_ENV)
    assert "hf-secret" in str(info.value)
    assert fake.calls_named("AppPublish") == []


def test_a_bad_setting_fails_the_deploy_before_anything_is_created(
    fake: FakeModalControl, tmp_path: Path
) -> None:
    with pytest.raises(ModalCLIError) as info:
        deploy(fake, tmp_path, RYLA_SCALEDOWN_WINDOW="1")
    assert "RYLA_SCALEDOWN_WINDOW" in str(info.value)
    assert fake.calls_named("FunctionCreate") == []


def test_image_packages_cover_the_runtime_dependencies() -> None:
    """The container imports ryla_modal: every dependency but modal itself must be installed."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]

    def name(req: str) -> str:
        for sep in "[<>=!~ ;":
            req = req.split(sep, 1)[0]
        return req.strip().lower().replace("_", "-")

    needed = {name(r) for r in project["dependencies"]} - {"modal"}
    assert needed <= {name(r) for r in IMAGE_PACKAGES}


# --- what runs inside the containers, run here ------------------------------------------------


def test_object_info_snapshot_step_saves_what_comfyui_serves(tmp_path: Path) -> None:
    """The image build's object_info step, run against the ComfyUI stand-in."""
    from tests.fakes.comfyui_command import fake_comfyui_command

    out = tmp_path / "opt" / "object_info.json"
    script = ROOT / "src" / "ryla_modal" / "cloud" / "object_info_snapshot.py"
    proc = subprocess.run(
        [
            *[sys.executable, str(script), "--out", str(out), "--timeout", "30", "--"],
            *fake_comfyui_command("--output-directory", str(tmp_path / "o")),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    info = json.loads(out.read_text())
    assert {"EmptyImage", "SaveImage"} <= set(info)
    assert info["SaveImage"]["output_node"] is True

    failed = subprocess.run(
        [
            *[sys.executable, str(script), "--out", str(tmp_path / "x.json"), "--timeout", "5"],
            *["--", sys.executable, "-c", "import sys; print('boom: no GPU here'); sys.exit(3)"],
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert failed.returncode == 1
    assert "exited with status 3" in failed.stderr and "boom: no GPU here" in failed.stderr
    assert not (tmp_path / "x.json").exists()


class _Volume:
    def __init__(self) -> None:
        self.commits = 0

    def commit(self) -> None:
        self.commits += 1


@pytest.fixture
def local_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``ComfyWorker()`` run locally: ComfyUI is the stand-in, modal.Dict an in-memory twin."""
    from tests.fakes.comfyui_command import fake_comfyui_command
    from tests.test_cloud_backend import MemoryDict, MemoryQueue

    command = fake_comfyui_command(
        "--output-directory", str(tmp_path / "comfy-out"),
        "--input-directory", str(tmp_path / "comfy-in"),
        "--temp-directory", str(tmp_path / "comfy-tmp"),
    )  # fmt: skip
    monkeypatch.setenv("RYLA_COMFYUI_COMMAND", json.dumps(command))
    monkeypatch.setenv("RYLA_OUTPUTS_DIR", str(tmp_path / "volume"))
    jobs, events = MemoryDict(), MemoryQueue()
    # Modal's cloud objects are the only things replaced: the Dict, the wake-up Queue and the
    # Volume's commit.
    monkeypatch.setattr(modal.Dict, "from_name", staticmethod(lambda *a, **k: jobs))
    monkeypatch.setattr(modal.Queue, "from_name", staticmethod(lambda *a, **k: events))
    import modal_apps.comfyui_app as comfyui_app

    import ryla_modal.cloud.app as packaged

    volume = _Volume()
    monkeypatch.setattr(packaged, "outputs", volume)  # ComfyWorker's module: where it looks
    worker = comfyui_app.ComfyWorker()
    worker.jobs, worker.volume = jobs, volume  # type: ignore[attr-defined]
    try:
        yield worker
    finally:
        from modal._partial_function import _find_callables_for_obj, _PartialFunctionFlags

        instance = worker._cached_user_cls_instance()  # type: ignore[attr-defined]
        for hook in _find_callables_for_obj(instance, _PartialFunctionFlags.EXIT).values():
            hook()  # what Modal runs when the container stops: @modal.exit


@pytest.mark.filterwarnings("ignore:The ComfyWorker.run function is executing locally")
def test_comfy_worker_runs_a_job_locally(local_worker: Any, tmp_path: Path) -> None:
    from ryla_modal.cloud.store import DictJobStore
    from ryla_modal.gateway.schemas import JobRecord

    jobs, volume = local_worker.jobs, local_worker.volume
    gateway = DictJobStore(jobs, outputs_dir=tmp_path / "volume")
    job_id = str(uuid.uuid4())
    now = time.time()
    record = JobRecord(
        job_id=job_id, status="queued", created_at=now, updated_at=now, workflow_sha256="0" * 64
    )
    gateway.create_if_absent(record)  # the gateway stores a job before it spawns it
    workflow = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 0x12AB34},
        },
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "w"}},
    }
    payload = {"job_id": job_id, "workflow": workflow, "inputs": [], "timeout_s": 30}

    result = local_worker.run.local(payload)  # Modal runs @modal.enter first, here too

    assert result["status"] == "succeeded", result
    assert result["job_id"] == job_id
    (out,) = result["outputs"]
    assert out["filename"].startswith("w_") and out["mime"] == "image/png"
    stored = gateway.get(job_id)
    assert stored is not None and stored.status == "succeeded"
    assert stored.timings.queued is not None and stored.timings.total is not None
    opened = gateway.open_output(job_id, 0)
    assert opened is not None
    fh, size = opened
    with fh:
        data = fh.read()
    assert size == out["size"] and hashlib.sha256(data).hexdigest() == out["sha256"]
    assert data.startswith(b"\x89PNG")
    assert volume.commits == 1  # outputs committed once, before the final record

    # The same job again: already final, so ComfyUI is not asked twice.
    again = local_worker.run.local(payload)
    assert again["status"] == "succeeded" and again["outputs"] == result["outputs"]
    assert volume.commits == 1

    # A job cancelled before the worker saw it never reaches ComfyUI.
    other = JobRecord(
        job_id=str(uuid.uuid4()), status="queued", created_at=now, updated_at=now,
        workflow_sha256="1" * 64,
    )  # fmt: skip
    gateway.create_if_absent(other)
    gateway.update(other.job_id, cancel_requested=True)
    cancelled = local_worker.run.local({**payload, "job_id": other.job_id})
    assert cancelled["status"] == "cancelled"


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


@pytest.mark.filterwarnings("ignore:The ComfyWorker.run function is executing locally")
def test_comfy_worker_empties_comfyuis_output_folder_after_each_job(
    local_worker: Any, tmp_path: Path
) -> None:
    """A warm container runs many jobs: their files go to the Volume, not pile up in ComfyUI's
    output folder.  The same graph twice (ComfyUI caches it) still yields a file both times."""
    from ryla_modal.cloud.store import DictJobStore
    from ryla_modal.gateway.schemas import JobRecord

    gateway = DictJobStore(local_worker.jobs, outputs_dir=tmp_path / "volume")
    workflow = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0x3366CC},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "e"}},
    }
    for _ in range(2):
        job_id, now = str(uuid.uuid4()), time.time()
        gateway.create_if_absent(
            JobRecord(
                job_id=job_id,
                status="queued",
                created_at=now,
                updated_at=now,
                workflow_sha256="3" * 64,
            )
        )
        result = local_worker.run.local({"job_id": job_id, "workflow": workflow})
        assert result["status"] == "succeeded", result
        (out,) = result["outputs"]
        opened = gateway.open_output(job_id, 0)
        assert opened is not None
        with opened[0] as fh:
            data = fh.read()
        assert data.startswith(b"\x89PNG") and hashlib.sha256(data).hexdigest() == out["sha256"]
        comfy_output = local_worker.worker.comfy_output_dir
        assert comfy_output is not None and comfy_output.is_dir()
        assert _files(comfy_output) == []
    assert _files(tmp_path / "comfy-out") == []  # the worker's folder replaced the command's


@pytest.mark.filterwarnings("ignore:The ComfyWorker.run function is executing locally")
def test_comfy_worker_restarts_a_dead_comfyui_before_the_next_job(
    local_worker: Any, tmp_path: Path
) -> None:
    from ryla_modal.cloud.store import DictJobStore
    from ryla_modal.gateway.schemas import JobRecord

    gateway = DictJobStore(local_worker.jobs, outputs_dir=tmp_path / "volume")
    workflow = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0x00FF00},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "r"}},
    }
    results = []
    for _ in range(2):
        job_id, now = str(uuid.uuid4()), time.time()
        gateway.create_if_absent(
            JobRecord(
                job_id=job_id,
                status="queued",
                created_at=now,
                updated_at=now,
                workflow_sha256="2" * 64,
            )
        )
        results.append(local_worker.run.local({"job_id": job_id, "workflow": workflow}))
        if len(results) == 1:
            process = local_worker.worker.process
            first_pid = process.pid
            os.kill(first_pid, signal.SIGKILL)  # ComfyUI dies between jobs
            process._proc.wait(timeout=10)
    assert [r["status"] for r in results] == ["succeeded", "succeeded"]
    assert local_worker.worker.process.pid != first_pid


@pytest.mark.filterwarnings("ignore:The ComfyWorker.run function is executing locally")
def test_modal_gateway_end_to_end_over_http(local_worker: Any, tmp_path: Path) -> None:
    """The gateway as Modal builds it, over real HTTP; spawn runs the local worker in a thread."""
    import asyncio
    import concurrent.futures

    import httpx

    from ryla_modal.cloud.gateway import create_modal_gateway
    from ryla_modal.cloud.settings import AppSettings
    from tests.fakes.comfyui_command import fake_comfyui_command
    from tests.gateway_fixtures import UvicornThread, wait_job

    info = tmp_path / "object_info.json"
    script = ROOT / "src" / "ryla_modal" / "cloud" / "object_info_snapshot.py"
    built = subprocess.run(
        [sys.executable, str(script), "--out", str(info), "--", *fake_comfyui_command()],
        capture_output=True,
        timeout=60,
    )
    assert built.returncode == 0, built.stderr

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    calls: dict[str, concurrent.futures.Future[Any]] = {}

    class Call:
        def __init__(self, future: concurrent.futures.Future[Any]) -> None:
            self.future = future

        def get(self, timeout: float | None = None) -> Any:
            try:
                return self.future.result(timeout=timeout)
            except concurrent.futures.TimeoutError:
                raise modal.exception.TimeoutError() from None

        def cancel(self, terminate_containers: bool = False) -> None:
            self.future.cancel()

    async def call_ended(call_id: str, wait_s: float) -> bool:
        done, _ = await asyncio.to_thread(concurrent.futures.wait, [calls[call_id]], wait_s)
        return bool(done)

    def spawn(payload: dict[str, Any]) -> str:
        call_id = f"fc-{len(calls) + 1}"
        calls[call_id] = pool.submit(local_worker.run.local, payload)
        return call_id

    class Volume:
        def reload(self) -> None:
            pass

    app = create_modal_gateway(
        AppSettings(),
        worker_class="ComfyWorker",
        models_volume=Volume(),
        outputs_volume=Volume(),
        object_info_path=info,
        spawn=spawn,
        lookup_call=lambda call_id: Call(calls[call_id]),
        call_waiter=call_ended,
    )
    # The Dict the gateway got is the one the worker writes (both from modal.Dict.from_name).
    server = UvicornThread(app)
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30, trust_env=False) as client:
            assert client.get("/health").json()["executor"] == "modal"
            # Modal's proxy checks these headers first: the document tells client makers so.
            doc = client.get("/openapi.json").json()
            assert doc["security"] == [{"ModalKey": [], "ModalSecret": []}]
            workflow: dict[str, Any] = {
                "1": {
                    "class_type": "EmptyImage",
                    "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0xABCDEF},
                },
                "2": {
                    "class_type": "SaveImage",
                    "inputs": {"images": ["1", 0], "filename_prefix": "e2e"},
                },
            }
            job_id = str(uuid.uuid4())
            resp = client.post("/jobs", json={"job_id": job_id, "workflow": workflow})
            assert resp.status_code == 202, resp.text
            job = wait_job(client, job_id)
            assert job["status"] == "succeeded", job
            out = client.get(f"/jobs/{job_id}/outputs/0")
            assert out.status_code == 200
            assert hashlib.sha256(out.content).hexdigest() == out.headers["x-sha256"]
            assert out.headers["x-sha256"] == job["outputs"][0]["sha256"]

            again = client.post("/jobs", json={"job_id": job_id, "workflow": workflow})
            assert again.status_code == 200 and len(calls) == 1  # no second GPU run

            broken = {"1": {"class_type": "NoSuchNode", "inputs": {}}}
            refused = client.post("/jobs", json={"workflow": broken})
            assert refused.status_code == 422, refused.text
            assert len(calls) == 1  # refused from the baked object_info, no worker spawned

            # `ryla health --wake`: a warm-up job spawns a worker and ends once ComfyUI is up
            warm = client.post("/warmup")
            assert warm.status_code == 202, warm.text
            warm_job = wait_job(client, warm.json()["job_id"])
            assert warm_job["status"] == "succeeded" and warm_job["outputs"] == []
            assert len(calls) == 2
    finally:
        server.stop()
        pool.shutdown(wait=True, cancel_futures=True)
