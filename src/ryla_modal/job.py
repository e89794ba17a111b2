"""A job as clients see it: plain frozen dataclasses read from the job API's JSON.

The gateway's pydantic models (``gateway/schemas.py``) are the contract and publish it as
OpenAPI; the client reads the same shape without pydantic, because building those models costs
~85 ms of every `ryla generate` run (bench/overhead.py) and a client has no use for the rest of
them.  tests/test_job.py checks that both sides name the same fields and that a server-made job
reads back unchanged.

Reading is strict where the client relies on a value (ids, status, numbers, output names) and
raises ``ValueError`` naming the field, so a broken or hostile answer is an error, not a
half-filled object; unknown fields are ignored, so a newer server stays readable.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, cast, get_args

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JobPhase = Literal[
    "waiting_for_gpu",
    "starting_comfyui",
    "uploading_inputs",
    "executing",
    "collecting_outputs",
    "done",
]
#: The final statuses a webhook can announce.
WebhookEvent = Literal["succeeded", "failed", "cancelled"]
WebhookState = Literal["waiting", "pending", "delivered", "failed", "not_sent"]
WEBHOOK_EVENTS: frozenset[str] = frozenset(get_args(WebhookEvent))
WEBHOOK_STATES: frozenset[str] = frozenset(get_args(WebhookState))
JOB_STATUSES: frozenset[str] = frozenset(get_args(JobStatus))
JOB_PHASES: frozenset[str] = frozenset(get_args(JobPhase))
TERMINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
ACTIVE_STATUSES: frozenset[str] = frozenset({"queued", "running"})

_T = TypeVar("_T")


class _Reader:
    """Typed access to one JSON object, with errors that name the field's path."""

    def __init__(self, data: object, where: str) -> None:
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
        self.data = data
        self.where = where

    def _get(self, key: str, kinds: type | tuple[type, ...], required: bool) -> Any:
        if key not in self.data or self.data[key] is None:
            if required:
                raise ValueError(f"{self.where}.{key}: missing")
            return None
        value = self.data[key]
        # bool is an int in Python, never in JSON's sense of a count or a time
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in _tuple(kinds)):
            raise ValueError(f"{self.where}.{key}: expected {_names(kinds)}, got {value!r:.80}")
        return value

    def text(self, key: str) -> str:
        return cast(str, self._get(key, str, True))

    def opt_text(self, key: str) -> str | None:
        return cast("str | None", self._get(key, str, False))

    def integer(self, key: str, default: int | None = None) -> int:
        value = self._get(key, int, default is None)
        return cast(int, default if value is None else value)

    def opt_integer(self, key: str) -> int | None:
        return cast("int | None", self._get(key, int, False))

    def number(self, key: str) -> float:
        return float(self._get(key, (int, float), True))

    def choice(self, key: str, allowed: frozenset[str], required: bool = True) -> Any:
        value = self._get(key, str, required)
        if value is not None and value not in allowed:
            raise ValueError(f"{self.where}.{key}: {value!r} is not one of {sorted(allowed)}")
        return value

    def opt_dict(self, key: str) -> dict[str, Any] | None:
        value = self._get(key, dict, False)
        return None if value is None else dict(value)

    def opt_str_list(self, key: str) -> list[str] | None:
        value = self._get(key, list, False)
        if value is not None and not all(isinstance(v, str) for v in value):
            raise ValueError(f"{self.where}.{key}: expected a list of strings")
        return None if value is None else list(value)

    def objects(self, key: str, read: Callable[[object, str], _T]) -> list[_T]:
        items = self._get(key, list, False) or []
        return [read(item, f"{self.where}.{key}[{i}]") for i, item in enumerate(items)]

    def nested(self, key: str, read: Callable[[object, str], _T]) -> _T | None:
        if self.data.get(key) is None:
            return None
        return read(self.data[key], f"{self.where}.{key}")

    def opt_number(self, key: str) -> float | None:
        value = self._get(key, (int, float), False)
        return None if value is None else float(value)

    def opt_bool(self, key: str) -> bool | None:
        return cast("bool | None", self._get(key, bool, False))


def _tuple(kinds: type | tuple[type, ...]) -> tuple[type, ...]:
    return kinds if isinstance(kinds, tuple) else (kinds,)


def _names(kinds: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", dict: "an object"}
    names[list] = "a list"
    names[bool] = "true or false"
    return " or ".join(names.get(k, k.__name__) for k in _tuple(kinds))


@dataclass(frozen=True)
class Progress:
    """Where a running job is: node i of n, and the sampler's step when one is running."""

    node_id: str | None = None
    node_type: str | None = None
    nodes_done: int = 0
    nodes_total: int = 0
    step: int | None = None
    steps: int | None = None

    @classmethod
    def from_dict(cls, data: object, where: str = "progress") -> Progress:
        r = _Reader(data, where)
        return cls(
            node_id=r.opt_text("node_id"),
            node_type=r.opt_text("node_type"),
            nodes_done=r.integer("nodes_done", 0),
            nodes_total=r.integer("nodes_total", 0),
            step=r.opt_integer("step"),
            steps=r.opt_integer("steps"),
        )


#: The phases of a job in the order they happen, each with a label for people.  Renderers walk
#: this list (``Timings.labelled``) rather than the fields, so a phase added here shows up in
#: ``ryla jobs status``, ``--json`` and the ``ryla generate`` summary without touching them.
TIMING_PHASES: tuple[tuple[str, str], ...] = (
    ("queued", "queued"),
    ("container_start", "container start"),
    ("starting_comfyui", "ComfyUI start"),
    ("fetching_inputs", "fetching inputs"),
    ("uploading_inputs", "uploading inputs"),
    ("waiting_in_comfyui", "waiting in ComfyUI"),
    ("model_load", "model load"),
    ("executing", "executing"),
    ("collecting_outputs", "collecting outputs"),
    ("storing_outputs", "storing outputs"),
)


@dataclass(frozen=True)
class Timings:
    """Seconds per phase of a job; the phases do not overlap, a phase not reached is None.

    ``total`` is the wall time from ``created_at`` to the final status: what the job took.
    ``restored`` says whether the ComfyUI this job waited for came from a memory snapshot
    (None: the job did not wait for a ComfyUI start, or the server does not say).
    """

    queued: float | None = None
    container_start: float | None = None
    starting_comfyui: float | None = None
    fetching_inputs: float | None = None
    uploading_inputs: float | None = None
    waiting_in_comfyui: float | None = None
    model_load: float | None = None
    executing: float | None = None
    collecting_outputs: float | None = None
    storing_outputs: float | None = None
    total: float | None = None
    restored: bool | None = None

    @classmethod
    def from_dict(cls, data: object, where: str = "timings") -> Timings:
        r = _Reader(data, where)
        restored = r.opt_bool("restored")
        return cls(
            **{
                f.name: r.opt_number(f.name)
                for f in dataclasses.fields(cls)
                if f.name != "restored"
            },
            restored=restored,
        )

    def to_dict(self) -> dict[str, float | bool | None]:
        return dataclasses.asdict(self)

    def phases(self) -> dict[str, float]:
        """The phases the job went through, in order (``total`` left out: it is their span)."""
        values = self.to_dict()
        return {
            name: float(value)
            for name, _ in TIMING_PHASES
            if isinstance(value := values.get(name), (int, float)) and not isinstance(value, bool)
        }

    def labelled(self, **after: float | None) -> list[tuple[str, float]]:
        """``(label, seconds)`` per phase reached, in order; ``after`` appends client-side
        phases (``downloaded=1.2``), so one line can tell a whole job from click to file."""
        labels = dict(TIMING_PHASES)
        out: list[tuple[str, float]] = []
        for name, seconds in self.phases().items():
            label = labels[name]
            if name == "starting_comfyui" and self.restored is not None:
                label += " (restored from a snapshot)" if self.restored else " (cold)"
            out.append((label, seconds))
        out += [(name.replace("_", " "), s) for name, s in after.items() if s is not None]
        return out

    def summary(self, **after: float | None) -> str:
        """One line: ``12.3 s: queued 0.1 s · container start 3.0 s · …``."""
        parts = " · ".join(f"{label} {_span(s)}" for label, s in self.labelled(**after))
        head = _span(self.total) if self.total is not None else "timings"
        return f"{head}: {parts}" if parts else head


def _span(seconds: float) -> str:
    """Milliseconds under a second (a warm job's phases are ms: ``0.0 s`` everywhere says
    nothing), seconds with one decimal above."""
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


@dataclass(frozen=True)
class OutputInfo:
    """One output; download it from ``GET /jobs/{id}/outputs/{index}``.

    ``kind`` is the history key it came from ("images", "gifs", "audio", "3d", ...); a ``text``
    output (PreviewAny) is a file too and also carries its string in ``text``.
    """

    index: int
    node_id: str
    filename: str  # the server's name: never a path (see outputs.safe_basename)
    kind: str
    mime: str
    size: int
    sha256: str
    data_b64: str | None = field(default=None, repr=False)
    text: str | None = None

    @classmethod
    def from_dict(cls, data: object, where: str = "output") -> OutputInfo:
        r = _Reader(data, where)
        return cls(
            index=r.integer("index"),
            node_id=r.text("node_id"),
            filename=r.text("filename"),
            kind=r.text("kind"),
            mime=r.text("mime"),
            size=r.integer("size"),
            sha256=r.text("sha256"),
            data_b64=r.opt_text("data_b64"),
            text=r.opt_text("text"),
        )


@dataclass(frozen=True)
class JobError:
    """Why a job failed; ComfyUI's validation and execution details are carried through."""

    type: str
    message: str
    node_id: str | None = None
    node_type: str | None = None
    node_errors: dict[str, Any] | None = None
    exception_type: str | None = None
    traceback_tail: list[str] | None = None
    #: fields this client does not know (the server passes ComfyUI's own through)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: object, where: str = "error") -> JobError:
        r = _Reader(data, where)
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return cls(
            type=r.text("type"),
            message=r.text("message"),
            node_id=r.opt_text("node_id"),
            node_type=r.opt_text("node_type"),
            node_errors=r.opt_dict("node_errors"),
            exception_type=r.opt_text("exception_type"),
            traceback_tail=r.opt_str_list("traceback_tail"),
            extra={k: v for k, v in r.data.items() if k not in known},
        )

    def to_dict(self) -> dict[str, Any]:
        data = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"
        }
        return {**self.extra, **data}


@dataclass(frozen=True)
class WebhookStatus:
    """Where a job's webhook delivery stands (``state``), with every attempt counted."""

    events: list[str]
    state: WebhookState = "waiting"
    attempts: int = 0
    delivered_at: float | None = None
    last_status: int | None = None
    last_error: str | None = None
    next_attempt_at: float | None = None
    due_since: float | None = None

    @classmethod
    def from_dict(cls, data: object, where: str = "webhook") -> WebhookStatus:
        r = _Reader(data, where)
        events = r.opt_str_list("events") or []
        return cls(
            events=events,
            state=r.choice("state", WEBHOOK_STATES),
            attempts=r.integer("attempts", 0),
            delivered_at=r.opt_number("delivered_at"),
            last_status=r.opt_integer("last_status"),
            last_error=r.opt_text("last_error"),
            next_attempt_at=r.opt_number("next_attempt_at"),
            due_since=r.opt_number("due_since"),
        )


@dataclass(frozen=True)
class Job:
    """A job's state as the server last reported it."""

    job_id: str
    status: JobStatus
    created_at: float
    updated_at: float
    phase: JobPhase | None = None
    progress: Progress | None = None
    outputs: list[OutputInfo] = field(default_factory=list)
    error: JobError | None = None
    timings: Timings = field(default_factory=Timings)
    #: on Modal, the worker's FunctionCall id (``modal app logs APP --function-call ID``)
    call_id: str | None = None
    #: the webhook's delivery, when the job asked for one
    webhook: WebhookStatus | None = None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @classmethod
    def from_dict(cls, data: object, where: str = "job") -> Job:
        """Read an answer of the job API; ``ValueError`` names the first bad field."""
        r = _Reader(data, where)
        return cls(
            job_id=r.text("job_id"),
            status=r.choice("status", JOB_STATUSES),
            created_at=r.number("created_at"),
            updated_at=r.number("updated_at"),
            phase=r.choice("phase", JOB_PHASES, required=False),
            progress=r.nested("progress", Progress.from_dict),
            outputs=r.objects("outputs", OutputInfo.from_dict),
            error=r.nested("error", JobError.from_dict),
            timings=r.nested("timings", Timings.from_dict) or Timings(),
            call_id=r.opt_text("call_id"),
            webhook=r.nested("webhook", WebhookStatus.from_dict),
        )

    def to_dict(self) -> dict[str, Any]:
        """The job as JSON-ready data, in the API's shape (what ``--json`` prints)."""
        data = dataclasses.asdict(self)
        data["error"] = self.error.to_dict() if self.error is not None else None
        return data


__all__ = [
    "ACTIVE_STATUSES",
    "JOB_PHASES",
    "JOB_STATUSES",
    "TERMINAL_STATUSES",
    "TIMING_PHASES",
    "WEBHOOK_EVENTS",
    "WEBHOOK_STATES",
    "Job",
    "JobError",
    "JobPhase",
    "JobStatus",
    "OutputInfo",
    "Progress",
    "Timings",
    "WebhookEvent",
    "WebhookState",
    "WebhookStatus",
]
