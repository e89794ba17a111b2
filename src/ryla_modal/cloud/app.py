"""The Modal app: image layers, volumes, secrets, the GPU ``ComfyWorker`` and the gateway.

It ships in the wheel, so ``ryla deploy`` (``modal deploy -m ryla_modal.cloud.app``) works from
any folder.  Modal records each function's module, so every container imports *this* module
(``ryla_modal`` is in the image, added last); ``modal_apps/comfyui_app.py`` in a checkout
re-exports these objects, so deploying that file deploys this same app.

Declarations only; the work happens in ``ryla_modal.cloud`` (worker: ``cloud.worker``, gateway:
``cloud.gateway``, downloads: ``cloud.models``).  Settings come from ``./ryla.toml``'s
``[deploy]`` table and ``RYLA_*`` variables, read where ``ryla deploy`` runs
(``ryla_modal.cloud.settings``), and are handed to every container as its environment, so the
container's own import declares the same app (containers never read a ``ryla.toml``).

    RYLA_GPU=A100 RYLA_SECRETS=huggingface-secret ryla deploy

Importing this module needs no Modal token: every Modal object here is lazy.
"""

from __future__ import annotations

from typing import Any

import modal

from ryla_modal.cloud import image as paths
from ryla_modal.cloud.settings import IMAGE_PACKAGES, AppSettings

# A container has no ryla.toml of the deployer's: its environment (container_env) says it all.
settings = AppSettings.load() if modal.is_local() else AppSettings.from_env()
container_env: dict[str, str | None] = dict(settings.to_env())

app = modal.App(settings.app_name)
SNAPSHOTS = settings.snapshot != "off"

# Layers from the slowest-changing to the fastest: a code edit only re-adds ryla_modal (last).
image = (
    modal.Image.debian_slim(python_version="3.11")
    .apt_install("git")
    .pip_install(*settings.torch_packages)
    .run_commands(*paths.comfyui_commands(settings.comfyui_repo, settings.comfyui_commit))
    .pip_install(*IMAGE_PACKAGES)
    .run_commands(*paths.custom_node_commands(settings.custom_nodes))
    # "cpu" snapshots: the node that keeps ComfyUI off the GPU until the restore (cloud.worker)
    .run_commands(*(paths.snapshot_node_commands() if settings.snapshot == "cpu" else []))
    .run_commands(paths.write_file_command(paths.MODEL_PATHS_FILE, paths.model_paths_yaml()))
    .run_commands(paths.object_info_command(paths.OBJECT_INFO_PATH))
    .add_local_python_source("ryla_modal")
)

models = modal.Volume.from_name(settings.models_volume, create_if_missing=True)
outputs = modal.Volume.from_name(settings.outputs_volume, create_if_missing=True)
secrets = [modal.Secret.from_name(name) for name in settings.secrets]
#: RYLA_WEBHOOK_SECRET for signing webhooks: the gateway (retries) and the worker (first attempt)
webhook_secrets = (
    [modal.Secret.from_name(settings.webhook_secret)] if settings.webhook_secret else []
)


@app.function(
    image=image,
    volumes={paths.MODELS_DIR: models},
    secrets=secrets,
    env=container_env,
    timeout=settings.download_timeout_s,
)
def download_models(items: list[dict[str, Any]], on_clash: str = "skip") -> list[dict[str, Any]]:
    """Fetch model files into the models volume (Hugging Face token: ``HF_TOKEN`` secret)."""
    from ryla_modal.cloud.models import download_all

    models.reload()  # see files another container added since this one started
    try:
        return download_all(items, paths.MODELS_DIR, on_clash=on_clash)
    finally:
        models.commit()  # whole files only: a cut transfer left a hidden .part to resume


@app.function(
    image=image,
    cpu=1.0,
    memory=1024,
    volumes={paths.MODELS_DIR: models},
    env=container_env,
    timeout=120,
)
def check_workflows(workflows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """``ryla deploy --check``: workflows against the baked object_info and the models volume."""
    from ryla_modal.cloud.checks import check_workflows as check

    models.reload()
    return check(workflows, paths.OBJECT_INFO_PATH, paths.MODELS_DIR)


@app.cls(
    image=image,
    gpu=settings.gpu,
    volumes={paths.MODELS_DIR: models, paths.OUTPUTS_DIR: outputs},
    secrets=secrets + webhook_secrets,
    env=container_env,
    scaledown_window=settings.scaledown_window_s,
    timeout=settings.timeout_s,
    startup_timeout=settings.startup_timeout_s,
    max_containers=settings.max_containers,
    # Keep-warm: GPUs held even when idle (billed); `ryla warm` changes these at runtime.
    min_containers=settings.min_containers,
    buffer_containers=settings.buffer_containers or None,
    # Memory snapshots: ComfyUI's start is saved once and restored by later containers.
    enable_memory_snapshot=SNAPSHOTS,
    experimental_options={"enable_gpu_snapshot": True} if settings.snapshot == "gpu" else None,
)
@modal.concurrent(max_inputs=settings.max_inputs)
class ComfyWorker:
    """One GPU container: ComfyUI started once by the enter hooks, then one job per ``run``.

    With snapshots, Modal runs ``start_comfyui`` once, saves the container's memory, and later
    containers resume from there and run only ``on_gpu``; without, both run in order.
    """

    @modal.enter(snap=SNAPSHOTS)
    def start_comfyui(self) -> None:
        from ryla_modal.cloud.worker import ModalWorker

        self.worker = ModalWorker.from_env(on_outputs_written=outputs.commit)
        self.worker.start_before_snapshot()

    @modal.enter(snap=False)
    def on_gpu(self) -> None:
        self.worker.after_restore()

    @modal.method()
    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        return self.worker.run(job)

    @modal.exit()
    def stop_comfyui(self) -> None:
        worker = getattr(self, "worker", None)
        if worker is not None:
            worker.stop()


@app.function(
    image=image,
    cpu=1.0,
    memory=1024,
    volumes={paths.MODELS_DIR: models, paths.OUTPUTS_DIR: outputs},
    secrets=webhook_secrets,
    env=container_env,
    scaledown_window=settings.scaledown_window_s,
    timeout=settings.gateway_timeout_s,
)
@modal.concurrent(max_inputs=settings.gateway_max_inputs)
@modal.asgi_app(requires_proxy_auth=True)
def gateway() -> Any:
    """The job API (FastAPI) in front of ComfyWorker, with the modal.Dict job store."""
    from ryla_modal.cloud.gateway import create_modal_gateway

    return create_modal_gateway(
        settings,
        worker_class="ComfyWorker",
        models_volume=models,
        outputs_volume=outputs,
    )
