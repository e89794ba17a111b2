"""Deploy-time workflow checks: each workflow against the image's baked object_info and the volume.

``ryla deploy --check WF.json`` calls the app's ``check_workflows`` function right after the
deploy.  It runs in the deployed image (so it sees the very object_info the build saved, custom
nodes included) with the models Volume mounted, and needs no proxy-auth credentials, which a
first deploy may not have yet.  The gateway's ``POST /validate`` gives the same verdict later.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ryla_modal.errors import WorkflowValidationError
from ryla_modal.validate import check_workflow, load_object_info, raise_for_report


def check_workflows(
    workflows: Mapping[str, Mapping[str, Any]],
    object_info_path: str | Path,
    models_dir: str | Path,
) -> list[dict[str, Any]]:
    """``[{name, ok, message, missing_nodes, missing_models}]``, one per workflow, in order."""
    from ryla_modal.cloud.gateway import list_model_files

    info = load_object_info(object_info_path)
    models = list_model_files(Path(models_dir))
    out: list[dict[str, Any]] = []
    for name, workflow in workflows.items():
        report = check_workflow(workflow, info, extra_models=models)
        entry: dict[str, Any] = {"name": name, "ok": report.ok, "message": ""}
        entry["missing_nodes"] = sorted(
            {
                str(node.get("class_type"))
                for node in workflow.values()
                if isinstance(node, Mapping) and node.get("class_type") not in info
            }
        )
        known = workflow
        if entry["missing_nodes"]:
            # ComfyUI stops at the first unknown node; check the rest too, so one deploy names
            # every missing node and every missing model.
            known = {
                k: v
                for k, v in workflow.items()
                if not (isinstance(v, Mapping) and v.get("class_type") not in info)
            }
        known_report = (
            report if known is workflow else check_workflow(known, info, extra_models=models)
        )
        entry["missing_models"] = _missing_models(known_report.node_errors)
        if not report.ok:
            try:
                raise_for_report(report)
            except WorkflowValidationError as exc:
                entry["message"] = exc.message
        out.append(entry)
    return out


def _missing_models(node_errors: Mapping[str, Any]) -> list[str]:
    """Values ComfyUI refused as "not in list" (a model file the volume does not have)."""
    missing: set[str] = set()
    for entry in node_errors.values():
        for error in entry.get("errors", []) if isinstance(entry, Mapping) else []:
            if error.get("type") != "value_not_in_list":
                continue
            extra = error.get("extra_info", {})
            value = extra.get("received_value") if isinstance(extra, Mapping) else None
            if isinstance(value, str):
                missing.add(value)
    return sorted(missing)


__all__ = ["check_workflows"]
