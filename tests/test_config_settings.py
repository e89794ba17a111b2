"""Settings resolution: arguments > RYLA_* env > ./ryla.toml > user config > defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from ryla_modal.config import record_deployment, resolve_client_settings
from ryla_modal.errors import ConfigError


def _resolve(tmp_path: Path, env: dict[str, str] | None = None, **kw: object):
    cwd = tmp_path / "project"
    cwd.mkdir(exist_ok=True)
    return resolve_client_settings(
        environ=env or {},
        cwd=cwd,
        user_config=tmp_path / "user.toml",
        **kw,  # type: ignore[arg-type]
    )


def test_precedence_argument_env_project_user(tmp_path: Path) -> None:
    record_deployment("app", "https://user.example", {}, path=tmp_path / "user.toml")
    assert _resolve(tmp_path).endpoint == "https://user.example"
    (tmp_path / "project" / "ryla.toml").write_text('endpoint = "https://project.example/"\n')
    assert _resolve(tmp_path).endpoint == "https://project.example"
    env = {"RYLA_ENDPOINT": "https://env.example"}
    assert _resolve(tmp_path, env).endpoint == "https://env.example"
    assert _resolve(tmp_path, env, endpoint="http://arg.example").endpoint == "http://arg.example"


def test_missing_endpoint_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        _resolve(tmp_path)
    assert "ryla deploy" in (info.value.hint or "")


def test_secrets_never_show_in_repr(tmp_path: Path) -> None:
    env = {
        "RYLA_ENDPOINT": "http://x",
        "RYLA_TOKEN": "s3cret-token",
        "RYLA_MODAL_KEY": "wk-key",
        "RYLA_MODAL_SECRET": "ws-secret",
    }
    settings = _resolve(tmp_path, env)
    assert settings.token is not None and settings.token.get_secret_value() == "s3cret-token"
    text = repr(settings) + str(settings.token)
    for secret in ("s3cret-token", "wk-key", "ws-secret"):
        assert secret not in text


def test_half_of_modal_auth_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="key and a secret"):
        _resolve(tmp_path, {"RYLA_ENDPOINT": "http://x", "RYLA_MODAL_KEY": "k"})


@pytest.mark.parametrize("value", ["abc", "-1", "0"])
def test_bad_timeout_is_named(tmp_path: Path, value: str) -> None:
    env = {"RYLA_ENDPOINT": "http://x", "RYLA_COLD_START_TIMEOUT": value}
    with pytest.raises(ConfigError, match="cold_start_timeout"):
        _resolve(tmp_path, env)


def test_not_a_url(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not an http"):
        _resolve(tmp_path, {"RYLA_ENDPOINT": "ftp://x"})
