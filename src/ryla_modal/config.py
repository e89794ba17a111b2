"""The user config file: where `ryla deploy` records the endpoint so `ryla generate` finds it.

Only the user-config piece lives here for now: its path, reading it, and recording a deployment.
The full settings resolution (flags > ``RYLA_*`` env > ``./ryla.toml`` > user config > defaults)
builds on these functions.

The file is TOML, written atomically with mode 0600 (it may hold a token)::

    app = "ryla-comfyui"
    endpoint = "https://ws--ryla-comfyui-gateway.modal.run"

    [deployments.ryla-comfyui]
    endpoint = "https://ws--ryla-comfyui-gateway.modal.run"
    app_page_url = "https://modal.com/apps/ws/main/deployed/ryla-comfyui"
    deployed_at = "2026-05-09T07:35:25Z"

    [deployments.ryla-comfyui.urls]
    gateway = "https://ws--ryla-comfyui-gateway.modal.run"
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import os
import re
import tempfile
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ryla_modal import defaults
from ryla_modal.errors import ConfigError

CONFIG_DIR_ENV = "RYLA_CONFIG_DIR"
CONFIG_FILE_NAME = "config.toml"


def user_config_path(environ: Mapping[str, str] | None = None) -> Path:
    """``$RYLA_CONFIG_DIR/config.toml``, else ``$XDG_CONFIG_HOME/ryla/config.toml``, else
    ``~/.config/ryla/config.toml``."""
    env = os.environ if environ is None else environ
    if env.get(CONFIG_DIR_ENV):
        return Path(env[CONFIG_DIR_ENV]).expanduser() / CONFIG_FILE_NAME
    if env.get("XDG_CONFIG_HOME"):
        return Path(env["XDG_CONFIG_HOME"]).expanduser() / "ryla" / CONFIG_FILE_NAME
    home = env.get("HOME")
    base = Path(home) if home else Path.home()
    return base / ".config" / "ryla" / CONFIG_FILE_NAME


def read_user_config(path: Path | None = None) -> dict[str, Any]:
    """The user config as a dict; ``{}`` when the file does not exist."""
    path = user_config_path() if path is None else path
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read the ryla user config {path}: {exc}") from exc
    try:
        return tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(
            f"{path}: not valid TOML: {exc}", hint="fix or delete the file, then run again"
        ) from exc


def record_deployment(
    app: str,
    endpoint_url: str | None,
    urls: Mapping[str, str],
    *,
    app_page_url: str | None = None,
    path: Path | None = None,
    now: _dt.datetime | None = None,
) -> Path:
    """Remember a deployment: the top-level ``app``/``endpoint`` (what ``ryla generate`` uses
    next) and a ``[deployments.APP]`` table.  Other keys in the file are kept."""
    path = user_config_path() if path is None else path
    config = read_user_config(path)
    when = (now or _dt.datetime.now(_dt.UTC)).astimezone(_dt.UTC)
    entry: dict[str, Any] = {"deployed_at": when.strftime("%Y-%m-%dT%H:%M:%SZ")}
    if endpoint_url:
        entry["endpoint"] = endpoint_url
    if app_page_url:
        entry["app_page_url"] = app_page_url
    entry["urls"] = dict(urls)
    deployments = config.get("deployments")
    if not isinstance(deployments, dict):
        deployments = {}
    deployments[app] = entry
    config["deployments"] = deployments
    config["app"] = app
    if endpoint_url:
        config["endpoint"] = endpoint_url
    write_toml_atomic(path, config)
    return path


def write_toml_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as TOML to ``path`` through a temporary file and a rename (mode 0600)."""
    text = dumps_toml(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# --- client settings --------------------------------------------------------------------------
# One resolution order for every setting: arguments > RYLA_* env > ./ryla.toml > the user config
# written by `ryla deploy` > defaults.  Secrets are `SecretStr`: never shown in a repr or a log.


class SecretStr:
    """A string that hides itself from repr/str (pydantic's idea, without importing pydantic)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "SecretStr('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretStr) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


PROJECT_CONFIG_NAME = "ryla.toml"


@dataclass(frozen=True)
class ClientSettings:
    """Everything a client needs, already resolved."""

    endpoint: str
    token: SecretStr | None = field(default=None, repr=False)
    modal_key: SecretStr | None = field(default=None, repr=False)
    modal_secret: SecretStr | None = field(default=None, repr=False)
    app: str = defaults.DEFAULT_APP_NAME
    cold_start_timeout: float | None = defaults.COLD_START_TIMEOUT_S
    execution_timeout: float | None = defaults.EXECUTION_TIMEOUT_S
    request_budget_s: float | None = defaults.REQUEST_BUDGET_S
    #: attempts per request, the first included (``RYLA_RETRIES`` counts the extra ones)
    max_attempts: int = defaults.RETRY_MAX_ATTEMPTS


def read_project_config(cwd: Path | None = None) -> dict[str, Any]:
    """``./ryla.toml`` as a dict (``{}`` when absent)."""
    path = (cwd or Path.cwd()) / PROJECT_CONFIG_NAME
    return read_user_config(path)


def _pick(name: str, explicit: Any, env: Mapping[str, str], *tables: Mapping[str, Any]) -> Any:
    if explicit is not None:
        return explicit
    env_value = env.get(f"RYLA_{name.upper()}")
    if env_value:
        return env_value
    for table in tables:
        value = table.get(name)
        if value not in (None, ""):
            return value
    return None


def _seconds(name: str, value: Any, default: float | None) -> float | None:
    if value is None:
        return default
    try:
        seconds = float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} must be a number of seconds, not {value!r}") from exc
    if seconds <= 0:
        raise ConfigError(f"{name} must be positive, not {value!r}")
    return seconds


def resolve_client_settings(
    *,
    endpoint: str | None = None,
    token: str | None = None,
    modal_key: str | None = None,
    modal_secret: str | None = None,
    cold_start_timeout: float | None = None,
    execution_timeout: float | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    user_config: Path | None = None,
) -> ClientSettings:
    """Resolve the client's settings; raise `ConfigError` naming what is missing."""
    env = os.environ if environ is None else environ
    project = read_project_config(cwd)
    user = read_user_config(user_config or user_config_path(env))
    url = _pick("endpoint", endpoint, env, project, user)
    if not url:
        raise ConfigError(
            "no endpoint configured",
            hint="run `ryla deploy`, or pass --endpoint URL, or set RYLA_ENDPOINT",
        )
    url = str(url).rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"endpoint {url!r} is not an http(s) URL")

    def secret(name: str, explicit: str | None) -> SecretStr | None:
        value = _pick(name, explicit, env, project, user)
        return SecretStr(str(value)) if value else None

    key, sec = secret("modal_key", modal_key), secret("modal_secret", modal_secret)
    if (key is None) != (sec is None):
        raise ConfigError(
            "Modal proxy auth needs both a key and a secret",
            hint="set both RYLA_MODAL_KEY and RYLA_MODAL_SECRET",
        )
    retries = _pick("retries", None, env, project, user)
    try:
        max_attempts = defaults.RETRY_MAX_ATTEMPTS if retries is None else int(retries) + 1
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"retries must be a whole number, not {retries!r}") from exc
    if max_attempts < 1:
        raise ConfigError(f"retries must be 0 or more, not {retries!r}")
    return ClientSettings(
        endpoint=url,
        max_attempts=max_attempts,
        token=secret("token", token),
        modal_key=key,
        modal_secret=sec,
        app=str(_pick("app", None, env, project, user) or defaults.DEFAULT_APP_NAME),
        cold_start_timeout=_seconds(
            "cold_start_timeout",
            _pick("cold_start_timeout", cold_start_timeout, env, project, user),
            defaults.COLD_START_TIMEOUT_S,
        ),
        execution_timeout=_seconds(
            "execution_timeout",
            _pick("execution_timeout", execution_timeout, env, project, user),
            defaults.EXECUTION_TIMEOUT_S,
        ),
    )


# --- a minimal TOML writer ------------------------------------------------------------------------
# Enough for a settings file: strings, booleans, numbers, datetimes, lists of those, and nested
# tables.  Arrays of tables are not needed and are refused rather than written wrongly.

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def dumps_toml(data: Mapping[str, Any]) -> str:
    lines: list[str] = []
    _write_table(lines, (), data)
    return "\n".join(lines).lstrip("\n") + "\n"


def _write_table(lines: list[str], prefix: tuple[str, ...], table: Mapping[str, Any]) -> None:
    scalars = [(k, v) for k, v in table.items() if not isinstance(v, Mapping)]
    tables = [(k, v) for k, v in table.items() if isinstance(v, Mapping)]
    if prefix and (scalars or not tables):
        lines.append("")
        lines.append("[" + ".".join(_key(k) for k in prefix) + "]")
    for key, value in scalars:
        lines.append(f"{_key(key)} = {_value(value, (*prefix, key))}")
    for key, value in tables:
        _write_table(lines, (*prefix, key), value)


def _key(key: object) -> str:
    if not isinstance(key, str):
        raise ConfigError(f"config key {key!r} is not a string")
    return key if _BARE_KEY.match(key) else _string(key)


def _value(value: object, where: tuple[str, ...]) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, _dt.datetime | _dt.date | _dt.time):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v, where) for v in value) + "]"
    raise ConfigError(f"cannot write config value {'.'.join(where)} of type {type(value).__name__}")


def _string(text: str) -> str:
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)
