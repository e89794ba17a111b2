"""Values Python's json reads but strict JSON cannot carry are refused at the edge, by name.

``json.loads`` accepts ``NaN``, ``Infinity``, ``-Infinity``, ``1e400`` (as infinity) and
``"\\ud800"`` (a lone surrogate).  They used to pass every check, then answer 500 (the gateway's
own error body could not be encoded) or kill the job on its way to ComfyUI.  Now the gateway
answers 422 naming the node and the input, nothing reaches ComfyUI, and the client's
``Workflow`` refuses them the same way.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ryla_modal.errors import WorkflowFormatError
from ryla_modal.workflow import Workflow, apply_overrides, load_workflow, parse_override
from tests.conftest import ComfyServer, simple_workflow, unique
from tests.gateway_fixtures import Gateway, running_gateway

NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"]
JSON = {"content-type": "application/json"}


@pytest.fixture
def gw(comfy: ComfyServer, tmp_path: Path) -> Iterator[Gateway]:
    with running_gateway(comfy, tmp_path / "work", token=None) as gateway:
        yield gateway


def _with_sigma(literal: str) -> str:
    """A request body whose ImageBlur sigma (node 3) is ``literal``, as raw JSON text."""
    text = json.dumps({"workflow": simple_workflow(unique("nan"))})
    assert '"sigma": 1.5' in text
    return text.replace('"sigma": 1.5', f'"sigma": {literal}')


def _assert_names_sigma(resp: httpx.Response) -> None:
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["type"] == "invalid_workflow"
    assert error["node_id"] == "3"
    assert error["field"] == "sigma"
    assert "node '3' input 'sigma'" in error["message"]


@pytest.mark.parametrize("literal", NON_FINITE)
def test_non_finite_widget_value_is_422_and_never_reaches_comfyui(
    gw: Gateway, literal: str
) -> None:
    client = gw.client()
    before = gw.comfy.prompts_received()
    for path in ("/jobs", "/generate", "/validate"):
        _assert_names_sigma(client.post(path, content=_with_sigma(literal), headers=JSON))
    assert gw.comfy.prompts_received() == before
    assert gw.store.list() == [], "no job record for a refused workflow"


@pytest.mark.parametrize("path", ["/validate", "/jobs"])
def test_lone_surrogate_class_type_is_422_naming_the_node(gw: Gateway, path: str) -> None:
    body = '{"workflow": {"7": {"class_type": "\\ud800", "inputs": {}}}}'
    resp = gw.client().post(path, content=body, headers=JSON)
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["node_id"] == "7"
    assert "lone surrogate" in error["message"]
    assert "class_type" in error["message"]


@pytest.mark.parametrize(
    "body",
    [
        '{"workflow": {"\\udc00": {"class_type": "SaveImage", "inputs": {}}}}',  # node id
        '{"workflow": {"1": {"class_type": "SaveImage", "inputs": {"\\ud800": 1}}}}',  # input
        '{"workflow": {"1": {"class_type": "A", "inputs": {"x": {"k": ["\\udfff"]}}}}}',  # deep
        '{"\\ud800": 1, "workflow": {}}',  # outside the workflow
        '{"job_id": "\\ud800", "workflow": {}}',
    ],
)
def test_lone_surrogates_anywhere_get_a_json_422(gw: Gateway, body: str) -> None:
    resp = gw.client().post("/jobs", content=body, headers=JSON)
    assert resp.status_code == 422, resp.text
    resp.json()  # a body a strict client can read


def test_json_python_cannot_parse_is_a_clear_400(gw: Gateway) -> None:
    client = gw.client()
    deep = '{"workflow": {"1": {"class_type": "A", "inputs": {"x": %s}}}}'
    bodies: list[str | bytes] = [deep % ("[" * 5000 + "]" * 5000), deep % ("9" * 5000)]
    bodies.append(b'{"workflow": "\xff"}')  # not UTF-8
    for body in bodies:
        resp = client.post("/jobs", content=body, headers=JSON)
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["type"] == "not_json"


def test_deeply_nested_value_is_refused_by_name(gw: Gateway) -> None:
    body = '{"workflow": {"1": {"class_type": "A", "inputs": {"x": %s}}}}' % ("[" * 200 + "]" * 200)
    resp = gw.client().post("/jobs", content=body, headers=JSON)
    assert resp.status_code == 422, resp.text
    assert "nested more than" in resp.json()["error"]["message"]


# --- the client side: Workflow refuses them before anything is sent ---------------------------


@pytest.mark.parametrize("literal", NON_FINITE)
def test_workflow_load_refuses_non_finite_numbers(literal: str) -> None:
    body = _with_sigma(literal)
    raw = body[len('{"workflow": ') : -1].encode()  # the workflow alone, as a file holds it
    with pytest.raises(WorkflowFormatError) as info:
        Workflow.load(raw)
    assert (info.value.node_id, info.value.field) == ("3", "sigma")
    with pytest.raises(WorkflowFormatError):
        load_workflow(raw)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_workflow_from_a_dict_refuses_non_finite_numbers(value: float) -> None:
    graph: dict[str, Any] = simple_workflow("x")
    graph["3"]["inputs"]["sigma"] = value
    with pytest.raises(WorkflowFormatError) as info:
        Workflow(graph)
    assert (info.value.node_id, info.value.field) == ("3", "sigma")


def test_workflow_refuses_lone_surrogates_with_a_printable_message() -> None:
    cases: list[dict[str, Any]] = [
        {"1": {"class_type": "\ud800", "inputs": {}}},
        {"\udc80": {"class_type": "SaveImage", "inputs": {}}},
        {"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "a\udcffb"}}},
        {"1": {"class_type": "SaveImage", "inputs": {"x\ud800": 1}}},
    ]
    for graph in cases:
        with pytest.raises(WorkflowFormatError) as info:
            Workflow(graph)
        assert "lone surrogate" in str(info.value)
        str(info.value).encode("utf-8")  # the CLI can print it


def test_override_to_an_out_of_range_number_is_refused() -> None:
    with pytest.raises(WorkflowFormatError, match="out of range"):
        parse_override("3.sigma=1e400")
    with pytest.raises(WorkflowFormatError, match="out of range"):
        apply_overrides(simple_workflow("x"), ["3.sigma=[1, -1e999]"])
    # NaN and Infinity stay text, as documented; a malformed value stays text too.
    assert parse_override("6.text=NaN").value == "NaN"
    assert parse_override("6.text=[1e400").value == "[1e400"


def test_override_with_a_lone_surrogate_names_the_input() -> None:
    # Command-line arguments that are not UTF-8 arrive as lone surrogates (surrogateescape).
    wf = Workflow(simple_workflow("x"))
    with pytest.raises(WorkflowFormatError) as info:
        wf.with_overrides(["4.filename_prefix=caf\udce9"])
    assert (info.value.node_id, info.value.field) == ("4", "filename_prefix")
    str(info.value).encode("utf-8")
