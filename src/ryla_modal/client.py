"""`RylaClient` and `AsyncRylaClient`: submit, wait, download and generate over the job API.

Both clients share one pure core (`_Core`).  It builds every request, parses every answer, maps
errors, and runs the multi-step work (wait, download, generate) as *flows*: generators that yield
what they need done — send this request, save this output, sleep, write this file, show this
event — and receive the result.  Each client only performs those steps, with its own sending,
sleeping and file I/O; that is all that exists twice.  The library never prints: progress reaches
the caller as `JobEvent`s through a callback.

Every call has one total deadline (its ``timeout``), inside which retries run; a request also
stops at the client's request budget and, while waiting, at the job's phase budgets.  The sync
client enforces it on every socket operation (`_transport`), the async one with
``asyncio.timeout``; a trickling server cannot stretch it.

    with RylaClient("https://ws--ryla-comfyui-gateway.modal.run") as client:
        result = client.generate(Workflow.load("wf.json"), out_dir="outputs")
        print([f.path for f in result.files])
"""

from __future__ import annotations

# asyncio is imported inside AsyncRylaClient's methods: a sync caller (every `ryla generate`)
# would otherwise pay ~17 ms for it at start-up.
import base64
import dataclasses
import math
import re
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import quote, unquote, urlsplit

import httpx

from ryla_modal import __version__, defaults
from ryla_modal._transport import Aborted, DeadlineTransport, deadline_scope
from ryla_modal.config import ClientSettings, resolve_client_settings
from ryla_modal.errors import (
    AuthError,
    ColdStartTimeout,
    EndpointUnavailable,
    ExecutionError,
    ExecutionTimeout,
    JobCancelled,
    JobIdError,
    RequestTimeout,
    RylaError,
    RylaTimeout,
    WorkflowFormatError,
    WorkflowValidationError,
)
from ryla_modal.job import Job, OutputInfo
from ryla_modal.outputs import manifest_path, output_name, save_stream, write_json_atomic
from ryla_modal.policy import (
    Deadline,
    RetryNotice,
    RetryPolicy,
    http_timeout,
    in_cold_start,
    is_retryable_status,
    parse_retry_after,
    retrying,
    transport_cause,
)

if TYPE_CHECKING:  # pragma: no cover
    from ryla_modal.workflow import Workflow

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
_JOB_ID = re.compile(defaults.JOB_ID_PATTERN)
_MAX_POLLS = 1_000_000  # the phase deadlines end a wait; the count is a backstop

WorkflowLike = Mapping[str, Any] | Any  # a dict or a `Workflow` (anything with .to_dict())
EventCallback = Callable[["JobEvent"], None]
T = TypeVar("T")


# --------------------------------------------------------------------------- typed results
@dataclass(frozen=True)
class SavedOutput:
    """One output file written under the output folder."""

    index: int
    node_id: str
    path: Path
    mime: str
    size: int
    sha256: str
    kind: str = ""  # the output's kind: "images", "audio", "3d", "text", ...
    text: str | None = None  # a text output's string (the file holds it too)


@dataclass(frozen=True)
class JobEvent:
    """Something the caller may want to show: a new job state, a retry, a download, the end.

    ``kind`` is one of ``submitted``, ``update``, ``retry``, ``downloading``, ``saved``,
    ``done``.  ``elapsed_s`` counts from the start of the call, or for ``downloading`` and
    ``saved`` from the start of the download.  ``job`` is the job as last seen (``None`` only
    for a retry before the first answer); ``retry`` says what is retried, after which attempt,
    how long we wait and why.
    """

    kind: str
    job: Job | None
    elapsed_s: float
    output: SavedOutput | None = None
    retry: RetryNotice | None = None
    job_id: str | None = None

    def __post_init__(self) -> None:
        if self.job_id is None and self.job is not None:
            object.__setattr__(self, "job_id", self.job.job_id)

    def __str__(self) -> str:
        """One readable line, so ``on_event=print`` shows the progress (the README's example).

        ``12.3s  update  3f2c…  running · executing · node 2/5 KSampler · step 7/20``
        """
        job = self.job
        if self.retry is not None or job is None:
            return f"{self.elapsed_s:6.1f}s  {self.kind:<11} {self.job_id or '-'}  {self.retry}"
        parts: list[str] = [job.status]
        if job.phase and job.phase != "done":
            parts.append(job.phase.replace("_", " "))
        p = job.progress
        if p is not None and p.nodes_total and job.status == "running":
            node = f"node {min(p.nodes_done + 1, p.nodes_total)}/{p.nodes_total}"
            parts.append(node + (f" {p.node_type}" if p.node_type else ""))
            if p.step is not None and p.steps:
                parts.append(f"step {p.step}/{p.steps}")
        if job.status == "succeeded":
            parts.append(f"{len(job.outputs)} output(s)")
        if job.error is not None:
            parts.append(f"{job.error.type}: {job.error.message}".splitlines()[0])
        if self.output is not None:
            parts.append(f"saved {self.output.path}")
        return f"{self.elapsed_s:6.1f}s  {self.kind:<11} {job.job_id}  {' · '.join(parts)}"


@dataclass(frozen=True)
class GenerateResult:
    job: Job
    files: list[SavedOutput]
    manifest: Path | None
    workflow: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def texts(self) -> list[str]:
        """The strings of the text outputs (PreviewAny & co.), in output order."""
        return [f.text for f in self.files if f.text is not None]


@dataclass(frozen=True)
class JobPage:
    """One page of ``GET /jobs``, newest first; pass ``next`` as ``before`` for the next page."""

    jobs: list[Job]
    next: str | None


@dataclass(frozen=True)
class InputUpload:
    """A file ComfyUI needs in its input folder (referenced by name from a LoadImage node)."""

    name: str
    data: bytes

    @classmethod
    def from_path(cls, path: str | Path) -> InputUpload:
        p = Path(path)
        return cls(p.name, p.read_bytes())


@dataclass(frozen=True)
class InputURL:
    """A file for ComfyUI's input folder that the server fetches from ``url`` itself.

    Large files need not travel through the job API.  The server fetches public http(s) URLs
    only (no redirects, a size cap); ``sha256`` set: a different file fails the job before it
    runs.  ``name`` is what the workflow's LoadImage names.
    """

    name: str
    url: str = field(repr=False)  # presigned URLs carry secrets
    sha256: str | None = None

    @classmethod
    def from_url(cls, url: str, *, name: str | None = None, sha256: str | None = None) -> InputURL:
        """Name by the URL's last path segment; a ``#sha256=HEX`` fragment gives the checksum
        (fragments never leave the client, so the URL fetched is the same without it)."""
        base, _, fragment = url.partition("#")
        if sha256 is None and fragment.startswith("sha256="):
            sha256 = fragment[len("sha256=") :]
        return cls(name or unquote(urlsplit(base).path.rsplit("/", 1)[-1]), base, sha256)


InputLike = InputUpload | InputURL


class _RetryableStatus(Exception):
    """An answer that asks us to try again (429, 502, 503, 504, 408)."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


# --------------------------------------------------------------------------- steps of a flow
@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    params: dict[str, Any] | None = None
    json: dict[str, Any] | None = None
    read_timeout_s: float = defaults.READ_TIMEOUT_S


@dataclass(frozen=True)
class _Call:
    """Send one request (retried, under ``limit``) and parse the answer with ``parse``."""

    req: _Request
    phase: str
    limit: Deadline
    parse: Callable[[Any], Any]
    job_id: str | None = None
    on_retry: Callable[[RetryNotice], None] | None = None


@dataclass(frozen=True)
class _Save(_Call):
    """Download output ``output`` of ``job`` into ``folder`` (streamed to disk, checksummed)."""

    output: OutputInfo | None = None
    folder: Path = Path()


@dataclass(frozen=True)
class _Sleep:
    seconds: float


@dataclass(frozen=True)
class _WriteJson:
    path: Path
    data: dict[str, Any]


_Step = _Call | _Sleep | _WriteJson | JobEvent
Flow = Generator[_Step, Any, T]


class _Steps(Generic[T]):
    """Advances a flow: ``next()`` gives its next step (``None`` once it has returned)."""

    def __init__(self, flow: Flow[T]) -> None:
        self._flow = flow
        self.value: Any = None  # the result of the step just performed, sent back in
        self.result: T | None = None

    def next(self) -> _Step | None:
        try:
            return self._flow.send(self.value)
        except StopIteration as stop:
            self.result = stop.value
            return None


class _Run:
    """One call's flow: its deadline, the elapsed clock, the last job seen, retries as they come.

    A retry is announced while the request is still being retried: straight to ``on_event``,
    or (with no callback, as in ``iter_events``) as soon as the step that retried returns.
    """

    def __init__(
        self, job_id: str | None, on_event: EventCallback | None, timeout: float | None
    ) -> None:
        self.started = time.monotonic()
        self.job_id = job_id
        self.on_event = on_event
        self.limit = Deadline(timeout, "timeout")  # the whole call's deadline
        self.job: Job | None = None
        self.pending: list[JobEvent] = []
        self.cold: Deadline | None = None  # set by a flow whose cold start began earlier

    def event(
        self, kind: str, job: Job, output: SavedOutput | None = None, since: float | None = None
    ) -> JobEvent:
        self.job = job
        elapsed = time.monotonic() - (self.started if since is None else since)
        return JobEvent(kind, job, elapsed, output)

    def retry(self, notice: RetryNotice) -> None:
        elapsed = time.monotonic() - self.started
        ev = JobEvent("retry", self.job, elapsed, retry=notice, job_id=self.job_id)
        if self.on_event is not None:
            self.on_event(ev)
        else:
            self.pending.append(ev)

    def call(self, step: _Call) -> Flow[Any]:
        result = yield step
        while self.pending:
            yield self.pending.pop(0)
        return result


# --------------------------------------------------------------------------- the pure core
class _Core:
    """Everything that is not I/O, shared by both clients."""

    def __init__(self, settings: ClientSettings, policy: RetryPolicy) -> None:
        self.settings = settings
        self.policy = policy

    # requests ---------------------------------------------------------------------------
    def headers(self) -> dict[str, str]:
        h = {"user-agent": f"ryla-modal/{__version__}", "accept": "application/json"}
        s = self.settings
        if s.token:
            h["authorization"] = f"Bearer {s.token.get_secret_value()}"
        if s.modal_key and s.modal_secret:
            h["modal-key"] = s.modal_key.get_secret_value()
            h["modal-secret"] = s.modal_secret.get_secret_value()
        return h

    @staticmethod
    def job_path(job_id: str, *rest: str) -> str:
        """``/jobs/{id}/...`` with the id checked and sent as one escaped path segment."""
        if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
            raise JobIdError(
                f"{job_id!r} is not a job id (letters, digits, '-' and '_', at most 64)",
                hint="copy the id from `ryla jobs list` or from the output of `ryla generate`",
            )
        return "/".join(["/jobs", quote(job_id, safe=""), *rest])

    def call(
        self,
        req: _Request,
        phase: str,
        limit: Deadline | float | None,
        parse: Callable[[Any], Any],
        job_id: str | None = None,
        on_retry: Callable[[RetryNotice], None] | None = None,
    ) -> _Call:
        if not isinstance(limit, Deadline):
            limit = Deadline(limit, "timeout")
        return _Call(req, phase, limit, parse, job_id, on_retry)

    def health(self, timeout: float | None) -> _Call:
        return self.call(_Request("GET", "/health"), "health", timeout, self.parse_health)

    def submit(
        self,
        workflow: WorkflowLike,
        job_id: str,
        inputs: Sequence[InputLike],
        timeout_s: int | None,
        limit: Deadline | float | None,
        on_retry: Callable[[RetryNotice], None] | None = None,
        previews: bool = False,
        webhook: WebhookLike | None = None,
    ) -> _Call:
        self.job_path(job_id)
        body: dict[str, Any] = {"job_id": job_id, "workflow": _workflow_dict(workflow)}
        if webhook is not None:
            body["webhook"] = _webhook_body(webhook)
        if inputs:
            body["inputs"] = [_input_body(i) for i in inputs]
        if timeout_s is not None:
            body["timeout_s"] = int(timeout_s)
        if previews:
            body["previews"] = True
        parse = self.job_parser(job_id, lookup=False)
        return self.call(
            _Request("POST", "/jobs", json=body), "submit", limit, parse, job_id, on_retry
        )

    def status(
        self,
        job_id: str,
        wait: float,
        limit: Deadline | float | None,
        phase: str = "status",
        on_retry: Callable[[RetryNotice], None] | None = None,
    ) -> _Call:
        wait_s = max(0, min(int(wait), defaults.LONG_POLL_MAX_S))
        req = _Request(
            "GET",
            self.job_path(job_id),
            params={"wait": wait_s} if wait_s else None,
            read_timeout_s=defaults.READ_TIMEOUT_S + wait_s,
        )
        return self.call(req, phase, limit, self.job_parser(job_id), job_id, on_retry)

    def cancel(self, job_id: str, timeout: float | None) -> _Call:
        req = _Request("POST", self.job_path(job_id, "cancel"))
        return self.call(req, "cancel", timeout, self.job_parser(job_id), job_id)

    def object_info(self, timeout: float | None) -> _Call:
        return self.call(_Request("GET", "/object_info"), "object_info", timeout, self.parse_object)

    def models(self, timeout: float | None) -> _Call:
        return self.call(_Request("GET", "/models"), "models", timeout, self.parse_models)

    def validate(self, workflow: WorkflowLike, timeout: float | None) -> _Call:
        req = _Request("POST", "/validate", json={"workflow": _workflow_dict(workflow)})
        return self.call(req, "validate", timeout, self.parse_object)

    def list_jobs(
        self, status: str | None, limit: int, before: str | None, timeout: float | None
    ) -> _Call:
        params = {"status": status, "limit": int(limit), "before": before}
        req = _Request("GET", "/jobs", params={k: v for k, v in params.items() if v is not None})
        return self.call(req, "list", timeout, self.parse_page)

    def job_logs(self, job_id: str, timeout: float | None) -> _Call:
        req = _Request("GET", self.job_path(job_id, "logs"))
        return self.call(req, "logs", timeout, lambda r: self.parse_logs(r, job_id), job_id)

    def output(self, run: _Run, job: Job, out: OutputInfo, folder: Path) -> _Save:
        req = _Request("GET", self.job_path(job.job_id, "outputs", str(out.index)))
        return _Save(req, "download", run.limit, _same, job.job_id, run.retry, out, folder)

    @staticmethod
    def request_args(step: _Call, deadline: Deadline) -> dict[str, Any]:
        req = step.req
        return {
            "method": req.method,
            "url": req.path,
            "params": req.params,
            "json": req.json,
            "timeout": http_timeout(deadline.cap(req.read_timeout_s)),
        }

    # retries and failures ---------------------------------------------------------------
    def deadline_for(self, step: _Call) -> Deadline:
        """The step's own limit, or the request budget if that passes first."""
        return Deadline.earliest(
            step.limit, Deadline(self.settings.request_budget_s, "request budget")
        )

    def retrying(
        self, step: _Call, deadline: Deadline, sleep: Callable[[float], Any], *, asynchronous: bool
    ) -> Any:
        return retrying(
            self.policy,
            what=f"{step.req.method} {step.req.path}",
            deadline=deadline,
            cause_of=_retry_cause,
            retry_after_of=_retry_after,
            sleep=sleep,
            on_retry=step.on_retry,
            asynchronous=asynchronous,
        )

    @staticmethod
    def accept(response: httpx.Response) -> httpx.Response:
        """Hand an answer that asks for another try to the retry loop."""
        if is_retryable_status(response.status_code):
            raise _RetryableStatus(response)
        return response

    def failure(
        self, exc: BaseException, step: _Call, deadline: Deadline, attempts: int
    ) -> BaseException:
        """The error a failed step ends with (``exc`` itself when it is already ours)."""
        if isinstance(exc, RylaError):
            return exc
        if isinstance(exc, _RetryableStatus):
            return self.gave_up(exc.response, attempts)
        if isinstance(exc, TimeoutError) or (  # DeadlineExceeded, asyncio.timeout
            isinstance(exc, httpx.TransportError) and deadline.expired()
        ):
            return self.timed_out(step.phase, deadline, step.job_id)
        if isinstance(exc, Aborted):
            return RylaError(f"{step.phase} stopped: {exc}")
        if isinstance(exc, httpx.TransportError) and isinstance(step, _Save):
            return EndpointUnavailable(
                f"download of output {step.output.index if step.output else '?'} of job"
                f" {step.job_id} failed: {type(exc).__name__}: {exc}",
                hint=f"`ryla jobs wait {step.job_id}` downloads it again",
            )
        if isinstance(exc, httpx.TransportError):
            return EndpointUnavailable(
                f"could not reach {self.settings.endpoint}: {type(exc).__name__}: {exc}",
                hint="check the endpoint (`ryla health`) and your network",
            )
        if isinstance(exc, httpx.TooManyRedirects):
            return EndpointUnavailable(
                f"{self.settings.endpoint} redirected {step.phase} too many times (a loop?): {exc}",
                hint="check the endpoint URL: it should be the gateway's own address",
            )
        return exc

    def timed_out(self, phase: str, deadline: Deadline, job_id: str | None) -> RylaTimeout:
        kind = {"cold start": ColdStartTimeout, "execution": ExecutionTimeout}.get(
            phase, RequestTimeout
        )
        subject = f"job {job_id}" if job_id else self.settings.endpoint
        message = f"{subject}: {phase} ran out of time (the {deadline.describe()} passed)"
        if phase == "cold start":
            message += "; no GPU container picked it up, or ComfyUI did not become ready"
        hint = (
            f"the job keeps running: `ryla jobs wait {job_id}` resumes waiting"
            if job_id
            else "check the endpoint (`ryla health`), or allow more time with --timeout"
        )
        return kind(message, job_id=job_id, phase=phase, hint=hint)

    def gave_up(self, response: httpx.Response, attempts: int) -> EndpointUnavailable:
        """The error once retries of a 429/5xx answer are spent (or not worth trying)."""
        code = response.status_code
        message = str(_error_body(response).get("message") or response.reason_phrase)
        asked = parse_retry_after(response.headers)
        if asked is not None and asked > self.policy.retry_after_cap_s:
            return EndpointUnavailable(
                f"{self.settings.endpoint} answered HTTP {code} ({message}) and asked us to come"
                f" back in {asked:.0f}s, more than the {self.policy.retry_after_cap_s:g}s we wait",
                hint="the deployment is overloaded or paused; try again later",
            )
        return EndpointUnavailable(
            f"{self.settings.endpoint} kept answering HTTP {code} ({message})"
            f" after {attempts} attempt{'s' if attempts != 1 else ''}",
            hint="the deployment may be overloaded or restarting; try again in a minute",
        )

    # answers ----------------------------------------------------------------------------
    def check(self, response: httpx.Response, *, job_id: str | None = None) -> None:
        """Raise the right error for an unsuccessful answer (after retries)."""
        if response.status_code < 400:
            return
        err = _error_body(response)
        message = str(err.get("message") or response.reason_phrase or "request failed")
        code = response.status_code
        endpoint = self.settings.endpoint
        if code in (401, 403):
            raise AuthError(
                f"{endpoint} refused our credentials (HTTP {code}): {message}",
                hint="set RYLA_TOKEN (ryla serve) or RYLA_MODAL_KEY/RYLA_MODAL_SECRET (Modal)",
            )
        if code == 404 and job_id is not None:
            raise RylaError(
                f"job {job_id} is not known to {endpoint}",
                hint="check the job id and the endpoint (`ryla jobs status ID --endpoint URL`)",
            )
        if code == 409:
            raise RylaError(f"conflict: {message}", hint="use a new job id for a new workflow")
        if code == 422 and err.get("node_errors"):
            raise WorkflowValidationError(
                f"the workflow was rejected: {message}",
                error=err,
                node_errors=dict(err["node_errors"]),
                hint="fix the nodes listed above; `ryla validate WORKFLOW` checks without a GPU",
            )
        if code in (413, 422):
            raise WorkflowFormatError(f"{message} (HTTP {code})", hint=err.get("hint"))
        raise EndpointUnavailable(f"{endpoint} answered HTTP {code}: {message}")

    def parse_object(self, response: httpx.Response, job_id: str | None = None) -> dict[str, Any]:
        self.check(response, job_id=job_id)
        try:
            data = response.json()
        except ValueError as exc:
            raise EndpointUnavailable(f"{self.settings.endpoint} answered with no JSON") from exc
        if not isinstance(data, dict):
            raise EndpointUnavailable(f"{self.settings.endpoint} answered with a non-object")
        return data

    def parse_models(self, response: httpx.Response) -> dict[str, list[str]]:
        folders = self.parse_object(response).get("folders")
        return {str(k): [str(f) for f in v] for k, v in (folders or {}).items()}

    def parse_health(self, response: httpx.Response) -> dict[str, Any]:
        self.check(response)
        try:
            data = response.json()
        except ValueError as exc:
            raise EndpointUnavailable(f"{self.settings.endpoint} answered with no JSON") from exc
        return dict(data) if isinstance(data, dict) else {"status": str(data)}

    def read_job(self, data: object, expect: str | None, where: str = "job") -> Job:
        try:
            job = Job.from_dict(data, where)
        except ValueError as exc:
            raise EndpointUnavailable(
                f"{self.settings.endpoint} did not answer with a job: {exc}"
            ) from exc
        if expect is not None and job.job_id != expect:
            raise EndpointUnavailable(
                f"{self.settings.endpoint} answered about job {job.job_id!r} when asked about"
                f" job {expect}; refusing to go on with another job's answer",
                hint="check the endpoint: a proxy or cache in front of it may mix up answers",
            )
        return job

    def job_parser(self, job_id: str | None, *, lookup: bool = True) -> Callable[[Any], Job]:
        """Parse a job answer that must be about ``job_id`` (404 = unknown job if ``lookup``)."""

        def parse(response: httpx.Response) -> Job:
            self.check(response, job_id=job_id if lookup else None)
            try:
                data = response.json()
            except ValueError as exc:
                raise EndpointUnavailable(
                    f"{self.settings.endpoint} did not answer with a job: no JSON"
                ) from exc
            return self.read_job(data, job_id)

        return parse

    def parse_page(self, response: httpx.Response) -> JobPage:
        data = self.parse_object(response)
        jobs, cursor = data.get("jobs"), data.get("next")
        if not isinstance(jobs, list) or not (cursor is None or isinstance(cursor, str)):
            raise EndpointUnavailable(
                f"{self.settings.endpoint} did not answer with a page of jobs"
                " ({'jobs': [...], 'next': cursor or null})"
            )
        return JobPage([self.read_job(j, None, f"jobs[{i}]") for i, j in enumerate(jobs)], cursor)

    def parse_logs(self, response: httpx.Response, job_id: str) -> dict[str, Any]:
        data = self.parse_object(response, job_id=job_id)
        lines = data.get("lines")
        if data.get("job_id") != job_id or not isinstance(lines, list):
            raise EndpointUnavailable(
                f"{self.settings.endpoint} did not answer with the logs of job {job_id}"
            )
        return data

    @staticmethod
    def saved(step: _Save, response: httpx.Response, file: tuple[Path, str, int]) -> SavedOutput:
        out = step.output
        assert out is not None
        mime = response.headers.get("content-type", "application/octet-stream")
        path, sha, size = file
        text = out.text
        if text is None and out.kind == "text":  # the job record left a long one out
            text = path.read_text("utf-8", errors="replace")
        return SavedOutput(
            out.index, out.node_id, path, mime.split(";")[0], size, sha, out.kind, text
        )

    @staticmethod
    def save_args(step: _Save, response: httpx.Response) -> dict[str, Any]:
        """What `outputs.save_stream` needs besides the chunks: where, and what to expect."""
        out = step.output
        assert out is not None and step.job_id is not None
        length = response.headers.get("content-length")
        return {
            "folder": step.folder,
            "name": output_name(step.job_id, out.node_id, out.filename),
            "expected_sha256": response.headers.get("x-sha256") or out.sha256,
            "expected_size": int(length) if length and length.isdigit() else None,
        }

    def accept_output(self, response: httpx.Response, step: _Save) -> None:
        self.accept(response)
        self.check(response, job_id=step.job_id)

    # flows ------------------------------------------------------------------------------
    def events(
        self, run: _Run, cold_start_timeout: float | None, execution_timeout: float | None
    ) -> Flow[Job]:
        """Follow a job with long polls until it ends, yielding an ``update`` per change."""
        job_id, limit = run.job_id or "", run.limit
        s = self.settings
        state = _WaitState(
            run.cold or self.cold_budget(cold_start_timeout),
            s.execution_timeout if execution_timeout is None else execution_timeout,
            limit,
        )
        job: Job = yield from run.call(self.status(job_id, 0, limit, "status", run.retry))
        for _ in range(_MAX_POLLS):
            changed = state.changed(job)
            if changed:
                yield run.event("update", job)
            if job.status in TERMINAL:
                return job
            phase, phase_limit = state.phase(job)
            if phase_limit.expired():
                raise self.timed_out(phase, phase_limit, job_id)
            yield _Sleep(state.pause(changed))
            state.polled()
            step = self.status(job_id, state.long_poll(phase_limit), phase_limit, phase, run.retry)
            job = yield from run.call(step)
        raise EndpointUnavailable(f"gave up on job {job_id} after {_MAX_POLLS} polls")

    def cold_budget(self, seconds: float | None) -> Deadline:
        """The cold-start budget, counted from now."""
        if seconds is None:
            seconds = self.settings.cold_start_timeout
        return Deadline(seconds, "cold-start budget")

    def wait(
        self, run: _Run, cold_start_timeout: float | None, execution_timeout: float | None
    ) -> Flow[Job]:
        job = yield from self.events(run, cold_start_timeout, execution_timeout)
        self.raise_for_job(job)
        return job

    def download(self, run: _Run, job: Job, out_dir: str | Path) -> Flow[list[SavedOutput]]:
        self.job_path(job.job_id)
        saved: list[SavedOutput] = []
        started = time.monotonic()  # download events count from here: the downloaded phase
        for out in job.outputs:
            yield run.event("downloading", job, since=started)
            one = yield from run.call(self.output(run, job, out, Path(out_dir)))
            saved.append(one)
            yield run.event("saved", job, one, since=started)
        return saved

    def wake(self, run: _Run, cold_start_timeout: float | None) -> Flow[Job]:
        parse = self.job_parser(None, lookup=False)
        warm = self.call(_Request("POST", "/warmup"), "wake", run.limit, parse, None, run.retry)
        job: Job = yield from run.call(warm)
        run.job_id = job.job_id
        return (yield from self.wait(run, cold_start_timeout, None))

    def generate(
        self,
        run: _Run,
        workflow: WorkflowLike,
        *,
        out_dir: str | Path,
        inputs: Sequence[InputLike],
        previews: bool,
        cold_start_timeout: float | None,
        execution_timeout: float | None,
        write_manifest: bool,
        manifest_extra: Mapping[str, Any] | None,
        webhook: WebhookLike | None = None,
    ) -> Flow[GenerateResult]:
        """Submit, wait, download every output and write the manifest."""
        job_id = _new_id(run.job_id)
        run.job_id = job_id
        wf = _workflow_dict(workflow)
        # The cold start is counted from the submit: getting the job accepted (a gateway that
        # boots, or does not answer) is part of the wait for it to start.
        run.cold = self.cold_budget(cold_start_timeout)
        submit_limit = Deadline.earliest(run.limit, run.cold)
        job: Job = yield from run.call(
            self.submit(wf, job_id, inputs, None, submit_limit, run.retry, previews, webhook)
        )
        yield run.event("submitted", job)
        job = yield from self.wait(run, cold_start_timeout, execution_timeout)
        files = yield from self.download(run, job, out_dir)
        manifest = None
        if write_manifest:
            path = manifest_path(Path(out_dir), job.job_id)
            manifest = yield _WriteJson(path, _manifest(job, wf, files, manifest_extra))
        yield run.event("done", job)
        return GenerateResult(job, files, manifest, wf)

    @staticmethod
    def raise_for_job(job: Job) -> None:
        """Turn a finished job that did not succeed into its error."""
        if job.status == "succeeded":
            return
        err = job.error
        message = err.message if err is not None else f"job {job.status}"
        if job.status == "cancelled":
            raise JobCancelled(f"job {job.job_id} was cancelled: {message}", job_id=job.job_id)
        if err is not None and err.node_errors:
            raise WorkflowValidationError(
                f"job {job.job_id}: the workflow was rejected: {message}",
                error=err.to_dict(),
                node_errors=dict(err.node_errors),
            )
        raise ExecutionError(
            f"job {job.job_id} failed: {message}",
            job_id=job.job_id,
            node_id=err.node_id if err else None,
            node_type=err.node_type if err else None,
            exception_type=err.exception_type if err else None,
            traceback_tail=list(err.traceback_tail or []) if err else [],
        )


def _new_id(job_id: str | None) -> str:
    """The caller's job id (checked later, like any), or a new UUID."""
    return str(uuid.uuid4()) if job_id is None else job_id


def _same(value: Any) -> Any:
    return value


def _deliver(
    step: JobEvent | _Sleep, on_event: EventCallback | None, sleep: Callable[[float], None]
) -> None:
    """The steps both clients perform alike: show an event, or (sync only) sleep."""
    if isinstance(step, _Sleep):
        sleep(step.seconds)
    elif on_event is not None:
        on_event(step)


def _retry_cause(exc: BaseException) -> str | None:
    if isinstance(exc, _RetryableStatus):
        return f"HTTP {exc.response.status_code}"
    return transport_cause(exc)


def _retry_after(exc: BaseException) -> float | None:
    return parse_retry_after(exc.response.headers) if isinstance(exc, _RetryableStatus) else None


def _input_body(item: InputLike) -> dict[str, Any]:
    if isinstance(item, InputURL):
        body: dict[str, Any] = {"name": item.name, "url": item.url}
        if item.sha256 is not None:
            body["sha256"] = item.sha256
        return body
    return {"name": item.name, "data_b64": base64.b64encode(item.data).decode("ascii")}


def _error_body(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {"message": response.text[:300]}
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return dict(body["error"])
    return {"message": str(body)[:300]}


def _job_key(job: Job) -> tuple[Any, ...]:
    p = job.progress
    return (
        job.status,
        job.phase,
        p.node_id if p else None,
        p.nodes_done if p else None,
        p.step if p else None,
    )


class _WaitState:
    """Phase budgets for one wait (cold start first, then execution) and the poll pace."""

    def __init__(self, cold: Deadline, execution_s: float | None, limit: Deadline) -> None:
        self.cold = cold
        self.execution_s = execution_s
        self.execution: Deadline | None = None
        self.limit = limit
        self.last_key: tuple[Any, ...] | None = None
        self.last_poll = -math.inf

    def changed(self, job: Job) -> bool:
        key = _job_key(job)
        changed = key != self.last_key
        self.last_key = key
        return changed

    def phase(self, job: Job) -> tuple[str, Deadline]:
        """The phase the job is in, and the deadline that ends it (its budget or the call's)."""
        if in_cold_start(job.status, job.phase):
            return "cold start", Deadline.earliest(self.cold, self.limit)
        if self.execution is None:
            self.execution = Deadline(self.execution_s, "execution budget")
        return "execution", Deadline.earliest(self.execution, self.limit)

    @staticmethod
    def long_poll(limit: Deadline) -> int:
        """Seconds the server may hold the next poll: never below a floor, even at the end."""
        remaining = limit.remaining()
        wait = defaults.LONG_POLL_WAIT_S
        if remaining is not None:
            wait = min(wait, math.ceil(remaining))
        return max(defaults.LONG_POLL_MIN_S, wait)

    def pause(self, changed: bool) -> float:
        """How long to sleep before the next poll: always a little, so the loop can never spin;
        after an answer with nothing new, until the minimum interval since the last poll.
        After a change the next (long) poll goes out at once, so the end is seen at once."""
        if changed:
            return defaults.POLL_MIN_SLEEP_S
        since = time.monotonic() - self.last_poll
        return max(defaults.POLL_MIN_SLEEP_S, defaults.POLL_MIN_INTERVAL_S - since)

    def polled(self) -> None:
        self.last_poll = time.monotonic()


def _tls_verify(endpoint: str) -> ssl.SSLContext | bool:
    """Certificate checking for ``endpoint``.

    https: httpx's default (certifi), always.  Plain http (``ryla serve`` on loopback) never
    uses TLS, so loading the CA bundle would only cost ~90 ms per CLI run; it gets an empty
    context instead, which still requires and checks certificates — a redirect to https would
    fail closed, never connect unverified.
    """
    if endpoint.startswith("https://"):
        return True
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


#: A webhook as callers give it: its URL, or ``{"url": ..., "events": [...]}``.
WebhookLike = str | Mapping[str, Any]


def _webhook_body(webhook: WebhookLike) -> dict[str, Any]:
    """The request's ``webhook`` object; the server checks the URL and the events."""
    if isinstance(webhook, str):
        return {"url": webhook}
    body = dict(webhook)
    if "events" in body and body["events"] is not None:
        body["events"] = list(body["events"])
    return body


def _workflow_dict(workflow: WorkflowLike) -> dict[str, Any]:
    to_dict = getattr(workflow, "to_dict", None)
    if callable(to_dict):
        result = to_dict()
        if isinstance(result, dict):
            return result
    if isinstance(workflow, Mapping):
        return dict(workflow)
    raise TypeError(f"workflow must be a mapping or a Workflow, not {type(workflow).__name__}")


def _manifest(
    job: Job,
    workflow: Mapping[str, Any],
    files: list[SavedOutput],
    extra: Mapping[str, Any] | None,
) -> dict[str, Any]:
    return {
        **(extra or {}),
        "job_id": job.job_id,
        "status": job.status,
        "created_at": job.created_at,
        "timings": job.timings.to_dict(),
        "workflow": workflow,
        "outputs": [{**dataclasses.asdict(f), "path": f.path.name} for f in files],
    }


HttpT = TypeVar("HttpT", httpx.Client, httpx.AsyncClient)


class _ClientBase(Generic[HttpT]):
    """What the twins share besides the core: settings, and an httpx client made or given."""

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        token: str | None = None,
        modal_key: str | None = None,
        modal_secret: str | None = None,
        retry_policy: RetryPolicy | None = None,
        cold_start_timeout: float | None = None,
        execution_timeout: float | None = None,
        http_client: HttpT | None = None,
    ) -> None:
        settings = resolve_client_settings(
            endpoint=endpoint,
            token=token,
            modal_key=modal_key,
            modal_secret=modal_secret,
            cold_start_timeout=cold_start_timeout,
            execution_timeout=execution_timeout,
        )
        policy = retry_policy or RetryPolicy(max_attempts=settings.max_attempts)
        self._core = _Core(settings, policy)
        self._owns_http = http_client is None
        self._http: HttpT = http_client if http_client is not None else self._new_http()

    def _new_http(self) -> HttpT:
        raise NotImplementedError

    def _http_options(self) -> dict[str, Any]:
        return {
            "base_url": self._core.settings.endpoint,
            "headers": self._core.headers(),
            "follow_redirects": True,
            "timeout": http_timeout(defaults.READ_TIMEOUT_S),
        }

    @property
    def settings(self) -> ClientSettings:
        return self._core.settings


# --------------------------------------------------------------------------- sync client
class RylaClient(_ClientBase[httpx.Client]):
    """Synchronous client of the ryla job API.

    Configuration: arguments > ``RYLA_*`` env > ``./ryla.toml`` > the user config written by
    ``ryla deploy`` > defaults.  Every method takes ``timeout``: that whole call's deadline,
    retries included (``None``: only the client's request budget and the phase budgets).
    Closing the client also stops requests still in flight on other threads.
    """

    # A caller's own http_client keeps httpx's per-read timeouts only (no socket deadline).
    _transport: DeadlineTransport | None = None

    def _new_http(self) -> httpx.Client:
        self._transport = DeadlineTransport(verify=_tls_verify(self._core.settings.endpoint))
        return httpx.Client(transport=self._transport, **self._http_options())

    def close(self) -> None:
        if self._owns_http:
            if self._transport is not None:
                self._transport.abort()
            self._http.close()

    def __enter__(self) -> RylaClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # performing the core's steps ----------------------------------------------------------
    def _run(self, flow: Flow[T], on_event: EventCallback | None = None) -> T:
        steps = _Steps(flow)
        while (step := steps.next()) is not None:
            steps.value = self._perform(step, on_event)
        return steps.result  # type: ignore[return-value]  # set when the flow returned

    def _perform(self, step: _Step, on_event: EventCallback | None = None) -> Any:
        if isinstance(step, JobEvent | _Sleep):
            return _deliver(step, on_event, time.sleep)
        if isinstance(step, _WriteJson):
            return write_json_atomic(step.path, step.data)
        deadline = self._core.deadline_for(step)
        retry = self._core.retrying(step, deadline, time.sleep, asynchronous=False)
        once = self._save if isinstance(step, _Save) else self._request
        try:
            with deadline_scope(deadline):
                return step.parse(retry(once, step, deadline))
        except Exception as exc:
            attempts = retry.statistics.get("attempt_number", 1)
            mapped = self._core.failure(exc, step, deadline, attempts)
            if mapped is exc:
                raise
            raise mapped from exc

    def _request(self, step: _Call, deadline: Deadline) -> httpx.Response:
        return self._core.accept(self._http.request(**self._core.request_args(step, deadline)))

    def _save(self, step: _Save, deadline: Deadline) -> SavedOutput:
        with self._http.stream(**self._core.request_args(step, deadline)) as resp:
            if resp.status_code >= 400:
                resp.read()
            self._core.accept_output(resp, step)
            file = save_stream(chunks=resp.iter_bytes(), **self._core.save_args(step, resp))
            return self._core.saved(step, resp, file)

    # API --------------------------------------------------------------------------------
    def health(self, *, timeout: float | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self._perform(self._core.health(timeout))
        return result

    def submit(
        self,
        workflow: WorkflowLike,
        *,
        job_id: str | None = None,
        inputs: Sequence[InputLike] = (),
        timeout_s: int | None = None,
        previews: bool = False,
        timeout: float | None = None,
        webhook: WebhookLike | None = None,
    ) -> Job:
        """Start a job; safe to call again with the same ``job_id`` (it never runs twice).

        ``timeout_s`` is the job's own limit on the server; ``timeout`` this call's deadline.
        ``webhook``: a URL (or ``{"url", "events"}``) the server POSTs the finished job to,
        signed with the deployment's secret (check it with ``ryla_modal.webhooks.verify``).
        """
        step = self._core.submit(
            workflow,
            _new_id(job_id),
            inputs,
            timeout_s,
            timeout,
            previews=previews,
            webhook=webhook,
        )
        job: Job = self._perform(step)
        return job

    def status(self, job_id: str, *, wait: float = 0, timeout: float | None = None) -> Job:
        job: Job = self._perform(self._core.status(job_id, wait, timeout))
        return job

    def cancel(self, job_id: str, *, timeout: float | None = None) -> Job:
        job: Job = self._perform(self._core.cancel(job_id, timeout))
        return job

    def list_jobs(
        self,
        status: str | None = None,
        limit: int = 20,
        before: str | None = None,
        *,
        timeout: float | None = None,
    ) -> JobPage:
        """One page of jobs, newest first; ``before=page.next`` gives the next page."""
        page: JobPage = self._perform(self._core.list_jobs(status, limit, before, timeout))
        return page

    def job_logs(self, job_id: str, *, timeout: float | None = None) -> dict[str, Any]:
        """The log lines of one job: ``{"job_id", "lines", "source", "call_id"?}``."""
        logs: dict[str, Any] = self._perform(self._core.job_logs(job_id, timeout))
        return logs

    def object_info(self, *, timeout: float | None = None) -> dict[str, Any]:
        """The deployment's ComfyUI node definitions (no GPU needed)."""
        info: dict[str, Any] = self._perform(self._core.object_info(timeout))
        return info

    def models(self, *, timeout: float | None = None) -> dict[str, list[str]]:
        """The deployment's model files by folder (on Modal: the models Volume)."""
        folders: dict[str, list[str]] = self._perform(self._core.models(timeout))
        return folders

    def validate(self, workflow: WorkflowLike, *, timeout: float | None = None) -> dict[str, Any]:
        """Check a workflow against the deployment's nodes and models without running it."""
        report: dict[str, Any] = self._perform(self._core.validate(workflow, timeout))
        return report

    def load_workflow(self, source: str, *, timeout: float | None = None) -> Workflow:
        """Load a workflow file; a UI-format one is converted with this deployment's nodes."""
        from ryla_modal.workflow import load_for_deployment

        return load_for_deployment(source, lambda: self.object_info(timeout=timeout))

    def wake(
        self,
        *,
        on_event: EventCallback | None = None,
        cold_start_timeout: float | None = None,
        timeout: float | None = None,
    ) -> Job:
        """Start a GPU container now and wait until ComfyUI is ready in it (shows the cold
        start); later jobs then skip it while the container stays warm."""
        flow = self._core.wake(_Run(None, on_event, timeout), cold_start_timeout)
        return self._run(flow, on_event)

    def iter_events(
        self,
        job_id: str,
        *,
        cold_start_timeout: float | None = None,
        execution_timeout: float | None = None,
        timeout: float | None = None,
    ) -> Iterator[JobEvent]:
        """Yield an ``update`` event each time the job's state changes (and each retry)."""
        run = _Run(job_id, None, timeout)
        steps = _Steps(self._core.events(run, cold_start_timeout, execution_timeout))
        while (step := steps.next()) is not None:
            if isinstance(step, JobEvent):
                yield step
            steps.value = self._perform(step)

    def wait(
        self,
        job_id: str,
        *,
        on_event: EventCallback | None = None,
        cold_start_timeout: float | None = None,
        execution_timeout: float | None = None,
        timeout: float | None = None,
    ) -> Job:
        """Wait until the job ends; raise its error if it did not succeed."""
        run = _Run(job_id, on_event, timeout)
        flow = self._core.wait(run, cold_start_timeout, execution_timeout)
        return self._run(flow, on_event)

    def download(
        self,
        job: Job,
        out_dir: str | Path,
        *,
        on_event: EventCallback | None = None,
        timeout: float | None = None,
    ) -> list[SavedOutput]:
        """Save every output of a finished job under ``out_dir`` (streamed, checksummed, atomic)."""
        run = _Run(job.job_id, on_event, timeout)
        return self._run(self._core.download(run, job, out_dir), on_event)

    def generate(
        self,
        workflow: WorkflowLike,
        *,
        out_dir: str | Path = "outputs",
        job_id: str | None = None,
        inputs: Sequence[InputLike] = (),
        previews: bool = False,
        on_event: EventCallback | None = None,
        cold_start_timeout: float | None = None,
        execution_timeout: float | None = None,
        write_manifest: bool = True,
        manifest_extra: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        webhook: WebhookLike | None = None,
    ) -> GenerateResult:
        """Submit, wait, download every output and write the manifest: all of it.

        ``timeout`` bounds the whole of it; the phase budgets bound the wait inside it.
        """
        flow = self._core.generate(
            _Run(job_id, on_event, timeout),
            workflow,
            out_dir=out_dir,
            inputs=inputs,
            previews=previews,
            cold_start_timeout=cold_start_timeout,
            execution_timeout=execution_timeout,
            write_manifest=write_manifest,
            manifest_extra=manifest_extra,
            webhook=webhook,
        )
        return self._run(flow, on_event)


# --------------------------------------------------------------------------- async client
class AsyncRylaClient(_ClientBase[httpx.AsyncClient]):
    """The asynchronous twin of `RylaClient`; same arguments, same behaviour.

    Deadlines are enforced with ``asyncio.timeout``; outputs stream to disk through the same
    save path as the sync client's (a worker thread fed one chunk at a time).
    """

    def _new_http(self) -> httpx.AsyncClient:
        verify = _tls_verify(self._core.settings.endpoint)
        return httpx.AsyncClient(verify=verify, **self._http_options())

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncRylaClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # performing the core's steps ----------------------------------------------------------
    async def _run(self, flow: Flow[T], on_event: EventCallback | None = None) -> T:
        steps = _Steps(flow)
        while (step := steps.next()) is not None:
            steps.value = await self._perform(step, on_event)
        return steps.result  # type: ignore[return-value]  # set when the flow returned

    async def _perform(self, step: _Step, on_event: EventCallback | None = None) -> Any:
        import asyncio

        if isinstance(step, JobEvent):
            return _deliver(step, on_event, time.sleep)
        if isinstance(step, _Sleep):
            return await asyncio.sleep(step.seconds)
        if isinstance(step, _WriteJson):
            return await asyncio.to_thread(write_json_atomic, step.path, step.data)
        deadline = self._core.deadline_for(step)
        retry = self._core.retrying(step, deadline, asyncio.sleep, asynchronous=True)
        once = self._save if isinstance(step, _Save) else self._request
        try:
            async with asyncio.timeout(deadline.remaining()):
                return step.parse(await retry(once, step, deadline))
        except Exception as exc:
            attempts = retry.statistics.get("attempt_number", 1)
            mapped = self._core.failure(exc, step, deadline, attempts)
            if mapped is exc:
                raise
            raise mapped from exc

    async def _request(self, step: _Call, deadline: Deadline) -> httpx.Response:
        args = self._core.request_args(step, deadline)
        return self._core.accept(await self._http.request(**args))

    async def _save(self, step: _Save, deadline: Deadline) -> SavedOutput:
        async with self._http.stream(**self._core.request_args(step, deadline)) as resp:
            if resp.status_code >= 400:
                await resp.aread()
            self._core.accept_output(resp, step)
            file = await _save_in_thread(resp.aiter_bytes(), self._core.save_args(step, resp))
            return self._core.saved(step, resp, file)

    # API --------------------------------------------------------------------------------
    async def health(self, *, timeout: float | None = None) -> dict[str, Any]:
        result: dict[str, Any] = await self._perform(self._core.health(timeout))
        return result

    async def submit(
        self,
        workflow: WorkflowLike,
        *,
        job_id: str | None = None,
        inputs: Sequence[InputLike] = (),
        timeout_s: int | None = None,
        previews: bool = False,
        timeout: float | None = None,
        webhook: WebhookLike | None = None,
    ) -> Job:
        step = self._core.submit(
            workflow,
            _new_id(job_id),
            inputs,
            timeout_s,
            timeout,
            previews=previews,
            webhook=webhook,
        )
        job: Job = await self._perform(step)
        return job

    async def status(self, job_id: str, *, wait: float = 0, timeout: float | None = None) -> Job:
        job: Job = await self._perform(self._core.status(job_id, wait, timeout))
        return job

    async def cancel(self, job_id: str, *, timeout: float | None = None) -> Job:
        job: Job = await self._perform(self._core.cancel(job_id, timeout))
        return job

    async def list_jobs(
        self,
        status: str | None = None,
        limit: int = 20,
        before: str | None = None,
        *,
        timeout: float | None = None,
    ) -> JobPage:
        page: JobPage = await self._perform(self._core.list_jobs(status, limit, before, timeout))
        return page

    async def job_logs(self, job_id: str, *, timeout: float | None = None) -> dict[str, Any]:
        logs: dict[str, Any] = await self._perform(self._core.job_logs(job_id, timeout))
        return logs

    async def object_info(self, *, timeout: float | None = None) -> dict[str, Any]:
        info: dict[str, Any] = await self._perform(self._core.object_info(timeout))
        return info

    async def models(self, *, timeout: float | None = None) -> dict[str, list[str]]:
        folders: dict[str, list[str]] = await self._perform(self._core.models(timeout))
        return folders

    async def validate(
        self, workflow: WorkflowLike, *, timeout: float | None = None
    ) -> dict[str, Any]:
        report: dict[str, Any] = await self._perform(self._core.validate(workflow, timeout))
        return report

    async def load_workflow(self, source: str, *, timeout: float | None = None) -> Workflow:
        """Load a workflow file (off the event loop); UI format is converted with our nodes."""
        import asyncio

        from ryla_modal.workflow import load_for_deployment

        loop = asyncio.get_running_loop()

        def fetch() -> dict[str, Any]:
            coro = self.object_info(timeout=timeout)
            return asyncio.run_coroutine_threadsafe(coro, loop).result()

        return await asyncio.to_thread(load_for_deployment, source, fetch)

    async def wake(
        self,
        *,
        on_event: EventCallback | None = None,
        cold_start_timeout: float | None = None,
        timeout: float | None = None,
    ) -> Job:
        flow = self._core.wake(_Run(None, on_event, timeout), cold_start_timeout)
        return await self._run(flow, on_event)

    async def iter_events(
        self,
        job_id: str,
        *,
        cold_start_timeout: float | None = None,
        execution_timeout: float | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[JobEvent]:
        run = _Run(job_id, None, timeout)
        steps = _Steps(self._core.events(run, cold_start_timeout, execution_timeout))
        while (step := steps.next()) is not None:
            if isinstance(step, JobEvent):
                yield step
            steps.value = await self._perform(step)

    async def wait(
        self,
        job_id: str,
        *,
        on_event: EventCallback | None = None,
        cold_start_timeout: float | None = None,
        execution_timeout: float | None = None,
        timeout: float | None = None,
    ) -> Job:
        run = _Run(job_id, on_event, timeout)
        flow = self._core.wait(run, cold_start_timeout, execution_timeout)
        return await self._run(flow, on_event)

    async def download(
        self,
        job: Job,
        out_dir: str | Path,
        *,
        on_event: EventCallback | None = None,
        timeout: float | None = None,
    ) -> list[SavedOutput]:
        run = _Run(job.job_id, on_event, timeout)
        return await self._run(self._core.download(run, job, out_dir), on_event)

    async def generate(
        self,
        workflow: WorkflowLike,
        *,
        out_dir: str | Path = "outputs",
        job_id: str | None = None,
        inputs: Sequence[InputLike] = (),
        previews: bool = False,
        on_event: EventCallback | None = None,
        cold_start_timeout: float | None = None,
        execution_timeout: float | None = None,
        write_manifest: bool = True,
        manifest_extra: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        webhook: WebhookLike | None = None,
    ) -> GenerateResult:
        flow = self._core.generate(
            _Run(job_id, on_event, timeout),
            workflow,
            out_dir=out_dir,
            inputs=inputs,
            previews=previews,
            cold_start_timeout=cold_start_timeout,
            execution_timeout=execution_timeout,
            write_manifest=write_manifest,
            manifest_extra=manifest_extra,
            webhook=webhook,
        )
        return await self._run(flow, on_event)


async def _save_in_thread(
    chunks: AsyncIterator[bytes], save_args: dict[str, Any]
) -> tuple[Path, str, int]:
    """`outputs.save_stream` on a worker thread, fed one chunk at a time from the event loop.

    Memory stays at one chunk whatever the output's size, and the file work (writes, fsync) stays
    off the loop.  If this coroutine is cancelled (a deadline, Ctrl-C), the thread is told to stop
    and awaited, so its partial file is removed before the cancellation goes on.
    """
    import asyncio
    import concurrent.futures
    import threading

    loop = asyncio.get_running_loop()
    lock = threading.Lock()
    state: dict[str, Any] = {"stopped": False, "pending": None}

    async def next_chunk() -> bytes | None:
        return await anext(chunks, None)

    def pull() -> Iterator[bytes]:
        while True:
            with lock:
                if state["stopped"]:
                    raise concurrent.futures.CancelledError("the download was cancelled")
                pending = asyncio.run_coroutine_threadsafe(next_chunk(), loop)
                state["pending"] = pending
            chunk = pending.result()
            if chunk is None:
                return
            yield chunk

    work = loop.run_in_executor(None, lambda: save_stream(chunks=pull(), **save_args))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        with lock:
            state["stopped"] = True
            if state["pending"] is not None:
                state["pending"].cancel()
        await asyncio.wait({work})  # the thread removes its partial file, then ends
        raise
