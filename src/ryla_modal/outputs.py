"""Saving output files: safe names, atomic writes, no overwrite, checksums, a manifest per job.

The server chooses file names, so it must never choose a path: every name is reduced to a safe
basename and the final path is checked to sit inside the output folder.  Files appear whole or not
at all (``_atomic``: fsync'd temp file, checksum, then a hard link), and an existing file is
never overwritten.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ryla_modal._atomic import Staged, staged, write_atomic
from ryla_modal.errors import OutputIntegrityError

MAX_NAME_LEN = 120
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
_MAX_SUFFIX_TRIES = 10_000


def safe_basename(name: str, *, max_len: int = MAX_NAME_LEN, fallback: str = "output") -> str:
    """Reduce a server-supplied name to one harmless path component.

    Drops directories (``/`` and ``\\``), control characters, and leading dots; keeps the
    extension when the name must be shortened.
    """
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = unicodedata.normalize("NFKC", name)
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    name = _UNSAFE.sub("_", name).strip("._ ")
    while ".." in name:
        name = name.replace("..", ".")
    if not name:
        return fallback
    if len(name) > max_len:
        stem, dot, ext = name.rpartition(".")
        if dot and 0 < len(ext) <= 10 and stem:
            name = stem[: max_len - len(ext) - 1] + "." + ext
        else:
            name = name[:max_len]
    return name


def output_name(job_id: str, node_id: str, server_filename: str) -> str:
    """The local name of one output: ``<job8>_<node>_<safe server name>``."""
    job = safe_basename(job_id, max_len=8, fallback="job")
    node = safe_basename(str(node_id), max_len=16, fallback="node")
    return f"{job}_{node}_{safe_basename(server_filename)}"


def _inside(folder: Path, candidate: Path) -> bool:
    try:
        candidate.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def _claim_final_path(tmp: Staged, folder: Path, name: str) -> Path:
    """Give the finished temp file the name ``name`` or ``name-N``; never replaces a file."""
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    for n in range(_MAX_SUFFIX_TRIES):
        candidate_name = name if n == 0 else f"{stem}-{n}{'.' + ext if ext else ''}"
        candidate = folder / candidate_name
        if not _inside(folder, candidate):  # pragma: no cover - safe_basename prevents it
            raise OutputIntegrityError(f"refusing to write outside {folder}: {candidate_name!r}")
        if tmp.link_new(candidate):
            return candidate
    raise OutputIntegrityError(f"too many files named like {name!r} in {folder}")


def save_stream(
    folder: Path,
    name: str,
    chunks: Iterable[bytes],
    *,
    expected_sha256: str | None = None,
    expected_size: int | None = None,
) -> tuple[Path, str, int]:
    """Write ``chunks`` to ``folder/name`` atomically; return (path, sha256, size).

    The checksum (and size) are verified before the file gets its final name; on any failure
    (including an exception raised by ``chunks``) nothing is left behind.
    """
    safe = safe_basename(name)
    with staged(folder) as tmp:
        digest = hashlib.sha256()
        size = 0
        for chunk in chunks:
            tmp.file.write(chunk)
            digest.update(chunk)
            size += len(chunk)
        sha = digest.hexdigest()
        if expected_sha256 is not None and sha != expected_sha256.lower():
            raise OutputIntegrityError(
                f"{safe}: sha256 mismatch (server said {expected_sha256}, received {sha});"
                " the file was not saved",
                hint="download it again; if it keeps failing the server's copy is damaged",
            )
        if expected_size is not None and size != expected_size:
            raise OutputIntegrityError(
                f"{safe}: size mismatch (server said {expected_size} bytes, received {size});"
                " the file was not saved",
                hint="download it again",
            )
        final = _claim_final_path(tmp, folder, safe)
        return final, sha, size


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> Path:
    """Write JSON atomically, so readers never see half a file."""
    text = json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
    write_atomic(path, text.encode("utf-8"))
    return path


def manifest_path(folder: Path, job_id: str) -> Path:
    """Where a job's manifest lives: ``<out>/<job_id>.manifest.json``."""
    return folder / f"{safe_basename(job_id, fallback='job')}.manifest.json"
