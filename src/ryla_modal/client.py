"""`RylaClient` and `AsyncRylaClient`: submit, wait, download and generate over the job API.

Both clients share one pure core (`_Core`): it builds requests, parses answers, maps errors,
decides retries and the next poll, and tracks the phase deadlines.  Only sending and sleeping are
written twice.  The library never prints: progress reaches the caller as `JobEvent`s through a
callback.

    with RylaClient("https://ws--ryla-comfyui-gateway.modal.run") as client:
        result = client.generate(Workflow.load("wf.json"), out_dir="outputs")
        print([f.path for f in result.files])
"""

from __future__ import annotations

# asyncio is imported inside AsyncRylaClient's methods: a sync caller (every `ryla generate`)
# would otherwise pay ~17 ms for it at start-up.
import base64
import dataclasses
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
)

from ryla_modal import __version__, defaults
from ryla_modal.config import ClientSettings, resolve_client_settings
from ryla_modal.errors import (
    AuthError,
    ColdStartTimeout,
    EndpointUnavailable,
    ExecutionError,
    ExecutionTimeout,
    JobCancelled,
    RylaError,
    WorkflowFormatError,
    WorkflowValidationError,
)
from ryla_modal.job import Job, OutputInfo
from ryla_modal.outputs import manifest_path, output_name, save_stream, write_json_atomic
from ryla_modal.policy import (
    Deadline,
    RetryPolicy,
    http_timeout,
    in_cold_start,
    is_retryable_exception,
    is_retryable_status,
    parse_retry_after,
    retry_delay,
)

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})

WorkflowLike = Mapping[str, Any] | Any  # a dict or a `Workflow` (anything with .to_dict())
EventCallback = Callable[["JobEvent"], None]


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
    """Something the caller may want to show: a new job state, a download, the end.

    ``kind`` is one of ``submitted``, ``update``, ``downloading``, ``saved``, ``done``.
    """

    kind: str
    job: Job
    elapsed_s: float
    output: SavedOutput | None = None

    def __str__(self) -> str:
        """One readable line, so ``on_event=print`` shows the progress (the README's example).

        ``12.3s  update  3f2c…  running · executing · node 2/5 KSampler · step 7/20``
        """
        job = self.job
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


@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    params: dict[str, Any] | None = None
    json: dict[str, Any] | None = None
    read_timeout_s: float = defaults.READ_TIMEOUT_S


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

    def health(self) -> _Request:
        return _Request("GET", "/health")

    def submit(
        self,
        workflow: Mapping[str, Any],
        job_id: str,
        inputs: Sequence[InputLike],
        timeout_s: int | None,
        previews: bool = False,
        webhook: WebhookLike | None = None,
    ) -> _Request:
        body: dict[str, Any] = {"job_id": job_id, "workflow": dict(workflow)}
        if webhook is not None:
            body["webhook"] = _webhook_body(webhook)
        if inputs:
            body["inputs"] = [_input_body(i) for i in inputs]
        if timeout_s is not None:
            body["timeout_s"] = int(timeout_s)
        if previews:
            body["previews"] = True
        return _Request("POST", "/jobs", json=body)

    def status(self, job_id: str, wait: float) -> _Request:
        wait_s = max(0, min(int(wait), defaults.LONG_POLL_MAX_S))
        return _Request(
            "GET",
            f"/jobs/{job_id}",
            params={"wait": wait_s} if wait_s else None,
            read_timeout_s=defaults.READ_TIMEOUT_S + wait_s,
        )

    def cancel(self, job_id: str) -> _Request:
        return _Request("POST", f"/jobs/{job_id}/cancel")

    def object_info(self) -> _Request:
        return _Request("GET", "/object_info")

    def models(self) -> _Request:
        return _Request("GET", "/models")

    def warmup(self) -> _Request:
        return _Request("POST", "/warmup")

    def validate(self, workflow: Mapping[str, Any]) -> _Request:
        return _Request("POST", "/validate", json={"workflow": dict(workflow)})

    def parse_object(self, response: httpx.Response) -> dict[str, Any]:
        self.check(response)
        try:
            data = response.json()
        except ValueError as exc:
            raise EndpointUnavailable(f"{self.settings.endpoint} answered with no JSON") from exc
        if not isinstance(data, dict):
            raise EndpointUnavailable(f"{self.settings.endpoint} answered with a non-object")
        return data

    def output(self, job_id: str, index: int) -> _Request:
        return _Request("GET", f"/jobs/{job_id}/outputs/{index}")

    # retries ----------------------------------------------------------------------------
    def retry_kwargs(self, deadline: Deadline, sleep: Callable[[float], Any]) -> dict[str, Any]:
        """Arguments for tenacity's `Retrying` / `AsyncRetrying`, identical for both."""

        def should_retry(exc: BaseException) -> bool:
            return isinstance(exc, _RetryableStatus) or is_retryable_exception(exc)

        def wait(state: RetryCallState) -> float:
            delay = self._delay_for(state, deadline)
            return 0.0 if delay is None else delay

        def stop(state: RetryCallState) -> bool:
            return self._delay_for(state, deadline) is None

        return {
            "retry": retry_if_exception(should_retry),
            "wait": wait,
            "stop": stop,  # attempts, Retry-After cap and the deadline, in one decision
            "sleep": sleep,
            "reraise": True,
        }

    def _delay_for(self, state: RetryCallState, deadline: Deadline) -> float | None:
        exc = state.outcome.exception() if state.outcome is not None else None
        retry_after = (
            parse_retry_after(exc.response.headers) if isinstance(exc, _RetryableStatus) else None
        )
        return retry_delay(
            self.policy,
            state.attempt_number,
            retry_after=retry_after,
            remaining_s=deadline.remaining(),
            rng=None,
        )

    # answers ----------------------------------------------------------------------------
    def check(self, response: httpx.Response, *, job_id: str | None = None) -> None:
        """Raise the right error for an unsuccessful answer (after retries)."""
        if is_retryable_status(response.status_code):
            raise _RetryableStatus(response)
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

    def gave_up(self, response: httpx.Response) -> EndpointUnavailable:
        """The error once retries of a 429/5xx answer are spent."""
        message = str(_error_body(response).get("message") or response.reason_phrase)
        return EndpointUnavailable(
            f"{self.settings.endpoint} kept answering HTTP {response.status_code} ({message})"
            f" after {self.policy.max_attempts} attempts",
            hint="the deployment may be overloaded or restarting; try again in a minute",
        )

    def parse_job(self, response: httpx.Response, *, job_id: str | None = None) -> Job:
        self.check(response, job_id=job_id)
        try:
            return Job.from_dict(response.json())
        except ValueError as exc:
            raise EndpointUnavailable(
                f"{self.settings.endpoint} did not answer with a job: {exc}"
            ) from exc

    # waiting ----------------------------------------------------------------------------
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


def _with_kind(saved: SavedOutput, out: OutputInfo) -> SavedOutput:
    """The output's kind and, for a text output, its string (from the file when the job
    record left a long one out)."""
    text = out.text
    if text is None and out.kind == "text":
        text = saved.path.read_text("utf-8", errors="replace")
    return dataclasses.replace(saved, kind=out.kind, text=text)


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
    """Phase deadlines for one wait: cold start first, then execution."""

    def __init__(self, job_id: str, cold_start_s: float | None, execution_s: float | None) -> None:
        self.job_id = job_id
        self.started = time.monotonic()
        self.cold = Deadline(cold_start_s)
        self.execution_s = execution_s
        self.execution: Deadline | None = None
        self.last_key: tuple[Any, ...] | None = None

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def changed(self, job: Job) -> bool:
        key = _job_key(job)
        changed = key != self.last_key
        self.last_key = key
        return changed

    def next_wait(self, job: Job) -> float:
        """Seconds to long-poll next; raises the phase timeout when its deadline passed."""
        if in_cold_start(job.status, job.phase):
            if self.cold.expired():
                raise ColdStartTimeout(
                    f"job {self.job_id} did not start within {self.cold.seconds:.0f}s"
                    " (no GPU container picked it up, or ComfyUI did not become ready)",
                    job_id=self.job_id,
                    hint=f"it may still start: `ryla jobs wait {self.job_id}`",
                )
            remaining = self.cold.remaining()
        else:
            if self.execution is None:
                self.execution = Deadline(self.execution_s)
            if self.execution.expired():
                raise ExecutionTimeout(
                    f"job {self.job_id} did not finish within {self.execution.seconds:.0f}s",
                    job_id=self.job_id,
                    hint=f"it keeps running: `ryla jobs wait {self.job_id}` resumes waiting",
                )
            remaining = self.execution.remaining()
        wait = float(defaults.LONG_POLL_WAIT_S)
        return wait if remaining is None else max(0.0, min(wait, remaining))


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


# --------------------------------------------------------------------------- sync client
class RylaClient:
    """Synchronous client of the ryla job API.

    Configuration: arguments > ``RYLA_*`` env > ``./ryla.toml`` > the user config written by
    ``ryla deploy`` > defaults.
    """

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
        http_client: httpx.Client | None = None,
    ) -> None:
        settings = resolve_client_settings(
            endpoint=endpoint,
            token=token,
            modal_key=modal_key,
            modal_secret=modal_secret,
            cold_start_timeout=cold_start_timeout,
            execution_timeout=execution_timeout,
        )
        self._core = _Core(
            settings, retry_policy or RetryPolicy(max_attempts=settings.max_attempts)
        )
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(
            base_url=settings.endpoint,
            verify=_tls_verify(settings.endpoint),
            headers=self._core.headers(),
            follow_redirects=True,
            timeout=http_timeout(defaults.READ_TIMEOUT_S),
        )

    @property
    def settings(self) -> ClientSettings:
        return self._core.settings

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> RylaClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # plumbing ---------------------------------------------------------------------------
    def _send(
        self, req: _Request, *, deadline: Deadline | None = None, job_id: str | None = None
    ) -> httpx.Response:
        deadline = deadline or Deadline(self._core.settings.request_budget_s)
        retrying = Retrying(**self._core.retry_kwargs(deadline, time.sleep))

        def attempt() -> httpx.Response:
            resp = self._http.request(
                req.method,
                req.path,
                params=req.params,
                json=req.json,
                timeout=http_timeout(deadline.cap(req.read_timeout_s)),
            )
            if is_retryable_status(resp.status_code):
                raise _RetryableStatus(resp)
            return resp

        try:
            return retrying(attempt)
        except _RetryableStatus as exc:
            raise self._core.gave_up(exc.response) from exc
        except httpx.TransportError as exc:
            raise EndpointUnavailable(
                f"could not reach {self._core.settings.endpoint}: {type(exc).__name__}: {exc}",
                hint="check the endpoint (`ryla health`) and your network",
            ) from exc

    # API --------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        resp = self._send(self._core.health())
        self._core.check(resp)
        data = resp.json()
        return dict(data) if isinstance(data, dict) else {"status": str(data)}

    def submit(
        self,
        workflow: WorkflowLike,
        *,
        job_id: str | None = None,
        inputs: Sequence[InputLike] = (),
        timeout_s: int | None = None,
        previews: bool = False,
        webhook: WebhookLike | None = None,
    ) -> Job:
        """Start a job; safe to call again with the same ``job_id`` (it never runs twice).

        ``webhook``: a URL (or ``{"url", "events"}``) the server POSTs the finished job to,
        signed with the deployment's secret (check it with ``ryla_modal.webhooks.verify``).
        """
        job_id = job_id or str(uuid.uuid4())
        req = self._core.submit(
            _workflow_dict(workflow), job_id, inputs, timeout_s, previews, webhook
        )
        return self._core.parse_job(self._send(req), job_id=None)

    def status(self, job_id: str, *, wait: float = 0) -> Job:
        resp = self._send(self._core.status(job_id, wait), job_id=job_id)
        return self._core.parse_job(resp, job_id=job_id)

    def cancel(self, job_id: str) -> Job:
        return self._core.parse_job(self._send(self._core.cancel(job_id)), job_id=job_id)

    def wake(
        self, *, on_event: EventCallback | None = None, cold_start_timeout: float | None = None
    ) -> Job:
        """Start a GPU container now and wait until ComfyUI is ready in it (shows the cold
        start); later jobs then skip it while the container stays warm."""
        job = self._core.parse_job(self._send(self._core.warmup()))
        return self.wait(job.job_id, on_event=on_event, cold_start_timeout=cold_start_timeout)

    def object_info(self) -> dict[str, Any]:
        """The deployment's ComfyUI node definitions (no GPU needed)."""
        return self._core.parse_object(self._send(self._core.object_info()))

    def models(self) -> dict[str, list[str]]:
        """The deployment's model files by folder (on Modal: the models Volume)."""
        folders = self._core.parse_object(self._send(self._core.models())).get("folders")
        return {str(k): [str(f) for f in v] for k, v in (folders or {}).items()}

    def validate(self, workflow: WorkflowLike) -> dict[str, Any]:
        """Check a workflow against the deployment's nodes and models without running it."""
        return self._core.parse_object(self._send(self._core.validate(_workflow_dict(workflow))))

    def iter_events(
        self,
        job_id: str,
        *,
        cold_start_timeout: float | None = None,
        execution_timeout: float | None = None,
    ) -> Iterator[JobEvent]:
        """Yield an ``update`` event each time the job's state changes, until it ends."""
        s = self._core.settings
        state = _WaitState(
            job_id,
            s.cold_start_timeout if cold_start_timeout is None else cold_start_timeout,
            s.execution_timeout if execution_timeout is None else execution_timeout,
        )
        job = self.status(job_id)
        for _ in range(1_000_000):  # bounded by the phase deadlines; the count is a backstop
            if state.changed(job):
                yield JobEvent("update", job, state.elapsed())
            if job.status in TERMINAL:
                return
            job = self.status(job_id, wait=state.next_wait(job))

    def wait(
        self,
        job_id: str,
        *,
        on_event: EventCallback | None = None,
        cold_start_timeout: float | None = None,
        execution_timeout: float | None = None,
    ) -> Job:
        """Wait until the job ends; raise its error if it did not succeed."""
        job: Job | None = None
        for event in self.iter_events(
            job_id, cold_start_timeout=cold_start_timeout, execution_timeout=execution_timeout
        ):
            job = event.job
            if on_event:
                on_event(event)
        assert job is not None
        self._core.raise_for_job(job)
        return job

    def download(
        self,
        job: Job,
        out_dir: str | Path,
        *,
        on_event: EventCallback | None = None,
    ) -> list[SavedOutput]:
        """Save every output of a finished job under ``out_dir`` (checksummed, atomic)."""
        folder = Path(out_dir)
        saved: list[SavedOutput] = []
        started = time.monotonic()
        for out in job.outputs:
            if on_event:
                on_event(JobEvent("downloading", job, time.monotonic() - started))
            saved_one = self._download_one(
                job, out.index, folder, out.node_id, out.filename, out.sha256
            )
            saved_one = _with_kind(saved_one, out)
            saved.append(saved_one)
            if on_event:
                on_event(JobEvent("saved", job, time.monotonic() - started, saved_one))
        return saved

    def _download_one(
        self, job: Job, index: int, folder: Path, node_id: str, filename: str, sha256: str | None
    ) -> SavedOutput:
        req = self._core.output(job.job_id, index)
        deadline = Deadline(self._core.settings.request_budget_s)
        retrying = Retrying(**self._core.retry_kwargs(deadline, time.sleep))

        def attempt() -> SavedOutput:
            with self._http.stream(
                req.method, req.path, timeout=http_timeout(deadline.cap(req.read_timeout_s))
            ) as resp:
                if is_retryable_status(resp.status_code):
                    resp.read()
                    raise _RetryableStatus(resp)
                if resp.status_code >= 400:
                    resp.read()
                    self._core.check(resp, job_id=job.job_id)
                expected = resp.headers.get("x-sha256") or sha256
                length = resp.headers.get("content-length")
                path, sha, size = save_stream(
                    folder,
                    output_name(job.job_id, node_id, filename),
                    resp.iter_bytes(),
                    expected_sha256=expected,
                    expected_size=int(length) if length and length.isdigit() else None,
                )
                mime = resp.headers.get("content-type", "application/octet-stream")
            return SavedOutput(index, node_id, path, mime.split(";")[0], size, sha)

        try:
            return retrying(attempt)
        except _RetryableStatus as exc:
            raise self._core.gave_up(exc.response) from exc
        except httpx.TransportError as exc:
            raise EndpointUnavailable(
                f"download of output {index} of job {job.job_id} failed: {exc}",
                hint=f"`ryla jobs wait {job.job_id}` downloads it again",
            ) from exc

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
        webhook: WebhookLike | None = None,
    ) -> GenerateResult:
        """Submit, wait, download every output and write the manifest: all of it."""
        wf = _workflow_dict(workflow)
        job_id = job_id or str(uuid.uuid4())
        started = time.monotonic()
        job = self.submit(wf, job_id=job_id, inputs=inputs, previews=previews, webhook=webhook)
        if on_event:
            on_event(JobEvent("submitted", job, time.monotonic() - started))
        job = self.wait(
            job_id,
            on_event=on_event,
            cold_start_timeout=cold_start_timeout,
            execution_timeout=execution_timeout,
        )
        files = self.download(job, out_dir, on_event=on_event)
        manifest = None
        if write_manifest:
            manifest = write_json_atomic(
                manifest_path(Path(out_dir), job.job_id), _manifest(job, wf, files, manifest_extra)
            )
        if on_event:
            on_event(JobEvent("done", job, time.monotonic() - started))
        return GenerateResult(job, files, manifest, wf)


# --------------------------------------------------------------------------- async client
class AsyncRylaClient:
    """The asynchronous twin of `RylaClient`; same arguments, same behaviour."""

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
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        settings = resolve_client_settings(
            endpoint=endpoint,
            token=token,
            modal_key=modal_key,
            modal_secret=modal_secret,
            cold_start_timeout=cold_start_timeout,
            execution_timeout=execution_timeout,
        )
        self._core = _Core(
            settings, retry_policy or RetryPolicy(max_attempts=settings.max_attempts)
        )
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(
            base_url=settings.endpoint,
            verify=_tls_verify(settings.endpoint),
            headers=self._core.headers(),
            follow_redirects=True,
            timeout=http_timeout(defaults.READ_TIMEOUT_S),
        )

    @property
    def settings(self) -> ClientSettings:
        return self._core.settings

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncRylaClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _send(
        self, req: _Request, *, deadline: Deadline | None = None, job_id: str | None = None
    ) -> httpx.Response:
        import asyncio

        deadline = deadline or Deadline(self._core.settings.request_budget_s)
        retrying = AsyncRetrying(**self._core.retry_kwargs(deadline, asyncio.sleep))

        async def attempt() -> httpx.Response:
            resp = await self._http.request(
                req.method,
                req.path,
                params=req.params,
                json=req.json,
                timeout=http_timeout(deadline.cap(req.read_timeout_s)),
            )
            if is_retryable_status(resp.status_code):
                raise _RetryableStatus(resp)
            return resp

        try:
            return await retrying(attempt)
        except _RetryableStatus as exc:
            raise self._core.gave_up(exc.response) from exc
        except httpx.TransportError as exc:
            raise EndpointUnavailable(
                f"could not reach {self._core.settings.endpoint}: {type(exc).__name__}: {exc}",
                hint="check the endpoint (`ryla health`) and your network",
            ) from exc

    async def health(self) -> dict[str, Any]:
        resp = await self._send(self._core.health())
        self._core.check(resp)
        data = resp.json()
        return dict(data) if isinstance(data, dict) else {"status": str(data)}

    async def submit(
        self,
        workflow: WorkflowLike,
        *,
        job_id: str | None = None,
        inputs: Sequence[InputLike] = (),
        timeout_s: int | None = None,
        previews: bool = False,
        webhook: WebhookLike | None = None,
    ) -> Job:
        job_id = job_id or str(uuid.uuid4())
        req = self._core.submit(
            _workflow_dict(workflow), job_id, inputs, timeout_s, previews, webhook
        )
        return self._core.parse_job(await self._send(req))

    async def status(self, job_id: str, *, wait: float = 0) -> Job:
        resp = await self._send(self._core.status(job_id, wait), job_id=job_id)
        return self._core.parse_job(resp, job_id=job_id)

    async def cancel(self, job_id: str) -> Job:
        resp = await self._send(self._core.cancel(job_id), job_id=job_id)
        return self._core.parse_job(resp, job_id=job_id)

    async def wake(
        self, *, on_event: EventCallback | None = None, cold_start_timeout: float | None = None
    ) -> Job:
        job = self._core.parse_job(await self._send(self._core.warmup()))
        return await self.wait(job.job_id, on_event=on_event, cold_start_timeout=cold_start_timeout)

    async def object_info(self) -> dict[str, Any]:
        return self._core.parse_object(await self._send(self._core.object_info()))

    async def models(self) -> dict[str, list[str]]:
        folders = self._core.parse_object(await self._send(self._core.models())).get("folders")
        return {str(k): [str(f) for f in v] for k, v in (folders or {}).items()}

    async def validate(self, workflow: WorkflowLike) -> dict[str, Any]:
        req = self._core.validate(_workflow_dict(workflow))
        return self._core.parse_object(await self._send(req))

    async def iter_events(
        self,
        job_id: str,
        *,
        cold_start_timeout: float | None = None,
        execution_timeout: float | None = None,
    ) -> AsyncIterator[JobEvent]:
        s = self._core.settings
        state = _WaitState(
            job_id,
            s.cold_start_timeout if cold_start_timeout is None else cold_start_timeout,
            s.execution_timeout if execution_timeout is None else execution_timeout,
        )
        job = await self.status(job_id)
        for _ in range(1_000_000):
            if state.changed(job):
                yield JobEvent("update", job, state.elapsed())
            if job.status in TERMINAL:
                return
            job = await self.status(job_id, wait=state.next_wait(job))

    async def wait(
        self,
        job_id: str,
        *,
        on_event: EventCallback | None = None,
        cold_start_timeout: float | None = None,
        execution_timeout: float | None = None,
    ) -> Job:
        job: Job | None = None
        async for event in self.iter_events(
            job_id, cold_start_timeout=cold_start_timeout, execution_timeout=execution_timeout
        ):
            job = event.job
            if on_event:
                on_event(event)
        assert job is not None
        self._core.raise_for_job(job)
        return job

    async def download(
        self,
        job: Job,
        out_dir: str | Path,
        *,
        on_event: EventCallback | None = None,
    ) -> list[SavedOutput]:
        folder = Path(out_dir)
        saved: list[SavedOutput] = []
        started = time.monotonic()
        for out in job.outputs:
            if on_event:
                on_event(JobEvent("downloading", job, time.monotonic() - started))
            one = await self._download_one(
                job, out.index, folder, out.node_id, out.filename, out.sha256
            )
            one = _with_kind(one, out)
            saved.append(one)
            if on_event:
                on_event(JobEvent("saved", job, time.monotonic() - started, one))
        return saved

    async def _download_one(
        self, job: Job, index: int, folder: Path, node_id: str, filename: str, sha256: str | None
    ) -> SavedOutput:
        import asyncio

        req = self._core.output(job.job_id, index)
        deadline = Deadline(self._core.settings.request_budget_s)
        retrying = AsyncRetrying(**self._core.retry_kwargs(deadline, asyncio.sleep))

        async def attempt() -> SavedOutput:
            async with self._http.stream(
                req.method, req.path, timeout=http_timeout(deadline.cap(req.read_timeout_s))
            ) as resp:
                if is_retryable_status(resp.status_code):
                    await resp.aread()
                    raise _RetryableStatus(resp)
                if resp.status_code >= 400:
                    await resp.aread()
                    self._core.check(resp, job_id=job.job_id)
                expected = resp.headers.get("x-sha256") or sha256
                length = resp.headers.get("content-length")
                # Gather chunks, then write off the event loop (the file work is blocking).
                chunks = [chunk async for chunk in resp.aiter_bytes()]
                path, sha, size = await asyncio.to_thread(
                    save_stream,
                    folder,
                    output_name(job.job_id, node_id, filename),
                    chunks,
                    expected_sha256=expected,
                    expected_size=int(length) if length and length.isdigit() else None,
                )
                mime = resp.headers.get("content-type", "application/octet-stream")
            return SavedOutput(index, node_id, path, mime.split(";")[0], size, sha)

        try:
            return await retrying(attempt)
        except _RetryableStatus as exc:
            raise self._core.gave_up(exc.response) from exc
        except httpx.TransportError as exc:
            raise EndpointUnavailable(
                f"download of output {index} of job {job.job_id} failed: {exc}",
                hint=f"`ryla jobs wait {job.job_id}` downloads it again",
            ) from exc

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
        webhook: WebhookLike | None = None,
    ) -> GenerateResult:
        import asyncio

        wf = _workflow_dict(workflow)
        job_id = job_id or str(uuid.uuid4())
        started = time.monotonic()
        job = await self.submit(
            wf, job_id=job_id, inputs=inputs, previews=previews, webhook=webhook
        )
        if on_event:
            on_event(JobEvent("submitted", job, time.monotonic() - started))
        job = await self.wait(
            job_id,
            on_event=on_event,
            cold_start_timeout=cold_start_timeout,
            execution_timeout=execution_timeout,
        )
        files = await self.download(job, out_dir, on_event=on_event)
        manifest = None
        if write_manifest:
            manifest = await asyncio.to_thread(
                write_json_atomic,
                manifest_path(Path(out_dir), job.job_id),
                _manifest(job, wf, files, manifest_extra),
            )
        if on_event:
            on_event(JobEvent("done", job, time.monotonic() - started))
        return GenerateResult(job, files, manifest, wf)
