"""Webhook delivery: a finished job POSTed, signed, to the URL it named, at least once.

The store queues a delivery in the same write that makes a job final (``store.apply_update``
marks the job's ``webhook`` ``pending``; SQLite keeps an outbox table, the Dict store a
``webhook:<id>`` key).  A ``Deliverer`` thread reads what is due and makes one attempt per job
at a time:

- signed per Standard Webhooks with the deployment's secret (``RYLA_WEBHOOK_SECRET``): headers
  ``webhook-id`` (``ryla-<job>-<status>``, the same on every retry so receivers can drop
  repeats), ``webhook-timestamp`` (this attempt) and ``webhook-signature``;
- the address rules of ``netsafety`` on the resolved address, before the attempt and again at
  connect time; redirects are not followed (a 3xx counts as a failed attempt); one total
  deadline per attempt (10 s) that also ends a receiver dripping its answer;
- a 2xx answer delivers; anything else is retried with exponential backoff (first retry within
  ``retry_initial_s``, doubling up to ``retry_max_s`` between attempts, jittered downwards) until
  ``budget_s`` after the job became final;
- every attempt is written on the job (``attempts``, ``last_status``, ``last_error``,
  ``delivered_at``, ``next_attempt_at``), so ``GET /jobs/{id}`` shows where it stands.

The body is the job as ``GET /jobs/{id}`` shows it, with absolute ``url``s for the job and each
output (the gateway's URL as the submitter reached it, or ``RYLA_PUBLIC_URL``); it is the same
bytes on every attempt.

    deliverer = Deliverer(store, WebhookSettings.from_env())
    deliverer.start()   # ... deliverer.close()
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from ryla_modal import __version__, defaults
from ryla_modal.errors import ConfigError
from ryla_modal.gateway.schemas import TERMINAL_STATUSES, JobRecord, WebhookStatus
from ryla_modal.gateway.store import JobStore
from ryla_modal.netsafety import UnsafeURL, check_url, guarded_client, redact_url
from ryla_modal.webhooks import SECRET_ENV, secret_key

log = logging.getLogger("ryla_modal.webhooks")

_MAX_ERROR = 500  # characters of an attempt's error kept on the job
_DUE_BATCH = 100  # deliveries read from the outbox per pass


@dataclass(frozen=True)
class WebhookSettings:
    """How a deployment delivers webhooks; ``secret`` None means it takes no webhook jobs."""

    secret: str | None = field(default=None, repr=False)
    allow_private: bool = False
    attempt_timeout_s: float = defaults.WEBHOOK_ATTEMPT_TIMEOUT_S
    retry_initial_s: float = defaults.WEBHOOK_RETRY_INITIAL_S
    retry_max_s: float = defaults.WEBHOOK_RETRY_MAX_S
    budget_s: float = defaults.WEBHOOK_RETRY_BUDGET_S
    poll_s: float = defaults.WEBHOOK_POLL_S
    #: the gateway's public URL for download links (else the URL the submitter used)
    public_url: str | None = None

    def __post_init__(self) -> None:
        if self.secret is not None:
            secret_key(self.secret)  # ConfigError now, not at the first delivery

    @property
    def enabled(self) -> bool:
        return self.secret is not None

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, allow_private: bool = False
    ) -> WebhookSettings:
        """``RYLA_WEBHOOK_SECRET`` and the ``RYLA_WEBHOOK_*`` timings, else the defaults."""
        env = os.environ if environ is None else environ
        secret = (env.get(SECRET_ENV) or "").strip() or None

        def seconds(name: str, default: float) -> float:
            text = (env.get(name) or "").strip()
            if not text:
                return default
            try:
                value = float(text)
            except ValueError:
                value = -1.0
            if not value > 0 or value == float("inf"):
                raise ConfigError(f"{name} must be a positive number of seconds, not {text!r}")
            return value

        return cls(
            secret=secret,
            allow_private=allow_private,
            attempt_timeout_s=min(
                seconds("RYLA_WEBHOOK_ATTEMPT_TIMEOUT_S", defaults.WEBHOOK_ATTEMPT_TIMEOUT_S),
                defaults.WEBHOOK_ATTEMPT_TIMEOUT_S,
            ),
            retry_initial_s=seconds(
                "RYLA_WEBHOOK_RETRY_INITIAL_S", defaults.WEBHOOK_RETRY_INITIAL_S
            ),
            retry_max_s=seconds("RYLA_WEBHOOK_RETRY_MAX_S", defaults.WEBHOOK_RETRY_MAX_S),
            budget_s=seconds("RYLA_WEBHOOK_BUDGET_S", defaults.WEBHOOK_RETRY_BUDGET_S),
            poll_s=seconds("RYLA_WEBHOOK_POLL_S", defaults.WEBHOOK_POLL_S),
            public_url=(env.get("RYLA_PUBLIC_URL") or "").strip() or None,
        )


def webhook_id(job_id: str, status: str) -> str:
    """One id per job and event: every retry carries it, so a receiver can drop repeats."""
    return f"ryla-{job_id}-{status}"


def payload(record: JobRecord) -> bytes:
    """The body of a job's delivery: ``{type, timestamp, data: <the job, with URLs>}``.

    Built from the final record without the delivery's own state, so every attempt sends the
    same bytes.
    """
    job = record.public().model_dump(mode="json", exclude={"webhook"})
    base = (record.webhook_base_url or "").rstrip("/")
    job["url"] = f"{base}/jobs/{record.job_id}" if base else None
    for out in job["outputs"]:
        out.pop("data_b64", None)
        out["url"] = f"{base}/jobs/{record.job_id}/outputs/{out['index']}" if base else None
    hook = record.webhook
    when = hook.due_since if hook is not None and hook.due_since is not None else record.updated_at
    job["updated_at"] = when  # the final write; recording attempts moves the record's own
    event = {
        "type": f"job.{record.status}",
        "timestamp": dt.datetime.fromtimestamp(when, tz=dt.UTC).isoformat().replace("+00:00", "Z"),
        "data": job,
    }
    return json.dumps(event, separators=(",", ":"), sort_keys=True).encode("utf-8")


def retry_delay(attempts: int, settings: WebhookSettings, rand: Callable[[], float]) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones: doubling from
    ``retry_initial_s``, capped at ``retry_max_s``, jittered down to half so that receivers
    coming back from an outage do not get every retry at the same instant."""
    base = min(settings.retry_initial_s * 2.0 ** max(0, attempts - 1), settings.retry_max_s)
    return base * (0.5 + 0.5 * rand())


@dataclass(frozen=True)
class Attempt:
    """What one POST got: the HTTP status (None: no answer) and why it did not deliver."""

    status: int | None
    error: str | None

    @property
    def delivered(self) -> bool:
        return self.error is None


def send(
    url: str, msg_id: str, body: bytes, settings: WebhookSettings, *, now: float | None = None
) -> Attempt:
    """One signed POST of ``body`` to ``url`` under the address rules and a total deadline."""
    from standardwebhooks.webhooks import Webhook

    if settings.secret is None:
        return Attempt(None, f"this server has no signing secret ({SECRET_ENV}); nothing was sent")
    try:
        check_url(url, allow_private=settings.allow_private)
    except UnsafeURL as exc:
        return Attempt(None, f"refused: {exc}")
    at = int(time.time() if now is None else now)
    signature = Webhook(secret_key(settings.secret)).sign(
        msg_id, dt.datetime.fromtimestamp(at, tz=dt.UTC), body.decode("utf-8")
    )
    headers = {
        "content-type": "application/json",
        "user-agent": f"ryla-modal/{__version__}",
        "webhook-id": msg_id,
        "webhook-timestamp": str(at),
        "webhook-signature": signature,
    }
    limit = settings.attempt_timeout_s
    timeout = httpx.Timeout(limit, connect=min(limit, defaults.CONNECT_TIMEOUT_S))
    with guarded_client(allow_private=settings.allow_private, timeout=timeout) as (
        client,
        watchdog,
    ):
        watchdog.start(limit)
        try:
            with client.stream("POST", url, content=body, headers=headers) as response:
                status = response.status_code
        except httpx.HTTPError as exc:
            if watchdog.refused is not None:
                return Attempt(None, f"refused: {watchdog.refused}")
            if watchdog.fired.is_set() or isinstance(exc, httpx.TimeoutException):
                return Attempt(None, f"no answer from {redact_url(url)} within {limit:g} s")
            return Attempt(None, f"{type(exc).__name__}: {exc}"[:_MAX_ERROR])
    if 200 <= status < 300:
        return Attempt(status, None)
    if 300 <= status < 400:
        return Attempt(status, f"HTTP {status}: a redirect, which webhooks do not follow")
    return Attempt(status, f"HTTP {status}")


class Deliverer:
    """Delivers the store's due webhooks from a background thread (``start``/``close``).

    ``deliver(job_id)`` makes one attempt now and records it; the Modal worker calls it right
    after a job finishes, the thread for everything due (retries, and deliveries a restart
    left pending).  At most one attempt per job is in flight in this process.
    """

    def __init__(
        self,
        store: JobStore,
        settings: WebhookSettings,
        *,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.store = store
        self.settings = settings
        self._clock = clock
        self._rand = rand
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._in_flight: set[str] = set()
        self._thread: threading.Thread | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    # --- the background loop ---------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=defaults.WEBHOOK_CONCURRENCY, thread_name_prefix="ryla-webhook"
        )
        self.store.on_webhook_due = self._wake.set
        self._thread = threading.Thread(target=self._loop, name="ryla-webhooks", daemon=True)
        self._thread.start()

    def close(self, grace_s: float = defaults.SERVE_SHUTDOWN_GRACE_S) -> None:
        """Stop taking deliveries; attempts in flight get ``grace_s`` to finish and be recorded
        (an attempt cut short is made again after a restart: at least once, not exactly once)."""
        self._stop.set()
        self._wake.set()
        if self.store.on_webhook_due == self._wake.set:
            self.store.on_webhook_due = None
        if self._thread is not None:
            self._thread.join(timeout=grace_s)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            deadline = time.monotonic() + grace_s
            while self._busy() and time.monotonic() < deadline:
                time.sleep(0.05)

    def _busy(self) -> bool:
        with self._lock:
            return bool(self._in_flight)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_due()
            except Exception as exc:
                log.warning("webhook deliverer: cannot read the outbox: %s", exc)
            self._wake.wait(self.settings.poll_s)
            self._wake.clear()

    def run_due(self) -> int:
        """Hand every due delivery to the pool; how many were started."""
        pool = self._pool
        if pool is None:
            raise RuntimeError("start() the deliverer first")
        started = 0
        for job_id in self.store.due_webhooks(self._clock(), _DUE_BATCH):
            if self._stop.is_set():
                break
            with self._lock:
                if job_id in self._in_flight:
                    continue
                self._in_flight.add(job_id)
            try:
                pool.submit(self._deliver_and_release, job_id)
            except RuntimeError:  # shut down meanwhile
                self._release(job_id)
                break
            started += 1
        return started

    def _deliver_and_release(self, job_id: str) -> None:
        try:
            self.deliver(job_id)
        finally:
            self._release(job_id)

    def _release(self, job_id: str) -> None:
        with self._lock:
            self._in_flight.discard(job_id)

    # --- one attempt -----------------------------------------------------------------------

    def deliver(self, job_id: str) -> WebhookStatus | None:
        """One attempt for a job whose delivery is pending; its new state (None: nothing to do).

        Never raises: a failure of ours is logged and the delivery stays queued.
        """
        try:
            return self._deliver(job_id)
        except Exception as exc:
            log.warning("webhook for job %s: not attempted: %s", job_id, exc)
            return None

    def _deliver(self, job_id: str) -> WebhookStatus | None:
        record = self.store.get(job_id)
        hook = record.webhook if record is not None else None
        if record is None or hook is None:
            self.store.save_webhook(job_id, WebhookStatus(events=[], state="failed"))
            return None
        if record.status not in TERMINAL_STATUSES:
            return None  # queued by a writer whose final write is still on its way (Dict)
        if hook.state != "pending" or record.webhook_url is None:
            self.store.save_webhook(job_id, hook)  # out of the outbox
            return None
        attempt_no = hook.attempts + 1
        if not self.store.claim_webhook(job_id, attempt_no):
            return None  # another process makes this attempt
        url = record.webhook_url
        result = send(
            url,
            webhook_id(job_id, record.status),
            payload(record),
            self.settings,
            now=self._clock(),
        )
        now = self._clock()
        if result.delivered:
            state = hook.model_copy(
                update={
                    "state": "delivered",
                    "attempts": attempt_no,
                    "delivered_at": now,
                    "last_status": result.status,
                    "last_error": None,
                    "next_attempt_at": None,
                }
            )
            log.info("webhook for job %s delivered to %s", job_id, redact_url(url))
        else:
            error = (result.error or "failed")[:_MAX_ERROR]
            due_since = hook.due_since if hook.due_since is not None else record.updated_at
            next_at = now + retry_delay(attempt_no, self.settings, self._rand)
            gave_up = next_at > due_since + self.settings.budget_s
            if gave_up:
                error = (
                    f"{error}; gave up after {attempt_no} attempts over"
                    f" {now - due_since:.0f} s (budget {self.settings.budget_s:g} s)"
                )[:_MAX_ERROR]
            state = hook.model_copy(
                update={
                    "state": "failed" if gave_up else "pending",
                    "attempts": attempt_no,
                    "last_status": result.status,
                    "last_error": error,
                    "next_attempt_at": None if gave_up else next_at,
                }
            )
            log.warning(
                "webhook for job %s: attempt %d to %s failed: %s%s",
                job_id,
                attempt_no,
                redact_url(url),
                result.error,
                "" if gave_up else f" (next in {next_at - now:.1f} s)",
            )
        self.store.save_webhook(job_id, state)
        return state


def check_webhook_url(url: str, settings: WebhookSettings | None) -> str | None:
    """Why a submitted webhook cannot be taken (None: it can), for the 422 at submit."""
    if settings is None or settings.secret is None:
        return (
            "this server has no webhook signing secret, so it takes no webhook jobs: set"
            f" {SECRET_ENV} where the server runs (on Modal: in the app's secret)"
        )
    try:
        check_url(url, allow_private=settings.allow_private)
    except UnsafeURL as exc:
        hint = (
            "" if settings.allow_private else " (`ryla serve --allow-private-webhooks` allows it)"
        )
        return f"webhook.url: {exc}{hint}"
    return None


def waiting_state(events: list[Any]) -> WebhookStatus:
    """A new job's webhook: nothing to send until it becomes final."""
    return WebhookStatus(events=list(events), state="waiting")


__all__ = [
    "Attempt",
    "Deliverer",
    "WebhookSettings",
    "check_webhook_url",
    "payload",
    "retry_delay",
    "send",
    "waiting_state",
    "webhook_id",
]
