"""Every malformed workflow file gives one ``WorkflowFormatError`` naming the file, node and field.

One table: each case writes its file into ``tmp_path``, loads it (and applies its overrides, if
any) and checks the error's attributes and message.  Several bodies are the ones recorded from the
real ComfyUI 0.3.64 in ``comfyui-protocol/10_validation_errors.json``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ryla_modal.errors import WorkflowFormatError
from ryla_modal.workflow import Workflow, apply_overrides, load_workflow
from tests.test_workflow import RECORDED_DEMO


def demo(**changes: Any) -> dict[str, Any]:
    """The recorded model-free graph; ``changes`` replace whole nodes ("2": {...})."""
    graph = copy.deepcopy(RECORDED_DEMO)
    graph["4"]["inputs"]["filename_prefix"] = "proto_a"
    graph.update(changes)
    return graph


def invert(link: Any) -> dict[str, Any]:
    """Node 2 (ImageInvert) with its ``image`` input set to ``link``."""
    return {"class_type": "ImageInvert", "inputs": {"image": link}}


# Two CLIPTextEncode nodes, as in the default SD1.5 graph, to make class_type ambiguous.
TWO_PROMPTS = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "m.safetensors"}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a fox", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
}

UI_FORMAT = {  # recorded: ui_format_workflow_as_prompt (ComfyUI answered HTTP 500)
    "last_node_id": 2,
    "last_link_id": 1,
    "nodes": [
        {"id": 1, "type": "EmptyImage", "widgets_values": [64, 64, 1, 0], "inputs": []},
        {"id": 2, "type": "SaveImage", "widgets_values": ["ComfyUI"], "inputs": [{"link": 1}]},
    ],
    "links": [[1, 1, 0, 2, 0, "IMAGE"]],
    "groups": [],
    "config": {},
    "extra": {},
    "version": 0.4,
}


@dataclass
class Case:
    content: bytes | str | Any  # bytes/str written as is, anything else as JSON
    contains: list[str]  # substrings the message must have
    node_id: str | None = None
    field: str | None = None  # exc.field
    is_input: bool = False  # field is an input name: the message says "input 'field'"
    overrides: list[str] = dataclasses.field(default_factory=list)
    load_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    hint: str | None = None  # substring of exc.hint


CASES: dict[str, Case] = {
    # --- not a workflow at all ---
    "not_json": Case(b'{"1": {"class_type": ', ["not valid JSON", "line 1"]),
    "empty_file": Case(b"", ["is empty"]),
    "not_utf8": Case(b'{"1": "\xff"}', ["not UTF-8"]),
    "json_array": Case([1, 2, 3], ["JSON array", "maps node ids to nodes"]),
    "json_string": Case("just text", ["JSON string"]),
    "ui_format": Case(UI_FORMAT, ["UI-format", "'nodes' and 'links'"], hint="Export (API)"),
    "prompt_request_body": Case({"prompt": demo(), "client_id": "c"}, ["POST /prompt"]),
    "empty_object": Case({}, ["has no nodes"]),
    # --- nodes ---
    "node_not_object": Case(demo(**{"2": ["ImageInvert"]}), ["JSON array", "node '2'"], "2"),
    "node_without_class_type": Case(  # recorded: missing_class_type_field
        {
            "1": {"inputs": {"width": 8}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}},
        },
        ["node '1'", "missing the class_type property"],
        "1",
        "class_type",
    ),
    "class_type_not_string": Case(
        demo(**{"3": {"class_type": 7, "inputs": {}}}),
        ["node '3'", "class_type must be a node type name, not 7"],
        "3",
        "class_type",
    ),
    "class_type_empty": Case(
        demo(**{"3": {"class_type": " ", "inputs": {}}}), ["class_type"], "3", "class_type"
    ),
    "node_without_inputs": Case(
        demo(**{"4": {"class_type": "SaveImage"}}), ["node '4'", "inputs property"], "4", "inputs"
    ),
    "inputs_not_object": Case(
        demo(**{"4": {"class_type": "SaveImage", "inputs": ["3", 0]}}),
        ["node '4'", "inputs must be an object"],
        "4",
        "inputs",
    ),
    # --- links (every list input is a link to ComfyUI) ---
    "link_to_missing_node": Case(  # recorded: link_to_missing_node (KeyError '99' in ComfyUI)
        demo(**{"2": invert(["99", 0])}),
        ["links to node '99'", "does not exist", "'1'"],
        "2",
        "image",
        is_input=True,
    ),
    "bad_output_index_negative": Case(
        demo(**{"2": invert(["1", -1])}), ["bad output index -1", ">= 0"], "2", "image", True
    ),
    "bad_output_index_string": Case(
        demo(**{"2": invert(["1", "0"])}), ['bad output index "0"'], "2", "image", True
    ),
    "bad_output_index_float": Case(
        demo(**{"2": invert(["1", 0.5])}), ["bad output index 0.5"], "2", "image", True
    ),
    "bad_output_index_bool": Case(
        demo(**{"2": invert(["1", True])}), ["bad output index true"], "2", "image", True
    ),
    "link_too_long": Case(
        demo(**{"2": invert(["1", 0, 0])}),
        ["length-2 list", "every list input"],
        "2",
        "image",
        True,
    ),
    "link_with_int_node_id": Case(
        demo(**{"2": invert([1, 0])}), ["must be a string", '["1", 0]'], "2", "image", True
    ),
    "list_widget_value_read_as_link": Case(
        demo(**{"2": invert([0.5, 0.5])}),
        ["node id string", "every list input"],
        "2",
        "image",
        True,
    ),
    "links_form_a_cycle": Case(
        demo(**{"1": invert(["3", 0])}),
        ["links form a cycle", "'1' → '3' → '2' → '1'"],
        "1",
        "image",
        True,
        hint="without loops",
    ),
    # --- size limits ---
    "over_byte_limit": Case(
        demo(), ["larger than the 200-byte limit"], load_kwargs={"max_bytes": 200}
    ),
    "over_node_limit": Case(demo(), ["4 nodes", "limit of 3"], load_kwargs={"max_nodes": 3}),
    # --- overrides ---
    "override_without_equals": Case(
        demo(), ["NODE.INPUT=VALUE", "no '='"], None, "override '3.steps'", overrides=["3.steps"]
    ),
    "override_without_dot": Case(
        demo(), ["no '.'"], None, "override 'steps=3'", overrides=["steps=3"]
    ),
    "override_empty_node": Case(
        demo(), ["node before the '.'"], None, "override '.steps=3'", overrides=[".steps=3"]
    ),
    "override_empty_input": Case(
        demo(), ["input name after"], None, "override '3.=3'", overrides=["3.=3"]
    ),
    "override_unknown_node": Case(
        demo(),
        [
            "target 'ImageBlurr': no node has this id, class_type or title",
            "did you mean 'ImageBlur'",
            "'4' (SaveImage",
        ],
        None,
        "target 'ImageBlurr'",
        overrides=["ImageBlurr.sigma=2"],
    ),
    "override_ambiguous_class_type": Case(
        TWO_PROMPTS,
        [
            "target 'CLIPTextEncode': matches 2 nodes",
            "'6' (CLIPTextEncode)",
            "'7' (CLIPTextEncode)",
            "from override 'CLIPTextEncode.text=a cat'",
        ],
        None,
        "target 'CLIPTextEncode'",
        overrides=["CLIPTextEncode.text=a cat"],
        hint="node id",
    ),
    "override_ambiguous_title": Case(
        demo(
            **{
                "4": {
                    "class_type": "SaveImage",
                    "inputs": {"images": ["3", 0]},
                    "_meta": {"title": "Image Blur"},
                }
            }
        ),
        ["target 'Image Blur': matches 2 nodes", "'3' (ImageBlur", "'4' (SaveImage"],
        None,
        "target 'Image Blur'",
        overrides=["Image Blur.sigma=2"],
    ),
    "override_unknown_input": Case(
        demo(),
        [
            "no such input on this ImageBlur node",
            "'blur_radius', 'image', 'sigma'",
            "from override 'Image Blur.sigmaa=2'",
        ],
        "3",
        "sigmaa",
        is_input=True,
        overrides=["Image Blur.sigmaa=2"],
    ),
    "override_links_to_missing_node": Case(
        demo(), ["links to node '9'"], "4", "images", True, overrides=['4.images=["9", 0]']
    ),
    "override_bad_output_index": Case(
        demo(),
        ["bad output index -2"],
        "4",
        "images",
        True,
        overrides=['SaveImage.images=["3", -2]'],
    ),
}


def write_case(path: Path, content: Any) -> None:
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(json.dumps(content), encoding="utf-8")
    else:
        path.write_text(json.dumps(content, indent=2), encoding="utf-8")


@pytest.mark.parametrize("name", list(CASES))
def test_malformed_workflow_file(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    path = tmp_path / f"{name}.json"
    write_case(path, case.content)

    with pytest.raises(WorkflowFormatError) as info:
        Workflow.load(path, **case.load_kwargs).with_overrides(case.overrides)
    exc = info.value
    message = exc.message  # str(exc) adds the hint on a line of its own

    assert exc.source == str(path)
    assert message.startswith(f"{path}: "), message
    assert exc.node_id == case.node_id, message
    assert exc.field == case.field, message
    if case.node_id is not None:
        assert f"node {case.node_id!r}" in message
    if case.is_input:
        assert f"node {case.node_id!r} input {case.field!r}" in message
    for part in case.contains:
        assert part in message, f"{part!r} not in {message!r}"
    if case.hint is not None:
        assert exc.hint is not None and case.hint in exc.hint
    # The error goes through the CLI as one line (plus the hint): no traceback text inside.
    assert "Traceback" not in message and "\n" not in message
    assert str(exc) == (f"{message}\nhint: {exc.hint}" if exc.hint else message)


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.overrides])
def test_override_errors_are_the_same_through_the_dict_functions(name: str, tmp_path: Path) -> None:
    """``apply_overrides`` on a plain dict reports exactly what ``Workflow.with_overrides`` does."""
    case = CASES[name]
    path = tmp_path / "wf.json"
    write_case(path, case.content)
    graph = load_workflow(str(path))
    with pytest.raises(WorkflowFormatError) as via_dict:
        apply_overrides(graph, case.overrides, source=str(path))
    with pytest.raises(WorkflowFormatError) as via_class:
        Workflow.load(path).with_overrides(case.overrides)
    assert str(via_dict.value) == str(via_class.value)
    assert (via_dict.value.node_id, via_dict.value.field) == (case.node_id, case.field)


def test_the_default_byte_limit_is_checked_before_parsing(tmp_path: Path) -> None:
    """A file over WORKFLOW_MAX_BYTES is refused by size, not by a JSON parse of 32 MiB."""
    from ryla_modal.defaults import WORKFLOW_MAX_BYTES

    path = tmp_path / "huge.json"
    with path.open("wb") as fh:  # sparse: no 32 MiB written to disk
        fh.truncate(WORKFLOW_MAX_BYTES + 1)
    with pytest.raises(WorkflowFormatError, match=f"larger than the {WORKFLOW_MAX_BYTES:,}-byte"):
        load_workflow(path)
    with path.open("r+b") as fh:
        fh.truncate(WORKFLOW_MAX_BYTES)  # at the limit it is read, then fails as JSON
    with pytest.raises(WorkflowFormatError, match="not valid JSON"):
        load_workflow(path)
