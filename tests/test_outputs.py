"""Saving outputs: hostile names stay inside the folder, bad checksums leave nothing behind."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ryla_modal.errors import OutputIntegrityError
from ryla_modal.outputs import (
    manifest_path,
    output_name,
    safe_basename,
    save_stream,
    write_json_atomic,
)

HOSTILE = [
    "../../x.png",
    "/etc/passwd",
    "a\x00b.png",
    "..",
    ".",
    "",
    "....//....//x",
    "C:\\Windows\\system32\\evil.dll",
    "x" * 500 + ".png",
    "\u202egnp.exe",
    "a/../../b",
    "~/.ssh/authorized_keys",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_become_one_harmless_component(name: str, tmp_path: Path) -> None:
    safe = safe_basename(name)
    assert safe and "/" not in safe and "\\" not in safe and ".." not in safe
    assert not safe.startswith(".")
    assert all(ord(ch) >= 32 for ch in safe)
    assert len(safe) <= 120
    path, _, _ = save_stream(tmp_path, name, [b"data"])
    assert path.parent == tmp_path
    assert path.read_bytes() == b"data"


def test_long_name_keeps_its_extension() -> None:
    assert safe_basename("x" * 500 + ".png").endswith(".png")


def test_output_name_combines_job_node_and_server_name() -> None:
    name = output_name("0123456789abcdef", "9", "ryla_00001_.png")
    assert name == "01234567_9_ryla_00001_.png"


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=0, max_size=300))
def test_any_name_stays_inside_the_folder(name: str) -> None:
    safe = safe_basename(name)
    assert "/" not in safe and "\\" not in safe and ".." not in safe and "\x00" not in safe
    assert safe not in ("", ".", "..")


def test_existing_file_is_never_overwritten(tmp_path: Path) -> None:
    first, _, _ = save_stream(tmp_path, "out.png", [b"one"])
    second, _, _ = save_stream(tmp_path, "out.png", [b"two"])
    third, _, _ = save_stream(tmp_path, "out.png", [b"three"])
    assert [first.name, second.name, third.name] == ["out.png", "out-1.png", "out-2.png"]
    assert first.read_bytes() == b"one" and second.read_bytes() == b"two"


def test_checksum_is_verified_and_returned(tmp_path: Path) -> None:
    data = b"\x89PNG" + bytes(range(256))
    sha = hashlib.sha256(data).hexdigest()
    path, got_sha, size = save_stream(
        tmp_path, "a.png", [data[:10], data[10:]], expected_sha256=sha, expected_size=len(data)
    )
    assert got_sha == sha and size == len(data) and path.read_bytes() == data


def test_bad_checksum_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(OutputIntegrityError, match="sha256 mismatch"):
        save_stream(tmp_path, "a.png", [b"abc"], expected_sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_size_mismatch_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(OutputIntegrityError, match="size mismatch"):
        save_stream(tmp_path, "a.png", [b"abc"], expected_size=4)
    assert list(tmp_path.iterdir()) == []


def test_stream_failure_midway_leaves_no_file(tmp_path: Path) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"partial"
        raise ConnectionError("connection reset")

    with pytest.raises(ConnectionError):
        save_stream(tmp_path, "a.png", chunks())
    assert list(tmp_path.iterdir()) == []


def test_manifest_written_atomically(tmp_path: Path) -> None:
    path = manifest_path(tmp_path, "../job-1")
    assert path.parent == tmp_path
    write_json_atomic(path, {"job_id": "job-1", "outputs": []})
    assert json.loads(path.read_text()) == {"job_id": "job-1", "outputs": []}
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
