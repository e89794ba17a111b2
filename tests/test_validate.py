"""validate.py against ComfyUI's own answers (recorded from 0.3.64) and against each rule alone.

The recorded part needs the protocol transcripts (``../shared/comfyui-protocol`` next to the repo,
or ``RYLA_PROTOCOL_DIR``); it is skipped, with that reason, where they are absent.  The rule
tests use small hand-written ``/object_info`` entries and always run.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ryla_modal.errors import EXIT_WORKFLOW, ConfigError, WorkflowValidationError
from ryla_modal.validate import (
    PROMPT_ERROR_KEY,
    ObjectInfoReport,
    check_workflow,
    load_object_info,
    raise_for_report,
    types_compatible,
    validate_against_object_info,
)
from tests.fakes import transcripts

_FOUND = transcripts.protocol_dir()
PROTOCOL_DIR = _FOUND if _FOUND is not None else Path(os.devnull)  # tests below are skipped then
needs_protocol = pytest.mark.skipif(
    not (PROTOCOL_DIR / "31_object_info_full.json").is_file(),
    reason=transcripts.missing_reason(),
)

# Cases in 10_validation_errors.json that are not about a graph, and why they are not replayed.
SKIPPED_CASES = {
    "loadimage_nonexistent_file": "LoadImage's own VALIDATE_INPUTS looks for the file in the "
    "server's input folder; that cannot be checked offline (the gateway uploads it later)",
    "body_without_prompt_key": "request-body level (no 'prompt' key), not a graph",
    "invalid_json_body": "request-body level (not JSON), not a graph",
    "empty_body": "request-body level (empty), not a graph",
    "json_array_body": "request-body level (a JSON array), not a graph",
    "ui_format_workflow_as_whole_body": "request-body level (no 'prompt' key), not a graph",
}
# Where ComfyUI's answer is a Python traceback, we answer with the same error type and a sentence.
LINK_ERROR_CASES = {"link_to_missing_node", "link_to_bad_output_index"}
# ComfyUI crashes on a UI-format workflow given as the prompt (HTTP 500, no JSON); we name it.
UI_FORMAT_CASE = "ui_format_workflow_as_prompt"


def _transcript(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((PROTOCOL_DIR / name).read_text(encoding="utf-8"))
    return data


def _prompt_posts(name: str) -> list[dict[str, Any]]:
    return [
        e
        for e in _transcript(name)["events"]
        if e["kind"] == "http"
        and e["request"]["method"] == "POST"
        and e["request"]["path"] == "/prompt"
    ]


@pytest.fixture(scope="module")
def object_info() -> dict[str, Any]:
    if not (PROTOCOL_DIR / "31_object_info_full.json").is_file():
        pytest.skip(f"ComfyUI protocol transcripts not found in {PROTOCOL_DIR}")
    return load_object_info(PROTOCOL_DIR / "31_object_info_full.json")


def _validation_cases() -> list[Any]:
    if not (PROTOCOL_DIR / "10_validation_errors.json").is_file():
        return [pytest.param(None, marks=needs_protocol, id="transcripts-missing")]
    return [pytest.param(e, id=e["label"]) for e in _prompt_posts("10_validation_errors.json")]


def _error_types(node_errors: dict[str, Any]) -> dict[str, set[str]]:
    return {str(k): {e["type"] for e in v["errors"]} for k, v in node_errors.items()}


# --- (1) every recorded graph case gives ComfyUI's answer ---------------------------------------


@needs_protocol
def test_every_recorded_case_is_replayed_or_skipped_with_a_reason() -> None:
    labels = {e["label"] for e in _prompt_posts("10_validation_errors.json")}
    graph_cases = {
        e["label"]
        for e in _prompt_posts("10_validation_errors.json")
        if isinstance(e["request"].get("json"), dict)
        and isinstance(e["request"]["json"].get("prompt"), dict)
    }
    assert set(SKIPPED_CASES) <= labels
    replayed = labels - set(SKIPPED_CASES)
    assert len(replayed) == 15
    assert replayed <= graph_cases


@pytest.mark.parametrize("event", _validation_cases())
def test_recorded_validation_case(event: dict[str, Any], object_info: dict[str, Any]) -> None:
    label = event["label"]
    if label in SKIPPED_CASES:
        pytest.skip(SKIPPED_CASES[label])
    report = check_workflow(event["request"]["json"]["prompt"], object_info)
    got = report.to_comfy_body()
    json.dumps(got)  # the body must be sendable as is

    if label == UI_FORMAT_CASE:
        assert event["response"]["status"] == 500
        assert got["error"]["type"] == "invalid_prompt"
        assert "UI-format" in got["error"]["message"]
        assert got["node_errors"] == {}
        return
    expected = event["response"]["json"]
    if event["response"]["status"] == 200:
        assert report.ok, got
        assert got == {"error": None, "node_errors": {}}
        return
    assert event["response"]["status"] == 400
    assert not report.ok
    assert got["error"]["type"] == expected["error"]["type"]
    assert _error_types(got["node_errors"]) == _error_types(expected["node_errors"])
    for node_id, entry in expected["node_errors"].items():
        assert got["node_errors"][node_id]["dependent_outputs"] == entry["dependent_outputs"]
        assert got["node_errors"][node_id]["class_type"] == entry["class_type"]

    if label in LINK_ERROR_CASES:
        (node_id,) = expected["node_errors"]
        (ours,) = got["node_errors"][node_id]["errors"]
        (theirs,) = expected["node_errors"][node_id]["errors"]
        assert ours["message"] == theirs["message"]
        assert ours["extra_info"]["exception_type"] == theirs["extra_info"]["exception_type"]
        assert ours["extra_info"]["input_config"] == theirs["extra_info"]["input_config"]
        assert ours["details"].startswith("image: ")
    elif expected["error"]["type"] == "invalid_prompt":
        for key in ("message", "details"):
            assert got["error"][key] == expected["error"][key]
    else:  # word for word what ComfyUI said
        assert got == expected


@needs_protocol
def test_model_free_graph_of_01_is_clean(object_info: dict[str, Any]) -> None:
    (post, *_) = _prompt_posts("01_success_model_free.json")
    report = check_workflow(post["request"]["json"]["prompt"], object_info)
    assert report.ok
    assert report.good_outputs == ("4",)
    assert validate_against_object_info(post["request"]["json"]["prompt"], object_info) == {}


@needs_protocol
def test_sd15_graph_of_20_needs_the_checkpoint_from_the_volume(
    object_info: dict[str, Any],
) -> None:
    prompt = _prompt_posts("20_sd15_txt2img.json")[0]["request"]["json"]["prompt"]
    assert object_info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == []

    bare = check_workflow(prompt, object_info)
    assert bare.error is not None
    assert bare.error["type"] == "prompt_outputs_failed_validation"
    assert _error_types(bare.node_errors) == {"4": {"value_not_in_list"}}
    assert bare.node_errors["4"]["errors"][0]["details"] == (
        "ckpt_name: 'random_sd15.safetensors' not in []"
    )
    assert bare.node_errors["4"]["dependent_outputs"] == ["9"]

    extra = {"checkpoints": ["random_sd15.safetensors"]}
    assert check_workflow(prompt, object_info, extra_models=extra).ok
    assert validate_against_object_info(prompt, object_info, extra_models=extra) == {}


@needs_protocol
def test_a_bigger_real_graph_reports_every_broken_node(object_info: dict[str, Any]) -> None:
    prompt = copy.deepcopy(_prompt_posts("20_sd15_txt2img.json")[0]["request"]["json"]["prompt"])
    prompt["3"]["inputs"]["sampler_name"] = "nope"
    prompt["3"]["inputs"]["steps"] = 0
    prompt["5"]["inputs"]["width"] = "wide"
    prompt["8"]["inputs"]["vae"] = ["4", 1]  # CLIP into VAE
    report = check_workflow(
        prompt, object_info, extra_models={"checkpoints": ["random_sd15.safetensors"]}
    )
    assert _error_types(report.node_errors) == {
        "3": {"value_not_in_list", "value_smaller_than_min"},
        "5": {"invalid_input_type"},
        "8": {"return_type_mismatch"},
    }
    assert all(e["dependent_outputs"] == ["9"] for e in report.node_errors.values())
    # KSampler's sampler list is 40+ long: ComfyUI summarises it instead of echoing it.
    (bad_sampler,) = [
        e for e in report.node_errors["3"]["errors"] if e["type"] == "value_not_in_list"
    ]
    assert bad_sampler["details"].startswith("sampler_name: 'nope' not in (list of length ")
    assert bad_sampler["extra_info"]["input_config"] is None


# --- (3) each rule on hand-written object_info ---------------------------------------------------


def _node(
    inputs: dict[str, Any],
    output: list[Any],
    *,
    output_node: bool = False,
    optional: dict[str, Any] | None = None,
    **more: Any,
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "input": {"required": inputs},
        "output": output,
        "output_node": output_node,
        **more,
    }
    if optional is not None:
        entry["input"]["optional"] = optional
    return entry


OI: dict[str, Any] = {
    "Make": _node(
        {
            "width": ["INT", {"default": 8, "min": 1, "max": 64}],
            "scale": ["FLOAT", {"default": 1.0, "min": 0.5, "max": 2.0}],
            "label": ["STRING", {}],
            "flag": ["BOOLEAN", {"default": False}],
        },
        ["IMAGE", "MASK"],
        optional={"note": ["STRING", {"default": ""}]},
    ),
    "Save": _node(
        {"images": ["IMAGE", {}], "prefix": ["STRING", {}]},
        [],
        output_node=True,
    )
    | {
        "input": {
            "required": {"images": ["IMAGE"], "prefix": ["STRING", {}]},
            "hidden": {"prompt": "PROMPT"},
        }
    },
    "Latent": _node({}, ["LATENT"]),
    "Any": _node({"source": ["*", {}]}, [], output_node=True),
    "Multi": _node({"x": ["IMAGE,MASK", {}]}, [], output_node=True),
    "AnyOut": _node({}, ["*"]),
    "OldCombo": _node({"mode": [["a", "b"], {}]}, ["IMAGE"]),
    "NewCombo": _node(
        {"mode": ["COMBO", {"options": ["a", "b"], "multiselect": False}]}, ["IMAGE"]
    ),
    "Remote": _node({"file": ["COMBO", {"remote": {"route": "/x"}}]}, ["IMAGE"]),
    "BigCombo": _node({"pick": [[f"o{i}" for i in range(25)], {}]}, ["IMAGE"]),
    "CheckpointLoaderSimple": _node({"ckpt_name": [[], {}]}, ["MODEL", "CLIP", "VAE"]),
    "UNETLoader": _node({"unet_name": [[], {}]}, ["MODEL"]),
    "VAELoader": _node({"vae_name": [["pixel_space"]]}, ["VAE"]),
    "MyCustomLoader": _node({"lora_name": [[], {}], "model_name": [[], {}]}, ["MODEL"]),
    "SomeApiNode": _node({"ckpt_name": [["api-v1"], {}]}, ["IMAGE"], api_node=True),
    "UpscaleModelLoader": _node({"model_name": ["COMBO", {"options": []}]}, ["UPSCALE_MODEL"]),
    "LoadImage": _node({"image": [["example.png"], {"image_upload": True}]}, ["IMAGE", "MASK"]),
    "TripoConversionNode": _node({"task": ["MODEL_TASK_ID,RIG_TASK_ID"]}, [], output_node=True),
    "Sink": _node({"anything": ["MODEL", {}]}, [], output_node=True),
    "Pass": _node({"image": ["IMAGE", {}]}, ["IMAGE"]),
    "SaveAndPass": _node({"image": ["IMAGE", {}]}, ["IMAGE"], output_node=True),
}

GOOD_MAKE = {"width": 8, "scale": 1.0, "label": "x", "flag": True}


def _graph(make: dict[str, Any] | None = None, **more: dict[str, Any]) -> dict[str, Any]:
    graph: dict[str, Any] = {
        "1": {"class_type": "Make", "inputs": dict(GOOD_MAKE if make is None else make)},
        "2": {"class_type": "Save", "inputs": {"images": ["1", 0], "prefix": "p"}},
    }
    graph.update(more)
    return graph


def _only_error(report: ObjectInfoReport, node_id: str = "1") -> dict[str, Any]:
    assert set(report.node_errors) == {node_id}, report.node_errors
    (error,) = report.node_errors[node_id]["errors"]
    result: dict[str, Any] = error
    return result


def test_good_graph_is_ok() -> None:
    report = check_workflow(_graph(), OI)
    assert report.ok
    assert report.to_comfy_body() == {"error": None, "node_errors": {}}
    assert report.good_outputs == ("2",)
    assert report.failed_outputs == ()


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        (8, True),
        ("64", True),  # ComfyUI casts with int(); recorded as accepted
        (" 9 ", True),
        (7.9, True),  # int(7.9) == 7
        (True, True),  # int(True) == 1: ComfyUI accepts a bool for an INT
        ("abc", False),
        ("3.5", False),
        (None, False),
        ({"a": 1}, False),
    ],
)
def test_int_casting_follows_python_int(value: Any, accepted: bool) -> None:
    report = check_workflow(_graph({**GOOD_MAKE, "width": value}), OI)
    assert report.ok is accepted, report.node_errors
    if not accepted:
        error = _only_error(report)
        assert error["type"] == "invalid_input_type"
        assert error["message"] == "Failed to convert an input value to a INT value"
        assert error["details"].startswith("width, ")
        assert error["extra_info"]["received_value"] == value
        assert error["extra_info"]["input_config"] == ["INT", {"default": 8, "min": 1, "max": 64}]


@pytest.mark.parametrize(
    ("field", "value", "accepted"),
    [
        ("scale", "1.5", True),
        ("scale", 1, True),
        ("scale", "fast", False),
        ("scale", [1.0], None),  # a list is a link, always: a malformed one here
        ("label", 12, True),  # str(12)
        ("label", {"k": "v"}, True),  # str() of anything works, as in ComfyUI
        ("flag", "false", True),  # bool("false") is True in ComfyUI too: not an error
        ("flag", 0, True),
    ],
)
def test_other_casts(field: str, value: Any, accepted: bool | None) -> None:
    report = check_workflow(_graph({**GOOD_MAKE, field: value}), OI)
    if accepted is None:
        assert _only_error(report)["type"] == "bad_linked_input"
    else:
        assert report.ok is accepted, report.node_errors
        if not accepted:
            assert (
                _only_error(report)["message"]
                == "Failed to convert an input value to a FLOAT value"
            )


def test_value_wrapper_is_unwrapped() -> None:
    assert check_workflow(_graph({**GOOD_MAKE, "width": {"__value__": 9}}), OI).ok
    report = check_workflow(_graph({**GOOD_MAKE, "width": {"__value__": 0}}), OI)
    assert _only_error(report)["type"] == "value_smaller_than_min"


@pytest.mark.parametrize(
    ("field", "value", "kind", "message"),
    [
        ("width", 0, "value_smaller_than_min", "Value 0 smaller than min of 1"),
        ("width", "65", "value_bigger_than_max", "Value 65 bigger than max of 64"),
        ("width", 64.9, None, None),  # int(64.9) == 64: inside
        ("scale", 0.25, "value_smaller_than_min", "Value 0.25 smaller than min of 0.5"),
        ("scale", "3", "value_bigger_than_max", "Value 3.0 bigger than max of 2.0"),
    ],
)
def test_min_max(field: str, value: Any, kind: str | None, message: str | None) -> None:
    report = check_workflow(_graph({**GOOD_MAKE, field: value}), OI)
    if kind is None:
        assert report.ok
        return
    error = _only_error(report)
    assert (error["type"], error["message"], error["details"]) == (kind, message, field)
    assert report.error == {
        "type": "prompt_outputs_failed_validation",
        "message": "Prompt outputs failed validation",
        "details": "",
        "extra_info": {},
    }


def test_required_missing_optional_missing_and_unknown_inputs() -> None:
    make = {k: v for k, v in GOOD_MAKE.items() if k != "label"} | {"not_declared": [1, 2, 3]}
    report = check_workflow(_graph(make), OI)  # "note" is optional; "not_declared" is ignored
    assert _only_error(report) == {
        "type": "required_input_missing",
        "message": "Required input is missing",
        "details": "label",
        "extra_info": {"input_name": "label"},
    }


def test_missing_inputs_key_means_no_inputs() -> None:
    report = check_workflow(_graph(**{"1": {"class_type": "Make"}}), OI)
    assert {e["details"] for e in report.node_errors["1"]["errors"]} == set(GOOD_MAKE)


def test_inputs_that_are_not_an_object() -> None:
    report = check_workflow(_graph(**{"1": {"class_type": "Make", "inputs": [1, 2]}}), OI)
    error = _only_error(report)
    assert error["type"] == "exception_during_validation"
    assert "'inputs' must be a JSON object, got list" in error["details"]


@pytest.mark.parametrize(
    ("class_type", "good", "bad"),
    [("OldCombo", "a", "c"), ("NewCombo", "b", "z")],
)
def test_enum_both_forms(class_type: str, good: str, bad: str) -> None:
    def graph(mode: Any) -> dict[str, Any]:
        return _graph(
            **{
                "2": {"class_type": "Save", "inputs": {"images": ["3", 0], "prefix": "p"}},
                "3": {"class_type": class_type, "inputs": {"mode": mode}},
            }
        )

    assert check_workflow(graph(good), OI).ok
    error = _only_error(check_workflow(graph(bad), OI), "3")
    assert error["type"] == "value_not_in_list"
    assert error["details"] == f"mode: '{bad}' not in ['a', 'b']"
    assert error["extra_info"]["received_value"] == bad
    assert error["extra_info"]["input_config"][0] in (["a", "b"], "COMBO")


def test_remote_combo_and_big_combo() -> None:
    graph = _graph(
        **{
            "2": {"class_type": "Save", "inputs": {"images": ["3", 0], "prefix": "p"}},
            "3": {"class_type": "Remote", "inputs": {"file": "anything.png"}},
        }
    )
    assert check_workflow(graph, OI).ok
    graph["3"] = {"class_type": "BigCombo", "inputs": {"pick": "o99"}}
    error = _only_error(check_workflow(graph, OI), "3")
    assert error["details"] == "pick: 'o99' not in (list of length 25)"
    assert error["extra_info"]["input_config"] is None


def _loader_graph(
    class_type: str, inputs: dict[str, Any], slot_type: str = "MODEL"
) -> dict[str, Any]:
    return (
        {
            "1": {"class_type": class_type, "inputs": inputs},
            "2": {"class_type": "Sink", "inputs": {"anything": ["1", 0]}},
        }
        if slot_type == "MODEL"
        else {
            "1": {"class_type": class_type, "inputs": inputs},
            "2": {"class_type": "Any", "inputs": {"source": ["1", 0]}},
        }
    )


def test_model_files_extend_model_enums_only() -> None:
    ckpt = _loader_graph("CheckpointLoaderSimple", {"ckpt_name": "a.safetensors"})
    assert _only_error(check_workflow(ckpt, OI))["type"] == "value_not_in_list"
    assert check_workflow(ckpt, OI, extra_models={"checkpoints": ["a.safetensors"]}).ok
    # files of another folder do not count
    assert not check_workflow(ckpt, OI, extra_models={"loras": ["a.safetensors"]}).ok
    # legacy folder names map like ComfyUI's folder_paths.map_legacy
    unet = _loader_graph("UNETLoader", {"unet_name": "u.safetensors"})
    assert check_workflow(unet, OI, extra_models={"unet": ["u.safetensors"]}).ok
    assert check_workflow(unet, OI, extra_models={"diffusion_models": ["u.safetensors"]}).ok
    # COMBO-form model lists are extended too
    upscale = _loader_graph("UpscaleModelLoader", {"model_name": "4x.pth"}, slot_type="*")
    assert check_workflow(upscale, OI, extra_models={"upscale_models": ["4x.pth"]}).ok


def test_model_files_for_custom_and_api_nodes() -> None:
    custom = _loader_graph("MyCustomLoader", {"lora_name": "l.safetensors", "model_name": "m"})
    report = check_workflow(
        custom, OI, extra_models={"loras": ["l.safetensors"], "upscale_models": ["m"]}
    )
    # lora_name is a model list by convention; model_name is too ambiguous to guess
    assert _only_error(report)["extra_info"]["input_name"] == "model_name"
    api = _loader_graph("SomeApiNode", {"ckpt_name": "c.safetensors"}, slot_type="*")
    assert not check_workflow(api, OI, extra_models={"checkpoints": ["c.safetensors"]}).ok


def test_vae_loader_offers_taesd_when_both_halves_exist() -> None:
    graph = _loader_graph("VAELoader", {"vae_name": "taesd"}, slot_type="*")
    assert check_workflow(graph, OI, extra_models={"vae": ["v.safetensors"]}).error is not None
    half = {"vae_approx": ["taesd_decoder.pth"]}
    assert not check_workflow(graph, OI, extra_models=half).ok
    both = {"vae_approx": ["taesd_decoder.pth", "taesd_encoder.pth"]}
    assert check_workflow(graph, OI, extra_models=both).ok


def test_load_image_file_check_is_left_to_comfyui() -> None:
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "uploaded_later.png"}},
        "2": {"class_type": "Save", "inputs": {"images": ["1", 0], "prefix": "p"}},
    }
    assert check_workflow(graph, OI).ok


def test_return_type_mismatch_and_wildcards() -> None:
    graph = _graph(
        **{
            "2": {"class_type": "Save", "inputs": {"images": ["3", 0], "prefix": "p"}},
            "3": {"class_type": "Latent", "inputs": {}},
        }
    )
    error = _only_error(check_workflow(graph, OI), "2")
    assert error == {
        "type": "return_type_mismatch",
        "message": "Return type mismatch between linked nodes",
        "details": "images, received_type(LATENT) mismatch input_type(IMAGE)",
        "extra_info": {
            "input_name": "images",
            "input_config": ["IMAGE", {}],
            "received_type": "LATENT",
            "linked_node": ["3", 0],
        },
    }
    # the failing output's own errors become the top-level details, as in ComfyUI
    assert check_workflow(graph, OI).error["details"] == (  # type: ignore[index]
        "Return type mismatch between linked nodes: "
        "images, received_type(LATENT) mismatch input_type(IMAGE)"
    )
    # "*" input takes anything; "*" output goes anywhere
    assert check_workflow(
        {
            "3": {"class_type": "Latent", "inputs": {}},
            "4": {"class_type": "Any", "inputs": {"source": ["3", 0]}},
        },
        OI,
    ).ok
    assert check_workflow(
        {
            "3": {"class_type": "AnyOut", "inputs": {}},
            "4": {"class_type": "Save", "inputs": {"images": ["3", 0], "prefix": "p"}},
        },
        OI,
    ).ok


def test_multi_type_inputs() -> None:
    graph: dict[str, Any] = {
        "1": {"class_type": "Make", "inputs": GOOD_MAKE},
        "4": {"class_type": "Multi", "inputs": {"x": ["1", 1]}},
    }
    assert check_workflow(graph, OI).ok  # MASK is one of IMAGE,MASK
    graph["4"]["inputs"]["x"] = ["3", 0]
    graph["3"] = {"class_type": "Latent", "inputs": {}}
    assert _only_error(check_workflow(graph, OI), "4")["type"] == "return_type_mismatch"


def test_types_compatible_table() -> None:
    assert types_compatible("IMAGE", "IMAGE")
    assert types_compatible("STRING,BOOLEAN", "STRING,INT")
    assert not types_compatible("FLOAT", "STRING,INT")
    assert types_compatible("*", "MODEL") and types_compatible("VAE", "*")
    assert types_compatible("A, *", "B")
    assert types_compatible(["a", "b"], ["a", "b"])
    assert not types_compatible(["a", "b"], "COMBO")
    assert not types_compatible("IMAGE", ["IMAGE"])


def test_input_types_validators_skip_the_link_type_check() -> None:
    graph = {
        "1": {"class_type": "Make", "inputs": GOOD_MAKE},
        "2": {"class_type": "TripoConversionNode", "inputs": {"task": ["1", 0]}},
    }
    assert check_workflow(graph, OI).ok


@pytest.mark.parametrize(
    ("link", "exception_type", "details"),
    [
        (["9", 0], "KeyError", "the linked node '9' does not exist"),
        (
            [1, 0],
            "KeyError",
            'the linked node 1 does not exist (node ids in links are strings: write ["1", ...])',
        ),
        (["1", 2], "IndexError", "node 1 (Make) has no output 2 (it has 2 outputs: slots 0..1)"),
        (["1", -1], "IndexError", "node 1 (Make) has no output -1 (it has 2 outputs: slots 0..1)"),
        (["1", "0"], "TypeError", "the output slot of a link must be an integer, got '0'"),
        (["1", True], "TypeError", "the output slot of a link must be an integer, got True"),
        ([["1"], 0], "KeyError", "the linked node ['1'] does not exist"),
    ],
)
def test_broken_links(link: list[Any], exception_type: str, details: str) -> None:
    graph = _graph(
        **{
            "3": {"class_type": "Pass", "inputs": {"image": link}},
            "2": {"class_type": "Save", "inputs": {"images": ["3", 0], "prefix": "p"}},
        }
    )
    error = _only_error(check_workflow(graph, OI), "3")
    assert error["type"] == "exception_during_inner_validation"
    assert error["message"] == "Exception when validating inner node"
    assert error["details"] == f"image: {details}"
    assert error["extra_info"]["exception_type"] == exception_type
    assert error["extra_info"]["linked_node"] == link
    assert error["extra_info"]["input_config"] == ["IMAGE", {}]
    # on the output node itself ComfyUI calls it a validation exception, not an inner one
    direct = _graph(**{"2": {"class_type": "Save", "inputs": {"images": link, "prefix": "p"}}})
    error = _only_error(check_workflow(direct, OI), "2")
    assert error["type"] == "exception_during_validation"
    assert error["details"] == f"images: {details}"


def test_a_node_without_outputs_cannot_be_linked_from() -> None:
    graph = {
        "1": {"class_type": "Sink", "inputs": {"anything": ["2", 0]}},
        "2": {"class_type": "Any", "inputs": {"source": "x"}},
    }
    report = check_workflow(graph, OI)
    assert _only_error(report)["details"] == (
        "anything: node 2 (Any) has no output 0 (it has 0 outputs)"
    )


def test_bad_linked_input() -> None:
    graph = _graph(
        **{"2": {"class_type": "Save", "inputs": {"images": ["1", 0, 0], "prefix": "p"}}}
    )
    error = _only_error(check_workflow(graph, OI), "2")
    assert error["type"] == "bad_linked_input"
    assert error["extra_info"]["received_value"] == ["1", 0, 0]


def test_unreachable_nodes_are_not_validated() -> None:
    graph = _graph(**{"7": {"class_type": "Make", "inputs": {}}})  # broken but feeds no output
    assert check_workflow(graph, OI).ok


def test_dependent_outputs_and_partial_acceptance() -> None:
    graph = {
        "1": {"class_type": "Make", "inputs": {**GOOD_MAKE, "width": 0}},
        "2": {"class_type": "Save", "inputs": {"images": ["1", 0], "prefix": "a"}},
        "3": {"class_type": "SaveAndPass", "inputs": {"image": ["1", 0]}},
        "4": {"class_type": "Make", "inputs": GOOD_MAKE},
        "10": {"class_type": "Save", "inputs": {"images": ["4", 0], "prefix": "b"}},
        "5": {"class_type": "Save", "inputs": {"images": ["3", 0]}},
    }
    report = check_workflow(graph, OI)
    assert list(report.node_errors) == ["1", "5"]
    assert report.node_errors["1"]["dependent_outputs"] == ["2", "3", "5"]
    assert report.node_errors["5"]["dependent_outputs"] == ["5"]
    assert report.failed_outputs == ("2", "3", "5")
    assert report.good_outputs == ("10",)
    assert report.error is not None
    assert report.error["details"] == "Required input is missing: prefix"
    # ComfyUI itself runs output 10 and drops the others
    partial = check_workflow(graph, OI, allow_partial=True)
    assert partial.error is None
    assert partial.node_errors == report.node_errors
    assert not partial.ok


@pytest.mark.parametrize("length", [1, 2, 5])
def test_cycles_are_reported_not_followed_forever(length: int) -> None:
    graph: dict[str, Any] = {
        str(i): {"class_type": "Pass", "inputs": {"image": [str((i + 1) % length), 0]}}
        for i in range(length)
    }
    graph["out"] = {"class_type": "Save", "inputs": {"images": ["0", 0], "prefix": "p"}}
    report = check_workflow(graph, OI)
    assert set(report.node_errors) == {str(i) for i in range(length)}
    for entry in report.node_errors.values():
        (error,) = entry["errors"]
        assert error["type"] == "dependency_cycle"
        assert error["details"].startswith("0 (Pass) -> ")
        assert entry["dependent_outputs"] == ["out"]


def test_long_chain_has_no_recursion_limit() -> None:
    n = 3000
    graph: dict[str, Any] = {"0": {"class_type": "Make", "inputs": {**GOOD_MAKE, "width": -1}}}
    for i in range(1, n):
        graph[str(i)] = {"class_type": "Pass", "inputs": {"image": [str(i - 1), 0]}}
    graph["out"] = {"class_type": "Save", "inputs": {"images": [str(n - 1), 0], "prefix": "p"}}
    report = check_workflow(graph, OI)
    assert _only_error(report, "0")["type"] == "value_smaller_than_min"


# --- top-level errors ---------------------------------------------------------------------------


def test_first_bad_node_in_order_wins() -> None:
    graph = {"b": {"class_type": "Nope", "inputs": {}}, "a": {"inputs": {}}, **_graph()}
    report = check_workflow(graph, OI)
    assert report.error == {
        "type": "invalid_prompt",
        "message": "Cannot execute because node Nope does not exist.",
        "details": "Node ID '#b'",
        "extra_info": {"node_id": "b", "class_type": "Nope"},
    }
    assert report.node_errors == {}
    # the convenience form files it under the node, so "empty" always means "valid"
    assert validate_against_object_info(graph, OI) == {
        "b": {"errors": [report.error], "dependent_outputs": [], "class_type": "Nope"}
    }
    del graph["b"]
    assert check_workflow(graph, OI).error == {
        "type": "invalid_prompt",
        "message": "Cannot execute because a node is missing the class_type property.",
        "details": "Node ID '#a'",
        "extra_info": {"node_id": "a"},
    }


@pytest.mark.parametrize("class_type", [None, 5, ["Save"], {"x": 1}])
def test_odd_class_types_are_unknown(class_type: Any) -> None:
    report = check_workflow({"1": {"class_type": class_type, "inputs": {}}}, OI)
    assert report.error is not None
    assert report.error["type"] == "invalid_prompt"
    assert "does not exist" in report.error["message"]


def test_no_outputs() -> None:
    for graph in ({}, {"1": {"class_type": "Make", "inputs": GOOD_MAKE}}):
        report = check_workflow(graph, OI)
        assert report.error == {
            "type": "prompt_no_outputs",
            "message": "Prompt has no outputs",
            "details": "",
            "extra_info": {},
        }
        assert validate_against_object_info(graph, OI) == {
            PROMPT_ERROR_KEY: {"errors": [report.error], "dependent_outputs": [], "class_type": ""}
        }


def test_ui_format_is_named() -> None:
    ui = {"last_node_id": 1, "nodes": [{"id": 1, "type": "Make"}], "links": []}
    report = check_workflow(ui, OI)
    assert report.error is not None
    assert report.error["type"] == "invalid_prompt"
    assert "UI-format" in report.error["message"]
    wrapped = check_workflow({"prompt": _graph(), "client_id": "x"}, OI)
    assert wrapped.error is not None and "'prompt' key" in wrapped.error["message"]


@pytest.mark.parametrize("workflow", [[1, 2], "text", None, {"1": "Make"}, {"1": [1]}])
def test_not_a_graph(workflow: Any) -> None:
    report = check_workflow(workflow, OI)
    assert report.error is not None
    assert report.error["type"] == "invalid_prompt"
    assert validate_against_object_info(workflow, OI) != {}


# --- raising and loading ------------------------------------------------------------------------


def test_raise_for_report() -> None:
    raise_for_report(check_workflow(_graph(), OI))  # ok: no raise
    report = check_workflow(_graph({**GOOD_MAKE, "width": 0}), OI)
    with pytest.raises(WorkflowValidationError) as caught:
        raise_for_report(report)
    exc = caught.value
    assert exc.exit_code == EXIT_WORKFLOW
    assert exc.error == report.error
    assert exc.node_errors == report.node_errors
    assert str(exc) == (
        "Prompt outputs failed validation:\n  node 1 (Make): Value 0 smaller than min of 1: width"
    )
    with pytest.raises(WorkflowValidationError, match=r"Nope does not exist\. \(Node ID '#1'\)"):
        raise_for_report(check_workflow({"1": {"class_type": "Nope"}}, OI))
    with pytest.raises(WorkflowValidationError) as caught:
        raise_for_report(check_workflow({}, OI))
    assert caught.value.hint is not None and "SaveImage" in caught.value.hint


def test_load_object_info(tmp_path: Path) -> None:
    good = tmp_path / "oi.json"
    good.write_text(json.dumps(OI), encoding="utf-8")
    assert load_object_info(good) == OI
    assert load_object_info(str(good)) == OI
    for name, text, words in [
        ("bad.json", "{nope", "not valid JSON"),
        ("list.json", "[1, 2]", "not a GET /object_info answer"),
        ("flat.json", '{"A": 1}', "not a GET /object_info answer"),
        ("input.json", '{"A": {"input": []}}', "malformed 'input' for 'A'"),
    ]:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        with pytest.raises(ConfigError, match=words):
            load_object_info(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_object_info(tmp_path / "missing.json")


def test_fifty_node_graph_is_checked_completely() -> None:
    """The gateway's typical size: every node is visited once and every error is found."""
    graph: dict[str, Any] = {"0": {"class_type": "Make", "inputs": GOOD_MAKE}}
    for i in range(1, 49):
        graph[str(i)] = {"class_type": "Pass", "inputs": {"image": [str(i - 1), 0]}}
    graph["49"] = {"class_type": "Save", "inputs": {"images": ["48", 0], "prefix": "p"}}
    assert check_workflow(graph, OI).ok
    graph["0"]["inputs"] = {**GOOD_MAKE, "width": 0}
    graph["5"]["inputs"] = {}  # broken, but cut off by the next line: not reported
    graph["20"]["inputs"] = {"image": ["0", 1]}  # MASK into IMAGE
    graph["30"]["inputs"] = {}
    report = check_workflow(graph, OI)
    assert _error_types(report.node_errors) == {
        "30": {"required_input_missing"},
    }
    graph["30"]["inputs"] = {"image": ["29", 0]}
    report = check_workflow(graph, OI)
    assert _error_types(report.node_errors) == {
        "0": {"value_smaller_than_min"},
        "20": {"return_type_mismatch"},
    }


# --- property: never raises ---------------------------------------------------------------------

_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=10,
)
_ids = st.sampled_from(["1", "2", "3", "4", "x"])
_input_values = (
    _scalars
    | st.tuples(_ids, st.integers(-1, 2)).map(list)  # links, good and bad
    | st.tuples(_ids | _json, _json).map(list)
    | st.dictionaries(st.sampled_from(["__value__", "k"]), _json, max_size=2)
    | _json
)


def _declared(class_type: str) -> list[str]:
    inputs = OI[class_type]["input"]
    return [*inputs.get("required", {}), *inputs.get("optional", {}), "undeclared"]


# Mostly well-formed nodes of known classes with their own input names (so that deep checks are
# reached), sometimes anything at all.
_known_nodes = st.sampled_from(sorted(OI)).flatmap(
    lambda ct: st.fixed_dictionaries(
        {
            "class_type": st.just(ct),
            "inputs": st.dictionaries(st.sampled_from(_declared(ct)), _input_values, max_size=5),
        },
        optional={"_meta": _json},
    )
)
_odd_nodes = st.fixed_dictionaries(
    {"class_type": st.just("Nope") | _json}, optional={"inputs": _json}
)
_known_graphs = st.dictionaries(_ids, _known_nodes, min_size=1, max_size=6)
_any_graphs = st.dictionaries(_ids, _known_nodes | _odd_nodes | _json, max_size=6) | _json
_workflows = st.one_of(_known_graphs, _known_graphs, _known_graphs, _any_graphs)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    workflow=_workflows,
    extra=st.dictionaries(
        st.sampled_from(["checkpoints", "loras", "vae", "vae_approx", "unet", "upscale_models"]),
        st.lists(st.text(max_size=5), max_size=3),
        max_size=3,
    ),
)
def test_never_raises_and_always_answers_in_comfyui_shape(workflow: Any, extra: Any) -> None:
    report = check_workflow(workflow, OI, extra_models=extra)
    body = json.loads(json.dumps(report.to_comfy_body(), default=str))
    assert set(body) == {"error", "node_errors"}
    assert report.ok == (body["error"] is None and body["node_errors"] == {})
    if body["error"] is not None:
        assert set(body["error"]) == {"type", "message", "details", "extra_info"}
    for entry in report.node_errors.values():
        assert set(entry) == {"errors", "dependent_outputs", "class_type"}
        assert entry["errors"] and entry["dependent_outputs"]
        for error in entry["errors"]:
            assert set(error) == {"type", "message", "details", "extra_info"}
    assert (validate_against_object_info(workflow, OI, extra_models=extra) == {}) == report.ok
