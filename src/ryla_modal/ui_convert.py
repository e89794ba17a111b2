"""Convert a UI-format ComfyUI workflow (the editor's saved canvas) into the API format.

ComfyUI's "Save"/"Export" writes the canvas: ``nodes`` with positions and widget values by
position, ``links`` as arrays, and since 2025 ``definitions.subgraphs`` for nodes that are whole
graphs of their own.  ``POST /prompt`` wants the API format instead: ``{node_id: {"class_type",
"inputs", "_meta": {"title"}}}``.  The front end builds it in ``graphToPrompt`` (ComfyUI_frontend
``src/utils/executionUtil.ts`` and litegraph's ``ExecutableNodeDTO``/``SubgraphNode``); this
module follows the same rules offline, with the deployment's ``/object_info`` standing in for the
node definitions the front end would have::

    object_info = load_object_info("object_info.json")  # parse once, keep it
    api = convert_ui_workflow(ui, object_info, source="flux.json")

The rules, as the front end applies them:

- **Widget values** are matched to inputs by position, in the node definition's ``input_order``
  (required, then optional), counting only inputs that get a widget (``INT``, ``FLOAT``,
  ``STRING``, ``BOOLEAN``, combos and the front end's own widget types; not ``forceInput``).
  Some widgets hold a slot in ``widgets_values`` but are never sent: the ``control_after_generate``
  companion after a seed (``seed``/``noise_seed`` INTs and any input with that option; two slots
  after a combo), a remote combo's refresh toggle and button, and one upload button at the end
  for image/video/audio upload combos.  A value missing at the end gets the input's default;
  extra values (saved by a newer node version) are ignored.  A dict ``widgets_values`` is read by
  name.  Strings of inputs with ``dynamicPrompts`` get the front end's ``{a|b}`` choice and
  comment stripping (``dynamic_prompts=False`` turns it off).  List values are sent wrapped as
  ``{"__value__": [...]}``, since ComfyUI reads every list input as a link.
- **Links** replace widget values: an input linked from another node (a converted widget too)
  becomes ``[node_id, slot]``.
- **Reroute** passes its input through; **Note**/**MarkdownNote** are dropped; a
  **PrimitiveNode** sends its value to every input it feeds.
- **Muted** nodes (mode 2) are not sent and the links from them are removed.  A node that loses
  a *required* input that way is dropped too, and so on downstream: ComfyUI would refuse to run it
  (and every output behind it).  If that leaves no output node, ``UIConversionError`` names the
  muted nodes.  **Bypassed** nodes (mode 4) are not sent; each consumer is wired to the bypassed
  node's input of the matching type instead.  A muted or bypassed subgraph node mutes its whole
  content (as the front end does since January 2026).
- **Subgraphs**: a node whose ``type`` is the id of an entry of ``definitions.subgraphs`` is
  replaced by that subgraph's nodes, with ids ``"<outer id>:<inner id>"`` (nested subgraphs add
  one level each, as ComfyUI's execution ids do).  A link from the subgraph's input node (id
  ``-10``) resolves to whatever feeds the outer node's matching input or, when nothing does, to
  the value of the widget promoted onto the outer node (its ``widgets_values`` /
  ``widgets_values_named``, else the inner widget's own value).  An outer link from a subgraph
  output resolves to the inner node wired to the output node (id ``-20``).  ``proxyWidgets``
  only tell the editor which inner widgets to show on the outer node; their values are saved in
  the inner nodes, where the conversion reads them.

Unknown node classes (custom nodes the deployment lacks, and front-end-only helpers such as
Set/Get nodes) are all named in one ``UIConversionError``.

Known gaps: nodes whose front-end extension computes the value at queue time (``Load3D``'s
captured canvas, webcam capture) cannot be reproduced offline; group nodes of the old
``workflow>`` kind are reported as unknown node types.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from ryla_modal.defaults import WORKFLOW_MAX_NODES
from ryla_modal.errors import WorkflowFormatError
from ryla_modal.workflow import is_ui_format, validate_structure

__all__ = [
    "MODE_BYPASS",
    "MODE_MUTED",
    "VIRTUAL_NODE_TYPES",
    "UIConversionError",
    "convert_ui_workflow",
    "is_ui_workflow",
]

#: litegraph's LGraphEventMode.NEVER ("mute" in the menu): the node is not sent.
MODE_MUTED: Final = 2
#: litegraph's LGraphEventMode.BYPASS: consumers are wired to the node's matching input.
MODE_BYPASS: Final = 4

#: Front-end-only node types with no class in /object_info.
VIRTUAL_NODE_TYPES: Final = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})
_DROPPED_VIRTUAL: Final = frozenset({"Note", "MarkdownNote"})

#: Node ids of a subgraph's own input and output nodes (litegraph SUBGRAPH_INPUT_ID/OUTPUT_ID).
SUBGRAPH_INPUT_NODE_ID: Final = "-10"
SUBGRAPH_OUTPUT_NODE_ID: Final = "-20"

#: Input types the front end turns into widgets: ComfyWidgets plus the core extensions' widgets.
#: Any other type is a socket only and takes no ``widgets_values`` slot.
_WIDGET_TYPES: Final = frozenset(
    {
        "INT",
        "FLOAT",
        "BOOLEAN",
        "STRING",
        "COMBO",
        "MARKDOWN",
        "IMAGEUPLOAD",
        "COLOR",
        "IMAGECOMPARE",
        "BOUNDING_BOX",
        "BOUNDING_BOXES",
        "CHART",
        "GALLERIA",
        "PAINTER",
        "TEXTAREA",
        "CURVE",
        "RANGE",
        "COLORS",
        "COMFY_DYNAMICCOMBO_V3",
    }
)
_SEED_NAMES: Final = ("seed", "noise_seed")  # INT widgets that get a control widget by default
_UPLOAD_FLAGS: Final = ("image_upload", "animated_image_upload", "video_upload", "audio_upload")
_TYPE_DEFAULTS: Final[Mapping[str, Any]] = {"INT": 0, "FLOAT": 0, "BOOLEAN": False, "STRING": ""}
_COMMENTS: Final = re.compile(r"/\*[\s\S]*?\*/|//.*")
_ESCAPED: Final = re.compile(r"\\([{}|])")
_IDS_SHOWN: Final = 3  # node ids named per unknown type
_VISIT_FACTOR: Final = 4  # nodes looked at while expanding subgraphs, per node allowed out


class UIConversionError(WorkflowFormatError):
    """A UI-format workflow that cannot be turned into the API format.

    ``unknown_types`` maps each node class the object_info lacks to the ids of the nodes using it
    (empty when the problem is something else)::

        try:
            api = convert_ui_workflow(ui, object_info)
        except UIConversionError as exc:
            missing = sorted(exc.unknown_types)  # ["SetNode", "UltimateSDUpscale"]
    """

    def __init__(
        self,
        message: str,
        *,
        node_id: str | None = None,
        field: str | None = None,
        source: str | None = None,
        hint: str | None = None,
        unknown_types: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        # Names come from the file (node types, titles): a lone surrogate in one would make the
        # message unprintable, so it is shown escaped.
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")
        super().__init__(message, node_id=node_id, field=field, source=source, hint=hint)
        self.unknown_types: dict[str, list[str]] = {
            k: list(v) for k, v in (unknown_types or {}).items()
        }


def is_ui_workflow(obj: object) -> bool:
    """True for a workflow saved by the editor (``nodes`` and ``links`` arrays), not the API one."""
    return is_ui_format(obj)


def convert_ui_workflow(
    ui: Mapping[str, Any],
    object_info: Mapping[str, Any],
    *,
    source: str | None = None,
    dynamic_prompts: bool = True,
    rng: random.Random | None = None,
    max_nodes: int = WORKFLOW_MAX_NODES,
) -> dict[str, Any]:
    """The API-format graph ComfyUI's front end would queue for ``ui``; never modifies ``ui``.

    ``object_info`` is the deployment's ``GET /object_info`` (parsed once by the caller).
    ``rng`` picks the ``{a|b}`` options of dynamic prompts (a fresh ``random.Random`` by default,
    as the front end picks anew on every queue).  The result passes ``validate_structure``.
    Raises ``UIConversionError`` (a ``WorkflowFormatError``) naming the node, input or node types
    at fault.
    """
    if not is_ui_workflow(ui):
        raise UIConversionError(
            "not a UI-format workflow (no 'nodes' and 'links' arrays)", source=source
        )
    # The front end picks {a|b} options with Math.random: wording, not secrets.
    pick = rng or random.Random()  # noqa: S311
    converter = _Converter(ui, object_info, source, dynamic_prompts, pick, max_nodes)
    try:
        graph = converter.run()
    except RecursionError:
        raise UIConversionError(
            "links are chained too deeply (hundreds of reroutes, bypassed nodes or nested"
            " subgraphs in a row) to resolve",
            source=source,
        ) from None
    validate_structure(graph, source=source, max_nodes=max_nodes)
    return graph


# --- data shapes --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Link:
    origin_id: str
    origin_slot: int
    target_id: str
    target_slot: int


@dataclass(frozen=True)
class _Widget:
    name: str
    type: str
    opts: Mapping[str, Any]
    options: Sequence[Any] | None
    control: bool  # followed by a control_after_generate slot


@dataclass(frozen=True)
class _Out:
    """A resolved input: a link to a node's output (a muted node's too, removed later)."""

    node_id: str
    slot: int


@dataclass(frozen=True)
class _Value:
    """A resolved input that is a plain value (a primitive's, or a promoted widget's)."""

    value: Any


_Resolved = _Out | _Value | None


@dataclass
class _Scope:
    """The root graph, or one instance of a subgraph (its nodes, links and where it sits)."""

    prefix: tuple[str, ...]  # execution ids of the enclosing subgraph nodes
    nodes: dict[str, Mapping[str, Any]]
    links: dict[str, _Link]
    definition: Mapping[str, Any] | None = None
    instance: Mapping[str, Any] | None = None  # the subgraph node, in ``parent``
    parent: _Scope | None = None
    children: dict[str, _Scope] = field(default_factory=dict)
    promoted: dict[int, Any] | None = None

    def exec_id(self, node_id: str) -> str:
        return ":".join((*self.prefix, node_id))


# --- the conversion -----------------------------------------------------------------------------


class _Converter:
    def __init__(
        self,
        ui: Mapping[str, Any],
        object_info: Mapping[str, Any],
        source: str | None,
        dynamic_prompts: bool,
        rng: random.Random,
        max_nodes: int,
    ) -> None:
        self.object_info = object_info
        self.source = source
        self.dynamic_prompts = dynamic_prompts
        self.rng = rng
        self.max_nodes = max_nodes
        self.definitions = self._definitions(ui)
        self.root = _Scope((), *self._graph(ui, None))
        self.layouts: dict[str, list[_Widget | None]] = {}
        self.values: dict[tuple[str, str], dict[str, Any]] = {}
        self.emitted: list[tuple[_Scope, Mapping[str, Any]]] = []
        self.unknown: dict[str, list[str]] = {}
        self.visits = 0

    # -- reading the document ---------------------------------------------------------------

    def _error(self, message: str, node_id: str | None = None, **kw: Any) -> UIConversionError:
        return UIConversionError(message, node_id=node_id, source=self.source, **kw)

    def _definitions(self, ui: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
        defs = ui.get("definitions")
        subgraphs = defs.get("subgraphs") if isinstance(defs, Mapping) else None
        if subgraphs is None:
            return {}
        if not isinstance(subgraphs, list):
            raise self._error("definitions.subgraphs must be an array")
        out: dict[str, Mapping[str, Any]] = {}
        for index, sub in enumerate(subgraphs):
            if not isinstance(sub, Mapping) or not isinstance(sub.get("id"), str):
                raise self._error(f"definitions.subgraphs[{index}] has no string 'id'")
            for key in ("nodes", "inputs", "outputs"):
                if not isinstance(sub.get(key, []), list):
                    raise self._error(f"subgraph {sub['id']!r}: '{key}' must be an array")
            out[sub["id"]] = sub
        return out

    def _graph(
        self, graph: Mapping[str, Any], subgraph: str | None
    ) -> tuple[dict[str, Mapping[str, Any]], dict[str, _Link]]:
        where = f"subgraph {subgraph!r}: " if subgraph else ""
        nodes: dict[str, Mapping[str, Any]] = {}
        raw_nodes = graph.get("nodes")
        if not isinstance(raw_nodes, list):
            raise self._error(f"{where}'nodes' must be an array")
        for index, node in enumerate(raw_nodes):
            if not isinstance(node, Mapping):
                raise self._error(f"{where}nodes[{index}] is not an object")
            node_id = _node_id(node.get("id"))
            if node_id is None:
                raise self._error(f"{where}nodes[{index}] has no usable 'id'")
            if not isinstance(node.get("type"), str) or not node["type"]:
                raise self._error(f"{where}node has no 'type'", node_id)
            for key in ("inputs", "outputs"):
                if not isinstance(node.get(key) or [], list):
                    raise self._error(f"{where}'{key}' must be an array", node_id)
            nodes[node_id] = node
        links: dict[str, _Link] = {}
        raw_links = graph.get("links") or []
        if not isinstance(raw_links, list):
            raise self._error(f"{where}'links' must be an array")
        for index, raw in enumerate(raw_links):
            if raw is None:  # litegraph leaves holes in old saves
                continue
            parsed = _parse_link(raw)
            if parsed is None:
                raise self._error(
                    f"{where}links[{index}] is not [id, origin_id, origin_slot, target_id,"
                    " target_slot, type] nor an object with those keys"
                )
            link_id, link = parsed
            links[link_id] = link
        return nodes, links

    def _child(self, scope: _Scope, node_id: str) -> _Scope:
        """The scope of the subgraph instance ``node_id`` in ``scope`` (built once)."""
        child = scope.children.get(node_id)
        if child is None:
            node = scope.nodes[node_id]
            definition = self.definitions[node["type"]]
            nodes, links = self._graph(definition, str(definition.get("name") or node["type"]))
            child = _Scope((*scope.prefix, node_id), nodes, links, definition, node, scope)
            scope.children[node_id] = child
        return child

    # -- walking ------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        self._walk(self.root, ())
        if self.unknown:
            raise self._unknown_error()
        graph: dict[str, Any] = {}
        for scope, node in self.emitted:
            node_id = scope.exec_id(str(node["id"]))
            graph[node_id] = self._api_node(scope, node)
        self._drop_dangling(graph)
        return graph

    def _walk(self, scope: _Scope, open_defs: tuple[str, ...]) -> None:
        for node_id, node in scope.nodes.items():
            self.visits += 1
            if self.visits > self.max_nodes * _VISIT_FACTOR:
                raise self._error(
                    f"expanding the subgraphs gives more than {self.max_nodes:,} nodes"
                )
            node_type = node["type"]
            mode = node.get("mode")
            if node_type in self.definitions:
                if mode in (MODE_MUTED, MODE_BYPASS):
                    continue
                if node_type in open_defs:
                    raise self._error(
                        "subgraph contains itself: "
                        + " → ".join(repr(self._def_name(t)) for t in (*open_defs, node_type)),
                        scope.exec_id(node_id),
                    )
                self._walk(self._child(scope, node_id), (*open_defs, node_type))
            elif node_type in VIRTUAL_NODE_TYPES or mode in (MODE_MUTED, MODE_BYPASS):
                continue
            else:
                exec_id = scope.exec_id(node_id)
                if not isinstance(self.object_info.get(node_type), Mapping):
                    self.unknown.setdefault(node_type, []).append(exec_id)
                self.emitted.append((scope, node))
                if len(self.emitted) > self.max_nodes:
                    raise self._error(
                        f"has more than {self.max_nodes:,} nodes once subgraphs are expanded"
                    )

    def _def_name(self, def_id: str) -> str:
        return str(self.definitions[def_id].get("name") or def_id)

    def _unknown_error(self) -> UIConversionError:
        # Every type is named (the user installs them all in one go); node ids are examples.
        names = sorted(self.unknown)
        parts = []
        for name in names:
            ids = self.unknown[name]
            shown = ", ".join(ids[:_IDS_SHOWN])
            if len(ids) > _IDS_SHOWN:
                shown += f" and {len(ids) - _IDS_SHOWN} more"
            parts.append(f"{name} (node{'s' if len(ids) > 1 else ''} {shown})")
        hint = None
        if any(n.startswith(("workflow>", "workflow/")) for n in names):
            hint = "workflow>… nodes are old group nodes: convert them to subgraphs in ComfyUI"
        return self._error(
            f"unknown node types: {', '.join(parts)} — install the custom nodes on the"
            " deployment or export the API format",
            hint=hint,
            unknown_types=self.unknown,
        )

    # -- one node -----------------------------------------------------------------------------

    def _api_node(self, scope: _Scope, node: Mapping[str, Any]) -> dict[str, Any]:
        node_type = node["type"]
        class_def = self.object_info[node_type]
        inputs: dict[str, Any] = {}
        for widget, value in self._widget_values(scope, node).items():
            inputs[widget] = _api_value(self._serialize(class_def, widget, value))
        for index, slot in enumerate(node.get("inputs") or []):
            if not isinstance(slot, Mapping) or not isinstance(slot.get("name"), str):
                raise self._error(f"inputs[{index}] has no name", scope.exec_id(str(node["id"])))
            resolved = self._resolve_input(scope, node, index, None, set())
            if isinstance(resolved, _Out):
                inputs[slot["name"]] = [resolved.node_id, resolved.slot]
            elif isinstance(resolved, _Value):
                inputs[slot["name"]] = _api_value(resolved.value)
        title = node.get("title")
        if not isinstance(title, str) or not title:
            title = class_def.get("display_name") or node_type
        return {"inputs": inputs, "class_type": node_type, "_meta": {"title": title}}

    def _serialize(self, class_def: Mapping[str, Any], name: str, value: Any) -> Any:
        """What the widget's serializeValue sends: dynamic prompts resolved."""
        if not self.dynamic_prompts or not isinstance(value, str):
            return value
        spec = _input_spec(class_def, name)
        if spec is not None and spec[1].get("dynamicPrompts") is True:
            return _dynamic_prompt(value, self.rng.random)
        return value

    def _layout(self, node_type: str, saved: Callable[[str, int], Any]) -> list[_Widget | None]:
        class_def = self.object_info[node_type]
        if not _has_dynamic_combo(class_def):
            layout = self.layouts.get(node_type)
            if layout is None:
                layout = self.layouts[node_type] = _widget_layout(class_def, saved)
            return layout
        return _widget_layout(class_def, saved)

    def _widget_values(self, scope: _Scope, node: Mapping[str, Any]) -> dict[str, Any]:
        """Each widget's value, as the front end restores it from ``widgets_values``."""
        key = (":".join(scope.prefix), str(node["id"]))
        cached = self.values.get(key)
        if cached is not None:
            return cached
        class_def = self.object_info[node["type"]]
        raw = node.get("widgets_values")
        if isinstance(raw, Mapping):
            saved_map = raw

            def saved(name: str, _index: int) -> Any:
                return saved_map.get(name)

            layout = self._layout(node["type"], saved)
            values = {w.name: raw[w.name] if w.name in raw else _default(w) for w in layout if w}
        else:
            listed = list(raw) if isinstance(raw, list) else []
            listed = _migrate_force_input(class_def, listed)

            def by_index(_name: str, index: int) -> Any:
                return listed[index] if index < len(listed) else None

            layout = self._layout(node["type"], by_index)
            values = {}
            for index, widget in enumerate(layout):
                if widget is not None:
                    values[widget.name] = listed[index] if index < len(listed) else _default(widget)
        self.values[key] = values
        return values

    # -- resolving links (litegraph ExecutableNodeDTO.resolveInput / resolveOutput) ------------

    def _resolve_input(
        self,
        scope: _Scope,
        node: Mapping[str, Any],
        index: int,
        want: Any,
        visited: set[tuple[str, ...]],
    ) -> _Resolved:
        node_id = str(node["id"])
        guard = (*scope.prefix, node_id, "I", str(index))
        if guard in visited:
            raise self._error("links loop back to this node", scope.exec_id(node_id))
        visited.add(guard)
        slots = node.get("inputs") or []
        if index >= len(slots) or not isinstance(slots[index], Mapping):
            return None
        slot = slots[index]
        link_id = slot.get("link")
        if link_id is None:
            return None
        link = scope.links.get(str(link_id))
        if link is None:
            raise self._error(
                f"is connected by link {link_id}, which is not in the links array",
                scope.exec_id(node_id),
                field=str(slot.get("name")),
            )
        if link.origin_id == SUBGRAPH_INPUT_NODE_ID and scope.definition is not None:
            return self._resolve_subgraph_input(scope, link.origin_slot, visited)
        origin = scope.nodes.get(link.origin_id)
        if origin is None:
            raise self._error(
                f"is linked from node {scope.exec_id(link.origin_id)!r}, which does not exist",
                scope.exec_id(node_id),
                field=str(slot.get("name")),
            )
        return self._resolve_output(
            scope, origin, link.origin_slot, want if want is not None else slot.get("type"), visited
        )

    def _resolve_output(
        self,
        scope: _Scope,
        node: Mapping[str, Any],
        slot: int,
        want: Any,
        visited: set[tuple[str, ...]],
    ) -> _Resolved:
        node_id = str(node["id"])
        guard = (*scope.prefix, node_id, "O", str(slot))
        if guard in visited:
            raise self._error("links loop back to this node", scope.exec_id(node_id))
        visited.add(guard)
        node_type = node["type"]
        mode = node.get("mode")
        if mode == MODE_BYPASS:
            index = _bypass_slot(node, self._output_type(node, slot), slot, want)
            if index is None:
                return None
            return self._resolve_input(scope, node, index, None, visited)
        if mode == MODE_MUTED:
            return _Out(scope.exec_id(node_id), slot)
        if node_type in self.definitions:
            return self._resolve_subgraph_output(scope, node_id, slot, want, visited)
        if node_type == "PrimitiveNode":
            values = node.get("widgets_values")
            if isinstance(values, list) and values:
                return _Value(values[0])
            return None
        if node_type in _DROPPED_VIRTUAL:
            return None
        if node_type == "Reroute":
            return self._resolve_input(scope, node, slot, want, visited)
        return _Out(scope.exec_id(node_id), slot)

    def _output_type(self, node: Mapping[str, Any], slot: int) -> Any:
        outputs = node.get("outputs") or []
        if slot < len(outputs) and isinstance(outputs[slot], Mapping):
            return outputs[slot].get("type")
        definition = self.definitions.get(node["type"])
        if definition is not None:
            d_outputs = definition.get("outputs") or []
            if slot < len(d_outputs) and isinstance(d_outputs[slot], Mapping):
                return d_outputs[slot].get("type")
        return None

    def _resolve_subgraph_output(
        self,
        scope: _Scope,
        node_id: str,
        slot: int,
        want: Any,
        visited: set[tuple[str, ...]],
    ) -> _Resolved:
        child = self._child(scope, node_id)
        assert child.definition is not None
        outputs = child.definition.get("outputs") or []
        if slot >= len(outputs) or not isinstance(outputs[slot], Mapping):
            raise self._error(f"subgraph has no output {slot}", scope.exec_id(node_id))
        for link_id in outputs[slot].get("linkIds") or []:
            link = child.links.get(str(link_id))
            if link is None:
                continue
            if link.origin_id == SUBGRAPH_INPUT_NODE_ID:  # an input wired straight to an output
                return self._resolve_subgraph_input(child, link.origin_slot, visited)
            inner = child.nodes.get(link.origin_id)
            if inner is None:
                raise self._error(
                    f"subgraph output {slot} is linked from inner node {link.origin_id!r},"
                    " which does not exist",
                    scope.exec_id(node_id),
                )
            return self._resolve_output(child, inner, link.origin_slot, want, visited)
        return None

    def _resolve_subgraph_input(
        self, scope: _Scope, slot: int, visited: set[tuple[str, ...]]
    ) -> _Resolved:
        """An inner link from the subgraph's input node: follow the outer node's input."""
        assert scope.definition is not None and scope.instance is not None
        assert scope.parent is not None
        outer = scope.instance
        d_inputs = scope.definition.get("inputs") or []
        if slot >= len(d_inputs) or not isinstance(d_inputs[slot], Mapping):
            raise self._error(
                f"an inner link uses subgraph input {slot}, which the subgraph does not have",
                ":".join(scope.prefix),
            )
        index = _outer_input_index(outer, d_inputs, slot)
        if index is not None:
            link_id = (outer.get("inputs") or [])[index].get("link")
            if link_id is not None:
                return self._resolve_input(scope.parent, outer, index, None, visited)
        value = self._promoted_values(scope).get(slot)
        return None if value is None else _Value(value)

    # -- widgets promoted onto a subgraph node ------------------------------------------------

    def _promoted_values(self, scope: _Scope) -> dict[int, Any]:
        """Subgraph input slot -> the value of the widget shown for it on the outer node."""
        if scope.promoted is not None:
            return scope.promoted
        assert scope.definition is not None and scope.instance is not None
        d_inputs = scope.definition.get("inputs") or []
        sources: list[tuple[int, Any, bool]] = []  # (slot, inner value, has a control slot)
        for slot in range(len(d_inputs)):
            found = self._widget_source(scope, slot, ())
            if found is not None:
                sources.append((slot, *found))
        outer = scope.instance
        named = outer.get("widgets_values_named")
        saved = outer.get("widgets_values")
        result: dict[int, Any] = {}
        extra_slots = isinstance(saved, list) and len(saved) > len(sources)
        position = 0
        for slot, inner_value, control in sources:
            name = d_inputs[slot].get("name")
            value: Any = None
            if isinstance(named, Mapping) and name in named:
                value = named[name]
            elif isinstance(saved, Mapping):
                value = saved.get(name)
            elif isinstance(saved, list) and position < len(saved):
                value = saved[position]
            position += 2 if extra_slots and control else 1
            result[slot] = inner_value if value is None else value
        scope.promoted = result
        return result

    def _widget_source(
        self, scope: _Scope, slot: int, seen: tuple[str, ...]
    ) -> tuple[Any, bool] | None:
        """(value, has control) of the first inner widget subgraph input ``slot`` feeds."""
        assert scope.definition is not None
        d_input = (scope.definition.get("inputs") or [])[slot]
        if not isinstance(d_input, Mapping):
            return None
        for link_id in d_input.get("linkIds") or []:
            link = scope.links.get(str(link_id))
            target = scope.nodes.get(link.target_id) if link else None
            if link is None or target is None:
                continue
            slots = target.get("inputs") or []
            t_input = next(
                (s for s in slots if isinstance(s, Mapping) and s.get("link") == link_id),
                slots[link.target_slot] if link.target_slot < len(slots) else None,
            )
            if not isinstance(t_input, Mapping):
                continue
            name = t_input.get("name")
            t_type = target["type"]
            if t_type in self.definitions:
                child = self._child(scope, str(target["id"]))
                assert child.definition is not None
                inner_inputs = child.definition.get("inputs") or []
                inner = next(
                    (
                        i
                        for i, d in enumerate(inner_inputs)
                        if isinstance(d, Mapping) and d.get("name") == name
                    ),
                    None,
                )
                if inner is None or t_type in seen:
                    continue
                found = self._widget_source(child, inner, (*seen, t_type))
                if found is not None:
                    promoted = self._promoted_values(child)
                    return (promoted.get(inner, found[0]), found[1])
                continue
            if not isinstance(name, str):
                continue
            if isinstance(self.object_info.get(t_type), Mapping):
                values = self._widget_values(scope, target)
                if name in values:
                    widget = next(
                        (w for w in self._layout(t_type, _no_saved) if w and w.name == name),
                        None,
                    )
                    return values[name], bool(widget and widget.control)
            if isinstance(t_input.get("widget"), Mapping):
                # A widget for the ComfyUI that saved the file (a newer node version): it holds a
                # slot in the outer node's widgets_values, so count it to keep the others aligned.
                return None, False
        return None

    # -- muted nodes: remove what cannot run ---------------------------------------------------

    def _drop_dangling(self, graph: dict[str, Any]) -> None:
        """Remove links to nodes not sent; drop nodes that lose a required input that way."""
        had_outputs = self._output_nodes(graph)
        muted: set[str] = set()
        changed = True
        while changed:  # bounded: every round removes a node or ends
            changed = False
            for node_id in list(graph):
                node = graph[node_id]
                required = _required_inputs(self.object_info[node["class_type"]])
                lost = False
                for name, value in list(node["inputs"].items()):
                    if isinstance(value, list) and value and value[0] not in graph:
                        muted.add(str(value[0]))
                        del node["inputs"][name]
                        lost = lost or name in required
                if lost:
                    del graph[node_id]
                    changed = True
        if had_outputs and not self._output_nodes(graph):
            shown = ", ".join(sorted(n for n in muted if n not in self._emitted_ids())[:10])
            raise self._error(
                "nothing left to run: every output node depends on a muted node"
                + (f" ({shown})" if shown else ""),
                hint="unmute (Ctrl+M) the nodes the outputs need, or bypass them (Ctrl+B)",
            )

    def _emitted_ids(self) -> set[str]:
        return {scope.exec_id(str(node["id"])) for scope, node in self.emitted}

    def _output_nodes(self, graph: Mapping[str, Any]) -> list[str]:
        return [
            n
            for n, node in graph.items()
            if self.object_info[node["class_type"]].get("output_node") is True
        ]


# --- node definitions -----------------------------------------------------------------------------


def _ordered_inputs(inputs: Any, order: Any) -> Iterator[tuple[str, str, Any, Mapping[str, Any]]]:
    """(group, name, type, options) of each declared input, in the front end's order."""
    if not isinstance(inputs, Mapping):
        return
    for group in ("required", "optional"):
        specs = inputs.get(group)
        if not isinstance(specs, Mapping):
            continue
        names = order.get(group) if isinstance(order, Mapping) else None
        for name in names if isinstance(names, list) else list(specs):
            spec = specs.get(name)
            if not isinstance(spec, list | tuple) or not spec:
                continue
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], Mapping) else {}
            yield group, name, spec[0], opts


def _is_widget(kind: Any, opts: Mapping[str, Any]) -> bool:
    if opts.get("forceInput") is True:
        return False
    kind = opts.get("widgetType", kind)
    return isinstance(kind, list) or (isinstance(kind, str) and kind in _WIDGET_TYPES)


def _widget_layout(
    class_def: Mapping[str, Any], saved: Callable[[str, int], Any]
) -> list[_Widget | None]:
    """The node's widgets in ``widgets_values`` order; None marks a slot that is not sent."""
    layout: list[_Widget | None] = []
    upload = False

    def walk(inputs: Any, order: Any, prefix: str) -> None:
        nonlocal upload
        for _group, key, kind, opts in _ordered_inputs(inputs, order):
            if not _is_widget(kind, opts):
                continue
            kind = opts.get("widgetType", kind)
            name = prefix + key
            if kind == "COMFY_DYNAMICCOMBO_V3":
                choices = [o for o in opts.get("options") or [] if isinstance(o, Mapping)]
                keys = [o.get("key") for o in choices]
                layout.append(_Widget(name, "COMBO", opts, keys, False))
                value = saved(name, len(layout) - 1)
                chosen = next((o for o in choices if o.get("key") == value), None)
                if chosen is None and choices and value is None:
                    chosen = choices[0]
                if chosen is not None:
                    walk(chosen.get("inputs"), None, f"{name}.")
                continue
            combo = isinstance(kind, list) or kind == "COMBO"
            options = kind if isinstance(kind, list) else opts.get("options")
            control = bool(opts.get("control_after_generate"))
            if kind == "INT" and "control_after_generate" not in opts:
                control = key in _SEED_NAMES
            layout.append(_Widget(name, "COMBO" if combo else str(kind), opts, options, control))
            remote = opts.get("remote")
            if isinstance(remote, Mapping) and remote.get("refresh_button"):
                layout.extend((None, None))  # auto-refresh toggle, refresh button
            if control:
                layout.append(None)  # control_after_generate
                if combo and not opts.get("multi_select"):
                    layout.append(None)  # control_filter_list
            if combo and any(opts.get(flag) for flag in _UPLOAD_FLAGS):
                upload = True

    walk(class_def.get("input"), class_def.get("input_order"), "")
    if upload:
        layout.append(None)  # the upload button is added after all other widgets
    return layout


def _no_saved(_name: str, _index: int) -> Any:
    return None


def _has_dynamic_combo(class_def: Mapping[str, Any]) -> bool:
    return any(
        opts.get("widgetType", kind) == "COMFY_DYNAMICCOMBO_V3"
        for _g, _n, kind, opts in _ordered_inputs(
            class_def.get("input"), class_def.get("input_order")
        )
    )


def _migrate_force_input(class_def: Mapping[str, Any], values: list[Any]) -> list[Any]:
    """Old saves kept a ``widgets_values`` slot for ``forceInput`` inputs; drop those slots."""
    flags: list[bool] = []
    for _group, _name, kind, opts in _ordered_inputs(
        class_def.get("input"), class_def.get("input_order")
    ):
        forced = opts.get("forceInput") is True
        if not forced and not _is_widget(kind, opts):
            continue
        flags.append(forced)
        if opts.get("control_after_generate"):
            flags.append(False)
    if any(flags) and len(flags) == len(values):
        return [v for v, forced in zip(values, flags, strict=True) if not forced]
    return values


def _default(widget: _Widget) -> Any:
    if "default" in widget.opts:
        return widget.opts["default"]
    if widget.type == "COMBO":
        return widget.options[0] if widget.options else None
    return _TYPE_DEFAULTS.get(widget.type)


def _input_spec(class_def: Mapping[str, Any], name: str) -> tuple[Any, Mapping[str, Any]] | None:
    for _group, key, kind, opts in _ordered_inputs(class_def.get("input"), None):
        if key == name:
            return kind, opts
    return None


def _required_inputs(class_def: Mapping[str, Any]) -> set[str]:
    inputs = class_def.get("input")
    required = inputs.get("required") if isinstance(inputs, Mapping) else None
    return set(required) if isinstance(required, Mapping) else set()


# --- small pure helpers ---------------------------------------------------------------------------


def _node_id(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | str) and str(value):
        return str(value)
    return None


def _slot(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _parse_link(raw: Any) -> tuple[str, _Link] | None:
    if isinstance(raw, list) and len(raw) >= 5:
        link_id, origin, o_slot, target, t_slot = raw[:5]
    elif isinstance(raw, Mapping):
        link_id, origin, o_slot = raw.get("id"), raw.get("origin_id"), raw.get("origin_slot")
        target, t_slot = raw.get("target_id"), raw.get("target_slot")
    else:
        return None
    ids = (_node_id(link_id), _node_id(origin), _node_id(target))
    slots = (_slot(o_slot), _slot(t_slot))
    if None in ids or None in slots:
        return None
    return str(ids[0]), _Link(str(ids[1]), int(o_slot), str(ids[2]), int(t_slot))


def _outer_input_index(outer: Mapping[str, Any], d_inputs: Sequence[Any], slot: int) -> int | None:
    """Which of the subgraph node's saved inputs is subgraph input ``slot`` (by name, as
    litegraph rebinds them; saved files drop unlinked widget inputs, so positions shift)."""
    name = d_inputs[slot].get("name")
    saved = outer.get("inputs") or []
    for index, item in enumerate(saved):
        if isinstance(item, Mapping) and item.get("name") == name:
            return index
    return None


def _valid_connection(left: Any, right: Any) -> bool:
    """litegraph's LiteGraph.isValidConnection for slot types."""
    a = 0 if left in ("", "*") else left
    b = 0 if right in ("", "*") else right
    if not a or not b or a == b:
        return True
    first, second = str(a).lower(), str(b).lower()
    if "," not in first and "," not in second:
        return first == second
    return any(_valid_connection(x, y) for x in first.split(",") for y in second.split(","))


def _bypass_slot(node: Mapping[str, Any], out_type: Any, slot: int, want: Any) -> int | None:
    """The input a bypassed node passes to output ``slot`` (litegraph's #getBypassSlotIndex)."""
    slots = [s if isinstance(s, Mapping) else {} for s in node.get("inputs") or []]
    if not slots:
        return None
    if want in ("*", "", None):
        return slot if len(slots) > slot else 0
    if (
        slot < len(slots)
        and _valid_connection(slots[slot].get("type"), out_type)
        and _valid_connection(slots[slot].get("type"), want)
    ):
        return slot
    for index, item in enumerate(slots):
        if item.get("type") == want:
            return index
    for index, item in enumerate(slots):
        if _valid_connection(item.get("type"), out_type) and _valid_connection(
            item.get("type"), want
        ):
            return index
    return None


def _api_value(value: Any) -> Any:
    # ComfyUI reads a list input as a link; the front end wraps list values so they stay values.
    return {"__value__": value} if isinstance(value, list) else value


def _dynamic_prompt(text: str, pick: Callable[[], float]) -> str:
    """The front end's processDynamicPrompt: strip C comments, choose one of each ``{a|b|c}``."""
    text = _COMMENTS.sub("", text)
    pos = 0
    out: list[str] = []

    def choice() -> str:
        nonlocal pos
        options: list[str] = []
        current: list[str] = []
        depth = 0
        while pos < len(text):
            char = text[pos]
            pos += 1
            if char == "\\":
                current.append("\\" + text[pos : pos + 1])
                pos += 1
                continue
            if char == "{":
                depth += 1
            elif char == "}":
                if not depth:
                    break
                depth -= 1
            elif char == "|" and not depth:
                options.append("".join(current))
                current = []
                continue
            current.append(char)
        options.append("".join(current))
        return _dynamic_prompt(options[int(pick() * len(options))], pick)

    while pos < len(text):
        char = text[pos]
        pos += 1
        if char == "\\":
            out.append("\\" + text[pos : pos + 1])
            pos += 1
        elif char == "{":
            out.append(choice())
        else:
            out.append(char)
    return _ESCAPED.sub(r"\1", "".join(out))
