"""Atomic file writes: a file appears whole (fsync'd, with the umask's permissions) or not at all.

Every writer of files that must survive a crash goes through here: the job stores' output files
(``gateway/store.py``, ``cloud/store.py``) and the client's saved outputs and manifests
(``outputs.py``).  It imports nothing of ours, so the client side uses it without server code.

A temp file is written next to its destination, flushed and fsync'd, given the mode a plain
``open()`` would have given it (``mkstemp`` makes 0600 files, which surprised users who share an
output folder), and only then named: by ``os.replace`` (overwrite) or by a hard link that never
replaces an existing file.  The folder is fsync'd after the name appears, so the name survives a
power cut too.

    with staged(folder) as tmp:
        tmp.file.write(b"...")
        tmp.replace(folder / "out.png")
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

_COPY_CHUNK = 1024 * 1024
_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux ≥ 4.7)."""
    with (
        contextlib.suppress(OSError, ValueError),
        open("/proc/self/status", encoding="ascii", errors="replace") as fh,
    ):
        for line in fh:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    # Elsewhere the only way is to set it and put it back; the lock keeps our own threads from
    # reading the transient value.
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def fsync_dir(folder: Path) -> None:
    """Make a new or renamed entry of ``folder`` durable (a no-op where folders cannot sync)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


class Staged:
    """A temp file being written; ``replace`` or ``link_new`` gives it its final name."""

    def __init__(self, folder: Path, file: IO[bytes], path: Path) -> None:
        self.folder = folder
        self.file = file
        self.path = path

    def _seal(self) -> None:
        if self.file.closed:
            return
        self.file.flush()
        os.fsync(self.file.fileno())
        os.fchmod(self.file.fileno(), 0o666 & ~current_umask())
        self.file.close()

    def replace(self, dest: Path) -> Path:
        """Name the file ``dest``, replacing what was there."""
        self._seal()
        os.replace(self.path, dest)
        fsync_dir(dest.parent)
        return dest

    def link_new(self, dest: Path) -> bool:
        """Name the file ``dest`` unless that name exists (then False; nothing changes)."""
        self._seal()
        try:
            os.link(self.path, dest)
        except FileExistsError:
            return False
        fsync_dir(dest.parent)
        return True


@contextlib.contextmanager
def staged(folder: Path, *, prefix: str = ".partial-", suffix: str = ".tmp") -> Iterator[Staged]:
    """A temp file in ``folder`` (created if needed); it is gone when the block ends."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    tmp = Staged(folder, os.fdopen(fd, "wb"), Path(name))
    try:
        yield tmp
    finally:
        with contextlib.suppress(OSError):
            tmp.file.close()
        with contextlib.suppress(FileNotFoundError):
            tmp.path.unlink()


def write_atomic(dest: Path, src: Path | bytes, *, move: bool = False) -> None:
    """``dest`` gets the bytes (or a copy of the file ``src``), whole or not at all.

    ``move``: the file ``src`` is spent (a job's output in its scratch folder): it is renamed
    into place, keeping its mode, where it shares a filesystem with ``dest``, so a 2 GB video is
    not written to disk twice; elsewhere it is copied, then removed.
    """
    if move and not isinstance(src, bytes) and _rename_into(Path(src), dest):
        return
    with staged(dest.parent, prefix=f".{dest.name}.") as tmp:
        if isinstance(src, bytes):
            tmp.file.write(src)
        else:
            with Path(src).open("rb") as inp:
                while chunk := inp.read(_COPY_CHUNK):
                    tmp.file.write(chunk)
        tmp.replace(dest)
    if move and not isinstance(src, bytes):
        with contextlib.suppress(FileNotFoundError):
            Path(src).unlink()


def _rename_into(src: Path, dest: Path) -> bool:
    """Give the file ``src`` the name ``dest`` durably; False when they are on two filesystems."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with src.open("rb") as fh:
        os.fsync(fh.fileno())  # its bytes are on disk before its new name is (a no-op if they are)
    try:
        os.replace(src, dest)
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            return False
        raise
    fsync_dir(dest.parent)
    return True


__all__ = ["Staged", "current_umask", "fsync_dir", "staged", "write_atomic"]
