"""The real `modal` CLI against the fake control plane: what it prints, what it asks the server.

Each test starts the real CLI as a subprocess (own process group, killed at a deadline), so these
tests also pin down how modal 1.6.4 behaves: if a modal upgrade changes the RPCs or the output
that `ryla` relies on, this file says so first.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from modal_proto import api_pb2

from tests.fakes.modal_control import FakeModalControl, function_definition

MODAL = str(Path(sys.executable).with_name("modal"))
HELLO_APP = Path(__file__).parent / "fakes" / "modal_apps" / "hello_app.py"
CLI_DEADLINE_S = 30.0
URL_LINE = re.compile(r"(https://\S+\.modal\.run)( 🔑)?$")


@dataclass
class Result:
    returncode: int | None  # None: still running at the deadline, then killed
    stdout: str
    stderr: str


def run_modal(
    env: dict[str, str], *args: str, cwd: Path, deadline: float = CLI_DEADLINE_S
) -> Result:
    """Run the real CLI; at the deadline kill its whole process group."""
    proc = subprocess.Popen(
        [MODAL, *args],
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=deadline)
        return Result(proc.returncode, out, err)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=10)
        return Result(None, out, err)


@pytest.fixture
def fake() -> Iterator[FakeModalControl]:
    with FakeModalControl() as control:
        yield control
    assert control.errors == [], f"the fake itself failed: {control.errors}"


@pytest.fixture
def env(fake: FakeModalControl, tmp_path: Path) -> dict[str, str]:
    return fake.env(tmp_path / "home")


def test_env_points_the_cli_here_and_drops_outside_modal_settings(
    fake: FakeModalControl, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODAL_PROFILE", "someone-elses")
    env = fake.env(tmp_path / "home")
    assert env["MODAL_SERVER_URL"] == fake.url == f"http://127.0.0.1:{fake.port}"
    assert "MODAL_PROFILE" not in env
    assert Path(env["MODAL_CONFIG_PATH"]).read_text() == ""
    assert env["HOME"] == str(tmp_path / "home")


def test_app_list_json(fake: FakeModalControl, env: dict[str, str], tmp_path: Path) -> None:
    live = fake.add_app("ryla-comfyui")
    stopped = fake.add_app("old-app", state="stopped")

    result = run_modal(env, "app", "list", "--json", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    rows = {row["app_id"]: row for row in json.loads(result.stdout)}
    assert rows[live]["description"] == "ryla-comfyui"
    assert rows[live]["state"] == "deployed"
    assert rows[live]["stopped_at"] is None
    assert rows[stopped]["description"] == "old-app"
    assert rows[stopped]["state"] == "stopped"
    assert fake.call_names() == ["AppList"]
    # The CLI authenticates every RPC with metadata, not with a hello RPC first.
    assert fake.metadata[0]["x-modal-token-id"] == "ak-test"


def test_app_logs_prints_lines_and_sends_tail_and_search(
    fake: FakeModalControl, env: dict[str, str], tmp_path: Path
) -> None:
    app_id = fake.add_app(
        "ryla-comfyui", logs=["booting", "ComfyUI ready on 8188", "job a done", "job b done"]
    )

    result = run_modal(
        env, "app", "logs", "ryla-comfyui", "-n", "1", "--search", "done", cwd=tmp_path
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["job b done"]
    assert fake.call_names() == ["AppGetByDeploymentName", "AppFetchLogs"]
    (lookup,) = fake.calls_named("AppGetByDeploymentName")
    assert lookup.name == "ryla-comfyui"
    (req,) = fake.calls_named("AppFetchLogs")
    assert (req.app_id, req.limit, req.search_text) == (app_id, 1, "done")
    assert req.until.seconds - req.since.seconds == 3600  # the first lookback window


def test_app_logs_defaults_to_last_100_and_widens_the_window(
    fake: FakeModalControl, env: dict[str, str], tmp_path: Path
) -> None:
    fake.add_app("ryla-comfyui", logs=["one", "two"])

    result = run_modal(env, "app", "logs", "ryla-comfyui", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["one", "two"]
    requests = fake.calls_named("AppFetchLogs")
    assert {r.limit for r in requests} == {100}
    # Fewer than 100 entries: the CLI asks again over 1 h, 1 d, 7 d, 30 d.
    assert [r.until.seconds - r.since.seconds for r in requests] == [
        3600,
        86400,
        7 * 86400,
        30 * 86400,
    ]


def test_app_logs_since_counts_then_fetches_with_timestamps(
    fake: FakeModalControl, env: dict[str, str], tmp_path: Path
) -> None:
    fake.add_app("ryla-comfyui", logs=["one", "two"])

    result = run_modal(
        env, "app", "logs", "ryla-comfyui", "--since", "10m", "--timestamps", cwd=tmp_path
    )

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(" ")[-1] for line in lines] == ["one", "two"]
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", line) for line in lines)
    assert fake.call_names()[:2] == ["AppGetByDeploymentName", "AppCountLogs"]
    assert "AppFetchLogs" in fake.call_names()


def test_app_logs_unknown_app_fails_with_the_name(
    fake: FakeModalControl, env: dict[str, str], tmp_path: Path
) -> None:
    fake.add_app("ryla-comfyui")

    result = run_modal(env, "app", "logs", "ryla-comfyu", cwd=tmp_path)

    assert result.returncode == 1
    assert "No App with name 'ryla-comfyu' found in the 'main' environment" in result.stderr
    assert "ryla-comfyui" in result.stderr  # ObjectSuggest's "did you mean"
    assert "AppFetchLogs" not in fake.call_names()


@pytest.mark.parametrize(
    ("token_id", "message"),
    [("ak-someone-else", "Invalid token"), ("not-a-token", "Token ID is malformed")],
)
def test_bad_token_is_an_auth_error(
    fake: FakeModalControl, tmp_path: Path, token_id: str, message: str
) -> None:
    fake.add_app("ryla-comfyui", logs=["secret stuff"])
    env = fake.env(tmp_path / "home", token_id=token_id, token_secret="as-hunter2")

    result = run_modal(env, "app", "logs", "ryla-comfyui", cwd=tmp_path)

    assert result.returncode == 1
    assert message in result.stderr
    assert "as-hunter2" not in result.stdout + result.stderr
    assert "secret stuff" not in result.stdout
    assert fake.call_names() == ["AppGetByDeploymentName"]  # not retried


def test_app_logs_follow_streams_lines_and_never_ends_by_itself(
    fake: FakeModalControl, env: dict[str, str], tmp_path: Path
) -> None:
    fake.add_app("ryla-comfyui", logs=["booting", "ready"])
    proc = subprocess.Popen(
        [MODAL, "app", "logs", "ryla-comfyui", "-f"],
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    both_seen = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if len(lines) >= 2:
                both_seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert both_seen.wait(CLI_DEADLINE_S), f"lines so far: {lines}"
        # The lines arrived while the CLI still runs: a wrapper can stream them.
        assert proc.poll() is None
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        reader.join(timeout=10)
    assert lines == ["booting", "ready"]
    (req,) = fake.calls_named("AppGetLogs")
    assert req.timeout == 55  # the server may end a stream after this; the CLI then reconnects


def test_app_logs_follow_ends_when_the_server_says_app_done(
    fake: FakeModalControl, env: dict[str, str], tmp_path: Path
) -> None:
    fake.add_app("ryla-comfyui", logs=["last words"])
    fake.follow_ends_with_app_done = True

    result = run_modal(env, "app", "logs", "ryla-comfyui", "-f", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["last words"]


def test_app_stop_with_yes(fake: FakeModalControl, env: dict[str, str], tmp_path: Path) -> None:
    app_id = fake.add_app("ryla-comfyui")

    result = run_modal(env, "app", "stop", "ryla-comfyui", "--yes", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    (req,) = fake.calls_named("AppStop")
    assert req.app_id == app_id
    assert req.source == api_pb2.APP_STOP_SOURCE_CLI
    assert fake.app_state(app_id) == "stopped"

    again = run_modal(env, "app", "stop", "ryla-comfyui", "--yes", cwd=tmp_path)
    assert again.returncode == 1
    assert "App is already stopped" in again.stderr


def test_app_stop_without_yes_and_without_a_tty_refuses(
    fake: FakeModalControl, env: dict[str, str], tmp_path: Path
) -> None:
    app_id = fake.add_app("ryla-comfyui")

    result = run_modal(env, "app", "stop", "ryla-comfyui", cwd=tmp_path)

    assert result.returncode == 1
    assert "--yes" in result.stderr
    assert fake.calls_named("AppStop") == []
    assert fake.app_state(app_id) == "deployed"


def deployed_urls(stdout: str) -> dict[str, bool]:
    """Web endpoint URL -> needs proxy auth, from `modal deploy` output lines."""
    urls = {}
    for line in stdout.splitlines():
        match = URL_LINE.search(line.rstrip())
        if match:
            urls[match.group(1)] = match.group(2) is not None
    return urls


def test_deploy_prints_urls_and_declares_gpu_volumes_secrets_and_auth(
    fake: FakeModalControl, env: dict[str, str], tmp_path: Path
) -> None:
    result = run_modal(env, "deploy", str(HELLO_APP), "--name", "hello-app", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert deployed_urls(result.stdout) == {"https://ryla-test--hello-app-web.modal.run": True}
    assert "https://modal.com/apps/ryla-test/main/deployed/hello-app" in result.stdout

    record = fake.deployed["hello-app"]
    assert record["publish"].name == "hello-app"
    assert set(record["functions"]) == {"download", "web", "Worker.*"}
    assert record["web_urls"] == {"web": "https://ryla-test--hello-app-web.modal.run"}

    download = function_definition(record["functions"]["download"])
    assert download.resources.gpu_config.gpu_type == "L4"
    assert download.resources.gpu_config.count == 1
    assert [(m.mount_path, fake.object_names[m.volume_id]) for m in download.volume_mounts] == [
        ("/models", "hello-models")
    ]
    assert [fake.object_names[s] for s in download.secret_ids] == ["hello-hf-token"]
    assert download.timeout_secs == 600

    web = function_definition(record["functions"]["web"])
    assert web.webhook_config.type == api_pb2.WEBHOOK_TYPE_FUNCTION
    assert web.webhook_config.requires_proxy_auth is True
    assert not web.resources.gpu_config.gpu_type

    worker = function_definition(record["functions"]["Worker.*"])
    assert worker.is_class
    assert worker.resources.gpu_config.gpu_type == "L4"
    assert worker.max_concurrent_inputs == 4  # @modal.concurrent(max_inputs=4)
    assert worker.task_idle_timeout_secs == 300  # scaledown_window
    assert worker.timeout_secs == 1200
    assert set(worker.method_definitions) == {"run"}
    assert [fake.object_names[s] for s in worker.secret_ids] == ["hello-hf-token"]
    (class_req,) = record["classes"]
    assert class_req.app_id == record["app_id"]
    assert set(record["publish"].class_ids) == {"Worker"}

    (volume_req,) = fake.calls_named("VolumeGetOrCreate")
    assert volume_req.object_creation_type == api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING
    assert "UNIMPLEMENTED" not in result.stderr


def test_redeploy_reuses_the_app_and_its_function_ids(
    fake: FakeModalControl, env: dict[str, str], tmp_path: Path
) -> None:
    first = run_modal(env, "deploy", str(HELLO_APP), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    ids = dict(fake.deployed["hello-app"]["function_ids"])
    fake.calls.clear()

    second = run_modal(env, "deploy", str(HELLO_APP), cwd=tmp_path)

    assert second.returncode == 0, second.stderr
    assert "AppGetLayout" in fake.call_names()
    assert "AppCreate" not in fake.call_names()
    existing = {r.existing_function_id for r in fake.calls_named("FunctionCreate")}
    assert existing == set(ids.values())


def test_deploy_with_a_missing_secret_fails_naming_it(
    fake: FakeModalControl, env: dict[str, str], tmp_path: Path
) -> None:
    fake.missing_secrets.add("hello-hf-token")

    result = run_modal(env, "deploy", str(HELLO_APP), cwd=tmp_path)

    assert result.returncode == 1
    assert "Secret 'hello-hf-token' not found" in result.stderr
    assert fake.calls_named("AppPublish") == []
    assert "AppClientDisconnect" in fake.call_names()


def test_deploy_streams_image_build_logs_and_reports_a_failed_build(
    fake: FakeModalControl, env: dict[str, str], tmp_path: Path
) -> None:
    fake.image_build = "build"
    fake.image_build_logs = ["pip install fastapi", "image ok"]
    built = run_modal(env, "deploy", str(HELLO_APP), cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    assert "pip install fastapi" in built.stdout.splitlines()
    assert "ImageJoinStreaming" in fake.call_names()

    fake.image_build = "fail"
    failed = run_modal(env, "deploy", str(HELLO_APP), cwd=tmp_path)
    assert failed.returncode == 1
    assert "fake image build failed" in failed.stderr


def test_unavailable_mode_fails_after_the_clis_retries_and_can_be_switched_back(
    fake: FakeModalControl, env: dict[str, str], tmp_path: Path
) -> None:
    fake.mode = "unavailable"
    failed = run_modal(env, "app", "list", "--json", cwd=tmp_path)
    assert failed.returncode == 1
    assert "unavailable" in failed.stderr
    assert fake.call_names() == ["AppList"] * 4  # the CLI's own 3 retries

    fake.mode = "normal"
    ok = run_modal(env, "app", "list", "--json", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == []


def test_close_mode_drops_connections(
    fake: FakeModalControl, env: dict[str, str], tmp_path: Path
) -> None:
    fake.mode = "close"

    result = run_modal(env, "app", "list", "--json", cwd=tmp_path)

    assert result.returncode == 1
    assert "Connection lost" in result.stderr
    assert fake.closed_connections >= 1
    assert fake.calls == []


def test_close_mode_mid_follow_makes_the_cli_reconnect_forever(
    fake: FakeModalControl, env: dict[str, str], tmp_path: Path
) -> None:
    """Evidence for the wrapper's deadline: a cut `-f` stream never ends the CLI by itself."""
    fake.add_app("ryla-comfyui", logs=["booting"])
    proc = subprocess.Popen(
        [MODAL, "app", "logs", "ryla-comfyui", "-f"],
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "booting\n"  # bounded by pytest-timeout
        fake.mode = "close"
        deadline = time.monotonic() + CLI_DEADLINE_S
        while fake.closed_connections < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fake.closed_connections >= 5  # it keeps coming back...
        assert proc.poll() is None  # ...and does not give up
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def test_close_mode_from_construction(tmp_path: Path) -> None:
    with FakeModalControl(mode="close") as fake:
        result = run_modal(fake.env(tmp_path / "home"), "app", "list", cwd=tmp_path)
    assert result.returncode == 1
    assert fake.closed_connections >= 1


def test_never_answer_mode_leaves_the_cli_hanging(
    fake: FakeModalControl, env: dict[str, str], tmp_path: Path
) -> None:
    fake.mode = "never_answer"
    started = time.monotonic()

    result = run_modal(env, "app", "list", "--json", cwd=tmp_path, deadline=3)

    assert result.returncode is None  # still waiting at our deadline, killed by us
    assert time.monotonic() - started < 15
    assert fake.call_names() == ["AppList"]  # asked once, and is still waiting for the answer


def test_unknown_rpc_answers_unimplemented_and_is_recorded(
    fake: FakeModalControl, env: dict[str, str], tmp_path: Path
) -> None:
    result = run_modal(env, "secret", "list", "--json", cwd=tmp_path)

    assert result.returncode == 1
    assert "fake Modal control plane does not serve SecretList" in result.stderr
    assert fake.call_names() == ["SecretList"]


def test_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        FakeModalControl(mode="sleepy")
