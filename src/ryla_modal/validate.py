"""Check an API-format workflow against ComfyUI's ``/object_info`` without ComfyUI.

A broken workflow sent to a cold GPU container costs minutes before ComfyUI says "no"; this module
says the same "no" in milliseconds, in ComfyUI's own words.  It mirrors ``validate_prompt`` and
``validate_inputs`` of ComfyUI 0.3.64 (``execution.py``) and produces the same error ``type``s,
``message``s, ``details`` and ``extra_info`` fields, so a client that understands ComfyUI's
HTTP 400 body understands ours::

    object_info = load_object_info("object_info.json")  # parse once, keep it
    extra = {"checkpoints": ["sd15.safetensors"]}  # files on the models volume
    report = check_workflow(workflow, object_info, extra_models=extra)
    if not report.ok:
        return 422, report.to_comfy_body()  # {"error": {...}, "node_errors": {...}}

What is checked, as ComfyUI does it:

- every node has a known ``class_type`` (else top-level ``invalid_prompt``, first bad node wins);
- at least one output node (``output_node: true``), else ``prompt_no_outputs``;
- for every node an output depends on: required inputs present (``required_input_missing``),
  links well formed (``bad_linked_input``), the linked output's type against the input's type
  (``return_type_mismatch``; ``*`` matches anything, ``"A,B"`` matches when the sets overlap),
  widget values convertible the way ComfyUI converts them (``int(v)``, ``float(v)``, ``str(v)``,
  ``bool(v)``: ``"64"`` and ``3.7`` pass for INT, ``"abc"`` does not; ``invalid_input_type``),
  ``min``/``max`` (``value_smaller_than_min`` / ``value_bigger_than_max``) and enum values
  (``value_not_in_list``, both the old ``[[...], {}]`` form and ``["COMBO", {"options": [...]}]``).

Where we knowingly differ from 0.3.64:

- A link to a missing node or a missing output slot makes ComfyUI raise inside its recursion and
  report a Python ``KeyError``/``IndexError`` with a traceback; we report the same error ``type``
  (``exception_during_inner_validation``, or ``exception_during_validation`` on an output node)
  with a sentence naming the input, the node and the slot, and an empty ``traceback``.
- A link's slot must be an integer from 0 to the last output; ComfyUI's ``RETURN_TYPES[slot]``
  would also take ``-1`` or ``true``.  A top-level ``invalid_prompt`` also names the node in
  ``extra_info`` (``node_id``, ``class_type``), as later ComfyUI releases do; 0.3.64 left it empty.
- ComfyUI stops at the first bad link and does not look past a mismatched link; we report every
  problem of every node an output depends on, so one round trip shows them all.
- ``COMBO`` inputs with ``options`` (the newer node API) are checked against their options, as
  later ComfyUI releases do (0.3.64 only checked the old list form).  Combos marked ``remote``
  are skipped: their options live elsewhere.
- Dependency cycles are reported as ``dependency_cycle`` (later ComfyUI) instead of a
  ``RecursionError``.
- By default the whole prompt fails when *any* output fails; ComfyUI would run the good outputs
  and drop the others.  ``allow_partial=True`` restores ComfyUI's rule.
- Inputs that ComfyUI checks with a node's own ``VALIDATE_INPUTS`` (``LoadImage.image`` must name
  a file in the input folder, ...) cannot be checked offline: see ``CUSTOM_VALIDATED_INPUTS``.
  ComfyUI skips its built-in min/max/enum checks for those inputs and so do we; the file check
  itself is left to ComfyUI.

Model files: on the server, enum lists such as ``CheckpointLoaderSimple.ckpt_name`` are the files
in a models folder.  An ``/object_info`` captured elsewhere does not list the files on our models
volume, so ``extra_models`` (``{folder: [file names]}``, ComfyUI's folder names) extends every
enum that is a model list; ``MODEL_LIST_INPUTS`` says which inputs those are.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from ryla_modal.errors import ConfigError, WorkflowValidationError

__all__ = [
    "CUSTOM_VALIDATED_INPUTS",
    "INPUT_TYPES_VALIDATED",
    "MODEL_FOLDER_ALIASES",
    "MODEL_LIST_INPUTS",
    "MODEL_LIST_INPUTS_BY_NAME",
    "PROMPT_ERROR_KEY",
    "ObjectInfoReport",
    "check_workflow",
    "load_object_info",
    "raise_for_report",
    "types_compatible",
    "validate_against_object_info",
]

# --- tables -------------------------------------------------------------------------------------

#: Which enum inputs list model files, and from which ComfyUI models folder: class -> input ->
#: folder.  Taken from the ``folder_paths.get_filename_list(...)`` calls of ComfyUI 0.3.64's
#: built-in nodes (nodes.py, comfy_extras/).
MODEL_LIST_INPUTS: Final[Mapping[str, Mapping[str, str]]] = {
    "CheckpointLoaderSimple": {"ckpt_name": "checkpoints"},
    "CheckpointLoader": {"ckpt_name": "checkpoints", "config_name": "configs"},
    "unCLIPCheckpointLoader": {"ckpt_name": "checkpoints"},
    "ImageOnlyCheckpointLoader": {"ckpt_name": "checkpoints"},
    "CreateHookModelAsLora": {"ckpt_name": "checkpoints"},
    "CreateHookModelAsLoraModelOnly": {"ckpt_name": "checkpoints"},
    "LoraLoader": {"lora_name": "loras"},
    "LoraLoaderModelOnly": {"lora_name": "loras"},
    "CreateHookLora": {"lora_name": "loras"},
    "CreateHookLoraModelOnly": {"lora_name": "loras"},
    "TrainLoraNode": {"existing_lora": "loras"},
    "VAELoader": {"vae_name": "vae"},  # plus taesd* names derived from "vae_approx", see below
    "ControlNetLoader": {"control_net_name": "controlnet"},
    "DiffControlNetLoader": {"control_net_name": "controlnet"},
    "UNETLoader": {"unet_name": "diffusion_models"},
    "CLIPLoader": {"clip_name": "text_encoders"},
    "DualCLIPLoader": {"clip_name1": "text_encoders", "clip_name2": "text_encoders"},
    "TripleCLIPLoader": {f"clip_name{i}": "text_encoders" for i in (1, 2, 3)},
    "QuadrupleCLIPLoader": {f"clip_name{i}": "text_encoders" for i in (1, 2, 3, 4)},
    "CLIPVisionLoader": {"clip_name": "clip_vision"},
    "StyleModelLoader": {"style_model_name": "style_models"},
    "GLIGENLoader": {"gligen_name": "gligen"},
    "HypernetworkLoader": {"hypernetwork_name": "hypernetworks"},
    "UpscaleModelLoader": {"model_name": "upscale_models"},
    "PhotoMakerLoader": {"photomaker_model_name": "photomaker"},
    "ModelPatchLoader": {"name": "model_patches"},
    "AudioEncoderLoader": {"audio_encoder_name": "audio_encoders"},
    "DiffusersLoader": {"model_path": "diffusers"},
}

#: For classes not in ``MODEL_LIST_INPUTS`` (custom nodes), input names that mean the same folder
#: by convention.  Deliberately absent: ``model_name`` and ``clip_name``, which name API models or
#: two different folders depending on the node.  Never applied to API nodes (``api_node: true``).
MODEL_LIST_INPUTS_BY_NAME: Final[Mapping[str, str]] = {
    "ckpt_name": "checkpoints",
    "lora_name": "loras",
    "vae_name": "vae",
    "unet_name": "diffusion_models",
    "control_net_name": "controlnet",
    "style_model_name": "style_models",
    "gligen_name": "gligen",
    "hypernetwork_name": "hypernetworks",
    "upscale_model_name": "upscale_models",
    "photomaker_model_name": "photomaker",
}

#: Legacy folder names ComfyUI still accepts (``folder_paths.map_legacy``, and ``t2i_adapter``,
#: which ComfyUI serves as part of ``controlnet``).
MODEL_FOLDER_ALIASES: Final[Mapping[str, str]] = {
    "unet": "diffusion_models",
    "clip": "text_encoders",
    "t2i_adapter": "controlnet",
}

#: Inputs that ComfyUI 0.3.64 hands to the node's own ``VALIDATE_INPUTS``/``validate_inputs``
#: instead of its built-in min/max/enum checks.  Their custom checks look at files on the server
#: (``LoadImage.image`` must exist in the input folder, where the gateway uploads it just before
#: the run) or at rules we do not have, so they are not checked here at all.
CUSTOM_VALIDATED_INPUTS: Final[Mapping[str, frozenset[str]]] = {
    "LoadImage": frozenset({"image"}),
    "LoadImageMask": frozenset({"image"}),
    "LoadLatent": frozenset({"latent"}),
    "LoadAudio": frozenset({"audio"}),
    "LoadVideo": frozenset({"file"}),
    "FluxProUltraImageNode": frozenset({"aspect_ratio"}),
    "KlingCameraControls": frozenset(
        {"horizontal_movement", "vertical_movement", "pan", "tilt", "roll", "zoom"}
    ),
}

#: Classes whose validator takes ``input_types``: ComfyUI then skips the link type check.
INPUT_TYPES_VALIDATED: Final[frozenset[str]] = frozenset({"TripoConversionNode"})

#: Key under which ``validate_against_object_info`` files an error that names no node
#: (``prompt_no_outputs``, a workflow that is not a JSON object).
PROMPT_ERROR_KEY: Final = "prompt"

_COMBO_LIST_INFO_MAX = 20  # ComfyUI: longer enum lists are summarised, not echoed
_DETAILS_VALUE_MAX = 200  # a value quoted in ``details`` is cut to this many characters
_TAESD_NAMES = ("taesd", "taesdxl", "taesd3", "taef1")  # VAELoader offers these by name

# --- the report ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectInfoReport:
    """What ComfyUI would answer to ``POST /prompt`` with this workflow, validation-wise.

    ``error`` is ComfyUI's top-level error (``None`` when the prompt would be accepted),
    ``node_errors`` its per-node errors, ``good_outputs``/``failed_outputs`` the output nodes
    that passed and failed.

    >>> report = check_workflow({}, {})
    >>> report.ok, report.error["type"]
    (False, 'prompt_no_outputs')
    """

    error: dict[str, Any] | None
    node_errors: dict[str, Any] = field(default_factory=dict)
    good_outputs: tuple[str, ...] = ()
    failed_outputs: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when nothing at all is wrong (no top-level error and no node errors)."""
        return self.error is None and not self.node_errors

    def to_comfy_body(self) -> dict[str, Any]:
        """ComfyUI's HTTP 400 body: ``{"error": {...}, "node_errors": {...}}``."""
        return {"error": self.error, "node_errors": self.node_errors}


def raise_for_report(report: ObjectInfoReport) -> None:
    """Raise ``WorkflowValidationError`` carrying ComfyUI's error shapes unless the report is ok."""
    if report.ok:
        return
    error = report.error or _prompt_error(
        "prompt_outputs_failed_validation", "Prompt outputs failed validation", ""
    )
    lines = _summary_lines(report.node_errors)
    message = str(error.get("message", "the workflow is invalid"))
    if error.get("type") == "invalid_prompt" and error.get("details"):
        message = f"{message} ({error['details']})"
    if lines:
        shown = lines[:20]
        if len(lines) > len(shown):
            shown.append(f"... and {len(lines) - len(shown)} more")
        message = message + ":\n" + "\n".join(f"  {line}" for line in shown)
    hint = None
    if error.get("type") == "prompt_no_outputs":
        hint = "Add an output node such as SaveImage or PreviewImage."
    raise WorkflowValidationError(
        message, error=error, node_errors=report.node_errors or {}, hint=hint
    )


# --- loading ------------------------------------------------------------------------------------


def load_object_info(path: str | Path) -> dict[str, Any]:
    """Read a saved ``GET /object_info`` answer; parse it once and keep it (it is ~0.5 MB)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the object_info file {str(p)!r}: {exc}") from exc
    except ValueError as exc:
        raise ConfigError(f"the object_info file {str(p)!r} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError(
            f"the object_info file {str(p)!r} is not a GET /object_info answer "
            "(expected an object mapping node class names to their descriptions)"
        )
    bad = [name for name, info in data.items() if not isinstance(info.get("input", {}), dict)]
    if bad:
        raise ConfigError(f"the object_info file {str(p)!r} has a malformed 'input' for {bad[0]!r}")
    return data


# --- checking -----------------------------------------------------------------------------------


def validate_against_object_info(
    workflow: Mapping[str, Any],
    object_info: Mapping[str, Any],
    *,
    extra_models: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """ComfyUI-shaped ``node_errors``; empty exactly when ``check_workflow(...).ok``.

    A top-level error that ComfyUI files under no node is filed here too, so an empty answer
    always means valid: an unknown or missing ``class_type`` under that node's id, and
    ``prompt_no_outputs`` under ``PROMPT_ERROR_KEY``.  Use ``check_workflow`` for the exact
    ComfyUI body.
    """
    report = check_workflow(workflow, object_info, extra_models=extra_models)
    if report.node_errors or report.error is None:
        return report.node_errors
    error = report.error
    extra = error.get("extra_info", {})
    node_id = extra.get("node_id") if isinstance(extra, dict) else None
    key = str(node_id) if node_id is not None else PROMPT_ERROR_KEY
    class_type = extra.get("class_type") if isinstance(extra, dict) else None
    return {
        key: {
            "errors": [error],
            "dependent_outputs": [],
            "class_type": class_type if isinstance(class_type, str) else "",
        }
    }


def check_workflow(
    workflow: Mapping[str, Any],
    object_info: Mapping[str, Any],
    *,
    extra_models: Mapping[str, Sequence[str]] | None = None,
    allow_partial: bool = False,
) -> ObjectInfoReport:
    """Validate ``workflow`` (API format) as ComfyUI's ``POST /prompt`` would; never raises.

    ``extra_models`` maps a ComfyUI models folder (``checkpoints``, ``loras``, ``vae``, ...) to
    file names present on the models volume; they extend the matching enum lists.
    ``allow_partial`` keeps ComfyUI's rule of accepting a prompt while at least one output is
    valid (the report then has ``error=None`` but may still carry ``node_errors``).
    """
    return _Checker(workflow, object_info, extra_models).run(allow_partial=allow_partial)


def types_compatible(received: Any, expected: Any) -> bool:
    """ComfyUI's ``validate_node_input`` (non-strict), plus ``*`` matching anything."""
    if received == "*" or expected == "*":
        return True
    try:
        if received == expected:
            return True
    except Exception:  # a hostile __eq__ in a Python-built object_info
        return False
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    got = {t.strip() for t in received.split(",")}
    want = {t.strip() for t in expected.split(",")}
    return "*" in got or "*" in want or bool(got & want)


# --- the work -----------------------------------------------------------------------------------


class _Checker:
    """One validation run; holds the per-node results so shared upstream nodes are checked once."""

    def __init__(
        self,
        workflow: Any,
        object_info: Mapping[str, Any],
        extra_models: Mapping[str, Sequence[str]] | None,
    ) -> None:
        self.workflow = workflow
        self.object_info = object_info
        self.extras = _normalise_extras(extra_models)
        self.outputs: list[Any] = []
        self.class_defs: dict[Any, Mapping[str, Any]] = {}
        self.errors: dict[Any, list[dict[str, Any]]] = {}
        self.upstream: dict[Any, list[Any]] = {}

    def run(self, *, allow_partial: bool) -> ObjectInfoReport:
        top = self._check_nodes()
        if top is not None:
            return ObjectInfoReport(error=top)
        if not self.outputs:
            return ObjectInfoReport(
                error=_prompt_error("prompt_no_outputs", "Prompt has no outputs", "")
            )

        reach = {o: self._reachable(o) for o in self.outputs}
        for node_id in set().union(*reach.values()):
            self._check_node(node_id)
        self._mark_cycles()

        node_errors: dict[str, Any] = {}
        failed: list[Any] = []
        for o in self.outputs:
            bad = [n for n in reach[o] if self.errors[n]]
            if not bad:
                continue
            failed.append(o)
            for n in bad:
                entry = node_errors.setdefault(
                    n,
                    {
                        "errors": self.errors[n],
                        "dependent_outputs": [],
                        "class_type": self.workflow[n]["class_type"],
                    },
                )
                entry["dependent_outputs"].append(o)
        node_errors = dict(sorted(node_errors.items(), key=lambda kv: _id_order(kv[0])))
        good = tuple(o for o in self.outputs if o not in failed)

        error: dict[str, Any] | None = None
        if failed and (not good or not allow_partial):
            # ComfyUI lists the failed outputs' own errors, one "message: details" per line.
            lines = [f"{e['message']}: {e['details']}" for o in failed for e in self.errors[o]]
            error = _prompt_error(
                "prompt_outputs_failed_validation",
                "Prompt outputs failed validation",
                "\n".join(lines),
            )
        return ObjectInfoReport(
            error=error, node_errors=node_errors, good_outputs=good, failed_outputs=tuple(failed)
        )

    # -- pass 1: every node, in the prompt's order (ComfyUI stops at the first bad one) --------

    def _check_nodes(self) -> dict[str, Any] | None:
        workflow = self.workflow
        if not isinstance(workflow, Mapping):
            return _prompt_error(
                "invalid_prompt",
                "Cannot execute because the prompt is not a JSON object of nodes.",
                f"got {type(workflow).__name__}",
            )
        shape = _wrong_format(workflow)
        if shape is not None:
            return _prompt_error("invalid_prompt", shape, "")
        for node_id, node in workflow.items():
            where = f"Node ID '#{node_id}'"
            if not isinstance(node, Mapping):
                return _prompt_error(
                    "invalid_prompt",
                    f"Cannot execute because node #{node_id} is not a JSON object "
                    f"(got {type(node).__name__}).",
                    where,
                    node_id=node_id,
                )
            if "class_type" not in node:
                return _prompt_error(
                    "invalid_prompt",
                    "Cannot execute because a node is missing the class_type property.",
                    where,
                    node_id=node_id,
                )
            class_type = node["class_type"]
            class_def = _lookup(self.object_info, class_type)
            if not isinstance(class_def, Mapping):
                return _prompt_error(
                    "invalid_prompt",
                    f"Cannot execute because node {_short(class_type)} does not exist.",
                    where,
                    node_id=node_id,
                    class_type=class_type,
                )
            self.class_defs[node_id] = class_def
            if class_def.get("output_node") is True:
                self.outputs.append(node_id)
        self.outputs.sort(key=_id_order)
        return None

    # -- pass 2: the graph each output depends on ------------------------------------------------

    def _reachable(self, output: Any) -> list[Any]:
        seen = {output}
        order = [output]
        i = 0
        while i < len(order):  # bounded: each node enters ``order`` once
            for up in self._upstream(order[i]):
                if up not in seen:
                    seen.add(up)
                    order.append(up)
            i += 1
        return order

    def _upstream(self, node_id: Any) -> list[Any]:
        """The existing nodes this node's declared link inputs point at."""
        cached = self.upstream.get(node_id)
        if cached is not None:
            return cached
        found: list[Any] = []
        inputs = self.workflow[node_id].get("inputs")
        if isinstance(inputs, Mapping):
            for name, _spec, _cat in _declared_inputs(self.class_defs[node_id]):
                val = _lookup(inputs, name)
                if isinstance(val, list) and len(val) == 2:
                    target = val[0]
                    if _lookup(self.workflow, target) is not None and target not in found:
                        found.append(target)
        self.upstream[node_id] = found
        return found

    def _mark_cycles(self) -> None:
        """Add ``dependency_cycle`` to the nodes of each cycle (iterative DFS, no recursion)."""
        state: dict[Any, int] = {}  # 1 = on the current path, 2 = done
        for root in self.outputs:
            if root in state:
                continue
            path: list[Any] = [root]
            iters = [iter(self._upstream(root))]
            state[root] = 1
            while iters:
                nxt = next(iters[-1], _DONE)
                if nxt is _DONE:
                    state[path.pop()] = 2
                    iters.pop()
                elif state.get(nxt) == 1:
                    self._report_cycle(path[path.index(nxt) :])
                elif nxt not in state:
                    state[nxt] = 1
                    path.append(nxt)
                    iters.append(iter(self._upstream(nxt)))

    def _report_cycle(self, cycle: list[Any]) -> None:
        names = [f"{n} ({self.workflow[n]['class_type']})" for n in [*cycle, cycle[0]]]
        for n in cycle:
            if any(e["type"] == "dependency_cycle" for e in self.errors.get(n, [])):
                continue
            self.errors.setdefault(n, []).append(
                {
                    "type": "dependency_cycle",
                    "message": "Dependency cycle detected",
                    "details": " -> ".join(names),
                    "extra_info": {"node_id": n, "cycle_nodes": list(cycle)},
                }
            )

    # -- pass 3: one node's own inputs -----------------------------------------------------------

    def _check_node(self, node_id: Any) -> None:
        if node_id in self.errors:
            return
        errors: list[dict[str, Any]] = []
        self.errors[node_id] = errors
        node = self.workflow[node_id]
        class_type = node["class_type"]
        class_def = self.class_defs[node_id]
        inputs = node.get("inputs", {})
        if not isinstance(inputs, Mapping):
            errors.append(
                {
                    "type": "exception_during_validation",
                    "message": "Exception when validating node",
                    "details": f"'inputs' must be a JSON object, got {type(inputs).__name__}",
                    "extra_info": {"exception_type": "TypeError", "traceback": []},
                }
            )
            return
        custom = CUSTOM_VALIDATED_INPUTS.get(class_type, frozenset())
        for name, spec, category in _declared_inputs(class_def):
            if name not in inputs:
                if category == "required":
                    errors.append(
                        {
                            "type": "required_input_missing",
                            "message": "Required input is missing",
                            "details": f"{name}",
                            "extra_info": {"input_name": name},
                        }
                    )
                continue
            input_type = spec[0]
            extra = spec[1] if len(spec) > 1 and isinstance(spec[1], Mapping) else {}
            info = [input_type, extra]
            val = inputs[name]
            if isinstance(val, list):
                error = self._check_link(node_id, class_type, name, val, input_type, info)
            else:
                error = self._check_value(
                    class_type, class_def, name, val, input_type, extra, info, name in custom
                )
            if error is not None:
                errors.append(error)

    def _check_link(
        self,
        node_id: Any,
        class_type: Any,
        name: str,
        val: list[Any],
        input_type: Any,
        info: list[Any],
    ) -> dict[str, Any] | None:
        if len(val) != 2:
            return {
                "type": "bad_linked_input",
                "message": "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                "details": f"{name}",
                "extra_info": {"input_name": name, "input_config": info, "received_value": val},
            }
        target, slot = val
        target_node = _lookup(self.workflow, target)
        if target_node is None:
            hint = ""
            if not isinstance(target, str) and _lookup(self.workflow, str(target)) is not None:
                hint = f" (node ids in links are strings: write [{json.dumps(str(target))}, ...])"
            return self._link_error(
                node_id,
                name,
                val,
                info,
                "KeyError",
                _short(repr(target)),
                f"{name}: the linked node {_short(repr(target))} does not exist{hint}",
            )
        outputs = self.class_defs[target].get("output")
        outputs = outputs if isinstance(outputs, list) else []
        target_class = target_node["class_type"]
        if not isinstance(slot, int) or isinstance(slot, bool):
            return self._link_error(
                node_id,
                name,
                val,
                info,
                "TypeError",
                "tuple indices must be integers or slices",
                f"{name}: the output slot of a link must be an integer, got {_short(repr(slot))}",
            )
        if not 0 <= slot < len(outputs):
            count = f"{len(outputs)} output{'s' if len(outputs) != 1 else ''}"
            if outputs:
                count += f": slots 0..{len(outputs) - 1}"
            return self._link_error(
                node_id,
                name,
                val,
                info,
                "IndexError",
                "tuple index out of range",
                f"{name}: node {target} ({target_class}) has no output {slot} (it has {count})",
            )
        received = outputs[slot]
        if class_type in INPUT_TYPES_VALIDATED or types_compatible(received, input_type):
            return None
        return {
            "type": "return_type_mismatch",
            "message": "Return type mismatch between linked nodes",
            "details": f"{name}, received_type({received}) mismatch input_type({input_type})",
            "extra_info": {
                "input_name": name,
                "input_config": info,
                "received_type": received,
                "linked_node": val,
            },
        }

    def _link_error(
        self,
        node_id: Any,
        name: str,
        val: list[Any],
        info: list[Any],
        exc_type: str,
        exc_message: str,
        details: str,
    ) -> dict[str, Any]:
        # ComfyUI files a broken link found while recursing as "inner"; on an output node
        # (validated first, directly) the same exception surfaces as "exception_during_validation".
        if node_id in self.outputs:
            kind, message = "exception_during_validation", "Exception when validating node"
        else:
            kind, message = (
                "exception_during_inner_validation",
                "Exception when validating inner node",
            )
        return {
            "type": kind,
            "message": message,
            "details": details,
            "extra_info": {
                "input_name": name,
                "input_config": info,
                "exception_message": exc_message,
                "exception_type": exc_type,
                "traceback": [],
                "linked_node": val,
            },
        }

    def _check_value(
        self,
        class_type: Any,
        class_def: Mapping[str, Any],
        name: str,
        val: Any,
        input_type: Any,
        extra: Mapping[str, Any],
        info: list[Any],
        custom: bool,
    ) -> dict[str, Any] | None:
        if isinstance(val, dict) and "__value__" in val:  # ComfyUI's wrapper for list values
            val = val["__value__"]
        convert = _CONVERTERS.get(input_type) if isinstance(input_type, str) else None
        if convert is not None:
            try:
                val = convert(val)
            except Exception as exc:  # exactly what ComfyUI catches
                return {
                    "type": "invalid_input_type",
                    "message": f"Failed to convert an input value to a {input_type} value",
                    "details": f"{name}, {_short(val)}, {_short(exc)}",
                    "extra_info": {
                        "input_name": name,
                        "input_config": info,
                        "received_value": val,
                        "exception_message": str(exc),
                    },
                }
        if custom:
            return None
        try:
            if "min" in extra and val < extra["min"]:
                return _range_error(
                    "value_smaller_than_min", "smaller than min", name, val, extra["min"], info
                )
            if "max" in extra and val > extra["max"]:
                return _range_error(
                    "value_bigger_than_max", "bigger than max", name, val, extra["max"], info
                )
        except TypeError as exc:  # ComfyUI would crash here; say what could not be compared
            return {
                "type": "invalid_input_type",
                "message": f"Failed to compare an input value with the limits of a {input_type} "
                "input",
                "details": f"{name}, {_short(val)}, {exc}",
                "extra_info": {
                    "input_name": name,
                    "input_config": info,
                    "received_value": val,
                    "exception_message": str(exc),
                },
            }
        options = self._options(class_type, class_def, name, input_type, extra)
        if options is None:
            return None
        if extra.get("multiselect") is True and isinstance(val, list):
            invalid = [v for v in val if not _in(v, options)]
        else:
            invalid = [] if _in(val, options) else [val]
        if not invalid:
            return None
        config: list[Any] | None = [options if isinstance(input_type, list) else input_type, extra]
        if len(options) > _COMBO_LIST_INFO_MAX:
            list_info = f"(list of length {len(options)})"
            config = None
        else:
            list_info = _short(options, limit=_DETAILS_VALUE_MAX * 5)
        shown = (
            f"'{_short(val)}'"
            if len(invalid) == 1 and invalid[0] is val
            else ", ".join(repr(v) for v in invalid)
        )
        return {
            "type": "value_not_in_list",
            "message": "Value not in list",
            "details": f"{name}: {shown} not in {list_info}",
            "extra_info": {"input_name": name, "input_config": config, "received_value": val},
        }

    def _options(
        self,
        class_type: Any,
        class_def: Mapping[str, Any],
        name: str,
        input_type: Any,
        extra: Mapping[str, Any],
    ) -> list[Any] | None:
        """The enum this input must be one of (model files from the volume added), or None."""
        if isinstance(input_type, list):
            options = input_type
        elif input_type == "COMBO":
            if "remote" in extra or "remote_combo" in extra:
                return None
            raw = extra.get("options", [])
            options = raw if isinstance(raw, list) else []
        else:
            return None
        added = self._model_files(class_type, class_def, name)
        if added:
            present = {o for o in options if isinstance(o, Hashable)}
            options = options + [m for m in added if m not in present]
        return options

    def _model_files(self, class_type: Any, class_def: Mapping[str, Any], name: str) -> list[str]:
        if not self.extras:
            return []
        by_class = MODEL_LIST_INPUTS.get(class_type) if isinstance(class_type, str) else None
        if by_class is not None:
            folder = by_class.get(name)
        elif class_def.get("api_node") is True:
            folder = None
        else:
            folder = MODEL_LIST_INPUTS_BY_NAME.get(name)
        if folder is None:
            return []
        files = list(self.extras.get(folder, ()))
        if class_type == "VAELoader" and name == "vae_name":
            files += _taesd_names(self.extras.get("vae_approx", ()))
        return files


# --- small pure helpers -------------------------------------------------------------------------

_DONE: Final = object()


def _to_int(v: Any) -> int:
    return int(v)


def _to_float(v: Any) -> float:
    return float(v)


def _to_str(v: Any) -> str:
    return str(v)


def _to_bool(v: Any) -> bool:
    return bool(v)


# ComfyUI converts widget values with the plain built-ins; so do we, so "64" passes for an INT,
# 3.7 becomes 3 and any value is a BOOLEAN (bool("false") is True, as in ComfyUI).
_CONVERTERS: Final[Mapping[str, Any]] = {
    "INT": _to_int,
    "FLOAT": _to_float,
    "STRING": _to_str,
    "BOOLEAN": _to_bool,
}


def _declared_inputs(class_def: Mapping[str, Any]) -> Iterable[tuple[str, list[Any], str]]:
    """(name, spec, "required"|"optional") for each declared input with a usable spec."""
    inputs = class_def.get("input")
    if not isinstance(inputs, Mapping):
        return
    for category in ("required", "optional"):
        group = inputs.get(category)
        if not isinstance(group, Mapping):
            continue
        for name, spec in group.items():
            if isinstance(spec, list | tuple) and spec:
                yield name, list(spec), category


def _range_error(
    kind: str, words: str, name: str, val: Any, limit: Any, info: list[Any]
) -> dict[str, Any]:
    return {
        "type": kind,
        "message": f"Value {val} {words} of {limit}",
        "details": f"{name}",
        "extra_info": {"input_name": name, "input_config": info, "received_value": val},
    }


def _prompt_error(
    kind: str,
    message: str,
    details: str,
    *,
    node_id: Any = None,
    class_type: Any = None,
) -> dict[str, Any]:
    error: dict[str, Any] = {"type": kind, "message": message, "details": details, "extra_info": {}}
    # ComfyUI leaves extra_info empty; naming the node helps callers that file it per node.
    if node_id is not None:
        error["extra_info"]["node_id"] = str(node_id)
        if isinstance(class_type, str):
            error["extra_info"]["class_type"] = class_type
    return error


def _wrong_format(workflow: Mapping[Any, Any]) -> str | None:
    """A sentence when the mapping is plainly not an API-format prompt, else None."""
    if isinstance(workflow.get("nodes"), list) and "links" in workflow:
        return (
            "Cannot execute a UI-format workflow (it has 'nodes' and 'links'); export it with "
            "'Export (API)' in ComfyUI, or convert it first."
        )
    inner = workflow.get("prompt")
    if len(workflow) <= 4 and isinstance(inner, Mapping) and "class_type" not in inner:
        return (
            "Cannot execute a POST /prompt request body as a prompt; pass the value of its "
            "'prompt' key."
        )
    return None


def _lookup(mapping: Mapping[Any, Any], key: Any) -> Any:
    """``mapping.get(key)`` that answers None for unhashable keys instead of raising."""
    if not isinstance(key, Hashable):
        return None
    try:
        return mapping.get(key)
    except TypeError:  # hashable in name only (a tuple holding a list)
        return None


def _in(value: Any, options: list[Any]) -> bool:
    try:
        return value in options
    except Exception:
        return False


def _normalise_extras(extra: Mapping[str, Sequence[str]] | None) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for folder, names in (extra or {}).items():
        key = MODEL_FOLDER_ALIASES.get(folder, folder)
        if isinstance(names, str):  # one name, not a sequence of characters
            names = [names]
        out.setdefault(key, []).extend(n for n in names if isinstance(n, str))
    return out


def _taesd_names(approx: Iterable[str]) -> list[str]:
    """``VAELoader`` offers ``taesd`` etc. when both halves are in ``vae_approx`` (ComfyUI rule)."""
    names = list(approx)
    found = []
    for prefix in _TAESD_NAMES:
        has_enc = any(n.startswith(f"{prefix}_encoder.") for n in names)
        has_dec = any(n.startswith(f"{prefix}_decoder.") for n in names)
        if has_enc and has_dec:
            found.append(prefix)
    return found


def _id_order(node_id: Any) -> tuple[int, int, str]:
    text = str(node_id)
    return (0, int(text), "") if text.isdigit() and len(text) < 30 else (1, 0, text)


def _short(value: Any, *, limit: int = _DETAILS_VALUE_MAX) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def _summary_lines(node_errors: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    for node_id, entry in node_errors.items():
        class_type = entry.get("class_type", "?") if isinstance(entry, Mapping) else "?"
        for err in entry.get("errors", []) if isinstance(entry, Mapping) else []:
            line = f"node {node_id} ({class_type}): {err.get('message', '')}"
            if err.get("details"):
                line += f": {err['details']}"
            lines.append(line)
    return lines
