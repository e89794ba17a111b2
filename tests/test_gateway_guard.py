"""The guard in front of routing: the Host check (DNS rebinding) and what counts as a token.

A gateway without a token listens on loopback only, but a web page whose DNS name is re-pointed
at 127.0.0.1 can still make a browser talk to it; the browser then sends the page's name in
``Host``.  Such requests get 421 before any route runs.  All of it over real HTTP (uvicorn on
127.0.0.1) in front of the ComfyUI stand-in.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ryla_modal.config import is_loopback, serve_token
from ryla_modal.errors import ConfigError
from ryla_modal.gateway.app import create_app
from ryla_modal.gateway.executors import LocalExecutor
from ryla_modal.gateway.store import MemoryJobStore
from tests.conftest import ComfyServer, simple_workflow, unique
from tests.gateway_fixtures import TOKEN, Gateway, app_served, running_gateway

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def open_gw(comfy: ComfyServer, tmp_path: Path) -> Iterator[Gateway]:
    with running_gateway(comfy, tmp_path / "work", token=None) as gateway:
        yield gateway


def _port(gw: Gateway) -> int:
    return int(gw.url.rsplit(":", 1)[1])


@pytest.mark.parametrize(
    "host",
    ["evil.example", "evil.example:{port}", "127.0.0.1.evil.example:{port}", "127.0.0.1:{other}"],
)
def test_foreign_host_without_a_token_is_421_and_runs_nothing(open_gw: Gateway, host: str) -> None:
    port = _port(open_gw)
    header = host.format(port=port, other=port + 1 if port < 65535 else port - 1)
    client = open_gw.client(token=False)
    before = open_gw.comfy.prompts_received()
    body = {"workflow": simple_workflow(unique("rebind"))}
    for method, path in [("POST", "/jobs"), ("GET", "/health"), ("GET", "/openapi.json")]:
        resp = client.request(
            method, path, json=body if method == "POST" else None, headers={"host": header}
        )
        assert resp.status_code == 421, (method, path, resp.text)
        error = resp.json()["error"]
        assert error["type"] == "misdirected_request"
        assert header in error["message"]
    assert open_gw.store.list() == []
    assert open_gw.comfy.prompts_received() == before


@pytest.mark.parametrize(
    "host", ["127.0.0.1:{port}", "localhost:{port}", "LocalHost.:{port}", "127.0.0.1", "localhost"]
)
def test_own_address_and_loopback_names_pass(open_gw: Gateway, host: str) -> None:
    header = host.format(port=_port(open_gw))
    resp = open_gw.client(token=False).get("/health", headers={"host": header})
    assert resp.status_code == 200, resp.text


def test_ipv6_loopback_host_passes(comfy: ComfyServer, tmp_path: Path) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    with running_gateway(comfy, tmp_path / "work", token=None) as gw:
        resp = gw.client(token=False).get("/health", headers={"host": f"[::1]:{_port(gw)}"})
        assert resp.status_code == 200, resp.text


def test_with_a_token_any_host_name_works_but_the_token_is_needed(
    comfy: ComfyServer, tmp_path: Path
) -> None:
    # A token holds off the browser (it cannot send it); the operator may serve under any name.
    with running_gateway(comfy, tmp_path / "work", token=TOKEN) as gw:
        headers = {"host": "gpu-box.lan:8000"}
        assert gw.client().get("/health", headers=headers).status_code == 200
        assert gw.client(token=False).get("/health", headers=headers).status_code == 401


def test_host_check_can_be_turned_off_behind_an_authenticating_proxy(
    comfy: ComfyServer, tmp_path: Path
) -> None:
    with app_served(comfy.base_url, tmp_path / "w", check_host=False, proxy_auth=True) as url:
        resp = httpx.get(f"{url}/health", headers={"host": "ws--app.modal.run"}, timeout=10)
        assert resp.status_code == 200
        # The proxy's headers are what every route wants: the document names them, both at once.
        doc = httpx.get(f"{url}/openapi.json", timeout=10).json()
    schemes = doc["components"]["securitySchemes"]
    assert {(v["type"], v["in"], v["name"]) for v in schemes.values()} == {
        ("apiKey", "header", "Modal-Key"),
        ("apiKey", "header", "Modal-Secret"),
    }
    assert doc["security"] == [{name: [] for name in schemes}]


def test_a_token_behind_proxy_auth_is_asked_for_with_the_proxy_headers(
    comfy: ComfyServer, tmp_path: Path
) -> None:
    with app_served(comfy.base_url, tmp_path / "w", token=TOKEN, proxy_auth=True) as url:
        auth = {"authorization": f"Bearer {TOKEN}"}
        doc = httpx.get(f"{url}/openapi.json", headers=auth, timeout=10).json()
    (requirement,) = doc["security"]
    assert set(requirement) == {"bearer", "ModalKey", "ModalSecret"}
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


# --- what counts as a token ---------------------------------------------------------------------


def test_blank_token_is_refused_by_the_app(comfy: ComfyServer, tmp_path: Path) -> None:
    store = MemoryJobStore()
    executor = LocalExecutor(store, comfy.base_url, workers=1, work_dir=tmp_path / "w")
    try:
        for blank in (" ", "\t", "  \n "):
            with pytest.raises(ConfigError, match="blank"):
                create_app(executor, store, token=blank)
    finally:
        executor.close()


def test_token_with_surrounding_spaces_is_the_token_without_them(
    comfy: ComfyServer, tmp_path: Path
) -> None:
    with running_gateway(comfy, tmp_path / "work", token=f"  {TOKEN}\n") as gw:
        resp = httpx.get(
            f"{gw.url}/health", headers={"authorization": f"Bearer {TOKEN}"}, timeout=10
        )
        assert resp.status_code == 200


def test_serve_token_rules() -> None:
    assert serve_token(None, "127.0.0.1") is None
    assert serve_token("", "localhost") is None
    assert serve_token("  s3cret ", "0.0.0.0") == "s3cret"
    for blank in (" ", "\t\t", "\n"):
        with pytest.raises(ConfigError, match="blank"):
            serve_token(blank, "127.0.0.1")
        with pytest.raises(ConfigError, match="blank"):
            serve_token(blank, "0.0.0.0")
    for public in ("0.0.0.0", "::", "192.168.1.5", "box.lan"):
        with pytest.raises(ConfigError, match="without a token"):
            serve_token(None, public)


def test_is_loopback() -> None:
    for host in ("127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST."):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "10.0.0.1", "example.com", "localhost.example.com"):
        assert not is_loopback(host), host


def test_ryla_serve_refuses_a_blank_token_on_a_public_address(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RYLA_TOKEN"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["RYLA_TOKEN"] = "   "
    args = ["--host", "0.0.0.0", "--port", "0", "--comfyui-url", "http://127.0.0.1:9"]
    r = subprocess.run(
        [sys.executable, "-m", "ryla_modal.cli", "serve", *args, "--data-dir", str(tmp_path / "d")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 2, r.stderr
    assert "blank" in r.stderr
    assert not (tmp_path / "d").exists(), "refused before touching anything"
