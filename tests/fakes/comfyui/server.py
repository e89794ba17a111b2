"""The stand-in's HTTP + WebSocket server (aiohttp, as ComfyUI itself) and its command line.

Every route answers as the transcripts in ``shared/comfyui-protocol/`` show, including the plain
aiohttp 500 for a body that is not JSON.  Test-only routes live under ``/_fake/``:
``POST /_fake/fault {"fault": "none|drop-socket|die|stall|mute-socket|hold", "after_node": 1}``
arms a fault for the next job; ``GET /_fake/stats`` counts what POST /prompt received, queued
and executed, and the requests per route.

Like ComfyUI with ryla's ``ryla_snapshot`` node (``ryla_modal/cloud/snapshot_node.py``): started
with ``RYLA_COMFYUI_DEFER_GPU=1`` it stays on the "cpu" until ``POST /ryla/gpu`` moves it (503
with ``--gpu-move-fails``); ``/_fake/stats`` says the device and how many prompts ran on the cpu.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import json
import mimetypes
import os
import shutil
import struct
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web
from PIL import Image

from .engine import FAULTS, Engine, Fault, QueueItem, log
from .nodes import Folders, NodeDef, annotated_filepath, build_nodes
from .validation import validate_prompt

COMFYUI_VERSION = "0.3.64"
MAX_UPLOAD_SIZE = 100 * 1024 * 1024
SERVER_FEATURES = {"supports_preview_metadata": True, "max_upload_size": MAX_UPLOAD_SIZE}
MODEL_FOLDERS = [
    "checkpoints",
    "configs",
    "loras",
    "vae",
    "text_encoders",
    "diffusion_models",
    "clip_vision",
    "style_models",
    "embeddings",
    "diffusers",
    "vae_approx",
    "controlnet",
    "gligen",
    "upscale_models",
    "custom_nodes",
    "hypernetworks",
    "photomaker",
    "classifiers",
    "model_patches",
    "audio_encoders",
]
_DROP = "__drop_sockets__"
_MUTE = "__mute_sockets__"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class StandIn:
    """Routes, sockets and the message pump; the Engine does the executing."""

    def __init__(self, folders: Folders, nodes: dict[str, NodeDef], args: argparse.Namespace):
        self.folders = folders
        self.nodes = nodes
        self.loop = asyncio.get_running_loop()
        self.messages: asyncio.Queue[tuple[str | int, dict[str, Any] | bytes, str | None]] = (
            asyncio.Queue()
        )
        self.sockets: dict[str, web.WebSocketResponse] = {}  # by sid: who gets messages
        self.connections: dict[int, web.Request] = {}  # every open socket, for drop-socket
        self.client_flags: dict[str, Any] = {}
        self.requests: dict[str, int] = {}  # "GET /queue" -> how many, for /_fake/stats
        self.gpu_move_fails = bool(args.gpu_move_fails)
        self.muted = False
        self.engine = Engine(
            self,
            nodes,
            folders,
            disable_metadata=args.disable_metadata,
            node_seconds=args.node_seconds,
            fault=Fault(args.fault, args.fault_after_node),
        )

    # --- Hub (called from any thread) --------------------------------------------------------

    def send(self, event: str, data: dict[str, Any], sid: str | None) -> None:
        self.loop.call_soon_threadsafe(self.messages.put_nowait, (event, data, sid))

    def send_binary(self, event: int, data: bytes, sid: str | None) -> None:
        self.loop.call_soon_threadsafe(self.messages.put_nowait, (event, data, sid))

    def supports_preview_metadata(self, sid: str | None) -> bool:
        flags = self.client_flags.get(sid or "")
        return isinstance(flags, dict) and bool(flags.get("supports_preview_metadata"))

    def drop_sockets(self) -> None:
        self.loop.call_soon_threadsafe(self.messages.put_nowait, (_DROP, {}, None))

    def mute_sockets(self, on: bool) -> None:
        """From here on in message order, send nothing (on) or everything again (off)."""
        self.loop.call_soon_threadsafe(self.messages.put_nowait, (_MUTE, {"on": on}, None))

    async def pump(self) -> None:
        """Send queued messages in order; a drop request cuts every socket at its place."""
        while True:
            event, data, sid = await self.messages.get()
            if event == _MUTE and isinstance(data, dict):
                self.muted = bool(data["on"])
                continue
            if self.muted:
                continue
            if event == _DROP:
                for request in list(self.connections.values()):
                    if request.transport is not None:
                        request.transport.abort()  # no close frame: a dropped connection
                continue
            if isinstance(event, int) and isinstance(data, bytes):
                await self.send_bytes(event, data, sid)
            elif isinstance(event, str) and isinstance(data, dict):
                await self.send_json(event, data, sid)

    async def send_bytes(self, event: int, data: bytes, sid: str | None) -> None:
        """server.py ``send_bytes``: a 4-byte big-endian event type, then the payload."""
        message = struct.pack(">I", event) + data
        if sid is None:
            targets = list(self.sockets.values())
        elif sid in self.sockets:
            targets = [self.sockets[sid]]
        else:
            return
        for ws in targets:
            with contextlib.suppress(Exception):
                await ws.send_bytes(message)

    async def send_json(self, event: str, data: dict[str, Any], sid: str | None) -> None:
        message = {"type": event, "data": data}
        if sid is None:
            targets = list(self.sockets.values())
        elif sid in self.sockets:
            targets = [self.sockets[sid]]
        else:
            return
        for ws in targets:
            with contextlib.suppress(Exception):  # a socket closing under us is not our problem
                await ws.send_json(message)

    # --- app ---------------------------------------------------------------------------------

    def app(self) -> web.Application:
        routes: list[tuple[str, str, Handler]] = [
            ("GET", "/ws", self.websocket),
            ("GET", "/", self.index),
            ("GET", "/system_stats", self.system_stats),
            ("GET", "/prompt", self.get_prompt),
            ("POST", "/prompt", self.post_prompt),
            ("GET", "/queue", self.get_queue),
            ("POST", "/queue", self.post_queue),
            ("GET", "/history", self.get_history),
            ("GET", "/history/{prompt_id}", self.get_history_item),
            ("POST", "/history", self.post_history),
            ("POST", "/interrupt", self.post_interrupt),
            ("POST", "/free", self.post_free),
            ("GET", "/view", self.view),
            ("POST", "/upload/image", self.upload_image),
            ("GET", "/object_info", self.object_info),
            ("GET", "/object_info/{node_class}", self.object_info_node),
            ("GET", "/features", self.features),
            ("GET", "/embeddings", self.embeddings),
            ("GET", "/extensions", self.embeddings),
            ("GET", "/models", self.models),
            ("GET", "/models/{folder}", self.models_folder),
        ]
        app = web.Application(client_max_size=MAX_UPLOAD_SIZE)
        for method, path, handler in routes:
            counted = self._counted(f"{method} {path}", handler)
            app.router.add_route(method, path, counted)
            if path != "/":
                app.router.add_route(method, "/api" + path, counted)  # the frontend's prefix
        app.router.add_post("/ryla/gpu", self.ryla_gpu)
        app.router.add_post("/_fake/fault", self.fake_fault)
        app.router.add_get("/_fake/stats", self.fake_stats)
        return app

    def _counted(self, route: str, handler: Handler) -> Handler:
        """``handler``, counted per route in ``/_fake/stats`` (``requests``; "GET /ws": sockets)."""

        async def counted(request: web.Request) -> web.StreamResponse:
            self.requests[route] = self.requests.get(route, 0) + 1
            return await handler(request)

        return counted

    # --- websocket ---------------------------------------------------------------------------

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.rel_url.query.get("clientId", "")
        if sid:
            self.sockets.pop(sid, None)  # the same client again: the new socket replaces it
        else:
            sid = uuid.uuid4().hex
        self.sockets[sid] = ws
        self.connections[id(ws)] = request
        try:
            await self.send_json("status", {"status": self.engine.queue_info(), "sid": sid}, sid)
            if self.engine.client_id == sid and self.engine.last_node_id is not None:
                await self.send_json("executing", {"node": self.engine.last_node_id}, sid)
            first = True
            async for msg in ws:
                if msg.type.name != "TEXT":
                    continue
                try:
                    data = json.loads(msg.data)
                except json.JSONDecodeError:
                    log(f"Invalid JSON received from client {sid}")
                    continue
                if first and isinstance(data, dict) and data.get("type") == "feature_flags":
                    self.client_flags[sid] = data.get("data", {})
                    await self.send_json("feature_flags", dict(SERVER_FEATURES), sid)
                first = False
        finally:
            self.connections.pop(id(ws), None)
            if self.sockets.get(sid) is ws:
                del self.sockets[sid]
                self.client_flags.pop(sid, None)
        return ws

    # --- simple GETs -------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.StreamResponse:
        body = "<!doctype html><title>ComfyUI stand-in</title><p>ComfyUI stand-in (tests)</p>"
        return web.Response(text=body, content_type="text/html")

    async def system_stats(self, request: web.Request) -> web.StreamResponse:
        page = os.sysconf("SC_PAGE_SIZE")
        total = os.sysconf("SC_PHYS_PAGES") * page
        free = os.sysconf("SC_AVPHYS_PAGES") * page
        return web.json_response(
            {
                "system": {
                    "os": os.name,
                    "ram_total": total,
                    "ram_free": free,
                    "comfyui_version": COMFYUI_VERSION,
                    "required_frontend_version": "1.27.10",
                    "installed_templates_version": "0.1.95",
                    "required_templates_version": "0.1.95",
                    "python_version": sys.version,
                    "pytorch_version": "none (ComfyUI stand-in)",
                    "embedded_python": False,
                    "argv": sys.argv,
                },
                "devices": [
                    {
                        "name": "cpu",
                        "type": "cpu",
                        "index": None,
                        "vram_total": total,
                        "vram_free": free,
                        "torch_vram_total": total,
                        "torch_vram_free": free,
                    }
                ],
            }
        )

    async def get_prompt(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.engine.queue_info())

    async def get_queue(self, request: web.Request) -> web.StreamResponse:
        running, pending = self.engine.queue.current()
        return web.json_response({"queue_running": running, "queue_pending": pending})

    async def features(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(dict(SERVER_FEATURES))

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        return web.json_response([])

    async def models(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(MODEL_FOLDERS)

    async def models_folder(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["folder"] not in MODEL_FOLDERS:
            return web.Response(status=404)
        return web.json_response([])

    async def object_info(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({n: d.object_info(self.folders) for n, d in self.nodes.items()})

    async def object_info_node(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["node_class"]
        node = self.nodes.get(name)
        return web.json_response({name: node.object_info(self.folders)} if node else {})

    # --- prompts, queue, history -------------------------------------------------------------

    async def post_prompt(self, request: web.Request) -> web.StreamResponse:
        log("got prompt")
        json_data = await request.json()  # not JSON: raises, and aiohttp answers a plain 500
        stats = self.engine.stats
        stats.prompts_received += 1
        if "number" in json_data:
            number: float = float(json_data["number"])
        else:
            # ``in`` rather than .get(): a JSON array body must reach "no_prompt", not crash.
            front = "front" in json_data and json_data["front"]
            number = self.engine.next_number(bool(front))
        if "prompt" not in json_data:
            error = {
                "type": "no_prompt",
                "message": "No prompt provided",
                "details": "No prompt provided",
                "extra_info": {},
            }
            return web.json_response({"error": error, "node_errors": {}}, status=400)
        prompt = json_data["prompt"]
        prompt_id = str(json_data.get("prompt_id", uuid.uuid4()))
        stats.prompt_ids.append(prompt_id)
        partial = json_data.get("partial_execution_targets")
        valid, problem, outputs, node_errors = validate_prompt(
            prompt, self.nodes, self.folders, partial
        )
        extra_data: dict[str, Any] = {}
        if "extra_data" in json_data:
            extra_data = json_data["extra_data"]
        if "client_id" in json_data:
            extra_data["client_id"] = json_data["client_id"]
        if not valid:
            log(f"invalid prompt: {problem}")
            return web.json_response({"error": problem, "node_errors": node_errors}, status=400)
        stats.prompts_queued += 1
        item = QueueItem(number, prompt_id, prompt, extra_data, outputs)
        self.engine.queue.put(item)
        response = web.json_response(
            {"prompt_id": prompt_id, "number": number, "node_errors": node_errors}
        )
        await response.prepare(request)
        await response.write_eof()
        item.answered.set()
        return response

    async def post_queue(self, request: web.Request) -> web.StreamResponse:
        json_data = await request.json()
        if "clear" in json_data and json_data["clear"]:  # noqa: RUF019 (bodies may be lists)
            self.engine.queue.wipe_queue()
        if "delete" in json_data:
            for prompt_id in json_data["delete"]:
                self.engine.queue.delete_queue_item(prompt_id)
        return web.Response(status=200)

    async def get_history(self, request: web.Request) -> web.StreamResponse:
        query = request.rel_url.query
        max_items = int(query["max_items"]) if "max_items" in query else None
        offset = int(query["offset"]) if "offset" in query else -1
        return web.json_response(self.engine.queue.get_history(None, max_items, offset))

    async def get_history_item(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.engine.queue.get_history(request.match_info["prompt_id"]))

    async def post_history(self, request: web.Request) -> web.StreamResponse:
        json_data = await request.json()
        if "clear" in json_data and json_data["clear"]:  # noqa: RUF019 (bodies may be lists)
            self.engine.queue.wipe_history()
        if "delete" in json_data:
            for prompt_id in json_data["delete"]:
                self.engine.queue.delete_history_item(prompt_id)
        return web.Response(status=200)

    async def post_interrupt(self, request: web.Request) -> web.StreamResponse:
        try:
            json_data = await request.json()
        except json.JSONDecodeError:
            json_data = {}
        prompt_id = json_data.get("prompt_id")
        self.engine.interrupt(str(prompt_id) if prompt_id else None)
        return web.Response(status=200)

    async def post_free(self, request: web.Request) -> web.StreamResponse:
        json_data = await request.json()
        if json_data.get("unload_models") or json_data.get("free_memory"):
            log("stand-in: nothing to unload")
        return web.Response(status=200)

    # --- files -------------------------------------------------------------------------------

    async def view(self, request: web.Request) -> web.StreamResponse:
        query = request.rel_url.query
        if "filename" not in query:
            return web.Response(status=404)
        filename, kind = annotated_filepath(query["filename"])
        if not filename:
            return web.Response(status=400)
        if filename[0] == "/" or ".." in filename:
            return web.Response(status=400)
        base = self.folders.by_type(kind or query.get("type") or "output")
        if base is None:
            return web.Response(status=400)
        if "subfolder" in query:
            full = os.path.join(base, query["subfolder"])
            if os.path.commonpath((os.path.abspath(full), base)) != base:
                return web.Response(status=403)
            base = full
        filename = os.path.basename(filename)
        path = os.path.join(base, filename)
        if not os.path.isfile(path):
            return web.Response(status=404)
        disposition = {"Content-Disposition": f'filename="{filename}"'}
        channel = query.get("channel", "rgba")
        if "preview" in query:
            info = query["preview"].split(";")
            wanted = query.get("channel", "")  # ComfyUI tests the raw parameter here
            fmt = info[0] if info[0] in ("webp", "jpeg") and "a" not in wanted else "webp"
            quality = int(info[-1]) if info[-1].isdigit() else 90
            with Image.open(path) as img:
                out = img.convert("RGB") if fmt == "jpeg" or wanted == "rgb" else img.copy()
            buf = io.BytesIO()
            out.save(buf, format=fmt, quality=quality)
            return web.Response(
                body=buf.getvalue(), content_type=f"image/{fmt}", headers=disposition
            )
        if channel == "rgb":
            with Image.open(path) as img:
                rgb = (
                    Image.merge("RGB", img.split()[:3])
                    if img.mode == "RGBA"
                    else img.convert("RGB")
                )
            buf = io.BytesIO()
            rgb.save(buf, format="PNG")
            return web.Response(body=buf.getvalue(), content_type="image/png", headers=disposition)
        if channel == "a":
            with Image.open(path) as img:
                alpha = img.getchannel("A") if img.mode == "RGBA" else Image.new("L", img.size, 255)
                out = Image.new("RGBA", img.size)
            out.putalpha(alpha)
            buf = io.BytesIO()
            out.save(buf, format="PNG")
            return web.Response(body=buf.getvalue(), content_type="image/png", headers=disposition)
        content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        if content_type in {"text/html", "application/xhtml+xml", "text/javascript", "text/css"}:
            content_type = "application/octet-stream"
        return web.FileResponse(path, headers={**disposition, "Content-Type": content_type})

    async def upload_image(self, request: web.Request) -> web.StreamResponse:
        post = await request.post()
        image = post.get("image")
        overwrite = post.get("overwrite")
        kind = post.get("type") or "input"
        upload_dir = self.folders.by_type(str(kind))
        if upload_dir is None:  # ComfyUI fails here with UnboundLocalError: a plain 500
            raise ValueError(f"unknown upload type {kind!r}")
        if not isinstance(image, web.FileField):
            if image:
                raise TypeError("the 'image' field is not a file")  # ComfyUI: AttributeError
            return web.Response(status=400)
        filename = image.filename
        if not filename:
            return web.Response(status=400)
        subfolder = str(post.get("subfolder", ""))
        folder = os.path.join(upload_dir, os.path.normpath(subfolder))
        filepath = os.path.abspath(os.path.join(folder, filename))
        if os.path.commonpath((upload_dir, filepath)) != upload_dir:
            return web.Response(status=400)
        os.makedirs(folder, exist_ok=True)
        data = image.file.read()
        stem, ext = os.path.splitext(filename)
        duplicate = False
        if overwrite not in ("true", "1"):
            i = 1
            while os.path.exists(filepath):
                with open(filepath, "rb") as fh:
                    if hashlib.sha256(fh.read()).digest() == hashlib.sha256(data).digest():
                        duplicate = True  # same name, same bytes: reuse, as ComfyUI does
                        break
                filename = f"{stem} ({i}){ext}"
                filepath = os.path.join(folder, filename)
                i += 1
        if not duplicate:
            with open(filepath, "wb") as fh:
                fh.write(data)
        return web.json_response({"name": filename, "subfolder": subfolder, "type": kind})

    # --- test control ------------------------------------------------------------------------

    async def fake_fault(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
            kind = body.get("fault", "none")
            after = int(body.get("after_node", 1))
        except (ValueError, AttributeError, TypeError) as exc:
            return web.json_response({"error": f"bad fault request: {exc}"}, status=400)
        if kind not in FAULTS:
            return web.json_response(
                {"error": f"unknown fault {kind!r}; use one of {', '.join(FAULTS)}"}, status=400
            )
        self.engine.arm(kind, after)
        log(f"[stand-in] fault armed: {kind} after node {after}")
        return web.json_response({"fault": kind, "after_node": after})

    async def ryla_gpu(self, request: web.Request) -> web.StreamResponse:
        if self.gpu_move_fails:
            return web.json_response(
                {"ok": False, "device": "cpu", "error": "no CUDA device is visible"}, status=503
            )
        with self.engine.lock:
            self.engine.stats.device = "gpu"
        log("ryla_snapshot: moved onto the GPU")
        return web.json_response({"ok": True, "device": "cuda:0", "vram_mb": 0})

    async def fake_stats(self, request: web.Request) -> web.StreamResponse:
        s = self.engine.stats
        return web.json_response(
            {
                "device": s.device,
                "prompts_on_cpu": s.prompts_on_cpu,
                "prompts_received": s.prompts_received,
                "prompts_queued": s.prompts_queued,
                "prompts_executed": s.prompts_executed,
                "prompt_ids": list(s.prompt_ids),
                "requests": dict(self.requests),
            }
        )


# --- command line ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """ComfyUI's own flags we honour, the stand-in's switches; any other flag is ignored."""
    p = argparse.ArgumentParser(prog="fake_comfyui.py", allow_abbrev=False)
    p.add_argument("--listen", nargs="?", const="0.0.0.0,::", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8188)
    p.add_argument("--output-directory")
    p.add_argument("--input-directory")
    p.add_argument("--temp-directory")
    p.add_argument("--disable-metadata", action="store_true")
    p.add_argument("--startup-delay", type=float, default=0.0, metavar="SECONDS")
    p.add_argument("--never-ready", action="store_true")
    p.add_argument("--fault", choices=FAULTS, default="none")
    p.add_argument("--fault-after-node", type=int, default=1, metavar="N")
    p.add_argument("--step-seconds", type=float, default=0.1, help="RylaSlowSteps default")
    p.add_argument("--node-seconds", type=float, default=0.0, help="sleep in every node run")
    p.add_argument("--gpu-move-fails", action="store_true", help="POST /ryla/gpu answers 503")
    p.add_argument(
        "--import-failed",
        action="append",
        default=[],
        metavar="NODE=ERROR",
        help="log that custom node NODE failed to import, as ComfyUI does (repeatable)",
    )
    return p.parse_known_args(argv)


def make_folders(args: argparse.Namespace) -> Folders:
    """ComfyUI's rules: --temp-directory X means X/temp, wiped at start; defaults in a temp dir."""
    root = None
    if not (args.output_directory and args.input_directory and args.temp_directory):
        root = tempfile.mkdtemp(prefix="fake-comfyui-")
    output = os.path.abspath(args.output_directory or os.path.join(root or "", "output"))
    inp = os.path.abspath(args.input_directory or os.path.join(root or "", "input"))
    temp = os.path.join(os.path.abspath(args.temp_directory or root or ""), "temp")
    shutil.rmtree(temp, ignore_errors=True)
    for folder, what in ((output, "output"), (inp, "input"), (temp, "temp")):
        os.makedirs(folder, exist_ok=True)
        log(f"Setting {what} directory to: {folder}")
    return Folders(output=output, input=inp, temp=temp)


async def serve(args: argparse.Namespace, folders: Folders) -> None:
    stand_in = StandIn(folders, build_nodes(args.step_seconds), args)
    if os.environ.get("RYLA_COMFYUI_DEFER_GPU") == "1":
        stand_in.engine.stats.device = "cpu"
        log("ryla_snapshot: GPU deferred until POST /ryla/gpu")
    runner = web.AppRunner(stand_in.app(), access_log=None)
    await runner.setup()
    hosts = [h for h in str(args.listen).split(",") if h]
    for host in hosts:
        await web.TCPSite(runner, host, args.port).start()  # a taken port raises OSError here
    stand_in.engine.start()
    pump = asyncio.create_task(stand_in.pump())
    log("Starting server\n")
    shown = hosts[0] if hosts[0] not in ("0.0.0.0", "::") else "127.0.0.1"
    shown = f"[{shown}]" if ":" in shown else shown
    log(f"To see the GUI go to: http://{shown}:{args.port}")
    try:
        await asyncio.Event().wait()
    finally:
        pump.cancel()
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    args, ignored = parse_args(argv)
    log(f"ComfyUI stand-in (tests/fakes) speaking the protocol of ComfyUI {COMFYUI_VERSION}")
    log(f"Python version: {sys.version}")
    log(f"ComfyUI version: {COMFYUI_VERSION}")
    if ignored:
        log(f"stand-in: ignoring ComfyUI flags {' '.join(ignored)}")
    folders = make_folders(args)
    log("Device: cpu (stand-in: model-free nodes only)")
    failed = [item.partition("=") for item in args.import_failed]
    for name, _, error in failed:
        path = f"/stand-in/custom_nodes/{name}"
        log("Traceback (most recent call last):")
        log(f'  File "{path}/__init__.py", line 1, in <module>')
        log(f"ModuleNotFoundError: {error}")
        log(f"Cannot import {path} module for custom nodes: {error}")
    times = "".join(
        f"   0.0 seconds (IMPORT FAILED): /stand-in/custom_nodes/{n}\n" for n, _, _ in failed
    )
    log(f"\nImport times for custom nodes:\n{times}   0.0 seconds: ryla_stand_in (RylaSlowSteps)\n")
    if args.never_ready:
        log("stand-in: --never-ready, so this server never listens")
        while True:
            time.sleep(3600)
    if args.startup_delay > 0:
        time.sleep(args.startup_delay)
    try:
        asyncio.run(serve(args, folders))
    except KeyboardInterrupt:
        log("\nStopped server")
