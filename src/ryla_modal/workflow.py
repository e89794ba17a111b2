"""API-format ComfyUI workflows: load them, check their shape, override inputs, set seeds.

Everything here works on plain JSON data and never on the caller's own objects: what comes in is
copied, what goes out is a fresh copy.  The checks are structural only (what ComfyUI would choke on
before it even looks at node types): ComfyUI itself validates node types and values when the
workflow is submitted.

``Workflow`` is the convenient, immutable face of this module::

    wf = Workflow.load("examples/workflows/sd15_txt2img.json")
    wf = wf.with_overrides(["6.text=a red fox in the snow", "KSampler.steps=30"])
    wf, seeds = wf.with_seed("random")      # seeds == {"3": 5843958391}
    payload = wf.to_dict()

The module-level functions do the same on plain dicts.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import random
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, Literal, NoReturn, TypeAlias

from ryla_modal.defaults import WORKFLOW_MAX_BYTES, WORKFLOW_MAX_DEPTH, WORKFLOW_MAX_NODES
from ryla_modal.errors import ConfigError, RylaError, WorkflowFormatError

__all__ = [
    "RANDOM_SEED_BOUND",
    "SEED_INPUT_NAMES",
    "SEED_MAX",
    "NodeInfo",
    "Override",
    "Workflow",
    "WorkflowSource",
    "apply_overrides",
    "is_ui_format",
    "load_for_deployment",
    "load_workflow",
    "parse_override",
    "resolve_node",
    "seed_inputs",
    "set_seeds",
    "validate_structure",
]

#: What ``load_workflow`` accepts: a path (``"-"`` is stdin), JSON bytes, or an already parsed dict.
WorkflowSource: TypeAlias = "str | PathLike[str] | bytes | bytearray | Mapping[str, Any] | Workflow"

#: Input names that hold a sampler seed in ComfyUI's core nodes (KSampler, KSamplerAdvanced,
#: SamplerCustom, RandomNoise...) and in most custom nodes.
SEED_INPUT_NAMES = ("seed", "noise_seed")
#: ComfyUI's own upper bound for a seed widget.
SEED_MAX = 0xFFFF_FFFF_FFFF_FFFF
#: Random seeds are drawn below 2**53: every integer up to there survives a trip through a
#: JavaScript number (ComfyUI's frontend, jq, browsers), so the seed we print is the seed that
#: reproduces the image anywhere.
RANDOM_SEED_BOUND = 2**53

STDIN_SOURCE = "<stdin>"

_UI_FORMAT_HINT = (
    "export the API format from ComfyUI: in the new menu use Workflow → Export (API); in the old "
    'menu enable "Dev mode Options" in Settings, then click "Save (API Format)"'
)
_LINK_NOTE = "ComfyUI reads every list input as a link [node_id, output_index]"
_MAX_LISTED = 20  # candidates named in one error message


# --- loading ---------------------------------------------------------------------------------


def load_workflow(
    source: WorkflowSource,
    *,
    max_bytes: int = WORKFLOW_MAX_BYTES,
    max_nodes: int = WORKFLOW_MAX_NODES,
    source_name: str | None = None,
) -> dict[str, Any]:
    """Read an API-format workflow and check its structure; returns a fresh dict.

    ``source`` is a path (``str`` or ``PathLike``; ``"-"`` reads stdin), JSON text as ``bytes``,
    a ``Mapping`` (deep-copied, never modified) or a ``Workflow``.  Files and stdin are read only
    up to ``max_bytes`` + 1 bytes, so an oversized input is refused before it is parsed.
    Raises ``WorkflowFormatError`` naming the source, node and input at fault; ``source_name``
    names a source that has no name of its own (``"request body"`` for a dict or bytes).
    """
    graph, label = _load(source, max_bytes=max_bytes, source_name=source_name)
    validate_structure(graph, source=label, max_nodes=max_nodes)
    return graph


def load_for_deployment(source: str, object_info: Callable[[], Mapping[str, Any]]) -> Workflow:
    """Load a workflow file as API format, converting a UI-format file on the way.

    Conversion needs the deployment's node definitions; ``object_info`` fetches them, and is
    called only for a UI-format file.  When it fails, the error says how to make the deployment
    reachable, or how to export the API format instead.
    """
    try:
        return Workflow.load(source)
    except WorkflowFormatError as exc:
        raw = _read_json_quietly(source)
        if raw is None or not is_ui_format(raw):
            raise
        try:
            info = object_info()
        except ConfigError as inner:  # no endpoint: say how to get one
            raise WorkflowFormatError(
                f"{source} is a UI-format workflow; converting it needs a deployment's node"
                f" definitions, and {inner.message}",
                hint="deploy one (`ryla deploy`) or pass --endpoint URL; or export the API"
                " format: Workflow → Export (API) in ComfyUI",
            ) from exc
        except RylaError as inner:
            raise WorkflowFormatError(
                f"{source} is a UI-format workflow; converting it needs the deployment's node"
                f" definitions, but the server could not be asked: {inner.message}",
                hint="check --endpoint (`ryla health` asks it), or export the API format:"
                " Workflow → Export (API) in ComfyUI",
            ) from exc
        from ryla_modal.ui_convert import convert_ui_workflow

        return Workflow(convert_ui_workflow(raw, info, source=source), source=source)


def _read_json_quietly(source: str) -> Any:
    if source == "-":
        return None
    try:
        return json.loads(Path(source).read_bytes())
    except (OSError, ValueError):
        return None


def _load(
    source: WorkflowSource, *, max_bytes: int, source_name: str | None
) -> tuple[dict[str, Any], str | None]:
    """Parse ``source`` into our own dict (not yet validated) and the label used in errors."""
    if isinstance(source, Workflow):
        return source.to_dict(), source.source
    if isinstance(source, Mapping):
        return _json_copy(source, source_name), source_name
    if isinstance(source, bytes | bytearray):
        label = source_name or "<bytes>"
        if len(source) > max_bytes:
            _too_big(label, max_bytes)
        return _parse_json(bytes(source), label), label
    if isinstance(source, str | PathLike):
        if isinstance(source, str) and source == "-":
            return _parse_json(_read_stdin(max_bytes), STDIN_SOURCE), STDIN_SOURCE
        return _parse_json(_read_file(source, max_bytes), str(source)), str(source)
    raise TypeError(
        "a workflow source is a path, '-', bytes or a mapping, not " + type(source).__name__
    )


def _read_file(path: str | PathLike[str], max_bytes: int) -> bytes:
    label = str(path)
    try:
        with Path(path).expanduser().open("rb") as fh:
            data = fh.read(max_bytes + 1)
    except FileNotFoundError:
        hint = None
        if label.lstrip()[:1] in ("{", "["):
            hint = "to load JSON text, pass it as bytes or as a parsed dict, not as a str"
        raise WorkflowFormatError("no such file", source=_short(label), hint=hint) from None
    except IsADirectoryError:
        raise WorkflowFormatError("is a directory, not a workflow file", source=label) from None
    except OSError as exc:
        raise WorkflowFormatError(f"cannot read: {exc.strerror or exc}", source=label) from exc
    if len(data) > max_bytes:
        _too_big(label, max_bytes)
    return data


def _read_stdin(max_bytes: int) -> bytes:
    stream = sys.stdin
    if stream is None or stream.closed:
        raise WorkflowFormatError("stdin is closed", source=STDIN_SOURCE)
    if stream.isatty():
        # Waiting for someone to type a workflow would look like a hang.
        raise WorkflowFormatError(
            "stdin is a terminal, not a workflow",
            source=STDIN_SOURCE,
            hint="pipe the file in (ryla generate - < workflow.json) or pass its path",
        )
    buffer = getattr(stream, "buffer", None)
    # A text-only stream (no .buffer) is read in characters: never fewer bytes than characters.
    data = buffer.read(max_bytes + 1) if buffer is not None else stream.read(max_bytes + 1).encode()
    if len(data) > max_bytes:
        _too_big(STDIN_SOURCE, max_bytes)
    return bytes(data)


def _too_big(label: str, max_bytes: int) -> NoReturn:
    raise WorkflowFormatError(
        f"larger than the {max_bytes:,}-byte limit for a workflow",
        source=label,
        hint="API-format workflows are small; images and other inputs travel separately",
    )


def _parse_json(data: bytes, label: str) -> dict[str, Any]:
    if not data.strip():
        raise WorkflowFormatError("is empty, not a JSON workflow", source=label)
    try:
        parsed = json.loads(data)
    except json.JSONDecodeError as exc:
        raise WorkflowFormatError(
            f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})", source=label
        ) from None
    except UnicodeDecodeError as exc:
        raise WorkflowFormatError(f"not UTF-8 text: {exc.reason}", source=label) from None
    except RecursionError:
        raise WorkflowFormatError("not usable JSON: nested too deeply", source=label) from None
    _check_top_level(parsed, label)
    return parsed  # type: ignore[no-any-return]


def _check_top_level(value: Any, source: str | None) -> None:
    """The whole document must be an object of nodes; name the usual wrong shapes."""
    if not isinstance(value, Mapping):
        raise WorkflowFormatError(
            _whole(
                f"is a JSON {_json_type(value)}; an API-format workflow is an object that maps"
                " node ids to nodes",
                source,
            ),
            source=source,
        )
    if is_ui_format(value):
        raise WorkflowFormatError(
            _whole(
                "is a UI-format workflow (it has 'nodes' and 'links' arrays); this needs the API"
                " format",
                source,
            ),
            source=source,
            hint=_UI_FORMAT_HINT,
        )
    prompt = value.get("prompt")
    if isinstance(prompt, Mapping) and "class_type" not in prompt:
        raise WorkflowFormatError(
            _whole(
                "looks like a POST /prompt request body; the workflow is its 'prompt' field", source
            ),
            source=source,
            hint="save only the 'prompt' object (for example: jq .prompt body.json > wf.json)",
        )


def is_ui_format(value: Any) -> bool:
    """True for a workflow saved by ComfyUI's "Save"/"Export" (UI format) rather than the API one.

    The UI format is the editor's canvas: ``nodes`` and ``links`` arrays with positions and widget
    values by position.  The API format is an object of ``{node_id: {class_type, inputs}}``.
    """
    return (
        isinstance(value, Mapping)
        and isinstance(value.get("nodes"), list)
        and isinstance(value.get("links"), list)
    )


# --- structure -------------------------------------------------------------------------------


def validate_structure(
    graph: Any, *, source: str | None = None, max_nodes: int = WORKFLOW_MAX_NODES
) -> None:
    """Raise ``WorkflowFormatError`` unless ``graph`` is a well-formed API-format workflow.

    Checks: an object of at most ``max_nodes`` nodes, not empty, not the UI format; every value
    survives strict JSON and UTF-8 (no NaN or infinite number, no lone surrogate in a string or
    key, nested at most ``WORKFLOW_MAX_DEPTH`` deep); every node is an object with a non-empty
    string ``class_type`` and an ``inputs`` object; every list input is a link
    ``[existing_node_id, output_index >= 0]`` (ComfyUI treats any list input as a link); no
    dependency cycles.  Node types and values are ComfyUI's to judge.
    """
    _check_top_level(graph, source)
    if not graph:
        raise WorkflowFormatError(
            _whole("has no nodes", source),
            source=source,
            hint="an API-format workflow maps node ids to nodes",
        )
    if len(graph) > max_nodes:
        raise WorkflowFormatError(
            _whole(f"has {len(graph):,} nodes, more than the limit of {max_nodes:,}", source),
            source=source,
        )
    _check_json_safe(graph, source)
    for node_id, node in graph.items():
        _check_node(graph, node_id, node, source)
    _check_cycles(graph, source)


def _check_json_safe(graph: Mapping[Any, Any], source: str | None) -> None:
    """Refuse what Python's ``json`` reads but strict JSON, UTF-8 and ComfyUI cannot carry.

    ``json.loads`` takes ``NaN``, ``Infinity`` and ``1e400`` (as ``inf``) and ``"\\ud800"`` (a
    lone surrogate); such a value passes every other check, then breaks the first strict encoder
    on its way (the gateway's answer, a job store, ComfyUI's own JSON), far from its cause.  Walked
    with an explicit stack: a deeply nested value must not exhaust Python's recursion.
    """
    stack: list[tuple[Any, tuple[str, ...]]] = [(graph, ())]
    while stack:  # bounded: every value is visited once, at most WORKFLOW_MAX_DEPTH deep
        value, path = stack.pop()
        if isinstance(value, float):
            if not math.isfinite(value):
                _unsafe(
                    f"the number {value!r} is not valid JSON (NaN or out of range)", path, source
                )
        elif isinstance(value, str):
            if not _utf8_ok(value):
                shown = _short(repr(value))
                _unsafe(f"the string {shown} is not valid Unicode (a lone surrogate)", path, source)
        elif isinstance(value, Mapping | list | tuple):
            if len(path) >= WORKFLOW_MAX_DEPTH:
                _unsafe(f"nested more than {WORKFLOW_MAX_DEPTH} levels deep", path, source)
            if isinstance(value, Mapping):
                for key, item in value.items():
                    if isinstance(key, str) and not _utf8_ok(key):
                        what = "node id" if not path else "key"
                        shown = _short(repr(key))
                        _unsafe(
                            f"the {what} {shown} is not valid Unicode (a lone surrogate)",
                            path,
                            source,
                        )
                    stack.append((item, (*path, str(key))))
            else:
                stack.extend((item, (*path, f"[{i}]")) for i, item in enumerate(value))


def _utf8_ok(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _unsafe(message: str, path: Sequence[str], source: str | None) -> NoReturn:
    """Name the node and input a bad value sits in; deeper places go into the message."""
    node_id = path[0] if path else None
    field = path[2] if len(path) >= 3 and path[1] == "inputs" else None
    rest = path[3:] if field is not None else path[1:]
    if rest:
        where = "".join(p if p.startswith("[") else f".{p}" for p in rest).lstrip(".")
        message = f"at {_short(repr(where))[1:-1]}: {message}"
    if node_id is None:
        raise WorkflowFormatError(_whole(message, source), source=source)
    raise WorkflowFormatError(message, node_id=node_id, field=field, source=source)


def _check_node(graph: Mapping[str, Any], node_id: Any, node: Any, source: str | None) -> None:
    if not isinstance(node_id, str):
        raise WorkflowFormatError(
            f"node id {node_id!r} is not a string; node ids are strings",
            source=source,
        )
    if not isinstance(node, Mapping):
        raise _node_error(
            f"is a JSON {_json_type(node)}, not a node object with 'class_type' and 'inputs'",
            node_id,
            None,
            source,
        )
    if "class_type" not in node:
        raise _node_error(
            "is missing the class_type property (every node needs 'class_type' and 'inputs')",
            node_id,
            "class_type",
            source,
        )
    class_type = node["class_type"]
    if not isinstance(class_type, str) or not class_type.strip():
        raise _node_error(
            f"class_type must be a node type name, not {_brief(class_type)}",
            node_id,
            "class_type",
            source,
        )
    if "inputs" not in node:
        raise _node_error(
            "is missing the inputs property (an object, {} when the node has none)",
            node_id,
            "inputs",
            source,
        )
    inputs = node["inputs"]
    if not isinstance(inputs, Mapping):
        raise _node_error(
            f"inputs must be an object, not a JSON {_json_type(inputs)}", node_id, "inputs", source
        )
    for name, value in inputs.items():
        if not isinstance(name, str):
            raise _node_error(f"input name {name!r} is not a string", node_id, "inputs", source)
        if isinstance(value, list):
            _check_link(graph, node_id, name, value, source)


def _check_link(
    graph: Mapping[str, Any], node_id: str, name: str, link: list[Any], source: str | None
) -> None:
    shown = _brief(link)
    if len(link) != 2:
        raise WorkflowFormatError(
            f"bad linked input {shown}: must be a length-2 list of [node_id, output_index]"
            f" ({_LINK_NOTE})",
            node_id=node_id,
            field=name,
            source=source,
        )
    target, index = link
    if isinstance(target, int) and not isinstance(target, bool):
        raise WorkflowFormatError(
            f"bad linked input {shown}: the node id must be a string, like"
            f" [{json.dumps(str(target))}, {_brief(index)}]",
            node_id=node_id,
            field=name,
            source=source,
        )
    if not isinstance(target, str):
        raise WorkflowFormatError(
            f"bad linked input {shown}: the first item must be a node id string ({_LINK_NOTE})",
            node_id=node_id,
            field=name,
            source=source,
        )
    if target not in graph:
        raise WorkflowFormatError(
            f"links to node {target!r}, which does not exist (nodes: {_listing(graph)})",
            node_id=node_id,
            field=name,
            source=source,
        )
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise WorkflowFormatError(
            f"bad output index {_brief(index)} in link {shown}: it must be an integer >= 0",
            node_id=node_id,
            field=name,
            source=source,
        )


def _check_cycles(graph: Mapping[str, Any], source: str | None) -> None:
    """ComfyUI refuses a graph whose links loop back; say which nodes form the loop."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for start in graph:
        if start in state:
            continue
        path: list[tuple[str, str]] = []  # (node, the input that leads further up)
        stack: list[tuple[str, Iterator[tuple[str, str]]]] = [(start, _upstream(graph, start))]
        state[start] = 1
        while stack:  # bounded: each node enters the path once
            node_id, links = stack[-1]
            step = next(links, None)
            if step is None:
                state[node_id] = 2
                stack.pop()
                if path:
                    path.pop()
                continue
            name, upstream = step
            path.append((node_id, name))
            if state.get(upstream) == 1:
                begin = [n for n, _ in path].index(upstream)
                loop = [n for n, _ in path[begin:]]
                raise WorkflowFormatError(
                    "links form a cycle (each node takes an input from the next): "
                    + " → ".join(repr(n) for n in [*loop, upstream]),
                    node_id=upstream,
                    field=path[begin][1],
                    source=source,
                    hint="ComfyUI can only run graphs without loops",
                )
            if upstream in state:
                path.pop()
            else:
                state[upstream] = 1
                stack.append((upstream, _upstream(graph, upstream)))


def _upstream(graph: Mapping[str, Any], node_id: str) -> Iterator[tuple[str, str]]:
    """``(input_name, linked_node_id)`` for each link into ``node_id``."""
    for name, value in graph[node_id]["inputs"].items():
        if isinstance(value, list):
            yield name, value[0]


# --- overrides -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Override:
    """One ``NODE.INPUT=VALUE`` setting, parsed (see ``parse_override``)."""

    target: str  # node id, class_type or _meta.title
    input_name: str
    value: Any
    text: str  # the override as written, for error messages


def parse_override(text: str, *, source: str | None = None) -> Override:
    """Parse ``NODE.INPUT=VALUE``.

    The text splits at the first ``=``; the left side splits at its last ``.`` because titles may
    contain dots but input names never do (``KSampler (v1.5).seed=3`` works).  VALUE is JSON when
    it parses as JSON (``20``, ``7.5``, ``true``, ``"42"``, ``["4", 0]``), else the raw text
    (``a cat``): write ``'"123"'`` to get the string ``"123"``.  NaN and Infinity stay strings.
    ``source`` only names the workflow in error messages.
    """
    field = f"override {_short(text)!r}"
    if "=" not in text:
        raise WorkflowFormatError(
            "expected NODE.INPUT=VALUE (no '=')",
            field=field,
            source=source,
            hint="for example: 3.steps=20, KSampler.seed=42, 6.text=a red fox",
        )
    left, raw = text.split("=", 1)
    if "." not in left:
        raise WorkflowFormatError(
            "expected NODE.INPUT=VALUE (no '.' between the node and the input name)",
            field=field,
            source=source,
            hint="NODE is a node id, a class_type that occurs once, or a node title",
        )
    target, input_name = left.rsplit(".", 1)
    target, input_name = target.strip(), input_name.strip()
    if not target:
        raise WorkflowFormatError("the node before the '.' is empty", field=field, source=source)
    if not input_name:
        raise WorkflowFormatError(
            "the input name after the '.' is empty", field=field, source=source
        )
    try:
        value = _parse_value(raw)
    except _OutOfRange:
        raise WorkflowFormatError(
            f"the value {_short(raw.strip())} holds a number out of range for JSON",
            field=field,
            source=source,
        ) from None
    return Override(target, input_name, value, text)


class _OutOfRange(Exception):
    """A number that parses but does not survive JSON (``1e400`` becomes infinity)."""


def _parse_value(raw: str) -> Any:
    try:
        value = json.loads(raw, parse_constant=_reject_constant)
    except ValueError:  # JSONDecodeError too; an int of more than 4300 digits as well
        return raw
    except RecursionError:
        return raw
    try:
        json.dumps(value, allow_nan=False)
    except ValueError:
        raise _OutOfRange(raw) from None
    return value


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(name)


def resolve_node(graph: Mapping[str, Any], target: str, *, source: str | None = None) -> str:
    """The id of the one node that ``target`` names in a validated graph.

    A node id always wins.  Otherwise every node whose ``class_type`` or ``_meta.title`` equals
    ``target`` is a candidate, and there must be exactly one: an ambiguous name is an error
    listing the candidates, never a guess.
    """
    return _resolve(graph, target, source, "")


def _resolve(graph: Mapping[str, Any], target: str, source: str | None, origin: str) -> str:
    if target in graph:
        return target
    matches = [
        node_id
        for node_id, node in graph.items()
        if node.get("class_type") == target or _title(node) == target
    ]
    if len(matches) == 1:
        return matches[0]
    if matches:
        described = ", ".join(_describe(graph, node_id) for node_id in matches[:_MAX_LISTED])
        raise WorkflowFormatError(
            f"matches {len(matches)} nodes: {described}{origin}",
            field=f"target {target!r}",
            source=source,
            hint="use the node id (or give the nodes distinct titles)",
        )
    names = _unique([*graph, *(n.get("class_type") for n in graph.values())])
    names += _unique(t for t in map(_title, graph.values()) if t not in names)
    close = difflib.get_close_matches(target, names, n=3)
    suggestion = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise WorkflowFormatError(
        f"no node has this id, class_type or title{suggestion}"
        f" (nodes: {_listing(graph, describe=True)}){origin}",
        field=f"target {target!r}",
        source=source,
    )


def apply_overrides(
    graph: Mapping[str, Any],
    overrides: Iterable[str | Override],
    *,
    source: str | None = None,
    allow_new_inputs: bool = False,
    max_nodes: int = WORKFLOW_MAX_NODES,
) -> dict[str, Any]:
    """A copy of ``graph`` with each ``NODE.INPUT=VALUE`` applied in order (the last one wins).

    Setting an input the node does not have is an error listing the node's inputs, unless
    ``allow_new_inputs`` (for optional inputs the export left out).  The result is checked again,
    so an override that rewires a link to a missing node is caught here.
    """
    result: dict[str, Any] = _json_copy(graph, source)
    validate_structure(result, source=source, max_nodes=max_nodes)
    _apply_in_place(result, overrides, source=source, allow_new_inputs=allow_new_inputs)
    validate_structure(result, source=source, max_nodes=max_nodes)
    return result


def _apply_in_place(
    graph: dict[str, Any],
    overrides: Iterable[str | Override],
    *,
    source: str | None,
    allow_new_inputs: bool,
) -> None:
    if isinstance(overrides, str):  # one override, not an iterable of its characters
        overrides = [overrides]
    for item in overrides:
        override = parse_override(item, source=source) if isinstance(item, str) else item
        origin = f" (from override {_short(override.text)!r})"
        node_id = _resolve(graph, override.target, source, origin)
        inputs = graph[node_id]["inputs"]
        if override.input_name not in inputs and not allow_new_inputs:
            have = ", ".join(repr(name) for name in sorted(inputs)[:_MAX_LISTED]) or "none"
            raise WorkflowFormatError(
                f"no such input on this {graph[node_id]['class_type']} node (its inputs:"
                f" {have}){origin}",
                node_id=node_id,
                field=override.input_name,
                source=source,
                hint="check the spelling, or allow new inputs to add an optional one",
            )
        inputs[override.input_name] = _json_copy(override.value, source)


# --- seeds -----------------------------------------------------------------------------------


def seed_inputs(graph: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(node_id, input_name)`` of every seed that holds a number (a linked seed is skipped:
    it gets its value from the node it links to, which is found here itself when it has one)."""
    found: list[tuple[str, str]] = []
    for node_id, node in graph.items():
        for name in SEED_INPUT_NAMES:
            value = node.get("inputs", {}).get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                found.append((node_id, name))
    return found


def set_seeds(
    graph: Mapping[str, Any],
    seed: int | Literal["random"],
    *,
    rng: random.Random | None = None,
    source: str | None = None,
    max_nodes: int = WORKFLOW_MAX_NODES,
) -> tuple[dict[str, Any], dict[str, int]]:
    """A copy of ``graph`` with every numeric ``seed``/``noise_seed`` input set, and what changed.

    All seed inputs get the same value, also for ``"random"`` (one draw below
    ``RANDOM_SEED_BOUND``): then the seed reported back reproduces the run when given as a fixed
    seed.  Returns ``(new_graph, {node_id: seed})``; the mapping is empty when the graph has no
    seed input.  ``rng`` makes ``"random"`` repeatable in tests.
    """
    value = _seed_value(seed, rng, source)
    result: dict[str, Any] = _json_copy(graph, source)
    validate_structure(result, source=source, max_nodes=max_nodes)
    return result, _set_seeds_in_place(result, value)


def _set_seeds_in_place(graph: dict[str, Any], value: int) -> dict[str, int]:
    changed: dict[str, int] = {}
    for node_id, name in seed_inputs(graph):
        graph[node_id]["inputs"][name] = value
        changed[node_id] = value
    return changed


def _seed_value(seed: int | str, rng: random.Random | None, source: str | None) -> int:
    if seed == "random":
        chooser = rng if rng is not None else random.SystemRandom()
        return chooser.randrange(RANDOM_SEED_BOUND)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise WorkflowFormatError(
            f"a seed is an integer or 'random', not {_brief(seed)}", field="seed", source=source
        )
    if not 0 <= seed <= SEED_MAX:
        raise WorkflowFormatError(
            f"seed {seed} is outside ComfyUI's range 0..{SEED_MAX}", field="seed", source=source
        )
    return seed


# --- the immutable face ----------------------------------------------------------------------


@dataclass(frozen=True)
class NodeInfo:
    """What identifies a node to people: its id, type and (optional) title."""

    node_id: str
    class_type: str
    title: str | None


class Workflow:
    """A well-formed API-format workflow; every change returns a new ``Workflow``.

    It owns a private copy of the graph: nothing the caller holds can change it, and nothing it
    returns is its own data.

    >>> wf = Workflow({"1": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 20}}})
    >>> wf2, seeds = wf.with_overrides(["KSampler.steps=30"]).with_seed(42)
    >>> seeds, wf2.to_dict()["1"]["inputs"]
    ({'1': 42}, {'seed': 42, 'steps': 30})
    """

    __slots__ = ("_graph", "_source")

    _graph: dict[str, Any]
    _source: str | None

    def __init__(
        self,
        graph: Mapping[str, Any],
        *,
        source: str | None = None,
        max_nodes: int = WORKFLOW_MAX_NODES,
    ) -> None:
        owned = _json_copy(graph, source)
        validate_structure(owned, source=source, max_nodes=max_nodes)
        object.__setattr__(self, "_graph", owned)
        object.__setattr__(self, "_source", source)

    @classmethod
    def load(
        cls,
        source: WorkflowSource,
        *,
        max_bytes: int = WORKFLOW_MAX_BYTES,
        max_nodes: int = WORKFLOW_MAX_NODES,
        source_name: str | None = None,
    ) -> Workflow:
        """Load from a path, ``"-"`` (stdin), JSON bytes or a mapping (see ``load_workflow``)."""
        if isinstance(source, Workflow):
            return source
        graph, label = _load(source, max_bytes=max_bytes, source_name=source_name)
        validate_structure(graph, source=label, max_nodes=max_nodes)
        return cls._owning(graph, label)

    @classmethod
    def _owning(cls, graph: dict[str, Any], source: str | None) -> Workflow:
        """Wrap a dict this module just built and checked (no second copy)."""
        self = object.__new__(cls)
        object.__setattr__(self, "_graph", graph)
        object.__setattr__(self, "_source", source)
        return self

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Workflow is immutable; use with_overrides() or with_seed()")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Workflow is immutable")

    @property
    def source(self) -> str | None:
        """Where it came from (a path, ``<stdin>``, ``<bytes>``), for messages; None for a dict."""
        return self._source

    @property
    def node_ids(self) -> tuple[str, ...]:
        return tuple(self._graph)

    @property
    def nodes(self) -> tuple[NodeInfo, ...]:
        return tuple(
            NodeInfo(node_id, node["class_type"], _title(node))
            for node_id, node in self._graph.items()
        )

    def node(self, node_id: str) -> dict[str, Any]:
        """A copy of one node (``KeyError`` if there is no such id)."""
        return copy.deepcopy(self._graph[node_id])

    def seed_inputs(self) -> list[tuple[str, str]]:
        """Which ``(node_id, input_name)`` ``with_seed`` would change."""
        return seed_inputs(self._graph)

    def to_dict(self) -> dict[str, Any]:
        """A deep copy of the graph, ready to send as ComfyUI's ``prompt``."""
        return copy.deepcopy(self._graph)

    def to_json(self, *, indent: int | None = None) -> str:
        return json.dumps(self._graph, indent=indent, ensure_ascii=False)

    def with_overrides(
        self, overrides: Iterable[str | Override], *, allow_new_inputs: bool = False
    ) -> Workflow:
        """A new workflow with ``NODE.INPUT=VALUE`` overrides applied (see ``apply_overrides``)."""
        graph = copy.deepcopy(self._graph)
        _apply_in_place(graph, overrides, source=self._source, allow_new_inputs=allow_new_inputs)
        # Overrides never add nodes, so the node limit this workflow passed still holds.
        validate_structure(graph, source=self._source, max_nodes=len(graph))
        return Workflow._owning(graph, self._source)

    def with_seed(
        self, seed: int | Literal["random"], *, rng: random.Random | None = None
    ) -> tuple[Workflow, dict[str, int]]:
        """A new workflow with every seed set, and ``{node_id: seed}`` (see ``set_seeds``)."""
        value = _seed_value(seed, rng, self._source)
        graph = copy.deepcopy(self._graph)
        changed = _set_seeds_in_place(graph, value)
        return Workflow._owning(graph, self._source), changed

    def __len__(self) -> int:
        return len(self._graph)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._graph

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._graph))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Workflow):
            return NotImplemented
        return self._graph == other._graph

    __hash__ = None  # type: ignore[assignment]  # equal by content, which is mutable JSON data

    def __repr__(self) -> str:
        return f"Workflow(source={self._source!r}, nodes={len(self._graph)})"


# --- helpers ---------------------------------------------------------------------------------


def _node_error(
    message: str, node_id: str, key: str | None, source: str | None
) -> WorkflowFormatError:
    """An error about a node's own key (class_type, inputs), which is not an input name.

    ``WorkflowFormatError`` words ``field`` as "input 'x'", which would mislead here, so the key
    goes into the message and is set on ``field`` afterwards for programs.
    """
    exc = WorkflowFormatError(message, node_id=node_id, source=source)
    exc.field = key
    return exc


def _json_copy(value: Any, source: str | None, path: tuple[str, ...] = ()) -> Any:
    """A deep copy made of JSON types only (dict with str keys, list, str, int, float, bool, None).

    Tuples become lists, as ``json.dumps`` would send them.  Anything else is an error naming the
    node and input it sits in, instead of a TypeError at submit time.
    """
    try:
        return _copy_value(value, source, path)
    except RecursionError:
        raise WorkflowFormatError(
            _whole("is nested too deeply to be a workflow", source), source=source
        ) from None


def _copy_value(value: Any, source: str | None, path: tuple[str, ...]) -> Any:
    if value is None or isinstance(value, str | int | float):  # bool is an int
        return value
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str) and not path:
                _not_json(f"node id {key!r} is not a string; node ids are strings", source, path)
            if not isinstance(key, str):
                _not_json(f"key {key!r} is not a string", source, path)
            out[key] = _copy_value(item, source, (*path, key))
        return out
    if isinstance(value, list | tuple):
        return [_copy_value(item, source, path) for item in value]
    return _not_json(f"a {type(value).__name__} is not a JSON value", source, path)


def _not_json(message: str, source: str | None, path: Sequence[str]) -> NoReturn:
    node_id = path[0] if path else None
    field = path[2] if len(path) >= 3 and path[1] == "inputs" else None
    if node_id is not None and field is None and len(path) >= 2:
        message = f"{path[1]}: {message}"
    raise WorkflowFormatError(message, node_id=node_id, field=field, source=source)


def _whole(message: str, source: str | None) -> str:
    """A message about the whole workflow reads "x.json: has no nodes", or without a file name
    "the workflow has no nodes"."""
    return message if source else f"the workflow {message}"


def _title(node: Any) -> str | None:
    meta = node.get("_meta") if isinstance(node, Mapping) else None
    title = meta.get("title") if isinstance(meta, Mapping) else None
    return title if isinstance(title, str) else None


def _describe(graph: Mapping[str, Any], node_id: str) -> str:
    node = graph[node_id]
    title = _title(node)
    text = f"{node_id!r} ({node.get('class_type')}"
    if title and title != node.get("class_type"):
        text += f", title {title!r}"
    return text + ")"


def _listing(graph: Mapping[str, Any], *, describe: bool = False) -> str:
    ids = list(graph)
    shown = [(_describe(graph, i) if describe else repr(i)) for i in ids[:_MAX_LISTED]]
    more = f" and {len(ids) - _MAX_LISTED} more" if len(ids) > _MAX_LISTED else ""
    return ", ".join(shown) + more


def _unique(values: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(v for v in values if v is not None))


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _brief(value: Any, limit: int = 80) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    if not _utf8_ok(text):  # a lone surrogate: messages must stay printable
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return _short(text, limit)


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
