"""`ryla serve`: the job API on this machine, in front of a local ComfyUI.

Parses options, checks their combinations, and calls ``gateway.local.serve_local`` (which
composes the store, ComfyUI, the executor and uvicorn); Ctrl-C and SIGTERM both leave through
its cleanup.  The server code is imported inside the command so ``ryla --help`` stays fast.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer

from ryla_modal import defaults
from ryla_modal.cli import _options as opt
from ryla_modal.cli._output import doc, examples
from ryla_modal.config import serve_token
from ryla_modal.errors import EXIT_USAGE, ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from ryla_modal.gateway.local import Listening

EXIT_TERMINATED = 143  # 128 + SIGTERM

SERVE_HELP = """Serve the job API locally, in front of a local ComfyUI.

Develop and test a workflow before paying for a GPU: `ryla generate --endpoint URL` and the
Python client talk to it exactly as to the Modal deployment.  Give --comfyui-dir (a ComfyUI
checkout that ryla launches and stops) or --comfyui-url (a ComfyUI that already runs).

Job records and output files live in --data-dir and survive a restart.  On start, jobs the last
run left unfinished are re-adopted from ComfyUI (its prompt ids are our job ids): running and
queued ones are followed to the end, finished ones collected; only jobs ComfyUI never saw are
marked failed.  A ComfyUI that ryla launched is restarted with backoff if it dies (`ryla health`
shows it), and never outlives `ryla serve`.  Binding an address other than
loopback needs a token: set RYLA_TOKEN (clients send it as `Authorization: Bearer ...`).

Jobs may ask for a webhook when RYLA_WEBHOOK_SECRET holds a signing secret (whsec_...).
Webhooks go to public addresses only, unless --allow-private-webhooks.
"""

SERVE_EXAMPLES = examples(
    "ryla serve --comfyui-dir ~/ComfyUI --comfyui-arg=--cpu",
    "ryla serve --comfyui-url http://127.0.0.1:8188 --port 8000",
    "RYLA_TOKEN=$(openssl rand -hex 16) ryla serve --comfyui-dir ~/ComfyUI --host 0.0.0.0",
)

log = logging.getLogger("ryla_modal.serve")


class _Terminated(BaseException):
    """SIGTERM arrived: leave through the same cleanup as Ctrl-C."""


_COMFYUI = "ComfyUI"
_SERVER = "Server"

app = typer.Typer(rich_markup_mode="rich", add_completion=False)


@app.command("serve", help=doc(SERVE_HELP), epilog=SERVE_EXAMPLES)
def serve_cmd(
    comfyui_dir: Annotated[
        Path | None,
        typer.Option(
            "--comfyui-dir",
            metavar="DIR",
            help="ComfyUI checkout to launch (python main.py ...).",
            rich_help_panel=_COMFYUI,
        ),
    ] = None,
    comfyui_url: Annotated[
        str | None,
        typer.Option(
            "--comfyui-url",
            metavar="URL",
            help="Use a ComfyUI that already runs at this URL.",
            rich_help_panel=_COMFYUI,
        ),
    ] = None,
    comfyui_python: Annotated[
        str | None,
        typer.Option(
            "--comfyui-python",
            metavar="PYTHON",
            help="Python of that checkout.",
            show_default="the one running ryla",
            rich_help_panel=_COMFYUI,
        ),
    ] = None,
    comfyui_arg: Annotated[
        list[str] | None,
        typer.Option(
            "--comfyui-arg",
            metavar="ARG",
            help="Extra argument for ComfyUI (repeat; --comfyui-arg=--cpu).",
            rich_help_panel=_COMFYUI,
        ),
    ] = None,
    comfyui_port: Annotated[
        int | None,
        typer.Option(
            "--comfyui-port",
            metavar="PORT",
            min=1,
            max=65535,
            help="Port for the launched ComfyUI.",
            show_default="a free one",
            rich_help_panel=_COMFYUI,
        ),
    ] = None,
    comfyui_command: Annotated[
        str | None,
        typer.Option(
            "--comfyui-command", hidden=True, help="Launch this command as ComfyUI (tests)."
        ),
    ] = None,
    ready_timeout: Annotated[
        float,
        typer.Option(
            "--ready-timeout",
            metavar="S",
            min=1,
            help="Seconds for ComfyUI to start.",
            rich_help_panel=opt.DEADLINES,
        ),
    ] = defaults.COMFY_READY_TIMEOUT_S,
    host: Annotated[
        str,
        typer.Option(
            "--host", metavar="ADDRESS", help="Address to listen on.", rich_help_panel=_SERVER
        ),
    ] = defaults.SERVE_HOST,
    port: Annotated[
        int,
        typer.Option(
            "--port",
            metavar="PORT",
            min=0,
            max=65535,
            help="Port (0: any free one).",
            rich_help_panel=_SERVER,
        ),
    ] = defaults.SERVE_PORT,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            metavar="TOKEN",
            envvar="RYLA_TOKEN",
            show_envvar=True,
            help="Bearer token clients must send; prefer the RYLA_TOKEN variable to this flag.",
            rich_help_panel=_SERVER,
        ),
    ] = None,
    data_dir: Annotated[
        Path,
        typer.Option(
            "--data-dir",
            metavar="DIR",
            help="Job records and output files.",
            rich_help_panel=_SERVER,
        ),
    ] = Path(defaults.SERVE_DATA_DIR),
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            metavar="N",
            min=1,
            max=64,
            help="Jobs handed to ComfyUI at once.",
            rich_help_panel=_SERVER,
        ),
    ] = defaults.SERVE_WORKERS,
    allow_private_urls: Annotated[
        bool,
        typer.Option(
            "--allow-private-urls",
            help="Let inputs by URL name private and loopback addresses (local use, tests).",
            rich_help_panel=_SERVER,
        ),
    ] = False,
    allow_private_webhooks: Annotated[
        bool,
        typer.Option(
            "--allow-private-webhooks",
            help="Let webhooks reach private, loopback and link-local addresses (a local"
            " receiver).",
            rich_help_panel=_SERVER,
        ),
    ] = False,
) -> int:
    comfyui_arg = comfyui_arg or []
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
    if comfyui_dir is not None and not comfyui_dir.is_dir():
        what = "is not a folder" if comfyui_dir.exists() else "does not exist"
        print(
            f"error: --comfyui-dir {str(comfyui_dir)!r}: the folder {what}"
            "\nhint: pass the folder of a ComfyUI checkout (the one with main.py)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    from ryla_modal.gateway.local import ComfySource, serve_local

    try:
        token = serve_token(token, host)
    except ConfigError as exc:
        print(
            f"error: {exc.message}" + (f"\nhint: {exc.hint}" if exc.hint else ""), file=sys.stderr
        )
        return EXIT_USAGE
    _setup_logging()
    if token is not None and (os.environ.get("RYLA_TOKEN") or "").strip() != token:
        log.warning("a token on the command line is visible to other users (ps); prefer RYLA_TOKEN")

    # Ctrl-C and SIGTERM both leave through the cleanup below, even when this process was
    # started with SIGINT ignored (a background job of a non-interactive shell).
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        serve_local(
            ComfySource(
                dir=comfyui_dir,
                python=comfyui_python or sys.executable,
                command=shlex.split(comfyui_command) if comfyui_command is not None else None,
                args=list(comfyui_arg),
                port=comfyui_port,
                url=comfyui_url,
            ),
            data_dir=data_dir,
            host=host,
            port=port,
            token=token,
            workers=workers,
            ready_timeout=ready_timeout,
            allow_private_urls=allow_private_urls,
            on_listening=_say_listening,
            allow_private_webhooks=allow_private_webhooks,
        )
    except _Terminated:
        return EXIT_TERMINATED
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
    return 0


def _say_listening(at: Listening) -> None:
    print(
        f"ryla serve: listening on {at.url} (ComfyUI at {at.comfy_url}, data in {at.data_dir})"
        f"{' with a bearer token' if at.with_token else ''}",
        file=sys.stderr,
        flush=True,
    )


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


__all__ = ["serve_cmd"]
