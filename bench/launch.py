"""How late does our launcher notice that ComfyUI is ready?

Starts ComfyUI (the stand-in, or the real one when RYLA_TEST_COMFYUI_DIR and
RYLA_TEST_COMFYUI_PYTHON are set) N times through ``ComfyProcess.start()``.  An independent thread
polls GET /system_stats every 5 ms and records when it first gets a 200; the lag is the time from
that answer to the moment ``start()`` returns.  Goal: median <= 50 ms.

    python bench/launch.py [--runs 15] [--startup-delay 0.3] [--stub]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from ryla_modal.comfy.process import ComfyProcess  # noqa: E402

REAL_DIR_ENV = "RYLA_TEST_COMFYUI_DIR"
REAL_PYTHON_ENV = "RYLA_TEST_COMFYUI_PYTHON"
GOAL_MS = 50.0
POLL_S = 0.005


class FirstAnswer(threading.Thread):
    """Polls /system_stats every 5 ms; ``at`` is when the first 200 arrived (monotonic)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.at: float | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(trust_env=False) as client:
            while not self.stop.is_set():
                t = time.monotonic()
                try:
                    if client.get(self.url, timeout=httpx.Timeout(0.5)).status_code == 200:
                        self.at = time.monotonic()
                        return
                except httpx.HTTPError:
                    pass
                self.stop.wait(max(0.0, t + POLL_S - time.monotonic()))


def make_process(root: Path, use_real: bool, startup_delay: float) -> ComfyProcess:
    dirs = ["--output-directory", str(root / "out"), "--input-directory", str(root / "in")]
    dirs += ["--temp-directory", str(root / "tmp")]
    if use_real:
        return ComfyProcess.for_checkout(
            Path(os.environ[REAL_DIR_ENV]),
            os.environ[REAL_PYTHON_ENV],
            extra_args=["--cpu", "--disable-auto-launch", *dirs],
            log_path=root / "comfyui.log",
        )
    from tests.fakes.comfyui_command import fake_comfyui_command

    return ComfyProcess(
        fake_comfyui_command(),
        extra_args=[*dirs, "--startup-delay", str(startup_delay)],
        log_path=root / "comfyui.log",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--startup-delay", type=float, default=0.3, help="stand-in only")
    parser.add_argument("--stub", action="store_true", help="use the stand-in even if real is set")
    parser.add_argument("--ready-timeout", type=float, default=180.0)
    args = parser.parse_args()

    configured = bool(os.environ.get(REAL_DIR_ENV) and os.environ.get(REAL_PYTHON_ENV))
    use_real = configured and not args.stub
    kind = "real ComfyUI" if use_real else f"stand-in (--startup-delay {args.startup_delay})"
    print(f"launcher readiness lag, {args.runs} runs, {kind}")
    print("lag = start() returned - first 200 seen by the 5 ms poller (< 0: ours saw it first)")
    print(f"{'run':>4} {'start→ready s':>14} {'lag ms':>8}")
    lags: list[float] = []
    with tempfile.TemporaryDirectory(prefix="ryla-bench-launch-") as tmp:
        for i in range(args.runs):
            root = Path(tmp) / f"run{i}"
            root.mkdir()
            proc = make_process(root, use_real, args.startup_delay)
            poller = FirstAnswer(f"{proc.base_url}/system_stats")
            poller.start()
            t0 = time.monotonic()
            try:
                proc.start(ready_timeout=args.ready_timeout)
                ready = time.monotonic()
                poller.join(timeout=2.0)
            finally:
                poller.stop.set()
                proc.stop(grace=5.0)
            if poller.at is None:
                print(f"{i:>4} the 5 ms poller never saw an answer; run skipped")
                continue
            lag_ms = (ready - poller.at) * 1000
            lags.append(lag_ms)
            print(f"{i:>4} {ready - t0:>14.3f} {lag_ms:>8.1f}")
    if not lags:
        print("no valid runs")
        return 1
    med = statistics.median(lags)
    print(f"median lag {med:.1f} ms, min {min(lags):.1f} ms, max {max(lags):.1f} ms")
    ok = med <= GOAL_MS
    print(f"goal: median <= {GOAL_MS:.0f} ms: {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
