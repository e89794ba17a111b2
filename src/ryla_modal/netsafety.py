"""Which URLs the server may fetch from: http(s) only, and public addresses only unless allowed.

A job names input files by URL and the server fetches them, so a caller could point it at the
container's own services, a cloud metadata endpoint (169.254.169.254) or a neighbour on the
private network.  The rules, shared by every feature that makes the server open a URL:

- the scheme is ``http`` or ``https``, the URL has a host, and no user name or password;
- every address the host resolves to is public: private, loopback, link-local, multicast,
  reserved, unspecified and shared (CGNAT) ranges are refused, IPv4-mapped IPv6 included, unless
  ``allow_private`` (``ryla serve --allow-private-urls``, for local use and tests);
- the check holds at connect time too: ``guarded_client`` connects only to an address it has just
  checked (no second DNS answer can slip a private address in), and never follows redirects.

Messages carry ``redact_url(url)``, never the query string: presigned URLs hold their secret there.

Example::

    check_url("https://example.com/cat.png")  # raises UnsafeURL for http://10.0.0.1/x
    with guarded_client(allow_private=False, timeout=httpx.Timeout(30.0)) as (client, watchdog):
        ...
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import ssl
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

#: Schemes a fetched URL may use.
SCHEMES = frozenset({"http", "https"})

Resolver = Callable[[str, int], list[str]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnsafeURL(ValueError):
    """A URL the rules refuse; the message names the rule and shows the URL without secrets."""


def redact_url(url: str) -> str:
    """The URL without user info, query or fragment: what may appear in logs and errors."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparsable URL>"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    path = parts.path if len(parts.path) <= 200 else parts.path[:200] + "..."
    hidden = "?..." if parts.query else ""
    return f"{parts.scheme}://{netloc}{path}{hidden}"


def is_public_address(address: str | IPAddress) -> bool:
    """True for a globally routable unicast address (IPv4-mapped IPv6 judged as its IPv4)."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is not None:
            return is_public_address(mapped)
        if ip.teredo is not None:
            return False
    # ``is_global`` already excludes private, loopback, link-local, reserved, shared (100.64/10)
    # and unspecified; multicast can be "global" and is refused on its own.
    return ip.is_global and not ip.is_multicast


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (IPv4 and IPv6), in the resolver's order."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError) as exc:  # gaierror, IDNA, embedded NUL
        raise UnsafeURL(f"cannot resolve host {host!r}: {exc}") from None
    seen: dict[str, None] = {}
    for _family, _type, _proto, _name, sockaddr in infos:
        seen.setdefault(str(sockaddr[0]).split("%", 1)[0], None)
    return list(seen)


def checked_addresses(
    host: str, port: int, *, allow_private: bool, resolve: Resolver = system_resolver
) -> list[str]:
    """The addresses of ``host`` once every one has passed the rules (all must pass).

    All, not some: a host answering both a public and a private address could be reached on
    the private one by whoever connects next.
    """
    try:
        addresses = [str(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        addresses = resolve(host, port)
    if not addresses:
        raise UnsafeURL(f"host {host!r} has no address")
    if not allow_private:
        for address in addresses:
            if not is_public_address(address):
                raise UnsafeURL(
                    f"host {host!r} resolves to {address}, a private, loopback, link-local or"
                    " otherwise non-public address; the server does not fetch from those"
                )
    return addresses


def split_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an acceptable URL; UnsafeURL names what is wrong."""
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError as exc:
        raise UnsafeURL(f"{shown} is not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise UnsafeURL(f"{shown}: only http and https URLs are fetched, not {scheme or 'none'!r}")
    if not host:
        raise UnsafeURL(f"{shown}: the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise UnsafeURL(f"{shown}: credentials in the URL are not accepted")
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise UnsafeURL(f"{shown}: the URL contains whitespace or control characters")
    return scheme, host, port or (443 if scheme == "https" else 80)


def check_url(
    url: str, *, allow_private: bool = False, resolve: Resolver = system_resolver
) -> None:
    """Raise UnsafeURL unless ``url`` may be fetched now (scheme, host, resolved addresses)."""
    _scheme, host, port = split_url(url)
    try:
        checked_addresses(host, port, allow_private=allow_private, resolve=resolve)
    except UnsafeURL as exc:
        raise UnsafeURL(f"{redact_url(url)}: {exc}") from None


# --- connecting only where the rules allow ----------------------------------------------------


class _GuardedBackend(httpcore.NetworkBackend):
    """httpcore's socket backend, but every TCP connect goes to an address checked just now.

    TLS still verifies the certificate against the URL's host name: httpcore wraps the socket
    later with ``server_hostname`` taken from the request, not from the address.  The sockets are
    kept so that ``Watchdog`` can cut them when the total deadline passes.
    """

    def __init__(self, *, allow_private: bool, resolve: Resolver) -> None:
        self._inner = httpcore.SyncBackend()
        self._allow_private = allow_private
        self._resolve = resolve
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._cut = False
        #: Why the last connect was refused by the rules (None: none was).
        self.refused: str | None = None

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = checked_addresses(
                host, port, allow_private=self._allow_private, resolve=self._resolve
            )
        except UnsafeURL as exc:
            self.refused = str(exc)
            raise httpcore.ConnectError(str(exc)) from None
        stream = self._inner.connect_tcp(addresses[0], port, timeout, local_address, socket_options)
        sock = stream.get_extra_info("socket")
        if isinstance(sock, socket.socket):
            with self._lock:
                self._sockets.append(sock)
                cut = self._cut
            if cut:
                _shutdown(sock)
        return stream

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are not fetched from")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)

    def cut(self) -> None:
        """Shut every socket down: a blocked read returns at once (``close`` would not)."""
        with self._lock:
            self._cut = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class Watchdog:
    """Ends every transfer of one client when a total deadline passes.

    httpx's read timeout restarts with every chunk, so a server dripping a byte a second never
    trips it; the watchdog cuts the sockets at the deadline, whatever they are doing.
    """

    def __init__(self, backend: _GuardedBackend) -> None:
        self._backend = backend
        self._timer: threading.Timer | None = None
        self.fired = threading.Event()

    def start(self, seconds: float) -> None:
        self._timer = threading.Timer(max(0.0, seconds), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired.set()
        self._backend.cut()

    @property
    def refused(self) -> str | None:
        """Why the address rules refused a connect of this client, if they did."""
        return self._backend.refused

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


@contextlib.contextmanager
def guarded_client(
    *,
    allow_private: bool,
    timeout: httpx.Timeout,
    resolve: Resolver = system_resolver,
    verify: ssl.SSLContext | None = None,
) -> Iterator[tuple[httpx.Client, Watchdog]]:
    """An httpx client that obeys the address rules at connect time and never redirects.

    No proxies and no environment settings (``trust_env=False``): a proxy would connect on our
    behalf to an address we never checked.
    """
    backend = _GuardedBackend(allow_private=allow_private, resolve=resolve)
    transport = httpx.HTTPTransport(trust_env=False)
    # httpx has no public hook for the network backend; its transport is a thin wrapper of an
    # httpcore pool, which we replace with one that connects through our backend.
    transport._pool = httpcore.ConnectionPool(
        ssl_context=verify or ssl.create_default_context(),
        max_connections=4,
        network_backend=backend,
    )
    watchdog = Watchdog(backend)
    client = httpx.Client(
        transport=transport, timeout=timeout, follow_redirects=False, trust_env=False
    )
    try:
        yield client, watchdog
    finally:
        watchdog.stop()
        client.close()


__all__ = [
    "SCHEMES",
    "UnsafeURL",
    "Watchdog",
    "check_url",
    "checked_addresses",
    "guarded_client",
    "is_public_address",
    "redact_url",
    "split_url",
    "system_resolver",
]
