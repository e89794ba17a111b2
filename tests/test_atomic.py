"""Atomic writes: whole files, with the permissions a plain ``open()`` would give (the umask's).

Saved outputs used to be 0600 (``mkstemp``'s mode): a shared output folder hid them from the
group.  Every writer goes through ``ryla_modal._atomic``; each is checked here.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ryla_modal._atomic import current_umask, staged, write_atomic
from ryla_modal.cloud.store import DictJobStore
from ryla_modal.gateway.store import SQLiteJobStore
from ryla_modal.outputs import save_stream, write_json_atomic
from tests.test_cloud_backend import MemoryDict


@pytest.fixture(params=[None, 0o027])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """The process umask as it is, and a stricter one set for the test."""
    if request.param is None:
        yield current_umask()
        return
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _save_output(tmp: Path) -> Path:
    return save_stream(tmp / "out", "a.png", [b"\x89PNG", b"data"])[0]


def _manifest(tmp: Path) -> Path:
    return write_json_atomic(tmp / "m" / "job.manifest.json", {"job_id": "j"})


def _sqlite_output(tmp: Path) -> Path:
    store = SQLiteJobStore(tmp / "data")
    try:
        store.put_output("job-1", 0, b"bytes")
    finally:
        store.close()
    return tmp / "data" / "outputs" / "job-1" / "0"


def _dict_output(tmp: Path) -> Path:
    src = tmp / "src.bin"
    src.write_bytes(b"x" * 3_000_000)  # more than one copy chunk
    DictJobStore(MemoryDict(), outputs_dir=tmp / "vol").put_output("job-1", 0, src)
    return tmp / "vol" / "job-1" / "0"


WRITERS: dict[str, Callable[[Path], Path]] = {
    "saved output": _save_output,
    "manifest": _manifest,
    "sqlite store output": _sqlite_output,
    "dict store output": _dict_output,
}


@pytest.mark.parametrize("writer", list(WRITERS))
def test_files_get_the_umasks_permissions(writer: str, umask: int, tmp_path: Path) -> None:
    path = WRITERS[writer](tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    leftovers = [p.name for p in path.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_current_umask_matches_the_kernels(tmp_path: Path) -> None:
    probe = tmp_path / "probe"
    with open(probe, "w"):  # a plain open() applies the umask to 0o666
        pass
    assert stat.S_IMODE(probe.stat().st_mode) == 0o666 & ~current_umask()


def test_a_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path: Path) -> None:
    dest = tmp_path / "f"
    write_atomic(dest, b"old")
    with pytest.raises(RuntimeError), staged(tmp_path) as tmp:
        tmp.file.write(b"half")
        raise RuntimeError("the disk filled up")
    assert dest.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_link_new_never_replaces(tmp_path: Path) -> None:
    (tmp_path / "taken").write_bytes(b"first")
    with staged(tmp_path) as tmp:
        tmp.file.write(b"second")
        assert not tmp.link_new(tmp_path / "taken")
        assert tmp.link_new(tmp_path / "free")
    assert (tmp_path / "taken").read_bytes() == b"first"
    assert (tmp_path / "free").read_bytes() == b"second"
