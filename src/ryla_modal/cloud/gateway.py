"""The gateway as the Modal function serves it: the Dict store, the Modal executor, the volumes.

Composes the job API (``gateway.app.create_app``) from the Modal pieces; the model files on the
models Volume are listed here for ``/validate`` and ``POST /jobs``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ryla_modal import defaults
from ryla_modal.cloud import image as paths
from ryla_modal.cloud.executor import (
    LookupFn,
    ModalExecutor,
    SpawnFn,
    modal_call_lookup,
    modal_spawner,
)
from ryla_modal.cloud.store import CallWaiter, DictJobStore, JobSignals, modal_call_waiter

if TYPE_CHECKING:  # pragma: no cover
    from fastapi import FastAPI

    from ryla_modal.cloud.settings import AppSettings

log = logging.getLogger("ryla_modal.gateway")


# --- model files on the models Volume --------------------------------------------------------


def list_model_files(root: Path, *, max_files: int = 100_000) -> dict[str, list[str]]:
    """``{folder: [relative/posix/paths]}`` under each top-level folder of ``root``."""
    out: dict[str, list[str]] = {}
    count = 0
    if not root.is_dir():
        return out
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        names: list[str] = []
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                rel = Path(dirpath, name).relative_to(folder).as_posix()
                names.append(rel)
                count += 1
                if count >= max_files:
                    break
        out[folder.name] = names
    return out


class VolumeModelFiles(Mapping[str, Sequence[str]]):
    """The model files on the models Volume, re-listed (after ``reload``) every ``ttl_s``."""

    def __init__(
        self,
        root: Path,
        *,
        reload: Callable[[], None] | None = None,
        ttl_s: float = defaults.MODAL_MODEL_LIST_TTL_S,
    ) -> None:
        self.root = Path(root)
        self._reload = reload
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._files: dict[str, list[str]] = {}
        self._at: float | None = None

    def _current(self) -> dict[str, list[str]]:
        with self._lock:
            now = time.monotonic()
            if self._at is None or now - self._at >= self.ttl_s:
                if self._reload is not None and self._at is not None:
                    try:
                        self._reload()
                    except Exception as exc:
                        log.warning("models volume reload failed: %s", exc)
                self._files = list_model_files(self.root)
                self._at = now
            return self._files

    def __getitem__(self, key: str) -> Sequence[str]:
        return self._current()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._current())

    def __len__(self) -> int:
        return len(self._current())


# --- the gateway inside Modal ----------------------------------------------------------------


def outputs_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where the outputs Volume is mounted (``RYLA_OUTPUTS_DIR`` moves it, for tests)."""
    env = os.environ if environ is None else environ
    return Path(env.get("RYLA_OUTPUTS_DIR") or paths.OUTPUTS_DIR)


def create_modal_gateway(
    settings: AppSettings,
    *,
    worker_class: str,
    models_volume: Any,
    outputs_volume: Any,
    object_info_path: Path | None = None,
    spawn: SpawnFn | None = None,
    lookup_call: LookupFn = modal_call_lookup,
    call_waiter: CallWaiter = modal_call_waiter,
    poll_s: float = defaults.GATEWAY_STORE_POLL_S,
) -> FastAPI:
    """The job API as the Modal gateway function serves it (called inside the container).

    ``spawn``/``lookup_call``/``call_waiter`` default to the deployed ``worker_class`` and
    Modal's FunctionCalls (tests pass their own).  Long polls wake on the worker's writes (its
    signal Queue, its FunctionCall ending) and re-read the Dict every ``poll_s`` besides.
    Webhooks (``RYLA_WEBHOOK_SECRET`` from the deployment's webhook Secret): the worker makes
    the first attempt; this container's deliverer retries what stays pending while it runs.
    """
    import modal

    from ryla_modal.gateway.app import create_app
    from ryla_modal.gateway.object_info import FileObjectInfo
    from ryla_modal.gateway.webhooks import Deliverer, WebhookSettings

    jobs = modal.Dict.from_name(settings.jobs_dict, create_if_missing=True)
    events = modal.Queue.from_name(settings.jobs_queue, create_if_missing=True)
    store = DictJobStore(
        jobs,
        outputs_dir=outputs_dir(),
        reload_outputs=outputs_volume.reload,
        signals=JobSignals(events),
        call_waiter=call_waiter,
        poll_s=poll_s,
    )
    executor = ModalExecutor(
        store,
        spawn=spawn or modal_spawner(settings.app_name, worker_class),
        lookup_call=lookup_call,
    )
    webhooks = WebhookSettings.from_env()
    Deliverer(store, webhooks).start()  # for the container's life (a daemon thread)
    return create_app(
        executor,
        store,
        webhooks=webhooks,
        object_info=FileObjectInfo(object_info_path or Path(paths.OBJECT_INFO_PATH)),
        extra_models=VolumeModelFiles(Path(paths.MODELS_DIR), reload=models_volume.reload),
        # Modal's proxy auth guards this gateway, and its Host is the *.modal.run name.
        check_host=False,
        proxy_auth=True,
        threads=defaults.MODAL_GATEWAY_HTTP_THREADS,  # each modal.Dict call waits on the network
    )


__all__ = ["VolumeModelFiles", "create_modal_gateway", "list_model_files", "outputs_dir"]
