"""UI-format → API-format conversion, against real templates and a real /object_info.

The object_info is ComfyUI 0.3.64's (``comfyui-protocol/31_object_info_full.json``); the templates
are the UI workflows of the ``comfyui-workflow-templates-json`` package (dev extra).  Both are
real data: no expected API graph here is written by the converter's author except the small
hand-made cases, and the SD1.5 one is checked against what ComfyUI itself received.

What "passes our validation (model file names aside)" excuses, and why (``_excused``):

1. ``value_not_in_list`` on a model-file input (``validate.MODEL_LIST_INPUTS``, or the by-name
   rule for other classes): the enum is the server's models folder, and the server that recorded
   the object_info had none of the templates' models.
2. ``value_not_in_list`` on an upload combo (``image_upload``/``video_upload``/``audio_upload``/
   ``file_upload``): the enum is the server's input folder.
3. ``value_not_in_list`` on any other enum of a node saved by a ComfyUI newer than 0.3.64
   (``properties.ver`` of a ``comfy-core`` node): the option was added later (new model versions
   of API nodes, new CLIP types).  Values of nodes saved by 0.3.64 or older are never excused, so
   a widget value shifted into the wrong input still fails the test.
4. A link to an output slot the 0.3.64 node lacks, when the node saved in the file has that slot
   and was saved by a newer ComfyUI (``exception_during_*validation`` with an ``IndexError``).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from ryla_modal.errors import WorkflowFormatError
from ryla_modal.ui_convert import (
    MODE_BYPASS,
    MODE_MUTED,
    VIRTUAL_NODE_TYPES,
    UIConversionError,
    convert_ui_workflow,
    is_ui_workflow,
)
from ryla_modal.validate import (
    MODEL_LIST_INPUTS,
    MODEL_LIST_INPUTS_BY_NAME,
    check_workflow,
    load_object_info,
)
from ryla_modal.workflow import validate_structure
from tests.fakes import transcripts

OBJECT_INFO_VERSION = (0, 3, 64)  # comfyui-protocol/README.md: the recording server's ComfyUI
UPLOAD_FLAGS = ("image_upload", "video_upload", "audio_upload", "file_upload")
TEMPLATES_PACKAGE = "comfyui_workflow_templates_json"


def _transcript_file(name: str) -> Path:
    """A file of the transcripts; the tests that need it skip when the checkout has none."""
    folder = transcripts.protocol_dir()
    if folder is None or not (folder / name).is_file():
        pytest.skip(f"no {name}: {transcripts.missing_reason()}")
    return folder / name


@cache
def _object_info(path: Path) -> dict[str, Any]:
    return load_object_info(path)


@pytest.fixture(scope="session")
def object_info() -> dict[str, Any]:
    return _object_info(_transcript_file("31_object_info_full.json"))


@pytest.fixture(scope="session")
def templates() -> list[tuple[str, dict[str, Any]]]:
    pytest.importorskip(TEMPLATES_PACKAGE, reason="pip install -e '.[dev]' brings the templates")
    from importlib.resources import files

    folder = files(TEMPLATES_PACKAGE) / "templates"
    out = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".json"):
            continue
        data = json.loads(entry.read_text(encoding="utf-8"))
        if is_ui_workflow(data):  # the index files are lists of template descriptions
            out.append((entry.name, data))
    assert len(out) > 500, f"only {len(out)} UI workflows in {TEMPLATES_PACKAGE}"
    return out


# --- walking a UI workflow the simple way (independent of the converter) ------------------------


def _subgraphs(ui: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {s["id"]: s for s in ui.get("definitions", {}).get("subgraphs", [])}


def _instances(ui: Mapping[str, Any], *, active_only: bool) -> Iterator[Mapping[str, Any]]:
    """Every node reachable from the root through subgraph instances (active ones only, on
    request: not muted or bypassed, and not inside a muted or bypassed subgraph node)."""
    subs = _subgraphs(ui)
    stack: list[tuple[list[Any], tuple[str, ...]]] = [(ui["nodes"], ())]
    while stack:
        nodes, open_defs = stack.pop()
        for node in nodes:
            if active_only and node.get("mode") in (MODE_MUTED, MODE_BYPASS):
                continue
            if node["type"] in subs:
                if node["type"] not in open_defs:
                    stack.append((subs[node["type"]]["nodes"], (*open_defs, node["type"])))
                continue
            yield node


def _unknown_types(ui: Mapping[str, Any], known: Mapping[str, Any], *, active: bool) -> set[str]:
    return {
        n["type"]
        for n in _instances(ui, active_only=active)
        if n["type"] not in known and n["type"] not in VIRTUAL_NODE_TYPES
    }


def _ui_node(ui: Mapping[str, Any], exec_id: str) -> Mapping[str, Any]:
    """The UI node behind an execution id such as ``"89:70"`` (outer node 89, inner node 70)."""
    subs = _subgraphs(ui)
    nodes = ui["nodes"]
    node: Mapping[str, Any] = {}
    for part in exec_id.split(":"):
        node = next(n for n in nodes if str(n["id"]) == part)
        if node["type"] in subs:
            nodes = subs[node["type"]]["nodes"]
    return node


def _version(node: Mapping[str, Any]) -> tuple[int, ...] | None:
    props = node.get("properties") or {}
    ver = props.get("ver")
    if props.get("cnr_id") != "comfy-core" or not isinstance(ver, str):
        return None
    try:
        return tuple(int(p) for p in ver.split("."))
    except ValueError:
        return None


def _newer(node: Mapping[str, Any]) -> bool:
    ver = _version(node)
    return ver is not None and ver > OBJECT_INFO_VERSION


def _input_opts(class_def: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    for group in ("required", "optional"):
        spec = class_def["input"].get(group, {}).get(name)
        if spec is not None:
            return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return {}


def _excused(
    error: Mapping[str, Any],
    node_id: str,
    class_type: str,
    ui: Mapping[str, Any],
    object_info: Mapping[str, Any],
) -> str | None:
    """Which of the module docstring's reasons excuses ``error``, or None."""
    kind = error["type"]
    extra = error.get("extra_info") or {}
    name = str(extra.get("input_name"))
    if kind == "value_not_in_list":
        class_def = object_info[class_type]
        by_class = MODEL_LIST_INPUTS.get(class_type)
        if by_class is not None and name in by_class:
            return "model file"
        if by_class is None and not class_def.get("api_node") and name in MODEL_LIST_INPUTS_BY_NAME:
            return "model file"
        if any(_input_opts(class_def, name).get(flag) for flag in UPLOAD_FLAGS):
            return "input file"
        if _newer(_ui_node(ui, node_id)):
            return "enum grew after 0.3.64"
        return None
    if kind.startswith("exception_during") and extra.get("exception_type") == "IndexError":
        origin_id, slot = extra["linked_node"]
        origin = _ui_node(ui, origin_id)
        saved_outputs = origin.get("outputs") or []
        known = len(object_info[origin["type"]]["output"])
        if _newer(origin) and known <= slot < len(saved_outputs):
            return "output added after 0.3.64"
    return None


# --- 1. every template whose classes the object_info knows converts and validates ---------------


def test_templates_with_known_nodes_convert_and_validate(object_info, templates, capsys):
    eligible = with_subgraphs = 0
    reasons: Counter[str] = Counter()
    failures: list[str] = []
    for name, ui in templates:
        if _unknown_types(ui, object_info, active=False):
            continue
        eligible += 1
        try:
            api = convert_ui_workflow(ui, object_info, source=name, rng=random.Random(0))
        except WorkflowFormatError as exc:
            failures.append(f"{name}: {exc}")
            continue
        validate_structure(api, source=name)
        if any(":" in node_id for node_id in api):
            with_subgraphs += 1
        for node_id, node in api.items():
            # Every node sent is a real node of the file, under ComfyUI's execution id.
            assert node["class_type"] == _ui_node(ui, node_id)["type"], (name, node_id)
            assert node["class_type"] in object_info
            assert isinstance(node["_meta"]["title"], str)
        report = check_workflow(api, object_info)
        assert report.error is None or report.error["type"] == "prompt_outputs_failed_validation", (
            name,
            report.error,
        )
        for node_id, entry in report.node_errors.items():
            for error in entry["errors"]:
                why = _excused(error, node_id, entry["class_type"], ui, object_info)
                if why is None:
                    failures.append(
                        f"{name}: node {node_id} ({entry['class_type']}): {error['type']}: "
                        f"{error['details']}"
                    )
                else:
                    reasons[why] += 1
        if report.error is not None:
            assert report.node_errors, name  # failed outputs always come with node errors
    with capsys.disabled():
        print(
            f"\nUI templates: {len(templates)}; convertible with 0.3.64's object_info: "
            f"{eligible}, {with_subgraphs} of them with subgraphs; excused errors: "
            f"{dict(reasons)}"
        )
    assert not failures, "\n".join(failures[:40])
    assert eligible >= 100, eligible
    assert with_subgraphs >= 25, with_subgraphs
    assert reasons["enum grew after 0.3.64"] <= eligible // 5, reasons  # drift, not misalignment


# --- 2. unknown node classes are all named --------------------------------------------------------


def test_templates_with_unknown_nodes_name_them(object_info, templates):
    refused = converted_anyway = 0
    for name, ui in templates:
        unknown = _unknown_types(ui, object_info, active=True)
        if not unknown:
            if _unknown_types(ui, object_info, active=False):
                # Unknown classes only in muted/bypassed nodes: ComfyUI never sees them.
                api = convert_ui_workflow(ui, object_info, source=name)
                assert not {n["class_type"] for n in api.values()} - set(object_info)
                converted_anyway += 1
            continue
        with pytest.raises(UIConversionError) as caught:
            convert_ui_workflow(ui, object_info, source=name)
        exc = caught.value
        assert set(exc.unknown_types) == unknown, name
        message = str(exc)
        assert message.startswith(f"{name}: unknown node types: "), message
        assert "install the custom nodes on the deployment or export the API format" in message
        for node_type in unknown:
            assert node_type in message, (name, node_type)
        refused += 1
    assert refused > 400, refused
    assert converted_anyway >= 1


# --- 3. hand-made cases ---------------------------------------------------------------------------


class UI:
    """A tiny builder for UI-format workflows: nodes with slots, and links between them."""

    def __init__(self) -> None:
        self.nodes: list[dict[str, Any]] = []
        self.links: list[Any] = []
        self.subgraphs: list[dict[str, Any]] = []

    def node(self, node_id: int, node_type: str, values: Any = None, *, mode: int = 0,
             inputs: tuple[tuple[str, str], ...] = (), outputs: tuple[str, ...] = (),
             **extra: Any) -> dict[str, Any]:  # fmt: skip
        node: dict[str, Any] = {
            "id": node_id,
            "type": node_type,
            "mode": mode,
            "inputs": [{"name": n, "type": t, "link": None} for n, t in inputs],
            "outputs": [{"name": t, "type": t, "links": []} for t in outputs],
            "properties": {},
            **extra,
        }
        if values is not None:
            node["widgets_values"] = values
        self.nodes.append(node)
        return node

    def link(self, origin: int, slot: int, target: int, name: str, kind: str = "*") -> None:
        """Link ``origin``'s output ``slot`` to ``target``'s input ``name`` (added as a converted
        widget when the node has no such socket)."""
        link_id = len(self.links) + 1
        node = next(n for n in self.nodes if n["id"] == target)
        slot_obj = next((s for s in node["inputs"] if s["name"] == name), None)
        if slot_obj is None:
            slot_obj = {"name": name, "type": kind, "widget": {"name": name}, "link": None}
            node["inputs"].append(slot_obj)
        slot_obj["link"] = link_id
        target_slot = node["inputs"].index(slot_obj)
        self.links.append([link_id, origin, slot, target, target_slot, slot_obj["type"]])

    def doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"nodes": self.nodes, "links": self.links, "version": 0.4}
        if self.subgraphs:
            doc["definitions"] = {"subgraphs": self.subgraphs}
        return doc


def _convert(ui: UI, object_info: Mapping[str, Any], **kw: Any) -> dict[str, Any]:
    return convert_ui_workflow(ui.doc(), object_info, **kw)


def test_seed_control_widget_is_skipped(object_info):
    ui = UI()
    ui.node(1, "EmptyLatentImage", [64, 64, 1], outputs=("LATENT",))
    ui.node(2, "CheckpointLoaderSimple", ["m.safetensors"], outputs=("MODEL", "CLIP", "VAE"))
    ui.node(3, "KSampler", [42, "randomize", 20, 7.5, "euler", "karras", 0.9],
            inputs=(("model", "MODEL"), ("positive", "CONDITIONING"),
                    ("negative", "CONDITIONING"), ("latent_image", "LATENT")),
            outputs=("LATENT",))  # fmt: skip
    ui.node(
        4,
        "KSamplerAdvanced",
        ["enable", 7, "fixed", 30, 8, "dpmpp_2m", "normal", 0, 10000, "disable"],
    )
    ui.node(5, "RandomNoise", [123, "increment"], outputs=("NOISE",))
    api = _convert(ui, object_info)
    assert api["3"]["inputs"] == {
        "seed": 42, "steps": 20, "cfg": 7.5, "sampler_name": "euler", "scheduler": "karras",
        "denoise": 0.9,
    }  # fmt: skip
    assert api["4"]["inputs"] == {
        "add_noise": "enable", "noise_seed": 7, "steps": 30, "cfg": 8, "sampler_name": "dpmpp_2m",
        "scheduler": "normal", "start_at_step": 0, "end_at_step": 10000,
        "return_with_leftover_noise": "disable",
    }  # fmt: skip
    assert api["5"]["inputs"] == {"noise_seed": 123}
    assert api["3"]["_meta"] == {"title": "KSampler"}
    assert api["2"]["_meta"] == {"title": "Load Checkpoint"}  # display_name when no title


def test_missing_values_get_defaults_and_dict_values_go_by_name(object_info):
    ui = UI()
    ui.node(1, "EmptyImage", [32], outputs=("IMAGE",))
    ui.node(2, "EmptyImage", {"height": 16, "width": 8, "color": 255}, outputs=("IMAGE",))
    ui.node(3, "LoadImage", ["cat.png", "image"], outputs=("IMAGE", "MASK"))
    api = _convert(ui, object_info)
    assert api["1"]["inputs"] == {"width": 32, "height": 512, "batch_size": 1, "color": 0}
    assert api["2"]["inputs"] == {"width": 8, "height": 16, "batch_size": 1, "color": 255}
    assert api["3"]["inputs"] == {"image": "cat.png"}  # the "upload" button value is not sent


def test_link_to_a_converted_widget_keeps_the_other_values_in_place(object_info):
    ui = UI()
    ui.node(1, "PrimitiveString", ["a linked prompt"], outputs=("STRING",))
    ui.node(2, "PrimitiveInt", [99, "fixed"], outputs=("INT",))
    ui.node(3, "CheckpointLoaderSimple", ["m.safetensors"], outputs=("MODEL", "CLIP", "VAE"))
    ui.node(4, "CLIPTextEncode", ["stale text"], inputs=(("clip", "CLIP"),),
            outputs=("CONDITIONING",))  # fmt: skip
    ui.node(5, "KSampler", [5, "randomize", 12, 6, "euler", "normal", 1],
            inputs=(("model", "MODEL"), ("positive", "CONDITIONING"),
                    ("negative", "CONDITIONING"), ("latent_image", "LATENT")))  # fmt: skip
    ui.link(3, 1, 4, "clip")
    ui.link(1, 0, 4, "text", "STRING")
    ui.link(2, 0, 5, "seed", "INT")
    ui.link(3, 0, 5, "model")
    api = _convert(ui, object_info)
    assert api["4"]["inputs"] == {"text": ["1", 0], "clip": ["3", 1]}
    assert api["5"]["inputs"]["seed"] == ["2", 0]
    assert api["5"]["inputs"]["steps"] == 12  # the seed's slot (and its control) still counted
    assert api["5"]["inputs"]["model"] == ["3", 0]


def test_reroute_chain_and_notes_disappear(object_info):
    ui = UI()
    ui.node(1, "EmptyImage", [64, 64, 1, 0], outputs=("IMAGE",))
    ui.node(2, "Reroute", inputs=(("", "*"),), outputs=("IMAGE",))
    ui.node(3, "Reroute", inputs=(("", "*"),), outputs=("IMAGE",))
    ui.node(4, "SaveImage", ["out"], inputs=(("images", "IMAGE"),))
    ui.node(5, "Note", ["remember the milk"])
    ui.node(6, "MarkdownNote", ["# hi"])
    ui.link(1, 0, 2, "")
    ui.link(2, 0, 3, "")
    ui.link(3, 0, 4, "images")
    api = _convert(ui, object_info)
    assert set(api) == {"1", "4"}
    assert api["4"]["inputs"] == {"filename_prefix": "out", "images": ["1", 0]}


def test_primitive_node_value_feeds_every_target(object_info):
    ui = UI()
    ui.node(1, "PrimitiveNode", [128, "fixed"], outputs=("INT",))
    ui.node(2, "EmptyImage", [64, 64, 1, 0], outputs=("IMAGE",))
    ui.link(1, 0, 2, "width", "INT")
    ui.link(1, 0, 2, "height", "INT")
    api = _convert(ui, object_info)
    assert api == {
        "2": {
            "inputs": {"width": 128, "height": 128, "batch_size": 1, "color": 0},
            "class_type": "EmptyImage",
            "_meta": {"title": "EmptyImage"},
        }
    }


def test_muted_node_drops_what_depends_on_it(object_info):
    ui = UI()
    ui.node(1, "EmptyImage", [64, 64, 1, 0], outputs=("IMAGE",))
    ui.node(2, "SaveImage", ["kept"], inputs=(("images", "IMAGE"),))
    ui.node(3, "ImageInvert", mode=MODE_MUTED, inputs=(("image", "IMAGE"),), outputs=("IMAGE",))
    ui.node(4, "ImageBlur", [1, 1.0], inputs=(("image", "IMAGE"),), outputs=("IMAGE",))
    ui.node(5, "SaveImage", ["lost"], inputs=(("images", "IMAGE"),))
    # An optional input from a muted node is only removed; its node still runs.
    ui.node(6, "SolidMask", [1.0, 64, 64], mode=MODE_MUTED, outputs=("MASK",))
    ui.node(7, "ImageCompositeMasked", [0, 0, False],
            inputs=(("destination", "IMAGE"), ("source", "IMAGE"), ("mask", "MASK")),
            outputs=("IMAGE",))  # fmt: skip
    ui.node(8, "PreviewImage", inputs=(("images", "IMAGE"),))
    ui.link(1, 0, 2, "images")
    ui.link(1, 0, 3, "image")
    ui.link(3, 0, 4, "image")
    ui.link(4, 0, 5, "images")
    ui.link(1, 0, 7, "destination")
    ui.link(1, 0, 7, "source")
    ui.link(6, 0, 7, "mask")
    ui.link(7, 0, 8, "images")
    api = _convert(ui, object_info)
    assert set(api) == {"1", "2", "7", "8"}
    assert api["7"]["inputs"] == {
        "x": 0, "y": 0, "resize_source": False, "destination": ["1", 0], "source": ["1", 0],
    }  # fmt: skip


def test_every_output_behind_a_muted_node_is_an_error(object_info):
    ui = UI()
    ui.node(1, "EmptyImage", [64, 64, 1, 0], mode=MODE_MUTED, outputs=("IMAGE",))
    ui.node(2, "SaveImage", ["x"], inputs=(("images", "IMAGE"),))
    ui.link(1, 0, 2, "images")
    with pytest.raises(UIConversionError, match=r"every output node depends on a muted node \(1\)"):
        _convert(ui, object_info, source="wf.json")


def test_bypassed_node_passes_inputs_through_by_type(object_info):
    ui = UI()
    ui.node(1, "CheckpointLoaderSimple", ["m.safetensors"], outputs=("MODEL", "CLIP", "VAE"))
    ui.node(2, "LoraLoader", ["l.safetensors", 1, 1], mode=MODE_BYPASS,
            inputs=(("model", "MODEL"), ("clip", "CLIP")), outputs=("MODEL", "CLIP"))  # fmt: skip
    ui.node(3, "CLIPTextEncode", ["hi"], inputs=(("clip", "CLIP"),), outputs=("CONDITIONING",))
    ui.node(4, "ModelSamplingDiscrete", ["eps", False], inputs=(("model", "MODEL"),),
            outputs=("MODEL",))  # fmt: skip
    ui.link(1, 0, 2, "model")
    ui.link(1, 1, 2, "clip")
    ui.link(2, 1, 3, "clip", "CLIP")
    ui.link(2, 0, 4, "model", "MODEL")
    api = _convert(ui, object_info)
    assert "2" not in api
    assert api["3"]["inputs"]["clip"] == ["1", 1]
    assert api["4"]["inputs"]["model"] == ["1", 0]


def _subgraph(sub_id: str, name: str, inner: UI, inputs: list[tuple[str, str, list[int]]],
              outputs: list[tuple[str, str, list[int]]]) -> dict[str, Any]:  # fmt: skip
    """A subgraph definition; the inner UI's links use -10/-20 for its input/output nodes."""
    links = [
        {"id": i, "origin_id": o, "origin_slot": os_, "target_id": t, "target_slot": ts,
         "type": k}
        for i, o, os_, t, ts, k in inner.links
    ]  # fmt: skip
    return {
        "id": sub_id,
        "name": name,
        "inputNode": {"id": -10},
        "outputNode": {"id": -20},
        "inputs": [{"name": n, "type": t, "linkIds": ids} for n, t, ids in inputs],
        "outputs": [{"name": n, "type": t, "linkIds": ids} for n, t, ids in outputs],
        "nodes": inner.nodes,
        "links": links,
        "widgets": [],
    }


def _inner_link(inner: UI, link_id: int, origin: int, slot: int, target: int, tslot: int,
                kind: str) -> None:  # fmt: skip
    inner.links.append([link_id, origin, slot, target, tslot, kind])
    if target != -20:
        node = next(n for n in inner.nodes if n["id"] == target)
        node["inputs"][tslot]["link"] = link_id


def test_nested_subgraphs_expand_with_execution_ids(object_info):
    # Inner subgraph B: image in → ImageInvert → image out.
    b = UI()
    b.node(1, "ImageInvert", inputs=(("image", "IMAGE"),), outputs=("IMAGE",))
    _inner_link(b, 1, -10, 0, 1, 0, "IMAGE")
    _inner_link(b, 2, 1, 0, -20, 0, "IMAGE")
    # Outer subgraph A: width (promoted widget) → EmptyImage → B → ImageBlur(radius from an
    # outer link) → out.
    a = UI()
    a.node(2, "EmptyImage", [64, 64, 1, 0], outputs=("IMAGE",),
           inputs=(("width", "INT"),))  # fmt: skip
    a.nodes[-1]["inputs"][0]["widget"] = {"name": "width"}
    a.node(3, "sub-b", inputs=(("image", "IMAGE"),), outputs=("IMAGE",))
    a.node(4, "ImageBlur", [1, 1.0], inputs=(("image", "IMAGE"), ("blur_radius", "INT")),
           outputs=("IMAGE",))  # fmt: skip
    a.nodes[-1]["inputs"][1]["widget"] = {"name": "blur_radius"}
    _inner_link(a, 1, -10, 0, 2, 0, "INT")
    _inner_link(a, 2, 2, 0, 3, 0, "IMAGE")
    _inner_link(a, 3, 3, 0, 4, 0, "IMAGE")
    _inner_link(a, 4, -10, 1, 4, 1, "INT")
    _inner_link(a, 5, 4, 0, -20, 0, "IMAGE")
    ui = UI()
    ui.subgraphs = [
        _subgraph("sub-b", "Invert", b, [("image", "IMAGE", [1])], [("image", "IMAGE", [2])]),
        _subgraph("sub-a", "Make", a, [("width", "INT", [1]), ("radius", "INT", [4])],
                  [("image", "IMAGE", [5])]),
    ]  # fmt: skip
    ui.node(7, "PrimitiveInt", [5, "fixed"], outputs=("INT",))
    ui.node(10, "sub-a", [96, 3], inputs=(("width", "INT"), ("radius", "INT")),
            outputs=("IMAGE",))  # fmt: skip
    ui.node(11, "SaveImage", ["nested"], inputs=(("images", "IMAGE"),))
    ui.link(7, 0, 10, "radius", "INT")
    ui.link(10, 0, 11, "images", "IMAGE")
    api = _convert(ui, object_info)
    assert set(api) == {"7", "10:2", "10:3:1", "10:4", "11"}
    assert api["10:2"]["inputs"] == {"width": 96, "height": 64, "batch_size": 1, "color": 0}
    assert api["10:3:1"]["inputs"] == {"image": ["10:2", 0]}
    assert api["10:4"]["inputs"] == {
        "blur_radius": ["7", 0], "sigma": 1.0, "image": ["10:3:1", 0],
    }  # fmt: skip
    assert api["11"]["inputs"] == {"filename_prefix": "nested", "images": ["10:4", 0]}

    # Without a value saved on the outer node, the inner widget's own value is used; a muted
    # subgraph node mutes its whole content.
    ui.nodes[1]["widgets_values"] = []
    assert _convert(ui, object_info)["10:2"]["inputs"]["width"] == 64
    ui.nodes[1]["mode"] = MODE_MUTED
    ui.nodes.append({"id": 12, "type": "PreviewImage", "mode": 0, "inputs": [], "outputs": []})
    assert set(_convert(ui, object_info)) == {"7", "12"}


def test_promoted_values_skip_the_control_slot_of_a_promoted_seed(object_info):
    inner = UI()
    inner.node(1, "RandomNoise", [1, "fixed"], inputs=(("noise_seed", "INT"),),
               outputs=("NOISE",))  # fmt: skip
    inner.nodes[-1]["inputs"][0]["widget"] = {"name": "noise_seed"}
    inner.node(2, "EmptyImage", [64, 64, 1, 0], inputs=(("width", "INT"),),
               outputs=("IMAGE",))  # fmt: skip
    inner.nodes[-1]["inputs"][0]["widget"] = {"name": "width"}
    _inner_link(inner, 1, -10, 0, 1, 0, "INT")
    _inner_link(inner, 2, -10, 1, 2, 0, "INT")
    _inner_link(inner, 3, 2, 0, -20, 0, "IMAGE")
    ui = UI()
    ui.subgraphs = [
        _subgraph("s", "S", inner, [("noise_seed", "INT", [1]), ("width", "INT", [2])],
                  [("image", "IMAGE", [3])]),
    ]  # fmt: skip
    # A legacy save keeps the seed's control value on the outer node, as the inner node does.
    ui.node(5, "s", [777, "randomize", 320], outputs=("IMAGE",))
    api = _convert(ui, object_info)
    assert api["5:1"]["inputs"] == {"noise_seed": 777}
    assert api["5:2"]["inputs"]["width"] == 320
    ui.nodes[0]["widgets_values"] = [778, 321]  # the current format: one value per input
    api = _convert(ui, object_info)
    assert (api["5:1"]["inputs"]["noise_seed"], api["5:2"]["inputs"]["width"]) == (778, 321)


def test_old_saves_with_a_slot_for_force_input_are_migrated(object_info):
    ui = UI()
    # prompt, aspect_ratio, style_preset, seed, its control, negative_prompt (forceInput: only
    # very old saves have its slot), image_denoise
    old = ["a cat", "16:9", "anime", 5, "fixed", "", 0.25]
    ui.node(1, "StabilityStableImageUltraNode", old, outputs=("IMAGE",))
    ui.node(2, "StabilityStableImageUltraNode", [*old[:5], 0.75], outputs=("IMAGE",))
    api = _convert(ui, object_info)
    expected = {"prompt": "a cat", "aspect_ratio": "16:9", "style_preset": "anime", "seed": 5}
    assert api["1"]["inputs"] == {**expected, "image_denoise": 0.25}
    assert api["2"]["inputs"] == {**expected, "image_denoise": 0.75}


def test_a_very_long_reroute_chain_is_an_error_not_a_crash(object_info):
    ui = UI()
    ui.node(1, "EmptyImage", [64, 64, 1, 0], outputs=("IMAGE",))
    for n in range(2, 2000):
        ui.node(n, "Reroute", inputs=(("", "*"),), outputs=("IMAGE",))
        ui.link(n - 1, 0, n, "")
    ui.node(2000, "SaveImage", ["x"], inputs=(("images", "IMAGE"),))
    ui.link(1999, 0, 2000, "images")
    with pytest.raises(UIConversionError, match="chained too deeply"):
        _convert(ui, object_info)


def test_subgraph_that_contains_itself_is_refused(object_info):
    inner = UI()
    inner.node(1, "loop")
    ui = UI()
    ui.subgraphs = [_subgraph("loop", "Loop", inner, [], [])]
    ui.node(1, "loop")
    with pytest.raises(UIConversionError, match="subgraph contains itself: 'Loop' → 'Loop'"):
        _convert(ui, object_info)


def test_dynamic_prompts_follow_the_front_end(object_info):
    ui = UI()
    ui.node(1, "CLIPTextEncode", ["a {red|blue|{green|teal}} fox // seen at dawn"],
            inputs=(("clip", "CLIP"),))  # fmt: skip
    ui.node(2, "SaveImage", ["{not|dynamic}"], inputs=(("images", "IMAGE"),))
    seen = {
        _convert(ui, object_info, rng=random.Random(seed))["1"]["inputs"]["text"]
        for seed in range(40)
    }
    assert seen == {"a red fox ", "a blue fox ", "a green fox ", "a teal fox "}
    plain = _convert(ui, object_info, dynamic_prompts=False)
    assert plain["1"]["inputs"]["text"] == "a {red|blue|{green|teal}} fox // seen at dawn"
    assert plain["2"]["inputs"]["filename_prefix"] == "{not|dynamic}"


def test_unknown_and_front_end_only_nodes_are_named(object_info):
    ui = UI()
    ui.node(1, "SetNode", ["model"])
    ui.node(2, "GetNode", ["model"])
    ui.node(3, "GetNode", ["model"])
    ui.node(4, "EmptyImage", [64, 64, 1, 0])
    with pytest.raises(UIConversionError) as caught:
        _convert(ui, object_info, source="wf.json")
    assert str(caught.value) == (
        "wf.json: unknown node types: GetNode (nodes 2, 3), SetNode (node 1) — install the"
        " custom nodes on the deployment or export the API format"
    )
    assert caught.value.unknown_types == {"GetNode": ["2", "3"], "SetNode": ["1"]}
    assert caught.value.exit_code == 3


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"nodes": {}, "links": []}, "not a UI-format workflow"),
        ({"nodes": [{"id": 1}], "links": []}, "node '1': node has no 'type'"),
        ({"nodes": [{"type": "X"}], "links": []}, r"nodes\[0\] has no usable 'id'"),
        ({"nodes": [], "links": [[1, 2]]}, r"links\[0\] is not \[id, origin_id"),
        (
            {
                "nodes": [
                    {"id": 1, "type": "SaveImage", "inputs": [{"name": "images", "link": 9}]}
                ],
                "links": [],
            },
            "node '1' input 'images': is connected by link 9, which is not in the links array",
        ),
        (
            {
                "nodes": [
                    {"id": 1, "type": "SaveImage", "inputs": [{"name": "images", "link": 9}]}
                ],
                "links": [[9, 5, 0, 1, 0, "IMAGE"]],
            },
            "node '1' input 'images': is linked from node '5', which does not exist",
        ),
        ({"nodes": [{"id": 1, "type": "Note"}], "links": []}, "has no nodes"),
    ],
)
def test_malformed_ui_workflows_say_where(object_info, doc, message):
    with pytest.raises(WorkflowFormatError, match=message):
        convert_ui_workflow(doc, object_info)


def test_input_is_not_modified(object_info, templates):
    name, ui = next((n, t) for n, t in templates if "definitions" in t and not
                    _unknown_types(t, object_info, active=False))  # fmt: skip
    before = json.dumps(ui, sort_keys=True)
    convert_ui_workflow(ui, object_info, source=name)
    assert json.dumps(ui, sort_keys=True) == before


# --- 4. the default SD1.5 workflow gives what ComfyUI received ----------------------------------


def _sd15_ui(offset: int) -> dict[str, Any]:
    """ComfyUI's default graph (same nodes, slots and links), with the transcript's values and
    every id moved by ``offset``."""
    ui = UI()
    o = offset
    ui.node(o + 7, "CLIPTextEncode", ["text, watermark"], inputs=(("clip", "CLIP"),),
            outputs=("CONDITIONING",))  # fmt: skip
    ui.node(o + 6, "CLIPTextEncode",
            ["beautiful scenery nature glass bottle landscape, , purple galaxy bottle,"],
            inputs=(("clip", "CLIP"),), outputs=("CONDITIONING",))  # fmt: skip
    ui.node(o + 5, "EmptyLatentImage", [64, 64, 1], outputs=("LATENT",))
    ui.node(o + 3, "KSampler", [42, True, 2, 8, "euler", "normal", 1],
            inputs=(("model", "MODEL"), ("positive", "CONDITIONING"),
                    ("negative", "CONDITIONING"), ("latent_image", "LATENT")),
            outputs=("LATENT",))  # fmt: skip
    ui.node(o + 8, "VAEDecode", inputs=(("samples", "LATENT"), ("vae", "VAE")),
            outputs=("IMAGE",))  # fmt: skip
    ui.node(o + 9, "SaveImage", ["proto_sd15"], inputs=(("images", "IMAGE"),))
    ui.node(o + 4, "CheckpointLoaderSimple", ["random_sd15.safetensors"],
            outputs=("MODEL", "CLIP", "VAE"))  # fmt: skip
    for origin, slot, target, name in [
        (4, 0, 3, "model"), (5, 0, 3, "latent_image"), (4, 1, 6, "clip"), (6, 0, 3, "positive"),
        (4, 1, 7, "clip"), (7, 0, 3, "negative"), (3, 0, 8, "samples"), (4, 2, 8, "vae"),
        (8, 0, 9, "images"),
    ]:  # fmt: skip
        ui.link(o + origin, slot, o + target, name)
    return ui.doc()


def _number(value: Any) -> Any:
    """JSON from JavaScript has no int/float distinction: 8 and 8.0 are the same number."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _canonical(graph: Mapping[str, Any]) -> Counter[str]:
    """Each node as (class, values, what its links point to), recursively: equal multisets mean
    equal graphs whatever the node ids."""
    memo: dict[str, str] = {}

    def label(node_id: str) -> str:
        if node_id not in memo:
            node = graph[node_id]
            inputs = {
                k: ({"link": label(v[0]), "slot": v[1]} if isinstance(v, list) else _number(v))
                for k, v in sorted(node["inputs"].items())
            }
            memo[node_id] = json.dumps([node["class_type"], inputs], sort_keys=True)
        return memo[node_id]

    return Counter(label(n) for n in graph)


def test_default_sd15_workflow_matches_what_comfyui_ran(object_info):
    sd15 = _transcript_file("20_sd15_txt2img.json")
    transcript = json.loads(sd15.read_text(encoding="utf-8"))
    sent = next(
        e["request"]["json"]["prompt"]
        for e in transcript["events"]
        if e["kind"] == "http" and e["request"]["path"] == "/prompt"
        and e["request"]["method"] == "POST"
    )  # fmt: skip
    api = convert_ui_workflow(_sd15_ui(100), object_info)
    assert set(api) == {str(100 + n) for n in (3, 4, 5, 6, 7, 8, 9)}
    assert _canonical(api) == _canonical(sent)
    assert check_workflow(
        api, object_info, extra_models={"checkpoints": ["random_sd15.safetensors"]}
    ).ok
    # and a wrong value would show: the comparison is not vacuous
    api["103"]["inputs"]["steps"] = 3
    assert _canonical(api) != _canonical(sent)
