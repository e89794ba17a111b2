"""The queue, the output cache and the executor: one worker thread, as in ComfyUI.

Messages go out through ``Hub.send`` (thread-safe, order kept).  The order per prompt is the one
recorded from ComfyUI 0.3.64: ``status`` on put and again when the worker takes the prompt,
``execution_start``, ``execution_cached``, then per node ``progress_state`` (running),
``executing``, [``progress_state`` + ``progress`` per step], ``executed`` (output nodes),
``progress_state`` (finished); then ``execution_success`` | ``execution_error`` |
``execution_interrupted``, ``status`` and ``executing {node: null}``.

A step that carries an image (SaveImageWebsocket) sends it as main.py's progress hook does: to a
client that announced ``supports_preview_metadata``, ``progress_state`` then a binary event 4
(JSON metadata naming prompt and node, then the image) then ``progress``; to any other client
``progress`` then a binary event 1 (image type 1 JPEG / 2 PNG, then the image), as transcripts
21 and 22 show.

Fault switches (``--fault``, ``POST /_fake/fault``) fire once, in the next job that runs, after
its ``after_node``-th node (0: before the first; a job with fewer nodes: before its end):
``drop-socket``, ``die``, ``stall``, ``mute-socket`` (sockets stay open and silent for the rest
of that job while its history entry is written as usual), ``hold`` (the next node, once its
``executing`` is out, waits for an interrupt, at most ``HOLD_LIMIT_S``, then runs; the interrupt
lands at the node after it, as with a heavy ComfyUI node that never checks, unless the node
checks itself like RylaSlowSteps: a test can act "while node N runs" without racing a timer).
"""

from __future__ import annotations

import copy
import dataclasses
import heapq
import io
import json
import os
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .nodes import (
    Folders,
    InterruptProcessing,
    NodeDef,
    NodeResult,
    RunContext,
    describe,
)
from .validation import full_type_name

MAXIMUM_HISTORY_SIZE = 10000
FAULTS = ("none", "drop-socket", "die", "stall", "mute-socket", "hold")
HOLD_LIMIT_S = 60.0  # a held node that nobody interrupts ends anyway: no test hangs on it


def now_ms() -> int:
    return int(time.time() * 1000)


def log(line: str) -> None:
    print(line, flush=True)


class Hub(Protocol):
    """What the executor needs from the server: send messages, drop sockets."""

    def send(self, event: str, data: dict[str, Any], sid: str | None) -> None: ...

    def send_binary(self, event: int, data: bytes, sid: str | None) -> None: ...

    def supports_preview_metadata(self, sid: str | None) -> bool: ...

    def drop_sockets(self) -> None: ...

    def mute_sockets(self, on: bool) -> None: ...


PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4


def encode_image(preview: tuple[str, Any, int | None]) -> tuple[str, bytes]:
    """server.py ``send_image``: (format, bytes) of a ("PNG" | "JPEG", image, max_size) tuple."""
    fmt, image, max_size = preview
    if max_size is not None:
        image = image.copy()
        image.thumbnail((max_size, max_size))
    buf = io.BytesIO()
    image.save(buf, format=fmt, quality=95, compress_level=1)
    return fmt, buf.getvalue()


@dataclass(order=False)
class QueueItem:
    number: float
    prompt_id: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    outputs: list[str]
    # Set once the POST /prompt answer has gone out: faults wait for it, so a client always
    # holds its prompt_id before the server dies or cuts the sockets "mid-job".
    answered: threading.Event = field(default_factory=threading.Event, compare=False)

    def __lt__(self, other: QueueItem) -> bool:  # heapq order, as ComfyUI's tuples compare
        return (self.number, self.prompt_id) < (other.number, other.prompt_id)

    def as_list(self) -> list[Any]:
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs]


@dataclass
class Fault:
    kind: str = "none"
    after_node: int = 1


@dataclass
class Stats:
    prompts_received: int = 0
    prompts_queued: int = 0
    prompts_executed: int = 0
    prompt_ids: list[str] = field(default_factory=list)
    #: "cpu" while started with RYLA_COMFYUI_DEFER_GPU=1 and not yet moved (POST /ryla/gpu)
    device: str = "gpu"
    #: prompts that ran while the device was still "cpu": a worker that forgot the move
    prompts_on_cpu: int = 0


class PromptQueue:
    """ComfyUI's PromptQueue: a heap of pending items, the running ones, and the history."""

    def __init__(self, on_update: Callable[[], None]) -> None:
        self._on_update = on_update
        self.mutex = threading.RLock()
        self.not_empty = threading.Condition(self.mutex)
        self.queue: list[QueueItem] = []
        self.running: dict[int, QueueItem] = {}
        self.task_counter = 0
        self.history: dict[str, dict[str, Any]] = {}

    def put(self, item: QueueItem) -> None:
        with self.mutex:
            heapq.heappush(self.queue, item)
            self._on_update()
            self.not_empty.notify()

    def get(self) -> tuple[QueueItem, int]:
        with self.not_empty:
            while not self.queue:
                self.not_empty.wait()
            item = heapq.heappop(self.queue)
            task_id = self.task_counter
            self.running[task_id] = dataclasses.replace(
                item,
                prompt=copy.deepcopy(item.prompt),
                extra_data=copy.deepcopy(item.extra_data),
                outputs=list(item.outputs),
            )
            self.task_counter += 1
            self._on_update()
            return item, task_id

    def task_done(self, task_id: int, result: dict[str, Any], status: dict[str, Any]) -> None:
        with self.mutex:
            item = self.running.pop(task_id)
            if len(self.history) > MAXIMUM_HISTORY_SIZE:
                self.history.pop(next(iter(self.history)))
            entry: dict[str, Any] = {"prompt": item.as_list(), "outputs": {}, "status": status}
            entry.update(result)
            self.history[item.prompt_id] = entry  # same id again: overwritten in place
            self._on_update()

    def current(self) -> tuple[list[list[Any]], list[list[Any]]]:
        with self.mutex:
            running = [copy.deepcopy(i.as_list()) for i in self.running.values()]
            return running, [copy.deepcopy(i.as_list()) for i in self.queue]

    def remaining(self) -> int:
        with self.mutex:
            return len(self.queue) + len(self.running)

    def running_ids(self) -> list[str]:
        with self.mutex:
            return [i.prompt_id for i in self.running.values()]

    def wipe_queue(self) -> None:
        with self.mutex:
            self.queue = []
            self._on_update()

    def delete_queue_item(self, prompt_id: str) -> bool:
        with self.mutex:
            for x, item in enumerate(self.queue):
                if item.prompt_id == prompt_id:
                    if len(self.queue) == 1:
                        self.wipe_queue()
                    else:
                        self.queue.pop(x)
                        heapq.heapify(self.queue)
                    self._on_update()
                    return True
            return False

    def get_history(
        self, prompt_id: str | None = None, max_items: int | None = None, offset: int = -1
    ) -> dict[str, Any]:
        with self.mutex:
            if prompt_id is not None:
                if prompt_id in self.history:
                    return {prompt_id: copy.deepcopy(self.history[prompt_id])}
                return {}
            out: dict[str, Any] = {}
            if offset < 0 and max_items is not None:
                offset = len(self.history) - max_items
            for i, key in enumerate(self.history):
                if i >= offset:
                    out[key] = copy.deepcopy(self.history[key])
                    if max_items is not None and len(out) >= max_items:
                        break
            return out

    def wipe_history(self) -> None:
        with self.mutex:
            self.history = {}

    def delete_history_item(self, prompt_id: str) -> None:
        with self.mutex:
            self.history.pop(prompt_id, None)


@dataclass
class CacheEntry:
    outputs: tuple[Any, ...]
    ui: dict[str, Any] | None


class ExecutionFailed(Exception):
    def __init__(self, node_id: str, cause: BaseException, details: dict[str, Any]) -> None:
        super().__init__(node_id)
        self.node_id = node_id
        self.cause = cause
        self.details = details


class ExecutionList:
    """ComfyUI's ExecutionList: pending nodes, block counts, and the UX-friendly pick order."""

    def __init__(self, prompt: dict[str, Any], nodes: dict[str, NodeDef], cached: set[str]):
        self.prompt, self.nodes, self.cached = prompt, nodes, cached
        self.pending: dict[str, bool] = {}
        self.block_count: dict[str, int] = {}
        self.blocking: dict[str, dict[str, bool]] = {}

    def add_node(self, node_id: str) -> None:
        stack, links = [node_id], []
        while stack:
            nid = stack.pop()
            if nid in self.pending:
                continue
            self.pending[nid] = True
            self.block_count[nid] = 0
            self.blocking[nid] = {}
            for value in self.prompt[nid]["inputs"].values():
                if isinstance(value, list) and len(value) == 2:
                    if value[0] not in self.cached:
                        stack.append(value[0])
                    links.append((value[0], nid))
        for src, dst in links:
            if src not in self.cached:
                self.add_node(src)
                if dst not in self.blocking[src]:
                    self.blocking[src][dst] = True
                    self.block_count[dst] += 1

    def _is_output(self, node_id: str) -> bool:
        return self.nodes[self.prompt[node_id]["class_type"]].output_node

    def next_node(self) -> str:
        ready = [n for n in self.pending if self.block_count[n] == 0]
        for n in ready:
            if self._is_output(n):
                return n
        for n in ready:
            if any(self._is_output(b) for b in self.blocking[n]):
                return n
        for n in ready:
            if any(self._is_output(c) for b in self.blocking[n] for c in self.blocking[b]):
                return n
        return ready[0]

    def complete(self, node_id: str) -> None:
        del self.pending[node_id]
        for blocked in self.blocking.pop(node_id, {}):
            self.block_count[blocked] -= 1

    def is_empty(self) -> bool:
        return not self.pending


class Engine:
    """Executes queued prompts one at a time on a daemon thread."""

    def __init__(
        self,
        hub: Hub,
        nodes: dict[str, NodeDef],
        folders: Folders,
        *,
        disable_metadata: bool = False,
        node_seconds: float = 0.0,
        fault: Fault | None = None,
    ) -> None:
        self.hub = hub
        self.nodes = nodes
        self.folders = folders
        self.disable_metadata = disable_metadata
        self.node_seconds = node_seconds
        self.fault = fault or Fault()
        self.stats = Stats()
        self.queue = PromptQueue(self.queue_updated)
        self.interrupted = threading.Event()
        self.cache: dict[str, CacheEntry] = {}
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.hold_next_node = False  # set by a "hold" fault; only the worker thread reads it
        self.number = 0
        self.lock = threading.Lock()
        self._thread = threading.Thread(target=self._worker, name="prompt-worker", daemon=True)

    # --- server-facing -----------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def queue_info(self) -> dict[str, Any]:
        return {"exec_info": {"queue_remaining": self.queue.remaining()}}

    def queue_updated(self) -> None:
        self.hub.send("status", {"status": self.queue_info()}, None)

    def next_number(self, front: bool) -> int:
        with self.lock:
            number = self.number
            self.number += 1
        return -number if front else number

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Global, or only if ``prompt_id`` is running (the transcript's targeted no-op)."""
        if prompt_id and prompt_id not in self.queue.running_ids():
            log(f"Prompt {prompt_id} is not currently running, skipping interrupt")
            return False
        log(f"Interrupting prompt {prompt_id}" if prompt_id else "Global interrupt")
        self.interrupted.set()
        return True

    def arm(self, kind: str, after_node: int) -> None:
        with self.lock:
            self.fault = Fault(kind, after_node)

    # --- the worker --------------------------------------------------------------------------

    def _worker(self) -> None:
        while True:
            item, task_id = self.queue.get()
            with self.lock:
                self.stats.prompts_executed += 1
                if self.stats.device == "cpu":
                    self.stats.prompts_on_cpu += 1
                fault, self.fault = self.fault, Fault()
            started = time.perf_counter()
            self.hub.mute_sockets(False)  # a mute-socket fault lasts one job
            success, messages, result = self.execute(item, fault)
            status = {
                "status_str": "success" if success else "error",
                "completed": success,
                "messages": messages,
            }
            self.queue.task_done(task_id, result, status)
            if self.client_id is not None:
                self.hub.send(
                    "executing", {"node": None, "prompt_id": item.prompt_id}, self.client_id
                )
            log(f"Prompt executed in {time.perf_counter() - started:.2f} seconds")

    def _fire(self, fault: Fault, item: QueueItem, visited: int) -> None:
        item.answered.wait(5.0)
        prompt_id = item.prompt_id
        if fault.kind == "drop-socket":
            log(f"[stand-in] fault drop-socket: closing every websocket (prompt {prompt_id})")
            self.hub.drop_sockets()
        elif fault.kind == "die":
            print(
                f"[stand-in] fault die: exiting mid-job (prompt {prompt_id}, after node {visited})",
                file=sys.stderr,
                flush=True,
            )
            os._exit(1)
        elif fault.kind == "mute-socket":
            log(f"[stand-in] fault mute-socket: no more events for prompt {prompt_id}")
            self.hub.mute_sockets(True)  # sockets stay open; history still advances
        elif fault.kind == "stall":
            log(f"[stand-in] fault stall: prompt {prompt_id} will never finish")
            threading.Event().wait()  # forever; HTTP and sockets stay up
        elif fault.kind == "hold":
            log(f"[stand-in] fault hold: prompt {prompt_id}'s next node runs until interrupted")
            self.hold_next_node = True

    def _signatures(self, prompt: dict[str, Any]) -> dict[str, str]:
        """Cache keys: class, IS_CHANGED, sorted inputs, and the keys of linked ancestors."""
        sigs: dict[str, str] = {}

        def sig(node_id: str, seen: frozenset[str]) -> str:
            if node_id in sigs:
                return sigs[node_id]
            if node_id in seen:
                raise ValueError("cycle")
            node = prompt[node_id]
            nodedef = self.nodes[node["class_type"]]
            inputs = node.get("inputs", {})
            parts: list[Any] = [node["class_type"]]
            if nodedef.is_changed is not None:
                parts.append(nodedef.is_changed(self.folders, inputs))
            for name in sorted(inputs):
                value = inputs[name]
                if isinstance(value, list) and len(value) == 2 and value[0] in prompt:
                    parts.append([name, "link", sig(value[0], seen | {node_id}), value[1]])
                else:
                    parts.append([name, value])
            sigs[node_id] = json.dumps(parts, sort_keys=True, default=str)
            return sigs[node_id]

        for node_id in prompt:
            try:
                sig(node_id, frozenset())
            except Exception:
                sigs[node_id] = f"uncacheable:{node_id}:{time.monotonic_ns()}"
        return sigs

    def execute(
        self, item: QueueItem, fault: Fault
    ) -> tuple[bool, list[list[Any]], dict[str, Any]]:
        """Run one prompt; returns (success, status messages, {"outputs", "meta"})."""
        prompt_id, prompt = item.prompt_id, item.prompt
        self.interrupted.clear()
        self.hold_next_node = False
        self.client_id = item.extra_data.get("client_id")
        messages: list[list[Any]] = []

        def add_message(event: str, data: dict[str, Any], broadcast: bool) -> None:
            data = {**data, "timestamp": now_ms()}
            messages.append([event, data])
            if self.client_id is not None or broadcast:
                self.hub.send(event, data, self.client_id)

        add_message("execution_start", {"prompt_id": prompt_id}, False)
        sigs = self._signatures(prompt)
        wanted = set(sigs.values())
        self.cache = {k: v for k, v in self.cache.items() if k in wanted}
        cached_nodes = [n for n in prompt if sigs[n] in self.cache]
        add_message("execution_cached", {"nodes": cached_nodes, "prompt_id": prompt_id}, False)

        # ComfyUI sends a set here (order by hash); transcript 11 happened to show it reversed.
        current_outputs = list(reversed(list(prompt)))
        states: dict[str, dict[str, Any]] = {}

        def progress_state() -> None:
            nodes = {
                nid: {
                    **st,
                    "node_id": nid,
                    "prompt_id": prompt_id,
                    "display_node_id": nid,
                    "parent_node_id": None,
                    "real_node_id": nid,
                }
                for nid, st in states.items()
            }
            self.hub.send(
                "progress_state", {"prompt_id": prompt_id, "nodes": nodes}, self.client_id
            )

        def start_progress(nid: str) -> None:
            states[nid] = {"value": 0.0, "max": 1.0, "state": "running"}
            progress_state()

        def finish_progress(nid: str) -> None:
            st = states.setdefault(nid, {"value": 0.0, "max": 1.0, "state": "running"})
            st.update(value=st["max"], state="finished")
            progress_state()

        ui_outputs: dict[str, dict[str, Any]] = {}
        executed: list[str] = []
        execution = ExecutionList(prompt, self.nodes, set(cached_nodes))
        for node_id in item.outputs:
            execution.add_node(node_id)
        visited = 0
        fired = fault.kind == "none"
        if not fired and fault.after_node <= 0:
            fired = True
            self._fire(fault, item, visited)
        success = True
        try:
            while not execution.is_empty():
                node_id = execution.next_node()
                self._execute_node(
                    prompt_id,
                    prompt,
                    node_id,
                    sigs,
                    item.extra_data,
                    ui_outputs,
                    executed,
                    start_progress,
                    finish_progress,
                    progress_state,
                    states,
                )
                execution.complete(node_id)
                visited += 1
                if not fired and visited >= fault.after_node:
                    fired = True
                    self._fire(fault, item, visited)
        except ExecutionFailed as failure:
            success = False
            class_type = prompt[failure.node_id]["class_type"]
            done = list(reversed(executed))
            if isinstance(failure.cause, InterruptProcessing):
                log("Processing interrupted")
                add_message(
                    "execution_interrupted",
                    {
                        "prompt_id": prompt_id,
                        "node_id": failure.node_id,
                        "node_type": class_type,
                        "executed": done,
                    },
                    True,
                )
            else:
                add_message(
                    "execution_error",
                    {
                        "prompt_id": prompt_id,
                        "node_id": failure.node_id,
                        "node_type": class_type,
                        "executed": done,
                        **failure.details,
                        "current_outputs": current_outputs,
                    },
                    False,
                )
        else:
            if not fired:
                self._fire(fault, item, visited)
            add_message("execution_success", {"prompt_id": prompt_id}, False)
        result = {
            "outputs": {nid: ui["output"] for nid, ui in ui_outputs.items()},
            "meta": {nid: ui["meta"] for nid, ui in ui_outputs.items()},
        }
        self.last_node_id = None
        return success, messages, result

    def _execute_node(
        self,
        prompt_id: str,
        prompt: dict[str, Any],
        node_id: str,
        sigs: dict[str, str],
        extra_data: dict[str, Any],
        ui_outputs: dict[str, dict[str, Any]],
        executed: list[str],
        start_progress: Callable[[str], None],
        finish_progress: Callable[[str], None],
        progress_state: Callable[[], None],
        states: dict[str, dict[str, Any]],
    ) -> None:
        node = prompt[node_id]
        nodedef = self.nodes[node["class_type"]]
        meta = {"node_id": node_id, "display_node": node_id, "parent_node": None}
        meta["real_node_id"] = node_id
        hit = self.cache.get(sigs[node_id])
        if hit is not None:
            if self.client_id is not None:
                output = hit.ui.get("output") if hit.ui else None
                self.hub.send(
                    "executed",
                    {
                        "node": node_id,
                        "display_node": node_id,
                        "output": output,
                        "prompt_id": prompt_id,
                    },
                    self.client_id,
                )
            if hit.ui and hit.ui.get("output") is not None:
                ui_outputs[node_id] = {"meta": meta, "output": hit.ui["output"]}
            finish_progress(node_id)
            return

        inputs: dict[str, Any] = {}
        try:
            start_progress(node_id)
            inputs = self._input_data(prompt, node_id, sigs)
            if self.client_id is not None:
                self.last_node_id = node_id
                self.hub.send(
                    "executing",
                    {"node": node_id, "display_node": node_id, "prompt_id": prompt_id},
                    self.client_id,
                )
            if self.interrupted.is_set():
                raise InterruptProcessing()

            def report(value: int, total: int, preview: Any = None) -> None:
                if self.interrupted.is_set():
                    raise InterruptProcessing()
                value = min(value, total)
                states[node_id] = {"value": value, "max": total, "state": "running"}
                progress_state()
                with_metadata = self.hub.supports_preview_metadata(self.client_id)
                image: tuple[str, bytes] | None = None
                if preview is not None:
                    image = encode_image(preview)
                if image is not None and with_metadata:
                    meta = {
                        "node_id": node_id,
                        "prompt_id": prompt_id,
                        "display_node_id": node_id,
                        "parent_node_id": None,
                        "real_node_id": node_id,
                        "image_type": "image/png" if image[0] == "PNG" else "image/jpeg",
                    }
                    blob = json.dumps(meta).encode("utf-8")
                    self.hub.send_binary(
                        PREVIEW_IMAGE_WITH_METADATA,
                        struct.pack(">I", len(blob)) + blob + image[1],
                        self.client_id,
                    )
                self.hub.send(
                    "progress",
                    {"value": value, "max": total, "prompt_id": prompt_id, "node": node_id},
                    self.client_id,
                )
                if image is not None and not with_metadata:
                    kind = 2 if image[0] == "PNG" else 1
                    self.hub.send_binary(
                        PREVIEW_IMAGE, struct.pack(">I", kind) + image[1], self.client_id
                    )

            ctx = RunContext(
                folders=self.folders,
                prompt=prompt,
                extra_pnginfo=extra_data.get("extra_pnginfo"),
                disable_metadata=self.disable_metadata,
                interrupted=self.interrupted,
                report_progress=report,
            )
            if self.hold_next_node:
                self.hold_next_node = False
                self.interrupted.wait(HOLD_LIMIT_S)  # returns, not raises: the next node does
            elif self.node_seconds > 0:
                time.sleep(self.node_seconds)  # a heavy node: not interruptible inside
            result: NodeResult = nodedef.run(ctx, inputs)
        except InterruptProcessing as iex:
            raise ExecutionFailed(node_id, iex, {}) from iex
        except Exception as ex:
            typ, _, tb = sys.exc_info()
            assert typ is not None
            print(f"!!! Exception during processing !!! {ex}", file=sys.stderr, flush=True)
            traceback.print_exc()
            details = {
                "exception_message": f"{ex}\n",
                "exception_type": full_type_name(typ),
                "traceback": traceback.format_tb(tb),
                "current_inputs": {k: [describe(v)] for k, v in inputs.items()},
            }
            raise ExecutionFailed(node_id, ex, details) from ex

        if result.ui:
            ui_outputs[node_id] = {"meta": meta, "output": result.ui}
            if self.client_id is not None:
                self.hub.send(
                    "executed",
                    {
                        "node": node_id,
                        "display_node": node_id,
                        "output": result.ui,
                        "prompt_id": prompt_id,
                    },
                    self.client_id,
                )
        self.cache[sigs[node_id]] = CacheEntry(
            result.outputs, {"output": result.ui} if result.ui else None
        )
        finish_progress(node_id)
        executed.append(node_id)

    def _input_data(
        self, prompt: dict[str, Any], node_id: str, sigs: dict[str, str]
    ) -> dict[str, Any]:
        node = prompt[node_id]
        types = self.nodes[node["class_type"]].input_types(self.folders)
        data: dict[str, Any] = {}
        declared = {**types.get("required", {}), **types.get("optional", {})}
        for name, value in node["inputs"].items():
            if name not in declared:
                continue  # ComfyUI passes only declared inputs (others still change the cache key)
            if isinstance(value, list) and len(value) == 2:
                entry = self.cache.get(sigs.get(value[0], ""))
                if entry is None:
                    raise RuntimeError(
                        f"input {name!r} of node {node_id}: {value[0]} has no output"
                    )
                data[name] = entry.outputs[value[1]]
            else:
                data[name] = value
        for name, spec in types.get("optional", {}).items():
            if name not in data and len(spec) > 1 and "default" in spec[1]:
                data[name] = spec[1]["default"]
        return data
