"""How far past its deadline does `ryla logs --timeout 3` return, in every way Modal can hang?

For each hang mode it runs the real `ryla` CLI (which runs the real `modal` CLI) against the local
control-plane stand-in and measures, from outside, overshoot = returned - 3 s.  Beside it, bare
`modal app logs` in the same mode, capped at --cap seconds (default 60): that is what a script
that calls modal directly waits.  Goal: every ryla overshoot <= 0.5 s.

Modes: a server that accepts the RPC and never answers; a closed port; a TCP peer that accepts and
never speaks; and `--follow` on a healthy server (modal's `-f` never ends by design).

    python bench/logs_deadline.py [--runs 3] [--cap 60] [--timeout 3]

Not a timed test: it prints figures.  The bare-modal runs are capped waits, run side by side.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from tests._hang_servers import SilentPeer, closed_port  # noqa: E402
from tests.fakes.modal_control import FakeModalControl  # noqa: E402

from ryla_modal.deploy.modal_cli import modal_command  # noqa: E402
from ryla_modal.deploy.proc import run_command  # noqa: E402

GOAL_S = 0.5
MODES = ("never_answer", "closed_port", "silent_peer", "follow")
APP = "bench-app"


def mode_env(mode: str, fake: FakeModalControl, peer: SilentPeer, home: Path) -> dict[str, str]:
    env = fake.env(home)
    if mode == "closed_port":
        env["MODAL_SERVER_URL"] = f"http://127.0.0.1:{closed_port()}"
    elif mode == "silent_peer":
        env["MODAL_SERVER_URL"] = peer.url
    env["RYLA_CONFIG_DIR"] = str(home / "ryla")
    return env


def time_ryla(env: dict[str, str], timeout: float, follow: bool) -> tuple[float, int]:
    argv = [sys.executable, "-m", "ryla_modal.cli", "logs", APP, "--timeout", f"{timeout:g}"]
    argv += ["--follow"] if follow else []
    started = time.monotonic()
    proc = subprocess.run(argv, env=env, capture_output=True, timeout=timeout + 30)
    return time.monotonic() - started, proc.returncode


def time_bare_modal(env: dict[str, str], cap: float, follow: bool) -> tuple[float, bool]:
    argv = [*modal_command(), "app", "logs", APP, *(["-f"] if follow else [])]
    # run_command is our own deadline runner: it is what makes the cap a cap.
    result = run_command(argv, timeout=cap, env=env)
    return result.duration_s, result.timed_out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="ryla runs per mode")
    parser.add_argument("--cap", type=float, default=60.0, help="cap for bare modal, seconds")
    parser.add_argument("--timeout", type=float, default=3.0, help="ryla logs --timeout")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, FakeModalControl() as normal, SilentPeer() as peer:
        hanging = FakeModalControl(mode="never_answer")
        hanging.start()
        try:
            for fake in (normal, hanging):
                fake.add_app(APP, logs=["a line", "another line"])
            envs = {
                mode: mode_env(
                    mode, hanging if mode == "never_answer" else normal, peer, Path(tmp) / mode
                )
                for mode in MODES
            }
            # Bare modal first, all modes side by side (they mostly sleep), then ryla alone.
            with ThreadPoolExecutor(len(MODES)) as pool:
                bare = {
                    mode: pool.submit(time_bare_modal, envs[mode], args.cap, mode == "follow")
                    for mode in MODES
                }
                bare_results = {mode: f.result() for mode, f in bare.items()}
            ryla: dict[str, list[tuple[float, int]]] = {m: [] for m in MODES}
            for _ in range(args.runs):
                for mode in MODES:
                    ryla[mode].append(time_ryla(envs[mode], args.timeout, mode == "follow"))
        finally:
            hanging.stop()

    python = sys.version.split()[0]
    print(f"ryla logs APP --timeout {args.timeout:g}  (runs={args.runs}; python {python};", end="")
    print(f" {os.cpu_count()} CPUs)")
    header = f"{'mode':<14}{'ryla median':>12}{'overshoot med':>15}{'overshoot max':>15}{'exit':>6}"
    header += f"{'bare modal':>16}"
    print(header)
    worst = 0.0
    for mode in MODES:
        times = [t for t, _ in ryla[mode]]
        codes = sorted({c for _, c in ryla[mode]})
        over = [t - args.timeout for t in times]
        worst = max(worst, *over)
        bare_s, capped = bare_results[mode]
        bare_text = f">={args.cap:.0f}s (capped)" if capped else f"{bare_s:.1f}s"
        print(
            f"{mode:<14}{statistics.median(times):>11.2f}s{statistics.median(over):>+14.2f}s"
            f"{max(over):>+14.2f}s{','.join(map(str, codes)):>6}{bare_text:>16}"
        )
    verdict = "meets" if worst <= GOAL_S else "MISSES"
    print(f"worst overshoot {worst:+.2f}s: {verdict} the goal of <= {GOAL_S}s")
    return 0 if worst <= GOAL_S else 1


if __name__ == "__main__":
    sys.exit(main())
