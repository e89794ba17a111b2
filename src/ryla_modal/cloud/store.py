"""The job store on Modal: one ``modal.Dict`` (keys with one writer each) and the outputs Volume.

``DictJobStore`` keeps each job under keys with one writer each, because ``modal.Dict`` has no
transactions, only an atomic ``put(key, value, skip_if_exists=True)``:

- ``job:<id>``    the record the gateway created (``put(..., skip_if_exists=True)``: idempotent
  create), later the FunctionCall id; written by gateways only;
- ``live:<id>``   status/phase/progress/timings; written by the one worker running the job;
- ``cancel:<id>`` the cancel request (a plain flag, so no write can lose it);
- ``final:<id>``  the whole record once it is final; ``put(..., skip_if_exists=True)``, so the
  first final status wins atomically (a worker finishing late never overwrites a cancel).

- ``index:<n>``  slot ``n`` of the job list (``{job_id, created_at}``), claimed at create with
  ``put(..., skip_if_exists=True)``; ``index:next`` is a hint of the first free slot.

- ``webhook:<id>`` a pending webhook delivery (``{"next_at"}``), put *before* ``final:`` so a
  crash between the two cannot lose it; the deliverer drops it once delivered or given up;
- ``webhook-claim:<id>`` which process makes the next attempt (``{attempt, at, by}``).

A read merges them.

The job list (``page``, GET /jobs) reads the index newest slot first, so a page costs about
``limit`` index reads plus one record read each, however many jobs the Dict holds; a full scan
(``items()``) stays only for ``list``, which the gateway calls with a cache.  Slots rather than
one list key because ``modal.Dict`` has no atomic append: two gateway containers creating jobs
at once would lose one of two read-modify-write updates of a list, while claiming a slot with
``skip_if_exists`` cannot lose either.  The hint may lag or go back under such races; claimers
and readers probe past it.  Slot order is creation order as the gateways saw it, so across
gateway containers "newest first" is approximate by the skew of their clocks.  Jobs created
before the index existed are not listed.

Waking long polls.  ``modal.Dict`` cannot notify, so a long poll alone would re-read it every
``poll_s``, adding up to that much to every job.  Two signals wake it instead:

- the worker's ``FunctionCall``: when the call returns, the worker has written the final state
  (it returns after that write), so a wait on ``FunctionCall.get`` ends when the job does;
- ``JobSignals``: after each write the store puts the job's revision on its partition of a
  ``modal.Queue`` (partition key = job id); a waiting gateway blocks on that partition.

Both waits are async (``.aio``) and cancelled as soon as one of them, or the Dict poll that stays
as the safety net (gateway-side writes such as a cancel from another gateway container, a lost
signal), sees a change.  A Queue item is read by one consumer: with two gateway containers
long-polling one job, progress may wake only one of them, the other then sees it by its poll;
the final state wakes every waiter through the FunctionCall.

Output files live on the outputs Volume at ``<root>/<job_id>/<index>``; the
worker commits the Volume before the record says ``succeeded`` and the gateway reloads it when a
file it should have is not there yet.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any, Protocol

from ryla_modal import defaults
from ryla_modal._atomic import write_atomic
from ryla_modal.gateway.schemas import (
    ACTIVE_STATUSES,
    JOB_ID_PATTERN,
    TERMINAL_STATUSES,
    JobRecord,
    WebhookStatus,
)
from ryla_modal.gateway.store import (
    JobStore,
    apply_update,
    decode_cursor,
    encode_cursor,
    webhook_became_due,
)

log = logging.getLogger("ryla_modal.gateway")

#: Fields the worker owns while a job runs (``live:<id>``).
LIVE_FIELDS = ("status", "phase", "progress", "timings", "updated_at")
_COPY_CHUNK = 1024 * 1024
_JOB_ID_RE = re.compile(JOB_ID_PATTERN)
_INDEX_MAX_PROBES = 10_000  # slots tried past the hint before giving up (a bounded loop)
_INDEX_PAGE_SCAN = 1_000  # index slots one page may read


class DictLike(Protocol):
    """The part of ``modal.Dict`` (modal 1.6) the store uses; tests pass an in-memory twin."""

    def get(self, key: Any, default: Any | None = None) -> Any: ...

    def put(self, key: Any, value: Any, *, skip_if_exists: bool = False) -> bool: ...

    def __setitem__(self, key: Any, value: Any) -> None: ...

    def pop(self, key: Any, default: Any = ...) -> Any: ...

    def items(self) -> Iterable[tuple[Any, Any]]: ...


class QueueLike(Protocol):
    """The part of ``modal.Queue`` (modal 1.6) ``JobSignals`` uses, sync and ``.aio``."""

    @property
    def put(self) -> Any: ...

    @property
    def get_many(self) -> Any: ...


#: Waits until a worker's FunctionCall has a result (True) or the seconds given pass (False).
CallWaiter = Callable[[str, float], Awaitable[bool]]


class JobSignals:
    """Per-job wake-ups on a ``modal.Queue``: writers ``notify``, long polls ``wait``.

    Items are plain revision numbers on the partition named by the job id; a waiter takes all
    that are there at once, so a backlog left while nobody waited costs one read, not a loop.
    """

    def __init__(
        self,
        queue: QueueLike,
        *,
        partition_ttl_s: int = defaults.MODAL_SIGNAL_TTL_S,
        backlog: int = defaults.MODAL_SIGNAL_BACKLOG,
    ) -> None:
        self._queue = queue
        self.partition_ttl_s = partition_ttl_s
        self.backlog = backlog

    def notify(self, job_id: str, revision: int) -> None:
        """One non-blocking put; a failure is logged, never raised (the Dict has the state)."""
        try:
            self._queue.put(
                revision, block=False, partition=job_id, partition_ttl=self.partition_ttl_s
            )
        except Exception as exc:  # queue.Full, a network error: the poll still sees the write
            log.debug("job %s: wake-up signal not sent: %s", job_id, exc)

    async def wait(self, job_id: str, wait_s: float) -> bool:
        """True once something was signalled for ``job_id``; False after ``wait_s``."""
        import queue as stdlib_queue

        try:
            items = await self._queue.get_many.aio(
                self.backlog, block=True, timeout=max(0.0, wait_s), partition=job_id
            )
        except stdlib_queue.Empty:
            return False
        return bool(items)


async def modal_call_waiter(call_id: str, wait_s: float) -> bool:
    """``FunctionCall.get`` with a timeout, asynchronously: True once the call has ended
    (returned or raised), False when it is still running after ``wait_s``."""
    import modal
    from modal import exception as mx

    call = modal.FunctionCall.from_id(call_id)
    try:
        await call.get.aio(timeout=max(0.0, wait_s))
    except (mx.TimeoutError, TimeoutError):  # modal 1.6.4 raises the built-in one
        return False
    except (mx.ConnectionError, OSError):
        raise  # our side's trouble: the caller falls back to the poll
    except Exception:
        return True  # the call ended with an error: it is over all the same
    return True


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
        signals: JobSignals | None = None,
        call_waiter: CallWaiter | None = None,
        poll_s: float = defaults.GATEWAY_STORE_POLL_S,
    ) -> None:
        """``signals``: writes are signalled there and long polls wait on it; ``call_waiter``:
        long polls also wait for the job's FunctionCall to end; ``poll_s``: the Dict re-read
        that stays as the safety net (see the module docstring)."""
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
        self._index_lock = threading.Lock()
        self._uncommitted = False
        self._reload_lock = threading.Lock()
        self._list_cache: tuple[float, list[JobRecord]] | None = None
        self._signals = signals
        self._call_waiter = call_waiter
        self.poll_s = poll_s
        self._calls_ended: dict[str, None] = {}  # FunctionCalls seen ended (insertion-ordered)
        self._outbox: tuple[float, dict[str, float]] | None = None  # (read at, job -> next_at)
        self._outbox_lock = threading.Lock()

    # --- records ---------------------------------------------------------------------------

    def create_if_absent(self, record: JobRecord) -> tuple[JobRecord, bool]:
        job_id = _check_id(record.job_id)
        if self._d.put(f"job:{job_id}", _dump(record), skip_if_exists=True):
            self._add_to_index(record)
            return record, True
        existing = self.get(job_id)
        if existing is None:  # pragma: no cover - a key that exists but reads as nothing
            raise RuntimeError(f"job {job_id} exists in the Dict but cannot be read")
        return existing, False

    def get(self, job_id: str) -> JobRecord | None:
        final = self._d.get(f"final:{job_id}")
        if final is not None:  # one read for a finished job
            return _compose({"final": final})
        parts = {kind: self._d.get(f"{kind}:{job_id}") for kind in ("job", "live", "cancel")}
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
                written = self._write_final(current, new, force)
            else:
                if current.status in TERMINAL_STATUSES:  # force: a final record active again
                    self._d.pop(f"final:{job_id}", None)
                if self.role == "worker":
                    written = self._write_live(job_id, new, fields)
                else:
                    written = self._write_job(job_id, new, fields)
        if self._signals is not None and written.revision != current.revision:
            self._signals.notify(job_id, written.revision)  # outside the lock: one RPC
        return written

    def _write_final(self, current: JobRecord, new: JobRecord, force: bool) -> JobRecord:
        if new.status == "succeeded" and self._uncommitted and self._commit is not None:
            self._commit()  # readers must find the files once the record says succeeded
            self._uncommitted = False
        key = f"final:{new.job_id}"
        if webhook_became_due(current, new):
            self._put_outbox(new)  # first: a crash after it repeats a delivery, never loses one
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

    async def wait_for_change(self, job_id: str, revision: int, wait_s: float) -> None:
        """Return once the job's revision may differ from ``revision``, or after ``wait_s``.

        Waits at once on the job's signal partition, on its FunctionCall, and on a Dict re-read
        every ``poll_s``; the first to fire ends the wait and the others are cancelled.
        """
        deadline = time.monotonic() + max(0.0, wait_s)
        record = await asyncio.to_thread(self.get, job_id)
        if record is None or record.revision != revision:
            return
        left = deadline - time.monotonic()
        if left <= 0:
            return
        waits: list[Awaitable[Any]] = [self._poll(job_id, revision, deadline)]
        if self._signals is not None:
            waits.append(self._guarded(self._signals.wait(job_id, left), deadline, "signal"))
        call_id = record.call_id
        if (
            self._call_waiter is not None
            and call_id
            and record.status in ACTIVE_STATUSES
            and call_id not in self._calls_ended
        ):
            waits.append(self._guarded(self._call_ended(call_id, left), deadline, "call"))
        tasks = [asyncio.ensure_future(w) for w in waits]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task

    async def _poll(self, job_id: str, revision: int, deadline: float) -> None:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(self.poll_s, left))
            record = await asyncio.to_thread(self.get, job_id)
            if record is None or record.revision != revision:
                return

    async def _call_ended(self, call_id: str, wait_s: float) -> bool:
        assert self._call_waiter is not None
        ended = await self._call_waiter(call_id, wait_s)
        if ended:
            self._calls_ended[call_id] = None  # a finished call is not waited on again
            while len(self._calls_ended) > 10_000:
                del self._calls_ended[next(iter(self._calls_ended))]
        return ended

    async def _guarded(self, wait: Awaitable[bool], deadline: float, what: str) -> None:
        """A wake-up source that fails or times out must not end the wait early: it parks
        until the deadline, leaving the poll (and the other source) to answer."""
        try:
            if await wait:
                return
        except Exception as exc:
            log.debug("long poll: %s wait failed: %s", what, exc)
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))

    # --- the webhook outbox ------------------------------------------------------------------

    def _put_outbox(self, record: JobRecord) -> None:
        hook = record.webhook
        next_at = hook.next_attempt_at if hook and hook.next_attempt_at else record.updated_at
        self._d[f"webhook:{record.job_id}"] = {"next_at": next_at}
        with self._outbox_lock:
            if self._outbox is not None:
                self._outbox[1][record.job_id] = next_at

    def due_webhooks(self, now: float, limit: int) -> builtins.list[str]:
        """Due deliveries from a scan of the Dict, re-read at most every ``WEBHOOK_DICT_SCAN_S``
        (a full scan is costly; deliveries this process queues or retries update it at once)."""
        with self._outbox_lock:
            cached = self._outbox
            if cached is None or time.monotonic() - cached[0] >= defaults.WEBHOOK_DICT_SCAN_S:
                found: dict[str, float] = {}
                for key, value in self._d.items():
                    if isinstance(key, str) and key.startswith("webhook:"):
                        at = value.get("next_at") if isinstance(value, dict) else None
                        found[key.split(":", 1)[1]] = (
                            float(at) if isinstance(at, int | float) else 0
                        )
                cached = self._outbox = (time.monotonic(), found)
            due = sorted((at, job_id) for job_id, at in cached[1].items() if at <= now)
        return [job_id for _, job_id in due[:limit]]

    def save_webhook(self, job_id: str, state: WebhookStatus) -> JobRecord | None:
        record = self.update(job_id, force=True, webhook=state) if self.get(job_id) else None
        if record is not None and state.state == "pending":
            self._put_outbox(record)
            return record
        self._d.pop(f"webhook:{job_id}", None)
        self._d.pop(f"webhook-claim:{job_id}", None)
        with self._outbox_lock:
            if self._outbox is not None:
                self._outbox[1].pop(job_id, None)
        return record

    def claim_webhook(self, job_id: str, attempt: int) -> bool:
        """One claim key per job; a claim older than the lease (its process died mid-attempt)
        or for an earlier attempt is taken over.  Two processes taking over at once may both
        send: receivers drop the repeat by its ``webhook-id``."""
        key = f"webhook-claim:{job_id}"
        token = uuid.uuid4().hex
        mine = {"attempt": attempt, "at": self._clock(), "by": token}
        if self._d.put(key, mine, skip_if_exists=True):
            return True
        held = self._d.get(key)
        if isinstance(held, dict):
            fresh = self._clock() - float(held.get("at") or 0) < defaults.WEBHOOK_CLAIM_LEASE_S
            if int(held.get("attempt") or 0) >= attempt and fresh:
                return False
        self._d[key] = mine
        held = self._d.get(key)
        return isinstance(held, dict) and held.get("by") == token

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

    # --- the job list (index slots; see the module docstring) ------------------------------

    def _add_to_index(self, record: JobRecord) -> None:
        entry = {"job_id": record.job_id, "created_at": record.created_at}
        with self._index_lock:  # our own threads do not race each other for a slot
            n = self._first_free_slot()
            for _ in range(_INDEX_MAX_PROBES):
                if self._d.put(f"index:{n}", entry, skip_if_exists=True):
                    self._d["index:next"] = n + 1
                    return
                n += 1
        log.warning("job %s: no free job-list slot found; it is not listed", record.job_id)

    def _first_free_slot(self) -> int:
        hint = self._d.get("index:next")
        n = hint if isinstance(hint, int) and hint >= 0 else 0
        for _ in range(_INDEX_MAX_PROBES):
            if self._d.get(f"index:{n}") is None:
                return n
            n += 1
        return n

    def page(
        self, status: Iterable[str] | None = None, limit: int = 20, before: str | None = None
    ) -> tuple[builtins.list[JobRecord], str | None]:
        """Newest first, walking at most ``_INDEX_PAGE_SCAN`` slots per call: a page with
        fewer than ``limit`` jobs and a ``next`` cursor means "more may follow"."""
        wanted = None if status is None else set(status)
        if before is None:
            n = self._first_free_slot() - 1
        else:
            value = decode_cursor(before)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError("not a page cursor of this server")
            n = value - 1
        out: builtins.list[JobRecord] = []
        scanned = 0
        while n >= 0 and len(out) < limit and scanned < _INDEX_PAGE_SCAN:
            entry = self._d.get(f"index:{n}")
            scanned += 1
            n -= 1
            job_id = entry.get("job_id") if isinstance(entry, dict) else None
            record = self.get(job_id) if isinstance(job_id, str) else None
            if record is not None and (wanted is None or record.status in wanted):
                out.append(record)
        return out, encode_cursor(n + 1) if n >= 0 else None

    # --- outputs (files on the outputs Volume) ---------------------------------------------

    def _output_path(self, job_id: str, index: int) -> Path:
        if index < 0:
            raise ValueError(f"bad output index {index}")
        return self.outputs_dir / _check_id(job_id) / str(index)

    def put_output(self, job_id: str, index: int, src: Path | bytes, *, move: bool = False) -> None:
        write_atomic(self._output_path(job_id, index), src, move=move)
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


__all__ = [
    "LIVE_FIELDS",
    "CallWaiter",
    "DictJobStore",
    "DictLike",
    "JobSignals",
    "QueueLike",
    "modal_call_waiter",
]
