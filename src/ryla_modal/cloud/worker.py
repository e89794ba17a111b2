"""What ``ComfyWorker`` does inside its GPU container: keep ComfyUI up, run one job per call.

The job itself goes through ``gateway.lifecycle.JobLifecycle``, the same code ``ryla serve``
runs, which writes everything the gateway shows (``running``, throttled progress, the final
state with the outputs: files on the outputs Volume, committed before the record says
``succeeded``).  This module adds what only a container has: ComfyUI's start (its span counts as
``starting_comfyui`` for the jobs that waited through it), a restart of a dead ComfyUI before a
job, and payload decoding.  A cancel reaches a job two ways: Modal raises ``InputCancellation``
in the call, or the gateway's flag in the store (polled each ``cancel_poll_s``) interrupts the
prompt in ComfyUI.

    worker = ModalWorker.from_env(on_outputs_written=outputs_volume.commit)
    worker.start_before_snapshot()  # @modal.enter(snap=True): ComfyUI up, without a GPU if "cpu"
    worker.after_restore()  # @modal.enter(snap=False): onto the GPU; restored or cold?
    worker.run({"job_id": ..., "workflow": {...}, "inputs": [], "timeout_s": None})
    worker.stop()  # @modal.exit

Memory snapshots (``snapshot = "cpu" | "gpu"``): Modal runs ``start_before_snapshot``, saves the
container's memory (ComfyUI's process included), and later containers resume from that save and
run only ``after_restore``.  A CPU snapshot is taken with no GPU attached, so with ``"cpu"``
ComfyUI starts with its GPU deferred (the ``ryla_snapshot`` custom node, ``cloud/snapshot_node``)
and ``after_restore`` moves it onto the GPU (``POST /ryla/gpu``); with ``"gpu"`` the GPU is there
before the snapshot and its memory is saved too.  A container knows it was restored when its
``MODAL_TASK_ID`` differs from the one it had before the snapshot (Modal updates it on restore).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx

from ryla_modal import defaults
from ryla_modal._transport import DeadlineExceeded, deadline_client, deadline_scope
from ryla_modal.cloud import image as paths
from ryla_modal.cloud.gateway import outputs_dir
from ryla_modal.cloud.settings import AppSettings, comfyui_command
from ryla_modal.cloud.snapshot_node import DEFER_GPU_ENV, GPU_ROUTE
from ryla_modal.cloud.store import DictJobStore, JobSignals
from ryla_modal.comfy.process import ComfyProcess, check_ready
from ryla_modal.comfy.runner import ComfyRunner, InputFile, InputURL, JobInput
from ryla_modal.errors import ComfyUIUnavailable, ConfigError, WorkflowFormatError
from ryla_modal.gateway.lifecycle import JobLifecycle, JobSpec, StartupInfo
from ryla_modal.gateway.schemas import TERMINAL_STATUSES, JobRecord
from ryla_modal.gateway.webhooks import Deliverer, WebhookSettings
from ryla_modal.policy import Deadline

log = logging.getLogger("ryla_modal.worker")

_HEALTH_TIMEOUT_S = 5.0
_GPU_MOVE_TIMEOUT_S = 60.0  # CUDA init plus ComfyUI's device state; a hung move restarts ComfyUI
_IMPORTED_AT = time.time()  # fallback for the process start, where /proc cannot say


def process_started_at() -> float:
    """Epoch seconds this Python process started (the container's boot, as far as it can tell).

    Linux: ``/proc/self/stat`` field 22 (start, in clock ticks after boot) against
    ``/proc/uptime``; elsewhere, the time this module was imported.
    """
    try:
        stat = Path("/proc/self/stat").read_text()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # fields after "(comm)": 3.. -> 22 is [19]
        age = uptime - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return _IMPORTED_AT
    if not 0 <= age < 30 * 86400:
        return _IMPORTED_AT
    return min(time.time() - age, _IMPORTED_AT)


class ModalWorker:
    """ComfyUI plus a ``ComfyRunner``; safe for concurrent ``run`` calls (one per job)."""

    def __init__(
        self,
        store: DictJobStore,
        process: ComfyProcess,
        *,
        ready_timeout_s: float = defaults.COMFY_READY_TIMEOUT_S,
        default_timeout_s: float = defaults.EXECUTION_TIMEOUT_S,
        progress_interval_s: float = defaults.GATEWAY_PROGRESS_MIN_INTERVAL_S,
        cancel_poll_s: float = defaults.MODAL_CANCEL_POLL_S,
        comfy_output_dir: Path | None = None,
        snapshot: str = "off",
        environ: Mapping[str, str] | None = None,
        webhooks: WebhookSettings | None = None,
    ) -> None:
        """``comfy_output_dir``: ComfyUI's output folder, when this worker chose it; each job's
        files are then deleted from it once stored, so a warm container's disk does not fill.
        ``snapshot``: the deployment's memory snapshot mode; with ``"cpu"`` the ``process`` must
        start ComfyUI with ``RYLA_COMFYUI_DEFER_GPU=1`` (``from_env`` does).  ``environ``: where
        ``MODAL_TASK_ID`` is read (``os.environ``; tests pass their own).  ``webhooks``: the
        first delivery attempt of a finished job's webhook is made here, right after the job
        (the gateway may be scaled to zero); the gateway's deliverer retries what stays pending."""
        if snapshot not in ("off", "cpu", "gpu"):
            raise ValueError(f"snapshot must be 'off', 'cpu' or 'gpu', not {snapshot!r}")
        self.store = store
        self.webhooks = webhooks
        self.snapshot = snapshot
        self._environ = os.environ if environ is None else environ
        self.comfy_output_dir = comfy_output_dir
        self.process = process
        self.ready_timeout_s = ready_timeout_s
        self.default_timeout_s = default_timeout_s
        self.lifecycle = JobLifecycle(
            store, progress_interval_s=progress_interval_s, cancel_poll_s=cancel_poll_s
        )
        self.work_dir = Path(tempfile.mkdtemp(prefix="ryla-worker-"))
        self.runner: ComfyRunner | None = None
        #: epoch seconds of the last ComfyUI start (begin, ready): the cold start jobs wait for
        self.comfy_window: tuple[float, float] | None = None
        #: epoch seconds from the container's process start to its @modal.enter (None: unknown)
        self.container_window: tuple[float, float] | None = None
        #: whether the last ComfyUI start came from a memory snapshot (None: no start yet)
        self.restored: bool | None = None
        self._task_before_snapshot: str | None = None
        self._restart_lock = threading.Lock()

    @classmethod
    def from_env(
        cls,
        *,
        on_outputs_written: Callable[[], None] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> ModalWorker:
        """The worker as the Modal container runs it: settings and paths from ``RYLA_*``.

        ``RYLA_COMFYUI_COMMAND`` (JSON list) replaces ``python main.py`` in the image's
        ComfyUI; ``RYLA_OUTPUTS_DIR`` the outputs Volume's mount point (tests use both).
        """
        import modal

        env = os.environ if environ is None else environ
        settings = AppSettings.from_env(env)
        jobs = modal.Dict.from_name(settings.jobs_dict, create_if_missing=True)
        events = modal.Queue.from_name(settings.jobs_queue, create_if_missing=True)
        store = DictJobStore(
            jobs,
            outputs_dir=outputs_dir(env),
            role="worker",
            commit_outputs=on_outputs_written,
            signals=JobSignals(events),
        )
        # ComfyUI writes into a folder of ours (the last --output-directory wins), which the
        # runner empties after each job: outputs live on the Volume, not in the container.
        comfy_output = Path(tempfile.mkdtemp(prefix="ryla-comfyui-output-"))
        own_output = ["--output-directory", str(comfy_output)]
        # "cpu" snapshots are taken without a GPU: ComfyUI must not touch CUDA until restored.
        comfy_env = {DEFER_GPU_ENV: "1"} if settings.snapshot == "cpu" else None
        command = comfyui_command(env)
        if command is None:
            process = ComfyProcess.for_checkout(
                Path(paths.COMFY_DIR),
                sys.executable,
                extra_args=["--disable-auto-launch", *own_output],
                env=comfy_env,
            )
        else:
            process = ComfyProcess(command, extra_args=own_output, env=comfy_env)
        return cls(
            store,
            process,
            ready_timeout_s=float(settings.startup_timeout_s),
            default_timeout_s=float(settings.timeout_s),
            comfy_output_dir=comfy_output,
            snapshot=settings.snapshot,
            environ=env,
            webhooks=_webhook_settings(env),
        )

    # --- life cycle (@modal.enter / @modal.exit) --------------------------------------------

    def startup(self) -> StartupInfo:
        """How this container came up, for the timings of the jobs that waited for it."""
        return StartupInfo(
            container_window=self.container_window,
            comfy_window=self.comfy_window,
            restored=self.restored,
        )

    def start_before_snapshot(self) -> None:
        """``@modal.enter(snap=True)`` (or the first hook without snapshots): ComfyUI up.

        With ``"cpu"`` snapshots ComfyUI stays off the GPU here; ``after_restore`` moves it.
        """
        entered = time.time()
        self.container_window = (min(process_started_at(), entered), entered)
        self._task_before_snapshot = self._environ.get("MODAL_TASK_ID") or None
        self.start(before_snapshot=True)

    def after_restore(self) -> None:
        """``@modal.enter(snap=False)``: ComfyUI on the GPU and answering, in a restored
        container as in the one that took the snapshot (Modal runs this hook in both)."""
        now = time.time()
        task = self._environ.get("MODAL_TASK_ID") or None
        restored = (
            self.snapshot != "off"
            and task is not None
            and self._task_before_snapshot is not None
            and task != self._task_before_snapshot
        )
        began = now if restored or self.comfy_window is None else self.comfy_window[0]
        if restored:
            # The boot before the snapshot was another container's; this one's restore is
            # Modal's work, which the container cannot time: it stays in `queued`.
            self.container_window = None
            log.info("container restored from a memory snapshot (task %s)", task)
        if self.snapshot == "cpu":
            self._to_gpu_or_restart()
        elif restored and not self._healthy():
            log.warning("ComfyUI does not answer after the restore; starting it again")
            self._stop_comfyui()
            self.start()
            restored = False
        self.restored = restored
        self.comfy_window = (began, time.time())

    def _to_gpu_or_restart(self) -> None:
        """``POST /ryla/gpu`` to the deferred ComfyUI; if that fails, a fresh ComfyUI (still
        deferred by its environment, then moved at once) rather than one left on the CPU."""
        try:
            self._move_to_gpu()
        except ComfyUIUnavailable as exc:
            log.warning("moving ComfyUI onto the GPU failed (%s); starting it again", exc)
            self._stop_comfyui()
            self.start()

    def _move_to_gpu(self) -> None:
        url = self.process.base_url + GPU_ROUTE
        try:  # the whole answer within the budget, a trickle included
            with (
                deadline_scope(Deadline(_GPU_MOVE_TIMEOUT_S, "GPU move deadline")),
                deadline_client(timeout=_GPU_MOVE_TIMEOUT_S) as client,
            ):
                resp = client.post(url)
        except (httpx.HTTPError, DeadlineExceeded) as exc:
            raise ComfyUIUnavailable(f"POST {GPU_ROUTE}: {exc}") from exc
        if resp.status_code != 200:
            raise ComfyUIUnavailable(
                f"POST {GPU_ROUTE}: HTTP {resp.status_code}: {resp.text[:300]}"
            )
        log.info("ComfyUI moved onto the GPU: %s", resp.text[:300])

    def start(self, *, before_snapshot: bool = False) -> None:
        """Launch ComfyUI and wait until it answers; raises ComfyUIUnavailable with its log.

        A GPU-deferred ComfyUI (``"cpu"`` snapshots) is moved onto the GPU at once, unless
        this is the start a snapshot will save.
        """
        began = time.time()
        self.process.start(ready_timeout=self.ready_timeout_s)
        if self.snapshot == "cpu" and not before_snapshot:
            self._move_to_gpu()
        self.comfy_window = (began, time.time())
        if not before_snapshot:
            self.restored = False
        self.runner = ComfyRunner(
            self.process.base_url,
            work_dir=self.work_dir,
            comfy_output_dir=self.comfy_output_dir,
            delete_outputs=self.comfy_output_dir is not None,
            process=self.process,
            default_timeout_s=self.default_timeout_s,
        )
        log.info("ComfyUI ready at %s", self.process.base_url)

    def stop(self) -> None:
        self._stop_comfyui()
        shutil.rmtree(self.work_dir, ignore_errors=True)
        if self.comfy_output_dir is not None:
            shutil.rmtree(self.comfy_output_dir, ignore_errors=True)

    def _stop_comfyui(self) -> None:
        if self.runner is not None:
            self.runner.close()
            self.runner = None
        self.process.stop()

    def _healthy(self) -> bool:
        if self.process.returncode is not None:
            return False
        try:
            check_ready(self.process.base_url, timeout=_HEALTH_TIMEOUT_S)
        except ComfyUIUnavailable:
            return False
        return True

    def _ensure_comfyui(self, job_id: str) -> ComfyRunner:
        """A dead or hung ComfyUI is found before the job, and restarted once."""
        if self.runner is not None and self._healthy():
            return self.runner
        with self._restart_lock:
            if self.runner is not None and self._healthy():
                return self.runner
            log.warning("job %s: ComfyUI is not answering; restarting it", job_id)
            self.store.update(job_id, phase="starting_comfyui")
            log.warning("ComfyUI log before the restart:\n%s", self.process.log_tail())
            self._stop_comfyui()
            self.start()
            assert self.runner is not None
            return self.runner

    # --- one job (ComfyWorker.run) -----------------------------------------------------------

    def run(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Run one job; returns the final Job (also the FunctionCall's result, for the gateway)."""
        job_id = str(payload.get("job_id") or "")
        record = self.store.get(job_id) if job_id else None
        if record is None:
            # The gateway stores a job before spawning it; without a record nobody could read
            # the result, so this call fails and the gateway settles the job as lost.
            raise ValueError(f"job {job_id[:80]!r} is not in the job store")
        if record.status not in TERMINAL_STATUSES:
            timeout = payload.get("timeout_s")
            spec = JobSpec(
                job_id=job_id,
                created_at=record.created_at,
                workflow=payload.get("workflow") or {},
                timeout_s=float(timeout) if timeout else None,
                warmup=bool(payload.get("warmup")),
                previews=bool(payload.get("previews")),
            )
            try:
                spec = dataclasses.replace(spec, inputs=_inputs(payload))
            except ValueError as exc:
                self.lifecycle.settle(spec, WorkflowFormatError(str(exc)))
            else:
                self.lifecycle.run(
                    spec,
                    prepare=lambda: self._ensure_comfyui(job_id),
                    cancel_requested=lambda: self.store.cancel_requested(job_id),
                    startup=self.startup,
                )
        final = self.store.get(job_id) or record
        self._deliver_webhook(final)
        return final.public().model_dump(mode="json")

    def _deliver_webhook(self, record: JobRecord) -> None:
        """The first attempt, on a thread: the next job need not wait up to 10 s for it."""
        hook = record.webhook
        if self.webhooks is None or hook is None or hook.state != "pending":
            return
        deliverer = Deliverer(self.store, self.webhooks)
        threading.Thread(
            target=deliverer.deliver,
            args=(record.job_id,),
            name=f"ryla-webhook-{record.job_id[:8]}",
            daemon=True,
        ).start()


def _webhook_settings(env: Mapping[str, str]) -> WebhookSettings | None:
    """The container's webhook settings; a malformed secret disables them (logged), it must
    not fail every job the container runs."""
    try:
        return WebhookSettings.from_env(env)
    except ConfigError as exc:
        log.error("webhooks are off in this container: %s", exc)
        return None


def _inputs(payload: Mapping[str, Any]) -> list[JobInput]:
    """The job's inputs: bytes sent along, or URLs this worker fetches (under FetchRules()
    defaults: no private addresses on Modal)."""
    files: list[JobInput] = []
    for i, item in enumerate(payload.get("inputs") or []):
        try:
            if item.get("url") is not None:
                sha = item.get("sha256")
                files.append(InputURL(str(item["name"]), str(item["url"]), sha and str(sha)))
            else:
                files.append(InputFile(str(item["name"]), base64.b64decode(item["data_b64"])))
        except (AttributeError, KeyError, TypeError, binascii.Error) as exc:
            raise ValueError(
                f"inputs[{i}] is not {{name, data_b64}} or {{name, url}}: {exc}"
            ) from None
    return files


__all__ = ["ModalWorker", "process_started_at"]
