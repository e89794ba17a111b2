"""ModalCLI against the REAL `modal` CLI talking to the local control-plane stand-in."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import sys
import textwrap
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from ryla_modal import defaults
from ryla_modal.deploy import modal_cli
from ryla_modal.deploy.modal_cli import (
    ModalCLI,
    check_token,
    classify,
    parse_app_list,
    parse_deploy_output,
    pick_endpoint,
)
from ryla_modal.deploy.proc import CommandResult, run_command
from ryla_modal.errors import AuthError, CommandTimeout, ConfigError, ModalCLIError
from tests._hang_servers import SilentPeer, closed_port
from tests._pids import wait_dead
from tests.fakes.modal_control import FakeModalControl

HELLO_APP = Path(__file__).parent / "fakes" / "modal_apps" / "hello_app.py"
# What a deadline may overrun by: the kill grace, plus scheduling slack on a busy machine.
SLACK_S = defaults.KILL_GRACE_S + 0.5


@pytest.fixture
def fake() -> Iterator[FakeModalControl]:
    with FakeModalControl() as control:
        yield control


def make_cli(env: dict[str, str], pids: list[int], **kwargs: object) -> ModalCLI:
    # Retry waits patched to zero: the tests count attempts, not seconds.
    return ModalCLI(
        env=env,
        on_start=pids.append,
        retry_wait_multiplier=0,
        retry_wait_max=0,
        **kwargs,  # type: ignore[arg-type]
    )


# --- logs -----------------------------------------------------------------------------------------


def test_logs_returns_the_apps_lines_and_streams_them(
    fake: FakeModalControl, tmp_path: Path
) -> None:
    fake.add_app("hello", logs=["first line", "second [bracketed] line"])
    pids: list[int] = []
    seen: list[tuple[str, str]] = []
    result = make_cli(fake.env(tmp_path), pids).logs(
        "hello", timeout=30, on_line=lambda s, line: seen.append((s, line))
    )
    assert result.lines == ["first line", "second [bracketed] line"]
    assert ("stdout", "first line") in seen
    assert not result.timed_out and result.attempts == 1
    assert wait_dead(pids) == []


def test_tail_since_and_search_reach_the_server(fake: FakeModalControl, tmp_path: Path) -> None:
    fake.add_app("hello", logs=[f"line {i}" for i in range(10)] + ["an error here"])
    before = time.time()
    result = make_cli(fake.env(tmp_path), []).logs(
        "hello", timeout=30, tail=3, since="1h", search="error"
    )
    assert result.lines == ["an error here"]
    (request,) = fake.calls_named("AppFetchLogs")
    assert request.limit == 3
    assert request.search_text == "error"
    assert abs(request.since.seconds - (before - 3600)) < 120


def test_follow_streams_until_the_deadline(fake: FakeModalControl, tmp_path: Path) -> None:
    fake.add_app("hello", logs=["streamed a", "streamed b"])
    pids: list[int] = []
    arrived: list[float] = []
    started = time.monotonic()
    result = make_cli(fake.env(tmp_path), pids).logs(
        "hello",
        timeout=3,
        follow=True,
        on_line=lambda s, line: arrived.append(time.monotonic() - started),
    )
    assert result.follow and result.timed_out
    assert result.lines == ["streamed a", "streamed b"]
    assert fake.calls_named("AppGetLogs"), "follow must use the streaming RPC"
    assert arrived and max(arrived) < 3, "lines must arrive while the stream is still open"
    assert result.duration_s < 3 + SLACK_S
    assert wait_dead(pids) == []


def test_unknown_app_is_a_clear_error_without_retry(fake: FakeModalControl, tmp_path: Path) -> None:
    fake.add_app("hello")
    pids: list[int] = []
    with pytest.raises(ModalCLIError) as info:
        make_cli(fake.env(tmp_path), pids, retries=3).logs("nope", timeout=30)
    assert "No App with name 'nope'" in str(info.value)
    assert info.value.hint and "ryla apps" in info.value.hint
    assert info.value.returncode == 1
    assert len(pids) == 1


@pytest.mark.parametrize("token_id", ["ak-unknown", "not-a-token"])
def test_bad_token_is_an_auth_error_without_retry(
    fake: FakeModalControl, tmp_path: Path, token_id: str
) -> None:
    fake.add_app("hello")
    pids: list[int] = []
    env = fake.env(tmp_path, token_id=token_id, token_secret="as-very-secret-value")
    with pytest.raises(AuthError) as info:
        make_cli(env, pids, retries=3).logs("hello", timeout=30)
    assert "token" in str(info.value).lower()
    assert len(pids) == 1
    assert "as-very-secret-value" not in f"{info.value} {info.value.hint}"


def test_unavailable_is_retried_then_a_clear_error(
    fake: FakeModalControl, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake.add_app("hello")
    fake.mode = "unavailable"
    pids: list[int] = []
    caplog.set_level(logging.INFO, logger="ryla_modal")
    with pytest.raises(ModalCLIError) as info:
        make_cli(fake.env(tmp_path), pids, retries=2).logs("hello", timeout=30)
    assert len(pids) == 3
    # every retry is logged, one per attempt that was followed by another
    retries = [r.getMessage() for r in caplog.records if r.name == "ryla_modal"]
    assert len(retries) == len(pids) - 1
    assert [m.split("(attempt ")[1].split(" ")[0] for m in retries] == ["1", "2"]
    assert all(m.startswith("retrying modal app logs in ") for m in retries)
    assert "could not reach Modal after 3 attempts" in str(info.value)
    assert info.value.stderr_tail
    assert all("as-test" not in arg for arg in info.value.argv)
    assert wait_dead(pids) == []


@pytest.mark.parametrize("failures", [1, 2])
def test_transient_failures_then_success(
    fake: FakeModalControl, tmp_path: Path, failures: int
) -> None:
    fake.add_app("hello", logs=["finally"])
    fake.mode = "unavailable"
    pids: list[int] = []

    def on_start(pid: int) -> None:
        pids.append(pid)
        if len(pids) == failures + 1:  # modal takes ~0.5 s to import before its first RPC
            fake.mode = "normal"

    cli = ModalCLI(env=fake.env(tmp_path), on_start=on_start, retries=3, retry_wait_multiplier=0)
    result = cli.logs("hello", timeout=30)
    assert result.lines == ["finally"]
    assert result.attempts == failures + 1


@pytest.mark.parametrize("hang", ["never_answer", "closed_port", "silent_peer"])
def test_hangs_end_at_the_deadline_with_nothing_left_alive(
    fake: FakeModalControl, tmp_path: Path, hang: str
) -> None:
    fake.add_app("hello", logs=["x"])
    env = fake.env(tmp_path)
    peer = SilentPeer()
    if hang == "never_answer":
        fake.mode = "never_answer"
    elif hang == "closed_port":
        env["MODAL_SERVER_URL"] = f"http://127.0.0.1:{closed_port()}"
    else:
        env["MODAL_SERVER_URL"] = peer.url
    pids: list[int] = []
    with peer:
        started = time.monotonic()
        result = make_cli(env, pids).logs("hello", timeout=3)
        elapsed = time.monotonic() - started
    assert result.timed_out and result.lines == []
    assert elapsed < 3 + SLACK_S
    assert wait_dead(pids) == []
    if hang == "silent_peer":
        assert peer.accepted >= 1, "modal never reached the silent peer: the test proves nothing"


def test_the_budget_counts_from_the_call_not_from_after_its_setup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A loaded machine spent 0.2-0.45 s importing and preparing before the first attempt, and
    `ryla logs --timeout 3` then stopped modal that late.  Setup here takes >= 0.5 s: the
    attempt gets at most what is left of the 3 s."""
    real_child_env = modal_cli._child_env

    def slow_child_env(environ: Mapping[str, str]) -> dict[str, str]:
        time.sleep(0.5)
        return real_child_env(environ)

    given: list[float] = []
    real_run = run_command  # what modal_cli calls

    def recording_run(argv: Sequence[str], **kwargs: Any) -> CommandResult:
        given.append(kwargs["timeout"])
        return real_run(argv, **kwargs)

    monkeypatch.setattr(modal_cli, "_child_env", slow_child_env)
    monkeypatch.setattr(modal_cli, "run_command", recording_run)
    env = {"MODAL_TOKEN_ID": "ak-x", "MODAL_TOKEN_SECRET": "as-x"}
    cli = ModalCLI(env=env, command=[sys.executable, "-c", "print('a line')"])
    result = cli.logs("hello", timeout=3)
    assert result.lines == ["a line"]
    (timeout,) = given
    assert timeout <= 2.5, f"the attempt was given {timeout:.2f}s of a 3s budget after 0.5s"


def test_grandchild_holding_stdout_does_not_outlive_the_deadline(tmp_path: Path) -> None:
    # A stand-in "modal" whose child keeps our pipe open and ignores SIGTERM.
    script = tmp_path / "fake_modal.py"
    script.write_text(
        textwrap.dedent("""
            import subprocess, sys, time
            gc = subprocess.Popen([sys.executable, "-c",
                "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "time.sleep(600)"])
            print("grandchild", gc.pid, flush=True)
            time.sleep(600)
        """)
    )
    env = {**os.environ, "MODAL_TOKEN_ID": "ak-x", "MODAL_TOKEN_SECRET": "as-x"}
    pids: list[int] = []
    cli = make_cli(env, pids, command=[sys.executable, str(script)])
    result = cli.logs("hello", timeout=1.5)
    assert result.timed_out
    grandchild = int(result.lines[0].split()[1])
    assert wait_dead([*pids, grandchild]) == []


def test_ctrl_c_stops_modal_and_propagates(fake: FakeModalControl, tmp_path: Path) -> None:
    fake.add_app("hello", logs=["one"])
    pids: list[int] = []

    def on_line(stream: str, line: str) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C while lines stream

    with pytest.raises(KeyboardInterrupt):
        make_cli(fake.env(tmp_path), pids).logs("hello", timeout=30, follow=True, on_line=on_line)
    assert len(pids) == 1
    assert wait_dead(pids) == []


def test_logs_argument_errors() -> None:
    cli = ModalCLI(env={"MODAL_TOKEN_ID": "ak-x", "MODAL_TOKEN_SECRET": "as-x"})
    with pytest.raises(ValueError, match="follow"):
        cli.logs("hello", follow=True, since="1h")
    with pytest.raises(ValueError, match="tail"):
        cli.logs("hello", tail=0)


# --- apps, stop, deploy ---------------------------------------------------------------------------


def test_apps_lists_what_the_server_has(fake: FakeModalControl, tmp_path: Path) -> None:
    live = fake.add_app("alpha")
    gone = fake.add_app("beta", state="stopped")
    rows = make_cli(fake.env(tmp_path), []).apps()
    by_id = {row.app_id: row for row in rows}
    assert by_id[live].name == "alpha" and by_id[live].state == "deployed"
    assert by_id[gone].state == "stopped" and by_id[gone].stopped_at
    assert fake.calls_named("AppList")


def test_stop_stops_and_is_idempotent(fake: FakeModalControl, tmp_path: Path) -> None:
    app_id = fake.add_app("hello")
    cli = make_cli(fake.env(tmp_path), [])
    first = cli.stop("hello")
    assert not first.already_stopped
    assert fake.app_state(app_id) == "stopped"
    assert [r.app_id for r in fake.calls_named("AppStop")] == [app_id]
    second = cli.stop("hello")
    assert second.already_stopped
    assert len(fake.calls_named("AppStop")) == 1


def test_stop_unknown_app(fake: FakeModalControl, tmp_path: Path) -> None:
    with pytest.raises(ModalCLIError, match="No App with name 'ghost'"):
        make_cli(fake.env(tmp_path), []).stop("ghost")


def test_deploy_returns_the_web_endpoint_urls(fake: FakeModalControl, tmp_path: Path) -> None:
    seen: list[str] = []
    result = make_cli(fake.env(tmp_path), []).deploy(
        HELLO_APP, timeout=120, on_line=lambda s, line: seen.append(line)
    )
    record = fake.deployed["hello-app"]
    assert record["web_urls"], "the stand-in declared no web endpoint"
    assert result.urls == record["web_urls"]
    assert result.endpoint_url == record["web_urls"]["web"]
    assert result.app == "hello-app"
    assert result.app_page_url and result.app_page_url.endswith("/deployed/hello-app")
    assert any("Created" in line for line in seen), "build output must stream"


def test_deploy_with_a_name(fake: FakeModalControl, tmp_path: Path) -> None:
    result = make_cli(fake.env(tmp_path), []).deploy(HELLO_APP, name="renamed", timeout=120)
    assert result.app == "renamed"
    assert "renamed" in fake.deployed


def test_deploy_relative_app_file_is_read_from_cwd(fake: FakeModalControl, tmp_path: Path) -> None:
    app_dir = tmp_path / "project"
    (app_dir / "apps").mkdir(parents=True)
    shutil.copy(HELLO_APP, app_dir / "apps" / "hello.py")
    result = make_cli(fake.env(tmp_path), []).deploy("apps/hello.py", timeout=120, cwd=app_dir)
    assert result.app == "hello-app"
    assert "hello-app" in fake.deployed


def test_deploy_preflight_missing_file(tmp_path: Path) -> None:
    cli = ModalCLI(env={"MODAL_TOKEN_ID": "ak-x", "MODAL_TOKEN_SECRET": "as-x"})
    with pytest.raises(ConfigError, match="no Modal app file"):
        cli.deploy(tmp_path / "missing.py")


def test_commands_time_out_with_command_timeout(fake: FakeModalControl, tmp_path: Path) -> None:
    fake.mode = "never_answer"
    pids: list[int] = []
    with pytest.raises(CommandTimeout) as info:
        make_cli(fake.env(tmp_path), pids, retries=0).apps(timeout=2)
    assert isinstance(info.value, TimeoutError)
    assert info.value.exit_code == 124
    assert wait_dead(pids) == []


# --- preflight ------------------------------------------------------------------------------------


def test_no_token_fails_before_running_modal(tmp_path: Path) -> None:
    config = tmp_path / "modal.toml"
    config.write_text("")
    env = {"HOME": str(tmp_path), "MODAL_CONFIG_PATH": str(config), "PATH": os.environ["PATH"]}
    pids: list[int] = []
    with pytest.raises(ConfigError) as info:
        ModalCLI(env=env, on_start=pids.append).apps()
    assert "no Modal token" in str(info.value)
    assert info.value.hint and "modal token new" in info.value.hint
    assert pids == []


def test_token_from_the_active_profile(tmp_path: Path) -> None:
    config = tmp_path / "modal.toml"
    config.write_text(
        '[old]\ntoken_id = "ak-1"\ntoken_secret = "as-1"\n\n'
        '[work]\nactive = true\ntoken_id = "ak-2"\ntoken_secret = "as-2"\n'
    )
    check_token({"MODAL_CONFIG_PATH": str(config)})
    config.write_text('[work]\nactive = true\ntoken_id = "ak-2"\n')
    with pytest.raises(ConfigError, match="profile 'work'"):
        check_token({"MODAL_CONFIG_PATH": str(config)})
    with pytest.raises(ConfigError, match="profile 'old'"):
        check_token({"MODAL_CONFIG_PATH": str(config), "MODAL_PROFILE": "old"})


def test_half_a_token_and_a_broken_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="MODAL_TOKEN_SECRET"):
        check_token({"MODAL_TOKEN_ID": "ak-1", "HOME": str(tmp_path)})
    broken = tmp_path / "modal.toml"
    broken.write_text("[default\n")
    with pytest.raises(ConfigError, match=re.escape(str(broken))):
        check_token({"MODAL_CONFIG_PATH": str(broken)})


def test_the_modal_of_this_environment_is_used() -> None:
    argv = modal_cli.modal_command()
    assert Path(argv[0]).parent == Path(sys.executable).parent or argv[1:] == ["-m", "modal"]


# --- pure helpers ---------------------------------------------------------------------------------


def result(exit_code: int | None, stderr: str = "", stdout: str = "", timed_out: bool = False):
    lines = [("stdout", x) for x in stdout.splitlines()] + [
        ("stderr", x) for x in stderr.splitlines()
    ]
    return CommandResult(
        argv=("modal",),
        exit_code=exit_code,
        lines=tuple(lines),
        stderr_tail=stderr,
        timed_out=timed_out,
        duration_s=0.1,
    )


@pytest.mark.parametrize(
    ("res", "kind"),
    [
        (result(0, stdout="ok"), "ok"),
        (result(1, "Error: No App with name 'x' found in the 'main' environment."), "not_found"),
        (result(1, "Error: Token missing. Could not authenticate client."), "auth"),
        (result(1, "Error: Token ID is malformed"), "auth"),
        (result(2, "Usage: modal app logs\nError: --tail value must be positive."), "usage"),
        (result(1, "Error: Could not connect to the Modal server."), "transient"),
        (result(1, "Error: Deadline exceeded"), "transient"),
        (result(1, "Error: Connection lost!", stdout="half a log"), "failed"),
        (result(-15, timed_out=True), "transient"),
        (result(-15, stdout="some", timed_out=True), "failed"),
        (result(1, "App is already stopped. (Finished at 2026-01-01)"), "already_stopped"),
        (result(1, "Error: something else broke"), "failed"),
    ],
)
def test_classify(res: CommandResult, kind: str) -> None:
    assert classify(res) == kind


def test_parse_deploy_output_forms() -> None:
    lines = [
        "✓ Created objects.",
        "├── 🔨 Created mount /src/app.py",
        "├── ✓ Created Function gateway",
        "│   └── https://ws--app-gateway.modal.run 🔑",
        "│       Custom domain: https://api.example.com",
        "├── ✓ Created Function open (unauthenticated)",
        "├── ✓ Created Function hook",
        "│   └── https://ws--app-hook.modal.run (unauthenticated)",
        "└── ✓ Created Function Worker.*.",
        "    └── run -> https://ws--app-worker-run.modal.run 🔑",
        "✓ App deployed in 1.0s! 🎉",
        "",
        "View Deployment: https://modal.com/apps/ws/main/deployed/app",
    ]
    urls, page = parse_deploy_output(lines)
    assert urls == {
        "gateway": "https://ws--app-gateway.modal.run",
        "hook": "https://ws--app-hook.modal.run",
        "Worker.*.run": "https://ws--app-worker-run.modal.run",
    }
    assert page == "https://modal.com/apps/ws/main/deployed/app"
    assert pick_endpoint(urls) == "https://ws--app-gateway.modal.run"
    assert pick_endpoint({"a": "https://a.modal.run", "b": "https://b.modal.run"}) == (
        "https://a.modal.run"
    )
    assert pick_endpoint({}) is None


def test_parse_app_list_accepts_both_key_styles() -> None:
    rows = parse_app_list(
        '[{"app_id": "ap-1", "description": "a", "state": "deployed", "tasks": "2",'
        ' "created_at": "t", "stopped_at": null},'
        ' {"App ID": "ap-2", "Description": "b", "State": "stopped", "Tasks": "0",'
        ' "Created at": "t", "Stopped at": "u"}]'
    )
    assert [(r.app_id, r.name, r.state, r.tasks, r.stopped_at) for r in rows] == [
        ("ap-1", "a", "deployed", 2, None),
        ("ap-2", "b", "stopped", 0, "u"),
    ]
    with pytest.raises(ModalCLIError, match="not JSON"):
        parse_app_list("Apps\n----")
