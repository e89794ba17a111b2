"""The worker's ComfyUI start on a real GPU, with and without the memory-snapshot start path.

Run where there is an NVIDIA GPU and a ComfyUI checkout (with its requirements installed):

    python bench/gpu_snapshot_start.py --comfyui ~/ComfyUI [--python ~/ComfyUI/.venv/bin/python]
        [--runs 3]

(``RYLA_TEST_COMFYUI_DIR`` / ``RYLA_TEST_COMFYUI_PYTHON`` work too.)  For each run it starts
the worker's ComfyUI (``ModalWorker``, the code ``ComfyWorker`` runs) two ways and prints:

- cold: ``snapshot = "off"``: ComfyUI started on the GPU, what every container without
  snapshots pays;
- snapshot path: ``snapshot = "cpu"``: the start a snapshot saves (ComfyUI up with its GPU
  deferred by the ``ryla_snapshot`` node; paid once per snapshot), then what a restored
  container runs after Modal's restore (``POST /ryla/gpu``, the move onto the GPU); and
  ComfyUI's own ``/system_stats`` device afterwards (it must be ``cuda``), and one tiny
  model-free prompt run on it.

Modal's restore itself cannot happen outside Modal: "restored start" is what our code adds on
top of it.  Modal reports a restored ComfyUI answering in under 3 s against 10-15 s cold.
The ``ryla_snapshot`` node is written into the checkout's ``custom_nodes/`` for the run and
removed afterwards.  It exits at once, saying why, without a GPU or a checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src")]

import httpx  # noqa: E402

from ryla_modal.cloud.snapshot_node import DEFER_GPU_ENV, NODE_DIRECTORY, node_files  # noqa: E402
from ryla_modal.cloud.store import DictJobStore  # noqa: E402
from ryla_modal.cloud.worker import ModalWorker  # noqa: E402
from ryla_modal.comfy.process import ComfyProcess  # noqa: E402
from ryla_modal.gateway.schemas import JobRecord  # noqa: E402

READY_TIMEOUT_S = 600.0
WORKFLOW = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0x336699},
    },
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "bench"}},
}


class _Dict:
    """The ``modal.Dict`` calls the worker's store makes, in memory."""

    def __init__(self) -> None:
        self._data: dict[Any, Any] = {}

    def get(self, key: Any, default: Any | None = None) -> Any:
        return self._data.get(key, default)

    def put(self, key: Any, value: Any, *, skip_if_exists: bool = False) -> bool:
        if skip_if_exists and key in self._data:
            return False
        self._data[key] = value
        return True

    def __setitem__(self, key: Any, value: Any) -> None:
        self._data[key] = value

    def pop(self, key: Any, default: Any = None) -> Any:
        return self._data.pop(key, default)

    def items(self) -> list[tuple[Any, Any]]:
        return list(self._data.items())


def fail(message: str) -> None:
    print(f"gpu_snapshot_start: {message}", file=sys.stderr)
    sys.exit(2)


def check_machine(comfy: Path, python: str) -> str:
    """The GPU's name; exits with the reason when there is no GPU or no usable checkout."""
    if not (comfy / "main.py").is_file():
        fail(f"{comfy} is not a ComfyUI checkout (no main.py); pass --comfyui DIR")
    if shutil.which("nvidia-smi") is None:
        fail("no NVIDIA GPU here (nvidia-smi not found); run this on a GPU machine")
    try:
        listed = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=True
        ).stdout.strip()
    except (subprocess.SubprocessError, OSError) as exc:
        fail(f"nvidia-smi failed ({exc}); no usable NVIDIA GPU")
    if not listed:
        fail("nvidia-smi lists no GPU")
    probe = "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)"
    try:
        code = subprocess.run([python, "-c", probe], timeout=120).returncode
    except (subprocess.SubprocessError, OSError) as exc:
        fail(f"{python} cannot run ({exc}); pass --python with ComfyUI's interpreter")
    if code != 0:
        fail(f"torch in {python} sees no CUDA device (exit {code})")
    return listed.splitlines()[0]


def new_worker(comfy: Path, python: str, mode: str, env: dict[str, str], tmp: Path) -> ModalWorker:
    out = tmp / f"out-{uuid.uuid4().hex[:8]}"
    process = ComfyProcess.for_checkout(
        comfy,
        python,
        extra_args=["--disable-auto-launch", "--output-directory", str(out)],
        env={DEFER_GPU_ENV: "1"} if mode == "cpu" else None,
    )
    store = DictJobStore(_Dict(), outputs_dir=tmp / "volume", role="worker")
    return ModalWorker(
        store,
        process,
        ready_timeout_s=READY_TIMEOUT_S,
        comfy_output_dir=out,
        snapshot=mode,
        environ=env,
    )


def device(worker: ModalWorker) -> str:
    stats = httpx.get(worker.process.base_url + "/system_stats", timeout=30, trust_env=False)
    devices = stats.json().get("devices") or [{}]
    return str(devices[0].get("type"))


def run_prompt(worker: ModalWorker) -> str:
    now = time.time()
    job = JobRecord(
        job_id=str(uuid.uuid4()),
        status="queued",
        created_at=now,
        updated_at=now,
        workflow_sha256="0" * 64,
    )
    worker.store.create_if_absent(job)
    result = worker.run({"job_id": job.job_id, "workflow": WORKFLOW, "timeout_s": 120})
    return str(result["status"])


def one_run(comfy: Path, python: str, tmp: Path) -> dict[str, Any]:
    env = {"MODAL_TASK_ID": "ta-bench-1"}
    cold = new_worker(comfy, python, "off", env, tmp)
    try:
        t0 = time.monotonic()
        cold.start_before_snapshot()
        cold.after_restore()
        cold_s = time.monotonic() - t0
        cold_device = device(cold)
    finally:
        cold.stop()

    snap = new_worker(comfy, python, "cpu", env, tmp)
    try:
        t0 = time.monotonic()
        snap.start_before_snapshot()  # what the snapshot saves
        deferred_device = device(snap)
        t1 = time.monotonic()
        env["MODAL_TASK_ID"] = "ta-bench-restored"  # as Modal does on a restore
        snap.after_restore()
        t2 = time.monotonic()
        return {
            "cold_s": cold_s,
            "cold_device": cold_device,
            "before_snapshot_s": t1 - t0,
            "deferred_device": deferred_device,
            "restored_start_s": t2 - t1,
            "restored": snap.restored,
            "after_device": device(snap),
            "prompt": run_prompt(snap),
        }
    finally:
        snap.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", default=os.environ.get("RYLA_TEST_COMFYUI_DIR"))
    parser.add_argument(
        "--python", default=os.environ.get("RYLA_TEST_COMFYUI_PYTHON") or sys.executable
    )
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if not args.comfyui:
        fail("no ComfyUI checkout given: pass --comfyui DIR or set RYLA_TEST_COMFYUI_DIR")
    comfy = Path(args.comfyui).expanduser().resolve()
    gpu = check_machine(comfy, args.python)
    node = comfy / "custom_nodes" / NODE_DIRECTORY
    if node.exists():
        fail(f"{node} exists already; remove it first (this script writes and removes it)")
    node.mkdir(parents=True)
    runs: list[dict[str, Any]] = []
    try:
        for name, text in node_files().items():
            (node / name).write_text(text, encoding="utf-8")
        with tempfile.TemporaryDirectory(prefix="ryla-bench-snapshot-") as tmp:
            for _ in range(max(1, args.runs)):
                runs.append(one_run(comfy, args.python, Path(tmp)))
    finally:
        shutil.rmtree(node, ignore_errors=True)

    def median(key: str) -> float:
        return float(statistics.median(float(r[key]) for r in runs))

    print(f"{gpu}; ComfyUI at {comfy}; {len(runs)} run(s), medians:")
    print(f"  cold start (snapshot off)            {median('cold_s'):6.2f} s")
    print(f"  start saved by the snapshot (cpu)    {median('before_snapshot_s'):6.2f} s")
    print(f"  restored start: our part after it    {median('restored_start_s'):6.2f} s")
    print(f"  cold / restored: {median('cold_s') / max(median('restored_start_s'), 1e-6):.1f}x")
    print("  runs: " + json.dumps(runs))
    bad = [
        r
        for r in runs
        if r["deferred_device"] != "cpu"
        or r["after_device"] != "cuda"
        or r["cold_device"] != "cuda"
        or r["prompt"] != "succeeded"
        or r["restored"] is not True
    ]
    if bad:
        fail(f"the snapshot path did not end on the GPU with a working prompt: {bad}")


if __name__ == "__main__":
    main()
