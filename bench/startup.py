"""How fast does `ryla --help` start, against `modal --help` on the same machine, same run?

Runs both (and `ryla logs --help`, a bare interpreter and a bare `import typer`) N times,
interleaved so that machine noise hits all alike, and prints median wall times and the ratio
ryla / modal.  Goal: ratio <= 0.3.  The two bare rows show what the interpreter and typer
itself cost of every `ryla` run.  Also prints what `python -X importtime` says are the biggest
imports of `ryla --help`, to show where time goes.

    python bench/startup.py [--runs 15]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from ryla_modal.deploy.modal_cli import modal_command  # noqa: E402

GOAL_RATIO = 0.3


def wall(argv: list[str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, timeout=60)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{argv} failed ({proc.returncode}): {proc.stderr.decode()[-500:]}")
    return elapsed


def top_imports(argv: list[str], n: int = 8) -> list[tuple[int, str]]:
    """The n largest cumulative import times (µs) reported by ``-X importtime``."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", *argv], capture_output=True, text=True, timeout=60
    )
    rows: list[tuple[int, str]] = []
    for line in proc.stderr.splitlines():
        parts = line.split("|")
        if not line.startswith("import time:") or len(parts) != 3 or "cumulative" in line:
            continue
        name = parts[2][1:]  # one space follows the bar; more means a nested import
        if not name.startswith(" "):
            rows.append((int(parts[1]), name))
    return sorted(rows, reverse=True)[:n]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()

    commands = {
        "ryla --help": [sys.executable, "-m", "ryla_modal.cli", "--help"],
        "ryla logs --help": [sys.executable, "-m", "ryla_modal.cli", "logs", "--help"],
        "modal --help": [*modal_command(), "--help"],
        "python (bare)": [sys.executable, "-c", "pass"],
        "import typer": [sys.executable, "-c", "import typer"],
    }
    for argv in commands.values():  # warm the file cache and .pyc files once
        wall(argv)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.runs):
        for name, argv in commands.items():
            times[name].append(wall(argv))

    medians = {name: statistics.median(ts) for name, ts in times.items()}
    base = medians["modal --help"]
    print(f"runs={args.runs}, interleaved; python {sys.version.split()[0]}")
    print(f"{'command':<20}{'median':>10}{'min':>10}{'ratio vs modal':>16}")
    for name, ts in times.items():
        print(f"{name:<20}{medians[name]:>9.3f}s{min(ts):>9.3f}s{medians[name] / base:>16.2f}")
    ratio = medians["ryla --help"] / base
    verdict = "meets" if ratio <= GOAL_RATIO else "MISSES"
    print(f"ryla --help / modal --help = {ratio:.2f}: {verdict} the goal of <= {GOAL_RATIO}")

    print("\nlargest imports of `ryla --help` (cumulative, -X importtime):")
    for micros, module in top_imports(["-m", "ryla_modal.cli", "--help"]):
        print(f"  {micros / 1000:8.1f} ms  {module}")
    return 0 if ratio <= GOAL_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
