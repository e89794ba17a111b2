"""POST /prompt validation with ComfyUI 0.3.64's rules and error shapes (transcript 10).

Deliberately as literal as the original: widget values are converted in place (``"64"`` becomes
64 in the queued prompt), a bad link raises a real KeyError/IndexError inside the recursion and is
reported as ``exception_during_inner_validation`` with a Python traceback, and a prompt that is
not a dict of dicts raises (the server answers that with aiohttp's plain-text 500).
"""

from __future__ import annotations

import sys
import traceback
from typing import Any

from .nodes import Folders, NodeDef, input_spec

Error = dict[str, Any]
Result = tuple[bool, list[Error], str]


def full_type_name(klass: type) -> str:
    module = klass.__module__
    return klass.__qualname__ if module == "builtins" else f"{module}.{klass.__qualname__}"


def types_match(received: Any, expected: Any) -> bool:
    """ComfyUI's ``validate_node_input``: equal, ``*``, or overlapping comma-separated unions."""
    if received == expected:
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    got = {t.strip() for t in received.split(",")}
    want = {t.strip() for t in expected.split(",")}
    return "*" in got or "*" in want or bool(got & want)


def _error(kind: str, message: str, details: str, **extra: Any) -> Error:
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


class Validator:
    """One validation run over one prompt (``validated`` memoises per node id)."""

    def __init__(self, prompt: dict[str, Any], nodes: dict[str, NodeDef], folders: Folders):
        self.prompt = prompt
        self.nodes = nodes
        self.folders = folders
        self.validated: dict[str, Result] = {}

    def validate_inputs(self, unique_id: str) -> Result:
        if unique_id in self.validated:
            return self.validated[unique_id]
        inputs = self.prompt[unique_id]["inputs"]
        node = self.nodes[self.prompt[unique_id]["class_type"]]
        types = node.input_types(self.folders)
        errors: list[Error] = []
        valid = True
        names = [*types.get("required", {}), *types.get("optional", {})]
        for x in names:
            spec = input_spec(types, x)
            assert spec is not None
            input_type, category, extra_info = spec
            if x not in inputs:
                if category == "required":
                    errors.append(
                        _error(
                            "required_input_missing",
                            "Required input is missing",
                            x,
                            input_name=x,
                        )
                    )
                continue
            val = inputs[x]
            info = [input_type, extra_info]
            if isinstance(val, list):
                if len(val) != 2:
                    errors.append(
                        _error(
                            "bad_linked_input",
                            "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                            x,
                            input_name=x,
                            input_config=info,
                            received_value=val,
                        )
                    )
                    continue
                o_id = val[0]
                o_class_type = self.prompt[o_id]["class_type"]  # KeyError for a missing node
                received_type = self.nodes[o_class_type].outputs[val[1]]  # IndexError: bad slot
                if not types_match(received_type, input_type):
                    mismatch = f"received_type({received_type}) mismatch input_type({input_type})"
                    errors.append(
                        _error(
                            "return_type_mismatch",
                            "Return type mismatch between linked nodes",
                            f"{x}, {mismatch}",
                            input_name=x,
                            input_config=info,
                            received_type=received_type,
                            linked_node=val,
                        )
                    )
                    continue
                try:
                    if self.validate_inputs(o_id)[0] is False:
                        valid = False
                        continue
                except Exception as ex:
                    typ, _, tb = sys.exc_info()
                    assert typ is not None
                    valid = False
                    reasons = [
                        _error(
                            "exception_during_inner_validation",
                            "Exception when validating inner node",
                            str(ex),
                            input_name=x,
                            input_config=info,
                            exception_message=str(ex),
                            exception_type=full_type_name(typ),
                            traceback=traceback.format_tb(tb),
                            linked_node=val,
                        )
                    ]
                    self.validated[o_id] = (False, reasons, o_id)
                    continue
            else:
                if isinstance(val, dict) and "__value__" in val:
                    val = inputs[x] = val["__value__"]
                try:
                    if input_type == "INT":
                        val = inputs[x] = int(val)
                    if input_type == "FLOAT":
                        val = inputs[x] = float(val)
                    if input_type == "STRING":
                        val = inputs[x] = str(val)
                    if input_type == "BOOLEAN":
                        val = inputs[x] = bool(val)
                except Exception as ex:
                    errors.append(
                        _error(
                            "invalid_input_type",
                            f"Failed to convert an input value to a {input_type} value",
                            f"{x}, {val}, {ex}",
                            input_name=x,
                            input_config=info,
                            received_value=val,
                            exception_message=str(ex),
                        )
                    )
                    continue
                if x in node.validate_args:
                    continue
                if "min" in extra_info and val < extra_info["min"]:
                    errors.append(
                        _error(
                            "value_smaller_than_min",
                            f"Value {val} smaller than min of {extra_info['min']}",
                            x,
                            input_name=x,
                            input_config=info,
                            received_value=val,
                        )
                    )
                    continue
                if "max" in extra_info and val > extra_info["max"]:
                    errors.append(
                        _error(
                            "value_bigger_than_max",
                            f"Value {val} bigger than max of {extra_info['max']}",
                            x,
                            input_name=x,
                            input_config=info,
                            received_value=val,
                        )
                    )
                    continue
                if isinstance(input_type, list) and val not in input_type:
                    big = len(input_type) > 20
                    listing = f"(list of length {len(input_type)})" if big else str(input_type)
                    errors.append(
                        _error(
                            "value_not_in_list",
                            "Value not in list",
                            f"{x}: '{val}' not in {listing}",
                            input_name=x,
                            input_config=None if big else info,
                            received_value=val,
                        )
                    )
                    continue

        if node.validate is not None:
            given = {x: inputs[x] for x in node.validate_args if x in inputs}
            if given:
                verdict = node.validate(self.folders, given)
                if verdict is not True:
                    for x in given:
                        details = x if verdict is False else f"{x} - {verdict}"
                        errors.append(
                            _error(
                                "custom_validation_failed",
                                "Custom validation failed for node",
                                details,
                                input_name=x,
                            )
                        )

        result: Result = (
            (False, errors, unique_id) if errors or not valid else (True, [], unique_id)
        )
        self.validated[unique_id] = result
        return result


def validate_prompt(
    prompt: Any,
    nodes: dict[str, NodeDef],
    folders: Folders,
    partial_targets: list[str] | None = None,
) -> tuple[bool, Error | None, list[str], dict[str, Any]]:
    """(valid, error, outputs to execute, node_errors), exactly as ComfyUI returns them."""
    outputs: list[str] = []
    for x in prompt:
        if "class_type" not in prompt[x]:  # TypeError for a non-dict node: HTTP 500, as real
            return (
                False,
                _error(
                    "invalid_prompt",
                    "Cannot execute because a node is missing the class_type property.",
                    f"Node ID '#{x}'",
                ),
                [],
                {},
            )
        class_type = prompt[x]["class_type"]
        node = nodes.get(class_type) if isinstance(class_type, str) else None
        if node is None:
            return (
                False,
                _error(
                    "invalid_prompt",
                    f"Cannot execute because node {class_type} does not exist.",
                    f"Node ID '#{x}'",
                ),
                [],
                {},
            )
        if node.output_node and (partial_targets is None or x in partial_targets):
            outputs.append(x)

    if not outputs:
        return False, _error("prompt_no_outputs", "Prompt has no outputs", ""), [], {}

    check = Validator(prompt, nodes, folders)
    good: list[str] = []
    failed: list[tuple[str, list[Error]]] = []
    node_errors: dict[str, Any] = {}
    for o in outputs:
        try:
            valid, reasons, _ = check.validate_inputs(o)
        except Exception as ex:
            typ, _, tb = sys.exc_info()
            assert typ is not None
            valid = False
            reasons = [
                _error(
                    "exception_during_validation",
                    "Exception when validating node",
                    str(ex),
                    exception_type=full_type_name(typ),
                    traceback=traceback.format_tb(tb),
                )
            ]
            check.validated[o] = (False, reasons, o)
        if valid:
            good.append(o)
            continue
        failed.append((o, reasons))
        for node_id, (ok, why, _) in check.validated.items():
            # Nodes downstream of a bad node are invalid without reasons of their own: skip them.
            if ok is not True and why:
                if node_id not in node_errors:
                    node_errors[node_id] = {
                        "errors": why,
                        "dependent_outputs": [],
                        "class_type": prompt[node_id]["class_type"],
                    }
                node_errors[node_id]["dependent_outputs"].append(o)

    if not good:
        details = "\n".join(f"{e['message']}: {e['details']}" for _, errs in failed for e in errs)
        return (
            False,
            _error("prompt_outputs_failed_validation", "Prompt outputs failed validation", details),
            [],
            node_errors,
        )
    return True, None, good, node_errors
