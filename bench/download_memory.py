"""Peak memory while the clients download one large output, against a baseline of the same run.

A server process streams one output of SIZE bytes (512 MiB by default) in the job API's shape.
Each measurement runs in a fresh process that imports the same modules, so the figures compare:

  (a) baseline — a plain httpx stream of the output to /dev/null
  (b) sync     — `RylaClient.download` (streamed to disk, checksummed, atomic)
  (c) async    — `AsyncRylaClient.download` (the same save path, fed from the event loop)

Prints each one's RSS before the download and its peak RSS (getrusage), and b-a and c-a.
Goal (issue 9): both clients' peak within 64 MB of the baseline's.

    python bench/download_memory.py [--size-mb 512]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CHUNK = bytes(range(256)) * 4096  # 1 MiB, not all zeros
JOB_ID = "bench-memory"
GOAL_MB = 64.0


# --------------------------------------------------------------------------- the server
def serve(size_mb: int, port_file: Path) -> None:
    digest = hashlib.sha256()
    for _ in range(size_mb):
        digest.update(CHUNK)
    sha, size = digest.hexdigest(), size_mb * len(CHUNK)
    job = {
        "job_id": JOB_ID,
        "status": "succeeded",
        "phase": "done",
        "created_at": time.time(),
        "updated_at": time.time(),
        "progress": None,
        "outputs": [
            {
                "index": 0,
                "node_id": "9",
                "filename": "big.bin",
                "kind": "video",
                "mime": "application/octet-stream",
                "size": size,
                "sha256": sha,
            }
        ],
        "error": None,
        "timings": {},
    }
    body = json.dumps(job).encode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            if self.path.startswith(f"/jobs/{JOB_ID}/outputs/0"):
                self.send_response(200)
                self.send_header("content-type", "application/octet-stream")
                self.send_header("content-length", str(size))
                self.send_header("x-sha256", sha)
                self.end_headers()
                for _ in range(size_mb):
                    self.wfile.write(CHUNK)
                return
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port_file.write_text(str(server.server_address[1]))
    server.serve_forever()


# --------------------------------------------------------------------------- one measurement
def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(mode: str, url: str, out: Path) -> dict[str, float]:
    import asyncio

    import httpx

    from ryla_modal.client import AsyncRylaClient, RylaClient

    before = rss_mb()
    started = time.monotonic()
    if mode == "baseline":
        with (
            httpx.Client(base_url=url, timeout=60) as http,
            http.stream("GET", f"/jobs/{JOB_ID}/outputs/0") as resp,
            open(os.devnull, "wb") as sink,
        ):
            for chunk in resp.iter_bytes():
                sink.write(chunk)
    elif mode == "sync":
        with RylaClient(url) as client:
            client.download(client.status(JOB_ID), out)
    else:

        async def main() -> None:
            async with AsyncRylaClient(url) as client:
                await client.download(await client.status(JOB_ID), out)

        asyncio.run(main())
    took = time.monotonic() - started
    saved = list(out.iterdir())
    for path in saved:
        path.unlink()
    return {"rss_before_mb": before, "peak_mb": peak_mb(), "seconds": took, "files": len(saved)}


# --------------------------------------------------------------------------- the run
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=512)
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--measure", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.size_mb, args.serve)
        return 0
    if args.measure:
        mode, url, out = args.measure
        print(json.dumps(measure(mode, url, Path(out))))
        return 0

    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "RYLA_CONFIG_DIR": tempfile.mkdtemp()}
    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "port"
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(port_file), "--size-mb", str(args.size_mb)],
            env=env,
        )
        try:
            for _ in range(600):  # the server hashes its output first (bounded: 60 s)
                if port_file.exists() and port_file.read_text():
                    break
                time.sleep(0.1)
            url = f"http://127.0.0.1:{port_file.read_text()}"
            results: dict[str, dict[str, float]] = {}
            for mode in ("baseline", "sync", "async"):
                out = Path(tmp) / mode
                out.mkdir()
                proc = subprocess.run(
                    [sys.executable, __file__, "--measure", mode, url, str(out)],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=600,
                    check=True,
                )
                results[mode] = json.loads(proc.stdout)
        finally:
            server.terminate()
            server.wait(10)

    base = results["baseline"]["peak_mb"]
    print(f"download of one {args.size_mb} MiB output, peak RSS per process (MiB):")
    ok = True
    for mode, r in results.items():
        delta = r["peak_mb"] - base
        line = (
            f"  {mode:8s} before {r['rss_before_mb']:6.1f}  peak {r['peak_mb']:6.1f}"
            f"  {r['seconds']:5.1f}s"
        )
        if mode != "baseline":
            within = delta <= GOAL_MB
            ok = ok and within and r["files"] == 1
            line += (
                f"  peak - baseline {delta:+6.1f}  {'ok' if within else 'OVER'} (<= {GOAL_MB:g})"
            )
        print(line)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
