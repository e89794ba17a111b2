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
import ipaddress
import os
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


# --- writing TOML -------------------------------------------------------------------------------
# tomli-w, a kept writer, instead of our own: a hand-written one did not quote a key holding a
# control character ('0\n'), found by hypothesis.  We only add an error that names the key.


def dumps_toml(data: Mapping[str, Any]) -> str:
    """``data`` as TOML text; ``ConfigError`` naming the key of a value TOML cannot hold."""
    import tomli_w  # only `ryla deploy` writes config: keep it off everyone else's start-up

    _check_toml_value(data, ())
    try:
        return tomli_w.dumps(data)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cannot write the config as TOML: {exc}") from exc


def _check_toml_value(value: object, where: tuple[str, ...]) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigError(
                    f"config key {key!r} in {'.'.join(where) or 'the top level'} is not a string"
                )
            _check_toml_value(item, (*where, key))
    elif isinstance(value, list | tuple):
        for item in value:
            _check_toml_value(item, where)
    elif not isinstance(value, str | int | float | _dt.datetime | _dt.date | _dt.time):
        raise ConfigError(
            f"cannot write config value {'.'.join(where)} of type {type(value).__name__}"
        )


# --- `ryla serve`'s token ----------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def serve_token(token: str | None, host: str) -> str | None:
    """The bearer token a local gateway on ``host`` requires, or None for none.

    ``""`` means no token.  A token of only whitespace is refused rather than taken: no client
    can send it back (HTTP strips the spaces of a header value), and letting it count as "a
    token" would open a non-loopback address to anyone.  Without a token only a loopback
    address may be served.
    """
    if token is None or token == "":
        chosen = None
    elif not token.strip():
        raise ConfigError(
            "the token is blank (only whitespace)",
            hint="set RYLA_TOKEN to a real secret (openssl rand -hex 16), or unset it",
        )
    else:
        chosen = token.strip()
    if chosen is None and not is_loopback(host):
        raise ConfigError(
            f"refusing to listen on {host} without a token: anyone who can reach it could run jobs",
            hint="set RYLA_TOKEN (clients send it as 'Authorization: Bearer ...'), or listen on"
            " 127.0.0.1",
        )
    return chosen
