"""How late does our launcher notice that ComfyUI is ready?

Starts ComfyUI (the stand-in, or the real one when RYLA_TEST_COMFYUI_DIR and
RYLA_TEST_COMFYUI_PYTHON are set) N times through ``ComfyProcess.start()``.  An independent thread
polls GET /system_stats every 5 ms and records when it first gets a 200; the lag is the time from
that answer to the moment ``start()`` returns.  Goal: median <= 50 ms.

Then the spacing of the readiness probes themselves: a tiny server that answers 503 for a second
records when each probe arrives; the gaps, as a ratio to ``COMFY_READY_POLL_S``, should never be
far below 1 (the launcher must not poll in a tight loop).  This was a test once; timings belong
here, where a loaded machine shows up as a number rather than a failure.

    python bench/launch.py [--runs 15] [--startup-delay 0.3] [--stub] [--probe-runs 3]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from ryla_modal import defaults  # noqa: E402
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


# Answers 503 on every path for --load-s seconds, then 200; GET /probes lists arrival times.
PROBE_SERVER = textwrap.dedent(
    """
    import argparse, http.server, json, time
    p = argparse.ArgumentParser()
    p.add_argument("--listen"); p.add_argument("--port", type=int)
    p.add_argument("--load-s", type=float, default=1.0)
    a = p.parse_args()
    t0 = time.monotonic()
    probes = []
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/probes":
                body, code = json.dumps(probes).encode(), 200
            else:
                probes.append(time.monotonic())
                code, body = (200 if time.monotonic() - t0 >= a.load_s else 503), b"{}"
            self.send_response(code)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    http.server.ThreadingHTTPServer((a.listen, a.port), H).serve_forever()
    """
)


def probe_gaps(root: Path, load_s: float) -> list[float]:
    """Seconds between consecutive readiness probes during one ``load_s`` start."""
    script = root / "probe_server.py"
    script.write_text(PROBE_SERVER)
    proc = ComfyProcess(
        [sys.executable, str(script)],
        extra_args=["--load-s", str(load_s)],
        log_path=root / "probe.log",
    )
    try:
        proc.start(ready_timeout=30)
        probes = json.loads(httpx.get(f"{proc.base_url}/probes", timeout=5).content)
    finally:
        proc.stop(grace=1.0)
    return [b - a for a, b in itertools.pairwise(probes)]


def report_probe_spacing(runs: int) -> bool:
    poll = defaults.COMFY_READY_POLL_S
    gaps: list[float] = []
    with tempfile.TemporaryDirectory(prefix="ryla-bench-probes-") as tmp:
        for i in range(runs):
            root = Path(tmp) / f"probes{i}"
            root.mkdir()
            gaps += probe_gaps(root, 1.0)
    if not gaps:
        print("probe spacing: no gaps recorded")
        return False
    low = min(gaps) / poll
    print(
        f"probe spacing over {runs} starts, {len(gaps)} gaps: min {min(gaps) * 1000:.1f} ms,"
        f" median {statistics.median(gaps) * 1000:.1f} ms; min/poll interval = {low:.2f}"
        f" (poll interval {poll * 1000:.0f} ms)"
    )
    # Server-side arrival times jitter a little with scheduling, never by half.
    ok = low >= 0.8
    print(f"goal: no gap below 0.8 x the poll interval: {'met' if ok else 'NOT met'}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--startup-delay", type=float, default=0.3, help="stand-in only")
    parser.add_argument("--stub", action="store_true", help="use the stand-in even if real is set")
    parser.add_argument("--ready-timeout", type=float, default=180.0)
    parser.add_argument("--probe-runs", type=int, default=3, help="0 skips the spacing check")
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
    if args.probe_runs > 0:
        ok = report_probe_spacing(args.probe_runs) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
