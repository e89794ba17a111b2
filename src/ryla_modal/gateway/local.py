"""The local job API (``ryla serve``) composed in one call: store, ComfyUI, executor, app, uvicorn.

The Modal gateway is composed in ``cloud/gateway.py``; this is its local twin, so the CLI only
parses options and prints.  ``serve_local`` opens the SQLite store (which locks its data folder),
binds the listening socket first (a taken port fails before ComfyUI spends seconds starting),
launches ComfyUI through ``ComfyProcess`` or probes the one given by URL, re-adopts the jobs a
previous run left behind (``LocalExecutor.recover``), starts the webhook deliverer (which picks
up deliveries a previous run left pending), and serves until uvicorn stops (Ctrl-C, SIGTERM) or
the caller's signal handler raises; on the way out it settles the running jobs (below).

Lifetime: a ComfyUI we launch dies with us, even when we are SIGKILLed (Linux: PDEATHSIG, set by
the launch on the main thread and by restarts on the monitor's thread, both living as long as
serve); when it exits on its own, ``ComfyMonitor`` restarts it with backoff.  On the way out,
uvicorn's shutdown first drains the app (new requests and long polls get 503 + Retry-After), then
jobs are settled: with our own ComfyUI they are interrupted and fail (``server_stopped``) before
ComfyUI stops; with ``--comfyui-url`` ComfyUI keeps running what it has, and the next start
re-adopts it.

    serve_local(ComfySource(url="http://127.0.0.1:8188"), data_dir=Path(".ryla/serve"))
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ryla_modal import defaults
from ryla_modal.comfy.process import ComfyMonitor, ComfyProcess, check_ready
from ryla_modal.config import is_loopback, serve_token
from ryla_modal.errors import ComfyUIUnavailable, ConfigError
from ryla_modal.gateway.webhooks import Deliverer, WebhookSettings

if TYPE_CHECKING:  # pragma: no cover
    import uvicorn

log = logging.getLogger("ryla_modal.serve")


@dataclass(frozen=True)
class ComfySource:
    """Where the ComfyUI comes from: a checkout to launch, a command to launch, or a URL."""

    dir: Path | None = None
    python: str = sys.executable
    command: Sequence[str] | None = None
    args: Sequence[str] = ()
    port: int | None = None
    url: str | None = None


@dataclass(frozen=True)
class Listening:
    """What ``serve_local`` tells its caller once it accepts connections."""

    url: str
    comfy_url: str
    data_dir: Path
    with_token: bool


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (0: any free port); ConfigError when taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not the default 0: asyncio turns on TCP_NODELAY only for sockets that say
    # they are TCP, and without it every answer waits ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            hint="pick another --port (0 takes any free one)",
        ) from exc
    sock.set_inheritable(False)
    return sock


def comfy_process(source: ComfySource, log_path: Path) -> ComfyProcess:
    """The ``ComfyProcess`` for a source that launches ComfyUI (a checkout or a command)."""
    if source.dir is not None:
        return ComfyProcess.for_checkout(
            source.dir,
            source.python,
            port=source.port,
            extra_args=source.args,
            log_path=log_path,
            die_with_parent=True,
        )
    if source.command:
        return ComfyProcess(
            list(source.command),
            port=source.port,
            extra_args=source.args,
            log_path=log_path,
            die_with_parent=True,
        )
    raise ConfigError("give a ComfyUI checkout, a command to launch, or a URL")


def serve_local(
    source: ComfySource,
    *,
    data_dir: Path,
    host: str = defaults.SERVE_HOST,
    port: int = defaults.SERVE_PORT,
    token: str | None = None,
    workers: int = defaults.SERVE_WORKERS,
    ready_timeout: float = defaults.COMFY_READY_TIMEOUT_S,
    allow_private_urls: bool = False,
    on_listening: Callable[[Listening], None] | None = None,
    allow_private_webhooks: bool = False,
    webhooks: WebhookSettings | None = None,
) -> None:
    """Serve the job API until uvicorn stops; always stops ComfyUI and closes the store.

    Refuses (ConfigError, from ``config.serve_token``) a blank token, and to listen beyond
    loopback without a token.  ``allow_private_urls``: inputs by URL may name private and
    loopback addresses (local use, tests).  ``webhooks`` defaults to ``WebhookSettings.from_env()``
    (``RYLA_WEBHOOK_SECRET``); ``allow_private_webhooks`` lets webhooks reach private and
    loopback addresses (a receiver on this machine or the local network).
    """
    import uvicorn

    from ryla_modal.fetch import FetchRules
    from ryla_modal.gateway.app import Limits, create_app
    from ryla_modal.gateway.executors import LocalExecutor
    from ryla_modal.gateway.object_info import ComfyObjectInfo
    from ryla_modal.gateway.store import SQLiteJobStore

    token = serve_token(token, host)
    if webhooks is None:
        webhooks = WebhookSettings.from_env(allow_private=allow_private_webhooks)
    elif allow_private_webhooks:
        webhooks = dataclasses.replace(webhooks, allow_private=True)
    store = SQLiteJobStore(data_dir)
    process: ComfyProcess | None = None
    executor: LocalExecutor | None = None
    deliverer: Deliverer | None = None
    monitor: ComfyMonitor | None = None
    sock: socket.socket | None = None
    close_app: Callable[[], None] | None = None
    started = False  # "stopping"/"stopped" only once something was started
    try:
        sock = bind(host, port)
        if source.url is not None:
            base_url = source.url.rstrip("/")
            try:
                check_ready(base_url, timeout=defaults.COMFY_CONNECT_TIMEOUT_S)
            except ComfyUIUnavailable as exc:
                raise ComfyUIUnavailable(
                    exc.message,
                    hint="start ComfyUI first, or let ryla launch it with --comfyui-dir",
                ) from exc
            log.info("using ComfyUI at %s", base_url)
        else:
            process = comfy_process(source, data_dir / "comfyui.log")
            log.info("starting ComfyUI (log: %s)", process.log_path)
            started = True
            process.start(ready_timeout=ready_timeout)
            base_url = process.base_url
            log.info("ComfyUI ready at %s (pid %s)", base_url, process.pid)
        monitor = ComfyMonitor(base_url, process=process, ready_timeout_s=ready_timeout)
        monitor.start()

        # Half-collected outputs of a crashed run: nobody will pick them up (we hold the lock).
        shutil.rmtree(data_dir / "work", ignore_errors=True)
        executor = LocalExecutor(
            store,
            base_url,
            process=process,
            workers=workers,
            work_dir=data_dir / "work",
            fetch_rules=FetchRules(allow_private=allow_private_urls),
            monitor=monitor,
        )
        executor.recover()
        # Started even without a secret: deliveries a previous run queued are recorded as
        # failed attempts (and retried) rather than left silently pending.
        deliverer = Deliverer(store, webhooks)
        deliverer.start()
        watched = monitor

        def comfy_state() -> tuple[str, int]:
            return watched.state, watched.restarts

        app = create_app(
            executor,
            store,
            token=token,
            object_info=ComfyObjectInfo(base_url),
            limits=Limits(allow_private_urls=allow_private_urls),
            webhooks=webhooks,
            comfy_state=comfy_state,
        )
        close_app = app.state.close
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=int(defaults.SERVE_GRACEFUL_HTTP_S),
            # What the suite runs, whatever else is installed: "auto" would take httptools,
            # which bounds no request head (h11: 16 KiB), and uvloop when present.
            http="h11",
            loop="asyncio",
        )
        bound_host, bound_port = sock.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        if on_listening is not None:
            on_listening(
                Listening(f"http://{shown}:{bound_port}", base_url, data_dir, token is not None)
            )
        started = True
        _run_uvicorn(config, [sock], app.state.drain)
    finally:
        if started:
            log.info("stopping")
        if close_app is not None:
            close_app()
        if monitor is not None:
            monitor.close()  # no restart from now on
        if executor is not None:
            executor.close(leave_to_comfyui=process is None)
        if deliverer is not None:
            deliverer.close()
        if process is not None:
            process.stop()
        if monitor is not None:
            monitor.join()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        store.close()
        if started:
            log.info("stopped")


def _run_uvicorn(
    config: uvicorn.Config, sockets: list[socket.socket], drain: Callable[[], None]
) -> None:
    """uvicorn's ``Server.run``, telling the app it stops before waiting for open requests."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            drain()  # long polls answer 503 now, not 500 at the graceful timeout
            await super().shutdown(sockets)

    DrainingServer(config).run(sockets=sockets)


__all__ = ["ComfySource", "Listening", "bind", "comfy_process", "is_loopback", "serve_local"]
