"""Load through `ryla serve`: nothing lost, nothing run twice, no 5xx, and what the gateway adds.

Starts the ComfyUI stand-in (or uses RYLA_BENCH_COMFYUI_URL) and `ryla serve --comfyui-url` in
front of it (--workers = the concurrency, so every job is handed to ComfyUI at once and waits in
ComfyUI's own queue, not in ours), then:

1. load: N jobs, C at a time; each job is submitted three times at once with the same job id
   (POST /jobs), long-polled to its end and its outputs downloaded.  Prints jobs lost (not
   succeeded), run twice (ComfyUI's own count of prompts per id, GET /_fake/stats), 5xx answers
   seen, throughput, and the overhead per job: the client's wall time from the first POST to the
   last output byte, minus the time ComfyUI had the prompt (``waiting_in_comfyui`` +
   ``executing`` in the job's timings: from ComfyUI accepting the prompt to its end), p50/p99;
   the same from the server's own clock (the job's ``total`` minus ComfyUI's time: what the
   lifecycle adds, without the waits of the HTTP requests); the CPU the gateway and this load
   generator used; and the gateway's peak RSS (VmHWM).  At concurrency C the client-side
   overhead is mostly queueing: C jobs / throughput (Little's law), and throughput is bounded
   by the gateway's CPU per job.
   The same N x C load is first run straight at ComfyUI by C callers of its own API (socket,
   POST /prompt, history, /view; one submit per job), and both loads' job walls are printed:
   what a caller waits through ryla against what it waits without it, ComfyUI's queue included.
   Every caller's connections are opened before the clock starts: C callers on C machines open
   theirs in parallel, and one load generator opening 3 x C of them at once measures only its
   own event loop (it took ~300 ms of the first wave on a 2-core machine).
2. sequential: one job at a time through serve + RylaClient.generate, against a direct client of
   ComfyUI's own API (bench/overhead.py's), interleaved; prints the p50 difference.

``--node-ms 0`` (the default) makes ComfyUI instant: the gateway's CPU is the bottleneck, the
harshest case for it.  ``--node-ms 20`` makes ComfyUI the bottleneck, as a GPU is (its prompts
still take 20-500x less than real ones): then C jobs wait in ComfyUI's queue, and what the
gateway adds shows in the first wave (C x 3 submits at one instant) and in each job's tail.

Goals at 500 x 64: 0 lost, 0 twice, 0 5xx, overhead p99 <= 250 ms; sequential p50 <= 10 ms.

    python bench/load.py [--jobs 500] [--concurrency 64] [--sequential 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
from websockets.asyncio.client import ClientConnection, connect

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._stack import served_comfyui  # noqa: E402
from bench.overhead import direct_run, workflow  # noqa: E402

from ryla_modal.client import RylaClient  # noqa: E402

TERMINAL = {"succeeded", "failed", "cancelled"}


class Tally:
    def __init__(self) -> None:
        self.statuses: Counter[int] = Counter()
        self.overheads: list[float] = []
        self.later_overheads: list[float] = []  # jobs after the first wave of C
        self.server_overheads: list[float] = []
        self.finals: dict[str, str] = {}
        self.phases: dict[str, list[float]] = {}
        self.walls: list[float] = []  # succeeded jobs: first POST to last output byte
        self.first_wave = 0
        self.retries = 0  # requests sent again after a transport error

    async def send(self, caller: Caller, method: str, path: str, body: Any = None) -> Reply:
        """A request of the job API, sent again after a transport error, as any client does.

        Every one is safe to repeat (a submit carries its job id).  The usual cause: the server
        closes a keep-alive connection idle for 5 s (uvicorn's default) just as the next submit
        goes out on it, and a job here takes ~4-5 s with --node-ms 20.
        """
        for attempt in range(3):
            try:
                reply = await caller.request(method, path, body)
            except WireError:
                if attempt == 2:
                    raise
                self.retries += 1
                await asyncio.sleep(0.05)
                continue
            self.statuses[reply.status_code] += 1
            return reply
        raise AssertionError("unreachable")


class WireError(Exception):
    """The connection failed or closed before a whole answer arrived."""


class Reply:
    __slots__ = ("body", "status_code")

    def __init__(self, status_code: int, body: bytes) -> None:
        self.status_code = status_code
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


class Caller:
    """One caller's keep-alive HTTP/1.1 connections, spoken straight over asyncio streams.

    Why not httpx: this process plays 64 callers that in life run on 64 machines, and httpx
    costs ~2 ms of CPU a request (URL and header models, httpcore's pool, anyio).  At the first
    wave's 192 submits at one instant, on 2 cores shared with the gateway and ComfyUI, that was
    ~60% of the machine: the figures measured the load generator's queue, not the gateway's
    (as wrk and hey, a load generator must cost far less than what it measures).  This speaks
    only what the job API and ComfyUI answer with: Content-Length or chunked bodies.
    """

    def __init__(self, url: str, headers: dict[str, str] | None = None, timeout: float = 60.0):
        parsed = httpx.URL(url)
        self.host, self.port = parsed.host, parsed.port or 80
        lines = [f"Host: {self.host}:{self.port}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        self._head = ("\r\n".join(lines) + "\r\n").encode()
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._timeout = timeout

    async def request(self, method: str, path: str, body: Any = None) -> Reply:
        data = b"" if body is None else json.dumps(body).encode()
        head = f"{method} {path} HTTP/1.1\r\n".encode() + self._head
        if body is not None:
            head += b"Content-Type: application/json\r\n"
        head += b"Content-Length: %d\r\n\r\n" % len(data)
        try:
            conn = self._idle.pop() if self._idle else await self._open()
        except OSError as exc:
            raise WireError(str(exc)) from exc
        try:
            status, keep, answer = await asyncio.wait_for(
                self._exchange(conn, head + data), self._timeout
            )
        except (OSError, EOFError, ValueError, asyncio.IncompleteReadError) as exc:
            conn[1].close()
            raise WireError(f"{method} {path}: {exc!r}") from exc
        except BaseException:
            conn[1].close()
            raise
        if keep:
            self._idle.append(conn)
        else:
            conn[1].close()
        return Reply(status, answer)

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.wait_for(asyncio.open_connection(self.host, self.port), 10)

    async def _exchange(
        self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], request: bytes
    ) -> tuple[int, bool, bytes]:
        reader, writer = conn
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        keep = headers.get("connection", "").lower() != "close"
        if "content-length" in headers:
            answer = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            for _ in range(1_000_000):  # bounded: one chunk per round
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await reader.readexactly(size + 2)
                if size == 0:
                    break
                parts.append(chunk[:-2])
            answer = b"".join(parts)
        else:
            answer, keep = await reader.read(), False
        return status, keep, answer

    async def aclose(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


async def one_job(http: Caller, tally: Tally, i: int) -> None:
    job_id = str(uuid.uuid4())
    body = {"job_id": job_id, "workflow": workflow(f"load{i}")}
    start = time.perf_counter()
    await asyncio.gather(*(tally.send(http, "POST", "/jobs", body) for _ in range(3)))
    tally.phases.setdefault("client submit", []).append(time.perf_counter() - start)
    job: dict[str, Any] = {"status": "queued"}
    for _ in range(10_000):  # bounded: each poll waits up to 20 s for a change
        resp = await tally.send(http, "GET", f"/jobs/{job_id}?wait=20")
        if resp.status_code != 200:
            await asyncio.sleep(0.1)
            continue
        job = resp.json()
        if job["status"] in TERMINAL:
            tally.phases.setdefault("client saw final after", []).append(
                time.time() - job["updated_at"]
            )
            break
    for out in job.get("outputs") or []:
        await tally.send(http, "GET", f"/jobs/{job_id}/outputs/{out['index']}")
    wall = time.perf_counter() - start
    tally.finals[job_id] = job["status"]
    timings = job.get("timings") or {}
    in_comfy = (timings.get("waiting_in_comfyui") or 0.0) + (timings.get("executing") or 0.0)
    if job["status"] == "succeeded":
        tally.overheads.append(wall - in_comfy)
        if i >= tally.first_wave:
            tally.later_overheads.append(wall - in_comfy)
        tally.server_overheads.append((timings.get("total") or 0.0) - in_comfy)
        for name, value in timings.items():
            if value is not None:
                tally.phases.setdefault(name, []).append(value)
        tally.phases.setdefault("client wall", []).append(wall)
        tally.walls.append(wall)


async def connect_all(caller: Caller, path: str, count: int) -> None:
    """Opens a caller's `count` connections at once and checks that each is answered."""
    for reply in await asyncio.gather(*(caller.request("GET", path) for _ in range(count))):
        if reply.status_code != 200:
            raise RuntimeError(f"GET {path} answered {reply.status_code} before the load began")


async def direct_job(
    http: Caller, ws: ClientConnection, client_id: str, tally: Tally, i: int
) -> None:
    """One job the way a script talking to ComfyUI itself runs it (bench/overhead.py's
    direct_run, async): POST /prompt, wait on the socket for its end, GET its history, GET
    every image from /view."""
    start = time.perf_counter()
    body = {"prompt": workflow(f"direct{i}"), "client_id": client_id}
    resp = await tally.send(http, "POST", "/prompt", body)
    prompt_id = resp.json()["prompt_id"]
    status = "failed"
    for _ in range(100_000):  # bounded: each message waits at most 60 s
        message = await asyncio.wait_for(ws.recv(), timeout=60)
        if isinstance(message, bytes):
            continue
        event = json.loads(message)
        data = event.get("data") or {}
        if data.get("prompt_id") != prompt_id:
            continue
        if event["type"] == "executing" and data.get("node") is None:
            status = "succeeded"
            break
        if event["type"] in ("execution_error", "execution_interrupted"):
            break
    history = (await tally.send(http, "GET", f"/history/{prompt_id}")).json()[prompt_id]
    for node_output in history["outputs"].values():
        for item in node_output.get("images", []):
            await tally.send(http, "GET", "/view?" + urlencode(item))
    tally.finals[prompt_id] = status
    if status == "succeeded":
        tally.walls.append(time.perf_counter() - start)


async def load(url: str, token: str, jobs: int, concurrency: int) -> tuple[Tally, float]:
    """C workers, each with its own three connections (one per concurrent submit): C callers."""
    tally = Tally()
    tally.first_wave = concurrency
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(jobs):
        queue.put_nowait(i)
    clients = [Caller(url, {"Authorization": f"Bearer {token}"}) for _ in range(concurrency)]

    async def worker(http: Caller) -> None:
        while not queue.empty():
            await one_job(http, tally, queue.get_nowait())

    # Connected before the clock (both loads): C callers on C machines would each open theirs
    # in parallel; one load generator opening 3C at once measures its own event loop.
    await asyncio.gather(*(connect_all(http, "/health", 3) for http in clients))
    start = time.perf_counter()
    await asyncio.gather(*(worker(http) for http in clients))
    wall = time.perf_counter() - start
    for http in clients:
        await http.aclose()
    return tally, wall


async def direct_load(comfy_url: str, jobs: int, concurrency: int) -> tuple[Tally, float]:
    """The same N jobs, C at a time, straight at ComfyUI: the baseline ryla's walls are held to.

    Each of the C callers keeps one client and one websocket (opened before the clock starts),
    as a script would.  One submit per job: ComfyUI has no job ids to deduplicate on.
    """
    tally = Tally()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(jobs):
        queue.put_nowait(i)
    ws_url = comfy_url.replace("http://", "ws://") + "/ws?clientId="
    callers = []
    for _ in range(concurrency):
        client_id = uuid.uuid4().hex
        http = Caller(comfy_url)
        ws = await connect(ws_url + client_id, open_timeout=30, close_timeout=1, max_size=None)
        await connect_all(http, "/system_stats", 1)
        callers.append((http, ws, client_id))

    async def worker(http: Caller, ws: ClientConnection, client_id: str) -> None:
        while not queue.empty():
            await direct_job(http, ws, client_id, tally, queue.get_nowait())

    start = time.perf_counter()
    await asyncio.gather(*(worker(*caller) for caller in callers))
    wall = time.perf_counter() - start
    # Closed after the clock: a websocket's closing handshake can wait its close_timeout.
    for http, ws, _ in callers:
        await http.aclose()
        await ws.close()
    return tally, wall


def peak_rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--sequential", type=int, default=50, help="runs of the sequential part")
    parser.add_argument(
        "--node-ms", type=float, default=0.0, help="the stand-in sleeps this long in every node"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ryla-bench-load-"))
    try:
        with served_comfyui(
            work, node_seconds=args.node_ms / 1000, workers=min(64, args.concurrency)
        ) as stack:
            direct_tally, direct_wall = asyncio.run(
                direct_load(stack.comfy_url, args.jobs, args.concurrency)
            )
            cpu_before = cpu_seconds(stack.serve_pid)
            mine_before = time.process_time()
            tally, wall = asyncio.run(
                load(stack.ryla_url, stack.token, args.jobs, args.concurrency)
            )
            cpu_after = cpu_seconds(stack.serve_pid)
            mine = time.process_time() - mine_before
            stats = httpx.get(f"{stack.comfy_url}/_fake/stats", timeout=30).json()
            runs = Counter(stats["prompt_ids"])
            twice = sum(1 for job_id in tally.finals if runs[job_id] > 1)
            lost = sum(1 for status in tally.finals.values() if status != "succeeded")
            lost += args.jobs - len(tally.finals)
            five = sum(n for code, n in tally.statuses.items() if code >= 500)
            rss = peak_rss_mib(stack.serve_pid)

            direct: list[float] = []
            ryla: list[float] = []
            with RylaClient(stack.ryla_url, token=stack.token) as client:
                for i in range(args.sequential):
                    t0 = time.perf_counter()
                    direct_run(stack.comfy_url, work)
                    direct.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    client.generate(workflow(f"seq{i}"), out_dir=work / "seq-out")
                    ryla.append(time.perf_counter() - t0)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ms = 1000.0
    print(f"load: {args.jobs} jobs x concurrency {args.concurrency}, 3 submits per job id")
    print(f"  jobs lost            {lost}   (goal 0)")
    print(f"  jobs run twice       {twice}   (goal 0)")
    codes = dict(sorted(tally.statuses.items()))
    print(f"  5xx answers seen     {five}   (goal 0)   statuses: {codes}")
    print(f"  requests sent again  {tally.retries}   (after a transport error; a client retries)")
    print(f"  throughput           {args.jobs / wall:.1f} jobs/s ({wall:.1f} s)")
    print(f"  overhead p50         {pct(tally.overheads, 0.50) * ms:.1f} ms")
    print(f"  overhead p99         {pct(tally.overheads, 0.99) * ms:.1f} ms   (goal <= 250 ms)")
    later = tally.later_overheads
    print(
        f"  after the first wave p50 {pct(later, 0.5) * ms:.1f} ms, p99 {pct(later, 0.99) * ms:.1f}"
        f" ms ({len(later)} jobs; the first {args.concurrency} are submitted all at once)"
    )
    server = tally.server_overheads
    p50, p99 = pct(server, 0.5) * ms, pct(server, 0.99) * ms
    print(f"  server-side overhead p50 {p50:.1f} ms, p99 {p99:.1f} ms (total minus ComfyUI's time)")
    print("  against a direct ComfyUI client under the same load (C callers, one submit per job):")
    print(f"    throughput         {args.jobs / direct_wall:.1f} jobs/s ({direct_wall:.1f} s)")
    direct_lost = args.jobs - len(direct_tally.walls)
    if direct_lost:
        print(f"    ({direct_lost} direct jobs did not succeed: the figures below leave them out)")
    for q, label in ((0.5, "p50"), (0.99, "p99")):
        r, d = pct(tally.walls, q) * ms, pct(direct_tally.walls, q) * ms
        print(f"    job wall {label}       ryla {r:.1f} ms, direct {d:.1f} ms ({r - d:+.1f} ms)")
    if cpu_before is not None and cpu_after is not None:
        used = cpu_after - cpu_before
        print(
            f"  gateway CPU          {used:.1f} s ({used / wall:.0%} of a core;"
            f" {used / args.jobs * ms:.1f} ms per job)"
        )
    print(f"  load generator CPU   {mine:.1f} s ({mine / wall:.0%} of a core)")
    where = ", ".join(
        f"{k} {statistics.median(v) * ms:.0f}/{pct(v, 0.99) * ms:.0f}"
        for k, v in tally.phases.items()
    )
    print(f"  job timings, p50/p99 ms: {where}")
    print(f"  gateway peak RSS     {rss:.1f} MiB" if rss is not None else "  gateway peak RSS  n/a")
    if not direct:
        return 0  # --sequential 0: the load part only
    d50, r50 = statistics.median(direct), statistics.median(ryla)
    print(f"sequential: {args.sequential} runs each, interleaved")
    print(f"  direct ComfyUI client p50  {d50 * ms:.1f} ms")
    print(f"  serve + RylaClient p50     {r50 * ms:.1f} ms")
    print(f"  overhead p50               {(r50 - d50) * ms:+.1f} ms   (goal <= 10 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
