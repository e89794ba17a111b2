"""The OpenAPI document agrees with the server: schemathesis over the real gateway's /openapi.json.

The gateway runs on uvicorn on 127.0.0.1 in front of the ComfyUI stand-in (object_info checks
on) and schemathesis's own runner (``st run``, a subprocess) reads the document the server
publishes and sends what it describes: its examples, boundary values (coverage) and random
requests, valid and invalid.  Checks: no 5xx, no status code the document does not list for
the route, answers that match their documented schema and content type, and no schema-valid
request rejected (``tests/_schemathesis_checks.py`` says which 422s judge the graph instead).

Bounded for CI: a fixed number of examples per route, a fixed seed, deterministic generation,
a per-request timeout and a deadline for the whole run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ryla_modal.gateway.app import Limits
from tests.conftest import ComfyServer
from tests.gateway_fixtures import Gateway, running_gateway

REPO = Path(__file__).resolve().parent.parent
HOOKS = Path(__file__).resolve().parent / "_schemathesis_checks.py"
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "schema_valid_requests_are_accepted",
]
MAX_EXAMPLES = 30  # per route and mode; the whole run takes ~10 s on a quiet machine
RUN_DEADLINE_S = 240.0


@pytest.fixture(scope="module")
def gateway(comfy: ComfyServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    if not comfy.is_stub:
        pytest.skip("random workflows are for the stand-in, not a real ComfyUI")
    limits = Limits(max_nodes=50, generate_wait_s=2.0)
    work = tmp_path_factory.mktemp("schemathesis")
    with running_gateway(comfy, work, token=None, limits=limits) as gw:
        yield gw


@pytest.mark.timeout(RUN_DEADLINE_S + 30)
def test_the_gateway_keeps_its_openapi_promises(gateway: Gateway, tmp_path: Path) -> None:
    env = {**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS), "NO_COLOR": "1"}
    argv = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{gateway.url}/openapi.json",
        "--checks",
        ",".join(CHECKS),
        "--phases",
        "examples,coverage,fuzzing",
        "--mode",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        "20261201",
        "--generation-deterministic",
        "--request-timeout",
        "30",
        "--report-dir",
        str(tmp_path / "report"),
    ]
    try:
        r = subprocess.run(
            argv,
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=RUN_DEADLINE_S,
            check=False,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"schemathesis ran past {RUN_DEADLINE_S} s:\n{exc.stdout!s}"[-6000:])
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-12000:]
    assert "Tested: 12" in out, out[-3000:]


def test_the_document_lists_every_status_the_guard_answers(gateway: Gateway) -> None:
    doc = httpx.get(f"{gateway.url}/openapi.json", timeout=10, trust_env=False).json()
    for path, item in doc["paths"].items():
        for method, op in item.items():
            for status in ("401", "413", "421"):
                assert status in op["responses"], (method, path, status)


def test_the_document_carries_this_servers_limits(gateway: Gateway) -> None:
    doc = httpx.get(f"{gateway.url}/openapi.json", timeout=10, trust_env=False).json()
    schemas = doc["components"]["schemas"]
    assert schemas["JobRequest"]["properties"]["workflow"]["maxProperties"] == 50
    assert schemas["ValidateRequest"]["properties"]["workflow"]["minProperties"] == 1
    limits = Limits()
    assert schemas["JobRequest"]["properties"]["inputs"]["maxItems"] == limits.max_inputs
