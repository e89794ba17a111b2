"""The job API's request and response bodies: these pydantic models *are* the contract.

FastAPI publishes them in its OpenAPI document and the job stores keep ``JobRecord`` (the public
``Job`` plus what only the server needs).  Clients read the same shape with the plain dataclasses
of :mod:`ryla_modal.job` (no pydantic on the client's start-up path), which share the status and
phase vocabulary defined there.  Times are seconds since the Unix epoch (floats), so they survive
JSON, SQLite and ``modal.Dict`` alike.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from ryla_modal import defaults
from ryla_modal.job import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    WEBHOOK_EVENTS,
    JobPhase,
    JobStatus,
    WebhookEvent,
    WebhookState,
)

JOB_ID_PATTERN = defaults.JOB_ID_PATTERN  # the client checks ids against the same charset
#: An input file is uploaded into ComfyUI's input folder under this name: a plain file name.
INPUT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$"
SHA256_PATTERN = r"^[0-9a-fA-F]{64}$"
#: Longest URL an input may name (a presigned S3 URL is ~1.5 KB).
INPUT_URL_MAX_CHARS = 8192
INPUT_URL_PATTERN = r"^[Hh][Tt][Tt][Pp][Ss]?://"  # the rest is for netsafety.check_url

# --- error types the gateway and the executors use in ``error.type`` -------------------------
#: (ComfyUI's own types, such as ``prompt_outputs_failed_validation``, pass through unchanged.)
ERR_EXECUTION = "execution_error"
ERR_CANCELLED = "cancelled"
ERR_TIMEOUT = "timeout"
ERR_COMFYUI_UNAVAILABLE = "comfyui_unavailable"
ERR_SERVER_RESTARTED = "server_restarted"
ERR_SERVER_STOPPED = "server_stopped"
ERR_WORKER_DIED = "worker_died"
ERR_INVALID_INPUT = "invalid_input"
#: An input by URL (see ``fetch.py``): refused by the address rules, not fetched, larger than
#: allowed, or not matching its sha256.  The job failed before ComfyUI ran anything.
ERR_INPUT_URL_REFUSED = "input_url_refused"
ERR_INPUT_FETCH_FAILED = "input_fetch_failed"
ERR_INPUT_TOO_LARGE = "input_too_large"
ERR_INPUT_SHA256_MISMATCH = "input_sha256_mismatch"


#: Standard base64, as ``base64.b64decode(..., validate=True)`` takes it.
BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"

#: A link input: ``[node_id, output_index]``.  ComfyUI reads *every* list input as one.
_LINK_SCHEMA: dict[str, Any] = {
    "type": "array",
    "prefixItems": [{"type": "string"}, {"type": "integer", "minimum": 0}],
    "items": False,
    "minItems": 2,
    "maxItems": 2,
}
#: The API-format workflow as far as a JSON schema can say it.  The rest is the graph's
#: meaning (links to nodes that exist, no cycles, known node types, values in range): a
#: workflow valid by this schema may still get a 422 that names the node at fault.
WORKFLOW_JSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "API-format ComfyUI workflow: node id → {class_type, inputs, _meta?}",
    "minProperties": 1,
    "maxProperties": defaults.WORKFLOW_MAX_NODES,
    "additionalProperties": {
        "type": "object",
        "required": ["class_type", "inputs"],
        "properties": {
            "class_type": {"type": "string", "pattern": r"\S"},
            "inputs": {
                "type": "object",
                "additionalProperties": {
                    "anyOf": [
                        {"type": "string"},
                        {"type": "number"},
                        {"type": "boolean"},
                        {"type": "null"},
                        {"type": "object"},
                        _LINK_SCHEMA,
                    ]
                },
            },
            "_meta": {"type": "object"},
        },
    },
}


def _workflow_schema(schema: dict[str, Any]) -> None:
    schema.clear()
    schema.update(WORKFLOW_JSON_SCHEMA)


def _integral_link_indices(workflow: dict[str, Any]) -> dict[str, Any]:
    """``["4", 1.0]`` → ``["4", 1]``: JSON (and the schema above) does not tell 1.0 from 1,
    but ComfyUI indexes a node's outputs with it and Python lists want an int."""
    for node in workflow.values():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        if not isinstance(inputs, dict):
            continue
        for name, value in inputs.items():
            if (
                isinstance(value, list)
                and len(value) == 2
                and isinstance(value[1], float)
                and value[1].is_integer()
                and value[1] >= 0
            ):
                inputs[name] = [value[0], int(value[1])]
    return workflow


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


def _one_source_schema(schema: dict[str, Any]) -> None:
    """The document says what the validator checks: exactly one of ``data_b64`` and ``url``,
    each a string when present (null is not a value either may take)."""
    props = schema.get("properties", {})
    for key in ("data_b64", "url"):
        prop = props.get(key)
        if isinstance(prop, dict):
            choices = [c for c in prop.pop("anyOf", []) if c.get("type") != "null"]
            if choices:
                prop.update(choices[0])
            prop.pop("default", None)
    schema["oneOf"] = [{"required": ["data_b64"]}, {"required": ["url"]}]


class InputSpec(BaseModel):
    """A file the workflow loads by name (LoadImage & co.): its bytes, or a URL to fetch them.

    Exactly one of ``data_b64`` and ``url``.  A URL is fetched by the worker before the job
    runs (http(s) only, public addresses only unless the server allows private ones: a 422
    ``input_url_refused`` at submit; no redirects; a size cap), so large files need not travel
    base64 through the job API; a failed fetch or a sha256 mismatch fails the job before
    ComfyUI runs anything.
    """

    model_config = ConfigDict(extra="forbid", json_schema_extra=_one_source_schema)

    name: str = Field(
        pattern=INPUT_NAME_PATTERN,
        description="plain file name (letters, digits, . _ + -), as the workflow references it",
    )
    data_b64: str | None = Field(
        default=None,
        description="the file's bytes, standard base64",
        json_schema_extra={"pattern": BASE64_PATTERN},
    )
    url: str | None = Field(
        default=None,
        max_length=INPUT_URL_MAX_CHARS,
        pattern=INPUT_URL_PATTERN,
        description="http(s) URL the worker fetches the file from (instead of data_b64)",
    )
    sha256: str | None = Field(
        default=None,
        pattern=SHA256_PATTERN,
        description="the file's expected sha256 (hex); a mismatch fails the job before it runs",
    )

    @model_validator(mode="after")
    def _one_source(self) -> InputSpec:
        if (self.data_b64 is None) == (self.url is None):
            raise ValueError("give exactly one of data_b64 and url")
        return self


_ALL_EVENTS: tuple[WebhookEvent, ...] = ("cancelled", "failed", "succeeded")
assert set(_ALL_EVENTS) == WEBHOOK_EVENTS


class WebhookRequest(BaseModel):
    """Where to announce a job's final status (signed per Standard Webhooks, retried)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        min_length=1,
        max_length=defaults.WEBHOOK_MAX_URL_CHARS,
        description="http(s) URL the server POSTs the finished job to; it must resolve to a"
        " public address unless the server allows private ones",
        # documented, not enforced here: the server's own check says what is wrong (422)
        json_schema_extra={"pattern": r"^[Hh][Tt][Tt][Pp][Ss]?://[^\s/?#@]+([/?#]\S*)?$"},
    )
    events: list[WebhookEvent] = Field(
        default_factory=lambda: list(_ALL_EVENTS),
        min_length=1,
        max_length=len(WEBHOOK_EVENTS),
        description="final statuses to announce (default: all of them)",
    )

    @field_validator("events")
    @classmethod
    def _unique(cls, events: list[WebhookEvent]) -> list[WebhookEvent]:
        return sorted(set(events))


class JobRequest(BaseModel):
    """Body of POST /jobs and POST /generate."""

    model_config = ConfigDict(extra="forbid")

    job_id: str | None = Field(
        default=None,
        pattern=JOB_ID_PATTERN,
        description="client-made id (a UUID) and idempotency key; the server makes one if absent",
    )
    workflow: dict[str, Any] = Field(json_schema_extra=_workflow_schema)
    inputs: list[InputSpec] = Field(
        default_factory=list,
        description="input files; their names are unique",
        json_schema_extra={"maxItems": defaults.GATEWAY_MAX_INPUTS},
    )
    timeout_s: int | None = Field(
        default=None,
        ge=1,
        le=defaults.GATEWAY_MAX_JOB_TIMEOUT_S,
        description="execution budget in seconds (default: the server's)",
    )
    previews: bool = Field(
        default=False,
        description='also keep "temp" files (PreviewImage, PreviewAudio) as outputs',
    )
    webhook: WebhookRequest | None = Field(
        default=None,
        description="POST the finished job to this URL (needs the server's signing secret)",
    )

    _links = field_validator("workflow")(_integral_link_indices)


class ValidateRequest(BaseModel):
    """Body of POST /validate."""

    model_config = ConfigDict(extra="forbid")

    workflow: dict[str, Any] = Field(json_schema_extra=_workflow_schema)

    _links = field_validator("workflow")(_integral_link_indices)


class ValidationReport(_Model):
    """Answer of POST /validate: ComfyUI's verdict without running anything."""

    ok: bool
    checked: bool = Field(description="false when object_info was unavailable (not checked)")
    error: dict[str, Any] | None = None
    node_errors: dict[str, Any] = Field(default_factory=dict)


class Progress(_Model):
    """Where a running job is: node i of n, and the sampler's step when one is running."""

    node_id: str | None = None
    node_type: str | None = None
    nodes_done: int = 0
    nodes_total: int = 0
    step: int | None = None
    steps: int | None = None


class OutputInfo(_Model):
    """One output; download it from ``GET /jobs/{id}/outputs/{index}``.

    Every kind is a file: images (``SaveImageWebsocket`` ones included), gifs, video, audio,
    ``3d`` meshes, and ``text`` (PreviewAny), whose string is also given inline in ``text``.
    """

    index: int
    node_id: str
    filename: str
    kind: str = Field(
        description='the history key it came from: "images", "gifs", "audio", "3d", "text", ...'
    )
    mime: str
    size: int
    sha256: str
    data_b64: str | None = Field(
        default=None, description="the bytes, only in POST /generate answers (when small enough)"
    )
    text: str | None = Field(
        default=None,
        description="a text output's string (when at most"
        f" {defaults.TEXT_OUTPUT_INLINE_MAX_CHARS:,} characters; the file always has it)",
    )


class JobError(_Model):
    """Why a job failed; ComfyUI's validation and execution details are carried through."""

    model_config = ConfigDict(extra="allow")

    type: str
    message: str
    node_id: str | None = None
    node_type: str | None = None
    node_errors: dict[str, Any] | None = None
    exception_type: str | None = None
    traceback_tail: list[str] | None = None


class Timings(_Model):
    """Seconds per phase of a job.  The phases do not overlap (they add up to at most ``total``);
    a phase the job never reached is null.  ``total`` is the wall time from ``created_at`` to
    the final status, so it is what the job took, cold start included.  The phases, in order and
    with their labels, are ``ryla_modal.job.TIMING_PHASES``."""

    queued: float | None = Field(
        default=None,
        description="accepted, not yet begun by a worker (on Modal: waiting for a GPU container)",
    )
    container_start: float | None = Field(
        default=None,
        description="on Modal: the GPU container booting (Python and our code importing) until"
        " its @modal.enter ran, while the job waited for it",
    )
    starting_comfyui: float | None = Field(
        default=None, description="ComfyUI (re)starting while the job waited for it"
    )
    fetching_inputs: float | None = Field(
        default=None, description="the worker fetching the inputs given by URL"
    )
    uploading_inputs: float | None = Field(
        default=None, description="sending the job's input files to ComfyUI"
    )
    waiting_in_comfyui: float | None = Field(
        default=None, description="submitted, behind other prompts in ComfyUI's own queue"
    )
    model_load: float | None = Field(
        default=None,
        description="executing model loader nodes (CheckpointLoader*, LoraLoader*, UNETLoader,"
        " VAELoader, CLIPLoader, ...): reading weights, mostly on a job's first run",
    )
    executing: float | None = Field(
        default=None, description="the rest of ComfyUI's execution (samplers, decoders, savers)"
    )
    collecting_outputs: float | None = Field(
        default=None, description="downloading the output files from ComfyUI"
    )
    storing_outputs: float | None = Field(
        default=None, description="handing the output files to the job store"
    )
    total: float | None = Field(default=None, description="created_at to the final status")
    restored: bool | None = Field(
        default=None,
        description="the ComfyUI this job waited for came from a Modal memory snapshot (true)"
        " or started cold (false); null when the job waited for no ComfyUI start",
    )


class WebhookStatus(_Model):
    """Where the job's webhook delivery stands; every attempt is counted here."""

    events: list[WebhookEvent] = Field(description="the final statuses announced")
    state: WebhookState = Field(
        default="waiting",
        description="waiting (job not final), pending (being delivered or retried), delivered,"
        " failed (retries ran out), not_sent (the final status is not among the events)",
    )
    attempts: int = 0
    delivered_at: float | None = None
    last_status: int | None = Field(
        default=None, description="HTTP status of the last attempt (null: no answer)"
    )
    last_error: str | None = None
    next_attempt_at: float | None = None
    due_since: float | None = Field(
        default=None, description="when the job became final; the retry budget counts from it"
    )


class Job(_Model):
    job_id: str
    status: JobStatus
    phase: JobPhase | None = None
    created_at: float
    updated_at: float
    progress: Progress | None = None
    outputs: list[OutputInfo] = Field(default_factory=list)
    error: JobError | None = None
    timings: Timings = Field(default_factory=Timings)
    call_id: str | None = Field(
        default=None,
        # records stored before the field was public called it function_call_id
        validation_alias=AliasChoices("call_id", "function_call_id"),
        description="on Modal, the worker's FunctionCall id: `modal app logs APP"
        " --function-call ID` shows this job's log lines",
    )
    webhook: WebhookStatus | None = Field(
        default=None, description="the webhook's delivery, when the job asked for one"
    )

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES


class InputMeta(_Model):
    """An input as the record remembers it: never the bytes, never a URL's query string."""

    name: str
    size: int | None = None  # None: a URL, fetched later by the worker
    sha256: str | None = None  # a URL's expected sha256, if given
    url: str | None = None  # redacted (netsafety.redact_url)
    url_sha256: str | None = None  # sha256 of the full URL: "the same job" compares it


class JobRecord(Job):
    """What a job store keeps: the public ``Job`` plus the server's own bookkeeping."""

    workflow_sha256: str
    inputs: list[InputMeta] = Field(default_factory=list)
    timeout_s: int | None = None
    previews: bool = False
    cancel_requested: bool = False
    #: the webhook's URL (kept off the public Job: its query may hold the receiver's secret)
    webhook_url: str | None = None
    #: the gateway's URL as the submitter reached it: download links in the webhook start here
    webhook_base_url: str | None = None
    revision: int = 0  # bumped by every store update; long polls wait for it to move

    def public(self) -> Job:
        return Job.model_validate(self.model_dump(include=set(Job.model_fields)))


class JobPage(_Model):
    """Answer of GET /jobs: newest first; ``next`` continues the list (``?before=next``)."""

    jobs: list[Job]
    next: str | None = Field(default=None, description="cursor of the next page; null at the end")


class JobLogs(_Model):
    """Answer of GET /jobs/{id}/logs: the log lines of one job's run.

    ``source: "comfyui"``: ComfyUI's own lines captured while the job ran (``ryla serve``).
    ``source: "modal"``: the lines live with Modal; fetch them with ``modal app logs APP
    --function-call CALL_ID`` (``lines`` is empty).
    """

    job_id: str
    source: Literal["comfyui", "modal"]
    lines: list[str] = Field(default_factory=list)
    call_id: str | None = None


class Health(_Model):
    """GET /health: 200 whenever the gateway answers; ``degraded`` when its ComfyUI is not ok.

    ``comfyui`` (``ryla serve`` only; null on Modal, where each worker watches its own): ``ok``,
    ``unresponsive`` (holds its port, does not answer: stopped or stuck), ``down`` (nothing
    listens), ``restarting`` (the ComfyUI serve launched exited and is being started again) or
    ``failed`` (every restart failed).  ``comfyui_restarts`` counts restarts since serve began.
    """

    status: Literal["ok", "degraded"] = "ok"
    version: str
    executor: str
    comfyui: Literal["ok", "unresponsive", "down", "restarting", "failed"] | None = None
    comfyui_restarts: int | None = None


class ErrorDetail(_Model):
    model_config = ConfigDict(extra="allow")

    type: str
    message: str


class ErrorResponse(_Model):
    """Every error answer: ``{"error": {"type", "message", ...details}}``."""

    error: ErrorDetail


def workflow_identity(workflow: Mapping[str, Any], inputs: Iterable[InputMeta] = ()) -> str:
    """sha256 of the canonical JSON of a workflow and its inputs: "the same job" means this."""
    doc = {
        "workflow": workflow,
        "inputs": sorted(
            [i.name, i.sha256 or ""] + ([i.url_sha256] if i.url_sha256 else []) for i in inputs
        ),
    }
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


__all__ = [
    "ACTIVE_STATUSES",
    "BASE64_PATTERN",
    "ERR_CANCELLED",
    "ERR_COMFYUI_UNAVAILABLE",
    "ERR_EXECUTION",
    "ERR_INPUT_FETCH_FAILED",
    "ERR_INPUT_SHA256_MISMATCH",
    "ERR_INPUT_TOO_LARGE",
    "ERR_INPUT_URL_REFUSED",
    "ERR_INVALID_INPUT",
    "ERR_SERVER_RESTARTED",
    "ERR_SERVER_STOPPED",
    "ERR_TIMEOUT",
    "ERR_WORKER_DIED",
    "INPUT_NAME_PATTERN",
    "INPUT_URL_MAX_CHARS",
    "INPUT_URL_PATTERN",
    "JOB_ID_PATTERN",
    "SHA256_PATTERN",
    "TERMINAL_STATUSES",
    "WORKFLOW_JSON_SCHEMA",
    "ErrorDetail",
    "ErrorResponse",
    "Health",
    "InputMeta",
    "InputSpec",
    "Job",
    "JobError",
    "JobLogs",
    "JobPage",
    "JobPhase",
    "JobRecord",
    "JobRequest",
    "JobStatus",
    "OutputInfo",
    "Progress",
    "Timings",
    "ValidateRequest",
    "ValidationReport",
    "WebhookRequest",
    "WebhookStatus",
    "workflow_identity",
]
