"""Gateway test helpers: the real app on uvicorn (a thread, 127.0.0.1, a free port) in front of
a LocalExecutor and the ComfyUI stand-in, and httpx clients to talk to it."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from PIL import Image

from ryla_modal.fetch import FetchRules
from ryla_modal.gateway.app import Limits, create_app
from ryla_modal.gateway.executors import LocalExecutor
from ryla_modal.gateway.object_info import ComfyObjectInfo
from ryla_modal.gateway.store import JobStore, MemoryJobStore
from ryla_modal.gateway.webhooks import Deliverer, WebhookSettings
from tests.conftest import ComfyServer

TERMINAL = {"succeeded", "failed", "cancelled"}
TOKEN = "test-token-5d41402abc4b2a76"  # not a secret: only these tests use it


class UvicornThread:
    """uvicorn serving ``app`` from a background thread on 127.0.0.1 (no signal handlers)."""

    def __init__(self, app: FastAPI) -> None:
        # IPPROTO_TCP so asyncio sets TCP_NODELAY on accepted sockets (as `ryla serve` does)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(  # the HTTP stack `ryla serve` pins (gateway/local.py)
            app,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=1,
            http="h11",
            loop="asyncio",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert self.thread.is_alive(), "uvicorn thread died at start-up"
            assert time.monotonic() < deadline, "uvicorn did not start within 10 s"
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


@dataclass
class Gateway:
    url: str
    app: FastAPI
    store: JobStore
    executor: LocalExecutor
    comfy: ComfyServer
    token: str | None
    clients: list[httpx.Client] = field(default_factory=list)

    def client(self, *, token: str | bool | None = True, timeout: float = 40.0) -> httpx.Client:
        """An httpx client; ``token=True`` sends the gateway's token, a string sends that."""
        headers = {}
        chosen = self.token if token is True else (token or None)
        if chosen:
            headers["authorization"] = f"Bearer {chosen}"
        c = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, trust_env=False)
        self.clients.append(c)
        return c

    def stats(self) -> dict[str, Any]:
        resp = httpx.get(f"{self.comfy.base_url}/_fake/stats", timeout=10, trust_env=False)
        resp.raise_for_status()
        data: dict[str, Any] = resp.json()
        return data

    def fault(self, fault: str, after_node: int = 1) -> None:
        resp = httpx.post(
            f"{self.comfy.base_url}/_fake/fault",
            json={"fault": fault, "after_node": after_node},
            timeout=10,
            trust_env=False,
        )
        resp.raise_for_status()


@contextlib.contextmanager
def running_gateway(
    comfy: ComfyServer,
    work_dir: Path,
    *,
    store: JobStore | None = None,
    token: str | None = TOKEN,
    limits: Limits | None = None,
    workers: int = 4,
    validate: bool = True,
    fetch_rules: FetchRules | None = None,
    webhooks: WebhookSettings | None = None,
    deliver_with: WebhookSettings | None = None,
) -> Iterator[Gateway]:
    """``webhooks``: the app takes webhook jobs and a deliverer sends them (with
    ``deliver_with`` when given: a deliverer whose rules differ from the app's)."""
    store = store or MemoryJobStore()
    executor = LocalExecutor(
        store,
        comfy.base_url,
        process=comfy.process,
        workers=workers,
        work_dir=work_dir,
        fetch_rules=fetch_rules,
    )
    object_info = ComfyObjectInfo(comfy.base_url) if validate else None
    app = create_app(
        executor, store, token=token, object_info=object_info, limits=limits, webhooks=webhooks
    )
    deliverer = None
    if webhooks is not None:
        deliverer = Deliverer(store, deliver_with or webhooks)
        deliverer.start()
    server = UvicornThread(app)
    server.start()
    gw = Gateway(server.url, app, store, executor, comfy, token)
    try:
        yield gw
    finally:
        for c in gw.clients:
            c.close()
        server.stop()
        app.state.close()
        executor.close()
        if deliverer is not None:
            deliverer.close()


@contextlib.contextmanager
def app_served(comfy_url: str, work_dir: Path, **app_options: Any) -> Iterator[str]:
    """``create_app(**app_options)`` over a one-worker executor, on a real socket; its URL.

    For tests of the app itself: nothing more is started, and all of it is closed after."""
    store = MemoryJobStore()
    executor = LocalExecutor(store, comfy_url, workers=1, work_dir=work_dir)
    app = create_app(executor, store, **app_options)
    server = UvicornThread(app)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()
        app.state.close()
        executor.close()


def gateway_maker(
    launch_stub: Callable[..., ComfyServer], tmp_path: Path
) -> Iterator[Callable[..., Gateway]]:
    """For a fixture: ``make(*stub_args, **running_gateway_kwargs)`` starts a private stand-in
    and a gateway in front of it; all are stopped when the fixture ends."""
    stack = contextlib.ExitStack()
    made: list[Gateway] = []

    def make(*stub_args: str, **kw: Any) -> Gateway:
        comfy = launch_stub(*stub_args)
        work = tmp_path / f"work{len(made)}"  # a fresh work folder per gateway
        made.append(stack.enter_context(running_gateway(comfy, work, **kw)))
        return made[-1]

    with stack:
        yield make


def wait_job(client: httpx.Client, job_id: str, *, timeout: float = 30.0) -> dict[str, Any]:
    """Long-poll until the job is final; fails the test at ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        resp = client.get(f"/jobs/{job_id}", params={"wait": 5})
        assert resp.status_code == 200, resp.text
        job: dict[str, Any] = resp.json()
        if job["status"] in TERMINAL:
            return job
        assert time.monotonic() < deadline, f"job {job_id} not final after {timeout} s: {job}"


def png_bytes(color: tuple[int, int, int] = (200, 30, 30), size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_image_workflow(name: str, prefix: str) -> dict[str, Any]:
    """LoadImage(name) → ImageInvert → SaveImage: uses an uploaded input file."""
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }
