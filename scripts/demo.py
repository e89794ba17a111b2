"""The main job, end to end on one machine with no GPU and no Modal account.

1. start a ComfyUI: the real one when RYLA_DEMO_COMFYUI_DIR (+ RYLA_DEMO_COMFYUI_PYTHON) names a
   checkout, else the protocol-faithful stand-in from tests/fakes;
2. `ryla serve` in front of it (the same job API the Modal deployment serves), its log lines
   going to a file so they never interleave with the job's progress;
3. `ryla generate examples/workflows/demo_model_free.json` through it, saving into ./outputs.

Every step has a deadline and everything started here is stopped on the way out.  The work
folder is .ryla/demo (RYLA_DEMO_WORK names another).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fakes.comfyui_command import fake_comfyui_command  # noqa: E402

from ryla_modal.comfy.process import ComfyProcess, free_port  # noqa: E402

WORKFLOW = REPO / "examples" / "workflows" / "demo_model_free.json"
READY_TIMEOUT_S = 180.0


def start_comfyui(work: Path) -> ComfyProcess:
    folders = ["--output-directory", str(work / "comfy-output")]
    folders += ["--input-directory", str(work / "comfy-input")]
    checkout = os.environ.get("RYLA_DEMO_COMFYUI_DIR")
    if checkout:
        python = os.environ.get("RYLA_DEMO_COMFYUI_PYTHON", sys.executable)
        proc = ComfyProcess.for_checkout(
            Path(checkout), python, extra_args=["--cpu", *folders], log_path=work / "comfyui.log"
        )
    else:
        proc = ComfyProcess(
            fake_comfyui_command(), extra_args=folders, log_path=work / "comfyui.log"
        )
    print(f"demo: starting ComfyUI ({'real' if checkout else 'stand-in'})", flush=True)
    proc.start(ready_timeout=READY_TIMEOUT_S)
    return proc


def wait_healthy(url: str, token: str, serve: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if serve.poll() is not None:
            tail = log.read_text(errors="replace").splitlines()[-20:]
            raise SystemExit(
                f"demo: ryla serve exited with {serve.returncode}; its log ends:\n"
                + "\n".join(tail)
            )
        try:
            resp = httpx.get(
                f"{url}/health", headers={"authorization": f"Bearer {token}"}, timeout=2
            )
            if resp.status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit("demo: ryla serve did not answer /health within 30 s")


def main() -> int:
    work = Path(os.environ.get("RYLA_DEMO_WORK") or REPO / ".ryla" / "demo")
    work.mkdir(parents=True, exist_ok=True)
    serve_log = work / "serve.log"
    token = secrets.token_hex(16)
    env = {**os.environ, "RYLA_TOKEN": token, "RYLA_CONFIG_DIR": str(work / "config")}
    comfy = start_comfyui(work)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_file = serve_log.open("ab")
    serve = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ryla_modal.cli",
            "serve",
            "--comfyui-url",
            comfy.base_url,
            "--port",
            str(port),
            "--data-dir",
            str(work / "serve"),
        ],
        env=env,
        stdout=log_file,
        stderr=log_file,
        start_new_session=True,
    )
    log_file.close()  # the child holds its own copy
    try:
        wait_healthy(url, token, serve, serve_log)
        print(
            f"demo: ryla serve is up at {url} (log: {serve_log}); running ryla generate", flush=True
        )
        gen = subprocess.run(
            [
                sys.executable,
                "-m",
                "ryla_modal.cli",
                "generate",
                str(WORKFLOW),
                "--endpoint",
                url,
                "--seed",
                "random",
                "--out",
                "outputs",
            ],
            env=env,
            timeout=300,
        )
        return gen.returncode
    finally:
        serve.terminate()
        try:
            serve.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, 9)
            serve.wait(timeout=5)
        comfy.stop()


if __name__ == "__main__":
    sys.exit(main())
