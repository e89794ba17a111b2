"""A local stand-in for Modal's control plane that the REAL `modal` CLI talks to.

Modal's cloud cannot exist in a test, so this is the narrowest seam: a grpclib server on
127.0.0.1 speaking `modal_proto` (the API the `modal` package ships), run on its own event loop
in a thread. Everything above it - the `modal` CLI, its retries, its output - is the real thing,
started as a subprocess with `FakeModalControl.env(home)`.

- Every RPC is recorded in `calls` as (method name, request message), in arrival order, before
  the mode or the token is looked at: a test can see what the CLI asked for even when it failed.
- An RPC without a handler here answers UNIMPLEMENTED (the name lands in `calls` too), so a new
  `modal` release that calls something new fails loudly instead of hanging.
- Tokens: metadata `x-modal-token-id` / `x-modal-token-secret` on every RPC (there is no hello
  RPC first). An id outside `valid_token_ids` answers UNAUTHENTICATED, which the CLI turns into
  `AuthError` and prints as `Error: <message>`, exit 1.
- A handler that crashes (a bug in this fake) is kept in `errors`; the CLI sees INTERNAL.

RPCs answered (modal 1.6.4): `app list` AppList. `app logs NAME` AppGetByDeploymentName (an
unknown name gets an empty app_id, then the CLI asks ObjectSuggest and prints "No App with name
'X' found in the 'main' environment.") then AppFetchLogs with since = now - 1 h (widened to 1 d,
7 d, 30 d while fewer than `limit` entries come back), `limit` = --tail (default 100) and
`search_text`; with --since and no --tail it asks AppCountLogs first. `app logs -f`: AppGetLogs,
a server stream held open after the lines (set `follow_ends_with_app_done` to end it).
`app stop NAME --yes`: AppGetByDeploymentName, AppStop (without --yes and without a TTY the CLI
asks TaskList, prints the question and exits 1: "Aborted: no interactive terminal detected").
`deploy`: AppGetByDeploymentName, AppCreate (or AppGetLayout on a redeploy),
EnvironmentGetOrCreate, FunctionPrecreate, AppHeartbeat, Secret/Volume/Dict/MountGetOrCreate,
ImageGetOrCreate (already built), MountBatchedCheckExistence (every file exists),
FunctionCreate, ClassCreate, AppPublish. What a deploy declared is kept in `deployed[app_name]`
(`functions`: name -> FunctionCreateRequest, see `function_definition()`; `classes`; `publish`;
`web_urls`; `object_names` maps the Volume/Secret ids in a request back to their names).
`app history NAME --json`: AppGetByDeploymentName, AppDeploymentHistory (one version per
AppPublish, kept in `deployed[name]["versions"]`).
The modal package (run by `ryla_modal.cloud.remote`): `Cls.from_name(...)().update_autoscaler`
asks ClassGet, FunctionGet (tag `Cls.*`), FunctionUpdateSchedulingParams (overrides kept in
`autoscaler[function_id]`); `Function.from_name(...).remote(...)` asks FunctionGet, FunctionMap,
FunctionGetOutputs, and the call runs `function_handlers[(app, tag)]` in a thread of the test
process, its result or exception pickled back as Modal does; `Secret/Volume.from_name().hydrate()`
asks Secret/VolumeGetOrCreate without CREATE_IF_MISSING.
Wake-ups (modal 1.6.4): `Queue.from_name(...)` asks QueueGetOrCreate; `put(v, partition=K)`
QueuePut and `get_many(n, timeout=T, partition=K)` QueueGet, which here blocks until an item
arrives on that partition or T passes, as Modal's does (items per (queue, partition), FIFO,
kept in `queues`). `FunctionCall.from_id(ID).get(timeout=T)` asks FunctionGetOutputs, which
blocks until the call has a result or T (at most 30 s) passes; `start_call(fn, *args)` starts a
call without a deployed function (what a gateway's spawn returns), run in a thread of the test
process.
Switches: `missing_secrets` (SecretGetOrCreate answers NOT_FOUND, as Modal does for a Secret
that does not exist), `missing_volumes` (a lookup answers NOT_FOUND until a deploy creates it),
`image_build` ("cached"; "build" streams `image_build_logs` through
ImageJoinStreaming, which the CLI prints; "fail" ends the build with an exception).

Modes, and what the real CLI (modal 1.6.4) did against each, measured on a 2-core machine:
- "unavailable": every RPC answers UNAVAILABLE. Unary RPCs are retried 3 times with backoff,
  then `Error: <message>`, exit 1, about 1.5-2 s after start (3.6 s with 6 CLIs at once).
- "never_answer": handlers wait until stop(). `app list`, `app logs`, `deploy` all waited the
  full 70 s of the experiment and would wait forever: the default retry has no attempt timeout.
- "close": new connections are accepted then closed; switching to it also aborts live ones.
  Unary commands: `Error: Connection lost`, exit 1, after about 1.3-2 s. `app logs -f` whose
  stream is cut reconnects in a tight loop (about 700 connections/s, half a core) forever.
So only a hard deadline around the CLI bounds "never_answer" and a cut `-f`; DESIGN.md's numbers
for a closed port (57 s) and a silent TCP peer (162 s) are other failure shapes, not these.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import difflib
import os
import secrets
import string
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import grpclib.const
import grpclib.server
from google.protobuf.empty_pb2 import Empty
from google.protobuf.timestamp_pb2 import Timestamp
from grpclib import GRPCError, Status
from grpclib.exceptions import StreamTerminatedError
from h2.exceptions import StreamClosedError
from modal_proto import api_grpc, api_pb2

MODES = ("normal", "unavailable", "never_answer", "close")
WORKSPACE = "ryla-test"
DEFAULT_ENVIRONMENT = "main"
_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 10.0
_ID_ALPHABET = string.ascii_letters + string.digits

_Handler = Callable[[Any], Awaitable[None]]


def new_id(prefix: str) -> str:
    """An object id shaped like Modal's (`ap-` + 22 alphanumerics): the CLI matches that pattern."""
    return f"{prefix}-" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(22))


def _ts(seconds: float) -> Timestamp:
    out = Timestamp()
    out.FromNanoseconds(int(seconds * 1e9))
    return out


def _seconds(ts: Timestamp) -> float:
    return float(ts.seconds + ts.nanos / 1e9)


@dataclass
class LogEntry:
    data: str
    timestamp: float
    entry_id: str
    fd: int = api_pb2.FILE_DESCRIPTOR_STDOUT


@dataclass
class FakeApp:
    app_id: str
    name: str
    environment: str
    state: int
    created_at: float
    logs: list[LogEntry] = field(default_factory=list)
    stopped_at: float = 0.0
    task_id: str = field(default_factory=lambda: new_id("ta"))
    function_id: str = field(default_factory=lambda: new_id("fu"))


_STATES = {
    "deployed": api_pb2.APP_STATE_DEPLOYED,
    "ephemeral": api_pb2.APP_STATE_EPHEMERAL,
    "stopped": api_pb2.APP_STATE_STOPPED,
    "initializing": api_pb2.APP_STATE_INITIALIZING,
    "detached": api_pb2.APP_STATE_DETACHED,
}


class _PreReadStream:
    """A grpclib server stream whose single request was already read (to record it first)."""

    def __init__(self, stream: Any, request: Any) -> None:
        self._stream = stream
        self._request = request

    async def recv_message(self) -> Any:
        return self._request

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _Servicer(api_grpc.ModalClientBase):
    """The RPCs we answer. Every other RPC answers UNIMPLEMENTED (see `_fill_unimplemented`)."""

    def __init__(self, control: FakeModalControl) -> None:
        self._c = control

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        mapping: dict[str, grpclib.const.Handler] = super().__mapping__()
        return {
            path: grpclib.const.Handler(
                self._wrap(path.rsplit("/", 1)[1], h.func, h.cardinality),
                h.cardinality,
                h.request_type,
                h.reply_type,
            )
            for path, h in mapping.items()
        }

    def _wrap(self, name: str, func: _Handler, cardinality: grpclib.const.Cardinality) -> _Handler:
        control = self._c

        async def handler(stream: Any) -> None:
            request = None
            if not cardinality.client_streaming:
                request = await stream.recv_message()
            control._record(name, request, stream.metadata)
            mode = control.mode
            if mode == "unavailable":
                raise GRPCError(Status.UNAVAILABLE, "fake Modal control plane: unavailable mode")
            if mode == "never_answer":
                await control._stopping.wait()
                raise GRPCError(Status.UNAVAILABLE, "fake Modal control plane: shutting down")
            control._check_auth(stream.metadata)
            try:
                await func(_PreReadStream(stream, request) if request is not None else stream)
            except (GRPCError, asyncio.CancelledError, StreamClosedError, StreamTerminatedError):
                raise  # an answer, or a client that went away (a long poll it gave up on)
            except Exception as exc:
                # A bug in the fake, not an answer: keep it so a test can fail on it loudly.
                control.errors.append((name, exc))
                raise

        handler.__name__ = name
        return handler

    # --- apps ---------------------------------------------------------------------------------

    async def ClientHello(self, stream: Any) -> None:
        await stream.recv_message()
        await stream.send_message(api_pb2.ClientHelloResponse())

    async def AppList(self, stream: Any) -> None:
        req = await stream.recv_message()
        env = req.environment_name
        resp = api_pb2.AppListResponse()
        for app in self._c._apps_snapshot():
            if env and app.environment != env:
                continue
            resp.apps.append(
                api_pb2.AppListResponse.AppListItem(
                    app_id=app.app_id,
                    description=app.name,
                    name=app.name,
                    state=app.state,  # type: ignore[arg-type]
                    created_at=app.created_at,
                    stopped_at=app.stopped_at,
                    n_running_tasks=0,
                )
            )
        await stream.send_message(resp)

    async def AppGetByDeploymentName(self, stream: Any) -> None:
        req = await stream.recv_message()
        env = req.environment_name or DEFAULT_ENVIRONMENT
        app = self._c._find_app(req.name, env)
        resp = api_pb2.AppGetByDeploymentNameResponse(environment_name=env)
        if app is not None:
            if app.state == api_pb2.APP_STATE_STOPPED:
                resp.previous_app_id = app.app_id
            else:
                resp.app_id = app.app_id
            resp.lifecycle.CopyFrom(self._c._lifecycle(app))
        await stream.send_message(resp)

    async def AppGetLifecycle(self, stream: Any) -> None:
        req = await stream.recv_message()
        app = self._c._app_by_id(req.app_id)
        await stream.send_message(
            api_pb2.AppGetLifecycleResponse(lifecycle=self._c._lifecycle(app))
        )

    async def ObjectSuggest(self, stream: Any) -> None:
        req = await stream.recv_message()
        names = [a.name for a in self._c._apps_snapshot() if a.state != api_pb2.APP_STATE_STOPPED]
        resp = api_pb2.ObjectSuggestResponse()
        for name in difflib.get_close_matches(req.query, names, n=req.limit or 3):
            resp.suggestions.append(api_pb2.ObjectSuggestion(object_name=name))
        await stream.send_message(resp)

    async def TaskList(self, stream: Any) -> None:
        await stream.recv_message()
        await stream.send_message(api_pb2.TaskListResponse())

    async def AppStop(self, stream: Any) -> None:
        req = await stream.recv_message()
        app = self._c._app_by_id(req.app_id)
        with self._c._lock:
            app.state = api_pb2.APP_STATE_STOPPED
            app.stopped_at = time.time()
        await stream.send_message(Empty())

    # --- logs ---------------------------------------------------------------------------------

    async def AppCountLogs(self, stream: Any) -> None:
        req = await stream.recv_message()
        app = self._c._app_by_id(req.app_id)
        since, until = _seconds(req.since), _seconds(req.until)
        bucket = max(int(req.bucket_secs), 1)
        counts: dict[int, int] = {}
        for entry in _filter_logs(app.logs, req, since=since, until=until):
            index = int((entry.timestamp - since) // bucket)
            counts[index] = counts.get(index, 0) + 1
        resp = api_pb2.AppCountLogsResponse(app_id=app.app_id)
        for index in sorted(counts):
            resp.buckets.append(
                api_pb2.AppCountLogsResponse.LogBucket(
                    bucket_start_at=_ts(since + index * bucket), stdout_logs=counts[index]
                )
            )
        await stream.send_message(resp)

    async def AppFetchLogs(self, stream: Any) -> None:
        req = await stream.recv_message()
        app = self._c._app_by_id(req.app_id)
        entries = _filter_logs(app.logs, req, since=_seconds(req.since), until=_seconds(req.until))
        if req.limit:
            entries = entries[-req.limit :]
        resp = api_pb2.AppFetchLogsResponse()
        if entries:
            resp.batches.append(_batch(app, entries))
        await stream.send_message(resp)

    async def AppGetLogs(self, stream: Any) -> None:
        req = await stream.recv_message()
        app = self._c._app_by_id(req.app_id)
        entries = list(app.logs)
        if req.last_entry_id:
            ids = [e.entry_id for e in entries]
            if req.last_entry_id in ids:
                entries = entries[ids.index(req.last_entry_id) + 1 :]
        for entry in entries:
            await stream.send_message(_batch(app, [entry]))
        if self._c.follow_ends_with_app_done:
            await stream.send_message(api_pb2.TaskLogsBatch(app_done=True))
            return
        # A followed app keeps its stream open: only the caller's deadline (or stop()) ends it.
        await self._c._stopping.wait()

    # --- deploy -------------------------------------------------------------------------------

    async def AppCreate(self, stream: Any) -> None:
        req = await stream.recv_message()
        env = req.environment_name or DEFAULT_ENVIRONMENT
        app = self._c._create_app(
            req.description, env, req.app_state or api_pb2.APP_STATE_INITIALIZING
        )
        await stream.send_message(
            api_pb2.AppCreateResponse(
                app_id=app.app_id,
                app_page_url=_app_page_url(env, app.app_id),
                app_logs_url=_app_page_url(env, app.app_id) + "/logs",
            )
        )

    async def AppGetLayout(self, stream: Any) -> None:
        req = await stream.recv_message()
        app = self._c._app_by_id(req.app_id)
        layout = api_pb2.AppLayout()
        # A redeploy starts here: answer with the previous layout, then record afresh.
        record = self._c._deploy_record(app, fresh=True)
        for tag, function_id in record["function_ids"].items():
            layout.function_ids[tag] = function_id
        for tag, class_id in record["class_ids"].items():
            layout.class_ids[tag] = class_id
        await stream.send_message(api_pb2.AppGetLayoutResponse(app_layout=layout))

    async def AppHeartbeat(self, stream: Any) -> None:
        await stream.recv_message()
        await stream.send_message(Empty())

    async def AppClientDisconnect(self, stream: Any) -> None:
        await stream.recv_message()
        await stream.send_message(Empty())

    async def EnvironmentGetOrCreate(self, stream: Any) -> None:
        req = await stream.recv_message()
        name = req.deployment_name or DEFAULT_ENVIRONMENT
        settings = api_pb2.EnvironmentSettings(
            image_builder_version=self._c.image_builder_version, webhook_suffix=""
        )
        await stream.send_message(
            api_pb2.EnvironmentGetOrCreateResponse(
                environment_id=self._c._object_id("en", name),
                metadata=api_pb2.EnvironmentMetadata(name=name, settings=settings),
            )
        )

    async def MountGetOrCreate(self, stream: Any) -> None:
        req = await stream.recv_message()
        await stream.send_message(
            api_pb2.MountGetOrCreateResponse(mount_id=self._c._object_id("mo", str(id(req))))
        )

    async def MountBatchedCheckExistence(self, stream: Any) -> None:
        await stream.recv_message()
        # Every file "exists" already, so the client uploads nothing.
        resp = api_pb2.MountBatchedCheckExistenceResponse()
        resp.checked_at.GetCurrentTime()
        await stream.send_message(resp)

    async def MountPutFile(self, stream: Any) -> None:
        await stream.recv_message()
        resp = api_pb2.MountPutFileResponse(exists=True)
        resp.checked_at.GetCurrentTime()
        await stream.send_message(resp)

    async def ImageGetOrCreate(self, stream: Any) -> None:
        await stream.recv_message()
        resp = api_pb2.ImageGetOrCreateResponse(image_id=new_id("im"))
        if self._c.image_build == "cached":
            # Already built: the client need not join a build stream.
            resp.result.status = api_pb2.GenericResult.GENERIC_STATUS_SUCCESS
            resp.metadata.CopyFrom(self._image_metadata())
        await stream.send_message(resp)

    async def ImageJoinStreaming(self, stream: Any) -> None:
        req = await stream.recv_message()
        for i, line in enumerate(self._c.image_build_logs):
            await stream.send_message(
                api_pb2.ImageJoinStreamingResponse(
                    task_logs=[
                        api_pb2.TaskLogs(
                            data=line + "\n",
                            timestamp=time.time(),
                            file_descriptor=api_pb2.FILE_DESCRIPTOR_STDOUT,
                        )
                    ],
                    entry_id=f"{req.image_id}-{i}",
                )
            )
        result = api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_SUCCESS)
        if self._c.image_build == "fail":
            result = api_pb2.GenericResult(
                status=api_pb2.GenericResult.GENERIC_STATUS_FAILURE,
                exception="RuntimeError: fake image build failed",
            )
        await stream.send_message(
            api_pb2.ImageJoinStreamingResponse(
                result=result, metadata=self._image_metadata(), eof=True
            )
        )

    def _image_metadata(self) -> Any:
        return api_pb2.ImageMetadata(
            python_version_info="3.11.9", image_builder_version=self._c.image_builder_version
        )

    async def SecretGetOrCreate(self, stream: Any) -> None:
        req = await stream.recv_message()
        name = req.deployment_name
        if name in self._c.missing_secrets:
            env = req.environment_name or DEFAULT_ENVIRONMENT
            raise GRPCError(Status.NOT_FOUND, f"Secret '{name}' not found in environment '{env}'")
        await stream.send_message(
            api_pb2.SecretGetOrCreateResponse(
                secret_id=self._c._object_id("st", name or str(id(req))),
                metadata=api_pb2.SecretMetadata(name=name),
            )
        )

    async def VolumeGetOrCreate(self, stream: Any) -> None:
        req = await stream.recv_message()
        creates = req.object_creation_type == api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING
        if req.deployment_name in self._c.missing_volumes:
            if not creates:
                env = req.environment_name or DEFAULT_ENVIRONMENT
                raise GRPCError(
                    Status.NOT_FOUND,
                    f"Volume '{req.deployment_name}' not found in environment '{env}'",
                )
            self._c.missing_volumes.discard(req.deployment_name)  # created now
        await stream.send_message(
            api_pb2.VolumeGetOrCreateResponse(
                volume_id=self._c._object_id("vo", req.deployment_name),
                version=req.version or api_pb2.VOLUME_FS_VERSION_V2,
                metadata=api_pb2.VolumeMetadata(name=req.deployment_name),
            )
        )

    async def DictGetOrCreate(self, stream: Any) -> None:
        req = await stream.recv_message()
        await stream.send_message(
            api_pb2.DictGetOrCreateResponse(dict_id=self._c._object_id("di", req.deployment_name))
        )

    async def QueueGetOrCreate(self, stream: Any) -> None:
        req = await stream.recv_message()
        queue_id = self._c._object_id("qu", req.deployment_name)
        await stream.send_message(api_pb2.QueueGetOrCreateResponse(queue_id=queue_id))

    async def QueuePut(self, stream: Any) -> None:
        req = await stream.recv_message()
        key = (req.queue_id, bytes(req.partition_key))
        with self._c._lock:
            self._c.queues.setdefault(key, []).extend(bytes(v) for v in req.values)
        self._c._queue_changed().set()
        await stream.send_message(Empty())

    async def QueueGet(self, stream: Any) -> None:
        req = await stream.recv_message()
        key = (req.queue_id, bytes(req.partition_key))
        deadline = time.monotonic() + max(0.0, min(req.timeout, 50.0))
        n = max(1, req.n_values)
        while True:
            changed = self._c._queue_changed()
            with self._c._lock:
                items = self._c.queues.get(key, [])
                taken, self._c.queues[key] = items[:n], items[n:]
            left = deadline - time.monotonic()
            if taken or left <= 0:
                break
            # Woken by any put; a put to another partition just loops (bounded by the deadline).
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(changed.wait(), left)
        await stream.send_message(api_pb2.QueueGetResponse(values=taken))

    async def FunctionPrecreate(self, stream: Any) -> None:
        req = await stream.recv_message()
        app = self._c._app_by_id(req.app_id)
        function_id = req.existing_function_id or new_id("fu")
        metadata = api_pb2.FunctionHandleMetadata(
            function_name=req.function_name,
            function_type=req.function_type,
            web_url=_web_url(app.name, req.function_name, req.webhook_config),
            app_id=app.app_id,
        )
        await stream.send_message(
            api_pb2.FunctionPrecreateResponse(function_id=function_id, handle_metadata=metadata)
        )

    async def FunctionCreate(self, stream: Any) -> None:
        req = await stream.recv_message()
        app = self._c._app_by_id(req.app_id)
        definition = function_definition(req)
        function_id = req.existing_function_id or new_id("fu")
        function = api_pb2.Function()
        function.CopyFrom(definition)
        function.web_url = _web_url(app.name, definition.function_name, definition.webhook_config)
        for method_name, method in function.method_definitions.items():
            method.web_url = _web_url(
                app.name, f"{definition.function_name}-{method_name}", method.webhook_config
            )
        if req.HasField("function_data"):
            data = api_pb2.FunctionData()
            data.CopyFrom(req.function_data)
        else:
            data = api_pb2.FunctionData(
                module_name=function.module_name,
                function_name=function.function_name,
                function_type=function.function_type,
                web_url=function.web_url,
                webhook_config=function.webhook_config,
                is_class=function.is_class,
                is_method=function.is_method,
            )
            data.ranked_functions.append(
                api_pb2.FunctionData.RankedFunction(rank=0, function=function)
            )
        metadata = api_pb2.FunctionHandleMetadata(
            function_name=function.function_name,
            function_type=function.function_type,
            web_url=function.web_url,
            is_method=function.is_method,
            app_id=app.app_id,
        )
        for method_name, method in function.method_definitions.items():
            metadata.method_handle_metadata[method_name].CopyFrom(
                api_pb2.FunctionHandleMetadata(
                    function_name=method.function_name,
                    function_type=method.function_type,
                    web_url=method.web_url,
                    is_method=True,
                    use_method_name=method_name,
                    app_id=app.app_id,
                )
            )
        self._c._record_function(app, function.function_name, function_id, req)
        await stream.send_message(
            api_pb2.FunctionCreateResponse(
                function_id=function_id,
                function=function,
                function_data=data,
                handle_metadata=metadata,
            )
        )

    async def ClassCreate(self, stream: Any) -> None:
        req = await stream.recv_message()
        app = self._c._app_by_id(req.app_id)
        class_id = req.existing_class_id or new_id("cs")
        self._c._record_class(app, class_id, req)
        await stream.send_message(api_pb2.ClassCreateResponse(class_id=class_id))

    async def AppPublish(self, stream: Any) -> None:
        req = await stream.recv_message()
        app = self._c._publish(req)
        await stream.send_message(
            api_pb2.AppPublishResponse(
                url=_app_page_url(app.environment, app.app_id, deployed_name=app.name),
                deployed_at=time.time(),
            )
        )

    # --- looking deployed objects up, calling them, changing their autoscaler ------------------

    async def ClassGet(self, stream: Any) -> None:
        req = await stream.recv_message()
        record = self._c._deployed_or_not_found(req.app_name, req.object_tag)
        publish = record.get("publish")
        class_id = dict(publish.class_ids).get(req.object_tag) if publish is not None else None
        if not class_id:
            raise GRPCError(Status.NOT_FOUND, f"Class '{req.object_tag}' not found")
        await stream.send_message(
            api_pb2.ClassGetResponse(
                class_id=class_id, handle_metadata=api_pb2.ClassHandleMetadata()
            )
        )

    async def FunctionGet(self, stream: Any) -> None:
        req = await stream.recv_message()
        record = self._c._deployed_or_not_found(req.app_name, req.object_tag)
        create = record["functions"].get(req.object_tag)
        if create is None:
            raise GRPCError(Status.NOT_FOUND, f"Function '{req.object_tag}' not found")
        definition = function_definition(create)
        function_id = record["function_ids"][req.object_tag]
        metadata = api_pb2.FunctionHandleMetadata(
            function_name=definition.function_name,
            function_type=definition.function_type,
            is_method=definition.is_method,
            app_id=record["app_id"],
        )
        for method_name, method in definition.method_definitions.items():
            metadata.method_handle_metadata[method_name].CopyFrom(
                api_pb2.FunctionHandleMetadata(
                    function_name=method.function_name,
                    function_type=method.function_type,
                    is_method=True,
                    use_method_name=method_name,
                    app_id=record["app_id"],
                )
            )
        with self._c._lock:
            self._c.function_names[function_id] = (record["name"], req.object_tag)
        data = api_pb2.FunctionData(
            module_name=definition.module_name,
            function_name=definition.function_name,
            function_type=definition.function_type,
            is_class=definition.is_class,
            is_method=definition.is_method,
        )
        data.ranked_functions.append(
            api_pb2.FunctionData.RankedFunction(rank=0, function=definition)
        )
        await stream.send_message(
            api_pb2.FunctionGetResponse(
                function_id=function_id, handle_metadata=metadata, function=data
            )
        )

    async def FunctionUpdateSchedulingParams(self, stream: Any) -> None:
        req = await stream.recv_message()
        with self._c._lock:
            current = self._c.autoscaler.setdefault(req.function_id, api_pb2.AutoscalerSettings())
            for name in ("min_containers", "max_containers", "buffer_containers"):
                if req.settings.HasField(name):
                    setattr(current, name, getattr(req.settings, name))
            if req.settings.HasField("scaledown_window"):
                current.scaledown_window = req.settings.scaledown_window
            answer = api_pb2.AutoscalerSettings()
            answer.CopyFrom(current)
        await stream.send_message(
            api_pb2.FunctionUpdateSchedulingParamsResponse(current_settings=answer)
        )

    async def FunctionMap(self, stream: Any) -> None:
        from modal._serialization import deserialize_data_format

        req = await stream.recv_message()
        with self._c._lock:
            app_name, tag = self._c.function_names.get(req.function_id, ("", ""))
        handler = self._c.function_handlers.get((app_name, tag))
        if handler is None:
            raise GRPCError(Status.NOT_FOUND, f"fake: no handler for {app_name}/{tag}")
        (item,) = req.pipelined_inputs
        args, kwargs = deserialize_data_format(item.input.args, item.input.data_format, None)
        call_id = new_id("fc")
        task = asyncio.ensure_future(asyncio.to_thread(handler, *args, **kwargs))
        with self._c._lock:
            self._c.function_calls[call_id] = task
        resp = api_pb2.FunctionMapResponse(function_call_id=call_id)
        resp.pipelined_inputs.append(
            api_pb2.FunctionPutInputsResponseItem(idx=0, input_id=new_id("in"), input_jwt="jwt")
        )
        await stream.send_message(resp)

    async def FunctionGetOutputs(self, stream: Any) -> None:
        from modal._serialization import serialize

        req = await stream.recv_message()
        with self._c._lock:
            task = self._c.function_calls.get(req.function_call_id)
        if task is None:
            raise GRPCError(Status.NOT_FOUND, f"function call {req.function_call_id} not found")
        done, _ = await asyncio.wait({task}, timeout=max(0.0, min(req.timeout, 30.0)))
        resp = api_pb2.FunctionGetOutputsResponse(num_unfinished_inputs=0 if done else 1)
        if done:
            exc = task.exception()
            if exc is None:
                result = api_pb2.GenericResult(
                    status=api_pb2.GenericResult.GENERIC_STATUS_SUCCESS,
                    data=serialize(task.result()),
                )
            else:
                result = api_pb2.GenericResult(
                    status=api_pb2.GenericResult.GENERIC_STATUS_FAILURE,
                    exception=repr(exc),
                    data=serialize(exc),
                )
            resp.outputs.append(
                api_pb2.FunctionGetOutputsItem(
                    result=result, idx=0, data_format=api_pb2.DATA_FORMAT_PICKLE
                )
            )
        await stream.send_message(resp)

    async def AppDeploymentHistory(self, stream: Any) -> None:
        req = await stream.recv_message()
        app = self._c._app_by_id(req.app_id)
        resp = api_pb2.AppDeploymentHistoryResponse()
        with self._c._lock:
            versions = list(self._c.deployed.get(app.name, {}).get("versions", []))
        for version, deployed_at in reversed(versions):
            resp.app_deployment_histories.append(
                api_pb2.AppDeploymentHistory(
                    app_id=app.app_id,
                    version=version,
                    deployed_at=deployed_at,
                    client_version="1.6.4",
                    deployed_by="ryla-test",
                )
            )
        await stream.send_message(resp)


def _filter_logs(
    entries: Sequence[LogEntry], req: Any, *, since: float, until: float
) -> list[LogEntry]:
    out = []
    for entry in entries:
        if since and entry.timestamp < since:
            continue
        if until and entry.timestamp >= until:
            continue
        if req.source and req.source != entry.fd:
            continue
        if req.search_text and req.search_text not in entry.data:
            continue
        out.append(entry)
    return out


def _batch(app: FakeApp, entries: Sequence[LogEntry]) -> Any:
    batch = api_pb2.TaskLogsBatch(
        task_id=app.task_id, function_id=app.function_id, entry_id=entries[-1].entry_id
    )
    for entry in entries:
        batch.items.append(
            api_pb2.TaskLogs(
                data=entry.data,
                timestamp=entry.timestamp,
                timestamp_ns=int(entry.timestamp * 1e9),
                file_descriptor=entry.fd,  # type: ignore[arg-type]
                container_id=app.task_id,
            )
        )
    return batch


def function_definition(request: Any) -> Any:
    """The `api_pb2.Function` a FunctionCreateRequest declares (inline, or rank 0 of a GPU list)."""
    if request.HasField("function"):
        return request.function
    return request.function_data.ranked_functions[0].function


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def _web_url(app_name: str, function_name: str, webhook_config: Any) -> str:
    """`https://<workspace>--<app>-<function>.modal.run`, as Modal names web endpoints."""
    if not webhook_config.type:
        return ""
    label = webhook_config.requested_suffix or _slug(f"{app_name}-{function_name}")
    return f"https://{WORKSPACE}--{label}.modal.run"


def _app_page_url(environment: str, app_id: str, *, deployed_name: str = "") -> str:
    if deployed_name:
        return f"https://modal.com/apps/{WORKSPACE}/{environment}/deployed/{deployed_name}"
    return f"https://modal.com/apps/{WORKSPACE}/{environment}/{app_id}"


def _fill_unimplemented(cls: type) -> None:
    """Give every RPC we do not serve a handler answering UNIMPLEMENTED, as a real server does."""

    def make(name: str) -> Callable[[Any, Any], Awaitable[None]]:
        async def unimplemented(self: Any, stream: Any) -> None:
            raise GRPCError(Status.UNIMPLEMENTED, f"fake Modal control plane does not serve {name}")

        unimplemented.__name__ = name
        return unimplemented

    for name in list(getattr(cls, "__abstractmethods__", ())):
        if name not in cls.__dict__:
            setattr(cls, name, make(name))
    abc.update_abstractmethods(cls)


_fill_unimplemented(_Servicer)


class _CloseProtocol(asyncio.Protocol):
    """What a connection gets in "close" mode: accepted, then closed at once."""

    def __init__(self, control: FakeModalControl) -> None:
        self._control = control

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        with self._control._lock:
            self._control.closed_connections += 1
        transport.close()


class _Server(grpclib.server.Server):
    """grpclib's server, with a hook to refuse connections ("close" mode) and drop live ones."""

    def __init__(self, control: FakeModalControl, handlers: list[Any]) -> None:
        super().__init__(handlers)
        self._control = control
        self.transports: set[asyncio.Transport] = set()

    def _protocol_factory(self) -> Any:
        if self._control.mode == "close":
            return _CloseProtocol(self._control)
        proto = super()._protocol_factory()
        original = proto.connection_made

        def connection_made(transport: asyncio.BaseTransport) -> None:
            if isinstance(transport, asyncio.Transport):
                self.transports.add(transport)
            original(transport)

        setattr(proto, "connection_made", connection_made)  # noqa: B010 (instance hook)
        return proto


class FakeModalControl:
    """Modal's control plane on 127.0.0.1, enough for the real `modal` CLI.

    >>> with FakeModalControl() as fake:  # doctest: +SKIP
    ...     fake.add_app("ryla-comfyui", logs=["hello"])
    ...     subprocess.run(["modal", "app", "logs", "ryla-comfyui"], env=fake.env(tmp_path))
    """

    def __init__(
        self, *, mode: str = "normal", valid_token_ids: Iterable[str] = ("ak-test",)
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self._mode = mode
        self.valid_token_ids = frozenset(valid_token_ids)
        self.follow_ends_with_app_done = False
        self.url = ""
        self.port = 0
        self.calls: list[tuple[str, Any]] = []
        self.metadata: list[dict[str, str]] = []
        self.errors: list[tuple[str, BaseException]] = []
        self.closed_connections = 0
        self.deployed: dict[str, dict[str, Any]] = {}
        self._apps: list[FakeApp] = []
        self._object_ids: dict[tuple[str, str], str] = {}
        self.object_names: dict[str, str] = {}
        self.missing_secrets: set[str] = set()
        self.missing_volumes: set[str] = set()
        #: (app name, function tag) -> a callable run (in a thread) for each FunctionMap
        self.function_handlers: dict[tuple[str, str], Callable[..., Any]] = {}
        self.function_calls: dict[str, Any] = {}
        self.function_names: dict[str, tuple[str, str]] = {}
        #: (queue id, partition key) -> serialized items, oldest first
        self.queues: dict[tuple[str, bytes], list[bytes]] = {}
        self._queue_event: asyncio.Event | None = None
        #: function id -> the AutoscalerSettings overrides FunctionUpdateSchedulingParams set
        self.autoscaler: dict[str, Any] = {}
        self.image_builder_version = "2025.06"
        self.image_build = "cached"  # "cached" | "build" (stream logs, succeed) | "fail"
        self.image_build_logs = ["Step 1/1: building fake image", "Built fake image"]
        self._lock = threading.RLock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: _Server | None = None
        self._stopping = asyncio.Event()

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("FakeModalControl already started")
        ready = threading.Event()
        failure: list[BaseException] = []
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(self._start_server())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()
            self._loop.close()

        self._thread = threading.Thread(target=run, name="fake-modal-control", daemon=True)
        self._thread.start()
        if not ready.wait(_START_TIMEOUT_S):
            raise RuntimeError("fake Modal control plane did not start in time")
        if failure:
            raise RuntimeError("fake Modal control plane failed to start") from failure[0]

    async def _start_server(self) -> None:
        self._stopping = asyncio.Event()
        # Abstract only to mypy: _fill_unimplemented() gave every RPC a body at import time.
        self._server = _Server(self, [_Servicer(self)])  # type: ignore[abstract]
        await self._server.start("127.0.0.1", 0)
        listener = self._server._server
        assert isinstance(listener, asyncio.Server)
        self.port = int(listener.sockets[0].getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_closed() or not thread.is_alive():  # start() failed half-way
            self._thread = self._loop = None
            return

        async def shutdown() -> None:
            self._stopping.set()
            assert self._server is not None
            self._server.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), _STOP_TIMEOUT_S)
            loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), loop)
        thread.join(_STOP_TIMEOUT_S + 2)
        self._thread = None
        self._loop = None

    def __enter__(self) -> FakeModalControl:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- mode ---------------------------------------------------------------------------------

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {value!r}")
        self._mode = value
        if value == "close" and self._loop is not None:
            self._loop.call_soon_threadsafe(self._drop_connections)

    def _drop_connections(self) -> None:
        if self._server is None:
            return
        for transport in list(self._server.transports):
            transport.abort()
        self._server.transports.clear()

    # --- environment for the real CLI -----------------------------------------------------------

    def env(
        self, home: Path, *, token_id: str = "ak-test", token_secret: str = "as-test"
    ) -> dict[str, str]:
        """The environment for a subprocess running the real `modal` against this stand-in."""
        home.mkdir(parents=True, exist_ok=True)
        config_path = home / ".modal.toml"
        config_path.write_text("")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
        env.update(
            {
                "HOME": str(home),
                "MODAL_SERVER_URL": self.url,
                "MODAL_TOKEN_ID": token_id,
                "MODAL_TOKEN_SECRET": token_secret,
                "MODAL_CONFIG_PATH": str(config_path),
                "MODAL_DISABLE_API_PROXY": "1",
            }
        )
        return env

    # --- state --------------------------------------------------------------------------------

    def add_app(
        self,
        name: str,
        *,
        logs: Sequence[str] = (),
        state: str = "deployed",
        environment: str = DEFAULT_ENVIRONMENT,
    ) -> str:
        """Add an app; its log lines get timestamps one second apart, ending now."""
        if state not in _STATES:
            raise ValueError(f"state must be one of {sorted(_STATES)}, not {state!r}")
        now = time.time()
        app = FakeApp(
            app_id=new_id("ap"),
            name=name,
            environment=environment,
            state=_STATES[state],
            created_at=now - 3600,
            stopped_at=now if state == "stopped" else 0.0,
        )
        for i, line in enumerate(logs):
            app.logs.append(
                LogEntry(
                    data=line if line.endswith("\n") else line + "\n",
                    timestamp=now - (len(logs) - i),
                    entry_id=f"{int(now * 1000)}-{i}",
                )
            )
        with self._lock:
            self._apps.append(app)
        return app.app_id

    def app_state(self, app_id: str) -> str:
        state = self._app_by_id(app_id).state
        return next(k for k, v in _STATES.items() if v == state)

    def calls_named(self, name: str) -> list[Any]:
        with self._lock:
            return [req for n, req in self.calls if n == name]

    def call_names(self) -> list[str]:
        with self._lock:
            return [n for n, _ in self.calls]

    def _queue_changed(self) -> asyncio.Event:
        """An event set by the next QueuePut (a fresh one once set: waiters re-read, re-wait)."""
        event = self._queue_event
        if event is None or event.is_set():
            event = self._queue_event = asyncio.Event()
        return event

    def start_call(self, fn: Callable[..., Any], *args: Any) -> str:
        """A FunctionCall id whose result is ``fn(*args)``, run in a thread of this process."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("FakeModalControl is not started")
        call_id = new_id("fc")

        async def start() -> None:
            task = asyncio.ensure_future(asyncio.to_thread(fn, *args))
            with self._lock:
                self.function_calls[call_id] = task

        asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=_START_TIMEOUT_S)
        return call_id

    def _record(self, name: str, request: Any, metadata: Any) -> None:
        with self._lock:
            self.calls.append((name, request))
            self.metadata.append({k: v for k, v in (metadata or {}).items() if isinstance(v, str)})

    def _check_auth(self, metadata: Any) -> None:
        token_id = (metadata or {}).get("x-modal-token-id", "")
        if not token_id or not (metadata or {}).get("x-modal-token-secret"):
            raise GRPCError(Status.UNAUTHENTICATED, "Token missing. Could not authenticate client.")
        if not token_id.startswith("ak-"):
            raise GRPCError(Status.UNAUTHENTICATED, "Token ID is malformed")
        if token_id not in self.valid_token_ids:
            raise GRPCError(Status.UNAUTHENTICATED, "Invalid token: token ID not found")

    def _apps_snapshot(self) -> list[FakeApp]:
        with self._lock:
            return list(self._apps)

    def _find_app(self, name: str, environment: str) -> FakeApp | None:
        with self._lock:
            matches = [a for a in self._apps if a.name == name and a.environment == environment]
        live = [a for a in matches if a.state != api_pb2.APP_STATE_STOPPED]
        candidates = live or matches
        return candidates[-1] if candidates else None

    def _app_by_id(self, app_id: str) -> FakeApp:
        with self._lock:
            for app in self._apps:
                if app.app_id == app_id:
                    return app
        raise GRPCError(Status.NOT_FOUND, f"App {app_id} not found")

    def _create_app(self, name: str, environment: str, state: int) -> FakeApp:
        app = FakeApp(
            app_id=new_id("ap"),
            name=name,
            environment=environment,
            state=state,
            created_at=time.time(),
        )
        with self._lock:
            self._apps.append(app)
        return app

    def _object_id(self, prefix: str, name: str) -> str:
        """One stable id per named object (a Volume looked up twice is the same Volume)."""
        with self._lock:
            object_id = self._object_ids.setdefault((prefix, name), new_id(prefix))
            self.object_names[object_id] = name
            return object_id

    def _deploy_record(self, app: FakeApp, *, fresh: bool = False) -> dict[str, Any]:
        with self._lock:
            record = self.deployed.get(app.name)
            if record is None or record["app_id"] != app.app_id:
                record = {"app_id": app.app_id, "function_ids": {}, "class_ids": {}}
                fresh = True
                self.deployed[app.name] = record
            if fresh:
                record.update(functions={}, classes=[], web_urls={}, publish=None)
            return record

    def _record_function(self, app: FakeApp, name: str, function_id: str, req: Any) -> None:
        with self._lock:
            record = self._deploy_record(app)
            record["functions"][name] = req
            record["function_ids"][name] = function_id
            definition = function_definition(req)
            if definition.webhook_config.type:
                record["web_urls"][name] = _web_url(app.name, name, definition.webhook_config)

    def _record_class(self, app: FakeApp, class_id: str, req: Any) -> None:
        with self._lock:
            self._deploy_record(app)["classes"].append(req)

    def _publish(self, req: Any) -> FakeApp:
        app = self._app_by_id(req.app_id)
        with self._lock:
            for other in self._apps:
                if (
                    other is not app
                    and other.name == req.name
                    and other.environment == app.environment
                    and other.state == api_pb2.APP_STATE_DEPLOYED
                ):
                    other.state = api_pb2.APP_STATE_STOPPED
                    other.stopped_at = time.time()
            app.name = req.name or app.name
            app.state = req.app_state or api_pb2.APP_STATE_DEPLOYED
            record = self._deploy_record(app)
            record["publish"] = req
            versions = record.setdefault("versions", [])
            versions.append((len(versions) + 1, time.time()))
            record["class_ids"] = dict(req.class_ids)
            record["function_ids"].update(dict(req.function_ids))
        return app

    def _deployed_or_not_found(self, app_name: str, tag: str) -> dict[str, Any]:
        with self._lock:
            record = self.deployed.get(app_name)
            app = self._find_app(app_name, DEFAULT_ENVIRONMENT)
        if record is None or app is None or app.state != api_pb2.APP_STATE_DEPLOYED:
            raise GRPCError(Status.NOT_FOUND, f"App '{app_name}' not found")
        return {**record, "name": app_name}

    def function_id(self, app_name: str, tag: str) -> str:
        """The id a deploy gave function (or class service function ``Cls.*``) ``tag``."""
        with self._lock:
            return str(self.deployed[app_name]["function_ids"][tag])

    def _lifecycle(self, app: FakeApp) -> Any:
        return api_pb2.AppLifecycle(
            app_state=app.state,  # type: ignore[arg-type]
            created_at=app.created_at,
            deployed_at=app.created_at,
            version=1,
            stopped_at=app.stopped_at,
        )
