"""`ryla generate` and `ryla jobs` as a user runs them: real subprocesses against a gateway on
uvicorn in front of the ComfyUI stand-in."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests._hang_servers import closed_port
from tests.cli_helpers import cli_gateway, ryla, ryla_env
from tests.conftest import slow_workflow, unique
from tests.gateway_fixtures import TOKEN, Gateway

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "examples" / "workflows" / "demo_model_free.json"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with cli_gateway(tmp_path_factory, "cli") as gw:
        yield gw


def write_workflow(path: Path, prefix: str) -> Path:
    wf = json.loads(DEMO.read_text())
    wf["4"]["inputs"]["filename_prefix"] = prefix
    wf["1"]["inputs"]["color"] = int(uuid.uuid4().int % 0xFFFFFF)  # no cache hits across tests
    path.write_text(json.dumps(wf))
    return path


def test_generate_saves_outputs_and_prints_their_paths(gateway: Gateway, tmp_path: Path) -> None:
    wf = write_workflow(tmp_path / "wf.json", unique("cli"))
    env = ryla_env(tmp_path, RYLA_TOKEN=TOKEN)
    proc = ryla(
        "generate", str(wf), "--endpoint", gateway.url, "--out", "renders", env=env, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    paths = [Path(line) for line in proc.stdout.splitlines()]
    assert len(paths) == 1
    saved = tmp_path / paths[0]
    assert saved.parent == tmp_path / "renders" and saved.read_bytes().startswith(b"\x89PNG")
    manifests = list((tmp_path / "renders").glob("*.manifest.json"))
    assert len(manifests) == 1
    # progress went to stderr as plain lines (no terminal here), never to stdout
    assert "submitted job" in proc.stderr and "done" in proc.stderr
    # and where the time went, click to file: the job's phases, then the download
    (summary,) = [line for line in proc.stderr.splitlines() if re.search(r"s: queued \d", line)]
    assert " · executing " in summary, summary
    assert re.search(r" \d+(\.\d)? s$| \d+ ms$", summary.rstrip()), summary
    assert " · downloaded " in summary, summary


def test_generate_json_is_ndjson_with_a_final_result(gateway: Gateway, tmp_path: Path) -> None:
    wf = write_workflow(tmp_path / "wf.json", unique("json"))
    env = ryla_env(tmp_path, RYLA_TOKEN=TOKEN)
    proc = ryla(
        "generate",
        str(wf),
        "--endpoint",
        gateway.url,
        "--json",
        "--set",
        "Image Blur.sigma=2.5",
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert events[0]["type"] == "submitted"
    assert events[-1]["type"] == "result" and events[-1]["failed"] == 0
    job = events[-1]["jobs"][0]
    assert job["status"] == "succeeded" and len(job["files"]) == 1
    assert job["timings"]["executing"] is not None and job["timings"]["downloaded"] >= 0
    manifest = json.loads((tmp_path / job["manifest"]).read_text())
    assert manifest["workflow"]["3"]["inputs"]["sigma"] == 2.5
    assert {e["type"] for e in events} >= {"submitted", "update", "saved", "done", "result"}


def test_generate_count_fans_out_and_summarises(gateway: Gateway, tmp_path: Path) -> None:
    wf = write_workflow(tmp_path / "wf.json", unique("count"))
    env = ryla_env(tmp_path, RYLA_TOKEN=TOKEN)
    proc = ryla(
        "generate",
        str(wf),
        "--endpoint",
        gateway.url,
        "--count",
        "3",
        "--concurrency",
        "2",
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 3
    assert "job 3/3" in proc.stderr  # one row per job in the summary table


def test_no_wait_prints_the_job_id_and_jobs_wait_finishes_it(
    gateway: Gateway, tmp_path: Path
) -> None:
    wf = write_workflow(tmp_path / "wf.json", unique("nowait"))
    env = ryla_env(tmp_path, RYLA_TOKEN=TOKEN, RYLA_ENDPOINT=gateway.url)
    proc = ryla("generate", str(wf), "--no-wait", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip()
    uuid.UUID(job_id)
    waited = ryla("jobs", "wait", job_id, "--out", "later", env=env, cwd=tmp_path)
    assert waited.returncode == 0, waited.stderr
    assert (tmp_path / waited.stdout.strip()).is_file()
    status = ryla("jobs", "status", job_id, "--json", env=env, cwd=tmp_path)
    assert json.loads(status.stdout)["status"] == "succeeded"


def test_ctrl_c_stops_waiting_and_says_how_to_resume(gateway: Gateway, tmp_path: Path) -> None:
    wf = slow_workflow("stub", unique("int"), steps=30)
    path = tmp_path / "slow.json"
    path.write_text(json.dumps(wf))
    env = ryla_env(tmp_path, RYLA_TOKEN=TOKEN, RYLA_ENDPOINT=gateway.url)
    child = subprocess.Popen(
        [sys.executable, "-m", "ryla_modal.cli", "generate", str(path), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert child.stdout is not None
    first = json.loads(child.stdout.readline())  # "submitted": the job exists now
    assert first["type"] == "submitted"
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=30)
    assert child.returncode == 130
    assert f"ryla jobs wait {first['job_id']}" in err
    # the job kept running on the server and can be picked up again
    waited = ryla("jobs", "wait", first["job_id"], env=env, cwd=tmp_path)
    assert waited.returncode == 0, waited.stderr


UI_WORKFLOW = {"nodes": [{"id": 1, "type": "EmptyImage"}], "links": [], "version": 0.4}
TWO_INVERTS = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 1},
    },
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
    "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "x"}},
}


@pytest.mark.parametrize(
    ("case", "content", "extra", "code", "needle"),
    [
        ("missing file", None, [], 2, "no such file"),
        ("not JSON", "{not json", [], 3, "JSON"),
        (
            "UI format, no server",
            json.dumps(UI_WORKFLOW),
            ["--endpoint", "UNREACHABLE"],
            3,
            "Export (API)",
        ),
        (
            "unknown --set target",
            json.dumps(TWO_INVERTS),
            ["--set", "KSampler.seed=1"],
            3,
            "KSampler",
        ),
        (
            "ambiguous --set target",
            json.dumps(TWO_INVERTS),
            ["--set", "ImageInvert.image=1"],
            3,
            "ImageInvert",
        ),
        (
            "unreachable endpoint",
            json.dumps(TWO_INVERTS),
            ["--endpoint", "UNREACHABLE"],
            1,
            "could not reach",
        ),
        ("bad token", json.dumps(TWO_INVERTS), ["--token-env"], 5, "401"),
        ("missing --input file", json.dumps(TWO_INVERTS), ["--input", "nope.png"], 2, "nope.png"),
    ],
)
def test_bad_input_exits_with_its_code_and_one_line(
    case: str,
    content: str | None,
    extra: list[str],
    code: int,
    needle: str,
    gateway: Gateway,
    tmp_path: Path,
) -> None:
    path = tmp_path / "wf.json"
    if content is not None:
        path.write_text(content)
    env = ryla_env(tmp_path, RYLA_TOKEN=TOKEN, RYLA_ENDPOINT=gateway.url)
    args = list(extra)
    if "UNREACHABLE" in args:
        args[args.index("UNREACHABLE")] = f"http://127.0.0.1:{closed_port()}"
    if "--token-env" in args:
        args.remove("--token-env")
        env["RYLA_TOKEN"] = "not-the-token"
    proc = ryla("generate", str(path), *args, env=env, cwd=tmp_path)
    assert proc.returncode == code, (case, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    retries = [line for line in lines if " retrying " in line]  # each retry is shown
    if case == "unreachable endpoint":
        assert retries and "attempt 1 of" in retries[0], proc.stderr
    lines = [line for line in lines if line not in retries]
    if code != 2:  # usage errors come from the argument parser, with its usage line
        assert len(lines) == 1, (case, proc.stderr)
        assert lines[0].startswith("error: ")
    assert needle in proc.stderr, (case, proc.stderr)
    assert proc.stdout == ""
    assert TOKEN not in proc.stderr and "not-the-token" not in proc.stderr
    assert not (tmp_path / "outputs").exists()


def test_validate_reports_node_errors_without_running(gateway: Gateway, tmp_path: Path) -> None:
    wf = json.loads(DEMO.read_text())
    wf["3"]["inputs"]["sigma"] = -1
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(wf))
    env = ryla_env(tmp_path, RYLA_TOKEN=TOKEN, RYLA_ENDPOINT=gateway.url)
    before = gateway.stats()["prompts_received"]
    proc = ryla("validate", str(path), env=env, cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert "node 3 (ImageBlur)" in proc.stderr
    good = ryla("validate", str(DEMO), env=env, cwd=tmp_path)
    assert good.returncode == 0, good.stderr
    assert gateway.stats()["prompts_received"] == before


def test_health(gateway: Gateway, tmp_path: Path) -> None:
    env = ryla_env(tmp_path, RYLA_TOKEN=TOKEN, RYLA_ENDPOINT=gateway.url)
    proc = ryla("health", "--json", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["status"] == "ok"


def test_health_wake_waits_for_a_ready_comfyui(gateway: Gateway, tmp_path: Path) -> None:
    env = ryla_env(tmp_path, RYLA_TOKEN=TOKEN, RYLA_ENDPOINT=gateway.url)
    proc = ryla("health", "--wake", "--json", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report["wake"]["status"] == "succeeded"
    assert report["wake"]["job_id"].startswith("warmup-")
    assert "starting_comfyui" in report["wake"]["timings"]


def test_jobs_cancel(gateway: Gateway, tmp_path: Path) -> None:
    wf = slow_workflow("stub", unique("cancel"), steps=100)
    path = tmp_path / "slow.json"
    path.write_text(json.dumps(wf))
    env = ryla_env(tmp_path, RYLA_TOKEN=TOKEN, RYLA_ENDPOINT=gateway.url)
    job_id = ryla("generate", str(path), "--no-wait", env=env, cwd=tmp_path).stdout.strip()
    headers = {"authorization": f"Bearer {TOKEN}"}
    deadline = time.monotonic() + 20
    while (
        httpx.get(f"{gateway.url}/jobs/{job_id}", headers=headers, timeout=10).json()["status"]
        != "running"
    ):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    proc = ryla("jobs", "cancel", job_id, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    waited = ryla("jobs", "wait", job_id, env=env, cwd=tmp_path)
    assert waited.returncode == 4 and "cancelled" in waited.stderr


def test_summary_seconds_are_the_jobs_wall_time(
    gateway: Gateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The summary's seconds column once added ``total`` to overlapping phases (≥ 2× the real
    time).  A job of 20 steps of 0.1 s, timed here around the whole submit-wait-download: the
    job's own time lies inside that span and is at least its steps' 2 s (``.1f`` rounds)."""
    from ryla_modal.cli.generate_cmd import _seconds
    from ryla_modal.client import RylaClient

    monkeypatch.setenv("RYLA_CONFIG_DIR", str(tmp_path / "cfg"))
    wf = slow_workflow("stub", unique("wall"), steps=20, step_seconds=0.1)
    with RylaClient(gateway.url, token=TOKEN) as client:
        started = time.monotonic()
        result = client.generate(wf, out_dir=tmp_path / "out")
        wall = time.monotonic() - started
    shown = float(_seconds(result.job))
    assert result.job.status == "succeeded"
    assert 1.95 <= shown <= wall + 0.05, (shown, wall, result.job.timings)
