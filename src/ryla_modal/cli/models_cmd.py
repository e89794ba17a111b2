"""`ryla models add` / `ryla models list`: model files on the deployment's models volume."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from ryla_modal import defaults
from ryla_modal.cli import _options as opt
from ryla_modal.cli._output import deadline_kwargs, examples, note, print_json
from ryla_modal.cli._typer import print_help_when_bare

app = typer.Typer(
    name="models",
    add_completion=False,
    invoke_without_command=True,
    help="Model files on the deployment's models volume: add one, list them.",
)


@app.callback()
def _models(ctx: typer.Context) -> None:
    print_help_when_bare(ctx)


@app.command(
    "add",
    help=(
        "Download one file into the models volume through the deployed app's download_models"
        " function (it runs on Modal, next to the volume). SOURCE is an https URL or"
        " hf://OWNER/REPO/PATH[@REVISION]; the HF_TOKEN of the app's Secret is sent to Hugging"
        " Face hosts only. The file appears whole or not at all; an interrupted transfer resumes"
        " on the next try. A file of the same name is an error unless its sha256 is --sha256."
    ),
    epilog=examples(
        "ryla models add hf://Comfy-Org/stable-diffusion-v1-5-archive/"
        "v1-5-pruned-emaonly-fp16.safetensors --to checkpoints",
        "ryla models add https://example.com/style.safetensors --to loras --sha256 3f0c...",
    ),
)
def add(
    source: Annotated[str, typer.Argument(help="https://… or hf://OWNER/REPO/FILE[@REV]")],
    to: Annotated[
        str,
        typer.Option(
            "--to", help="Models folder: checkpoints, loras, vae, …", rich_help_panel="File"
        ),
    ],
    sha256: Annotated[
        str | None,
        typer.Option("--sha256", help="Expected sha256 (64 hex).", rich_help_panel="File"),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option("--name", help="File name (default: the URL's).", rich_help_panel="File"),
    ] = None,
    app_name: Annotated[
        str | None,
        typer.Option(
            "--app",
            help="Deployed app (default: ryla.toml / RYLA_APP).",
            rich_help_panel="Deployment",
        ),
    ] = None,
    environment: opt.Environment = None,
    timeout: Annotated[float, opt.modal_timeout(float(defaults.MODAL_DOWNLOAD_TIMEOUT_S))] = float(
        defaults.MODAL_DOWNLOAD_TIMEOUT_S
    ),
    as_json: opt.Json = False,
) -> None:
    started = time.monotonic()
    from ryla_modal.cloud.models import parse_source, plan
    from ryla_modal.cloud.settings import AppSettings
    from ryla_modal.deploy.modal_cli import ModalCLI

    item: dict[str, Any] = {"folder": to, **parse_source(source)}
    if sha256:
        item["sha256"] = sha256
    if name:
        item["name"] = name
    (checked,) = plan([item])  # bad URL, folder, name or checksum: refused before modal runs
    target = app_name or AppSettings.load().app_name
    note(f"downloading into {checked['folder']}/{checked['name']} on {target}'s models volume")
    left = max(0.5, timeout - (time.monotonic() - started))
    (done,) = ModalCLI().call(
        "download",
        {"app": target, "items": [checked], "on_clash": "error", "env": environment},
        timeout=left,
    )
    if as_json:
        print_json(done)
        return
    state = "already there" if done.get("skipped") else "added"
    print(f"{done['folder']}/{done['name']}  {done.get('size', 0):,} bytes  {state}")


@app.command(
    "list",
    help="List the model files the deployment sees, by folder (GET /models on the endpoint).",
    epilog=examples(
        "ryla models list",
        "ryla models list --json",
    ),
)
def list_(
    endpoint: opt.Endpoint = None,
    timeout: opt.ApiTimeout = None,
    as_json: opt.Json = False,
) -> None:
    from ryla_modal.client import RylaClient

    with RylaClient(endpoint) as client:
        folders = client.models(**deadline_kwargs(timeout))
    if as_json:
        print_json({"folders": folders})
        return
    if not any(folders.values()):
        note("no model files on the volume: add one with `ryla models add`")
    for folder, files in sorted(folders.items()):
        for file in files:
            print(f"{folder}/{file}")
