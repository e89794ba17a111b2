"""Workflows: loading from every source, overrides, seeds, and never touching the caller's data."""

from __future__ import annotations

import copy
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ryla_modal.errors import WorkflowFormatError
from ryla_modal.workflow import (
    RANDOM_SEED_BOUND,
    SEED_MAX,
    NodeInfo,
    Override,
    Workflow,
    apply_overrides,
    is_ui_format,
    load_workflow,
    parse_override,
    resolve_node,
    seed_inputs,
    set_seeds,
    validate_structure,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "workflows"
DEMO = EXAMPLES / "demo_model_free.json"
SD15 = EXAMPLES / "sd15_txt2img.json"

# The graph recorded in comfyui-protocol/01_success_model_free.json (POST /prompt), with our prefix.
RECORDED_DEMO: dict[str, Any] = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 16744448},
        "_meta": {"title": "Empty Image"},
    },
    "2": {
        "class_type": "ImageInvert",
        "inputs": {"image": ["1", 0]},
        "_meta": {"title": "Invert Image"},
    },
    "3": {
        "class_type": "ImageBlur",
        "inputs": {"image": ["2", 0], "blur_radius": 3, "sigma": 1.5},
        "_meta": {"title": "Image Blur"},
    },
    "4": {
        "class_type": "SaveImage",
        "inputs": {"images": ["3", 0], "filename_prefix": "ryla_demo"},
        "_meta": {"title": "Save Image"},
    },
}


def sd15() -> dict[str, Any]:
    return json.loads(SD15.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def two_samplers() -> dict[str, Any]:
    """A base + refiner shape: a KSampler, a KSamplerAdvanced, and a seed fed by a link."""
    return {
        "1": {"class_type": "SeedNode", "inputs": {"seed": 7}, "_meta": {"title": "Seed"}},
        "2": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 20, "cfg": 7.0}},
        "3": {"class_type": "KSamplerAdvanced", "inputs": {"noise_seed": 2, "steps": 20}},
        "4": {"class_type": "KSampler", "inputs": {"seed": ["1", 0], "steps": 10}},
        "5": {"class_type": "Odd", "inputs": {"seed": True, "noise_seed": "12"}},
    }


# --- the example workflows -------------------------------------------------------------------


def test_demo_example_is_the_recorded_model_free_graph() -> None:
    wf = Workflow.load(DEMO)
    assert wf.to_dict() == RECORDED_DEMO
    assert wf.source == str(DEMO)
    assert [(n.node_id, n.class_type) for n in wf.nodes] == [
        ("1", "EmptyImage"),
        ("2", "ImageInvert"),
        ("3", "ImageBlur"),
        ("4", "SaveImage"),
    ]
    assert wf.seed_inputs() == []


def test_sd15_example_has_the_usual_defaults() -> None:
    graph = load_workflow(str(SD15))
    validate_structure(graph)
    sampler = graph["3"]["inputs"]
    assert (sampler["steps"], sampler["seed"], sampler["cfg"]) == (20, 42, 8.0)
    assert graph["4"]["inputs"]["ckpt_name"] == "v1-5-pruned-emaonly.safetensors"
    assert (graph["5"]["inputs"]["width"], graph["5"]["inputs"]["height"]) == (512, 512)
    assert graph["9"]["inputs"]["filename_prefix"] == "ryla_sd15"
    assert seed_inputs(graph) == [("3", "seed")]
    # The prompts have distinct titles, so they can be overridden by name.
    wf = Workflow.load(SD15).with_overrides(["Positive Prompt.text=a red fox in snow"])
    assert wf.node("6")["inputs"]["text"] == "a red fox in snow"
    assert wf.node("7")["inputs"]["text"] == "text, watermark"


# --- sources ---------------------------------------------------------------------------------


def test_every_source_kind_loads_the_same_graph(tmp_path: Path) -> None:
    raw = DEMO.read_bytes()
    expected = json.loads(raw)
    as_workflow = Workflow.load(DEMO)
    sources: list[Any] = [DEMO, str(DEMO), raw, bytearray(raw), expected, as_workflow]
    for source in sources:
        assert load_workflow(source) == expected, type(source)
        assert Workflow.load(source) == as_workflow, type(source)
    assert Workflow.load(as_workflow) is as_workflow  # immutable: no copy needed
    assert Workflow.load(raw).source == "<bytes>"
    assert Workflow.load(raw, source_name="request body").source == "request body"
    with pytest.raises(WorkflowFormatError, match=r"^request body: has no nodes"):
        load_workflow({}, source_name="request body")


def test_a_utf8_bom_and_non_ascii_text_load(tmp_path: Path) -> None:
    graph = copy.deepcopy(RECORDED_DEMO)
    graph["4"]["inputs"]["filename_prefix"] = "füchse_狐"
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(graph, ensure_ascii=False).encode())
    assert load_workflow(path) == graph


def test_a_missing_file_names_it_and_hints_at_json_text(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(WorkflowFormatError, match="no such file") as info:
        load_workflow(missing)
    assert info.value.source == str(missing)
    with pytest.raises(WorkflowFormatError) as info:
        load_workflow('{"1": {"class_type": "X", "inputs": {}}}')
    assert info.value.hint is not None and "bytes" in info.value.hint
    with pytest.raises(WorkflowFormatError, match="is a directory"):
        load_workflow(tmp_path)


def test_messages_without_a_source_name_the_workflow() -> None:
    with pytest.raises(WorkflowFormatError, match=r"(?m)^the workflow has no nodes$"):
        validate_structure({})
    with pytest.raises(WorkflowFormatError, match=r"^the workflow is a JSON array"):
        Workflow([])  # type: ignore[arg-type]
    with pytest.raises(WorkflowFormatError, match=r"^node '2' input 'image': links to node '9'"):
        Workflow({"2": {"class_type": "ImageInvert", "inputs": {"image": ["9", 0]}}})


def test_a_source_of_another_type_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="int"):
        load_workflow(42)  # type: ignore[arg-type]


STDIN_SNIPPET = """
import json, sys
from ryla_modal.errors import WorkflowFormatError
from ryla_modal.workflow import Workflow
try:
    wf = Workflow.load("-", max_bytes=int(sys.argv[1]))
except WorkflowFormatError as exc:
    print(exc, file=sys.stderr)
    sys.exit(exc.exit_code)
print(json.dumps({"source": wf.source, "graph": wf.to_dict()}))
"""


def run_stdin(data: bytes, max_bytes: int = 1 << 20) -> subprocess.CompletedProcess[bytes]:
    """Load a workflow from the real stdin of a child Python."""
    return subprocess.run(
        [sys.executable, "-c", STDIN_SNIPPET, str(max_bytes)],
        input=data,
        capture_output=True,
        timeout=30,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )


def test_dash_reads_the_workflow_from_stdin() -> None:
    done = run_stdin(DEMO.read_bytes())
    assert done.returncode == 0, done.stderr.decode()
    answer = json.loads(done.stdout)
    assert answer == {"source": "<stdin>", "graph": RECORDED_DEMO}


def test_stdin_errors_name_stdin_and_stop_reading_at_the_limit() -> None:
    ui = json.dumps({"nodes": [], "links": []}).encode()
    done = run_stdin(ui)
    assert done.returncode == 3  # EXIT_WORKFLOW
    assert done.stderr.decode().startswith("<stdin>: is a UI-format workflow")

    big = b'{"1": {"class_type": "X", "inputs": {"text": "' + b"x" * 100_000 + b'"}}}'
    done = run_stdin(big, max_bytes=1000)
    assert done.returncode == 3
    assert "<stdin>: larger than the 1,000-byte limit" in done.stderr.decode()


def test_stdin_that_is_a_terminal_is_refused_instead_of_waiting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    master, slave = os.openpty()
    try:
        with open(slave, encoding="utf-8", closefd=True) as tty:
            monkeypatch.setattr(sys, "stdin", tty)
            with pytest.raises(WorkflowFormatError, match="stdin is a terminal") as info:
                load_workflow("-")
            assert info.value.hint is not None and "pipe" in info.value.hint
    finally:
        os.close(master)


# --- structure -------------------------------------------------------------------------------


def test_ui_format_is_detected_only_with_both_arrays() -> None:
    assert is_ui_format({"nodes": [], "links": [], "version": 0.4})
    assert not is_ui_format({"nodes": []})
    assert not is_ui_format(RECORDED_DEMO)
    assert not is_ui_format([{"nodes": [], "links": []}])


def test_a_diamond_and_a_self_loop() -> None:
    diamond = {
        "1": {"class_type": "A", "inputs": {}},
        "2": {"class_type": "B", "inputs": {"x": ["1", 0]}},
        "3": {"class_type": "C", "inputs": {"x": ["1", 0]}},
        "4": {"class_type": "D", "inputs": {"a": ["2", 0], "b": ["3", 0], "c": ["1", 1]}},
    }
    validate_structure(diamond)  # shared upstream nodes are not a cycle
    looped = {"1": {"class_type": "A", "inputs": {"self": ["1", 0]}}}
    with pytest.raises(WorkflowFormatError, match="'1' → '1'") as info:
        validate_structure(looped, source="x.json")
    assert (info.value.node_id, info.value.field) == ("1", "self")


def test_a_long_chain_is_checked_without_recursion() -> None:
    chain: dict[str, Any] = {"0": {"class_type": "A", "inputs": {}}}
    for i in range(1, 4000):
        chain[str(i)] = {"class_type": "B", "inputs": {"x": [str(i - 1), 0]}}
    validate_structure(chain)
    chain["0"]["inputs"]["x"] = ["3999", 0]
    with pytest.raises(WorkflowFormatError, match="cycle"):
        validate_structure(chain)


def test_a_dict_with_non_json_values_names_the_node_and_input() -> None:
    graph = copy.deepcopy(RECORDED_DEMO)
    graph["3"]["inputs"]["sigma"] = {1.5}
    with pytest.raises(WorkflowFormatError, match="set is not a JSON value") as info:
        Workflow(graph, source="script")
    assert (info.value.node_id, info.value.field, info.value.source) == ("3", "sigma", "script")
    with pytest.raises(WorkflowFormatError, match="node ids are strings"):
        Workflow({1: {"class_type": "A", "inputs": {}}})  # type: ignore[dict-item]
    # Tuples are what json.dumps would send: lists, here links.
    graph = copy.deepcopy(RECORDED_DEMO)
    graph["2"]["inputs"]["image"] = ("1", 0)
    assert Workflow(graph).node("2")["inputs"]["image"] == ["1", 0]


def test_node_limit_is_a_keyword() -> None:
    validate_structure(RECORDED_DEMO, max_nodes=4)
    with pytest.raises(WorkflowFormatError, match="limit of 2"):
        Workflow(RECORDED_DEMO, max_nodes=2)


# --- overrides -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "target", "input_name", "value"),
    [
        ("3.steps=20", "3", "steps", 20),
        ("3.cfg=7.5", "3", "cfg", 7.5),
        ("6.text=a cat", "6", "text", "a cat"),
        ('6.text="123"', "6", "text", "123"),
        ("6.text=123", "6", "text", 123),
        ("6.text=", "6", "text", ""),
        ("6.text=a=b", "6", "text", "a=b"),
        ("6.text=NaN", "6", "text", "NaN"),
        ("6.text=[unclosed", "6", "text", "[unclosed"),
        ("3.denoise=true", "3", "denoise", True),
        ("3.x=null", "3", "x", None),
        ('3.model=["4", 0]', "3", "model", ["4", 0]),
        ("KSampler (v1.5).seed=3", "KSampler (v1.5)", "seed", 3),
        (" Positive Prompt . text =a fox", "Positive Prompt", "text", "a fox"),
    ],
)
def test_parse_override(text: str, target: str, input_name: str, value: Any) -> None:
    assert parse_override(text) == Override(target, input_name, value, text)


def test_targets_resolve_by_id_then_unique_class_type_or_title() -> None:
    graph = sd15()
    graph["3"]["_meta"]["title"] = "Sampler v1.5"
    assert resolve_node(graph, "3") == "3"
    assert resolve_node(graph, "KSampler") == "3"
    assert resolve_node(graph, "Sampler v1.5") == "3"
    assert resolve_node(graph, "Negative Prompt") == "7"
    out = apply_overrides(graph, ["Sampler v1.5.steps=4", "EmptyLatentImage.width=768"])
    assert out["3"]["inputs"]["steps"] == 4
    assert out["5"]["inputs"]["width"] == 768
    # A node id wins even when another node carries that id as its title.
    graph["9"]["_meta"]["title"] = "3"
    assert resolve_node(graph, "3") == "3"


def test_overrides_apply_in_order_and_can_rewire_links() -> None:
    wf = Workflow.load(SD15).with_overrides(
        ["3.steps=10", "3.steps=30", '8.samples=["3", 0]', "3.seed=5"]
    )
    inputs = wf.node("3")["inputs"]
    assert (inputs["steps"], inputs["seed"]) == (30, 5)


def test_a_single_override_string_is_one_override() -> None:
    assert apply_overrides(RECORDED_DEMO, "3.sigma=2")["3"]["inputs"]["sigma"] == 2


def test_a_linked_input_can_be_replaced_by_a_value() -> None:
    graph = two_samplers()
    out = apply_overrides(graph, ["4.seed=99"])
    assert out["4"]["inputs"]["seed"] == 99


def test_new_inputs_need_permission() -> None:
    wf = Workflow.load(DEMO)
    with pytest.raises(WorkflowFormatError, match="no such input") as info:
        wf.with_overrides(["SaveImage.extra=1"])
    assert "'filename_prefix', 'images'" in str(info.value)
    added = wf.with_overrides(["SaveImage.extra=1"], allow_new_inputs=True)
    assert added.node("4")["inputs"]["extra"] == 1
    assert "extra" not in wf.node("4")["inputs"]


def test_override_objects_are_accepted_and_their_values_copied() -> None:
    value = {"nested": [1, 2]}
    override = Override("3", "blur_radius", value, "3.blur_radius=…")
    wf = Workflow.load(DEMO).with_overrides([override], allow_new_inputs=True)
    value["nested"].append(3)
    assert wf.node("3")["inputs"]["blur_radius"] == {"nested": [1, 2]}


# --- never mutate ----------------------------------------------------------------------------


def test_functions_never_mutate_their_input_and_never_share_with_the_output() -> None:
    graph = sd15()
    before = copy.deepcopy(graph)
    out = apply_overrides(graph, ["3.steps=1", "6.text=x"])
    seeded, _ = set_seeds(graph, 5)
    assert graph == before
    for result in (out, seeded):
        result["4"]["inputs"]["ckpt_name"] = "changed"
        result["3"]["inputs"]["model"][0] = "changed"
    assert graph == before


def test_a_workflow_owns_its_data() -> None:
    graph = sd15()
    wf = Workflow(graph)
    graph["3"]["inputs"]["steps"] = 999
    assert wf.node("3")["inputs"]["steps"] == 20
    exported = wf.to_dict()
    exported["3"]["inputs"]["steps"] = 999
    wf.node("3")["inputs"]["steps"] = 999
    assert wf.to_dict()["3"]["inputs"]["steps"] == 20
    with pytest.raises(AttributeError, match="immutable"):
        wf._graph = {}
    with pytest.raises(AttributeError):
        del wf._source
    changed = wf.with_overrides(["3.steps=4"])
    assert changed != wf and wf.node("3")["inputs"]["steps"] == 20


def test_workflow_basics() -> None:
    wf = Workflow.load(SD15)
    assert len(wf) == 7 and "3" in wf and "99" not in wf
    assert list(wf) == ["3", "4", "5", "6", "7", "8", "9"] == list(wf.node_ids)
    assert NodeInfo("6", "CLIPTextEncode", "Positive Prompt") in wf.nodes
    assert json.loads(wf.to_json(indent=2)) == wf.to_dict()
    assert repr(wf) == f"Workflow(source={str(SD15)!r}, nodes=7)"
    assert wf == Workflow(wf.to_dict()) and wf != wf.to_dict()


JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
BASE = sd15()
TARGETS = st.sampled_from(
    [*BASE, "KSampler", "CLIPTextEncode", "Positive Prompt", "VAE Decode", "nope", "3.5"]
)
INPUT_NAMES = st.sampled_from(
    sorted({name for node in BASE.values() for name in node["inputs"]} | {"bogus"})
)
VALUE_TEXT = st.one_of(
    st.text(max_size=30), JSON_VALUES.map(json.dumps), st.sampled_from(['["4", 0]', '["99", 0]'])
)
OVERRIDES = st.lists(
    st.one_of(
        st.builds(lambda t, i, v: f"{t}.{i}={v}", TARGETS, INPUT_NAMES, VALUE_TEXT),
        st.text(max_size=30),  # anything at all, malformed or not
    ),
    max_size=4,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(overrides=OVERRIDES, allow_new=st.booleans())
def test_random_overrides_never_mutate_the_input(overrides: list[str], allow_new: bool) -> None:
    graph = sd15()
    before = copy.deepcopy(graph)
    wf = Workflow(graph)
    try:
        out = apply_overrides(graph, overrides, allow_new_inputs=allow_new)
    except WorkflowFormatError as exc:
        with pytest.raises(WorkflowFormatError) as again:
            wf.with_overrides(overrides, allow_new_inputs=allow_new)
        assert str(again.value) == str(exc)
    else:
        validate_structure(out)
        assert wf.with_overrides(overrides, allow_new_inputs=allow_new).to_dict() == out
        assert set(out) == set(graph)
    assert graph == before
    assert wf.to_dict() == before


# --- seeds -----------------------------------------------------------------------------------


def test_a_fixed_seed_goes_to_every_numeric_seed_input() -> None:
    graph = two_samplers()
    out, changed = set_seeds(graph, 42)
    assert changed == {"1": 42, "2": 42, "3": 42}
    assert out["1"]["inputs"]["seed"] == 42
    assert out["2"]["inputs"]["seed"] == 42
    assert out["3"]["inputs"]["noise_seed"] == 42
    assert out["4"]["inputs"]["seed"] == ["1", 0]  # a link is left alone
    assert out["5"]["inputs"] == {"seed": True, "noise_seed": "12"}  # not numbers: left alone
    assert graph == two_samplers()


def test_a_random_seed_is_one_draw_shared_and_repeatable_with_an_rng() -> None:
    wf = Workflow(two_samplers())
    first, seeds = wf.with_seed("random", rng=random.Random(1234))
    again, seeds_again = wf.with_seed("random", rng=random.Random(1234))
    assert seeds == seeds_again and first == again
    (value,) = set(seeds.values())
    assert 0 <= value < RANDOM_SEED_BOUND
    # The printed seed reproduces the run.
    assert wf.with_seed(value)[0] == first
    # Without an rng the draws differ (two equal 53-bit draws: 2**-53).
    assert wf.with_seed("random")[1] != wf.with_seed("random")[1]


def test_a_graph_without_seeds_reports_none() -> None:
    wf = Workflow.load(DEMO)
    same, changed = wf.with_seed(3)
    assert changed == {} and same == wf


@pytest.mark.parametrize("bad", [-1, SEED_MAX + 1, True, 1.5, "42", None])
def test_bad_seeds(bad: Any) -> None:
    with pytest.raises(WorkflowFormatError) as info:
        Workflow.load(SD15).with_seed(bad)
    assert info.value.field == "seed"
    assert str(info.value).startswith(f"{SD15}: seed")
    set_seeds(sd15(), SEED_MAX)  # the top of the range is fine
