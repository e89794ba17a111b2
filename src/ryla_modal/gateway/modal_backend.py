"""The gateway's Modal side: a ``modal.Dict`` job store and an executor that spawns GPU workers.

``DictJobStore`` keeps each job under keys with one writer each, because ``modal.Dict`` has no
transactions, only an atomic ``put(key, value, skip_if_exists=True)``:

- ``job:<id>``    the record the gateway created (``put(..., skip_if_exists=True)``: idempotent
  create), later the FunctionCall id; written by gateways only;
- ``live:<id>``   status/phase/progress/timings; written by the one worker running the job;
- ``cancel:<id>`` the cancel request (a plain flag, so no write can lose it);
- ``final:<id>``  the whole record once it is final; ``put(..., skip_if_exists=True)``, so the
  first final status wins atomically (a worker finishing late never overwrites a cancel).

A read merges them.  Output files live on the outputs Volume at ``<root>/<job_id>/<index>``; the
worker commits the Volume before the record says ``succeeded`` and the gateway reloads it when a
file it should have is not there yet.

``ModalExecutor`` spawns ``ComfyWorker.run`` and keeps the FunctionCall id on the record; a job
whose FunctionCall ended without the worker writing a final state is settled from the call's own
result or error (lost-job detection).  Its Modal calls enter through two callables, ``spawn`` and
``lookup_call``, which tests replace; nothing else here talks to Modal.

    store = DictJobStore(modal.Dict.from_name("ryla-jobs", create_if_missing=True),
                         outputs_dir=Path("/outputs"), reload_outputs=volume.reload)
    executor = ModalExecutor(store, spawn=modal_spawner("ryla-comfyui", "ComfyWorker"))
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

from ryla_modal import defaults
from ryla_modal.comfy.runner import InputFile
from ryla_modal.gateway.executors import finish
from ryla_modal.gateway.schemas import (
    ACTIVE_STATUSES,
    ERR_CANCELLED,
    ERR_SERVER_STOPPED,
    ERR_TIMEOUT,
    ERR_WORKER_DIED,
    JOB_ID_PATTERN,
    TERMINAL_STATUSES,
    JobError,
    JobRecord,
)
from ryla_modal.gateway.store import JobStore

if TYPE_CHECKING:  # pragma: no cover
    from fastapi import FastAPI

    from ryla_modal.modal_settings import AppSettings

log = logging.getLogger("ryla_modal.gateway")

#: Fields the worker owns while a job runs (``live:<id>``).
LIVE_FIELDS = ("status", "phase", "progress", "timings", "updated_at")
_COPY_CHUNK = 1024 * 1024
_JOB_ID_RE = re.compile(JOB_ID_PATTERN)

CALL_LOST = "the GPU worker's call ended without a result ({why}); submit again with a new job_id"
CALL_TIMED_OUT = (
    "the GPU worker ran past its Modal timeout; submit again or raise RYLA_WORKER_TIMEOUT"
)
NEVER_SPAWNED = "the gateway stopped before it started this job; submit again with a new job_id"


class DictLike(Protocol):
    """The part of ``modal.Dict`` (modal 1.6) the store uses; tests pass an in-memory twin."""

    def get(self, key: Any, default: Any | None = None) -> Any: ...

    def put(self, key: Any, value: Any, *, skip_if_exists: bool = False) -> bool: ...

    def __setitem__(self, key: Any, value: Any) -> None: ...

    def pop(self, key: Any, default: Any = ...) -> Any: ...

    def items(self) -> Iterable[tuple[Any, Any]]: ...


def _check_id(job_id: str) -> str:
    if not _JOB_ID_RE.match(job_id):
        raise ValueError(f"bad job id {job_id[:80]!r}")
    return job_id


class DictJobStore(JobStore):
    """``JobStore`` on a ``modal.Dict`` plus an outputs folder (a mounted Volume).

    ``role``: ``"gateway"`` (creates, cancels, settles lost jobs) or ``"worker"`` (runs one job
    and writes its live state).  ``commit_outputs`` runs before a record becomes ``succeeded``
    when this store wrote output files; ``reload_outputs`` runs when a file is missing.
    """

    def __init__(
        self,
        d: DictLike,
        *,
        outputs_dir: Path,
        role: str = "gateway",
        commit_outputs: Callable[[], None] | None = None,
        reload_outputs: Callable[[], None] | None = None,
        list_cache_s: float = defaults.MODAL_STORE_LIST_CACHE_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if role not in ("gateway", "worker"):
            raise ValueError(f"role must be 'gateway' or 'worker', not {role!r}")
        self._d = d
        self.outputs_dir = Path(outputs_dir)
        self.role = role
        self._commit = commit_outputs
        self._reload = reload_outputs
        self._list_cache_s = list_cache_s
        self._clock = clock
        self._lock = threading.Lock()
        self._uncommitted = False
        self._reload_lock = threading.Lock()
        self._list_cache: tuple[float, list[JobRecord]] | None = None

    # --- records ---------------------------------------------------------------------------

    def create_if_absent(self, record: JobRecord) -> tuple[JobRecord, bool]:
        job_id = _check_id(record.job_id)
        if self._d.put(f"job:{job_id}", _dump(record), skip_if_exists=True):
            return record, True
        existing = self.get(job_id)
        if existing is None:  # pragma: no cover - a key that exists but reads as nothing
            raise RuntimeError(f"job {job_id} exists in the Dict but cannot be read")
        return existing, False

    def get(self, job_id: str) -> JobRecord | None:
        final = self._d.get(f"final:{job_id}")
        if final is not None:
            return JobRecord.model_validate(final)
        base = self._d.get(f"job:{job_id}")
        if base is None:
            return None
        merged = dict(base)
        live = self._d.get(f"live:{job_id}")
        if live is not None:
            merged.update({k: live[k] for k in LIVE_FIELDS if k in live})
            merged["revision"] = base.get("revision", 0) + live.get("revision", 0)
        if self._d.get(f"cancel:{job_id}") is not None:
            merged["cancel_requested"] = True
            merged["revision"] = merged.get("revision", 0) + 1
        return JobRecord.model_validate(merged)

    def update(self, job_id: str, *, force: bool = False, **fields: Any) -> JobRecord | None:
        with self._lock:  # one writer per key per process; across processes, keys say who
            current = self.get(job_id)
            if current is None:
                return None
            if current.status in TERMINAL_STATUSES and not force:
                return current
            merged = {**current.model_dump(), **fields}
            merged["revision"] = current.revision + 1
            merged["updated_at"] = max(self._clock(), current.updated_at)
            new = JobRecord.model_validate(merged)
            if new.status in TERMINAL_STATUSES:
                return self._write_final(current, new, force)
            if current.status in TERMINAL_STATUSES:  # force: a final record made active again
                self._d.pop(f"final:{job_id}", None)
            if self.role == "worker":
                return self._write_live(job_id, new, fields)
            return self._write_job(job_id, new, fields)

    def _write_final(self, current: JobRecord, new: JobRecord, force: bool) -> JobRecord:
        if new.status == "succeeded" and self._uncommitted and self._commit is not None:
            self._commit()  # readers must find the files once the record says succeeded
            self._uncommitted = False
        key = f"final:{new.job_id}"
        if force:
            self._d[key] = _dump(new)
        elif not self._d.put(key, _dump(new), skip_if_exists=True):
            return self.get(new.job_id) or current  # someone else finished it first
        self._list_cache = None
        return new

    def _write_live(self, job_id: str, new: JobRecord, fields: Mapping[str, Any]) -> JobRecord:
        other = set(fields) - set(LIVE_FIELDS)
        if other:
            raise ValueError(f"a worker may change only {LIVE_FIELDS} while a job runs: {other}")
        live = self._d.get(f"live:{job_id}") or {}
        value = {k: v for k, v in _dump(new).items() if k in LIVE_FIELDS}
        value["revision"] = int(live.get("revision", 0)) + 1
        self._d[f"live:{job_id}"] = value
        return self.get(job_id) or new

    def _write_job(self, job_id: str, new: JobRecord, fields: Mapping[str, Any]) -> JobRecord:
        if fields.get("cancel_requested"):
            self._d.put(f"cancel:{job_id}", True)
            fields = {k: v for k, v in fields.items() if k != "cancel_requested"}
            if not fields:
                return self.get(job_id) or new
        base = self._d.get(f"job:{job_id}") or {}
        value = {**_dump(new), "revision": int(base.get("revision", 0)) + 1}
        value.pop("cancel_requested", None)  # its own key says it
        self._d[f"job:{job_id}"] = value
        return self.get(job_id) or new

    def cancel_requested(self, job_id: str) -> bool:
        """One read: the worker polls this while it runs a job."""
        return self._d.get(f"cancel:{job_id}") is not None

    def list(self, status: str | Iterable[str] | None = None) -> list[JobRecord]:
        """Every job (a full scan of the Dict; cached ``list_cache_s`` for the pending count)."""
        wanted = None if status is None else ({status} if isinstance(status, str) else set(status))
        cached = self._list_cache
        now = time.monotonic()
        if cached is not None and now - cached[0] < self._list_cache_s:
            records = cached[1]
        else:
            records = self._scan()
            self._list_cache = (now, records)
        chosen = [r for r in records if wanted is None or r.status in wanted]
        return sorted(chosen, key=lambda r: r.created_at)

    def _scan(self) -> builtins.list[JobRecord]:
        parts: dict[str, dict[str, Any]] = {}
        for key, value in self._d.items():
            if not isinstance(key, str) or ":" not in key:
                continue
            kind, job_id = key.split(":", 1)
            parts.setdefault(job_id, {})[kind] = value
        out: list[JobRecord] = []
        for p in parts.values():
            if "final" in p:
                out.append(JobRecord.model_validate(p["final"]))
            elif "job" in p:
                merged = dict(p["job"])
                if "live" in p:
                    merged.update({k: p["live"][k] for k in LIVE_FIELDS if k in p["live"]})
                out.append(JobRecord.model_validate(merged))
        return out

    # --- outputs (files on the outputs Volume) ---------------------------------------------

    def _output_path(self, job_id: str, index: int) -> Path:
        if index < 0:
            raise ValueError(f"bad output index {index}")
        return self.outputs_dir / _check_id(job_id) / str(index)

    def put_output(self, job_id: str, index: int, src: Path | bytes) -> None:
        dest = self._output_path(job_id, index)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{index}.", suffix=".tmp", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                if isinstance(src, bytes):
                    out.write(src)
                else:
                    with Path(src).open("rb") as inp:
                        shutil.copyfileobj(inp, out, _COPY_CHUNK)
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._uncommitted = True

    def open_output(self, job_id: str, index: int) -> tuple[IO[bytes], int] | None:
        """A private copy of the file: a Volume cannot reload while its files are open."""
        try:
            path = self._output_path(job_id, index)
        except ValueError:
            return None
        if not path.is_file() and self._reload is not None:
            with self._reload_lock:
                if not path.is_file():
                    try:
                        self._reload()
                    except Exception as exc:
                        log.warning("outputs volume reload failed: %s", exc)
        try:
            src = path.open("rb")
        except OSError:
            return None
        copy: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - handed to the caller
        with src:
            shutil.copyfileobj(src, copy, _COPY_CHUNK)
        size = copy.tell()
        copy.seek(0)
        return copy, size


def _dump(record: JobRecord) -> dict[str, Any]:
    return record.model_dump(mode="json")


# --- the executor ------------------------------------------------------------------------------


class CallHandle(Protocol):
    """What ``modal.FunctionCall`` offers that the executor uses."""

    def get(self, timeout: float | None = None) -> Any: ...

    def cancel(self, terminate_containers: bool = False) -> None: ...


SpawnFn = Callable[[dict[str, Any]], str]
LookupFn = Callable[[str], CallHandle]


def modal_spawner(app_name: str, class_name: str) -> SpawnFn:
    """``spawn(payload) -> FunctionCall id`` on the deployed ``class_name().run``."""

    def spawn(payload: dict[str, Any]) -> str:
        import modal

        worker = modal.Cls.from_name(app_name, class_name)()
        call = worker.run.spawn(payload)
        return str(call.object_id)

    return spawn


def modal_call_lookup(call_id: str) -> CallHandle:
    import modal

    handle: CallHandle = modal.FunctionCall.from_id(call_id)
    return handle


def job_payload(
    job: JobRecord, workflow: Mapping[str, Any], inputs: Sequence[InputFile]
) -> dict[str, Any]:
    """What ``ComfyWorker.run`` receives (plain data: it crosses Modal's serializer)."""
    return {
        "job_id": job.job_id,
        "workflow": dict(workflow),
        "inputs": [
            {"name": f.name, "data_b64": base64.b64encode(f.data).decode("ascii")} for f in inputs
        ],
        "timeout_s": job.timeout_s,
    }


class ModalExecutor:
    """Runs each job as one ``ComfyWorker.run`` FunctionCall; the worker reports to the store."""

    kind = "modal"

    def __init__(
        self,
        store: JobStore,
        *,
        spawn: SpawnFn,
        lookup_call: LookupFn = modal_call_lookup,
        check_interval_s: float = defaults.MODAL_CALL_CHECK_INTERVAL_S,
        lost_grace_s: float = defaults.MODAL_LOST_JOB_GRACE_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._spawn = spawn
        self._lookup = lookup_call
        self.check_interval_s = check_interval_s
        self.lost_grace_s = lost_grace_s
        self._clock = clock
        self._lock = threading.Lock()
        self._checked_at: dict[str, float] = {}

    def start(
        self,
        job: JobRecord,
        workflow: Mapping[str, Any],
        inputs: Sequence[InputFile],
        *,
        warmup: bool = False,
    ) -> None:
        if job.function_call_id:
            return  # spawned already: a job id runs once
        payload = job_payload(job, workflow, inputs)
        if warmup:
            payload["warmup"] = True
        call_id = self._spawn(payload)
        record = self.store.update(job.job_id, function_call_id=call_id, phase="waiting_for_gpu")
        if record is not None and record.function_call_id != call_id:
            # The worker finished before we wrote the id: keep it anyway, for logs.
            record = self.store.update(job.job_id, force=True, function_call_id=call_id)
        log.info("job %s spawned as %s", job.job_id, call_id)

    def warm(self, job: JobRecord) -> None:
        # A no-op job: spawning it makes Modal start a ComfyWorker container (the cold start),
        # whose enter hook launches ComfyUI; the worker then marks the job succeeded.
        self.start(job, {}, [], warmup=True)

    def cancel(self, job_id: str) -> None:
        record = self.store.get(job_id)
        if record is None or record.status in TERMINAL_STATUSES:
            return
        if record.function_call_id:
            try:
                self._lookup(record.function_call_id).cancel()
            except Exception as exc:
                log.warning("job %s: FunctionCall.cancel failed: %s", job_id, exc)
        if record.status == "queued":
            # No worker has it (or it is about to see the cancel): nobody else will say so.
            finish(
                self.store,
                job_id,
                "cancelled",
                JobError(type=ERR_CANCELLED, message="cancelled before it started"),
            )

    def check(self, record: JobRecord) -> JobRecord:
        """Settle a job whose worker call is gone; at most one Modal lookup per interval."""
        if record.status not in ACTIVE_STATUSES:
            return record
        now = self._clock()
        with self._lock:
            last = self._checked_at.get(record.job_id)
            if last is not None and now - last < self.check_interval_s:
                return record
            self._checked_at[record.job_id] = now
            if len(self._checked_at) > 10_000:  # forget the oldest half; they are done by now
                for key in sorted(self._checked_at, key=self._checked_at.__getitem__)[:5_000]:
                    del self._checked_at[key]
        if not record.function_call_id:
            if now - record.created_at > self.lost_grace_s:
                return self._settle(
                    record, "failed", JobError(type=ERR_SERVER_STOPPED, message=NEVER_SPAWNED)
                )
            return record
        return self._check_call(record)

    def _check_call(self, record: JobRecord) -> JobRecord:
        from modal import exception as mx

        assert record.function_call_id is not None
        try:
            result = self._lookup(record.function_call_id).get(timeout=0)
        except mx.FunctionTimeoutError:
            return self._settle(
                record, "failed", JobError(type=ERR_TIMEOUT, message=CALL_TIMED_OUT)
            )
        except mx.OutputExpiredError:
            return self._lost(record, "its result expired")
        except mx.TimeoutError:
            return record  # no result yet: queued for a GPU or running
        except (mx.ConnectionError, mx.ServiceError, mx.InternalError, OSError) as exc:
            log.warning(
                "job %s: cannot look at %s now: %s", record.job_id, record.function_call_id, exc
            )
            return record  # our side's trouble, not the job's: look again later
        except mx.InputCancellation:
            return self._lost(record, "the call was cancelled")
        except Exception as exc:
            return self._lost(record, f"{type(exc).__name__}: {str(exc)[:300]}")
        return self._finished_call(record, result)

    def _finished_call(self, record: JobRecord, result: Any) -> JobRecord:
        """The call returned but the store does not say final: take the worker's own answer."""
        fresh = self.store.get(record.job_id) or record
        if fresh.status in TERMINAL_STATUSES:
            return fresh
        try:
            final = JobRecord.model_validate({**fresh.model_dump(), **dict(result)})
        except Exception:
            final = None
        if final is not None and final.status in TERMINAL_STATUSES:
            return self._settle(
                fresh,
                final.status,
                final.error,
                phase=final.phase,
                outputs=final.outputs,
                progress=final.progress,
                timings=final.timings,
            )
        return self._lost(fresh, "the worker returned without a final status")

    def _lost(self, record: JobRecord, why: str) -> JobRecord:
        fresh = self.store.get(record.job_id) or record
        if fresh.status in TERMINAL_STATUSES:
            return fresh
        if fresh.cancel_requested:
            return self._settle(
                fresh, "cancelled", JobError(type=ERR_CANCELLED, message="cancelled")
            )
        return self._settle(
            fresh, "failed", JobError(type=ERR_WORKER_DIED, message=CALL_LOST.format(why=why))
        )

    def _settle(
        self, record: JobRecord, status: str, error: JobError | None, **fields: Any
    ) -> JobRecord:
        finish(self.store, record.job_id, status, error, **fields)
        return self.store.get(record.job_id) or record

    def recover(self) -> None:
        """Nothing to do: workers outlive gateways, and a stale job is settled when read."""

    def close(self) -> None:
        """Nothing to do: jobs in flight keep running on their GPU workers."""


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
    from ryla_modal import modal_image

    env = os.environ if environ is None else environ
    return Path(env.get("RYLA_OUTPUTS_DIR") or modal_image.OUTPUTS_DIR)


def create_modal_gateway(
    settings: AppSettings,
    *,
    worker_class: str,
    models_volume: Any,
    outputs_volume: Any,
    object_info_path: Path | None = None,
    spawn: SpawnFn | None = None,
    lookup_call: LookupFn = modal_call_lookup,
) -> FastAPI:
    """The job API as the Modal gateway function serves it (called inside the container).

    ``spawn``/``lookup_call`` default to the deployed ``worker_class`` (tests pass their own).
    """
    import modal

    from ryla_modal import modal_image
    from ryla_modal.gateway.app import create_app
    from ryla_modal.gateway.object_info import FileObjectInfo

    jobs = modal.Dict.from_name(settings.jobs_dict, create_if_missing=True)
    store = DictJobStore(
        jobs,
        outputs_dir=outputs_dir(),
        reload_outputs=outputs_volume.reload,
    )
    executor = ModalExecutor(
        store,
        spawn=spawn or modal_spawner(settings.app_name, worker_class),
        lookup_call=lookup_call,
    )
    return create_app(
        executor,
        store,
        object_info=FileObjectInfo(object_info_path or Path(modal_image.OBJECT_INFO_PATH)),
        extra_models=VolumeModelFiles(Path(modal_image.MODELS_DIR), reload=models_volume.reload),
    )


__all__ = [
    "DictJobStore",
    "DictLike",
    "ModalExecutor",
    "VolumeModelFiles",
    "create_modal_gateway",
    "job_payload",
    "list_model_files",
    "modal_call_lookup",
    "modal_spawner",
    "outputs_dir",
]
