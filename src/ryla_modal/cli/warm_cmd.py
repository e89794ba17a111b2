"""`ryla warm`: keep GPU containers of the deployed app warm (or stop), and say what it costs."""

from __future__ import annotations

import datetime as _dt
import re
import time
from typing import Annotated, Any

import typer

from ryla_modal import defaults
from ryla_modal.cli import _options as opt
from ryla_modal.cli._output import examples, note, print_json

WORKER_CLASS = "ComfyWorker"
_DURATION_RE = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")

app = typer.Typer(add_completion=False)


def parse_duration(text: str) -> int:
    """``"30m"``, ``"2h"``, ``"1h30m"``, ``"90s"`` or plain seconds -> seconds (> 0)."""
    raw = text.strip().lower()
    if raw.isdigit():
        seconds = int(raw)
    else:
        m = _DURATION_RE.match(raw)
        if not raw or m is None:
            raise typer.BadParameter(f"{text!r} is not a duration like 30m, 2h, 1h30m or 90s")
        h, mi, s = (int(g) if g else 0 for g in m.groups())
        seconds = h * 3600 + mi * 60 + s
    if seconds <= 0:
        raise typer.BadParameter("the duration must be more than 0")
    return seconds


@app.command(
    "warm",
    help=(
        "Keep GPU containers of the deployed app running (billed while idle) so jobs skip the"
        " cold start, or stop keeping them. Changes the deployed ComfyWorker's autoscaler at"
        " once, without a redeploy; the next `ryla deploy` resets it to ryla.toml's"
        " min_containers/buffer_containers. Prints the hourly GPU cost of what it keeps warm."
        " --for schedules nothing: Modal has no expiry for these settings, so it prints the"
        " time and the command (`ryla warm --off`) that ends the keep-warm; run it then, e.g."
        " from cron or `sleep 1800 && ryla warm --off`."
    ),
    epilog=examples(
        "ryla warm --min 1",
        "ryla warm --min 1 --for 30m",
        "ryla warm --off",
    ),
)
def warm(
    min_containers: Annotated[
        int | None,
        typer.Option(
            "--min", min=0, max=100, help="Containers to keep running.", rich_help_panel="Warm"
        ),
    ] = None,
    buffer: Annotated[
        int | None,
        typer.Option(
            "--buffer",
            min=0,
            max=100,
            help="Extra idle containers while busy.",
            rich_help_panel="Warm",
        ),
    ] = None,
    off: Annotated[
        bool,
        typer.Option("--off", help="Keep nothing warm (min and buffer 0).", rich_help_panel="Warm"),
    ] = False,
    for_: Annotated[
        str | None,
        typer.Option(
            "--for",
            metavar="DURATION",
            help="How long you mean to keep it warm (30m, 2h): prints when to turn it off.",
            rich_help_panel="Warm",
        ),
    ] = None,
    app_name: Annotated[
        str | None,
        typer.Option(
            "--app",
            help="Deployed app (default: ryla.toml / RYLA_APP).",
            rich_help_panel="Deployment",
        ),
    ] = None,
    gpu: Annotated[
        str | None,
        typer.Option(
            "--gpu",
            help="GPU type for the cost (default: ryla.toml / RYLA_GPU).",
            rich_help_panel="Deployment",
        ),
    ] = None,
    environment: opt.Environment = None,
    timeout: Annotated[
        float, opt.modal_timeout(defaults.MODAL_COMMAND_TIMEOUT_S)
    ] = defaults.MODAL_COMMAND_TIMEOUT_S,
    as_json: opt.Json = False,
) -> None:
    started = time.monotonic()
    if off == (min_containers is not None or buffer is not None):
        raise typer.BadParameter("give --min N (and/or --buffer N), or --off")
    if off and for_:
        raise typer.BadParameter("--for goes with --min, not --off")
    seconds = parse_duration(for_) if for_ else None

    from ryla_modal.cloud.prices import hourly_cost
    from ryla_modal.cloud.settings import AppSettings, parse_gpu
    from ryla_modal.deploy.modal_cli import ModalCLI
    from ryla_modal.errors import ConfigError

    settings = AppSettings.load()
    target = app_name or settings.app_name
    try:
        gpu_name = parse_gpu(gpu) if gpu else settings.gpu
    except ValueError as exc:
        raise ConfigError(f"--gpu: {exc}") from None
    payload: dict[str, Any] = {"app": target, "cls": WORKER_CLASS, "env": environment}
    if off:
        payload.update(min_containers=0, buffer_containers=0)
    else:
        payload.update(min_containers=min_containers, buffer_containers=buffer)
    left = max(0.5, timeout - (time.monotonic() - started))
    current = ModalCLI().call("autoscale", payload, timeout=left)
    kept = int(current.get("min_containers") or 0) if isinstance(current, dict) else 0
    cost = hourly_cost(gpu_name, kept)
    off_at = None
    if seconds is not None:
        off_at = (_dt.datetime.now().astimezone() + _dt.timedelta(seconds=seconds)).replace(
            microsecond=0
        )
    off_command = f"ryla warm --off --app {target}" + (
        f" --env {environment}" if environment else ""
    )
    if as_json:
        print_json(
            {
                "app": target,
                "autoscaler": current,
                "gpu": gpu_name,
                "containers_kept_warm": kept,
                "usd_per_hour": cost.usd_per_hour,
                "price_source": cost.source,
                "price_as_of": cost.as_of,
                "turn_off_at": off_at.isoformat() if off_at else None,
                "turn_off_command": off_command if kept else None,
            }
        )
        return
    print(f"{target}: {cost.describe()}")
    if off_at is not None:
        note(
            f"nothing turns this off by itself: at {off_at:%H:%M} run `{off_command}`"
            f" (e.g. `sleep {seconds} && {off_command}`)"
        )
    elif kept:
        note(f"kept warm until `{off_command}` or the next `ryla deploy`")
