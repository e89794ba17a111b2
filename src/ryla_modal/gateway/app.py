"""The job API as a FastAPI app: ``create_app(executor, store, token=...)``.

The routes and bodies are DESIGN.md's contract (the models are in ``schemas``).  What this module
adds around them:

- one guard in front of every route, unknown ones included: the bearer token (constant-time
  compare; a 401 says nothing about jobs or routes) and the body size limit (413 from
  Content-Length, or while counting the bytes of a body without one);
- every error, FastAPI's own included, is ``{"error": {"type", "message", ...}}``; bad input never
  gets a 500, and a real 500 says nothing about internals;
- submit checks in order: limits (413), inputs and structure (422), the job id (same workflow:
  the existing job, another: 409), then the workflow against ComfyUI's ``/object_info`` (422 with
  ComfyUI's per-node errors) before anything reaches the executor;
- long polls wait on the store's change notifications;
- a server that stops (``drain()``, called when uvicorn begins its shutdown) answers every new
  request and every long poll in flight ``503`` with ``Retry-After`` (never a 500 from a task
  cancelled at the graceful-shutdown timeout), so clients retry through the restart.

``/docs`` and ``/openapi.json`` stay available and sit behind the same token when one is set.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import functools
import hashlib
import hmac
import ipaddress
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Annotated, Any, ParamSpec, TypeVar

from fastapi import FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ryla_modal import __version__, defaults
from ryla_modal.comfy.runner import InputFile, InputURL, JobInput
from ryla_modal.errors import ConfigError, WorkflowFormatError
from ryla_modal.gateway.executors import Executor, finish
from ryla_modal.gateway.object_info import ObjectInfoSource
from ryla_modal.gateway.schemas import (
    ACTIVE_STATUSES,
    ERR_INPUT_SHA256_MISMATCH,
    ERR_INPUT_URL_REFUSED,
    ERR_SERVER_STOPPED,
    TERMINAL_STATUSES,
    ErrorResponse,
    Health,
    InputMeta,
    Job,
    JobError,
    JobLogs,
    JobPage,
    JobRecord,
    JobRequest,
    ValidateRequest,
    ValidationReport,
    workflow_identity,
)
from ryla_modal.gateway.store import JobStore
from ryla_modal.gateway.webhooks import WebhookSettings, check_webhook_url, waiting_state
from ryla_modal.job import JOB_STATUSES
from ryla_modal.netsafety import UnsafeURL, check_url, redact_url
from ryla_modal.outputs import safe_basename
from ryla_modal.validate import check_workflow, validate_against_object_info
from ryla_modal.workflow import is_ui_format, validate_structure

log = logging.getLogger("ryla_modal.gateway")

_CHUNK = 256 * 1024

_P = ParamSpec("_P")
_T = TypeVar("_T")


class _Threads:
    """The threads the routes' blocking work (SQLite, files, object_info) runs in.

    asyncio's own executor hop rather than starlette's ``run_in_threadpool`` (anyio: a capacity
    limiter, a cancel scope and a queue per call, on 40 threads): under bench/load.py that and
    the GIL contention of 40 threads beside the job threads were ~12% of the gateway's CPU.
    """

    def __init__(self, threads: int) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="ryla-http"
        )

    async def run(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


_ERROR_LIST_MAX = 20  # validation errors listed in one answer
_PRINTABLE_DEPTH = 32  # error bodies are shallow; deeper parts are cut
#: Host names that only ever mean this machine: a browser never asks DNS for them.
_LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def _security_schemes(bearer: bool, proxy_auth: bool) -> dict[str, dict[str, str]]:
    """The OpenAPI security schemes a request must satisfy, all at once."""
    schemes: dict[str, dict[str, str]] = {}
    if bearer:
        schemes["bearer"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "the server's token (`ryla serve`: RYLA_TOKEN)",
        }
    if proxy_auth:
        for header, part in (("Modal-Key", "wk-…"), ("Modal-Secret", "ws-…")):
            schemes[header.replace("-", "")] = {
                "type": "apiKey",
                "in": "header",
                "name": header,
                "description": f"Modal proxy-auth token ({part}; RYLA_MODAL_KEY/RYLA_MODAL_SECRET)",
            }
    return schemes


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; small values keep tests fast."""

    max_body_bytes: int = defaults.GATEWAY_MAX_BODY_BYTES
    max_nodes: int = defaults.WORKFLOW_MAX_NODES
    max_inputs: int = defaults.GATEWAY_MAX_INPUTS
    max_input_bytes: int = defaults.GATEWAY_MAX_INPUT_BYTES
    max_pending_jobs: int = defaults.GATEWAY_MAX_PENDING_JOBS
    generate_wait_s: float = defaults.GENERATE_WAIT_S
    generate_inline_max_bytes: int = defaults.GENERATE_INLINE_MAX_BYTES
    #: A long poll holds a change that is not final this long for the ones right behind it.
    progress_linger_s: float = defaults.GATEWAY_PROGRESS_LINGER_S
    #: Inputs by URL may name private/loopback addresses (``ryla serve --allow-private-urls``).
    allow_private_urls: bool = False


class ApiError(Exception):
    """An answer other than 2xx, with the body's ``error`` fields."""

    def __init__(
        self,
        status: int,
        type_: str,
        message: str,
        /,
        *,
        http_headers: Mapping[str, str] | None = None,
        **details: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"type": type_, "message": message, **details}}
        self.headers = dict(http_headers or {})


class SafeJSONResponse(JSONResponse):
    """A JSON answer that renders even when a value is not strict JSON.

    Starlette refuses NaN and infinity and cannot encode a lone surrogate; either would turn an
    error answer (which may name what the client sent) into a 500.  The edge refuses such values
    in workflows; this is the net under every other answer.
    """

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except (ValueError, UnicodeEncodeError, RecursionError):
            return super().render(_printable(content))


def _printable(value: Any, depth: int = 0) -> Any:
    """``value`` with lone surrogates escaped and non-finite numbers as text (bounded depth)."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if depth >= _PRINTABLE_DEPTH:
        return "..."
    if isinstance(value, Mapping):
        return {_printable(str(k)): _printable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_printable(v, depth + 1) for v in value]
    return value


def error_response(
    status: int, type_: str, message: str, headers: Mapping[str, str] | None = None, **details: Any
) -> JSONResponse:
    body = {"error": {"type": type_, "message": message, **details}}
    return SafeJSONResponse(body, status_code=status, headers=dict(headers or {}))


# --- the guard: auth and body size, in front of routing ---------------------------------------


class _Draining:
    """The server is stopping: long polls end and new requests get 503 + Retry-After."""

    def __init__(self) -> None:
        self.on = False
        self._event: asyncio.Event | None = None

    def event(self) -> asyncio.Event:
        """The event set at drain (made on first use, inside the server's loop)."""
        if self._event is None:
            self._event = asyncio.Event()
            if self.on:
                self._event.set()
        return self._event

    def set(self) -> None:
        """Begin draining; call from the server's event loop (uvicorn's shutdown does)."""
        self.on = True
        if self._event is not None:
            self._event.set()


def stopping_error() -> ApiError:
    return ApiError(
        503,
        "server_stopping",
        "the server is stopping (restarting?); retry: accepted jobs are kept",
        http_headers={"retry-after": str(int(defaults.SERVE_RETRY_AFTER_S))},
    )


class _Guard:
    """Pure ASGI middleware: 421 for a foreign Host, 401 without the token, 413 past the limit,
    503 + Retry-After while the server stops.

    The Host check guards a server without a token, which only ever listens on loopback: a web
    page whose DNS name is re-pointed at 127.0.0.1 (DNS rebinding) can make a browser send it
    requests, but the browser still names the page's host in ``Host``.  So without a token only
    this server's own address, its port and loopback names are answered.  With a token the
    browser cannot authenticate anyway, and any name the operator serves under works.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str | None,
        max_body_bytes: int,
        check_host: bool,
        draining: _Draining | None = None,
    ) -> None:
        self.app = app
        self.token = token.encode("utf-8") if token else None
        self.max_body_bytes = max_body_bytes
        self.check_host = check_host and token is None
        self.draining = draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.draining is not None and self.draining.on:
            err = stopping_error()
            await JSONResponse(err.body, status_code=err.status, headers=err.headers)(
                scope, receive, send
            )
            return
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
        if self.check_host:
            foreign = _foreign_host(headers.get("host"), scope.get("server"))
            if foreign is not None:
                resp = error_response(
                    421,
                    "misdirected_request",
                    f"this server answers only to its own address and loopback names, not to"
                    f" Host {foreign!r}",
                    hint="to serve under other names, set a token (RYLA_TOKEN)",
                )
                await resp(scope, receive, send)
                return
        if self.token is not None and not self._authorized(headers.get("authorization")):
            resp = error_response(
                401,
                "unauthorized",
                "missing or wrong bearer token: send 'Authorization: Bearer <token>'",
                headers={"www-authenticate": 'Bearer realm="ryla"'},
            )
            await resp(scope, receive, send)
            return
        length = headers.get("content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await error_response(400, "bad_request", "Content-Length is not a number")(
                    scope, receive, send
                )
                return
            if declared > self.max_body_bytes:
                await self._too_large(scope, receive, send)
                return
        # Read the body here, counting: a chunked body has no Content-Length to check.
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            total += len(body)
            if total > self.max_body_bytes:
                await self._too_large(scope, receive, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _authorized(self, header: bytes | None) -> bool:
        assert self.token is not None
        if header is None:
            return False
        scheme, _, value = header.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        return hmac.compare_digest(value.strip(), self.token)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        resp = error_response(
            413,
            "too_large",
            f"the request body is larger than the {self.max_body_bytes:,}-byte limit",
            limit=self.max_body_bytes,
            hint="inputs travel base64-encoded inside the body; send smaller files",
        )
        await resp(scope, receive, send)


def _foreign_host(header: bytes | None, server: Any) -> str | None:
    """The Host header's value when it names neither loopback nor this server, else None.

    ``server`` is ASGI's ``(host, port)`` of the listening socket.  A request without Host
    (HTTP/1.0) passes: browsers always send one.
    """
    if header is None:
        return None
    text = header.decode("latin-1").strip()
    name, port = _split_host(text)
    name = name.lower().rstrip(".")
    own_host, own_port = (None, None)
    if isinstance(server, list | tuple) and len(server) == 2:
        own_host, own_port = server
    if port is not None and own_port is not None and port != own_port:
        return text[:200]
    if name in _LOCAL_NAMES or name.endswith(".localhost") or name == str(own_host).lower():
        return None
    try:
        if ipaddress.ip_address(name).is_loopback:
            return None
    except ValueError:
        pass
    return text[:200]


def _split_host(text: str) -> tuple[str, int | None]:
    """``("::1", 8000)`` from ``"[::1]:8000"``; a port that is not a number counts as foreign."""
    if text.startswith("["):
        name, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        name, _, port_text = text.partition(":")
    else:
        name, port_text = text, ""
    if not port_text:
        return name, None
    return name, int(port_text) if port_text.isdigit() else -1


# --- error handlers ---------------------------------------------------------------------------

_STATUS_TYPES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}


def _clean_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """pydantic's errors without the echoed input (it can be a whole workflow)."""
    out = []
    for err in list(errors)[:_ERROR_LIST_MAX]:
        loc = [str(p) for p in err.get("loc", ())]
        out.append({"loc": loc, "msg": str(err.get("msg", "")), "type": str(err.get("type", ""))})
    return out


def _where(loc: Sequence[str]) -> str:
    parts = [p for p in loc if p != "body"]
    return ".".join(parts) if parts else "body"


_JSON_KINDS = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "true/false",
}


def _validation_message(
    exc: RequestValidationError, content_type: str
) -> tuple[str, str, str | None]:
    """(type, message, hint) for FastAPI's own request validation failures."""
    errors = list(exc.errors())
    body = getattr(exc, "body", None)
    for err in errors:
        if err.get("type") == "json_invalid":
            why = (err.get("ctx") or {}).get("error", "malformed JSON")
            return "not_json", f"the request body is not JSON: {why}", None
    if isinstance(body, dict) and "workflow" not in body:
        if is_ui_format(body):
            return (
                "invalid_workflow",
                "the request body is a UI-format workflow; send"
                ' {"workflow": <API-format workflow>}',
                "export the API format from ComfyUI (Workflow → Export (API)) and put it under"
                ' "workflow"',
            )
        if body and all(isinstance(v, dict) and "class_type" in v for v in body.values()):
            return (
                "invalid_request",
                'the request body is a bare workflow; wrap it: {"workflow": <the workflow>}',
                None,
            )
    whole_body = [e for e in errors if tuple(e.get("loc", ())) == ("body",)]
    if whole_body:
        if body is None or body in (b"", ""):
            return (
                "invalid_request",
                'the request body is empty; send a JSON object: {"workflow": {...}}',
                None,
            )
        if isinstance(body, bytes | str) and "json" not in content_type:
            sent = f"Content-Type {content_type!r}" if content_type else "no Content-Type"
            return (
                "invalid_request",
                f"the request body was not read as JSON: it came with {sent}",
                "send Content-Type: application/json",
            )
        kind = _JSON_KINDS.get(type(body), "something else")
        return "invalid_request", f"the request body must be a JSON object, not {kind}", None
    lines = [f"{_where([str(p) for p in e.get('loc', ())])}: {e.get('msg', '')}" for e in errors]
    shown = lines[:5] + ([f"... and {len(lines) - 5} more"] if len(lines) > 5 else [])
    return "invalid_request", "invalid request: " + "; ".join(shown), None


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return SafeJSONResponse(exc.body, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        content_type = request.headers.get("content-type", "")[:100]
        type_, message, hint = _validation_message(exc, content_type)
        details: dict[str, Any] = {"errors": _clean_errors(exc.errors())}
        if hint:
            details["hint"] = hint
        return error_response(422, type_, message, **details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = _STATUS_TYPES.get(exc.status_code, f"http_{exc.status_code}")
        message = str(exc.detail) if exc.detail else "error"
        if exc.status_code == 400 and message == "There was an error parsing the body":
            type_ = "not_json"  # FastAPI's words for JSON that json.loads cannot take
            message = (
                "the request body could not be read as JSON: not UTF-8, nested too deeply, or a"
                " number too long to convert"
            )
        elif exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return error_response(exc.status_code, type_, message, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(
            500, "internal_error", "internal server error; the server log has the details"
        )


# --- the app ----------------------------------------------------------------------------------


def _err(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


_Responses = dict[int | str, dict[str, Any]]
#: What the guard in front of routing can answer on any route (421 only without a token).
_GUARD: _Responses = {
    503: _err("the server is stopping (Retry-After): retry, accepted jobs are kept"),
    401: _err("missing or wrong bearer token"),
    413: _err("the request body is larger than the limit"),
    421: _err("no token is set and the Host header names neither loopback nor this server"),
}
#: Routes with path or query parameters add 422; routes with a JSON body also 400.
_PARAMS: _Responses = {**_GUARD, 422: _err("a parameter is invalid")}
_BODY: _Responses = {
    **_GUARD,
    400: _err("the body is not JSON Python can read (not UTF-8, nested too deeply, ...)"),
    413: _err("the body or the workflow is larger than a limit"),
    422: _err("the request or the workflow is invalid"),
}
_NOT_TAKING = _err("the server is not taking jobs right now (Retry-After)")


def create_app(
    executor: Executor,
    store: JobStore,
    *,
    token: str | None = None,
    object_info: ObjectInfoSource | None = None,
    extra_models: Mapping[str, Sequence[str]] | None = None,
    limits: Limits | None = None,
    check_host: bool = True,
    webhooks: WebhookSettings | None = None,
    comfy_state: Callable[[], tuple[str, int]] | None = None,
    threads: int = defaults.GATEWAY_HTTP_THREADS,
    proxy_auth: bool = False,
) -> FastAPI:
    """The job API over ``executor`` and ``store``.

    ``token`` set: every route wants ``Authorization: Bearer <token>`` (surrounding whitespace
    is ignored; a blank token is a ``ConfigError``).  No token and ``check_host``: a request
    whose ``Host`` names neither loopback nor this server gets 421 (DNS rebinding); turn it off
    only behind a proxy that authenticates and rewrites nothing (Modal's ``requires_proxy_auth``).
    ``object_info`` set: workflows are checked against it before they run (skipped while it is
    unavailable).  ``webhooks``: jobs may ask for a webhook only when it carries a signing
    secret (else 422); its address rules apply to the URL at submit.  Delivery is the
    ``gateway.webhooks.Deliverer``'s job, started by whoever composes the server.
    ``comfy_state`` (``ryla serve``): ComfyUI's state and restart count, for GET /health.
    ``threads``: how many requests' blocking work (SQLite, files) runs at once; a store behind
    the network (``modal.Dict``) wants more.  ``proxy_auth``: a proxy in front checks Modal's
    ``Modal-Key``/``Modal-Secret`` headers (``requires_proxy_auth``); the OpenAPI document names
    them, so clients made from it send them.  ``app.state.drain()`` begins the shutdown answers
    (503 + Retry-After); ``app.state.close()`` lets the threads go once the server stopped.
    """
    if token and not token.strip():
        raise ConfigError("the gateway token is blank (only whitespace)")
    token = token.strip() if token else None
    lim = limits or Limits()
    draining = _Draining()
    pool = _Threads(threads)
    in_thread = pool.run
    api = _Api(executor, store, object_info, extra_models, lim, webhooks, pool, draining)
    app = FastAPI(
        title="ryla job API",
        version=__version__,
        description="Run ComfyUI workflows as jobs: submit, follow, download.",
    )
    _install_error_handlers(app)
    app.add_middleware(
        _Guard,
        token=token,
        max_body_bytes=lim.max_body_bytes,
        check_host=check_host,
        draining=draining,
    )
    app.state.api = api
    app.state.drain = draining.set
    app.state.close = pool.close

    @app.get("/health", response_model=Health, responses=_GUARD)
    async def health() -> Health:
        """200 while the gateway answers; ``status: degraded`` names a ComfyUI that does not."""
        if comfy_state is None:
            return Health(version=__version__, executor=executor.kind)
        state, restarts = comfy_state()
        return Health(
            status="ok" if state == "ok" else "degraded",
            version=__version__,
            executor=executor.kind,
            comfyui=state,  # type: ignore[arg-type]
            comfyui_restarts=restarts,
        )

    @app.post(
        "/jobs",
        status_code=202,
        response_model=Job,
        responses={
            200: {"model": Job, "description": "this job_id already exists (same workflow)"},
            409: _err("this job_id has another workflow"),
            429: _err("too many jobs waiting (Retry-After)"),
            503: _NOT_TAKING,
            **_BODY,
        },
    )
    async def submit(body: JobRequest, request: Request, response: Response) -> Job:
        record, created = await in_thread(api.accept, body, str(request.base_url))
        response.status_code = 202 if created else 200
        return record.public()

    @app.get(
        "/jobs/{job_id}",
        response_model=Job,
        responses={404: _err("unknown job"), **_PARAMS},
    )
    async def get_job(
        job_id: str,
        wait: float = Query(
            0,
            ge=0,
            le=defaults.LONG_POLL_MAX_S,
            description="seconds to wait for a change (long poll)",
        ),
    ) -> Job:
        record = await api.current(job_id)
        if wait > 0 and record.status not in TERMINAL_STATUSES:
            record = await api.wait_change(record, wait, lim.progress_linger_s)
        return record.public()

    @app.get(
        "/jobs/{job_id}/outputs/{index}",
        response_class=StreamingResponse,
        responses={
            200: {"content": {"application/octet-stream": {}}, "description": "the file"},
            404: _err("unknown job or output"),
            409: _err("the job has not succeeded"),
            **_PARAMS,
        },
    )
    async def get_output(job_id: str, index: int) -> Response:
        return await in_thread(api.output, job_id, index)

    @app.post(
        "/jobs/{job_id}/cancel",
        status_code=202,
        response_model=Job,
        responses={404: _err("unknown job"), **_PARAMS},
    )
    async def cancel(job_id: str) -> Job:
        record = await in_thread(api.cancel, job_id)
        return record.public()

    @app.post(
        "/generate",
        response_model=Job,
        responses={
            202: {"model": Job, "description": "still running: poll GET /jobs/{job_id}"},
            409: _err("this job_id has another workflow"),
            429: _err("too many jobs waiting (Retry-After)"),
            503: _NOT_TAKING,
            **_BODY,
        },
    )
    async def generate(body: JobRequest, request: Request, response: Response) -> Job:
        record, _ = await in_thread(api.accept, body, str(request.base_url))
        if record.status not in TERMINAL_STATUSES:
            record = await api.wait_finished(record, lim.generate_wait_s)
        if record.status not in TERMINAL_STATUSES:
            response.status_code = 202
            return record.public()
        return await in_thread(api.inline_outputs, record)

    @app.post(
        "/warmup",
        status_code=202,
        response_model=Job,
        responses=_GUARD,
    )
    async def warmup() -> Job:
        """Start a ComfyUI (on Modal: a GPU container) now; poll the returned job to see the
        cold start end.  Later jobs skip it while the container stays warm."""
        record = await in_thread(api.warm)
        return record.public()

    @app.post(
        "/validate",
        response_model=ValidationReport,
        responses=_BODY,
    )
    async def validate(body: ValidateRequest) -> ValidationReport:
        return await in_thread(api.validate, body.workflow)

    @app.get(
        "/object_info",
        responses={
            200: {"description": "ComfyUI's GET /object_info document"},
            503: _err("not available right now (Retry-After)"),
            **_GUARD,
        },
    )
    async def object_info_route() -> JSONResponse:
        source = object_info
        info = await in_thread(source) if source is not None else None
        if info is None:
            raise ApiError(
                503,
                "unavailable",
                "ComfyUI's object_info is not available from this server right now",
                http_headers={"retry-after": "30"},
            )
        return SafeJSONResponse(info)

    # --- the job list and a job's logs (issue 10's server side) ----------------------------

    @app.get("/jobs", response_model=JobPage, responses=_PARAMS)
    async def list_jobs(
        status: Annotated[
            list[str] | None,
            Query(
                description="only jobs in these statuses (repeat the parameter, or comma-separate)"
            ),
        ] = None,
        limit: int = Query(20, ge=1, le=100, description="jobs per page"),
        before: str | None = Query(
            None,
            max_length=512,
            pattern=r"^[A-Za-z0-9_-]+$",
            description="the previous page's `next`: continue after it (422 for a cursor this"
            " server did not issue)",
        ),
    ) -> JobPage:
        """Jobs newest first, a page at a time."""
        given = status or []
        wanted = {part.strip() for item in given for part in item.split(",") if part.strip()}
        unknown = sorted(wanted - JOB_STATUSES)
        if unknown:
            raise ApiError(
                422,
                "invalid_request",
                f"status: {', '.join(repr(u[:40]) for u in unknown[:5])} is not one of"
                f" {sorted(JOB_STATUSES)}",
            )
        try:
            records, after = await in_thread(store.page, wanted or None, limit, before)
        except ValueError as exc:
            raise ApiError(422, "invalid_request", f"before: {exc}") from exc
        return JobPage(jobs=[r.public() for r in records], next=after)

    @app.get(
        "/jobs/{job_id}/logs",
        response_model=JobLogs,
        responses={404: _err("unknown job"), **_PARAMS},
    )
    async def job_logs(job_id: str) -> JobLogs:
        """The job's own log lines (``ryla serve``), or where Modal keeps them (``call_id``)."""
        record = await api.current(job_id)
        return await in_thread(executor.logs, record)

    @app.get("/models", responses=_GUARD)
    async def models_route() -> JSONResponse:
        """The model files this deployment can load, by folder (``ryla models list``): on Modal
        the models Volume; ``{}`` where the server was given no model list."""
        files = api.extra_models
        listed = await in_thread(lambda: {k: list(v) for k, v in (files or {}).items()})
        return SafeJSONResponse({"folders": listed})

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = FastAPI.openapi(app)
            _document_limits(doc, lim)
            # Every route wants these (the guard, or the proxy in front): say so to client makers.
            schemes = _security_schemes(token is not None, proxy_auth)
            if schemes:
                doc.setdefault("components", {})["securitySchemes"] = schemes
                doc["security"] = [{name: [] for name in schemes}]  # all of them, together
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _document_limits(doc: dict[str, Any], lim: Limits) -> None:
    """Put this server's limits into its OpenAPI document, so what the document calls valid is
    what the server takes (the models carry the defaults; a server may be built with others)."""
    schemas = doc.get("components", {}).get("schemas", {})
    for name in ("JobRequest", "ValidateRequest"):
        workflow = schemas.get(name, {}).get("properties", {}).get("workflow")
        if isinstance(workflow, dict):
            workflow["maxProperties"] = lim.max_nodes
    inputs = schemas.get("JobRequest", {}).get("properties", {}).get("inputs")
    if isinstance(inputs, dict):
        inputs["maxItems"] = lim.max_inputs
    data = schemas.get("InputSpec", {}).get("properties", {}).get("data_b64")
    if isinstance(data, dict):
        data["maxLength"] = lim.max_input_bytes // 3 * 4  # base64: 4 characters per 3 bytes


class _Api:
    """The routes' logic, kept out of the closures so it reads top to bottom."""

    def __init__(
        self,
        executor: Executor,
        store: JobStore,
        object_info: ObjectInfoSource | None,
        extra_models: Mapping[str, Sequence[str]] | None,
        limits: Limits,
        webhooks: WebhookSettings | None,
        threads: _Threads,
        draining: _Draining | None = None,
    ) -> None:
        self.executor = executor
        self.store = store
        self.object_info = object_info
        self.extra_models = extra_models
        self.limits = limits
        self.webhooks = webhooks
        self.threads = threads
        self.draining = draining or _Draining()

    # --- submit ---------------------------------------------------------------------------

    def accept(self, body: JobRequest, base_url: str = "") -> tuple[JobRecord, bool]:
        lim = self.limits
        workflow = body.workflow
        self.check_structure(workflow)
        files, metas = self._inputs(body)
        if body.webhook is not None:
            refused = check_webhook_url(body.webhook.url, self.webhooks)
            if refused is not None:
                raise ApiError(422, "invalid_webhook", refused)
        job_id = body.job_id or str(uuid.uuid4())
        identity = workflow_identity(workflow, metas)

        existing = self.store.get(job_id)
        if existing is not None:
            return self._same_or_conflict(existing, identity), False
        self._check_object_info(job_id, workflow)
        active = self.store.count(status=ACTIVE_STATUSES)
        if active >= lim.max_pending_jobs:
            raise ApiError(
                429,
                "too_many_jobs",
                f"{active} jobs are queued or running (limit {lim.max_pending_jobs}); try later",
                http_headers={"retry-after": "5"},
            )
        now = time.time()
        record = JobRecord(
            job_id=job_id,
            status="queued",
            created_at=now,
            updated_at=now,
            workflow_sha256=identity,
            inputs=metas,
            timeout_s=body.timeout_s,
            previews=body.previews,
        )
        if body.webhook is not None:
            public = self.webhooks.public_url if self.webhooks is not None else None
            record.webhook = waiting_state(body.webhook.events)
            record.webhook_url = body.webhook.url
            record.webhook_base_url = (public or base_url).rstrip("/") or None
        stored, created = self.store.create_if_absent(record)
        if not created:
            return self._same_or_conflict(stored, identity), False
        try:
            self.executor.start(stored, workflow, files)
        except Exception as exc:
            finish(
                self.store,
                job_id,
                "failed",
                JobError(type=ERR_SERVER_STOPPED, message=f"the job could not start: {exc}"),
            )
            raise ApiError(
                503,
                "unavailable",
                "the server is not taking jobs right now",
                http_headers={"retry-after": "5"},
            ) from exc
        return self.store.get(job_id) or stored, True

    def warm(self) -> JobRecord:
        now = time.time()
        record = JobRecord(
            job_id=f"warmup-{uuid.uuid4().hex}",
            status="queued",
            created_at=now,
            updated_at=now,
            workflow_sha256=workflow_identity({}),
        )
        stored, _ = self.store.create_if_absent(record)
        self.executor.warm(stored)
        return self.store.get(stored.job_id) or stored

    def _same_or_conflict(self, existing: JobRecord, identity: str) -> JobRecord:
        if existing.workflow_sha256 != identity:
            raise ApiError(
                409,
                "job_id_conflict",
                f"job {existing.job_id} already exists with another workflow or other inputs;"
                " use a new job_id for a new job",
                job_id=existing.job_id,
            )
        log.info("job %s submitted again: same workflow, no second run", existing.job_id)
        return existing

    def _inputs(self, body: JobRequest) -> tuple[list[JobInput], list[InputMeta]]:
        lim = self.limits
        if len(body.inputs) > lim.max_inputs:
            raise ApiError(
                413,
                "too_large",
                f"{len(body.inputs)} input files, more than the limit of {lim.max_inputs}",
                limit=lim.max_inputs,
            )
        files: list[JobInput] = []
        metas: list[InputMeta] = []
        seen: set[str] = set()
        for i, spec in enumerate(body.inputs):
            where = f"inputs[{i}] ({spec.name})"
            if spec.name in seen:
                raise ApiError(422, "invalid_input", f"{where}: the name is used twice")
            seen.add(spec.name)
            if spec.url is not None:
                files.append(self._url_input(where, spec.name, spec.url, spec.sha256))
                metas.append(
                    InputMeta(
                        name=spec.name,
                        sha256=spec.sha256.lower() if spec.sha256 else None,
                        url=redact_url(spec.url),
                        url_sha256=hashlib.sha256(spec.url.encode("utf-8")).hexdigest(),
                    )
                )
                continue
            assert spec.data_b64 is not None  # InputSpec wants exactly one of the two
            # base64 takes 4 characters per 3 bytes: refuse before decoding a huge string.
            if len(spec.data_b64) > (lim.max_input_bytes + 2) // 3 * 4 + 4:
                raise ApiError(
                    413,
                    "too_large",
                    f"{where}: larger than the {lim.max_input_bytes:,}-byte limit for one input",
                    limit=lim.max_input_bytes,
                )
            try:
                data = base64.b64decode(spec.data_b64, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ApiError(
                    422, "invalid_input", f"{where}: data_b64 is not base64 ({exc})"
                ) from None
            if len(data) > lim.max_input_bytes:
                raise ApiError(
                    413,
                    "too_large",
                    f"{where}: larger than the {lim.max_input_bytes:,}-byte limit for one input",
                    limit=lim.max_input_bytes,
                )
            digest = hashlib.sha256(data).hexdigest()
            if spec.sha256 is not None and spec.sha256.lower() != digest:
                raise ApiError(
                    422,
                    ERR_INPUT_SHA256_MISMATCH,
                    f"{where}: sha256 mismatch (expected {spec.sha256.lower()}, the data has"
                    f" {digest})",
                )
            files.append(InputFile(spec.name, data))
            metas.append(InputMeta(name=spec.name, size=len(data), sha256=digest))
        return files, metas

    def _url_input(self, where: str, name: str, url: str, sha256: str | None) -> InputURL:
        """422 for a URL the worker would refuse (scheme, credentials, a non-public address).

        The worker checks again when it connects: DNS may answer differently by then.
        """
        try:
            check_url(url, allow_private=self.limits.allow_private_urls)
        except UnsafeURL as exc:
            raise ApiError(
                422,
                ERR_INPUT_URL_REFUSED,
                f"{where}: {exc}",
                hint="give a public http(s) URL; `ryla serve --allow-private-urls` accepts"
                " private and loopback addresses for local use",
            ) from None
        return InputURL(name, url, sha256.lower() if sha256 else None)

    def check_structure(self, workflow: Mapping[str, Any]) -> None:
        """413 past the node limit, 422 naming the node at fault for a malformed graph."""
        lim = self.limits
        if len(workflow) > lim.max_nodes:
            raise ApiError(
                413,
                "too_large",
                f"the workflow has {len(workflow):,} nodes, more than the limit of"
                f" {lim.max_nodes:,}",
                limit=lim.max_nodes,
            )
        try:
            validate_structure(workflow, source="workflow", max_nodes=lim.max_nodes)
        except WorkflowFormatError as exc:
            details: dict[str, Any] = {"node_id": exc.node_id, "field": exc.field}
            details["hint"] = exc.hint
            raise ApiError(
                422,
                "invalid_workflow",
                exc.message,
                **{k: v for k, v in details.items() if v is not None},
            ) from None

    def validate(self, workflow: Mapping[str, Any]) -> ValidationReport:
        """ComfyUI's verdict from object_info (``checked=False`` when it is unavailable)."""
        self.check_structure(workflow)
        return self._verdict(workflow)

    def _verdict(self, workflow: Mapping[str, Any]) -> ValidationReport:
        """``validate`` on a workflow whose structure was checked already."""
        source = self.object_info
        info = source() if source is not None else None
        if source is None or info is None:
            return ValidationReport(ok=True, checked=False)
        report = check_workflow(workflow, info, extra_models=self.extra_models)
        if not report.ok:
            fresh = source.refresh(defaults.OBJECT_INFO_REFRESH_MIN_AGE_S)
            if fresh is not None:  # maybe a model file or custom node appeared since
                report = check_workflow(workflow, fresh, extra_models=self.extra_models)
                info = fresh
        if report.ok:
            return ValidationReport(ok=True, checked=True)
        node_errors = report.node_errors or validate_against_object_info(
            workflow, info, extra_models=self.extra_models
        )
        error = report.error or {
            "type": "prompt_outputs_failed_validation",
            "message": "Prompt outputs failed validation",
            "details": "",
            "extra_info": {},
        }
        return ValidationReport(ok=False, checked=True, error=error, node_errors=node_errors)

    def _check_object_info(self, job_id: str, workflow: Mapping[str, Any]) -> None:
        verdict = self._verdict(workflow)  # accept() checked the structure
        if verdict.ok:
            return
        error = verdict.error or {}
        type_ = str(error.get("type") or "prompt_outputs_failed_validation")
        message = str(error.get("message") or "the workflow failed validation")
        if error.get("details"):
            message = f"{message}: {error['details']}"
        lines = []
        for node_id, entry in verdict.node_errors.items():
            for err in entry.get("errors", []) if isinstance(entry, dict) else []:
                text = str(err.get("message", ""))
                if err.get("details"):
                    text = f"{text}: {err['details']}"
                lines.append(f"node {node_id} ({entry.get('class_type', '?')}): {text}")
        if lines:
            message += "; " + "; ".join(lines[:5]) + ("; ..." if len(lines) > 5 else "")
        log.info("job %s rejected before it ran: %s", job_id, message)
        raise ApiError(
            422,
            type_,
            message,
            node_errors=verdict.node_errors,
            details=error.get("details"),
            extra_info=error.get("extra_info"),
        )

    # --- reading --------------------------------------------------------------------------

    def _known(self, job_id: str) -> JobRecord:
        record = self.store.get(job_id)
        if record is None:
            raise ApiError(404, "not_found", f"no job with id {job_id[:80]!r}")
        if record.status in ACTIVE_STATUSES:
            record = self.executor.check(record)
        return record

    async def current(self, job_id: str) -> JobRecord:
        return await self.threads.run(self._known, job_id)

    async def wait_change(
        self, record: JobRecord, wait_s: float, linger_s: float = 0.0
    ) -> JobRecord:
        """The record once it differs from ``record``, or as it is after ``wait_s``.

        ``linger_s``: a change that is not final is held that long for the changes right behind
        it (a job's start writes two within milliseconds), so one answer carries them and the
        poller asks once; a final change is answered at once.
        """
        deadline = time.monotonic() + wait_s
        stop = self.draining.event()
        seen = record
        while True:
            if stop.is_set():
                raise stopping_error()
            left = deadline - time.monotonic()
            if left <= 0:
                return seen
            change = asyncio.ensure_future(
                self.store.wait_for_change(seen.job_id, seen.revision, left)
            )
            stopped = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({change, stopped}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (change, stopped):
                    task.cancel()
            if stop.is_set():
                raise stopping_error()
            now = await self.threads.run(self._known, seen.job_id)
            if now.revision == seen.revision:
                continue
            if now.status in TERMINAL_STATUSES or linger_s <= 0:
                return now
            if seen is record:  # the first change: linger for the next, within the wait
                deadline = min(deadline, time.monotonic() + linger_s)
            seen = now

    async def wait_finished(self, record: JobRecord, wait_s: float) -> JobRecord:
        deadline = time.monotonic() + wait_s
        while record.status not in TERMINAL_STATUSES:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            record = await self.wait_change(record, left)
        return record

    def output(self, job_id: str, index: int) -> Response:
        record = self._known(job_id)
        if record.status != "succeeded":
            state = "has not finished" if record.status in ACTIVE_STATUSES else record.status
            raise ApiError(
                409,
                "job_not_succeeded",
                f"job {job_id} {state}; outputs exist once it succeeded",
                status=record.status,
            )
        if not 0 <= index < len(record.outputs):
            raise ApiError(
                404,
                "not_found",
                f"job {job_id} has {len(record.outputs)} outputs; there is no output {index}",
            )
        info = record.outputs[index]
        opened = self.store.open_output(job_id, index)
        if opened is None:
            raise ApiError(
                404, "not_found", f"output {index} of job {job_id} is gone from the store"
            )
        fh, size = opened
        filename = safe_basename(info.filename, fallback=f"output_{index}")
        headers = {
            "x-sha256": info.sha256,
            "content-disposition": f'attachment; filename="{filename}"',
        }
        if size <= _CHUNK:
            # One read here, in the worker thread that opened the file: a stream would cost two
            # more thread hops (the chunk, then the end), most of a small download's cost under
            # load.  The length is the bytes read (the client checks them against x-sha256).
            with fh:
                return Response(fh.read(), media_type=info.mime, headers=headers)
        headers["content-length"] = str(size)
        return StreamingResponse(
            _chunks(fh), media_type=info.mime, headers=headers, background=BackgroundTask(fh.close)
        )

    def inline_outputs(self, record: JobRecord) -> Job:
        job = record.public()
        if record.status != "succeeded":
            return job
        if sum(o.size for o in job.outputs) > self.limits.generate_inline_max_bytes:
            return job  # too big to inline: the client downloads them
        for out in job.outputs:
            opened = self.store.open_output(job.job_id, out.index)
            if opened is None:
                continue
            fh, _ = opened
            with fh:
                out.data_b64 = base64.b64encode(fh.read()).decode("ascii")
        return job

    # --- cancel ---------------------------------------------------------------------------

    def cancel(self, job_id: str) -> JobRecord:
        record = self._known(job_id)
        if record.status in ACTIVE_STATUSES:
            self.store.update(job_id, cancel_requested=True)
            log.info("job %s cancel requested", job_id)
            self.executor.cancel(job_id)
        return self.store.get(job_id) or record


def _chunks(fh: IO[bytes]) -> Iterator[bytes]:
    try:
        while chunk := fh.read(_CHUNK):
            yield chunk
    finally:
        fh.close()


__all__ = ["ApiError", "Limits", "create_app"]
