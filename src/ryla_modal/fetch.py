"""Fetching a job's input files from URLs: address rules, a size cap, a total deadline, a checksum.

Inputs by URL spare the job API large base64 bodies (a Modal web endpoint answers within 150 s);
the worker fetches them itself, before ComfyUI sees the job, so a bad URL, an oversize file or a
wrong checksum fails the job before any GPU work.  What may be fetched is decided by
:mod:`ryla_modal.netsafety`, at submit time and again at connect time.

Example::

    data = fetch_url("https://example.com/cat.png", name="cat.png", rules=FetchRules())
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass

import httpx

from ryla_modal import defaults
from ryla_modal.errors import InputFetchError
from ryla_modal.netsafety import (
    Resolver,
    UnsafeURL,
    guarded_client,
    redact_url,
    split_url,
    system_resolver,
)

#: ``InputFetchError.reason`` values, which become the failed job's ``error.type``.
REFUSED = "input_url_refused"
FAILED = "input_fetch_failed"
TOO_LARGE = "input_too_large"
SHA256_MISMATCH = "input_sha256_mismatch"

_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_CHUNK = 256 * 1024


@dataclass(frozen=True)
class FetchRules:
    """How inputs by URL are fetched: ``allow_private`` only for local use and tests."""

    allow_private: bool = False
    max_bytes: int = defaults.INPUT_URL_MAX_BYTES
    timeout_s: float = defaults.INPUT_URL_TIMEOUT_S
    connect_timeout_s: float = defaults.CONNECT_TIMEOUT_S
    resolve: Resolver = system_resolver


def valid_sha256(value: str) -> bool:
    return bool(_SHA256.match(value))


def fetch_url(
    url: str, *, name: str, rules: FetchRules, expected_sha256: str | None = None
) -> bytes:
    """The bytes at ``url``; InputFetchError (with its ``reason``) when anything is wrong.

    A redirect is an error rather than followed: its target would need the same checks, and a
    URL that redirects can be resolved by the caller once.
    """
    shown = redact_url(url)
    where = f"input {name!r} ({shown})"
    try:
        split_url(url)
    except UnsafeURL as exc:
        raise InputFetchError(f"{where}: {exc}", reason=REFUSED, name=name) from None
    timeout = httpx.Timeout(
        min(rules.timeout_s, defaults.READ_TIMEOUT_S),
        connect=min(rules.connect_timeout_s, rules.timeout_s),
    )
    with guarded_client(
        allow_private=rules.allow_private, timeout=timeout, resolve=rules.resolve
    ) as (
        client,
        watchdog,
    ):
        watchdog.start(rules.timeout_s)
        try:
            data = _get(client, url, where, name, rules.max_bytes)
        except (httpx.HTTPError, OSError) as exc:
            if watchdog.refused is not None:
                raise InputFetchError(
                    f"{where}: {watchdog.refused}", reason=REFUSED, name=name
                ) from None
            if watchdog.fired.is_set():
                raise InputFetchError(
                    f"{where}: not fetched within {rules.timeout_s:g} s",
                    reason=FAILED,
                    name=name,
                ) from None
            raise InputFetchError(
                f"{where}: fetch failed: {_plain(exc, shown)}", reason=FAILED, name=name
            ) from None
        if watchdog.fired.is_set():  # cut between the last chunk and the end of the body
            raise InputFetchError(
                f"{where}: not fetched within {rules.timeout_s:g} s", reason=FAILED, name=name
            )
    if expected_sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected_sha256.lower():
            raise InputFetchError(
                f"{where}: sha256 mismatch (expected {expected_sha256.lower()}, the URL gave"
                f" {actual})",
                reason=SHA256_MISMATCH,
                name=name,
                hint="the file at the URL changed, or the checksum is wrong",
            )
    return data


def _get(client: httpx.Client, url: str, where: str, name: str, max_bytes: int) -> bytes:
    with client.stream("GET", url) as resp:
        if resp.is_redirect:
            raise InputFetchError(
                f"{where}: answered HTTP {resp.status_code} (a redirect); redirects are not"
                " followed, give the final URL",
                reason=FAILED,
                name=name,
            )
        if resp.status_code != 200:
            raise InputFetchError(
                f"{where}: answered HTTP {resp.status_code}", reason=FAILED, name=name
            )
        length = resp.headers.get("content-length")
        if length and length.isdigit() and int(length) > max_bytes:
            raise InputFetchError(
                f"{where}: {int(length):,} bytes, more than the {max_bytes:,}-byte limit",
                reason=TOO_LARGE,
                name=name,
            )
        buf = io.BytesIO()
        for chunk in resp.iter_bytes(_CHUNK):
            buf.write(chunk)
            if buf.tell() > max_bytes:
                raise InputFetchError(
                    f"{where}: more than the {max_bytes:,}-byte limit",
                    reason=TOO_LARGE,
                    name=name,
                )
        return buf.getvalue()


def _plain(exc: BaseException, shown: str) -> str:
    """An exception's text without the URL's query string (httpx puts the full URL in some)."""
    text = str(exc) or type(exc).__name__
    return re.sub(r"https?://\S+", shown, text)


__all__ = [
    "FAILED",
    "REFUSED",
    "SHA256_MISMATCH",
    "TOO_LARGE",
    "FetchRules",
    "fetch_url",
    "valid_sha256",
]
