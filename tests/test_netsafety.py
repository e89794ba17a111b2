"""The URL rules (netsafety) and the guarded fetch of inputs by URL, over real sockets."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from ryla_modal.errors import InputFetchError
from ryla_modal.fetch import FAILED, REFUSED, SHA256_MISMATCH, TOO_LARGE, FetchRules, fetch_url
from ryla_modal.netsafety import (
    UnsafeURL,
    check_url,
    guarded_client,
    is_public_address,
    redact_url,
)
from tests._file_server import file_server

LOCAL = FetchRules(allow_private=True, timeout_s=20.0)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # shared (CGNAT)
        "0.0.0.0",
        "224.0.0.1",  # multicast
        "240.0.0.1",  # reserved
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "::ffff:127.0.0.1",  # IPv4-mapped loopback
        "::ffff:10.0.0.1",
        "2002:7f00:1::",  # 6to4 wrapping 127.0.0.1
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert not is_public_address(address)
    shown = f"[{address}]" if ":" in address else address
    with pytest.raises(UnsafeURL, match="non-public"):
        check_url(f"http://{shown}/x.png")


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert is_public_address(address)
    shown = f"[{address}]" if ":" in address else address
    check_url(f"https://{shown}/x.png")


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("file:///etc/passwd", "only http and https"),
        ("ftp://example.com/x", "only http and https"),
        ("gopher://example.com/x", "only http and https"),
        ("example.com/x.png", "only http and https"),
        ("http:///x.png", "no host"),
        ("http://user:pw@example.com/x", "credentials"),
        ("http://example.com/a b", "whitespace"),
        ("http://[::1/x", "not a valid URL"),
    ],
)
def test_malformed_or_unsafe_urls(url: str, why: str) -> None:
    with pytest.raises(UnsafeURL, match=why):
        check_url(url, allow_private=True, resolve=lambda host, port: ["93.184.216.34"])


def test_every_resolved_address_must_be_public() -> None:
    def resolve(host: str, port: int) -> list[str]:
        assert (host, port) == ("mixed.example", 443)
        return ["93.184.216.34", "10.0.0.7"]

    with pytest.raises(UnsafeURL, match=r"10\.0\.0\.7"):
        check_url("https://mixed.example/x", resolve=resolve)
    check_url("https://mixed.example/x", resolve=resolve, allow_private=True)


def test_an_unresolvable_host_is_refused() -> None:
    with pytest.raises(UnsafeURL, match="cannot resolve"):
        check_url("http://no-such-host.invalid/x")


def test_redact_url_drops_secrets() -> None:
    url = "https://bob:pw@bucket.s3.example.com:8443/a/cat.png?X-Amz-Signature=SECRET#frag"
    shown = redact_url(url)
    assert shown == "https://bucket.s3.example.com:8443/a/cat.png?..."
    assert "SECRET" not in shown and "pw" not in shown


def test_the_connect_checks_again_so_rebinding_cannot_reach_loopback() -> None:
    """DNS that answers "public" at submit and "127.0.0.1" at connect is caught at connect."""
    with file_server() as srv:
        srv.files["cat.png"] = b"meow"
        answers = iter([["93.184.216.34"], ["127.0.0.1"]])

        def rebinding(host: str, port: int) -> list[str]:
            return next(answers)

        url = f"http://rebind.example:{srv.port}/files/cat.png"
        check_url(url, resolve=rebinding)  # the submit-time look
        with pytest.raises(InputFetchError) as info:
            fetch_url(url, name="cat.png", rules=FetchRules(resolve=rebinding))
        assert info.value.reason == REFUSED
        assert "127.0.0.1" in info.value.message
        assert srv.hits["/files/cat.png"] == 0


def test_guarded_client_connects_to_the_checked_address() -> None:
    with file_server() as srv:
        srv.files["a.bin"] = b"abc"
        # Any name works once it resolves to the server, and the Host header keeps the name.
        with guarded_client(
            allow_private=True,
            timeout=httpx.Timeout(10.0),
            resolve=lambda host, port: ["127.0.0.1"],
        ) as (client, _watchdog):
            resp = client.get(f"http://files.test:{srv.port}/files/a.bin")
        assert (resp.status_code, resp.content) == (200, b"abc")


# --- fetch_url: size, checksum, redirects, deadline ------------------------------------------


def test_fetch_with_a_matching_checksum() -> None:
    data = bytes(range(256)) * 100
    with file_server() as srv:
        srv.files["x.bin"] = data
        got = fetch_url(
            srv.url("/files/x.bin?sig=s3cr3t"),
            name="x.bin",
            rules=LOCAL,
            expected_sha256=hashlib.sha256(data).hexdigest().upper(),
        )
        assert got == data
        assert fetch_url(srv.url("/chunked/x.bin"), name="x.bin", rules=LOCAL) == data


def test_a_checksum_mismatch_fails() -> None:
    with file_server() as srv:
        srv.files["x.bin"] = b"not what you think"
        with pytest.raises(InputFetchError) as info:
            fetch_url(srv.url("/files/x.bin"), name="x.bin", rules=LOCAL, expected_sha256="0" * 64)
    assert info.value.reason == SHA256_MISMATCH
    assert "0" * 64 in info.value.message and info.value.name == "x.bin"


@pytest.mark.parametrize("route", ["/files/big.bin", "/chunked/big.bin"])
def test_oversize_files_stop_at_the_cap(route: str) -> None:
    """With a content-length the answer is refused unread; without, counting stops it."""
    with file_server() as srv:
        srv.files["big.bin"] = b"z" * 300_000
        rules = FetchRules(allow_private=True, max_bytes=100_000, timeout_s=20.0)
        with pytest.raises(InputFetchError) as info:
            fetch_url(srv.url(route), name="big.bin", rules=rules)
    assert info.value.reason == TOO_LARGE
    assert "100,000-byte limit" in info.value.message


def test_redirects_are_not_followed() -> None:
    with file_server() as srv:
        srv.files["cat.png"] = b"meow"
        with pytest.raises(InputFetchError, match="redirect") as info:
            fetch_url(srv.url("/redirect/cat.png"), name="cat.png", rules=LOCAL)
        assert info.value.reason == FAILED
        assert srv.hits["/files/cat.png"] == 0


def test_http_errors_and_closed_ports_fail_with_the_url_redacted() -> None:
    with file_server() as srv:
        with pytest.raises(InputFetchError, match="HTTP 403") as info:
            fetch_url(srv.url("/status/403?token=hush"), name="a.png", rules=LOCAL)
        assert "hush" not in info.value.message
        port = srv.port
    with pytest.raises(InputFetchError, match="fetch failed") as closed:
        fetch_url(f"http://127.0.0.1:{port}/files/a.png?token=hush", name="a.png", rules=LOCAL)
    assert closed.value.reason == FAILED and "hush" not in closed.value.message


def test_a_dripping_server_hits_the_total_deadline() -> None:
    """A byte every 0.2 s never trips a read timeout; the total deadline stops it."""
    with file_server(drip_s=0.2) as srv:
        rules = FetchRules(allow_private=True, timeout_s=1.0)
        with pytest.raises(InputFetchError, match="not fetched within 1 s") as info:
            fetch_url(srv.url("/drip"), name="slow.bin", rules=rules)
    assert info.value.reason == FAILED


def test_private_addresses_need_allow_private() -> None:
    with file_server() as srv:
        srv.files["cat.png"] = b"meow"
        with pytest.raises(InputFetchError) as info:
            fetch_url(srv.url("/files/cat.png"), name="cat.png", rules=FetchRules())
        assert info.value.reason == REFUSED
        assert srv.hits["/files/cat.png"] == 0
        with pytest.raises(InputFetchError) as bad_scheme:
            fetch_url("file:///etc/passwd", name="p", rules=LOCAL)
        assert bad_scheme.value.reason == REFUSED
