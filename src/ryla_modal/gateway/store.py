"""Job stores: where job records and their output files live, behind one interface.

``MemoryJobStore`` for tests, ``SQLiteJobStore`` for ``ryla serve`` (records and outputs survive
a restart), and on Modal a ``modal.Dict`` store implementing the same ``JobStore`` methods.

The idempotency of POST /jobs rests on ``create_if_absent`` being atomic.  A job that asked for a
webhook gets its delivery queued by the same write that makes it final (``apply_update`` marks
it ``pending``; the store keeps it in an outbox the deliverer reads, ``due_webhooks``), so a
delivery is never lost between "the job finished" and "someone will announce it".

A record that reached a final status (succeeded, failed, cancelled) is never changed again
unless ``force=True``, so a worker finishing late cannot overwrite a cancel, and the other way
round.  Every update bumps
``revision``; long polls wait for it to move with ``wait_for_change``.

    store = SQLiteJobStore(Path(".ryla/serve"))
    record, created = store.create_if_absent(record)
    store.update(record.job_id, status="running", phase="executing")
"""

from __future__ import annotations

import abc
import asyncio
import base64
import binascii
import builtins
import collections
import contextlib
import fcntl
import io
import json
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from ryla_modal import defaults
from ryla_modal._atomic import write_atomic
from ryla_modal.errors import ConfigError
from ryla_modal.gateway.schemas import TERMINAL_STATUSES, JobRecord, WebhookStatus


class JobStore(abc.ABC):
    """The interface every store implements; all methods are thread-safe."""

    #: called (from the writing thread) when a webhook delivery becomes due; the deliverer
    #: sets it to wake up at once instead of at its next poll
    on_webhook_due: Callable[[], None] | None = None

    @abc.abstractmethod
    def create_if_absent(self, record: JobRecord) -> tuple[JobRecord, bool]:
        """Store ``record`` unless its job id exists; returns (the stored record, created)."""

    @abc.abstractmethod
    def get(self, job_id: str) -> JobRecord | None: ...

    @abc.abstractmethod
    def update(self, job_id: str, *, force: bool = False, **fields: Any) -> JobRecord | None:
        """Change fields (validated), bump ``revision`` and ``updated_at``; None if unknown.

        A record in a final status is returned unchanged unless ``force``.
        """

    @abc.abstractmethod
    def list(self, status: str | Iterable[str] | None = None) -> list[JobRecord]:
        """Records, oldest first, optionally only those with the given status(es)."""

    def count(self, status: str | Iterable[str] | None = None) -> int:
        """How many records (with the given status(es)); stores override it to skip parsing."""
        return len(self.list(status))

    @abc.abstractmethod
    def page(
        self, status: Iterable[str] | None = None, limit: int = 20, before: str | None = None
    ) -> tuple[builtins.list[JobRecord], str | None]:
        """One page of jobs, newest first, and the cursor of the next page (None at the end).

        ``before`` is a cursor this store returned; another value raises ValueError.
        """

    @abc.abstractmethod
    def put_output(self, job_id: str, index: int, src: Path | bytes, *, move: bool = False) -> None:
        """Keep output ``index`` of a job; it appears whole or not at all.

        A file is copied, or with ``move`` taken (renamed where it can be; gone either way).
        """

    @abc.abstractmethod
    def open_output(self, job_id: str, index: int) -> tuple[IO[bytes], int] | None:
        """An open binary file and its size, or None when the store has no such output."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release files and connections."""

    # --- the webhook outbox (gateway/webhooks.py reads it) ---------------------------------

    def due_webhooks(self, now: float, limit: int) -> builtins.list[str]:
        """Job ids whose webhook delivery is pending and due at ``now``, soonest first."""
        return []

    def save_webhook(self, job_id: str, state: WebhookStatus) -> JobRecord | None:
        """Record a delivery attempt on a final job; the outbox follows ``state``.

        ``state.next_attempt_at`` is when the deliverer tries next while ``state.state`` is
        ``pending``; any other state takes the job out of the outbox.
        """
        return self.update(job_id, force=True, webhook=state)

    def claim_webhook(self, job_id: str, attempt: int) -> bool:
        """True for the one process that may make attempt ``attempt`` (1-based) of a delivery.

        In-process stores have one deliverer, which never runs a job twice at once; the Dict
        store, shared by worker and gateway containers, claims with ``skip_if_exists``.
        """
        return True

    def _webhook_due(self) -> None:
        hook = self.on_webhook_due
        if hook is not None:
            with contextlib.suppress(Exception):
                hook()

    async def wait_for_change(self, job_id: str, revision: int, wait_s: float) -> None:
        """Return once the job's revision may differ from ``revision``, or after ``wait_s`` seconds.

        This default polls (for stores that cannot notify, such as ``modal.Dict``); in-process
        stores override it to wake at once.
        """
        deadline = time.monotonic() + max(0.0, wait_s)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(defaults.GATEWAY_STORE_POLL_S, left))
            record = await asyncio.to_thread(self.get, job_id)
            if record is None or record.revision != revision:
                return


def _statuses(status: str | Iterable[str] | None) -> set[str] | None:
    if status is None:
        return None
    return {status} if isinstance(status, str) else set(status)


def encode_cursor(value: object) -> str:
    """An opaque, URL-safe page cursor for a JSON-able value."""
    raw = json.dumps(value, separators=(",", ":")).encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> Any:
    """The value ``encode_cursor`` wrapped; ValueError for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return json.loads(raw)
    except (ValueError, binascii.Error) as exc:
        raise ValueError("not a page cursor of this server") from exc


def _time_cursor(cursor: str | None) -> tuple[float, str] | None:
    """Memory and SQLite pages are keyed by (created_at, job_id), newest first."""
    if cursor is None:
        return None
    value = decode_cursor(cursor)
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not isinstance(value[0], int | float)
        or not isinstance(value[1], str)
    ):
        raise ValueError("not a page cursor of this server")
    return float(value[0]), value[1]


def apply_update(
    record: JobRecord, fields: Mapping[str, Any], *, force: bool = False, now: float | None = None
) -> JobRecord | None:
    """The one record merge of every store: ``record`` with ``fields``, the revision bumped.

    None when the record is final and ``force`` is not set: a final status never changes.
    ``updated_at`` never goes backwards, even when clocks of two machines disagree.
    """
    if record.status in TERMINAL_STATUSES and not force:
        return None
    merged = {**record.model_dump(), **fields}
    merged["revision"] = record.revision + 1
    merged["updated_at"] = max(time.time() if now is None else now, record.updated_at)
    new = JobRecord.model_validate(merged)
    hook = new.webhook
    if (
        hook is not None
        and hook.state == "waiting"
        and record.status not in TERMINAL_STATUSES
        and new.status in TERMINAL_STATUSES
    ):
        # The one place a job becomes final: its webhook is due from this very write.
        due = new.status in hook.events
        state = hook.model_copy(
            update={
                "state": "pending" if due else "not_sent",
                "due_since": new.updated_at,
                "next_attempt_at": new.updated_at if due else None,
            }
        )
        new = new.model_copy(update={"webhook": state})
    return new


def webhook_became_due(before: JobRecord | None, after: JobRecord | None) -> bool:
    """True when the write from ``before`` to ``after`` queued a webhook delivery."""
    return (
        before is not None
        and after is not None
        and before.status not in TERMINAL_STATUSES
        and after.status in TERMINAL_STATUSES
        and after.webhook is not None
        and after.webhook.state == "pending"
    )


def _page_of(newest_first: list[JobRecord], limit: int) -> tuple[list[JobRecord], str | None]:
    """At most ``limit`` records (given up to ``limit + 1``) and the cursor after the last."""
    page = newest_first[:limit]
    more = len(newest_first) > limit
    last = page[-1] if page else None
    return page, encode_cursor([last.created_at, last.job_id]) if more and last else None


class _Notifier:
    """Wakes coroutines waiting on a job when any thread changes it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]] = {}

    def notify(self, job_id: str) -> None:
        with self._lock:
            waiters = self._waiters.pop(job_id, [])
        for loop, fut in waiters:
            with contextlib.suppress(RuntimeError):  # its loop is closed: nobody is waiting
                loop.call_soon_threadsafe(_resolve, fut)

    async def wait(self, store: JobStore, job_id: str, revision: int, wait_s: float) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        entry = (loop, fut)
        with self._lock:
            self._waiters.setdefault(job_id, []).append(entry)
        try:
            # Registered first, then checked: a change in between is not missed.
            record = store.get(job_id)
            if record is None or record.revision != revision:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fut, timeout=max(0.0, wait_s))
        finally:
            with self._lock:
                waiters = self._waiters.get(job_id)
                if waiters and entry in waiters:
                    waiters.remove(entry)
                    if not waiters:
                        del self._waiters[job_id]


def _next_at(record: JobRecord) -> float:
    hook = record.webhook
    at = hook.next_attempt_at if hook is not None else None
    return record.updated_at if at is None else at


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class MemoryJobStore(JobStore):
    """Everything in memory; for tests and throwaway servers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, JobRecord] = {}
        self._outputs: dict[tuple[str, int], bytes] = {}
        self._outbox: dict[str, float] = {}  # job id -> next attempt
        self._notifier = _Notifier()

    def create_if_absent(self, record: JobRecord) -> tuple[JobRecord, bool]:
        with self._lock:
            existing = self._records.get(record.job_id)
            if existing is not None:
                return existing, False
            self._records[record.job_id] = record
        self._notifier.notify(record.job_id)
        return record, True

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            return self._records.get(job_id)

    def update(self, job_id: str, *, force: bool = False, **fields: Any) -> JobRecord | None:
        with self._lock:
            record = self._records.get(job_id)
            if record is None:
                return None
            new = apply_update(record, fields, force=force)
            if new is None:
                return record
            self._records[job_id] = new
            due = webhook_became_due(record, new)
            if due:
                self._outbox[job_id] = _next_at(new)
        self._notifier.notify(job_id)
        if due:
            self._webhook_due()
        return new

    def due_webhooks(self, now: float, limit: int) -> builtins.list[str]:
        with self._lock:
            due = sorted((at, job_id) for job_id, at in self._outbox.items() if at <= now)
        return [job_id for _, job_id in due[:limit]]

    def save_webhook(self, job_id: str, state: WebhookStatus) -> JobRecord | None:
        with self._lock:
            record = self._records.get(job_id)
            if record is None:
                self._outbox.pop(job_id, None)
                return None
            new = apply_update(record, {"webhook": state}, force=True)
            assert new is not None
            self._records[job_id] = new
            if state.state == "pending":
                self._outbox[job_id] = _next_at(new)
            else:
                self._outbox.pop(job_id, None)
        self._notifier.notify(job_id)
        return new

    def list(self, status: str | Iterable[str] | None = None) -> list[JobRecord]:
        wanted = _statuses(status)
        with self._lock:
            records = list(self._records.values())
        chosen = [r for r in records if wanted is None or r.status in wanted]
        return sorted(chosen, key=lambda r: r.created_at)

    def page(
        self, status: Iterable[str] | None = None, limit: int = 20, before: str | None = None
    ) -> tuple[builtins.list[JobRecord], str | None]:
        wanted = _statuses(status)
        key = _time_cursor(before)
        with self._lock:
            records = list(self._records.values())
        chosen = sorted(
            (
                r
                for r in records
                if (wanted is None or r.status in wanted)
                and (key is None or (r.created_at, r.job_id) < key)
            ),
            key=lambda r: (r.created_at, r.job_id),
            reverse=True,
        )
        return _page_of(chosen[: limit + 1], limit)

    def put_output(self, job_id: str, index: int, src: Path | bytes, *, move: bool = False) -> None:
        data = src if isinstance(src, bytes) else Path(src).read_bytes()
        with self._lock:
            self._outputs[(job_id, index)] = data
        if move and not isinstance(src, bytes):
            Path(src).unlink(missing_ok=True)

    def open_output(self, job_id: str, index: int) -> tuple[IO[bytes], int] | None:
        with self._lock:
            data = self._outputs.get((job_id, index))
        if data is None:
            return None
        return io.BytesIO(data), len(data)

    async def wait_for_change(self, job_id: str, revision: int, wait_s: float) -> None:
        await self._notifier.wait(self, job_id, revision, wait_s)


#: Job records SQLiteJobStore keeps in memory: far more than jobs in flight (64 at the most
#: with ``ryla serve --workers 64``), a few MB at most.
_RECENT_RECORDS = 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at, job_id);
CREATE INDEX IF NOT EXISTS jobs_status_created ON jobs (status, created_at, job_id);
CREATE TABLE IF NOT EXISTS webhook_outbox (
    job_id TEXT PRIMARY KEY,
    next_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_outbox_next ON webhook_outbox (next_at);
"""
_SCHEMA_VERSION = 1


class SQLiteJobStore(JobStore):
    """Records in ``data_dir/jobs.sqlite3`` (WAL), outputs as files in ``data_dir/outputs/``.

    Pending webhook deliveries sit in the ``webhook_outbox`` table, written in the transaction
    that makes the job final, so a restarted server finds and delivers them.

    One process owns a data folder at a time (an exclusive lock on ``data_dir/store.lock``), so
    a second ``ryla serve`` cannot mark the first one's running jobs as failed.

    The records of the last ``_RECENT_RECORDS`` jobs written are kept in memory as committed:
    a job is read ~15 times (submits, long polls, the lifecycle's own reads) for each of its ~5
    writes, and each SQLite read parsed the record's JSON again.  Only a commit (or a read under
    the writer lock) puts a record there; a reader fills a miss only when no commit ended while
    it read, so the memory never holds a revision older than the file's.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.outputs_dir = self.data_dir / "outputs"
        try:
            self.outputs_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the data folder {self.data_dir}: {exc}") from exc
        self._lock_fh = self._take_folder_lock()
        self._lock = threading.Lock()
        self._notifier = _Notifier()
        self._recent: collections.OrderedDict[str, JobRecord] = collections.OrderedDict()
        self._recent_lock = threading.Lock()
        self._commits = 0  # transactions committed so far (under _recent_lock)
        self._fresh: list[JobRecord] = []  # the current transaction's records, once committed
        #: connections for reads, one per concurrent reader: WAL lets reads run beside the one
        #: writer, so a long poll or a GET never queues behind progress writes on ``_lock``
        self._readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        try:
            self._db = sqlite3.connect(
                self.data_dir / "jobs.sqlite3",
                check_same_thread=False,  # every use is under self._lock
                isolation_level=None,  # autocommit; transactions are explicit
                timeout=10.0,
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, _SCHEMA_VERSION):
                raise ConfigError(
                    f"{self.data_dir}/jobs.sqlite3 has schema version {version}; this ryla knows"
                    f" {_SCHEMA_VERSION}",
                    hint="use another --data-dir or a matching ryla version",
                )
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            self._lock_fh.close()
            raise ConfigError(f"cannot open the job database in {self.data_dir}: {exc}") from exc

    def _take_folder_lock(self) -> IO[str]:
        fh = (self.data_dir / "store.lock").open("a")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise ConfigError(
                f"another process (a running `ryla serve`?) uses the data folder {self.data_dir}",
                hint="stop it, or give this server its own --data-dir",
            ) from None
        return fh

    def close(self) -> None:
        with self._lock:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            while True:
                try:
                    reader = self._readers.get_nowait()
                except queue.Empty:
                    break
                with contextlib.suppress(sqlite3.Error):
                    reader.close()
            self._lock_fh.close()

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """A read-only connection of the pool (opened when none is free), returned after use."""
        try:
            db = self._readers.get_nowait()
        except queue.Empty:
            db = sqlite3.connect(
                self.data_dir / "jobs.sqlite3",
                check_same_thread=False,  # one thread at a time: it is taken from the pool
                isolation_level=None,  # autocommit: each SELECT sees the latest commit
                timeout=10.0,
            )
            db.execute("PRAGMA query_only=ON")
        try:
            yield db
        finally:
            self._readers.put(db)

    # --- records ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """A write transaction under the writer lock; its records are remembered once committed."""
        with self._lock:
            self._fresh.clear()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                self._fresh.clear()
                raise
            with self._recent_lock:
                for record in self._fresh:
                    self._remember(record)
                self._commits += 1
            self._fresh.clear()

    def _remember(self, record: JobRecord) -> None:
        """Keep ``record`` as the latest of its job (the caller holds ``_recent_lock``)."""
        self._recent[record.job_id] = record
        self._recent.move_to_end(record.job_id)
        while len(self._recent) > _RECENT_RECORDS:
            self._recent.popitem(last=False)

    def _read(self, job_id: str, db: sqlite3.Connection | None = None) -> JobRecord | None:
        conn = self._db if db is None else db
        row = conn.execute("SELECT record FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else JobRecord.model_validate_json(row[0])

    def _read_latest(self, job_id: str) -> JobRecord | None:
        """Inside a transaction: the job's committed record (the writer lock keeps it latest)."""
        with self._recent_lock:
            record = self._recent.get(job_id)
        if record is None:
            record = self._read(job_id)
            if record is not None:
                self._fresh.append(record)
        return record

    def _write(self, record: JobRecord, *, insert: bool) -> None:
        sql = (
            "INSERT INTO jobs (status, created_at, record, job_id) VALUES (?, ?, ?, ?)"
            if insert
            else "UPDATE jobs SET status = ?, created_at = ?, record = ? WHERE job_id = ?"
        )
        self._db.execute(
            sql, (record.status, record.created_at, record.model_dump_json(), record.job_id)
        )
        self._fresh.append(record)

    def create_if_absent(self, record: JobRecord) -> tuple[JobRecord, bool]:
        with self._transaction():
            existing = self._read_latest(record.job_id)
            if existing is None:
                self._write(record, insert=True)
        if existing is not None:
            return existing, False
        self._notifier.notify(record.job_id)
        return record, True

    def get(self, job_id: str) -> JobRecord | None:
        with self._recent_lock:
            record = self._recent.get(job_id)
            if record is not None:
                return record
            commits = self._commits
        with self._reading() as db:
            record = self._read(job_id, db)
        if record is not None:
            with self._recent_lock:
                # Only if no commit ended meanwhile: else what was read may be older than it.
                if self._commits == commits and job_id not in self._recent:
                    self._remember(record)
        return record

    def update(self, job_id: str, *, force: bool = False, **fields: Any) -> JobRecord | None:
        with self._transaction():
            record = self._read_latest(job_id)
            new = None if record is None else apply_update(record, fields, force=force)
            due = webhook_became_due(record, new)
            if new is not None:
                self._write(new, insert=False)
                if due:
                    self._put_outbox(new)
        if new is None:
            return record
        self._notifier.notify(job_id)
        if due:
            self._webhook_due()
        return new

    def _put_outbox(self, record: JobRecord) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO webhook_outbox (job_id, next_at) VALUES (?, ?)",
            (record.job_id, _next_at(record)),
        )

    def due_webhooks(self, now: float, limit: int) -> builtins.list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT job_id FROM webhook_outbox WHERE next_at <= ? ORDER BY next_at LIMIT ?",
                (now, limit),
            ).fetchall()
        return [r[0] for r in rows]

    def save_webhook(self, job_id: str, state: WebhookStatus) -> JobRecord | None:
        with self._transaction():
            record = self._read_latest(job_id)
            new = None
            if record is not None:
                new = apply_update(record, {"webhook": state}, force=True)
                assert new is not None
                self._write(new, insert=False)
            if new is not None and state.state == "pending":
                self._put_outbox(new)
            else:
                self._db.execute("DELETE FROM webhook_outbox WHERE job_id = ?", (job_id,))
        if new is not None:
            self._notifier.notify(job_id)
        return new

    def list(self, status: str | Iterable[str] | None = None) -> list[JobRecord]:
        wanted = _statuses(status)
        with self._reading() as db:
            if wanted is None:
                rows = db.execute("SELECT record FROM jobs ORDER BY created_at").fetchall()
            else:
                marks = ",".join("?" * len(wanted))
                rows = db.execute(
                    f"SELECT record FROM jobs WHERE status IN ({marks}) ORDER BY created_at",  # noqa: S608 - only placeholders
                    sorted(wanted),
                ).fetchall()
        return [JobRecord.model_validate_json(r[0]) for r in rows]

    def count(self, status: str | Iterable[str] | None = None) -> int:
        """A COUNT over the status index: POST /jobs asks for every submit (the pending limit)."""
        wanted = _statuses(status)
        with self._reading() as db:
            if wanted is None:
                row = db.execute("SELECT COUNT(*) FROM jobs").fetchone()
            else:
                marks = ",".join("?" * len(wanted))
                row = db.execute(
                    f"SELECT COUNT(*) FROM jobs WHERE status IN ({marks})",  # noqa: S608 - only placeholders
                    sorted(wanted),
                ).fetchone()
        return int(row[0])

    def page(
        self, status: Iterable[str] | None = None, limit: int = 20, before: str | None = None
    ) -> tuple[builtins.list[JobRecord], str | None]:
        wanted = sorted(_statuses(status) or ())
        key = _time_cursor(before)
        where: list[str] = []
        args: list[Any] = []
        if wanted:
            where.append(f"status IN ({','.join('?' * len(wanted))})")
            args.extend(wanted)
        if key is not None:
            where.append("(created_at < ? OR (created_at = ? AND job_id < ?))")
            args.extend([key[0], key[0], key[1]])
        # Only fixed fragments and placeholders reach the SQL text; values go as parameters.
        sql = (
            "SELECT record FROM jobs"  # noqa: S608
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY created_at DESC, job_id DESC LIMIT ?"
        )
        with self._reading() as db:
            rows = db.execute(sql, [*args, limit + 1]).fetchall()
        return _page_of([JobRecord.model_validate_json(r[0]) for r in rows], limit)

    async def wait_for_change(self, job_id: str, revision: int, wait_s: float) -> None:
        await self._notifier.wait(self, job_id, revision, wait_s)

    # --- outputs ---------------------------------------------------------------------------

    def _output_path(self, job_id: str, index: int) -> Path:
        # Job ids match JOB_ID_PATTERN (checked by the schema): a plain folder name.
        if not job_id or "/" in job_id or job_id.startswith(".") or index < 0:
            raise ValueError(f"bad output address {job_id!r}/{index}")
        return self.outputs_dir / job_id / str(index)

    def put_output(self, job_id: str, index: int, src: Path | bytes, *, move: bool = False) -> None:
        write_atomic(self._output_path(job_id, index), src, move=move)

    def open_output(self, job_id: str, index: int) -> tuple[IO[bytes], int] | None:
        try:
            path = self._output_path(job_id, index)
            fh = path.open("rb")
        except (OSError, ValueError):
            return None
        return fh, os.fstat(fh.fileno()).st_size


__all__ = [
    "JobStore",
    "MemoryJobStore",
    "SQLiteJobStore",
    "apply_update",
    "decode_cursor",
    "encode_cursor",
    "webhook_became_due",
]
