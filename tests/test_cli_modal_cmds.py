"""`ryla logs/apps/stop/deploy` as a user runs them: a real `ryla` process, the real `modal`
CLI under it, and the local control-plane stand-in behind both."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._hang_servers import SilentPeer, closed_port
from tests._pids import wait_dead
from tests.fakes.modal_control import FakeModalControl

HELLO_APP = Path(__file__).parent / "fakes" / "modal_apps" / "hello_app.py"


@pytest.fixture
def fake() -> Iterator[FakeModalControl]:
    with FakeModalControl() as control:
        yield control


@pytest.fixture
def env(fake: FakeModalControl, tmp_path: Path) -> dict[str, str]:
    out = fake.env(tmp_path / "home")
    out["RYLA_CONFIG_DIR"] = str(tmp_path / "ryla")
    # Every process we start inherits this marker, so leftovers can be found by it.
    out["RYLA_TEST_MARK"] = uuid.uuid4().hex
    out.pop("RYLA_APP", None)
    return out


def run_ryla(
    args: list[str], env: dict[str, str], timeout: float = 60
) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "ryla_modal.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    return proc, time.monotonic() - started


def marked_pids(mark: str) -> list[int]:
    """Processes whose environment carries ``RYLA_TEST_MARK=mark`` (ours, and their children)."""
    needle = f"RYLA_TEST_MARK={mark}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


# --- ryla logs ------------------------------------------------------------------------------------


def test_logs_prints_the_lines(fake: FakeModalControl, env: dict[str, str]) -> None:
    fake.add_app("hello", logs=["one", "two [with brackets]"])
    proc, _ = run_ryla(["logs", "hello"], env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["one", "two [with brackets]"]


def test_logs_json_is_ndjson_with_an_end_record(
    fake: FakeModalControl, env: dict[str, str]
) -> None:
    fake.add_app("hello", logs=["one"])
    proc, _ = run_ryla(["logs", "hello", "--json"], env)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert records[0] == {"type": "line", "line": "one"}
    assert records[-1]["type"] == "end"
    assert records[-1]["lines"] == 1 and records[-1]["timed_out"] is False


def test_logs_options_reach_the_server(fake: FakeModalControl, env: dict[str, str]) -> None:
    fake.add_app("hello", logs=["boot", "error: one", "error: two", "done"])
    before = time.time()
    proc, _ = run_ryla(["logs", "hello", "--tail", "5", "--since", "2h", "--search", "error"], env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["error: one", "error: two"]
    (request,) = fake.calls_named("AppFetchLogs")
    assert request.limit == 5
    assert request.search_text == "error"
    assert abs(request.since.seconds - (before - 7200)) < 120


def test_follow_streams_until_the_deadline_and_exits_0(
    fake: FakeModalControl, env: dict[str, str]
) -> None:
    fake.add_app("hello", logs=["live 1", "live 2"])
    proc, elapsed = run_ryla(["logs", "hello", "--follow", "--timeout", "3"], env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["live 1", "live 2"]
    assert "stopped following after 3s" in proc.stderr
    assert elapsed >= 3, "a follow ends at its deadline, not before"
    assert fake.calls_named("AppGetLogs")
    assert wait_dead(marked_pids(env["RYLA_TEST_MARK"])) == []


def test_follow_rejects_since(env: dict[str, str]) -> None:
    proc, _ = run_ryla(["logs", "hello", "--follow", "--since", "1h"], env)
    assert proc.returncode == 2
    assert "--follow" in proc.stderr


def test_unknown_app_exit_1_without_retry(fake: FakeModalControl, env: dict[str, str]) -> None:
    fake.add_app("hello")
    proc, _ = run_ryla(["logs", "nope", "--retries", "3"], env)
    assert proc.returncode == 1
    assert "No App with name 'nope'" in proc.stderr
    assert len(fake.calls_named("AppGetByDeploymentName")) == 1


def test_bad_token_exit_5_without_retry(
    fake: FakeModalControl, env: dict[str, str], tmp_path: Path
) -> None:
    fake.add_app("hello")
    bad = {
        **env,
        **fake.env(tmp_path / "bad", token_id="ak-wrong", token_secret="as-secret-xyz"),
    }
    proc, _ = run_ryla(["logs", "hello", "--retries", "3"], bad)
    assert proc.returncode == 5
    assert "token" in proc.stderr.lower()
    assert "as-secret-xyz" not in proc.stderr + proc.stdout
    assert len(fake.calls_named("ClientHello")) <= 1
    assert not fake.calls_named("AppFetchLogs")


def test_no_token_at_all_exit_5(env: dict[str, str]) -> None:
    del env["MODAL_TOKEN_ID"], env["MODAL_TOKEN_SECRET"]
    proc, _ = run_ryla(["logs", "hello"], env)
    assert proc.returncode == 5
    assert "modal token new" in proc.stderr


def test_unavailable_is_retried_then_exit_1(fake: FakeModalControl, env: dict[str, str]) -> None:
    fake.add_app("hello")
    fake.mode = "unavailable"
    proc, _ = run_ryla(["logs", "hello", "--retries", "1", "--timeout", "30"], env)
    assert proc.returncode == 1
    assert "could not reach Modal after 2 attempts" in proc.stderr
    assert "hint:" in proc.stderr


@pytest.mark.parametrize("hang", ["never_answer", "closed_port", "silent_peer"])
def test_hang_modes_exit_124_by_the_deadline(
    fake: FakeModalControl, env: dict[str, str], hang: str
) -> None:
    fake.add_app("hello", logs=["x"])
    peer = SilentPeer()
    if hang == "never_answer":
        fake.mode = "never_answer"
    elif hang == "closed_port":
        env["MODAL_SERVER_URL"] = f"http://127.0.0.1:{closed_port()}"
    else:
        env["MODAL_SERVER_URL"] = peer.url
    with peer:
        proc, elapsed = run_ryla(["logs", "hello", "--timeout", "3"], env)
    assert proc.returncode == 124, proc.stderr
    assert "no log lines arrived within 3s" in proc.stderr
    assert "no recent activity" in proc.stderr
    assert proc.stdout == ""
    # The bound for `--timeout 3`, counted from the moment we started `ryla`.
    assert elapsed < 3.5, f"returned after {elapsed:.2f}s"
    assert wait_dead(marked_pids(env["RYLA_TEST_MARK"])) == []


# --- ryla apps / stop -----------------------------------------------------------------------------


def test_apps_json(fake: FakeModalControl, env: dict[str, str]) -> None:
    app_id = fake.add_app("alpha")
    proc, _ = run_ryla(["apps", "--json"], env)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [(r["app_id"], r["name"], r["state"]) for r in rows] == [(app_id, "alpha", "deployed")]


def test_apps_table(fake: FakeModalControl, env: dict[str, str]) -> None:
    fake.add_app("alpha")
    proc, _ = run_ryla(["apps"], env)
    assert proc.returncode == 0, proc.stderr
    header, row = proc.stdout.splitlines()
    assert header.split()[:2] == ["NAME", "STATE"]
    assert row.split()[:2] == ["alpha", "deployed"]


def test_stop_needs_yes_without_a_terminal(fake: FakeModalControl, env: dict[str, str]) -> None:
    app_id = fake.add_app("hello")
    proc, _ = run_ryla(["stop", "hello"], env)
    assert proc.returncode == 2
    assert "--yes" in proc.stderr
    assert fake.app_state(app_id) == "deployed"
    assert not fake.calls


def test_stop_with_yes(fake: FakeModalControl, env: dict[str, str]) -> None:
    app_id = fake.add_app("hello")
    proc, _ = run_ryla(["stop", "hello", "--yes"], env)
    assert proc.returncode == 0, proc.stderr
    assert fake.app_state(app_id) == "stopped"
    again, _ = run_ryla(["stop", "hello", "--yes"], env)
    assert again.returncode == 0
    assert "already stopped" in again.stderr


# --- ryla deploy ----------------------------------------------------------------------------------


def test_deploy_prints_and_records_the_urls(
    fake: FakeModalControl, env: dict[str, str], tmp_path: Path
) -> None:
    proc, _ = run_ryla(["deploy", str(HELLO_APP), "--timeout", "120"], env)
    assert proc.returncode == 0, proc.stderr
    web_urls = fake.deployed["hello-app"]["web_urls"]
    assert proc.stdout.splitlines() == [f"{name} {url}" for name, url in web_urls.items()]
    assert "Created" in proc.stderr, "the build output streams to stderr"
    config = tomllib.loads((tmp_path / "ryla" / "config.toml").read_text())
    assert config["app"] == "hello-app"
    assert config["endpoint"] == web_urls["web"]
    assert config["deployments"]["hello-app"]["urls"] == web_urls

    # The recorded app is the default for later commands.
    logs, _ = run_ryla(["logs"], env)
    assert logs.returncode == 0, logs.stderr
    assert fake.calls_named("AppGetByDeploymentName")[-1].name == "hello-app"


def test_deploy_json(fake: FakeModalControl, env: dict[str, str]) -> None:
    proc, _ = run_ryla(["deploy", str(HELLO_APP), "--name", "other", "--json"], env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["app"] == "other"
    assert out["urls"] == fake.deployed["other"]["web_urls"]
    assert out["endpoint"] == out["urls"]["web"]
    assert out["config_path"].endswith("config.toml")


def test_deploy_missing_file(env: dict[str, str], tmp_path: Path) -> None:
    proc, _ = run_ryla(["deploy", str(tmp_path / "nope.py")], env)
    assert proc.returncode == 5
    assert "no Modal app file" in proc.stderr


# --- fast start -----------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["--help"], ["logs", "--help"], ["deploy", "--help"]])
def test_help_imports_nothing_heavy(argv: list[str]) -> None:
    code = (
        "import sys\n"
        "from ryla_modal.cli import main\n"
        f"rc = main({argv!r})\n"
        "heavy = [m for m in ('modal', 'fastapi', 'uvicorn', 'websockets', 'tenacity')"
        " if m in sys.modules]\n"
        "print('RC=%s HEAVY=%s' % (rc, ','.join(heavy)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "RC=0 HEAVY="


def test_logs_help_ends_with_examples() -> None:
    proc, _ = run_ryla(["logs", "--help"], {})
    assert proc.returncode == 0
    tail = [line.strip() for line in proc.stdout.strip().splitlines() if line.strip()]
    assert tail[-1].startswith("ryla logs")
    assert any(line == "Examples:" for line in tail)


@pytest.mark.parametrize(
    ("sig", "code", "word"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
)
def test_ctrl_c_or_sigterm_stop_modal_too(
    fake: FakeModalControl, env: dict[str, str], sig: signal.Signals, code: int, word: str
) -> None:
    fake.add_app("hello", logs=["first"])
    proc = subprocess.Popen(
        [sys.executable, "-m", "ryla_modal.cli", "logs", "hello", "--follow", "--timeout", "30"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "first\n"  # following now
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == code, err
    assert word in err
    assert wait_dead(marked_pids(env["RYLA_TEST_MARK"])) == []
