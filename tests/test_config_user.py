"""The user config file `ryla deploy` writes: where it lives, what it keeps, how it is written."""

from __future__ import annotations

import datetime as dt
import stat
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ryla_modal.config import (
    dumps_toml,
    read_user_config,
    record_deployment,
    user_config_path,
)
from ryla_modal.errors import ConfigError


def test_user_config_path_precedence(tmp_path: Path) -> None:
    assert user_config_path({"RYLA_CONFIG_DIR": str(tmp_path / "d"), "HOME": "/h"}) == (
        tmp_path / "d" / "config.toml"
    )
    assert user_config_path({"XDG_CONFIG_HOME": "/x", "HOME": "/h"}) == Path("/x/ryla/config.toml")
    assert user_config_path({"HOME": "/h"}) == Path("/h/.config/ryla/config.toml")


def test_record_deployment_keeps_other_keys_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "cfg" / "config.toml"
    path.parent.mkdir()
    path.write_text('token = "keep-me"\n[deployments.old]\nendpoint = "https://old.modal.run"\n')
    when = dt.datetime(2026, 5, 9, 7, 35, 25, tzinfo=dt.UTC)
    written = record_deployment(
        "ryla-comfyui",
        "https://ws--ryla-comfyui-gateway.modal.run",
        {"gateway": "https://ws--ryla-comfyui-gateway.modal.run"},
        app_page_url="https://modal.com/apps/ws/main/deployed/ryla-comfyui",
        path=path,
        now=when,
    )
    assert written == path
    config = tomllib.loads(path.read_text())
    assert config["token"] == "keep-me"
    assert config["app"] == "ryla-comfyui"
    assert config["endpoint"] == "https://ws--ryla-comfyui-gateway.modal.run"
    assert config["deployments"]["old"] == {"endpoint": "https://old.modal.run"}
    entry = config["deployments"]["ryla-comfyui"]
    assert entry["deployed_at"] == "2026-05-09T07:35:25Z"
    assert entry["urls"] == {"gateway": "https://ws--ryla-comfyui-gateway.modal.run"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["config.toml"], "no temporary files left"


def test_a_deploy_without_endpoints_keeps_the_previous_endpoint(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    record_deployment("a", "https://a.modal.run", {"web": "https://a.modal.run"}, path=path)
    record_deployment("b", None, {}, path=path)
    config = read_user_config(path)
    assert config["app"] == "b"
    assert config["endpoint"] == "https://a.modal.run"
    assert "endpoint" not in config["deployments"]["b"]


def test_broken_user_config_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("endpoint = \n")
    with pytest.raises(ConfigError, match=r"config\.toml"):
        read_user_config(path)
    assert read_user_config(tmp_path / "missing.toml") == {}


_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
_scalars = st.one_of(
    _text,
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
)
_values = st.one_of(_scalars, st.lists(_scalars, max_size=4))
_tables: st.SearchStrategy[dict[str, Any]] = st.recursive(
    st.dictionaries(_text, _values, max_size=5),
    lambda children: st.dictionaries(_text, st.one_of(_values, children), max_size=4),
    max_leaves=20,
)


@given(_tables)
@example({"0\n": 0})  # what the hand-written writer got wrong: a key with a control character
@example({"a": {"\x7f": [1.5, "\x00"], "b c": {"": True}}})
def test_dumps_toml_round_trips(data: dict[str, Any]) -> None:
    assert tomllib.loads(dumps_toml(data)) == data


def test_dumps_toml_writes_arrays_of_tables_and_names_what_it_cannot_write() -> None:
    assert tomllib.loads(dumps_toml({"rows": [{"x": 1}, {"x": 2}]})) == {
        "rows": [{"x": 1}, {"x": 2}]
    }
    with pytest.raises(ConfigError, match=r"a\.b"):
        dumps_toml({"a": {"b": object()}})
    with pytest.raises(ConfigError, match="not a string"):
        dumps_toml({"a": {1: "x"}})
