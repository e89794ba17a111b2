"""Shared fixtures: ComfyUI servers launched through our own launcher (``ComfyProcess``).

``comfy`` is parametrized over backends: ``stub`` (the stand-in in tests/fakes, always) and
``real`` (a ComfyUI checkout, only when ``RYLA_TEST_COMFYUI_DIR`` and
``RYLA_TEST_COMFYUI_PYTHON`` are set).  ``launch_stub`` starts a private stand-in for tests that
flip fault switches or kill it.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import settings

from ryla_modal.comfy.process import ComfyProcess

# --- hypothesis: the same examples on every CI run -------------------------------------------
# CI must not depend on luck: there (CI is set, as every CI service does) each property runs a
# fixed, derandomized set of examples with no per-example deadline (a loaded runner is slow, not
# wrong).  Locally the default profile keeps exploring new examples.  HYPOTHESIS_PROFILE picks
# one explicitly ("ci" reproduces a CI run at home).
settings.register_profile("ci", derandomize=True, deadline=None, database=None, print_blob=True)
HYPOTHESIS_PROFILE = os.environ.get("HYPOTHESIS_PROFILE") or (
    "ci" if os.environ.get("CI") else "default"
)
settings.load_profile(HYPOTHESIS_PROFILE)

REAL_DIR_ENV = "RYLA_TEST_COMFYUI_DIR"
REAL_PYTHON_ENV = "RYLA_TEST_COMFYUI_PYTHON"
STUB_READY_TIMEOUT_S = 20.0
REAL_READY_TIMEOUT_S = 180.0


def real_comfyui() -> tuple[Path, str] | None:
    """The real ComfyUI checkout and its Python, when this machine has them configured."""
    directory, python = os.environ.get(REAL_DIR_ENV), os.environ.get(REAL_PYTHON_ENV)
    if not directory or not python:
        return None
    return Path(directory), python


@dataclass
class ComfyServer:
    """A running ComfyUI (stand-in or real) and the folders it was told to use."""

    backend: str  # "stub" | "real"
    process: ComfyProcess
    output_dir: Path
    input_dir: Path
    temp_dir: Path
    stopped: bool = field(default=False)
    probes: int = field(default=0)  # counting prompts sent to a real ComfyUI (prompts_received)

    @property
    def base_url(self) -> str:
        return self.process.base_url

    @property
    def is_stub(self) -> bool:
        return self.backend == "stub"

    def prompts_received(self) -> int:
        """How many parsable ``POST /prompt`` bodies reached this ComfyUI so far.

        The stand-in counts them in ``/_fake/stats``.  Real ComfyUI counts them too, in the
        ``number`` it gives every parsable submission (rejected ones included; transcript 10):
        a tiny probe prompt reads that counter, and the probes sent so far are taken off.
        """
        if self.is_stub:
            resp = httpx.get(f"{self.base_url}/_fake/stats", timeout=10, trust_env=False)
            resp.raise_for_status()
            return int(resp.json()["prompts_received"])
        probe = {
            "1": {"class_type": "PrimitiveString", "inputs": {"value": "ryla-probe"}},
            "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
        }
        resp = httpx.post(
            f"{self.base_url}/prompt", json={"prompt": probe}, timeout=10, trust_env=False
        )
        resp.raise_for_status()
        received = int(resp.json()["number"]) - self.probes
        self.probes += 1
        return received

    def stop(self) -> None:
        if not self.stopped:
            self.process.stop(grace=2.0)
            self.stopped = True


def _folders(root: Path) -> tuple[Path, Path, Path, list[str]]:
    out, inp, tmp = root / "output", root / "input", root / "temp"
    for d in (out, inp, tmp):
        d.mkdir(parents=True, exist_ok=True)
    args = ["--output-directory", str(out), "--input-directory", str(inp)]
    args += ["--temp-directory", str(tmp)]
    return out, inp, tmp, args


def stub_process(root: Path, *extra: str, port: int | None = None) -> ComfyServer:
    """A stand-in ComfyProcess (not started) with its own folders under ``root``."""
    from tests.fakes.comfyui_command import fake_comfyui_command

    out, inp, tmp, args = _folders(root)
    proc = ComfyProcess(
        fake_comfyui_command(),
        port=port,
        extra_args=[*args, *extra],
        log_path=root / "comfyui.log",
    )
    return ComfyServer("stub", proc, out, inp, tmp)


def real_process(root: Path, *extra: str) -> ComfyServer:
    found = real_comfyui()
    assert found is not None
    directory, python = found
    out, inp, tmp, args = _folders(root)
    proc = ComfyProcess.for_checkout(
        directory,
        python,
        extra_args=["--cpu", "--disable-auto-launch", *args, *extra],
        log_path=root / "comfyui.log",
    )
    return ComfyServer("real", proc, out, inp, tmp)


BACKENDS = ["stub"] + (["real"] if real_comfyui() else [])


@pytest.fixture(scope="session", params=BACKENDS)
def comfy(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ComfyServer]:
    """One ComfyUI per backend for the whole session (tests use unique prefixes and job ids)."""
    root = tmp_path_factory.mktemp(f"comfy-{request.param}")
    if request.param == "stub":
        server = stub_process(root)
        server.process.start(ready_timeout=STUB_READY_TIMEOUT_S)
    else:
        server = real_process(root)
        server.process.start(ready_timeout=REAL_READY_TIMEOUT_S)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def launch_stub(tmp_path: Path) -> Iterator[Callable[..., ComfyServer]]:
    """Start private stand-ins (``launch_stub("--fault", "die")``); all stopped at teardown."""
    servers: list[ComfyServer] = []

    def launch(
        *extra: str,
        start: bool = True,
        ready_timeout: float = STUB_READY_TIMEOUT_S,
        port: int | None = None,
    ) -> ComfyServer:
        server = stub_process(tmp_path / f"stub{len(servers)}", *extra, port=port)
        servers.append(server)
        if start:
            server.process.start(ready_timeout=ready_timeout)
        return server

    try:
        yield launch
    finally:
        for server in servers:
            server.stop()


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


# --- workflows (API format) used across tests -----------------------------------------------


def random_color() -> int:
    """A colour no other test uses, so ComfyUI's cache never serves one test from another."""
    return random.randrange(0, 0xFFFFFF)


def simple_workflow(prefix: str, *, sigma: float = 1.5, color: int | None = None) -> dict[str, Any]:
    """Transcript 01's model-free graph: EmptyImage → ImageInvert → ImageBlur → SaveImage."""
    color = random_color() if color is None else color
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": color},
        },
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {
            "class_type": "ImageBlur",
            "inputs": {"image": ["2", 0], "blur_radius": 3, "sigma": sigma},
        },
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": prefix}},
    }


def slow_workflow(
    backend: str, prefix: str, *, steps: int = 40, step_seconds: float = 0.1
) -> dict[str, Any]:
    """A graph that runs for a few seconds and can be interrupted.

    Stand-in: ``RylaSlowSteps`` (reports ``progress``).  Real ComfyUI has no such node, so it
    gets transcript 14's model-free slow graph (big blurs, then a 32×32 save).
    """
    if backend == "stub":
        return {
            "1": {
                "class_type": "EmptyImage",
                "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": random_color()},
            },
            "2": {
                "class_type": "RylaSlowSteps",
                "inputs": {"image": ["1", 0], "steps": steps, "step_seconds": step_seconds},
            },
            "3": {
                "class_type": "SaveImage",
                "inputs": {"images": ["2", 0], "filename_prefix": prefix},
            },
        }
    wf: dict[str, Any] = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {
                "width": 1024,
                "height": 1024,
                "batch_size": 2,
                "color": random_color(),
            },
        }
    }
    for i in range(2, 6):
        wf[str(i)] = {
            "class_type": "ImageBlur",
            "inputs": {"image": [str(i - 1), 0], "blur_radius": 31, "sigma": 10.0},
        }
    wf["6"] = {
        "class_type": "ImageScale",
        "inputs": {
            "image": ["5", 0],
            "upscale_method": "area",
            "width": 32,
            "height": 32,
            "crop": "disabled",
        },
    }
    wf["7"] = {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": prefix}}
    return wf
