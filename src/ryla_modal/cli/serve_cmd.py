"""`ryla serve`: the job API on this machine, in front of a local ComfyUI.

Thin glue: launch ComfyUI through our launcher (or use one that runs), open the SQLite job store,
settle jobs a previous run left behind, serve the gateway with uvicorn, and on the way out (Ctrl-C,
SIGTERM) interrupt running jobs and stop ComfyUI.  fastapi and uvicorn are imported inside the
command so ``ryla --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import shlex
import shutil
import signal
import socket
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import click

from ryla_modal import defaults
from ryla_modal.cli._output import examples
from ryla_modal.errors import EXIT_USAGE, ComfyUIUnavailable, ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from ryla_modal.comfy.process import ComfyProcess

EXIT_TERMINATED = 143  # 128 + SIGTERM

SERVE_HELP = """Serve the job API locally, in front of a local ComfyUI.

Develop and test a workflow before paying for a GPU: `ryla generate --endpoint URL` and the
Python client talk to it exactly as to the Modal deployment.  Give --comfyui-dir (a ComfyUI
checkout that ryla launches and stops) or --comfyui-url (a ComfyUI that already runs).

Job records and output files live in --data-dir and survive a restart; jobs that were running
when the server stopped are marked failed with the reason.  Binding an address other than
loopback needs a token: set RYLA_TOKEN (clients send it as `Authorization: Bearer ...`).
"""

SERVE_EXAMPLES = examples(
    "ryla serve --comfyui-dir ~/ComfyUI --comfyui-arg=--cpu",
    "ryla serve --comfyui-url http://127.0.0.1:8188 --port 8000",
    "RYLA_TOKEN=$(openssl rand -hex 16) ryla serve --comfyui-dir ~/ComfyUI --host 0.0.0.0",
)

log = logging.getLogger("ryla_modal.serve")


class _Terminated(BaseException):
    """SIGTERM arrived: leave through the same cleanup as Ctrl-C."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


@click.command("serve", help=SERVE_HELP, epilog=SERVE_EXAMPLES)
@click.option(
    "--comfyui-dir",
    metavar="DIR",
    type=click.Path(path_type=Path),
    help="ComfyUI checkout to launch (python main.py ...).",
)
@click.option(
    "--comfyui-python",
    metavar="PYTHON",
    help="Python of that checkout (default: the one running ryla).",
)
@click.option(
    "--comfyui-arg",
    metavar="ARG",
    multiple=True,
    help="Extra argument for ComfyUI (repeat; --comfyui-arg=--cpu).",
)
@click.option("--comfyui-url", metavar="URL", help="Use a ComfyUI that already runs at this URL.")
@click.option("--comfyui-command", hidden=True, help="Launch this command as ComfyUI (tests).")
@click.option(
    "--comfyui-port",
    metavar="PORT",
    type=click.IntRange(1, 65535),
    help="Port for the launched ComfyUI (default: a free one).",
)
@click.option(
    "--host", metavar="ADDRESS", default=defaults.SERVE_HOST, help="Address to listen on."
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=defaults.SERVE_PORT,
    help="Port (0: any free one).",
)
@click.option(
    "--token",
    metavar="TOKEN",
    envvar="RYLA_TOKEN",
    show_envvar=True,
    help="Bearer token clients must send; prefer the RYLA_TOKEN variable to this flag.",
)
@click.option(
    "--data-dir",
    metavar="DIR",
    type=click.Path(path_type=Path),
    default=Path(defaults.SERVE_DATA_DIR),
    help="Job records and output files.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=defaults.SERVE_WORKERS,
    help="Jobs handed to ComfyUI at once.",
)
@click.option(
    "--ready-timeout",
    metavar="S",
    type=click.FloatRange(min=1),
    default=defaults.COMFY_READY_TIMEOUT_S,
    help="ComfyUI start budget in seconds.",
)
def serve_cmd(
    comfyui_dir: Path | None,
    comfyui_python: str | None,
    comfyui_arg: tuple[str, ...],
    comfyui_url: str | None,
    comfyui_command: str | None,
    comfyui_port: int | None,
    host: str,
    port: int,
    token: str | None,
    data_dir: Path,
    workers: int,
    ready_timeout: float,
) -> int:
    sources = [x for x in (comfyui_dir, comfyui_url, comfyui_command) if x is not None]
    if len(sources) != 1:
        print(
            "error: give exactly one of --comfyui-dir (launch ComfyUI) or --comfyui-url"
            " (use a running one)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if comfyui_url is not None and (comfyui_arg or comfyui_python or comfyui_port):
        print(
            "error: --comfyui-arg, --comfyui-python and --comfyui-port apply to a ComfyUI that"
            " ryla launches, not to --comfyui-url",
            file=sys.stderr,
        )
        return EXIT_USAGE
    token = token or None
    if token is None and not is_loopback(host):
        print(
            f"error: refusing to listen on {host} without a token: anyone who can reach it could"
            " run jobs\nhint: set RYLA_TOKEN (clients send it as 'Authorization: Bearer ...'),"
            " or listen on 127.0.0.1",
            file=sys.stderr,
        )
        return EXIT_USAGE
    _setup_logging()
    if token is not None and os.environ.get("RYLA_TOKEN") != token:
        log.warning("a token on the command line is visible to other users (ps); prefer RYLA_TOKEN")

    # Ctrl-C and SIGTERM both leave through the cleanup below, even when this process was
    # started with SIGINT ignored (a background job of a non-interactive shell).
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _serve(
            comfyui_dir=comfyui_dir,
            comfyui_python=comfyui_python or sys.executable,
            comfyui_args=list(comfyui_arg),
            comfyui_url=comfyui_url,
            comfyui_command=comfyui_command,
            comfyui_port=comfyui_port,
            host=host,
            port=port,
            token=token,
            data_dir=data_dir,
            workers=workers,
            ready_timeout=ready_timeout,
        )
    except _Terminated:
        return EXIT_TERMINATED
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
    return 0


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Terminated


def _setup_logging() -> None:
    logger = logging.getLogger("ryla_modal")
    if not any(getattr(h, "_ryla_serve", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        handler._ryla_serve = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _bind(host: str, port: int) -> socket.socket:
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


def _serve(
    *,
    comfyui_dir: Path | None,
    comfyui_python: str,
    comfyui_args: list[str],
    comfyui_url: str | None,
    comfyui_command: str | None,
    comfyui_port: int | None,
    host: str,
    port: int,
    token: str | None,
    data_dir: Path,
    workers: int,
    ready_timeout: float,
) -> None:
    import uvicorn

    from ryla_modal.comfy.process import ComfyProcess
    from ryla_modal.gateway.app import create_app
    from ryla_modal.gateway.executors import LocalExecutor
    from ryla_modal.gateway.object_info import ComfyObjectInfo
    from ryla_modal.gateway.store import SQLiteJobStore

    store = SQLiteJobStore(data_dir)
    process: ComfyProcess | None = None
    executor: LocalExecutor | None = None
    sock: socket.socket | None = None
    try:
        sock = _bind(host, port)
        if comfyui_url is not None:
            base_url = comfyui_url.rstrip("/")
            _probe(base_url)
        else:
            log_path = data_dir / "comfyui.log"
            if comfyui_dir is not None:
                process = ComfyProcess.for_checkout(
                    comfyui_dir,
                    comfyui_python,
                    port=comfyui_port,
                    extra_args=comfyui_args,
                    log_path=log_path,
                )
            else:
                assert comfyui_command is not None
                process = ComfyProcess(
                    shlex.split(comfyui_command),
                    port=comfyui_port,
                    extra_args=comfyui_args,
                    log_path=log_path,
                )
            log.info("starting ComfyUI (log: %s)", process.log_path)
            process.start(ready_timeout=ready_timeout)
            base_url = process.base_url
        if process is not None:
            log.info("ComfyUI ready at %s (pid %s)", base_url, process.pid)
        else:
            log.info("using ComfyUI at %s", base_url)

        # Half-collected outputs of a crashed run: nobody will pick them up (we hold the lock).
        shutil.rmtree(data_dir / "work", ignore_errors=True)
        executor = LocalExecutor(
            store, base_url, process=process, workers=workers, work_dir=data_dir / "work"
        )
        executor.recover()
        app = create_app(executor, store, token=token, object_info=ComfyObjectInfo(base_url))
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=int(defaults.SERVE_GRACEFUL_HTTP_S),
        )
        bound_host, bound_port = sock.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        print(
            f"ryla serve: listening on http://{shown}:{bound_port} (ComfyUI at {base_url},"
            f" data in {data_dir}){' with a bearer token' if token else ''}",
            file=sys.stderr,
            flush=True,
        )
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        log.info("stopping")
        if executor is not None:
            executor.close()
        if process is not None:
            process.stop()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        store.close()
        log.info("stopped")


def _probe(base_url: str) -> None:
    import httpx

    url = f"{base_url}/system_stats"
    try:
        with httpx.Client(trust_env=False) as client:
            resp = client.get(url, timeout=httpx.Timeout(defaults.COMFY_CONNECT_TIMEOUT_S))
    except httpx.HTTPError as exc:
        raise ComfyUIUnavailable(
            f"no ComfyUI answers at {base_url}: {exc}",
            hint="start ComfyUI first, or let ryla launch it with --comfyui-dir",
        ) from exc
    if resp.status_code != 200:
        raise ComfyUIUnavailable(f"{url} answered HTTP {resp.status_code}; is this ComfyUI?")


__all__ = ["is_loopback", "serve_cmd"]
