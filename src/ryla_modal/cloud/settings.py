"""Deploy-time settings of the Modal app: ``./ryla.toml``'s ``[deploy]`` table, then ``RYLA_*``.

``ryla_modal.cloud.app`` reads them once at import (``AppSettings.load``): the ``[deploy]`` table
of ``./ryla.toml`` (written by ``ryla init``), overridden by ``RYLA_*`` environment variables.
Modal imports that module twice: on the machine that runs ``modal deploy`` (where the operator's
``ryla.toml`` and ``RYLA_*`` variables are) and again in every container (where they are not).
So the app hands :meth:`AppSettings.to_env` to its functions as container environment: both
imports then see the same values, and the worker writes to the same Dict and Volumes the gateway
reads.

Every value is checked here, so a typo fails ``ryla deploy`` in milliseconds with the variable's
name, not minutes later inside an image build::

    settings = AppSettings.load()  # ConfigError("RYLA_GPU: 'A1000' is not a Modal GPU ...")
    app = modal.App(settings.app_name)

A value from ``ryla.toml`` that does not parse names the file and the key
(``ryla.toml [deploy] gpu: 'A1000' is not a Modal GPU type ...``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ryla_modal import defaults
from ryla_modal.errors import ConfigError

#: GPU types Modal accepts (modal 1.6 docs); a count may follow, e.g. ``H100:2``.
GPU_TYPES: tuple[str, ...] = (
    "T4",
    "L4",
    "A10",
    "A10G",
    "L40S",
    "A100",
    "A100-40GB",
    "A100-80GB",
    "H100",
    "H100!",
    "H200",
    "B200",
    "B200+",
)
GPU_MAX_COUNT = 8
PROJECT_FILE = "ryla.toml"  # in the folder `ryla deploy` runs in
#: Modal's object names: alphanumerics, dashes, periods, underscores, under 64 characters.
_OBJECT_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,63}$")
_COMMIT_RE = re.compile(r"^[0-9a-fA-F]{40}$")  # a full hash: the build fetches it by id
_REPO_RE = re.compile(r"^https://[A-Za-z0-9.-]+(:\d+)?/[A-Za-z0-9._~/-]+$")
_NODE_DIR_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_TIMEOUT_MAX_S = 24 * 3600  # Modal's limit for a function timeout
_SCALEDOWN_RANGE = (2, 3600)  # Modal's limits for scaledown_window
_CONTAINERS_MAX = 100  # a sanity cap on warm containers: each one bills by the second
#: ``snapshot``: Modal memory snapshots ("cpu": enable_memory_snapshot; "gpu": GPU state too).
SNAPSHOT_MODES: tuple[str, ...] = ("off", "cpu", "gpu")

#: Python packages the image needs for ``ryla_modal`` itself (the gateway and the worker).
#: tests/test_modal_app.py checks this against pyproject's dependencies.
IMAGE_PACKAGES: tuple[str, ...] = (
    "httpx>=0.28,<0.29",
    "tenacity>=9,<10",
    "pydantic>=2.7,<3",
    "websockets>=13",
    "fastapi[standard]>=0.110",
    "uvicorn>=0.30",
    "rich>=13",
    "typer>=0.29,<0.30",
    "tomli-w>=1.0,<2",
    "standardwebhooks>=1.1,<2",
    "huggingface_hub>=0.24",
)


@dataclass(frozen=True)
class CustomNode:
    """One custom-node repository, cloned into ``ComfyUI/custom_nodes/<directory>``."""

    url: str
    commit: str | None = None

    @property
    def directory(self) -> str:
        name = self.url.rstrip("/").rsplit("/", 1)[-1]
        return name.removesuffix(".git")

    def spec(self) -> str:
        return f"{self.url}@{self.commit}" if self.commit else self.url


@dataclass(frozen=True)
class AppSettings:
    """What one deployment of the ComfyUI app looks like.  Env names in ``ENV_NAMES``."""

    app_name: str = defaults.DEFAULT_APP_NAME
    gpu: str = defaults.MODAL_GPU
    comfyui_repo: str = defaults.COMFYUI_REPO
    comfyui_commit: str = defaults.COMFYUI_COMMIT
    torch_packages: tuple[str, ...] = defaults.MODAL_TORCH_PACKAGES
    custom_nodes: tuple[CustomNode, ...] = ()
    models_volume: str = defaults.MODAL_MODELS_VOLUME
    outputs_volume: str = defaults.MODAL_OUTPUTS_VOLUME
    jobs_dict: str = defaults.MODAL_JOBS_DICT
    secrets: tuple[str, ...] = ()
    #: a Modal Secret holding RYLA_WEBHOOK_SECRET, for the gateway and the worker (webhooks)
    webhook_secret: str | None = None
    scaledown_window_s: int = defaults.MODAL_SCALEDOWN_WINDOW_S
    max_inputs: int = defaults.MODAL_WORKER_MAX_INPUTS
    gateway_max_inputs: int = defaults.MODAL_GATEWAY_MAX_INPUTS
    max_containers: int | None = None
    min_containers: int = 0
    buffer_containers: int = 0
    snapshot: str = "off"
    models: tuple[dict[str, str], ...] = ()
    timeout_s: int = defaults.MODAL_WORKER_TIMEOUT_S
    startup_timeout_s: int = defaults.MODAL_WORKER_STARTUP_TIMEOUT_S
    gateway_timeout_s: int = defaults.MODAL_GATEWAY_TIMEOUT_S
    download_timeout_s: int = defaults.MODAL_DOWNLOAD_TIMEOUT_S

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AppSettings:
        """Read ``RYLA_*``; unset or empty means the default.  Raises ConfigError naming the var."""
        return cls.load(environ, project=None)

    @classmethod
    def load(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        project: Path | None = Path(PROJECT_FILE),
    ) -> AppSettings:
        """``project``'s ``[deploy]`` table (when the file exists), then ``RYLA_*`` over it.

        Every value is parsed before anything else happens, so a typo fails in milliseconds with
        the variable's name, or the file's name and the key.
        """
        env = os.environ if environ is None else environ
        kwargs: dict[str, Any] = {}
        if project is not None and project.is_file():
            for attr, raw in read_deploy_table(project).items():
                try:
                    kwargs[attr] = _PARSERS[attr](raw)
                except ValueError as exc:
                    raise ConfigError(
                        f"{project} [deploy] {TOML_KEYS_BY_ATTR[attr]}: {exc}",
                        hint=f"fix the value in {project}, or override it with {ENV_NAMES[attr]}",
                    ) from None
        for attr, parse in _PARSERS.items():
            value = env.get(ENV_NAMES[attr], "").strip()
            if value:
                try:
                    kwargs[attr] = parse(value)
                except ValueError as exc:
                    raise ConfigError(f"{ENV_NAMES[attr]}: {exc}") from None
        settings = cls(**kwargs)
        if settings.startup_timeout_s > settings.timeout_s:
            raise ConfigError(
                f"{ENV_NAMES['startup_timeout_s']} ({settings.startup_timeout_s} s) is longer than"
                f" {ENV_NAMES['timeout_s']} ({settings.timeout_s} s)"
            )
        if (
            settings.max_containers is not None
            and settings.min_containers > settings.max_containers
        ):
            raise ConfigError(
                f"min_containers ({settings.min_containers}) is more than max_containers"
                f" ({settings.max_containers})"
            )
        return settings

    @property
    def jobs_queue(self) -> str:
        """The ``modal.Queue`` whose per-job partitions wake long polls: the Dict's name plus
        ``-events`` (cut to Modal's 63 characters), so it needs no setting of its own."""
        return f"{self.jobs_dict[:56]}-events"

    def to_env(self) -> dict[str, str]:
        """The ``RYLA_*`` variables that make ``from_env`` give these settings back."""
        out: dict[str, str] = {}
        for f in fields(self):
            if f.name not in ENV_NAMES:
                continue
            value = getattr(self, f.name)
            if value is None:
                continue
            if f.name == "custom_nodes":
                text = ",".join(node.spec() for node in value)
            elif f.name == "models":
                text = json.dumps(list(value), sort_keys=True) if value else ""
            elif f.name == "torch_packages":
                text = " ".join(value)
            elif isinstance(value, tuple):
                text = ",".join(value)
            else:
                text = str(value)
            if text:
                out[ENV_NAMES[f.name]] = text
        return out


ENV_NAMES: dict[str, str] = {
    "app_name": "RYLA_APP",
    "gpu": "RYLA_GPU",
    "comfyui_repo": "RYLA_COMFYUI_REPO",
    "comfyui_commit": "RYLA_COMFYUI_COMMIT",
    "torch_packages": "RYLA_TORCH_PACKAGES",
    "custom_nodes": "RYLA_CUSTOM_NODES",
    "models_volume": "RYLA_MODELS_VOLUME",
    "outputs_volume": "RYLA_OUTPUTS_VOLUME",
    "jobs_dict": "RYLA_JOBS_DICT",
    "secrets": "RYLA_SECRETS",
    "webhook_secret": "RYLA_WEBHOOK_SECRET_NAME",
    "scaledown_window_s": "RYLA_SCALEDOWN_WINDOW",
    "max_inputs": "RYLA_MAX_INPUTS",
    "gateway_max_inputs": "RYLA_GATEWAY_MAX_INPUTS",
    "max_containers": "RYLA_MAX_CONTAINERS",
    "min_containers": "RYLA_MIN_CONTAINERS",
    "buffer_containers": "RYLA_BUFFER_CONTAINERS",
    "snapshot": "RYLA_SNAPSHOT",
    "models": "RYLA_MODELS",
    "timeout_s": "RYLA_WORKER_TIMEOUT",
    "startup_timeout_s": "RYLA_WORKER_STARTUP_TIMEOUT",
    "gateway_timeout_s": "RYLA_GATEWAY_TIMEOUT",
    "download_timeout_s": "RYLA_DOWNLOAD_TIMEOUT",
}


# --- parsers: each raises ValueError with a sentence about the value ---------------------------


def parse_gpu(raw: str) -> str:
    """``"a100"`` → ``"A100"``; ``"H100:2"`` stays; anything Modal would not rent is refused."""
    kind, sep, count = raw.strip().partition(":")
    canonical = {g.upper(): g for g in GPU_TYPES}.get(kind.strip().upper())
    if canonical is None:
        raise ValueError(f"{raw!r} is not a Modal GPU type; use one of {', '.join(GPU_TYPES)}")
    if not sep:
        return canonical
    if not count.isdigit() or not 1 <= int(count) <= GPU_MAX_COUNT:
        raise ValueError(f"{raw!r}: the GPU count after ':' must be 1..{GPU_MAX_COUNT}")
    return f"{canonical}:{int(count)}"


def parse_name(raw: str) -> str:
    if not _OBJECT_NAME_RE.match(raw):
        raise ValueError(
            f"{raw!r} is not a valid Modal name (letters, digits, '-', '.', '_'; under 64 chars)"
        )
    return raw


def parse_names(raw: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in raw.split(",") if part.strip())
    for name in names:
        parse_name(name)
    if len(set(names)) != len(names):
        raise ValueError(f"{raw!r} names the same thing twice")
    return names


def parse_commit(raw: str) -> str:
    if not _COMMIT_RE.match(raw):
        raise ValueError(f"{raw!r} is not a full git commit hash (40 hex digits)")
    return raw.lower()


def parse_repo(raw: str) -> str:
    if not _REPO_RE.match(raw) or ".." in raw:
        raise ValueError(f"{raw!r} is not an https git URL (https://host/owner/repo[.git])")
    return raw


def parse_custom_nodes(raw: str) -> tuple[CustomNode, ...]:
    """``URL[@commit],URL[@commit]`` → CustomNode list; directory names must be distinct."""
    nodes: list[CustomNode] = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        url, sep, commit = part.rpartition("@")
        if not sep:
            url, commit = part, ""
        try:
            node = CustomNode(parse_repo(url), parse_commit(commit) if sep else None)
        except ValueError as exc:
            raise ValueError(
                f"{part!r}: {exc}; expected https://host/owner/repo[@commit]"
            ) from None
        if not _NODE_DIR_RE.match(node.directory):
            raise ValueError(f"{part!r}: cannot use {node.directory!r} as a folder name")
        nodes.append(node)
    dirs = [n.directory for n in nodes]
    if len(set(dirs)) != len(dirs):
        raise ValueError(f"two custom nodes would share a folder: {sorted(dirs)}")
    return tuple(nodes)


def parse_packages(raw: str) -> tuple[str, ...]:
    packages = tuple(raw.split())
    for pkg in packages:
        if pkg.startswith("-") or not re.match(r"^[A-Za-z0-9][A-Za-z0-9._\[\],<>=!~+-]*$", pkg):
            raise ValueError(f"{pkg!r} is not a pip requirement (name[extras] and versions only)")
    return packages


def parse_snapshot(raw: str) -> str:
    value = raw.strip().lower()
    if value not in SNAPSHOT_MODES:
        raise ValueError(f"{raw!r} is not one of {', '.join(SNAPSHOT_MODES)}")
    return value


def parse_models(raw: str) -> tuple[dict[str, str], ...]:
    """A JSON list of model items (see ``cloud.models.plan``), checked the way downloads are."""
    from ryla_modal.cloud.models import plan  # models imports image, which imports us

    try:
        items = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not a JSON list of models ({exc.msg})") from None
    if not isinstance(items, list):
        raise ValueError("must be a list of models")
    try:
        return tuple(plan(items))
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


def _int_in(low: int, high: int, unit: str = "") -> Any:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"{raw!r} is not a whole number") from None
        if not low <= value <= high:
            raise ValueError(f"{value} is outside {low}..{high}{unit}")
        return value

    return parse


_PARSERS: dict[str, Any] = {
    "app_name": parse_name,
    "gpu": parse_gpu,
    "comfyui_repo": parse_repo,
    "comfyui_commit": parse_commit,
    "torch_packages": parse_packages,
    "custom_nodes": parse_custom_nodes,
    "models_volume": parse_name,
    "outputs_volume": parse_name,
    "jobs_dict": parse_name,
    "secrets": parse_names,
    "webhook_secret": parse_name,
    "scaledown_window_s": _int_in(*_SCALEDOWN_RANGE, " s"),
    "max_inputs": _int_in(1, 1000),
    "gateway_max_inputs": _int_in(1, 1000),
    "max_containers": _int_in(1, 1000),
    "min_containers": _int_in(0, _CONTAINERS_MAX),
    "buffer_containers": _int_in(0, _CONTAINERS_MAX),
    "snapshot": parse_snapshot,
    "models": parse_models,
    "timeout_s": _int_in(10, _TIMEOUT_MAX_S, " s"),
    "startup_timeout_s": _int_in(10, _TIMEOUT_MAX_S, " s"),
    "gateway_timeout_s": _int_in(10, _TIMEOUT_MAX_S, " s"),
    "download_timeout_s": _int_in(10, _TIMEOUT_MAX_S, " s"),
}


# --- ryla.toml's [deploy] table ------------------------------------------------------------------

#: ``[deploy]`` key -> AppSettings attribute (the keys ``ryla init`` writes, in its order).
TOML_KEYS: dict[str, str] = {
    "app": "app_name",
    "gpu": "gpu",
    "comfyui_repo": "comfyui_repo",
    "comfyui_commit": "comfyui_commit",
    "torch_packages": "torch_packages",
    "custom_nodes": "custom_nodes",
    "models": "models",
    "secrets": "secrets",
    "webhook_secret": "webhook_secret",
    "models_volume": "models_volume",
    "outputs_volume": "outputs_volume",
    "jobs_dict": "jobs_dict",
    "scaledown_window": "scaledown_window_s",
    "min_containers": "min_containers",
    "buffer_containers": "buffer_containers",
    "max_containers": "max_containers",
    "max_inputs": "max_inputs",
    "gateway_max_inputs": "gateway_max_inputs",
    "snapshot": "snapshot",
    "worker_timeout": "timeout_s",
    "worker_startup_timeout": "startup_timeout_s",
    "gateway_timeout": "gateway_timeout_s",
    "download_timeout": "download_timeout_s",
}
TOML_KEYS_BY_ATTR = {attr: key for key, attr in TOML_KEYS.items()}


def read_deploy_table(path: Path) -> dict[str, str]:
    """``[deploy]`` of ``path`` as attribute -> the string form the ``RYLA_*`` parsers take.

    TOML gives typed values; turning them into the environment's strings lets one set of parsers
    check both sources.  Wrong types and unknown keys are refused naming the file and the key.
    """
    import tomllib

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    table = data.get("deploy", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [deploy] must be a table")
    out: dict[str, str] = {}
    for key, value in table.items():
        attr = TOML_KEYS.get(key)
        where = f"{path} [deploy] {key}"
        if attr is None:
            raise ConfigError(f"{where}: unknown key; known keys: {', '.join(TOML_KEYS)}")
        out[attr] = _toml_to_text(attr, value, where)
    return out


def _toml_to_text(attr: str, value: Any, where: str) -> str:
    if attr == "models":
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise ConfigError(f"{where}: must be a list of tables, e.g. [[deploy.models]]")
        return json.dumps(value)
    if attr == "custom_nodes":
        if not isinstance(value, list):
            raise ConfigError(f"{where}: must be a list")
        specs = []
        for node in value:
            if isinstance(node, str):
                specs.append(node)
            elif isinstance(node, dict) and isinstance(node.get("url"), str):
                commit = node.get("commit")
                specs.append(f"{node['url']}@{commit}" if commit else node["url"])
            else:
                raise ConfigError(
                    f"{where}: each node is a string URL[@commit] or {{url = ..., commit = ...}}"
                )
        return ",".join(specs)
    if attr in ("secrets", "torch_packages"):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: must be a list of strings")
        return (" " if attr == "torch_packages" else ",").join(value)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ConfigError(f"{where}: must be a string or a whole number, not {value!r}")
    return str(value)


def comfyui_command(environ: Mapping[str, str] | None = None) -> list[str] | None:
    """``RYLA_COMFYUI_COMMAND`` (a JSON list of strings), or None for ``python main.py``.

    Tests set it to launch the ComfyUI stand-in instead of a real checkout.
    """
    env = os.environ if environ is None else environ
    raw = env.get("RYLA_COMFYUI_COMMAND", "").strip()
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"RYLA_COMFYUI_COMMAND: not JSON ({exc.msg})") from None
    if not (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
        raise ConfigError('RYLA_COMFYUI_COMMAND: must be a JSON list of strings, e.g. ["python"]')
    return value
