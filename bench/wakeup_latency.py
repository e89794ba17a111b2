"""How long after the worker writes a job's final state does a waiting long poll see it?

Goal: within 50 ms.  Baseline: the Dict re-read every 0.5 s that the long poll used before the
wake-ups (on average 0.25 s, at worst 0.5 s added to every job).  Both run here, side by side,
against the control-plane stand-in with the REAL modal package: the gateway's ``DictJobStore``
waits as the gateway does (``wait_for_change`` in a loop), a "worker" FunctionCall started by
the stand-in writes the final state after a random delay and notes when, and the latency is
seen - written.  With wake-ups the answer comes from the call ending (FunctionGetOutputs) or
the job's Queue partition; without, from the 0.5 s poll.

    python bench/wakeup_latency.py [--jobs 20]

Not a timed test: it prints figures.  The Dict is an in-memory twin (the stand-in serves no
Dict RPCs), so the figures are the wake-up path's own cost, not Modal's network.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

import modal  # noqa: E402
from tests.fakes.modal_control import FakeModalControl  # noqa: E402
from tests.test_cloud_backend import MemoryDict  # noqa: E402

from ryla_modal import defaults  # noqa: E402
from ryla_modal.cloud.store import DictJobStore, JobSignals, modal_call_waiter  # noqa: E402
from ryla_modal.gateway.schemas import TERMINAL_STATUSES, JobRecord  # noqa: E402

GOAL_S = 0.050


async def one_job(gateway: DictJobStore, worker: DictJobStore, fake: FakeModalControl) -> float:
    now = time.time()
    record, _ = await asyncio.to_thread(
        gateway.create_if_absent,
        JobRecord(
            job_id=str(uuid.uuid4()),
            status="queued",
            created_at=now,
            updated_at=now,
            workflow_sha256="0" * 64,
        ),
    )
    written: list[float] = []
    noted = threading.Event()
    delay = random.uniform(0.05, 0.6)  # lands anywhere in a poll interval

    def worker_call() -> str:
        time.sleep(delay)
        worker.update(record.job_id, status="succeeded", phase="done")
        written.append(time.monotonic())
        noted.set()
        return "done"

    call_id = fake.start_call(worker_call)
    spawned = await asyncio.to_thread(gateway.update, record.job_id, call_id=call_id)
    assert spawned is not None
    current = spawned
    deadline = time.monotonic() + 30
    while current.status not in TERMINAL_STATUSES:  # what the gateway's long poll does
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"job {record.job_id} never finished")
        await gateway.wait_for_change(current.job_id, current.revision, left)
        fresh = await asyncio.to_thread(gateway.get, current.job_id)
        assert fresh is not None
        current = fresh
    seen = time.monotonic()
    # The poll may see the write before the worker thread noted its time: that is ~0 latency.
    await asyncio.to_thread(noted.wait, 10)
    return max(0.0, seen - written[0])


async def run(jobs: int, fake: FakeModalControl) -> dict[str, list[float]]:
    d, out = MemoryDict(), Path(tempfile.gettempdir())
    queue = modal.Queue.from_name("bench-wakeups", create_if_missing=True)
    variants = {
        "wake-ups": (
            DictJobStore(
                d, outputs_dir=out, signals=JobSignals(queue), call_waiter=modal_call_waiter
            ),
            DictJobStore(d, outputs_dir=out, role="worker", signals=JobSignals(queue)),
        ),
        "0.5 s poll (before)": (
            DictJobStore(d, outputs_dir=out, poll_s=defaults.GATEWAY_STORE_POLL_S),
            DictJobStore(d, outputs_dir=out, role="worker"),
        ),
    }
    results: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(jobs):  # interleaved, so both see the same machine load
        for name, (gateway, worker) in variants.items():
            results[name].append(await one_job(gateway, worker, fake))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ryla-bench-wakeups-") as home:
        fake = FakeModalControl()
        fake.start()
        try:
            os.environ.update({k: v for k, v in fake.env(Path(home)).items() if "MODAL_" in k})
            results = asyncio.run(run(args.jobs, fake))
        finally:
            fake.stop()
    print(
        f"final write -> long poll returns, {args.jobs} jobs each (goal: <= {GOAL_S * 1000:.0f} ms)"
    )
    medians = {}
    for name, values in results.items():
        values.sort()
        medians[name] = statistics.median(values)
        p95 = values[min(len(values) - 1, int(0.95 * len(values)))]
        print(
            f"  {name:<20} median {medians[name] * 1000:7.1f} ms"
            f"   p95 {p95 * 1000:7.1f} ms   max {values[-1] * 1000:7.1f} ms"
        )
    fast, slow = medians["wake-ups"], medians["0.5 s poll (before)"]
    print(f"  the poll takes {slow / max(fast, 1e-6):.0f}x as long to see a finished job (median)")
    print(f"  goal met: {max(results['wake-ups']) <= GOAL_S}")


if __name__ == "__main__":
    main()
