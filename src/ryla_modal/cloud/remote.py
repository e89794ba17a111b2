"""Calls into a deployed app through the modal package, run as a child process under a deadline.

``ModalCLI.call`` starts ``python -m ryla_modal.cloud.remote`` with the call's JSON in
``RYLA_REMOTE_CALL`` and kills the process group when its deadline passes: the modal package's
own calls wait as long as the server lets them.  The answer is one JSON line on stdout,
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": {"type", "message"}}``.

Operations:

- ``autoscale`` ``{app, cls, min_containers?, buffer_containers?, scaledown_window?, env?}``:
  ``Cls.from_name(app, cls)().update_autoscaler(...)``; answers the settings now in force.
- ``download`` ``{app, items, on_clash, env?}``: the app's ``download_models`` function, remotely.
- ``check`` ``{app, workflows: {name: workflow}, env?}``: the app's ``check_workflows``.
- ``lookup`` ``{secrets, volumes, env?}``: which of the named Secrets and Volumes exist (looked
  up, never created).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Mapping
from typing import Any

CALL_ENV = "RYLA_REMOTE_CALL"  # same as deploy.modal_cli.CALL_ENV (this module imports no ryla)


def autoscale(call: Mapping[str, Any]) -> dict[str, Any]:
    import modal

    cls = modal.Cls.from_name(str(call["app"]), str(call["cls"]), environment_name=call.get("env"))
    changes = {
        key: int(call[key])
        for key in ("min_containers", "buffer_containers", "scaledown_window")
        if call.get(key) is not None
    }
    current = cls().update_autoscaler(**changes)
    return dataclasses.asdict(current) if dataclasses.is_dataclass(current) else dict(changes)


def download(call: Mapping[str, Any]) -> Any:
    import modal

    function = modal.Function.from_name(
        str(call["app"]), "download_models", environment_name=call.get("env")
    )
    return function.remote(list(call["items"]), str(call.get("on_clash", "skip")))


def check(call: Mapping[str, Any]) -> Any:
    import modal

    function = modal.Function.from_name(
        str(call["app"]), "check_workflows", environment_name=call.get("env")
    )
    return function.remote(dict(call["workflows"]))


def lookup(call: Mapping[str, Any]) -> dict[str, dict[str, bool]]:
    import modal
    from modal.exception import NotFoundError

    env = call.get("env")
    found: dict[str, dict[str, bool]] = {"secrets": {}, "volumes": {}}
    kinds: dict[str, Any] = {"secrets": modal.Secret, "volumes": modal.Volume}
    for kind, cls in kinds.items():
        for name in call.get(kind, []):
            try:
                cls.from_name(str(name), environment_name=env).hydrate()
                found[kind][str(name)] = True
            except NotFoundError:
                found[kind][str(name)] = False
    return found


OPS = {"autoscale": autoscale, "check": check, "download": download, "lookup": lookup}


def main() -> int:
    try:
        call = json.loads(os.environ.get(CALL_ENV, ""))
        op = OPS[call["op"]]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        _answer({"ok": False, "error": {"type": "UsageError", "message": f"bad call: {exc!r}"}})
        return 2
    try:
        result = op(call)
    except Exception as exc:
        kind = type(exc).__name__
        if kind in ("AuthError",) or "token" in str(exc).lower():
            kind = "AuthError"
        message = getattr(exc, "message", None) or str(exc)  # RylaError: the hint goes apart
        error: dict[str, Any] = {"type": kind, "message": str(message)}
        hint = getattr(exc, "hint", None)
        if hint:
            error["hint"] = str(hint)
        _answer({"ok": False, "error": error})
        return 1
    _answer({"ok": True, "result": result})
    return 0


def _answer(obj: Mapping[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")  # the child's one line of output
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
