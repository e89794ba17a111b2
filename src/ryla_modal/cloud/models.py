"""Download model files into the models Volume (the ``download_models`` Modal function).

Each item names a models folder and a source, either a Hugging Face file or an https URL::

    {"folder": "checkpoints", "hf_repo": "org/model", "hf_file": "model.safetensors",
     "revision": "main"}
    {"folder": "loras", "url": "https://example.com/style.safetensors", "name": "style.safetensors"}

``HF_TOKEN`` (from a Modal Secret) is used for Hugging Face only: it is never sent to other hosts
and never appears in a result or an error.  A file already on the volume is skipped, so running
the same list twice is cheap.  Files appear whole or not at all: bytes go to ``.NAME.part`` (kept
when a transfer breaks, resumed with a Range request next time), are checked against ``sha256``
when one is given, and only then renamed.  Hugging Face files are fetched by URL the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

import httpx

from ryla_modal import defaults
from ryla_modal._transport import DeadlineExceeded, deadline_client, deadline_scope
from ryla_modal.cloud.image import MODEL_FOLDERS
from ryla_modal.errors import ConfigError
from ryla_modal.outputs import safe_basename
from ryla_modal.policy import Deadline

#: Every folder name the image's extra_model_paths.yaml reads from the volume.
VOLUME_FOLDERS = frozenset(name for sources in MODEL_FOLDERS.values() for name in sources)
_HF_HOSTS = ("huggingface.co", "hf.co")
_CHUNK = 1024 * 1024
_MAX_REDIRECTS = 5
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


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
        sha = item.get("sha256")
        if sha:
            if not _SHA256_RE.match(str(sha).lower()):
                raise _item_error(i, f"sha256 {sha!r} is not 64 hex digits")
            entry["sha256"] = str(sha).lower()
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
    on_clash: str = "skip",
) -> list[dict[str, Any]]:
    """Fetch every item into ``models_dir/<folder>/<name>``; returns what was done per item.

    A file already there is skipped (``on_clash="skip"``, what a redeploy wants) or refused
    (``"error"``, what ``ryla models add`` wants) unless its sha256 is the one asked for.
    """
    if on_clash not in ("skip", "error"):
        raise ValueError(f"on_clash must be 'skip' or 'error', not {on_clash!r}")
    root = Path(models_dir)
    token = token if token is not None else os.environ.get("HF_TOKEN") or None
    done: list[dict[str, Any]] = []
    for entry in plan(items):
        dest = root / entry["folder"] / entry["name"]
        if dest.is_file():
            want = entry.get("sha256")
            if want and _sha256_file(dest) == want:
                done.append({**_public(entry), "size": dest.stat().st_size, "skipped": True})
                continue
            if on_clash == "error" or want:
                have = "another file" if want else "a file"
                raise ConfigError(
                    f"{entry['folder']}/{entry['name']} already holds {have}: nothing downloaded",
                    hint="choose another name with --name, or remove the file first",
                )
            done.append({**_public(entry), "size": dest.stat().st_size, "skipped": True})
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        _fetch_url(
            source_url(entry), dest, token=token, timeout_s=timeout_s, sha256=entry.get("sha256")
        )
        done.append({**_public(entry), "size": dest.stat().st_size, "skipped": False})
    return done


def source_url(entry: Mapping[str, str]) -> str:
    """The URL to GET: a Hugging Face file is ``https://huggingface.co/REPO/resolve/REV/FILE``."""
    if "url" in entry:
        return entry["url"]
    return (
        f"https://huggingface.co/{entry['hf_repo']}/resolve/"
        f"{quote(entry['revision'], safe='')}/{quote(entry['hf_file'])}"
    )


def _public(entry: Mapping[str, str]) -> dict[str, str]:
    keys = ("folder", "name", "url", "hf_repo", "hf_file", "sha256")
    return {k: v for k, v in entry.items() if k in keys}


def _is_hf_host(host: str) -> bool:
    return host in _HF_HOSTS or host.endswith(".huggingface.co") or host.endswith(".hf.co")


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch_url(
    url: str, dest: Path, *, token: str | None, timeout_s: float, sha256: str | None = None
) -> None:
    """GET ``url`` into ``dest`` whole: a ``.part`` file resumed with Range, checked, renamed.

    Redirects are followed here, one hop at a time, so the token is only ever sent to a Hugging
    Face host (its CDN hosts on other domains never see it).  The ``.part`` file keeps its name
    between attempts, so a download cut by a container's timeout continues where it stopped.
    Each hop's answer must arrive within ``timeout_s`` in all, and its body within ``timeout_s``
    plus its size at ``MODEL_MIN_BYTES_PER_S`` (a trickling host cannot hold the container).
    """
    part = dest.with_name(f".{dest.name}.part")
    timeout = httpx.Timeout(timeout_s, connect=defaults.CONNECT_TIMEOUT_S)
    try:
        with deadline_client(timeout=timeout, follow_redirects=False) as client:
            current = url
            for _ in range(_MAX_REDIRECTS + 1):
                headers = {}
                host = urlparse(current).hostname or ""
                if token and _is_hf_host(host):
                    headers["authorization"] = f"Bearer {token}"
                have = part.stat().st_size if part.is_file() else 0
                if have:
                    headers["range"] = f"bytes={have}-"
                with (
                    deadline_scope(Deadline(timeout_s, "answer deadline")),
                    client.stream("GET", current, headers=headers) as r,
                ):
                    if r.is_redirect and "location" in r.headers:
                        current = str(r.url.join(r.headers["location"]))
                        continue
                    if r.status_code == 416 and have:  # the part is already whole
                        break
                    if r.status_code not in (200, 206):
                        raise ConfigError(f"GET {_shown(url)} answered HTTP {r.status_code}")
                    mode = "ab" if r.status_code == 206 and have else "wb"
                    with deadline_scope(_body_deadline(timeout_s, r)), part.open(mode) as out:
                        for chunk in r.iter_bytes(_CHUNK):
                            out.write(chunk)
                break
            else:
                raise ConfigError(f"GET {_shown(url)}: more than {_MAX_REDIRECTS} redirects")
    except (httpx.HTTPError, DeadlineExceeded) as exc:
        # The .part stays: the next attempt resumes it.
        raise ConfigError(f"GET {_shown(url)} failed: {type(exc).__name__}: {exc}") from None
    except ConfigError:
        with contextlib.suppress(OSError):
            part.unlink()
        raise
    if sha256 is not None:
        got = _sha256_file(part)
        if got != sha256:
            with contextlib.suppress(OSError):
                part.unlink()
            raise ConfigError(
                f"{dest.name}: sha256 is {got}, not {sha256}: nothing written",
                hint="check the --sha256 value and the URL",
            )
    os.replace(part, dest)


def _body_deadline(timeout_s: float, resp: httpx.Response) -> Deadline:
    length = resp.headers.get("content-length", "")
    if not length.isdigit():
        return Deadline(defaults.MODEL_UNSIZED_DOWNLOAD_S, "download deadline")
    return Deadline(timeout_s + int(length) / defaults.MODEL_MIN_BYTES_PER_S, "download deadline")


def _shown(url: str) -> str:
    """A URL without its query (signed CDN URLs carry credentials there)."""
    parsed = urlparse(url)
    return parsed._replace(query="", fragment="").geturl()


def parse_source(source: str) -> dict[str, str]:
    """``hf://OWNER/REPO/PATH[@REV]`` or an https URL -> the url / hf_repo+hf_file item keys."""
    if source.startswith("hf://"):
        rest = source[len("hf://") :]
        rest, _, revision = rest.partition("@")
        parts = rest.split("/", 2)
        if len(parts) < 3 or not all(parts):
            raise ConfigError(
                f"{source!r} is not hf://OWNER/REPO/FILE",
                hint="e.g. hf://org/model/model.safetensors",
            )
        out = {"hf_repo": f"{parts[0]}/{parts[1]}", "hf_file": parts[2]}
        if revision:
            out["revision"] = revision
        return out
    return {"url": source}


__all__ = ["VOLUME_FOLDERS", "download_all", "parse_source", "plan", "source_url"]
