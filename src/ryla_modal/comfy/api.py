"""ComfyUI's own HTTP + WebSocket API, synchronous, with an explicit timeout on every call.

Shapes follow what the real server (0.3.64) was recorded doing (see the protocol transcripts):
POST /prompt with a client-made ``prompt_id``, 400 bodies with ``error`` + ``node_errors``, plain
text 500s, the WS event stream for one ``clientId``, history entries with ``status.messages``.
``follow_prompt`` waits for one prompt to finish: over the socket while it is open, by polling
/history when it drops or never opens, so a completion is never missed.  Binary frames (latent
previews, and the images ``SaveImageWebsocket`` sends instead of writing a file) are parsed as
server.py writes them and handed to the caller, who decides which ones are outputs.

It runs in a worker thread (locally) or inside a Modal method, hence synchronous.  ``websockets``
is imported lazily so importing this module stays cheap.

Example::

    api = ComfyAPI("http://127.0.0.1:8188")
    api.submit(workflow, prompt_id=job_id, client_id=cid)
    entry = follow_prompt(api, job_id, socket=None, deadline=time.monotonic() + 60)
"""

from __future__ import annotations

import contextlib
import json
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, urlsplit

import httpx

from ryla_modal import defaults
from ryla_modal._transport import DeadlineExceeded, DeadlineTransport, deadline_scope
from ryla_modal.errors import (
    ComfyUIUnavailable,
    ExecutionError,
    ExecutionTimeout,
    JobCancelled,
    OutputIntegrityError,
    WorkflowFormatError,
    WorkflowValidationError,
)
from ryla_modal.policy import Deadline

if TYPE_CHECKING:
    from websockets.sync.client import ClientConnection

TRACEBACK_TAIL_FRAMES = 6
_BODY_SNIPPET = 300
#: Messages that end a prompt (``executing`` with ``node: null`` is checked separately).
TERMINAL_EVENTS = frozenset({"execution_success", "execution_error", "execution_interrupted"})

EventCallback = Callable[[str, Mapping[str, Any]], None]
FrameCallback = Callable[["BinaryFrame"], None]

# ComfyUI's binary websocket events (protocol.py ``BinaryEventTypes``): 4 bytes, big-endian.
PREVIEW_IMAGE = 1  # then 4 bytes of image type (1 JPEG, 2 PNG), then the image
TEXT = 3  # then a 4-byte node id length, the node id, the text
PREVIEW_IMAGE_WITH_METADATA = 4  # then a 4-byte JSON length, the JSON, the image
_IMAGE_TYPES = {1: "image/jpeg", 2: "image/png"}
#: The first message on a socket: ask for event 4, whose metadata names the prompt and node.
FEATURE_FLAGS = {"type": "feature_flags", "data": {"supports_preview_metadata": True}}
#: History keys whose lists of strings are text outputs (PreviewAny, ShowText and the like).
TEXT_KEYS = frozenset({"text"})


@dataclass(frozen=True)
class OutputRef:
    """One file an output node reported: where ComfyUI keeps it and under which key."""

    node_id: str
    kind: str  # the history key: "images", "gifs", "audio", "video", ...
    filename: str
    subfolder: str
    type: str  # ComfyUI folder type: "output" or "temp"


@dataclass(frozen=True)
class TextOutput:
    """One string an output node reported (``PreviewAny`` gives ``{"text": [value]}``)."""

    node_id: str
    kind: str  # the history key: "text"
    text: str


@dataclass(frozen=True)
class BinaryFrame:
    """One binary websocket message: an image (``mime`` set) or something else we ignore.

    ``node_id``/``prompt_id`` come from event 4's metadata; a legacy event 1 frame names
    neither, and belongs to the node that was executing when it arrived.
    """

    event: int
    mime: str | None
    data: bytes = field(repr=False)
    node_id: str | None = None
    prompt_id: str | None = None


def parse_binary_frame(frame: bytes) -> BinaryFrame | None:
    """A binary message as server.py ``send_image``/``send_image_with_metadata`` write it."""
    if len(frame) < 8:
        return None
    (event,) = struct.unpack(">I", frame[:4])
    if event == PREVIEW_IMAGE:
        (image_type,) = struct.unpack(">I", frame[4:8])
        return BinaryFrame(event, _IMAGE_TYPES.get(image_type), bytes(frame[8:]))
    if event == PREVIEW_IMAGE_WITH_METADATA:
        (length,) = struct.unpack(">I", frame[4:8])
        if 8 + length > len(frame):
            return None
        try:
            meta = json.loads(bytes(frame[8 : 8 + length]))
        except ValueError:
            return None
        if not isinstance(meta, dict):
            return None
        mime = meta.get("image_type")
        return BinaryFrame(
            event,
            mime if isinstance(mime, str) else None,
            bytes(frame[8 + length :]),
            node_id=_opt_str(meta.get("node_id")),
            prompt_id=_opt_str(meta.get("prompt_id")),
        )
    return BinaryFrame(event, None, bytes(frame[4:]))


class SocketClosed(Exception):
    """The event socket is gone; the caller falls back to polling /history."""


Message = dict[str, Any] | BinaryFrame


class EventStream(Protocol):
    """What ``follow_prompt`` reads: a socket, or one prompt's share of one (comfy.events)."""

    def recv(self, timeout: float) -> Message | None: ...

    def close(self) -> None: ...


class JobDetached(Exception):
    """The server stops following a prompt it leaves to ComfyUI (``detach`` was set).

    ``submitted``: ComfyUI has the prompt, so the next server start re-adopts it by its id;
    otherwise nothing reached ComfyUI.
    """

    def __init__(self, prompt_id: str, *, submitted: bool) -> None:
        super().__init__(f"stopped following prompt {prompt_id} (submitted: {submitted})")
        self.prompt_id = prompt_id
        self.submitted = submitted


# --- pure helpers: errors and outputs from ComfyUI's answers -----------------------------------


def validation_error(status: int, body: Any) -> WorkflowValidationError:
    """Turn a rejected POST /prompt (400 JSON, or the plain-text 500) into one error."""
    if isinstance(body, dict):
        err = body.get("error")
        error: dict[str, Any] = err if isinstance(err, dict) else {"message": str(err or "")}
        node_errors_raw = body.get("node_errors")
        node_errors: dict[str, Any] = node_errors_raw if isinstance(node_errors_raw, dict) else {}
        message = str(error.get("message") or "ComfyUI rejected the workflow")
        details = str(error.get("details") or "")
        if details:
            message = f"{message}: {details}"
        exc = WorkflowValidationError(message, error=error, node_errors=node_errors)
        lines = exc.summary_lines()
        if lines:
            exc.message = message + "\n" + "\n".join(lines)
            exc.args = (exc.message,)
        return exc
    text = str(body or "").strip()
    return WorkflowValidationError(
        f"ComfyUI failed with HTTP {status} while reading the workflow"
        + (f" ({text[:_BODY_SNIPPET]})" if text else ""),
        error={"type": f"http_{status}", "message": text[:_BODY_SNIPPET]},
        hint="ComfyUI crashes like this on a UI-format workflow; export it in API format",
    )


def execution_error(data: Mapping[str, Any], *, job_id: str | None = None) -> ExecutionError:
    """An ``execution_error`` message (WS or history) as an ExecutionError."""
    node_id = _opt_str(data.get("node_id"))
    node_type = _opt_str(data.get("node_type"))
    exc_type = _opt_str(data.get("exception_type"))
    exc_msg = str(data.get("exception_message") or "").strip()
    tb = data.get("traceback")
    frames = [str(f).rstrip("\n") for f in tb] if isinstance(tb, list) else []
    where = f"node {node_id} ({node_type})" if node_id else "a node"
    message = f"{where} failed: {exc_type or 'error'}: {exc_msg or 'no message'}"
    return ExecutionError(
        message,
        job_id=job_id,
        node_id=node_id,
        node_type=node_type,
        exception_type=exc_type,
        traceback_tail=frames[-TRACEBACK_TAIL_FRAMES:],
    )


def interrupted_error(data: Mapping[str, Any], *, job_id: str | None = None) -> JobCancelled:
    node = _opt_str(data.get("node_id"))
    where = f" at node {node} ({data.get('node_type')})" if node else ""
    return JobCancelled(f"ComfyUI interrupted job {job_id}{where}", job_id=job_id)


def raise_for_history(entry: Mapping[str, Any], *, job_id: str) -> None:
    """Raise the job's error if its history entry says it failed; return if it succeeded."""
    status = entry.get("status")
    if not isinstance(status, dict):
        return  # entries without status (very old servers) only exist for finished prompts
    messages = status.get("messages")
    for item in messages if isinstance(messages, list) else []:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[1], dict)):
            continue
        kind, data = item
        if kind == "execution_error":
            raise execution_error(data, job_id=job_id)
        if kind == "execution_interrupted":
            raise interrupted_error(data, job_id=job_id)
    if status.get("status_str") == "error":
        raise ExecutionError(f"ComfyUI reported job {job_id} as failed", job_id=job_id)


def output_refs(entry: Mapping[str, Any], *, include_temp: bool = False) -> list[OutputRef]:
    """Every file of every output node in a history entry, in a stable order.

    Any list of ``{filename, subfolder, type}`` items counts (images, gifs, video, audio, ...).
    ``type: "temp"`` files (PreviewImage) are skipped unless ``include_temp``.
    """
    outputs = entry.get("outputs")
    if not isinstance(outputs, dict):
        return []
    refs: list[OutputRef] = []
    seen: set[tuple[str, str, str]] = set()
    for node_id in sorted(outputs, key=_node_sort_key):
        node_out = outputs[node_id]
        if not isinstance(node_out, dict):
            continue
        for kind, items in node_out.items():
            if not isinstance(items, list):
                continue
            for item in items:
                if not (isinstance(item, dict) and isinstance(item.get("filename"), str)):
                    continue
                folder_type = str(item.get("type") or "output")
                if folder_type == "temp" and not include_temp:
                    continue
                ref = OutputRef(
                    node_id=str(node_id),
                    kind=str(kind),
                    filename=item["filename"],
                    subfolder=str(item.get("subfolder") or ""),
                    type=folder_type,
                )
                key = (ref.filename, ref.subfolder, ref.type)
                if ref.filename and key not in seen:
                    seen.add(key)
                    refs.append(ref)
    return refs


def output_texts(entry: Mapping[str, Any]) -> list[TextOutput]:
    """Every string under a text key (``TEXT_KEYS``) of every output node, in node order."""
    outputs = entry.get("outputs")
    if not isinstance(outputs, dict):
        return []
    texts: list[TextOutput] = []
    for node_id in sorted(outputs, key=_node_sort_key):
        node_out = outputs[node_id]
        if not isinstance(node_out, dict):
            continue
        for kind, items in node_out.items():
            if kind in TEXT_KEYS and isinstance(items, list):
                texts.extend(
                    TextOutput(str(node_id), str(kind), item)
                    for item in items
                    if isinstance(item, str)
                )
    return texts


def node_sort_key(node_id: str) -> tuple[tuple[int, int | str], ...]:
    """Node ids in ComfyUI's numeric order ("10" after "9", "5:12" part by part)."""
    return _node_sort_key(node_id)


def _node_sort_key(node_id: str) -> tuple[tuple[int, int | str], ...]:
    # "10" after "9"; subgraph ids such as "5:12" sort part by part.
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in str(node_id).split(":"))


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


# --- the HTTP client --------------------------------------------------------------------------


class ComfyAPI:
    """Talks to one ComfyUI server.  Thread-safe (one httpx.Client), close() when done."""

    def __init__(
        self,
        base_url: str,
        *,
        http_timeout: float = defaults.COMFY_HTTP_TIMEOUT_S,
        connect_timeout: float = defaults.COMFY_CONNECT_TIMEOUT_S,
        min_transfer_bytes_per_s: float = defaults.COMFY_MIN_TRANSFER_BYTES_PER_S,
    ) -> None:
        """Each request must end within ``http_timeout`` in all (httpx's timeout is per read,
        which a trickle never trips), plus its upload or download at ``min_transfer_bytes_per_s``.
        """
        self.base_url = base_url.rstrip("/")
        self.http_timeout = http_timeout
        self.min_transfer_bytes_per_s = min_transfer_bytes_per_s
        self.timeout = httpx.Timeout(http_timeout, connect=connect_timeout)
        #: Announce ``supports_preview_metadata`` on each socket (off: legacy event 1 frames).
        self.preview_metadata = True
        self._client = httpx.Client(
            base_url=self.base_url,
            timeout=self.timeout,
            trust_env=False,
            transport=DeadlineTransport(verify=True),
        )
        #: The last look at the queue (when its GET began, what it found); see ``queued_since``.
        self._queue_seen: tuple[float, dict[str, str]] | None = None
        self._queue_looks = 0  # GET /queue in flight for ``queued_since``
        self._queue_cond = threading.Condition()
        #: When ComfyUI last answered a request (time.monotonic()); None after one it did not.
        #: Proof of life that ComfyMonitor.wait_up takes instead of a probe of its own.
        self.answered_at: float | None = None

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ComfyAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ---

    def _budget(self, size: int | None) -> Deadline:
        """The whole of one request: its answer, and ``size`` bytes sent or received."""
        if size is None:
            return Deadline(self.http_timeout + defaults.COMFY_UNSIZED_DOWNLOAD_S)
        return Deadline(self.http_timeout + size / self.min_transfer_bytes_per_s)

    def _request(self, method: str, path: str, *, sending: int = 0, **kw: Any) -> httpx.Response:
        """``sending``: the bytes of an upload, which get their own share of the deadline."""
        budget = self._budget(sending)
        try:
            with deadline_scope(budget):
                resp = self._client.request(method, path, timeout=self.timeout, **kw)
        except (httpx.TimeoutException, DeadlineExceeded) as exc:
            self.answered_at = None
            raise ComfyUIUnavailable(
                f"ComfyUI at {self.base_url} did not answer {method} {path} within"
                f" {budget.seconds:g} s ({exc!r})"
            ) from exc
        except httpx.HTTPError as exc:
            self.answered_at = None
            raise ComfyUIUnavailable(
                f"cannot reach ComfyUI at {self.base_url} ({method} {path}): {exc!r}"
            ) from exc
        self._heard(resp)
        return resp

    def _heard(self, resp: httpx.Response) -> None:
        # A 5xx may be a proxy in front saying ComfyUI is gone: not proof of life.
        self.answered_at = time.monotonic() if resp.status_code < 500 else None

    def _json(self, resp: httpx.Response, what: str) -> Any:
        if resp.status_code != 200:
            raise ComfyUIUnavailable(
                f"ComfyUI answered {what} with HTTP {resp.status_code}: {resp.text[:_BODY_SNIPPET]}"
            )
        try:
            return resp.json()
        except ValueError as exc:
            raise ComfyUIUnavailable(
                f"ComfyUI answered {what} with something that is not JSON:"
                f" {resp.text[:_BODY_SNIPPET]!r}"
            ) from exc

    # --- endpoints ---

    def system_stats(self) -> dict[str, Any]:
        data = self._json(self._request("GET", "/system_stats"), "GET /system_stats")
        return data if isinstance(data, dict) else {}

    def submit(
        self,
        prompt: Mapping[str, Any],
        *,
        prompt_id: str,
        client_id: str,
        extra_data: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """POST /prompt; raises WorkflowValidationError when ComfyUI rejects the graph."""
        body: dict[str, Any] = {"prompt": prompt, "client_id": client_id, "prompt_id": prompt_id}
        if extra_data:
            body["extra_data"] = dict(extra_data)
        resp = self._request("POST", "/prompt", json=body)
        if resp.status_code == 400 or resp.status_code >= 500:
            try:
                parsed: Any = resp.json()
            except ValueError:
                parsed = resp.text
            if resp.status_code == 400 or isinstance(parsed, str):
                raise validation_error(resp.status_code, parsed)
        data = self._json(resp, "POST /prompt")
        if not isinstance(data, dict):
            raise ComfyUIUnavailable(f"unexpected POST /prompt answer: {str(data)[:_BODY_SNIPPET]}")
        if data.get("node_errors"):
            raise validation_error(400, {"error": {}, **data})
        return data

    def history(self, prompt_id: str) -> dict[str, Any] | None:
        """The finished prompt's history entry, or None while it is queued, running or unknown."""
        path = f"/history/{quote(prompt_id, safe='')}"
        data = self._json(self._request("GET", path), "GET /history/{id}")
        entry = data.get(prompt_id) if isinstance(data, dict) else None
        return entry if isinstance(entry, dict) else None

    def queue(self) -> dict[str, Any]:
        data = self._json(self._request("GET", "/queue"), "GET /queue")
        return data if isinstance(data, dict) else {}

    def queued(self) -> dict[str, str]:
        """{prompt id: "running" | "pending"} for every prompt in the queue."""
        q = self.queue()
        found: dict[str, str] = {}
        for state, key in (("running", "queue_running"), ("pending", "queue_pending")):
            for item in q.get(key) or []:
                if isinstance(item, list) and len(item) > 1:
                    found.setdefault(str(item[1]), state)
        return found

    def queue_state(self, prompt_id: str) -> str | None:
        """ "running", "pending", or None when the prompt is not in the queue."""
        return self.queued().get(prompt_id)

    def queued_since(self, since: float) -> Mapping[str, str]:
        """``queued()`` as found by a GET /queue that began at or after ``since`` (monotonic).

        Every job waiting in ComfyUI's queue looks at it now and then, and GET /queue answers
        with every pending prompt whole: N waiting jobs looking each for itself cost N², in
        ComfyUI (which serialises its queue under the executor's lock) and here.  One look
        serves every caller that can use it: one that began after ``since``, so after anything
        the caller submitted before asking.  A caller that finds a look in flight waits for it.
        """
        with self._queue_cond:
            for _ in range(2):  # the look in flight, then (if it began too early) our own
                seen = self._queue_seen
                if seen is not None and seen[0] >= since:
                    return seen[1]
                if not self._queue_looks:
                    break
                self._queue_cond.wait(self.http_timeout)  # a look ends within its budget
            self._queue_looks += 1
        began = time.monotonic()
        try:
            found = self.queued()
            with self._queue_cond:
                if self._queue_seen is None or self._queue_seen[0] < began:
                    self._queue_seen = (began, found)
            return found
        finally:
            with self._queue_cond:
                self._queue_looks -= 1
                self._queue_cond.notify_all()

    def interrupt(self, prompt_id: str | None = None) -> None:
        """Interrupt ``prompt_id`` if it is the one running (ComfyUI ignores it otherwise)."""
        body = {"prompt_id": prompt_id} if prompt_id is not None else {}
        resp = self._request("POST", "/interrupt", json=body)
        if resp.status_code != 200:
            raise ComfyUIUnavailable(f"POST /interrupt answered HTTP {resp.status_code}")

    def delete_queued(self, prompt_ids: Sequence[str]) -> None:
        resp = self._request("POST", "/queue", json={"delete": list(prompt_ids)})
        if resp.status_code != 200:
            raise ComfyUIUnavailable(f"POST /queue answered HTTP {resp.status_code}")

    def cancel(self, prompt_id: str) -> None:
        """Stop a prompt wherever it is: drop it from the queue, interrupt it if running."""
        self.delete_queued([prompt_id])
        self.interrupt(prompt_id)

    def upload_image(
        self, name: str, data: bytes, *, subfolder: str = "", overwrite: bool = True
    ) -> dict[str, Any]:
        """POST /upload/image into the input folder; returns ``{name, subfolder, type}``."""
        fields = {"type": "input", "overwrite": "true" if overwrite else "false"}
        if subfolder:
            fields["subfolder"] = subfolder
        resp = self._request(
            "POST",
            "/upload/image",
            sending=len(data),
            files={"image": (name, data, "application/octet-stream")},
            data=fields,
        )
        if resp.status_code == 400:
            raise WorkflowFormatError(
                f"ComfyUI refused the upload of {name!r} (HTTP 400)", field="inputs"
            )
        result = self._json(resp, "POST /upload/image")
        if not isinstance(result, dict) or not isinstance(result.get("name"), str):
            raise ComfyUIUnavailable(f"unexpected /upload/image answer: {str(result)[:200]}")
        return result

    @contextlib.contextmanager
    def view(self, ref: OutputRef) -> Iterator[httpx.Response]:
        """GET /view as a stream; the caller reads ``iter_bytes`` inside the ``with``."""
        params = {"filename": ref.filename, "subfolder": ref.subfolder, "type": ref.type}
        what = f"{ref.subfolder + '/' if ref.subfolder else ''}{ref.filename} [{ref.type}]"
        try:
            with (
                deadline_scope(self._budget(0)),  # the status line and the headers
                self._client.stream("GET", "/view", params=params, timeout=self.timeout) as resp,
            ):
                self._heard(resp)
                if resp.status_code == 404:
                    raise OutputIntegrityError(
                        f"ComfyUI listed {what} from node {ref.node_id} but /view has no such file"
                        " (was it deleted from its output folder?)"
                    )
                if resp.status_code != 200:
                    raise ComfyUIUnavailable(f"GET /view for {what} answered {resp.status_code}")
                length = resp.headers.get("content-length", "")
                with deadline_scope(self._budget(int(length) if length.isdigit() else None)):
                    yield resp
        except (httpx.TimeoutException, DeadlineExceeded) as exc:
            self.answered_at = None
            raise ComfyUIUnavailable(f"ComfyUI stopped sending {what} ({exc!r})") from exc
        except httpx.HTTPError as exc:
            self.answered_at = None
            raise ComfyUIUnavailable(f"download of {what} failed: {exc!r}") from exc

    # --- the event socket ---

    def ws_url(self, client_id: str) -> str:
        parts = urlsplit(self.base_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return f"{scheme}://{parts.netloc}{parts.path}/ws?clientId={quote(client_id, safe='')}"

    def open_events(
        self, client_id: str, *, open_timeout: float = defaults.COMFY_WS_OPEN_TIMEOUT_S
    ) -> EventSocket:
        """Open /ws for ``client_id``; raises SocketClosed when it cannot be opened."""
        from websockets.sync.client import connect

        stack = contextlib.ExitStack()
        try:
            # Entered as a context manager: websockets >= 17 warns about bare connect() calls,
            # and its ``legacy`` flag does not exist in the older releases we accept.
            conn = connect(
                self.ws_url(client_id),
                open_timeout=open_timeout,
                close_timeout=1.0,
                proxy=None,
                max_size=defaults.COMFY_WS_MAX_FRAME_BYTES,
                compression=None,
            )
            connection = stack.enter_context(conn)
            if self.preview_metadata:
                # Before any prompt: binary frames then name their prompt and node (event 4).
                connection.send(json.dumps(FEATURE_FLAGS))
        except (OSError, TimeoutError, ValueError) as exc:
            stack.close()
            raise SocketClosed(f"cannot open {self.ws_url(client_id)}: {exc!r}") from exc
        except Exception as exc:  # websockets' own handshake errors (InvalidStatus, ...)
            stack.close()
            raise SocketClosed(f"cannot open {self.ws_url(client_id)}: {exc!r}") from exc
        return EventSocket(connection, stack)


class EventSocket:
    """ComfyUI's event stream: JSON messages as dicts, binary messages as ``BinaryFrame``."""

    def __init__(self, conn: ClientConnection, closer: contextlib.ExitStack) -> None:
        self._conn = conn
        self._closer = closer

    def recv(self, timeout: float) -> Message | None:
        """The next message, or None if none came within ``timeout``; SocketClosed if gone."""
        from websockets.exceptions import ConnectionClosed

        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            try:
                frame = self._conn.recv(timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                return None
            except ConnectionClosed as exc:
                raise SocketClosed(str(exc)) from exc
            except OSError as exc:
                raise SocketClosed(repr(exc)) from exc
            if isinstance(frame, bytes | bytearray | memoryview):
                parsed = parse_binary_frame(bytes(frame))
                if parsed is not None:
                    return parsed
                continue
            try:
                msg = json.loads(frame)
            except ValueError:
                continue
            if isinstance(msg, dict) and isinstance(msg.get("type"), str):
                data = msg.get("data")
                return {"type": msg["type"], "data": data if isinstance(data, dict) else {}}

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._closer.close()


# --- waiting for one prompt ---------------------------------------------------------------------


def concerns(msg: Mapping[str, Any], prompt_id: str) -> bool:
    data = msg.get("data")
    return isinstance(data, dict) and str(data.get("prompt_id")) == prompt_id


def is_terminal(msg: Mapping[str, Any]) -> bool:
    if msg.get("type") in TERMINAL_EVENTS:
        return True
    data = msg.get("data")
    return msg.get("type") == "executing" and isinstance(data, dict) and data.get("node") is None


def follow_prompt(
    api: ComfyAPI,
    prompt_id: str,
    *,
    socket: EventStream | None,
    reopen: Callable[[float], EventStream] | None = None,
    deadline: float,
    on_event: EventCallback | None = None,
    check_alive: Callable[[], None] | None = None,
    cancel: threading.Event | None = None,
    poll_s: float = defaults.COMFY_HISTORY_POLL_S,
    on_frame: FrameCallback | None = None,
    on_socket_lost: Callable[[], None] | None = None,
    detach: threading.Event | None = None,
) -> dict[str, Any]:
    """Wait until ``prompt_id`` is finished and return its history entry (success or not).

    Events for the prompt go to ``on_event`` while the socket is open, binary frames to
    ``on_frame``; ``on_socket_lost`` hears of every moment without a socket (from the start when
    ``socket`` is None), during which events and frames may have been missed.  When it drops (or
    is None) /history is polled every ``poll_s`` and, if ``reopen`` is given, it is called now and
    then (with an open timeout) for a new stream.  ``check_alive`` (the process watch) runs every
    iteration, so a dead ComfyUI is reported within about ``poll_s``.  Raises ExecutionTimeout at
    ``deadline`` (after interrupting the prompt), JobCancelled when ``cancel`` is set and ComfyUI
    confirms it or the prompt vanished from the queue, ComfyUIUnavailable when ComfyUI is gone,
    JobDetached (leaving the prompt alone) when ``detach`` is set.
    """
    w = _Follower(api, prompt_id, socket, reopen, on_event, check_alive, cancel, poll_s)
    w.on_frame = on_frame
    w.on_socket_lost = on_socket_lost
    if socket is None and on_socket_lost is not None:
        on_socket_lost()
    w.detach = detach
    try:
        return w.run(deadline)
    finally:
        if w.socket is not None and w.socket is not socket:
            w.socket.close()


class _Follower:
    def __init__(
        self,
        api: ComfyAPI,
        prompt_id: str,
        socket: EventStream | None,
        reopen: Callable[[float], EventStream] | None,
        on_event: EventCallback | None,
        check_alive: Callable[[], None] | None,
        cancel: threading.Event | None,
        poll_s: float,
    ) -> None:
        self.api = api
        self.prompt_id = prompt_id
        self.socket = socket
        self.reopen = reopen
        self.on_event = on_event
        self.check_alive = check_alive
        self.cancel = cancel
        self.poll_s = poll_s
        now = time.monotonic()
        self.created = now  # after the prompt reached ComfyUI (or it was there already)
        self.last_history_check = now
        self.last_queue_check = now
        self.last_reconnect = now
        self.cancel_sent_at: float | None = None
        self.unreachable_since: float | None = None
        self.on_frame: FrameCallback | None = None
        self.on_socket_lost: Callable[[], None] | None = None
        self.detach: threading.Event | None = None

    def run(self, deadline: float) -> dict[str, Any]:
        while True:
            now = time.monotonic()
            if self.detach is not None and self.detach.is_set():
                raise JobDetached(self.prompt_id, submitted=True)
            if self.check_alive is not None:
                self.check_alive()
            self._handle_cancel(now)
            if now >= deadline:
                with contextlib.suppress(ComfyUIUnavailable):
                    self.api.cancel(self.prompt_id)  # don't leave the GPU busy for nobody
                raise ExecutionTimeout(
                    f"job {self.prompt_id} did not finish before its deadline; it was interrupted",
                    job_id=self.prompt_id,
                )
            wait = max(0.0, min(self.poll_s, deadline - now))
            if self.socket is not None:
                entry = self._from_socket(wait, deadline)
            else:
                entry = self._from_polling(wait, deadline)
            if entry is not None:
                return entry

    def _handle_cancel(self, now: float) -> None:
        if self.cancel is None or not self.cancel.is_set():
            return
        if self.cancel_sent_at is None:
            self.cancel_sent_at = now
            self.api.cancel(self.prompt_id)
            self.last_queue_check = 0.0  # look at the queue at once: a pending prompt is gone
        elif now - self.cancel_sent_at > defaults.COMFY_CANCEL_GRACE_S:
            raise JobCancelled(
                f"job {self.prompt_id} was cancelled; ComfyUI did not confirm the interrupt within"
                f" {defaults.COMFY_CANCEL_GRACE_S:g} s",
                job_id=self.prompt_id,
            )

    def _from_socket(self, wait: float, deadline: float) -> dict[str, Any] | None:
        assert self.socket is not None
        try:
            msg = self.socket.recv(wait)
        except SocketClosed:
            self.socket.close()
            self.socket = None
            self.last_reconnect = time.monotonic()
            if self.on_socket_lost is not None:
                self.on_socket_lost()
            return self._lookup()  # it may have finished just before the socket went
        if isinstance(msg, BinaryFrame):
            if self.on_frame is not None:
                self.on_frame(msg)
            return None
        if msg is None:
            if self.cancel_sent_at is not None or (
                time.monotonic() - self.last_history_check >= defaults.COMFY_WS_SILENCE_CHECK_S
            ):
                return self._lookup()
            return None
        if not concerns(msg, self.prompt_id):
            return None
        if self.on_event is not None:
            self.on_event(msg["type"], msg["data"])
        if is_terminal(msg):
            # execution_success can come a moment before the history entry is written.
            return self._await_entry(deadline)
        return None

    def _from_polling(self, wait: float, deadline: float) -> dict[str, Any] | None:
        entry = self._lookup()
        if entry is not None:
            return entry
        now = time.monotonic()
        if self.reopen is not None and now - self.last_reconnect >= defaults.COMFY_WS_RECONNECT_S:
            self.last_reconnect = now
            with contextlib.suppress(SocketClosed):
                self.socket = self.reopen(min(1.0, max(0.1, deadline - now)))
                return self._lookup()  # anything that finished while we were deaf
        self._sleep(wait)
        return None

    def _lookup(self) -> dict[str, Any] | None:
        """History, then (now and then) the queue: a prompt in neither was deleted."""
        now = time.monotonic()
        self.last_history_check = now
        try:
            entry = self.api.history(self.prompt_id)
            if entry is not None:
                self.unreachable_since = None
                return entry
            queue_every = self.poll_s if self.cancel_sent_at is not None else 4 * self.poll_s
            if now - self.last_queue_check >= queue_every:
                self.last_queue_check = now
                # A look shared with the other jobs, begun after this prompt was queued (and
                # after its cancel was sent): one that missed it means it left the queue.
                since = max(self.created, now - queue_every, self.cancel_sent_at or 0.0)
                if self.prompt_id not in self.api.queued_since(since):
                    entry = self.api.history(self.prompt_id)  # it may have just finished
                    if entry is not None:
                        return entry
                    why = (
                        "it was cancelled before it ran"
                        if self.cancel_sent_at is not None
                        else "it is neither queued nor in ComfyUI's history (removed from the"
                        " queue before it ran)"
                    )
                    raise JobCancelled(f"job {self.prompt_id}: {why}", job_id=self.prompt_id)
            self.unreachable_since = None
        except ComfyUIUnavailable:
            if self.check_alive is not None:
                self.check_alive()  # a dead process explains it best
            if self.unreachable_since is None:
                self.unreachable_since = now
            elif now - self.unreachable_since > defaults.COMFY_UNREACHABLE_GRACE_S:
                raise
        return None

    def _await_entry(self, deadline: float) -> dict[str, Any]:
        pause = min(0.05, self.poll_s)
        while True:
            entry = self._lookup()
            if entry is not None:
                return entry
            if self.check_alive is not None:
                self.check_alive()
            if time.monotonic() >= deadline:
                raise ExecutionTimeout(
                    f"job {self.prompt_id} ended but its history entry never appeared",
                    job_id=self.prompt_id,
                )
            time.sleep(pause)

    def _sleep(self, seconds: float) -> None:
        if self.cancel is not None and self.cancel_sent_at is None:
            self.cancel.wait(seconds)  # wake at once when a cancel arrives
        else:
            time.sleep(seconds)
