"""The ``ryla_snapshot`` ComfyUI custom node: ComfyUI starts without a GPU, then moves onto one.

Modal takes a CPU memory snapshot with no GPU attached.  A ComfyUI that touched CUDA while it
started would carry a CUDA state without a device into every container restored from that
snapshot, so with ``snapshot = "cpu"`` the worker starts ComfyUI with ``RYLA_COMFYUI_DEFER_GPU=1``
and this node, copied into ``custom_nodes/ryla_snapshot/`` of the image, does two things:

- its prestartup half (ComfyUI runs ``prestartup_script.py`` files before it imports
  ``comfy.model_management``) makes ComfyUI initialise as with ``--cpu``: no CUDA call at
  start-up.  It also asks for PyTorch attention, which is what ComfyUI picks by itself on an
  NVIDIA GPU with torch 2, because the attention function is chosen once, at import;
- its route ``POST /ryla/gpu``, called by the worker in ``@modal.enter(snap=False)`` (after the
  restore, GPU attached), switches ComfyUI's device state to the GPU before any prompt runs.

Modal's own ComfyUI example does the same with a node that patches ComfyUI's device lookup and
a ``/cuda/set_device`` route; this one changes ComfyUI's state without patching its files.
The file is read as text and written into the image (``cloud/image.py``), never imported by
ryla: ``torch``, ``comfy`` and ``server`` exist only inside ComfyUI.  Only a real GPU exercises
the move (``bench/gpu_snapshot_start.py``); the ComfyUI stand-in serves the same route.
"""

from __future__ import annotations

import os
from typing import Any

#: Set in ComfyUI's environment by the worker when ComfyUI must start off the GPU.
DEFER_GPU_ENV = "RYLA_COMFYUI_DEFER_GPU"
#: The route that moves a deferred ComfyUI onto the GPU.
GPU_ROUTE = "/ryla/gpu"
#: The folder under ``custom_nodes/`` the image writes this node into.
NODE_DIRECTORY = "ryla_snapshot"


def defer_gpu() -> None:
    """Before ComfyUI imports its model management: start as ``--cpu`` would."""
    if os.environ.get(DEFER_GPU_ENV) != "1":
        return
    # is_available() asks NVML instead of initialising the CUDA driver (whose failure sticks).
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    from comfy.cli_args import args  # type: ignore[import-not-found]

    args.cpu = True
    args.use_pytorch_cross_attention = True


def move_to_gpu() -> dict[str, Any]:
    """Switch ComfyUI's device state to the first CUDA device; what it found, as JSON."""
    import comfy.model_management as mm  # type: ignore[import-not-found]
    import torch  # type: ignore[import-not-found]
    from comfy.cli_args import args

    if not torch.cuda.is_available():
        return {"ok": False, "device": "cpu", "error": "no CUDA device is visible"}
    args.cpu = False
    mm.cpu_state = mm.CPUState.GPU
    torch.cuda.init()
    device = mm.get_torch_device()
    mm.total_vram = mm.get_total_memory(device) / (1024 * 1024)
    state = mm.VRAMState.NORMAL_VRAM
    if args.highvram or args.gpu_only:
        state = mm.VRAMState.HIGH_VRAM
    elif args.lowvram:
        state = mm.VRAMState.LOW_VRAM
    elif args.novram:
        state = mm.VRAMState.NO_VRAM
    mm.vram_state = state
    mm.set_vram_to = state
    return {"ok": True, "device": str(device), "vram_mb": round(mm.total_vram)}


def register_route() -> None:
    """``POST /ryla/gpu`` on ComfyUI's own server: 200 once on the GPU, 503 when there is none."""
    from aiohttp import web
    from server import PromptServer  # type: ignore[import-not-found]

    async def to_gpu(request: web.Request) -> web.Response:
        result = move_to_gpu()
        return web.json_response(result, status=200 if result["ok"] else 503)

    PromptServer.instance.routes.post(GPU_ROUTE)(to_gpu)


def node_files() -> dict[str, str]:
    """The node's files, by name: this source plus the one call each ComfyUI hook needs."""
    with open(__file__, encoding="utf-8") as fh:
        source = fh.read()
    return {
        "prestartup_script.py": source + "\n\ndefer_gpu()\n",
        "__init__.py": source + "\n\nregister_route()\nNODE_CLASS_MAPPINGS: dict[str, Any] = {}\n",
    }


__all__ = [
    "DEFER_GPU_ENV",
    "GPU_ROUTE",
    "NODE_DIRECTORY",
    "defer_gpu",
    "move_to_gpu",
    "node_files",
    "register_route",
]
