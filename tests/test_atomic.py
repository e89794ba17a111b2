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


def _moved_output(tmp: Path) -> Path:
    """The gateway's way: the runner saves a job's output, the store takes the file."""
    store = SQLiteJobStore(tmp / "data")
    try:
        store.put_output("job-1", 0, _save_output(tmp), move=True)
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
    "sqlite store output, moved": _moved_output,
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


def test_a_moved_file_is_renamed_into_place_not_copied(tmp_path: Path) -> None:
    src = tmp_path / "scratch" / "video.mp4"
    src.parent.mkdir()
    src.write_bytes(b"frames" * 1000)
    os.chmod(src, 0o640)
    inode = src.stat().st_ino
    dest = tmp_path / "store" / "job" / "0"
    write_atomic(dest, src, move=True)
    assert not src.exists()
    assert dest.read_bytes() == b"frames" * 1000
    assert dest.stat().st_ino == inode  # the same file: its bytes were not written again
    assert stat.S_IMODE(dest.stat().st_mode) == 0o640  # and it keeps its mode


def test_a_file_moved_to_another_filesystem_is_copied_then_removed(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on a filesystem of its own")
    src = shm / f"ryla-test-{os.getpid()}-{tmp_path.name}"
    src.write_bytes(b"x" * 3_000_000)  # more than one copy chunk
    try:
        dest = tmp_path / "store" / "0"
        write_atomic(dest, src, move=True)
        assert dest.read_bytes() == b"x" * 3_000_000
        assert not src.exists()
        assert [p.name for p in dest.parent.iterdir()] == ["0"]  # no temp file left
    finally:
        src.unlink(missing_ok=True)


def test_copying_keeps_the_source(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"keep me")
    write_atomic(tmp_path / "dest", src)
    assert src.read_bytes() == b"keep me" == (tmp_path / "dest").read_bytes()
