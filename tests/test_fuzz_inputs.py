"""Hypothesis over everything a user hands us: workflow JSON, ``--set`` expressions, UI workflows.

The property is the same each time: the project's own error (``WorkflowFormatError`` and its
subclass ``UIConversionError``) or a result that is safe to send on, meaning strict JSON in
UTF-8 with a printable error message when it fails.  No ``TypeError``, ``KeyError``,
``RecursionError``, ``UnicodeEncodeError`` and no NaN getting through.  The generators lean on
the values that broke things before: NaN and infinities, lone surrogates, huge integers, deep
nesting, wrong types in every slot.  Bounded: ~100-200 examples each (the "ci" profile in
conftest.py makes them the same examples on every CI run).
"""

from __future__ import annotations

import copy
import json
import random
from functools import cache
from importlib.resources import files
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from ryla_modal.errors import WorkflowFormatError
from ryla_modal.ui_convert import convert_ui_workflow, is_ui_workflow
from ryla_modal.validate import check_workflow, load_object_info
from ryla_modal.workflow import (
    Workflow,
    apply_overrides,
    load_workflow,
    parse_override,
    set_seeds,
    validate_structure,
)
from tests.conftest import simple_workflow
from tests.fakes import transcripts

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- the values that broke things -----------------------------------------------------------

SURROGATES = st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff", "\udce9"])
TEXT = st.one_of(
    st.text(max_size=12),
    st.builds(lambda a, s, b: a + s + b, st.text(max_size=3), SURROGATES, st.text(max_size=3)),
    st.sampled_from(["", " ", "\n", "0\n", "KSampler", "3", "nan", "[", "{"]),
)
NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),  # NaN and both infinities included
    st.sampled_from([float("nan"), float("inf"), float("-inf"), 10**400, 1e308, -0.0]),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(TEXT, inner, max_size=4),
        st.tuples(TEXT, st.integers(-2, 5)).map(list),  # link-shaped
    ),
    max_leaves=20,
)


def nested(depth: int) -> Any:
    value: Any = 1
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


NODE_IDS = st.one_of(st.sampled_from(["1", "2", "3", "4"]), TEXT)
NODES = st.one_of(
    st.fixed_dictionaries(
        {
            "class_type": st.one_of(TEXT, SCALARS),
            "inputs": st.dictionaries(TEXT, VALUES, max_size=4),
        }
    ),
    st.dictionaries(st.sampled_from(["class_type", "inputs", "_meta"]), VALUES, max_size=3),
    VALUES,
)
GRAPHS = st.one_of(
    st.dictionaries(NODE_IDS, NODES, max_size=5),
    VALUES,
    st.builds(
        lambda depth: {"1": {"class_type": "A", "inputs": {"x": nested(depth)}}},
        st.integers(0, 3000),
    ),
)


def assert_safe(graph: Any) -> None:
    """What we hand on is strict JSON in UTF-8 and a well-formed workflow."""
    json.dumps(graph, allow_nan=False).encode("utf-8")
    validate_structure(graph)


def assert_printable(exc: WorkflowFormatError) -> None:
    str(exc).encode("utf-8")  # the CLI prints it
    if exc.hint:
        exc.hint.encode("utf-8")


def to_json_bytes(value: Any) -> bytes:
    """JSON text as a file might hold it: Python's json writes NaN and surrogate escapes."""
    try:
        return json.dumps(value).encode("utf-8")
    except (ValueError, RecursionError):
        return b"{"


# --- workflow JSON ------------------------------------------------------------------------------


@FUZZ
@given(graph=GRAPHS)
def test_any_parsed_value_is_a_workflow_or_a_workflow_format_error(graph: Any) -> None:
    try:
        wf = Workflow(graph)
    except WorkflowFormatError as exc:
        assert_printable(exc)
        return
    assert_safe(wf.to_dict())
    assert json.loads(wf.to_json()) == wf.to_dict()


@FUZZ
@given(
    data=st.one_of(
        GRAPHS.map(to_json_bytes),
        st.binary(max_size=64),
        st.sampled_from([b"", b"  ", b"\xff\xfe", b"NaN", b'{"1": NaN}', b"[" * 100_000]),
    )
)
def test_any_bytes_load_or_raise_a_workflow_format_error(data: bytes) -> None:
    try:
        graph = load_workflow(data)
    except WorkflowFormatError as exc:
        assert_printable(exc)
        return
    assert_safe(graph)


# --- --set expressions --------------------------------------------------------------------------

VALUE_TEXT = st.one_of(
    TEXT,
    VALUES.map(lambda v: to_json_bytes(v).decode("utf-8", "surrogatepass")),
    st.sampled_from(["1e400", "-1e400", "NaN", "Infinity", "[1e999]", '["1", 0]', '["9", 0]']),
    st.just("9" * 5000),  # more digits than int() converts
)
GRAPH_FOR_SET = simple_workflow("fuzz", color=1)
SET_EXPRESSIONS = st.one_of(
    st.builds(  # mostly aimed at real nodes and inputs, so the value is what gets tested
        lambda node, name, value: f"{node}.{name}={value}",
        st.sampled_from([*GRAPH_FOR_SET, "ImageBlur", "SaveImage", "EmptyImage"]),
        st.sampled_from(sorted({n for node in GRAPH_FOR_SET.values() for n in node["inputs"]})),
        VALUE_TEXT,
    ),
    st.builds(
        lambda node, name, value: f"{node}.{name}={value}",
        st.one_of(st.sampled_from(["1", "4", "ImageBlur"]), TEXT),
        st.one_of(st.sampled_from(["sigma", "filename_prefix"]), TEXT),
        VALUE_TEXT,
    ),
    TEXT,
)


@FUZZ
@given(expressions=st.lists(SET_EXPRESSIONS, max_size=3), allow_new=st.booleans())
def test_any_set_expression_applies_or_raises_a_workflow_format_error(
    expressions: list[str], allow_new: bool
) -> None:
    graph = copy.deepcopy(GRAPH_FOR_SET)
    before = copy.deepcopy(graph)
    try:
        for text in expressions:
            parse_override(text)
        out = apply_overrides(graph, expressions, allow_new_inputs=allow_new)
    except WorkflowFormatError as exc:
        assert_printable(exc)
    else:
        assert_safe(out)
        assert (
            Workflow(graph).with_overrides(expressions, allow_new_inputs=allow_new).to_dict() == out
        )
    assert graph == before


@FUZZ
@given(seed=st.one_of(st.integers(), st.just("random"), TEXT, NUMBERS, st.none()))
def test_any_seed_sets_or_raises_a_workflow_format_error(seed: Any) -> None:
    graph = {"1": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 2}}}
    try:
        out, _ = set_seeds(graph, seed, rng=random.Random(0))
    except WorkflowFormatError as exc:
        assert_printable(exc)
        return
    assert_safe(out)


# --- UI-format conversion -----------------------------------------------------------------------


@cache
def _object_info() -> dict[str, Any] | None:
    folder = transcripts.protocol_dir()
    path = folder / "31_object_info_full.json" if folder else None
    return load_object_info(path) if path and path.is_file() else None


@cache
def _templates() -> tuple[tuple[str, str], ...]:
    """Small real UI workflows (name, JSON text) that convert with our object_info unchanged, so
    a mutant fails (or passes) because of its mutation; one with subgraphs among them."""
    info = _object_info()
    assert info is not None
    folder = files("comfyui_workflow_templates_json") / "templates"
    found: list[tuple[int, str, str]] = []
    for entry in folder.iterdir():
        if entry.name.endswith(".json"):
            text = entry.read_text(encoding="utf-8")
            if len(text) <= 80_000 and is_ui_workflow(json.loads(text)):
                found.append((len(text), entry.name, text))
    found.sort()
    plain: list[tuple[str, str]] = []
    nested: list[tuple[str, str]] = []
    for _, name, text in found:  # bounded: the list is finite and we stop early
        pile = nested if '"subgraphs"' in text and '"subgraphs": []' not in text else plain
        if len(pile) >= (2 if pile is nested else 6):
            continue
        try:
            convert_ui_workflow(json.loads(text), info, rng=random.Random(0))
        except WorkflowFormatError:
            continue
        pile.append((name, text))
        if len(plain) >= 6 and len(nested) >= 2:
            break
    return tuple(plain + nested)


@pytest.fixture(scope="module")
def object_info() -> dict[str, Any]:
    info = _object_info()
    if info is None:
        pytest.skip(f"no 31_object_info_full.json: {transcripts.missing_reason()}")
    pytest.importorskip("comfyui_workflow_templates_json")
    return info


def _mutate(doc: Any, data: st.DataObject, depth: int = 0) -> Any:
    """Replace one value somewhere in ``doc`` (chosen by hypothesis) with a random value.

    The walk goes at least two levels down (into a node, a link, a widget value) and prefers
    deep spots, so most mutants stay close enough to a real workflow to reach the converter's
    inner rules instead of failing its first shape check."""
    leaf = not isinstance(doc, dict | list) or not doc
    if leaf or (depth >= 2 and data.draw(st.integers(0, 3)) == 0):
        return data.draw(st.one_of(SCALARS, VALUES))
    if isinstance(doc, dict):
        key = data.draw(st.sampled_from(sorted(doc)))
        doc[key] = _mutate(doc[key], data, depth + 1)
    else:
        index = data.draw(st.integers(0, len(doc) - 1))
        doc[index] = _mutate(doc[index], data, depth + 1)
    return doc


@settings(FUZZ, max_examples=120)
@given(data=st.data())
def test_any_mutated_ui_workflow_converts_or_raises_a_workflow_format_error(
    object_info: dict[str, Any], data: st.DataObject
) -> None:
    name, text = data.draw(st.sampled_from(_templates()), label="template")
    ui = json.loads(text)
    for _ in range(data.draw(st.integers(1, 2), label="mutations")):
        ui = _mutate(ui, data)
    try:
        api = convert_ui_workflow(ui, object_info, source=name, rng=random.Random(0))
    except WorkflowFormatError as exc:
        event("conversion refused")
        assert_printable(exc)
        return
    event("converted")
    assert_safe(api)


@settings(FUZZ, max_examples=60)
@given(
    ui=st.fixed_dictionaries(
        {"nodes": st.lists(VALUES, max_size=4), "links": st.lists(VALUES, max_size=4)},
        optional={"definitions": VALUES, "extra": VALUES},
    )
)
def test_any_ui_shaped_document_converts_or_raises_a_workflow_format_error(
    object_info: dict[str, Any], ui: dict[str, Any]
) -> None:
    try:
        api = convert_ui_workflow(ui, object_info)
    except WorkflowFormatError as exc:
        assert_printable(exc)
        return
    assert_safe(api)


# --- the offline object_info check never raises -------------------------------------------------


@settings(FUZZ, max_examples=100)
@given(data=st.data())
def test_check_workflow_never_raises_on_a_well_formed_graph(
    object_info: dict[str, Any], data: st.DataObject
) -> None:
    types = st.sampled_from(["KSampler", "SaveImage", "EmptyImage", "ImageBlur", "LoadImage", "X"])
    ids = [str(i) for i in range(1, data.draw(st.integers(1, 5)) + 1)]
    graph: dict[str, Any] = {}
    for node_id in ids:
        inputs = data.draw(
            st.dictionaries(
                st.sampled_from(["image", "images", "seed", "width", "sigma", "blur_radius", "x"]),
                st.one_of(SCALARS, st.tuples(st.sampled_from(ids), st.integers(0, 3)).map(list)),
                max_size=4,
            )
        )
        graph[node_id] = {"class_type": data.draw(types), "inputs": inputs}
    try:
        validate_structure(graph)
    except WorkflowFormatError:
        assume(False)
    report = check_workflow(graph, object_info)
    json.dumps(report.to_comfy_body(), allow_nan=False).encode("utf-8")


def test_the_templates_include_subgraphs(object_info: dict[str, Any]) -> None:
    chosen = _templates()
    assert len(chosen) >= 7
    assert any('"subgraphs"' in text for _, text in chosen)


def test_unknown_node_type_with_a_lone_surrogate_is_a_printable_error(
    object_info: dict[str, Any],
) -> None:
    # Found by the mutation test above: the error listed the unknown type unescaped.
    ui = json.loads(_templates()[0][1])
    ui["nodes"][0]["type"] = "\ud800"
    with pytest.raises(WorkflowFormatError) as info:
        convert_ui_workflow(ui, object_info)
    assert "\\ud800" in str(info.value)
    assert_printable(info.value)
