"""Timeouts per phase and the retry decision, in one place and free of I/O.

The sync and async clients share these pure functions; only "send" and "sleep" exist twice.
Rules (DESIGN.md, "Timeouts and retries"): retry connect errors, read timeouts, protocol errors,
408/429/502/503/504, honouring ``Retry-After`` (capped); POST /jobs is retried too because the
client-made ``job_id`` makes it idempotent; never retry other 4xx, validation or execution errors.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from ryla_modal import defaults

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
    """A monotonic point in time; ``None`` seconds means no deadline."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self._at = None if seconds is None else time.monotonic() + seconds

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
