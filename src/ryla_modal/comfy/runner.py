"""Run one job end to end on a ComfyUI server: fetch, upload, submit, follow, collect.

The same code runs inside the Modal container and behind ``ryla serve``.  The job id is
ComfyUI's ``prompt_id``, which makes a retried job safe: if ComfyUI already knows the prompt
(queued, running or finished) it is followed or collected, never submitted a second time.

Every output kind is collected: files any output node lists in its history entry (images, gifs,
video, audio, 3d...), ``temp`` previews when asked, strings under ``text`` (PreviewAny) as text
outputs, and the images ``SaveImageWebsocket`` sends as binary websocket frames instead of
writing a file.  Inputs given by URL are fetched (``fetch.py``) before anything is submitted.

Example::

    runner = ComfyRunner(comfy.base_url, process=comfy, work_dir=Path("out"))
    result = runner.run(workflow, job_id=str(uuid.uuid4()), on_progress=print)
    for f in result.outputs:
        print(f.node_id, f.path, f.sha256)
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import io
import mimetypes
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ryla_modal import defaults
from ryla_modal.comfy.api import (
    TERMINAL_EVENTS,
    BinaryFrame,
    ComfyAPI,
    EventStream,
    JobDetached,
    OutputRef,
    SocketClosed,
    TextOutput,
    follow_prompt,
    node_sort_key,
    output_refs,
    output_texts,
    raise_for_history,
)
from ryla_modal.comfy.events import EventHub
from ryla_modal.comfy.process import ComfyProcess
from ryla_modal.errors import (
    ComfyUINotReached,
    ComfyUIUnavailable,
    JobCancelled,
    OutputIntegrityError,
    WorkflowFormatError,
)
from ryla_modal.fetch import FetchRules, fetch_url
from ryla_modal.outputs import safe_basename, save_stream

#: Extensions the stdlib ``mimetypes`` table may not know, or knows differently per platform.
_EXTRA_MIME = {
    ".webp": "image/webp",
    ".webm": "video/webm",
    ".mp4": "video/mp4",
    ".mov": "video/quicktime",
    ".mkv": "video/x-matroska",
    ".gif": "image/gif",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".flac": "audio/flac",
    ".wav": "audio/wav",
    ".mp3": "audio/mpeg",
    ".ogg": "audio/ogg",
    ".opus": "audio/ogg",  # Ogg Opus (RFC 7845); browsers play it as audio/ogg
    ".json": "application/json",
    ".txt": "text/plain",
    ".glb": "model/gltf-binary",
    ".gltf": "model/gltf+json",
    ".obj": "model/obj",
    ".stl": "model/stl",
    ".ply": "application/x-ply",
    ".fbx": "application/octet-stream",
    ".m4a": "audio/mp4",
    ".aac": "audio/aac",
    ".svg": "image/svg+xml",
    ".safetensors": "application/octet-stream",
}

#: Node classes that send their images as binary websocket frames and write no file.
WEBSOCKET_IMAGE_NODES = frozenset({"SaveImageWebsocket"})
_IMAGE_EXT = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
TEXT_MIME = "text/plain; charset=utf-8"

#: The input key the runner adds to sink nodes when ``delete_outputs`` is on; ComfyUI ignores
#: inputs its node does not declare, but they change the node's cache signature.
UNCACHE_INPUT = "ryla_job_id"

#: Node types whose execution is reading model weights: their time is ``model_load``, not
#: ``executing``.  Prefixes, so variants (``CheckpointLoaderSimple``, ``UnetLoaderGGUF``) count.
MODEL_LOADER_PREFIXES: tuple[str, ...] = (
    "CheckpointLoader",
    "ImageOnlyCheckpointLoader",
    "unCLIPCheckpointLoader",
    "LoraLoader",
    "UNETLoader",
    "UnetLoader",
    "VAELoader",
    "CLIPLoader",
    "DualCLIPLoader",
    "TripleCLIPLoader",
    "QuadrupleCLIPLoader",
    "CLIPVisionLoader",
    "ControlNetLoader",
    "DiffControlNetLoader",
    "UpscaleModelLoader",
    "StyleModelLoader",
    "GLIGENLoader",
    "HypernetworkLoader",
    "PhotoMakerLoader",
    "DiffusersLoader",
)


def is_model_loader(node_type: str | None) -> bool:
    """Whether a node's run is spent loading a model (see ``MODEL_LOADER_PREFIXES``)."""
    if not node_type:
        return False
    return node_type.startswith(MODEL_LOADER_PREFIXES) or node_type.endswith("ModelLoader")


@dataclass(frozen=True)
class InputFile:
    """A file the workflow loads by name (LoadImage & co.), uploaded before submitting."""

    name: str
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class InputURL:
    """A file the workflow loads by name, fetched by the worker from ``url`` before submitting.

    ``sha256`` set: the fetched bytes must match it, or the job fails before it runs.
    """

    name: str
    url: str = field(repr=False)  # presigned URLs carry secrets; see netsafety.redact_url
    sha256: str | None = None


JobInput = InputFile | InputURL


@dataclass(frozen=True)
class RunnerProgress:
    """Where one run is, as the runner reports it to its ``on_progress`` callback."""

    phase: str  # "uploading_inputs" | "executing" | "collecting_outputs" | "done"
    node_id: str | None = None
    node_type: str | None = None
    nodes_done: int = 0
    nodes_total: int = 0
    step: int | None = None
    steps: int | None = None


@dataclass(frozen=True)
class OutputFile:
    index: int
    node_id: str
    filename: str  # a safe basename of ComfyUI's file name (never a path)
    subfolder: str
    type: str  # ComfyUI folder type (output/temp)
    kind: str  # the history key it came from: "images", "gifs", "audio", "3d", "text", ...
    mime: str
    size: int
    sha256: str
    path: Path | None = None
    data: bytes | None = field(default=None, repr=False)
    text: str | None = None  # a text output's string (its file holds the same, UTF-8)


@dataclass
class RunTimings:
    """Seconds spent in each step of one run; the steps do not overlap, so they add up."""

    #: fetching the inputs given by URL (None: the job had none)
    fetching_inputs: float | None = None
    uploading_inputs: float = 0.0
    #: submitted, waiting in ComfyUI's own queue behind other prompts
    waiting_in_comfyui: float = 0.0
    executing: float = 0.0
    #: downloading the output files from ComfyUI
    collecting_outputs: float = 0.0
    #: the part of execution spent in model loader nodes (None: no loader ran, e.g. cached)
    model_load: float | None = None


@dataclass(frozen=True)
class RunResult:
    job_id: str
    outputs: list[OutputFile]
    timings: RunTimings
    #: the workflow's node count: what progress reports as ``nodes_total``
    nodes_total: int = 0


ProgressCallback = Callable[[RunnerProgress], None]


def guess_mime(filename: str, content_type: str | None = None) -> str:
    """MIME type from the extension; the server's content-type only when the name says nothing."""
    ext = Path(filename).suffix.lower()
    if ext in _EXTRA_MIME:
        return _EXTRA_MIME[ext]
    guessed, _ = mimetypes.guess_type(filename, strict=False)
    if guessed:
        return guessed
    if content_type:
        return content_type.split(";", 1)[0].strip() or "application/octet-stream"
    return "application/octet-stream"


def stored_input_name(name: str, data: bytes) -> str:
    """The name an input file gets in ComfyUI's shared input folder: its content chooses it.

    Every web upload is called ``image.png``: two jobs sending different files under one name
    must not overwrite each other between upload and execution.  The same file twice maps to
    the same name, which ComfyUI keeps instead of rewriting (``overwrite=false``, same hash).
    """
    return f"ryla-{hashlib.sha256(data).hexdigest()[:16]}-{name}"


def with_input_names(workflow: Mapping[str, Any], renames: Mapping[str, str]) -> dict[str, Any]:
    """A copy of ``workflow`` whose node inputs naming an uploaded file name its stored copy."""
    wf = copy.deepcopy(dict(workflow))
    for node in wf.values():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        if not isinstance(inputs, dict):
            continue
        for key, value in inputs.items():
            if isinstance(value, str) and value in renames:
                inputs[key] = renames[value]
    return wf


def _plain_file_name(name: object) -> bool:
    """One path component (no folders, no ``..``, no control characters), as ComfyUI names it."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "/" not in name
        and "\\" not in name
        and name.isprintable()
        and len(name.encode("utf-8")) <= 255
    )


def uncache_sinks(workflow: Mapping[str, Any], job_id: str) -> dict[str, Any]:
    """A copy of ``workflow`` whose sink nodes (output nodes) carry the job id as an extra input.

    ComfyUI caches output nodes too: an identical rerun reports the previous job's files.
    When those were deleted after collection, the rerun would point at nothing, so with
    ``delete_outputs`` each job makes its output nodes run (and write) again; upstream nodes
    stay cached.
    """
    wf = copy.deepcopy(dict(workflow))
    linked: set[str] = set()
    for node in wf.values():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        for value in (inputs or {}).values():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
                linked.add(str(value[0]))
    for node_id, node in wf.items():
        if isinstance(node, dict) and str(node_id) not in linked:
            inputs = node.setdefault("inputs", {})
            if isinstance(inputs, dict):
                inputs[UNCACHE_INPUT] = job_id
    return wf


class _ProgressTracker:
    """Turns ComfyUI events into RunnerProgress values (nodes done/total, sampler steps)."""

    def __init__(
        self,
        workflow: Mapping[str, Any],
        emit: Callable[[RunnerProgress], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.workflow = workflow
        self.total = len(workflow)
        self.emit = emit
        self.clock = clock
        self.done: set[str] = set()
        self.current: str | None = None
        self.step: int | None = None
        self.steps: int | None = None
        self.started_at: float | None = None
        #: seconds spent in model loader nodes (ComfyUI says `executing` when each node starts)
        self.model_load: float | None = None
        self._running: tuple[str, float] | None = None  # the node running now, since when

    def _node_started(self, node: str | None) -> None:
        """Close the running node's span (a loader's counts as model load), open the next."""
        now = self.clock()
        if self._running is not None:
            ran, since = self._running
            if is_model_loader(self.node_type(ran)):
                self.model_load = (self.model_load or 0.0) + max(0.0, now - since)
        self._running = None if node is None else (node, now)

    def node_type(self, node_id: str | None) -> str | None:
        node = self.workflow.get(node_id) if node_id is not None else None
        return str(node.get("class_type")) if isinstance(node, dict) else None

    def finished(self) -> None:
        """The prompt ended (its events may have stopped short): close the last span."""
        if self._running is not None:
            self._node_started(None)

    def progress(self) -> RunnerProgress:
        return RunnerProgress(
            phase="executing",
            node_id=self.current,
            node_type=self.node_type(self.current),
            nodes_done=min(len(self.done), self.total),
            nodes_total=self.total,
            step=self.step,
            steps=self.steps,
        )

    def on_event(self, kind: str, data: Mapping[str, Any]) -> None:
        if kind == "execution_start":
            self.started_at = self.clock()
        elif kind == "execution_cached":
            nodes = data.get("nodes")
            if isinstance(nodes, list):
                self.done.update(str(n) for n in nodes if n is not None)
        elif kind == "executing":
            node = data.get("node")
            self._node_started(None if node is None else str(node))
            if self.current is not None:
                self.done.add(self.current)
            self.current = None if node is None else str(node)
            self.step = self.steps = None
            if node is None:
                return
        elif kind == "progress":
            try:
                self.step, self.steps = int(data["value"]), int(data["max"])
            except (KeyError, TypeError, ValueError):
                return
            node = data.get("node")
            if node is not None:
                self.current = str(node)
        elif kind == "executed":
            node = data.get("node")
            if node is not None:
                self.done.add(str(node))
        else:
            return
        self.emit(self.progress())


class _SocketImages:
    """The images websocket-saving nodes send during one job, and whether none can be missing.

    A frame belongs to node X when it arrives between ``executing X`` and the next ``executing``
    (or the end) of our prompt; event 4 frames also name their prompt and node, which must agree.
    Latent previews of other nodes (KSampler) arrive the same way and are left out.  Nothing
    else keeps these images, so a node whose run was not watched on one unbroken socket lost
    some: ``missing()`` names it and the job fails instead of succeeding with fewer outputs.
    """

    def __init__(self, workflow: Mapping[str, Any], job_id: str, node_types: frozenset[str]):
        self.job_id = job_id
        self.nodes = {
            str(nid)
            for nid, node in workflow.items()
            if isinstance(node, dict) and node.get("class_type") in node_types
        }
        self.current: str | None = None
        self.clean = False
        self.complete: set[str] = set()
        self.frames: list[tuple[str, str, bytes]] = []  # (node_id, mime, bytes)

    def on_event(self, kind: str, data: Mapping[str, Any]) -> None:
        if kind == "executing":
            self._end()
            node = data.get("node")
            if node is not None:
                self.current, self.clean = str(node), True
        elif kind in TERMINAL_EVENTS:
            self._end()

    def _end(self) -> None:
        if self.current is not None and self.clean:
            self.complete.add(self.current)
        self.current = None

    def on_socket_lost(self) -> None:
        self.clean = False  # the node running now may have sent frames nobody received

    def on_frame(self, frame: BinaryFrame) -> None:
        if frame.mime is None or self.current not in self.nodes:
            return
        if frame.prompt_id is not None and frame.prompt_id != self.job_id:
            return
        if frame.node_id is not None and frame.node_id != self.current:
            return
        self.frames.append((self.current, frame.mime, frame.data))

    def missing(self) -> list[str]:
        return sorted(self.nodes - self.complete, key=node_sort_key)


class ComfyRunner:
    """Runs jobs on one ComfyUI server; safe to share between threads (one job per call).

    ``work_dir`` set: outputs are streamed to ``work_dir/<job_id>/``; else kept as bytes.
    ``include_temp``: also collect PreviewImage-style files from ComfyUI's temp folder (the
    default for ``run(previews=None)``).  ``fetch_rules``: how inputs given by URL are fetched
    (address rules, size cap, deadline).  ``websocket_nodes``: node classes whose images arrive
    as binary websocket frames.
    ``delete_outputs`` (needs ``comfy_output_dir``): remove the job's files from ComfyUI's output
    folder after collecting them, so a long-lived container does not fill its disk; each job's
    output nodes then re-run even when cached (see ``uncache_sinks``).
    """

    def __init__(
        self,
        base_url: str,
        *,
        work_dir: Path | None = None,
        comfy_output_dir: Path | None = None,
        delete_outputs: bool = False,
        process: ComfyProcess | None = None,
        http_timeout: float = defaults.COMFY_HTTP_TIMEOUT_S,
        connect_timeout: float = defaults.COMFY_CONNECT_TIMEOUT_S,
        include_temp: bool = False,
        history_poll_s: float = defaults.COMFY_HISTORY_POLL_S,
        default_timeout_s: float = defaults.EXECUTION_TIMEOUT_S,
        fetch_rules: FetchRules | None = None,
        websocket_nodes: frozenset[str] = WEBSOCKET_IMAGE_NODES,
    ) -> None:
        if delete_outputs and comfy_output_dir is None:
            raise ValueError("delete_outputs=True needs comfy_output_dir (ComfyUI's output folder)")
        self.api = ComfyAPI(base_url, http_timeout=http_timeout, connect_timeout=connect_timeout)
        #: One socket for all of this runner's prompts (they are submitted under its client id).
        self.events = EventHub(self.api)
        self._queue_lock = threading.Lock()
        #: Prompt ids in ComfyUI's queue when this runner first looked (None: not looked yet).
        self._queued_at_first_look: frozenset[str] | None = None
        #: Prompts this runner submitted that have no history entry in its hands yet.
        self._in_flight: set[str] = set()
        self.work_dir = work_dir
        self.comfy_output_dir = comfy_output_dir
        self.delete_outputs = delete_outputs
        self.process = process
        self.include_temp = include_temp
        self.history_poll_s = history_poll_s
        self.default_timeout_s = default_timeout_s
        self.fetch_rules = fetch_rules or FetchRules()
        self.websocket_nodes = websocket_nodes

    def close(self) -> None:
        self.events.close()
        self.api.close()

    def __enter__(self) -> ComfyRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def interrupt(self, job_id: str) -> None:
        """Stop a job: drop it from ComfyUI's queue, interrupt it if it is running."""
        self.api.cancel(job_id)

    # --- one job ------------------------------------------------------------------------------

    def run(
        self,
        workflow: Mapping[str, Any],
        *,
        job_id: str,
        inputs: Sequence[JobInput] = (),
        on_progress: ProgressCallback | None = None,
        timeout_s: float | None = None,
        cancel: threading.Event | None = None,
        previews: bool | None = None,
        detach: threading.Event | None = None,
    ) -> RunResult:
        """Run ``workflow`` as prompt ``job_id`` and collect every output.

        ``previews``: also collect ``temp`` files (PreviewImage); None: the runner's default.
        Raises InputFetchError (before anything is submitted), WorkflowValidationError,
        ExecutionError, JobCancelled, ComfyUIUnavailable, ExecutionTimeout (with ``job_id``) or
        OutputIntegrityError; JobDetached when ``detach`` is set (the server stops, leaving the
        prompt to ComfyUI and the next start).
        """
        if not job_id:
            raise ValueError("job_id must be a non-empty string")
        started = time.monotonic()
        deadline = started + (self.default_timeout_s if timeout_s is None else timeout_s)
        timings = RunTimings()
        emit = _safe_emitter(on_progress)
        tracker = _ProgressTracker(workflow, emit)
        sent = _SocketImages(workflow, job_id, self.websocket_nodes)

        try:
            entry = self._submit_and_follow(
                workflow, job_id, inputs, deadline, tracker, timings, cancel, emit, sent, detach
            )
        except ComfyUIUnavailable as exc:
            explained = self._explain(exc)
            if explained is exc:
                raise
            if isinstance(exc, ComfyUINotReached):  # a dead process, and still nothing sent
                explained = ComfyUINotReached.of(explained)
            raise explained from exc
        t_exec_end = time.monotonic()
        with self._queue_lock:
            self._in_flight.discard(job_id)  # in the history now, where the next look finds it
        raise_for_history(entry, job_id=job_id)
        lost = sent.missing()
        if lost:
            raise OutputIntegrityError(
                f"job {job_id}: node(s) {', '.join(lost)} send their images over the websocket"
                " (SaveImageWebsocket), and this run did not hold the socket for all of it (it"
                " dropped, or the job was already running); those images are lost",
                hint="run the job again with a new job_id",
            )

        emit(
            RunnerProgress(
                phase="collecting_outputs", nodes_done=tracker.total, nodes_total=tracker.total
            )
        )
        include_temp = self.include_temp if previews is None else previews
        try:
            outputs = self._collect(entry, job_id, include_temp, sent.frames)
        except ComfyUIUnavailable as exc:
            raise self._explain(exc) from exc
        if self.delete_outputs:
            self._delete_from_comfy(entry)
        timings.collecting_outputs = time.monotonic() - t_exec_end
        emit(RunnerProgress(phase="done", nodes_done=tracker.total, nodes_total=tracker.total))
        return RunResult(job_id=job_id, outputs=outputs, timings=timings, nodes_total=tracker.total)

    def _submit_and_follow(
        self,
        workflow: Mapping[str, Any],
        job_id: str,
        inputs: Sequence[JobInput],
        deadline: float,
        tracker: _ProgressTracker,
        timings: RunTimings,
        cancel: threading.Event | None,
        emit: Callable[[RunnerProgress], None],
        sent: _SocketImages,
        detach: threading.Event | None = None,
    ) -> dict[str, Any]:
        check_alive = self.process.check_alive if self.process is not None else None
        with _before_submit():
            if check_alive is not None:
                check_alive()  # a ComfyUI that died since the last job is reported before this
            # Idempotency: ComfyUI does not check prompt_id uniqueness, so we do.  The queue
            # first, then the history: a prompt moves from one to the other (atomically, never
            # back), so asking in this order cannot miss one that finishes between the two.
            queued = self.api.queue_state(job_id) if self._may_be_queued(job_id) else None
            entry = self.api.history(job_id) if queued is None else None
        if queued is None:
            if entry is not None:
                return entry
        else:
            # Queued or running from an earlier attempt: follow it; its events go elsewhere.
            t0 = time.monotonic()
            emit(tracker.progress())
            entry = follow_prompt(
                self.api,
                job_id,
                socket=None,
                deadline=deadline,
                check_alive=check_alive,
                cancel=cancel,
                poll_s=self.history_poll_s,
                on_socket_lost=sent.on_socket_lost,
                detach=detach,
            )
            timings.executing = time.monotonic() - t0
            return entry

        t0 = time.monotonic()
        prompt = dict(workflow)
        if inputs:
            emit(RunnerProgress(phase="uploading_inputs", nodes_total=tracker.total))
            files = self._fetch(inputs, deadline)
            if any(isinstance(item, InputURL) for item in inputs):
                timings.fetching_inputs = time.monotonic() - t0
                t0 = time.monotonic()
            with _before_submit():
                prompt = with_input_names(prompt, self._upload(files))
        timings.uploading_inputs = time.monotonic() - t0

        if cancel is not None and cancel.is_set():
            raise JobCancelled(f"job {job_id} was cancelled before it was submitted", job_id=job_id)
        if detach is not None and detach.is_set():
            raise JobDetached(job_id, submitted=False)
        if self.delete_outputs:
            prompt = uncache_sinks(prompt, job_id)

        def subscribe(open_timeout: float) -> EventStream:
            return self.events.subscribe(job_id, open_timeout=open_timeout)

        socket: EventStream | None
        try:
            socket = subscribe(defaults.COMFY_WS_OPEN_TIMEOUT_S)  # before submitting: none missed
        except SocketClosed:
            socket = None  # follow_prompt polls /history and keeps trying to reconnect
        try:
            t_submit = time.monotonic()
            self._submit(prompt, job_id, self.events.client_id)
            emit(tracker.progress())
            entry = follow_prompt(
                self.api,
                job_id,
                socket=socket,
                reopen=subscribe,
                deadline=deadline,
                on_event=_both(tracker.on_event, sent.on_event),
                check_alive=check_alive,
                cancel=cancel,
                poll_s=self.history_poll_s,
                on_frame=sent.on_frame,
                on_socket_lost=sent.on_socket_lost,
                detach=detach,
            )
        finally:
            if socket is not None:
                socket.close()
        end = time.monotonic()
        tracker.finished()
        began = t_submit if tracker.started_at is None else max(t_submit, tracker.started_at)
        timings.waiting_in_comfyui = began - t_submit
        span = end - began
        if tracker.model_load is not None:  # a part of the execution span, never more than it
            timings.model_load = min(tracker.model_load, span)
        timings.executing = span - (timings.model_load or 0.0)
        return entry

    def _may_be_queued(self, job_id: str) -> bool:
        """Whether ComfyUI's queue can hold ``job_id`` already, so GET /queue must be asked.

        /queue answers with every pending prompt whole, so asking it for each of N jobs in
        flight costs N² (under load, the largest cost per job).  A prompt can be in the queue
        only if it was there when this runner first looked, or this runner submitted it since
        and has not seen it end: a server's earlier process submitted before this one started,
        and ComfyUI restarted empties the queue.  Those are the ids asked about; for the rest,
        the history (asked next, for every job) settles it.
        """
        with self._queue_lock:
            if job_id in self._in_flight:
                return True
            if self._queued_at_first_look is None:
                # ComfyUIUnavailable: the caller explains it
                self._queued_at_first_look = frozenset(self.api.queued())
            return job_id in self._queued_at_first_look

    def _submit(self, prompt: Mapping[str, Any], job_id: str, client_id: str) -> None:
        with self._queue_lock:
            self._in_flight.add(job_id)  # before sending: a lost answer may hide a queued prompt
        try:
            self.api.submit(prompt, prompt_id=job_id, client_id=client_id)
        except ComfyUIUnavailable:
            # The POST may have landed before the connection broke: never submit twice.
            with contextlib.suppress(ComfyUIUnavailable):
                if self.api.queue_state(job_id) or self.api.history(job_id) is not None:
                    return
            raise

    def _fetch(self, inputs: Sequence[JobInput], deadline: float) -> list[InputFile]:
        """Every input as bytes: URLs fetched under the rules, all before any upload."""
        files: list[InputFile] = []
        for item in inputs:
            if isinstance(item, InputFile):
                files.append(item)
                continue
            rules = self.fetch_rules
            left = deadline - time.monotonic()
            if left < rules.timeout_s:
                rules = dataclasses.replace(rules, timeout_s=max(0.1, left))
            data = fetch_url(item.url, name=item.name, rules=rules, expected_sha256=item.sha256)
            files.append(InputFile(item.name, data))
        return files

    def _upload(self, inputs: Sequence[InputFile]) -> dict[str, str]:
        """Upload each input under its content-chosen name; returns {name: stored name}."""
        renames: dict[str, str] = {}
        for item in inputs:
            name = item.name
            if not name or safe_basename(name, fallback="") != name:
                raise WorkflowFormatError(
                    "an input file name must be a plain file name (letters, digits, . _ + -)",
                    field=f"inputs[{name!r}]",
                )
            wanted = stored_input_name(name, item.data)
            result = self.api.upload_image(wanted, item.data, overwrite=False)
            stored = result.get("name")
            # ComfyUI answers "<stem> (1)<ext>" when a different file (a torn earlier write)
            # holds the name: use what it stored, as long as it is a plain name of the folder.
            if not _plain_file_name(stored) or result.get("subfolder"):
                raise WorkflowFormatError(
                    f"ComfyUI stored the upload of {name!r} as {stored!r} in"
                    f" {result.get('subfolder')!r}, not as a plain file of its input folder",
                    field=f"inputs[{name!r}]",
                )
            renames[name] = str(stored)
        return renames

    # --- outputs ------------------------------------------------------------------------------

    def _collect(
        self,
        entry: Mapping[str, Any],
        job_id: str,
        include_temp: bool,
        frames: Sequence[tuple[str, str, bytes]],
    ) -> list[OutputFile]:
        """Files, texts and websocket images, in node order (a node's files first)."""
        folder = self.work_dir / safe_basename(job_id, fallback="job") if self.work_dir else None
        items: list[OutputRef | TextOutput | tuple[str, str, bytes]] = [
            *output_refs(entry, include_temp=include_temp),
            *output_texts(entry),
            *frames,
        ]
        items.sort(key=lambda item: node_sort_key(_node_of(item)))
        outputs: list[OutputFile] = []
        per_node: dict[tuple[str, str], int] = {}
        for index, item in enumerate(items):
            if isinstance(item, OutputRef):
                outputs.append(self._download(index, item, folder))
                continue
            node_id = _node_of(item)
            kind = "text" if isinstance(item, TextOutput) else "images"
            n = per_node[(node_id, kind)] = per_node.get((node_id, kind), 0) + 1
            if isinstance(item, TextOutput):
                name, mime, data = f"text_{n:05}_.txt", TEXT_MIME, item.text.encode("utf-8")
                text: str | None = item.text
            else:
                _node, mime, data = item
                name, text = f"SaveImageWebsocket_{n:05}_.{_IMAGE_EXT.get(mime, 'bin')}", None
            outputs.append(self._keep(index, node_id, kind, name, mime, data, text, folder))
        return outputs

    def _keep(
        self,
        index: int,
        node_id: str,
        kind: str,
        name: str,
        mime: str,
        data: bytes,
        text: str | None,
        folder: Path | None,
    ) -> OutputFile:
        """An output that exists only in memory (a text, a websocket image), kept like a file."""
        path: Path | None = None
        if folder is not None:
            node = safe_basename(node_id, max_len=16, fallback="node")
            path, sha, size = save_stream(folder, f"{node}_{name}", [data])
        else:
            sha, size = hashlib.sha256(data).hexdigest(), len(data)
        return OutputFile(
            index=index,
            node_id=node_id,
            filename=name,
            subfolder="",
            type="text" if kind == "text" else "websocket",
            kind=kind,
            mime=mime,
            size=size,
            sha256=sha,
            path=path,
            data=None if folder is not None else data,
            text=text,
        )

    def _download(self, index: int, ref: OutputRef, folder: Path | None) -> OutputFile:
        local_name = safe_basename(ref.filename)
        with self.api.view(ref) as resp:
            length = resp.headers.get("content-length")
            expected = int(length) if length and length.isdigit() else None
            content_type = resp.headers.get("content-type")
            chunks = resp.iter_bytes(defaults.COMFY_DOWNLOAD_CHUNK_BYTES)
            path: Path | None = None
            data: bytes | None = None
            if folder is not None:
                node = safe_basename(ref.node_id, max_len=16, fallback="node")
                path, sha, size = save_stream(
                    folder, f"{node}_{local_name}", chunks, expected_size=expected
                )
            else:
                data, sha, size = _read_all(chunks)
                if expected is not None and size != expected:
                    raise OutputIntegrityError(
                        f"{local_name}: ComfyUI announced {expected} bytes but sent {size}"
                    )
        return OutputFile(
            index=index,
            node_id=ref.node_id,
            filename=local_name,
            subfolder=ref.subfolder,
            type=ref.type,
            kind=ref.kind,
            mime=guess_mime(ref.filename, content_type),
            size=size,
            sha256=sha,
            path=path,
            data=data,
        )

    def _delete_from_comfy(self, entry: Mapping[str, Any]) -> None:
        """Remove collected files from ComfyUI's output folder, never anything outside it."""
        assert self.comfy_output_dir is not None
        root = self.comfy_output_dir.resolve()
        for ref in output_refs(entry, include_temp=False):
            if ref.type != "output":
                continue
            candidate = (root / ref.subfolder / ref.filename).resolve()
            if candidate == root or not candidate.is_relative_to(root):
                continue  # a hostile or odd name: leave it alone
            with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
                candidate.unlink()

    # --- errors -------------------------------------------------------------------------------

    def _explain(self, exc: ComfyUIUnavailable) -> ComfyUIUnavailable:
        """Prefer "the process died (exit code, log tail)" over a bare connection error."""
        if self.process is not None:
            try:
                self.process.check_alive()
            except ComfyUIUnavailable as dead:
                return dead
        return exc


@contextlib.contextmanager
def _before_submit() -> Iterator[None]:
    """ComfyUI failing in here was sent nothing of the job yet: ComfyUINotReached says so."""
    try:
        yield
    except ComfyUIUnavailable as exc:
        raise ComfyUINotReached.of(exc) from exc


def _node_of(item: OutputRef | TextOutput | tuple[str, str, bytes]) -> str:
    return item[0] if isinstance(item, tuple) else item.node_id


def _both(
    first: Callable[[str, Mapping[str, Any]], None],
    second: Callable[[str, Mapping[str, Any]], None],
) -> Callable[[str, Mapping[str, Any]], None]:
    def both(kind: str, data: Mapping[str, Any]) -> None:
        first(kind, data)
        second(kind, data)

    return both


def _read_all(chunks: Iterator[bytes]) -> tuple[bytes, str, int]:
    buf = io.BytesIO()
    digest = hashlib.sha256()
    for chunk in chunks:
        buf.write(chunk)
        digest.update(chunk)
    data = buf.getvalue()
    return data, digest.hexdigest(), len(data)


def _safe_emitter(cb: ProgressCallback | None) -> Callable[[RunnerProgress], None]:
    """Progress callbacks must not break a job; a failing one is switched off."""
    state = {"on": cb is not None}

    def emit(p: RunnerProgress) -> None:
        if cb is None or not state["on"]:
            return
        try:
            cb(p)
        except Exception:
            state["on"] = False

    return emit


__all__ = [
    "MODEL_LOADER_PREFIXES",
    "WEBSOCKET_IMAGE_NODES",
    "ComfyRunner",
    "InputFile",
    "InputURL",
    "JobInput",
    "OutputFile",
    "RunResult",
    "RunTimings",
    "RunnerProgress",
    "guess_mime",
    "is_model_loader",
    "uncache_sinks",
]
