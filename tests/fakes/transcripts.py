"""Find and read the ComfyUI protocol transcripts (``shared/comfyui-protocol/``).

The folder sits beside the repository checkout (``<repo>/../shared/comfyui-protocol``);
``RYLA_PROTOCOL_DIR`` points elsewhere.  Tests that need it skip, saying why, when it is absent.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

PROTOCOL_DIR_ENV = "RYLA_PROTOCOL_DIR"
_DEFAULT = Path(__file__).resolve().parents[2] / ".." / "shared" / "comfyui-protocol"


def protocol_dir() -> Path | None:
    """The transcript folder, or None when this checkout has none."""
    configured = os.environ.get(PROTOCOL_DIR_ENV)
    candidate = Path(configured) if configured else _DEFAULT
    return candidate.resolve() if candidate.is_dir() else None


def missing_reason() -> str:
    configured = os.environ.get(PROTOCOL_DIR_ENV)
    where = configured if configured else str(_DEFAULT.resolve())
    return (
        f"ComfyUI protocol transcripts not found at {where} "
        f"(set {PROTOCOL_DIR_ENV} to the comfyui-protocol folder)"
    )


@dataclass(frozen=True)
class Transcript:
    """One recorded scenario: its client id, notes and events in time order."""

    name: str
    client_id: str
    notes: dict[str, Any]
    events: list[dict[str, Any]]

    def http(self, label: str) -> dict[str, Any]:
        """The HTTP event with this label (each label occurs once per file)."""
        for event in self.events:
            if event["kind"] == "http" and event.get("label") == label:
                return event
        raise KeyError(f"{self.name} has no http event labelled {label!r}")

    def http_events(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["kind"] == "http"]

    def ws_messages(self) -> list[dict[str, Any]]:
        """Every JSON message the server sent on the recorder's socket, in order."""
        return [e["text"] for e in self.events if e["kind"] == "ws_recv"]


@cache
def load(prefix: str) -> Transcript:
    """Load ``NN_*.json`` by its number (``load("01")``); the folder must exist."""
    folder = protocol_dir()
    if folder is None:
        raise FileNotFoundError(missing_reason())
    matches = sorted(folder.glob(f"{prefix}_*.json"))
    if len(matches) != 1:
        raise FileNotFoundError(f"expected one {prefix}_*.json in {folder}, found {matches}")
    data = json.loads(matches[0].read_text(encoding="utf-8"))
    return Transcript(
        name=matches[0].name,
        client_id=data.get("client_id", ""),
        notes=data.get("notes", {}),
        events=data.get("events", []),
    )


@cache
def object_info_full() -> dict[str, Any]:
    """File 31: the whole GET /object_info answer of the recorded server."""
    folder = protocol_dir()
    if folder is None:
        raise FileNotFoundError(missing_reason())
    data: dict[str, Any] = json.loads(
        (folder / "31_object_info_full.json").read_text(encoding="utf-8")
    )
    return data
