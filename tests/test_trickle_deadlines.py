"""The gateway's and worker's own requests to ComfyUI end by their budgets against a trickle.

``tests/_hang_servers.TricklePeer`` sends a byte every 50 ms: never long enough apart for
httpx's per-read timeout, so only a total deadline ends these waits.  (The job path's requests,
``comfy/api.py``, are tested in test_comfy_api.py; the readiness probe in test_comfy_monitor.py.)
Model downloads into the Volume are held to the same rule.
"""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from types import SimpleNamespace

import pytest

from ryla_modal import defaults
from ryla_modal.cloud import worker as worker_module
from ryla_modal.cloud.models import download_all
from ryla_modal.cloud.snapshot_node import GPU_ROUTE
from ryla_modal.cloud.worker import ModalWorker
from ryla_modal.errors import ComfyUIUnavailable, ConfigError
from ryla_modal.gateway.object_info import ComfyObjectInfo
from tests._hang_servers import TricklePeer

HANG_GUARD_S = 10.0  # far past every budget below: reaching it means the request hung


@pytest.mark.parametrize("what", ["headers", "body"])
def test_an_object_info_fetch_from_a_trickling_comfyui_ends_by_its_timeout(what: str) -> None:
    """A fetch that never ended held the single flight forever: no later fetch could start,
    so object_info stayed unavailable even after ComfyUI recovered."""
    with (
        concurrent.futures.ThreadPoolExecutor(1) as pool,  # exits last: the peer closes first
        TricklePeer(what, interval_s=0.05) as peer,
    ):
        # A caller with no copy waits for the fetch up to wait_s (60 s here): it is back as
        # soon as the fetch gives up at its 0.5 s, without a document.
        info = ComfyObjectInfo(peer.url, timeout_s=0.5, wait_s=60)
        assert pool.submit(info).result(timeout=HANG_GUARD_S) is None


@pytest.mark.parametrize("what", ["headers", "body"])
def test_moving_comfyui_onto_the_gpu_ends_by_its_budget(
    what: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A move that hangs must fail, so the worker restarts ComfyUI instead of waiting forever."""
    monkeypatch.setattr(worker_module, "_GPU_MOVE_TIMEOUT_S", 0.5)
    with (
        concurrent.futures.ThreadPoolExecutor(1) as pool,
        TricklePeer(what, interval_s=0.05) as peer,
    ):
        worker = SimpleNamespace(process=SimpleNamespace(base_url=peer.url))
        moved = pool.submit(ModalWorker._move_to_gpu, worker)  # type: ignore[arg-type]
        with pytest.raises(ComfyUIUnavailable, match=rf"POST {GPU_ROUTE}: the GPU move deadline"):
            moved.result(timeout=HANG_GUARD_S)


@pytest.mark.parametrize("what", ["headers", "body"])
def test_a_model_download_from_a_trickling_host_ends_by_its_budget(
    what: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host that drips the answer fails the download (the .part stays for the next attempt)
    instead of holding `ryla models add` and its container until Modal's own timeout."""
    monkeypatch.setattr(defaults, "MODEL_MIN_BYTES_PER_S", 10**9)  # the body gets ~timeout_s
    with (
        concurrent.futures.ThreadPoolExecutor(1) as pool,
        TricklePeer(what, interval_s=0.05) as peer,
    ):
        items = [{"folder": "loras", "url": f"{peer.url}/m.safetensors"}]
        fetched = pool.submit(download_all, items, tmp_path, timeout_s=0.5)
        with pytest.raises(ConfigError, match=r"m\.safetensors failed: DeadlineExceeded"):
            fetched.result(timeout=HANG_GUARD_S)
    assert not (tmp_path / "loras" / "m.safetensors").exists()
