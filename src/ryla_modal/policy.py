"""Deadlines and the one retry loop (tenacity, configured here) for HTTP and the modal CLI.

The sync and async clients and `deploy/modal_cli.py` share these; only "send" and "sleep" exist
twice.  Rules (DESIGN.md, "Timeouts and retries"): retry connect errors, read timeouts, protocol
errors, 408/429/502/503/504, honouring ``Retry-After`` (capped); POST /jobs is retried too because
the client-made ``job_id`` makes it idempotent; never retry other 4xx, validation or execution
errors.  Every retry is logged at INFO on the ``ryla_modal`` logger with attempt, delay and cause.
"""

from __future__ import annotations

import email.utils
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from tenacity import AsyncRetrying, RetryCallState, Retrying, retry_if_exception

from ryla_modal import defaults

log = logging.getLogger("ryla_modal")

RETRYABLE_STATUS = frozenset({408, 429, 502, 503, 504})

# Transport failures after which the request can safely be sent again.  A read timeout on an
# idempotent request is included; every request we send is idempotent (GETs, and POSTs keyed by
# the client-made job id).
RETRYABLE_EXCEPTIONS: tuple[type[BaseException], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.ReadTimeout,
    httpx.WriteTimeout,
    httpx.PoolTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry one request.

    Frozen so a client's policy cannot drift; build a new one with ``dataclasses.replace`` for a
    single call.
    """

    max_attempts: int = defaults.RETRY_MAX_ATTEMPTS
    initial_delay_s: float = defaults.RETRY_INITIAL_DELAY_S
    max_delay_s: float = defaults.RETRY_MAX_DELAY_S
    retry_after_cap_s: float = defaults.RETRY_AFTER_CAP_S

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Full-jitter exponential delay before attempt ``attempt + 1`` (attempt counts from 1)."""
        ceiling = min(self.max_delay_s, self.initial_delay_s * (2 ** max(0, attempt - 1)))
        return (rng or random).uniform(0, ceiling)


def is_retryable_status(status_code: int) -> bool:
    return status_code in RETRYABLE_STATUS


def is_retryable_exception(exc: BaseException) -> bool:
    return isinstance(exc, RETRYABLE_EXCEPTIONS)


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds the server asked us to wait (``Retry-After`` as seconds or an HTTP date)."""
    value = headers.get("retry-after") or headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds):
        return None
    return max(0.0, seconds)


def retry_delay(
    policy: RetryPolicy,
    attempt: int,
    *,
    retry_after: float | None,
    remaining_s: float | None,
    rng: random.Random | None = None,
) -> float | None:
    """The delay before the next attempt, or ``None`` to give up now.

    Gives up when attempts are spent, when the server asks for longer than the cap, or when the
    wait would not leave time for another attempt before the deadline.
    """
    if attempt >= policy.max_attempts:
        return None
    if retry_after is not None:
        if retry_after > policy.retry_after_cap_s:
            return None
        delay = retry_after
    else:
        delay = policy.backoff(attempt, rng)
    if remaining_s is not None and delay >= remaining_s:
        return None
    return delay


class Deadline:
    """A monotonic point in time; ``None`` seconds means no deadline.

    ``label`` names the budget in errors ("the cold-start budget"), so a timeout says which of
    several nested deadlines ran out.
    """

    def __init__(self, seconds: float | None, label: str = "deadline") -> None:
        self.seconds = seconds
        self.label = label
        self._at = None if seconds is None else time.monotonic() + seconds

    @staticmethod
    def earliest(*deadlines: Deadline) -> Deadline:
        """The one that passes first (layered deadlines: call, phase, request)."""
        return min(deadlines, key=lambda d: math.inf if d._at is None else d._at)

    def describe(self) -> str:
        return self.label if self.seconds is None else f"{self.label} of {self.seconds:g}s"

    def remaining(self) -> float | None:
        if self._at is None:
            return None
        return max(0.0, self._at - time.monotonic())

    def expired(self) -> bool:
        remaining = self.remaining()
        return remaining is not None and remaining <= 0

    def cap(self, seconds: float) -> float:
        """``seconds``, shortened to what is left of this deadline (layered deadlines)."""
        remaining = self.remaining()
        return seconds if remaining is None else max(0.001, min(seconds, remaining))


def http_timeout(read_s: float, *, connect_s: float = defaults.CONNECT_TIMEOUT_S) -> httpx.Timeout:
    """An explicit httpx timeout: connect and read apart, write/pool like connect."""
    return httpx.Timeout(connect=connect_s, read=read_s, write=connect_s, pool=connect_s)


COLD_PHASES = frozenset({"waiting_for_gpu", "starting_comfyui"})


def in_cold_start(status: str, phase: str | None) -> bool:
    """A job is in its cold start while queued or while its container boots ComfyUI."""
    return status == "queued" or (status == "running" and phase in COLD_PHASES)


# --------------------------------------------------------------------------- the retry loop
GIVE_UP = math.inf  # the delay `wait` stores for `stop` when no further attempt should be made


@dataclass(frozen=True)
class RetryNotice:
    """One retry about to happen, as logged and as shown to people (a ``retry`` JobEvent)."""

    what: str  # "POST /jobs", "modal app logs", ...
    attempt: int  # the attempt that just failed, from 1
    max_attempts: int
    delay_s: float
    cause: str

    def __str__(self) -> str:
        return (
            f"retrying {self.what} in {self.delay_s:.1f}s"
            f" (attempt {self.attempt} of {self.max_attempts} failed: {self.cause})"
        )


def retrying(
    policy: RetryPolicy,
    *,
    what: str,
    deadline: Deadline,
    cause_of: Callable[[BaseException], str | None],
    sleep: Callable[[float], Any] | Callable[[float], Awaitable[Any]],
    retry_after_of: Callable[[BaseException], float | None] | None = None,
    on_retry: Callable[[RetryNotice], None] | None = None,
    asynchronous: bool = False,
) -> Any:
    """The one tenacity set-up: a `Retrying` (or `AsyncRetrying`) for one request or command.

    ``cause_of(exc)`` says why ``exc`` is worth another attempt, or ``None`` when it is not.
    The delay is decided once per attempt, in ``wait``: backoff with jitter, or the server's
    ``Retry-After`` (capped: a longer one gives up at once), and never past ``deadline``.
    ``stop`` only reads that decision from ``retry_state.upcoming_sleep`` (tenacity runs
    ``wait`` first), so the delay slept is the one checked against the budget.
    """

    def wait(state: RetryCallState) -> float:
        exc = _failure(state)
        delay = retry_delay(
            policy,
            state.attempt_number,
            retry_after=retry_after_of(exc) if retry_after_of is not None else None,
            remaining_s=deadline.remaining(),
        )
        return GIVE_UP if delay is None else delay

    def stop(state: RetryCallState) -> bool:
        return state.upcoming_sleep == GIVE_UP

    def before_sleep(state: RetryCallState) -> None:
        exc = _failure(state)
        notice = RetryNotice(
            what,
            state.attempt_number,
            policy.max_attempts,
            state.upcoming_sleep,
            cause_of(exc) or type(exc).__name__,
        )
        log.info(
            "retrying %s in %.2fs (attempt %d of %d failed: %s)",
            notice.what,
            notice.delay_s,
            notice.attempt,
            notice.max_attempts,
            notice.cause,
        )
        if on_retry is not None:
            on_retry(notice)

    engine: Any = AsyncRetrying if asynchronous else Retrying
    return engine(
        retry=retry_if_exception(lambda exc: cause_of(exc) is not None),
        wait=wait,
        stop=stop,
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )


def _failure(state: RetryCallState) -> BaseException:
    exc = state.outcome.exception() if state.outcome is not None else None
    return exc if exc is not None else RuntimeError("no failure recorded")


def transport_cause(exc: BaseException) -> str | None:
    """Why an httpx failure is worth another attempt (``None``: it is not)."""
    if not is_retryable_exception(exc):
        return None
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
