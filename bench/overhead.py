"""What ryla adds on top of ComfyUI, per job, against peers measured in the same run.

Against one ComfyUI (the stand-in by default; a real one at RYLA_BENCH_COMFYUI_URL), a model-free
workflow, N runs of each, interleaved so drift hits all of them alike:

  (a) direct    — a minimal client of ComfyUI's own API: WS, POST /prompt, wait, history, /view
  (b) ryla      — `ryla generate` (a subprocess, as a user runs it) through `ryla serve`
  (b') ryla-lib — in-process `RylaClient.generate` through the same `ryla serve`
  (c) comfy-cli — `comfy run --wait` (comfy-cli, a typer app too), when a `comfy` executable is
                  found (RYLA_BENCH_COMFY_CLI, else PATH); it does not download the outputs.
                  Install it in a venv of its own (its pins clash with ours):
                  python -m venv /tmp/comfycli && /tmp/comfycli/bin/pip install comfy-cli,
                  then RYLA_BENCH_COMFY_CLI=/tmp/comfycli/bin/comfy

Prints medians and the ratios b/a and b/c, and b'-a in milliseconds.
Goals: b/c <= 0.6; in-process RylaClient.generate over the direct client <= 15 ms (median).

    python bench/overhead.py [--runs 30]
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._stack import served_comfyui  # noqa: E402

import ryla_modal  # noqa: E402
from ryla_modal.client import RylaClient  # noqa: E402


def workflow(prefix: str) -> dict[str, Any]:
    color = uuid.uuid4().int % 0xFFFFFF  # a new colour each run: ComfyUI's cache never helps
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": color},
        },
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


def direct_run(comfy_url: str, out: Path) -> None:
    """The least a script can do: socket first, submit, wait for the end, fetch every file."""
    from websockets.sync.client import connect

    client_id = uuid.uuid4().hex
    ws_url = comfy_url.replace("http://", "ws://") + f"/ws?clientId={client_id}"
    with connect(ws_url, open_timeout=10) as ws, httpx.Client(timeout=30) as http:
        resp = http.post(
            f"{comfy_url}/prompt", json={"prompt": workflow("direct"), "client_id": client_id}
        )
        resp.raise_for_status()
        prompt_id = resp.json()["prompt_id"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            msg = ws.recv(timeout=30)
            if isinstance(msg, bytes):
                continue
            data = json.loads(msg)
            if (
                data["type"] == "executing"
                and data["data"].get("node") is None
                and data["data"].get("prompt_id") == prompt_id
            ):
                break
        history = http.get(f"{comfy_url}/history/{prompt_id}").json()[prompt_id]
        for node_output in history["outputs"].values():
            for item in node_output.get("images", []):
                data_bytes = http.get(f"{comfy_url}/view", params=item).content
                (out / item["filename"]).write_bytes(data_bytes)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_quietly(argv: list[str], env: dict[str, str] | None) -> None:
    subprocess.run(argv, env=env, check=True, capture_output=True, timeout=120)


def find_comfy_cli() -> str | None:
    return os.environ.get("RYLA_BENCH_COMFY_CLI") or shutil.which("comfy")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    # A pip install compiles ryla's bytecode; an editable checkout under PYTHONDONTWRITEBYTECODE
    # (CI images set it) would recompile every module on every run. Time what users run.
    compileall.compile_dir(Path(ryla_modal.__file__).parent, quiet=1)
    work = Path(tempfile.mkdtemp(prefix="ryla-bench-overhead-"))
    comfy_cli = find_comfy_cli()
    results: dict[str, list[float]] = {"direct": [], "ryla": [], "ryla-lib": []}
    if comfy_cli:
        results["comfy-cli"] = []
    try:
        with (
            served_comfyui(work) as stack,
            RylaClient(stack.ryla_url, token=stack.token) as client,
        ):
            comfy_url, env = stack.comfy_url, stack.env
            host, cport = comfy_url.removeprefix("http://").split(":")
            ryla_cli = [sys.executable, "-m", "ryla_modal.cli", "generate"]
            ryla_opts = ["--endpoint", stack.ryla_url, "--out", str(work / "out"), "--json"]
            for i in range(args.runs):
                wf_file = work / f"wf{i}.json"
                wf_file.write_text(json.dumps(workflow(f"ryla{i}")))
                lib_wf = workflow(f"lib{i}")
                results["direct"].append(timed(partial(direct_run, comfy_url, work)))
                results["ryla"].append(
                    timed(partial(run_quietly, [*ryla_cli, str(wf_file), *ryla_opts], env))
                )
                results["ryla-lib"].append(
                    timed(partial(client.generate, lib_wf, out_dir=work / "lib-out"))
                )
                if comfy_cli:
                    cli_file = work / f"cc{i}.json"
                    cli_file.write_text(json.dumps(workflow(f"cc{i}")))
                    argv = [comfy_cli, "--skip-prompt", "run", "--workflow", str(cli_file)]
                    argv += ["--wait", "--host", host, "--port", cport]
                    results["comfy-cli"].append(timed(partial(run_quietly, argv, None)))
            real = stack.real_comfyui
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"runs each: {args.runs}, ComfyUI: {'real' if real else 'stand-in'}")
    for name, value in med.items():
        print(f"  {name:10s} median {value * 1000:8.1f} ms")
    print(f"b/a  (ryla generate / direct client): {med['ryla'] / med['direct']:.2f}")
    lib_over = (med["ryla-lib"] - med["direct"]) * 1000
    print(f"b'-a (RylaClient.generate - direct):   {lib_over:+.1f} ms   goal <= 15 ms")
    if "comfy-cli" in med:
        print(
            f"b/c  (ryla generate / comfy run --wait): {med['ryla'] / med['comfy-cli']:.2f}"
            "   goal <= 0.6 (ryla also downloads the outputs; comfy-cli does not)"
        )
    else:
        print("b/c: comfy-cli not found (pip install comfy-cli, or set RYLA_BENCH_COMFY_CLI)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
