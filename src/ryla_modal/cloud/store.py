"""The job store on Modal: one ``modal.Dict`` (keys with one writer each) and the outputs Volume.

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
"""

from __future__ import annotations

import builtins
import logging
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any, Protocol

from ryla_modal import defaults
from ryla_modal._atomic import write_atomic
from ryla_modal.gateway.schemas import (
    JOB_ID_PATTERN,
    TERMINAL_STATUSES,
    JobRecord,
)
from ryla_modal.gateway.store import JobStore, apply_update

log = logging.getLogger("ryla_modal.gateway")

#: Fields the worker owns while a job runs (``live:<id>``).
LIVE_FIELDS = ("status", "phase", "progress", "timings", "updated_at")
_COPY_CHUNK = 1024 * 1024
_JOB_ID_RE = re.compile(JOB_ID_PATTERN)


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
        parts = {kind: self._d.get(f"{kind}:{job_id}") for kind in _KINDS}
        return _compose({k: v for k, v in parts.items() if v is not None})

    def update(self, job_id: str, *, force: bool = False, **fields: Any) -> JobRecord | None:
        with self._lock:  # one writer per key per process; across processes, keys say who
            current = self.get(job_id)
            if current is None:
                return None
            new = apply_update(current, fields, force=force, now=self._clock())
            if new is None:
                return current
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
            if kind in _KINDS:
                parts.setdefault(job_id, {})[kind] = value
        records = (_compose(p) for p in parts.values())
        return [r for r in records if r is not None]

    # --- outputs (files on the outputs Volume) ---------------------------------------------

    def _output_path(self, job_id: str, index: int) -> Path:
        if index < 0:
            raise ValueError(f"bad output index {index}")
        return self.outputs_dir / _check_id(job_id) / str(index)

    def put_output(self, job_id: str, index: int, src: Path | bytes) -> None:
        write_atomic(self._output_path(job_id, index), src)
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


#: The keys one job is kept under (see the module docstring).
_KINDS = ("job", "live", "cancel", "final")


def _compose(parts: Mapping[str, Any]) -> JobRecord | None:
    """The one way the keys of a job make its record (``get`` and ``list`` read the same).

    ``final`` wins whole; else ``job`` plus the worker's ``live`` fields plus the cancel flag.
    The revision adds up the writers' own counters, so any write moves it.
    """
    final = parts.get("final")
    if final is not None:
        return JobRecord.model_validate(final)
    base = parts.get("job")
    if base is None:
        return None
    merged = dict(base)
    live = parts.get("live")
    if live is not None:
        merged.update({k: live[k] for k in LIVE_FIELDS if k in live})
        merged["revision"] = base.get("revision", 0) + live.get("revision", 0)
    if parts.get("cancel") is not None:
        merged["cancel_requested"] = True
        merged["revision"] = merged.get("revision", 0) + 1
    return JobRecord.model_validate(merged)


__all__ = ["LIVE_FIELDS", "DictJobStore", "DictLike"]
