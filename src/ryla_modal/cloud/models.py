"""Download model files into the models Volume (the ``download_models`` Modal function).

Each item names a models folder and a source, either a Hugging Face file or an https URL::

    {"folder": "checkpoints", "hf_repo": "org/model", "hf_file": "model.safetensors",
     "revision": "main"}
    {"folder": "loras", "url": "https://example.com/style.safetensors", "name": "style.safetensors"}

``HF_TOKEN`` (from a Modal Secret) is used for Hugging Face only: it is never sent to other hosts
and never appears in a result or an error.  A file already on the volume is skipped, so running
the same list twice is cheap.  Files appear whole or not at all (temp file, then rename).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

from ryla_modal import defaults
from ryla_modal.cloud.image import MODEL_FOLDERS
from ryla_modal.errors import ConfigError
from ryla_modal.outputs import safe_basename

#: Every folder name the image's extra_model_paths.yaml reads from the volume.
VOLUME_FOLDERS = frozenset(name for sources in MODEL_FOLDERS.values() for name in sources)
_HF_HOSTS = ("huggingface.co", "hf.co")
_CHUNK = 1024 * 1024


def _item_error(i: int, message: str) -> ConfigError:
    return ConfigError(f"download item {i}: {message}")


def plan(items: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Validated items as ``{folder, name, url | hf_repo+hf_file+revision}``; raises ConfigError."""
    out: list[dict[str, str]] = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise _item_error(i, "must be an object")
        folder = str(item.get("folder", ""))
        if folder not in VOLUME_FOLDERS:
            raise _item_error(i, f"folder {folder!r} is not one of {sorted(VOLUME_FOLDERS)}")
        url, repo, file = item.get("url"), item.get("hf_repo"), item.get("hf_file")
        if bool(url) == bool(repo):
            raise _item_error(i, "give either url or hf_repo + hf_file")
        entry: dict[str, str] = {"folder": folder}
        if url:
            parsed = urlparse(str(url))
            loopback = parsed.hostname in ("127.0.0.1", "localhost")
            if not parsed.hostname or not (
                parsed.scheme == "https" or (parsed.scheme == "http" and loopback)
            ):
                raise _item_error(i, "url must be https://host/... (http only for 127.0.0.1)")
            entry["url"] = str(url)
            default_name = parsed.path.rsplit("/", 1)[-1]
        else:
            if not file or "/" not in str(repo) or ".." in str(file):
                raise _item_error(i, "hf_repo must be 'owner/name' and hf_file a path in it")
            entry.update(hf_repo=str(repo), hf_file=str(file))
            entry["revision"] = str(item.get("revision") or "main")
            default_name = str(file).rsplit("/", 1)[-1]
        name = str(item.get("name") or default_name)
        if not name or safe_basename(name, fallback="") != name:
            raise _item_error(i, f"{name!r} is not a plain file name")
        entry["name"] = name
        out.append(entry)
    return out


def download_all(
    items: Sequence[Mapping[str, Any]],
    models_dir: str | os.PathLike[str],
    *,
    token: str | None = None,
    timeout_s: float = defaults.READ_TIMEOUT_S,
) -> list[dict[str, Any]]:
    """Fetch every item into ``models_dir/<folder>/<name>``; returns what was done per item."""
    root = Path(models_dir)
    token = token if token is not None else os.environ.get("HF_TOKEN") or None
    done: list[dict[str, Any]] = []
    for entry in plan(items):
        dest = root / entry["folder"] / entry["name"]
        if dest.is_file():
            done.append({**_public(entry), "size": dest.stat().st_size, "skipped": True})
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        if "url" in entry:
            _fetch_url(entry["url"], dest, token=token, timeout_s=timeout_s)
        else:
            _fetch_hf(entry, dest, token=token)
        done.append({**_public(entry), "size": dest.stat().st_size, "skipped": False})
    return done


def _public(entry: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in entry.items() if k in ("folder", "name", "url", "hf_repo", "hf_file")}


def _fetch_url(url: str, dest: Path, *, token: str | None, timeout_s: float) -> None:
    host = urlparse(url).hostname or ""
    headers = {}
    if token and (host in _HF_HOSTS or host.endswith(".huggingface.co")):
        headers["authorization"] = f"Bearer {token}"
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        timeout = httpx.Timeout(timeout_s, connect=defaults.CONNECT_TIMEOUT_S)
        with (
            os.fdopen(fd, "wb") as out,
            httpx.stream("GET", url, headers=headers, timeout=timeout, follow_redirects=True) as r,
        ):
            if r.status_code != 200:
                raise ConfigError(f"GET {url} answered HTTP {r.status_code}")
            for chunk in r.iter_bytes(_CHUNK):
                out.write(chunk)
        os.replace(tmp, dest)
    except httpx.HTTPError as exc:
        raise ConfigError(f"GET {url} failed: {type(exc).__name__}: {exc}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _fetch_hf(entry: Mapping[str, str], dest: Path, *, token: str | None) -> None:
    from huggingface_hub import hf_hub_download  # type: ignore[import-not-found]  # image only

    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".hf-") as tmp:
        path = hf_hub_download(
            repo_id=entry["hf_repo"],
            filename=entry["hf_file"],
            revision=entry["revision"],
            token=token,
            local_dir=tmp,
        )
        shutil.move(path, dest)


__all__ = ["VOLUME_FOLDERS", "download_all", "plan"]
