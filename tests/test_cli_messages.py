"""The CLI's messages, each as a new user meets it: real `ryla` processes, a gateway on uvicorn in
front of the ComfyUI stand-in where a server is needed, and every printed command pasted back."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ryla_modal import errors
from ryla_modal.client import JobEvent, SavedOutput
from ryla_modal.job import Job, Progress
from tests.cli_helpers import RYLA, cli_gateway, ryla, ryla_env
from tests.conftest import slow_workflow, unique
from tests.gateway_fixtures import TOKEN, Gateway

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "examples" / "workflows" / "demo_model_free.json"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with cli_gateway(tmp_path_factory, "msg") as gw:
        yield gw


def paste(line: str, *, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a printed `ryla ...` command exactly as a user pastes it."""
    argv = shlex.split(line.strip())
    assert argv[0] == "ryla", line
    return ryla(*argv[1:], env=env, cwd=cwd)


def workflow_file(path: Path, wf: dict[str, object] | None = None) -> Path:
    data = wf if wf is not None else json.loads(DEMO.read_text())
    if wf is None:
        data["4"]["inputs"]["filename_prefix"] = unique("msg")  # type: ignore[index]
        data["1"]["inputs"]["color"] = uuid.uuid4().int % 0xFFFFFF  # type: ignore[index]
    path.write_text(json.dumps(data))
    return path


# --- printed follow-up commands keep --endpoint -------------------------------------------------


def test_no_wait_prints_a_follow_command_that_works_when_pasted(
    gateway: Gateway, tmp_path: Path
) -> None:
    wf = workflow_file(tmp_path / "wf.json")
    env = ryla_env(tmp_path, RYLA_TOKEN=TOKEN)  # the endpoint is given as a flag only
    proc = ryla("generate", str(wf), "--endpoint", gateway.url, "--no-wait", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip()
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("follow with: ")]
    assert line == f"follow with: ryla jobs wait {job_id} --endpoint {gateway.url}"
    waited = paste(line.removeprefix("follow with: "), env=env, cwd=tmp_path)
    assert waited.returncode == 0, waited.stderr
    assert (tmp_path / waited.stdout.strip()).is_file()


def test_ctrl_c_prints_a_resume_command_that_works_when_pasted(
    gateway: Gateway, tmp_path: Path
) -> None:
    path = tmp_path / "slow.json"
    path.write_text(json.dumps(slow_workflow("stub", unique("int"), steps=30)))
    env = ryla_env(tmp_path, RYLA_TOKEN=TOKEN)
    child = subprocess.Popen(
        [*RYLA, "generate", str(path), "--json", "--endpoint", gateway.url, "--out", "renders"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert child.stdout is not None
        first = json.loads(child.stdout.readline())  # "submitted": the job exists now
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=30)
    finally:
        child.kill()
    assert child.returncode == 130
    lines = err.splitlines()
    at = lines.index("stopped waiting; the jobs keep running. Resume with:")
    resume = lines[at + 1].strip()
    job_id = first["job_id"]
    assert resume == f"ryla jobs wait {job_id} --out renders --endpoint {gateway.url}"
    waited = paste(resume, env=env, cwd=tmp_path)
    assert waited.returncode == 0, waited.stderr
    assert Path(tmp_path / waited.stdout.strip()).parent == tmp_path / "renders"


# --- usage errors before the endpoint is looked up ------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["missing.json"], "'missing.json': no such file"),
        (["WF", "--set", "no-equals-sign"], "expected NODE.INPUT=VALUE"),
        (["WF", "--set", "seed=3"], "no '.' between the node and the input name"),
        (["WF", "--seed", "soon"], "must be a whole number or 'random'"),
        (["WF", "--input", "nope.png"], "'nope.png': no such file"),
    ],
)
def test_usage_errors_come_before_the_endpoint(
    args: list[str], needle: str, tmp_path: Path
) -> None:
    workflow_file(tmp_path / "wf.json")
    args = [str(tmp_path / "wf.json") if a == "WF" else a for a in args]
    for command in ("generate", "validate"):
        if command == "validate" and ("--seed" in args or "--input" in args):
            continue
        proc = ryla(command, *args, env=ryla_env(tmp_path), cwd=tmp_path)
        assert proc.returncode == 2, (command, proc.stderr)  # not 5: no endpoint was needed
        assert needle in proc.stderr, (command, proc.stderr)
        assert "no endpoint configured" not in proc.stderr


def test_an_unconfigured_endpoint_hints_deploy_or_endpoint(tmp_path: Path) -> None:
    wf = workflow_file(tmp_path / "wf.json")
    ui = tmp_path / "ui.json"
    ui.write_text(json.dumps({"nodes": [{"id": 1, "type": "EmptyImage"}], "links": []}))
    for path in (wf, ui):
        proc = ryla("generate", str(path), env=ryla_env(tmp_path), cwd=tmp_path)
        assert proc.returncode in (3, 5), proc.stderr
        assert "ryla deploy" in proc.stderr and "--endpoint" in proc.stderr, proc.stderr
        assert "health --wake" not in proc.stderr


def test_a_png_passed_as_a_workflow_says_it_is_an_image(tmp_path: Path) -> None:
    png = tmp_path / "render.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    proc = ryla("generate", str(png), env=ryla_env(tmp_path), cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert "is a PNG image, not a workflow JSON file" in proc.stderr
    assert "Export (API)" in proc.stderr


# --- a rejected workflow, said once ---------------------------------------------------------------


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def test_node_errors_are_listed_once_above_the_hint_that_names_them(
    gateway: Gateway, tmp_path: Path
) -> None:
    wf = json.loads(DEMO.read_text())
    wf["3"]["inputs"]["sigma"] = -1
    path = workflow_file(tmp_path / "bad.json", wf)
    env = ryla_env(tmp_path, RYLA_TOKEN=TOKEN)
    for command in ("generate", "validate"):
        proc = ryla(command, str(path), "--endpoint", gateway.url, env=env, cwd=tmp_path)
        assert proc.returncode == 3, proc.stderr
        node, error = _error_lines(proc.stderr)
        assert node.startswith("node 3 (ImageBlur): ")
        assert error.startswith("error: ")
        assert "node 3" not in error, "the rejection is not repeated within the error line"
        if command == "generate":
            assert "fix the nodes listed above" in error


def test_a_workflow_level_rejection_lists_no_nodes_and_no_node_prompt(
    gateway: Gateway, tmp_path: Path
) -> None:
    wf = {k: v for k, v in json.loads(DEMO.read_text()).items() if v["class_type"] != "SaveImage"}
    path = workflow_file(tmp_path / "noout.json", wf)
    env = ryla_env(tmp_path, RYLA_TOKEN=TOKEN)
    for command in ("generate", "validate"):
        proc = ryla(command, str(path), "--endpoint", gateway.url, env=env, cwd=tmp_path)
        assert proc.returncode == 3, proc.stderr
        (line,) = _error_lines(proc.stderr)
        assert "Prompt has no outputs" in line
        assert line.count("Prompt has no outputs") == 1
        assert "node prompt" not in line and "listed above" not in line


def test_the_new_inputs_hint_names_a_flag_that_exists(gateway: Gateway, tmp_path: Path) -> None:
    path = workflow_file(tmp_path / "wf.json")
    env = ryla_env(tmp_path, RYLA_TOKEN=TOKEN)
    args = ("validate", str(path), "--endpoint", gateway.url, "--set", "Image Blur.extra=1")
    proc = ryla(*args, env=env, cwd=tmp_path)
    assert proc.returncode == 3
    assert "pass --allow-new-inputs" in proc.stderr
    again = ryla(*args, "--allow-new-inputs", env=env, cwd=tmp_path)
    assert "no such input" not in again.stderr, again.stderr


def test_done_is_said_once(gateway: Gateway, tmp_path: Path) -> None:
    path = workflow_file(tmp_path / "wf.json")
    env = ryla_env(tmp_path, RYLA_TOKEN=TOKEN)
    proc = ryla("generate", str(path), "--endpoint", gateway.url, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("done: 1 output(s)") == 1, proc.stderr


# --- deadlines ------------------------------------------------------------------------------------


def test_a_phase_budget_passed_exits_124_with_the_job_and_the_resume_command(
    gateway: Gateway, tmp_path: Path
) -> None:
    path = tmp_path / "slow.json"
    path.write_text(json.dumps(slow_workflow("stub", unique("late"), steps=40)))
    env = ryla_env(tmp_path, RYLA_TOKEN=TOKEN)
    args = ("generate", str(path), "--endpoint", gateway.url, "--execution-timeout", "1")
    proc = ryla(*args, env=env, cwd=tmp_path)
    assert proc.returncode == 124, proc.stderr
    (line,) = _error_lines(proc.stderr)[-1:]
    assert line.startswith("error: deadline passed during execution; job ")
    job_id = line.split("job ", 1)[1].split()[0]
    uuid.UUID(job_id)
    resume = line.split("resume with: ", 1)[1]
    assert resume == f"ryla jobs wait {job_id} --endpoint {gateway.url}"
    assert paste(resume, env=env, cwd=tmp_path).returncode == 0


def test_timeout_is_the_whole_commands_deadline(gateway: Gateway, tmp_path: Path) -> None:
    path = tmp_path / "slow.json"
    path.write_text(json.dumps(slow_workflow("stub", unique("total"), steps=40)))
    env = ryla_env(tmp_path, RYLA_TOKEN=TOKEN)
    proc = ryla("generate", str(path), "--endpoint", gateway.url, "-t", "2", env=env, cwd=tmp_path)
    assert proc.returncode == 124, proc.stderr
    line = _error_lines(proc.stderr)[-1]
    assert line.startswith("error: deadline passed during ")
    assert f"--endpoint {gateway.url}" in line.split("resume with: ", 1)[1]


# --- the library's own strings ----------------------------------------------------------------


def _all_error_classes() -> list[type[errors.RylaError]]:
    found: list[type[errors.RylaError]] = []
    todo: list[type[errors.RylaError]] = [errors.RylaError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


@pytest.mark.parametrize("cls", _all_error_classes(), ids=lambda c: c.__name__)
def test_str_of_every_error_includes_its_hint(cls: type[errors.RylaError]) -> None:
    exc = cls.__new__(cls)
    errors.RylaError.__init__(exc, "it broke", hint="do this next")
    assert str(exc) == "it broke\nhint: do this next"
    plain = cls.__new__(cls)
    errors.RylaError.__init__(plain, "it broke")
    if cls.hint is None:
        assert str(plain) == "it broke"
    else:
        assert cls.hint in str(plain)


def test_a_job_event_prints_as_one_readable_line(tmp_path: Path) -> None:
    job = Job(
        job_id="3f2c",
        status="running",
        created_at=0.0,
        updated_at=1.0,
        phase="executing",
        progress=Progress(
            node_id="5", node_type="KSampler", nodes_done=1, nodes_total=5, step=7, steps=20
        ),
    )
    line = str(JobEvent("update", job, 12.34))
    assert "\n" not in line
    assert " ".join(line.split()) == (
        "12.3s update 3f2c running · executing · node 2/5 KSampler · step 7/20"
    )
    saved = SavedOutput(0, "9", tmp_path / "a.png", "image/png", 3, "abc")
    done = Job(job_id="3f2c", status="succeeded", created_at=0.0, updated_at=2.0, phase="done")
    assert str(JobEvent("saved", done, 2.0, saved)).endswith(f"saved {tmp_path / 'a.png'}")


# --- ryla serve and scripts/setup.sh ------------------------------------------------------------


def test_serve_says_a_missing_comfyui_dir_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "ComfyUI"
    proc = ryla(
        "serve",
        "--comfyui-dir",
        str(missing),
        "--data-dir",
        str(tmp_path / "d"),
        "--port",
        "0",
        env=ryla_env(tmp_path),
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert f"--comfyui-dir '{missing}': the folder does not exist" in proc.stderr
    assert "stopping" not in proc.stderr and "stopped" not in proc.stderr


def test_serve_says_nothing_about_stopping_what_never_started(tmp_path: Path) -> None:
    proc = ryla(
        "serve",
        "--comfyui-dir",
        str(tmp_path),
        "--data-dir",
        str(tmp_path / "d"),
        "--port",
        "0",
        env=ryla_env(tmp_path),
        cwd=tmp_path,
    )
    assert proc.returncode == 5, proc.stderr
    assert "not a ComfyUI checkout" in proc.stderr
    assert "stopping" not in proc.stderr and "stopped" not in proc.stderr


def test_the_demo_keeps_server_logs_out_of_the_jobs_progress(tmp_path: Path) -> None:
    env = ryla_env(tmp_path, RYLA_DEMO_WORK=str(tmp_path / "work"))
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo.py")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    progress = [line for line in lines if line.startswith("[job] ")]
    assert progress and lines[: len(progress)] == progress, proc.stderr  # one unbroken run
    server = [line for line in lines if " INFO " in line or line.startswith("ryla serve:")]
    assert server == [], proc.stderr
    assert sum("done: 1 output(s)" in line for line in progress) == 1
    assert " INFO " in (tmp_path / "work" / "serve.log").read_text()
