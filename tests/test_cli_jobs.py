"""`ryla jobs list|show|logs` as a user runs them: real `ryla` processes against a gateway on
uvicorn in front of the ComfyUI stand-in, and, for a Modal job's logs, the real `modal` CLI
against the control-plane stand-in.

`jobs list` and `jobs logs` stand on the client's ``list_jobs``/``job_logs`` and the gateway's
``GET /jobs`` and ``GET /jobs/{id}/logs``, which come with other branches: those tests run once
they are merged.
"""

from __future__ import annotations

import json
import shlex
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.cli_helpers import cli_gateway, ryla, ryla_env
from tests.conftest import unique
from tests.fakes.modal_control import FakeModalControl
from tests.gateway_fixtures import TOKEN, Gateway

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "examples" / "workflows" / "demo_model_free.json"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with cli_gateway(tmp_path_factory, "jobs") as gw:
        yield gw


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    return ryla_env(tmp_path, RYLA_TOKEN=TOKEN, **extra)


def run_job(gateway: Gateway, tmp_path: Path) -> str:
    wf = json.loads(DEMO.read_text())
    wf["4"]["inputs"]["filename_prefix"] = unique("jobs")
    wf["1"]["inputs"]["color"] = uuid.uuid4().int % 0xFFFFFF
    path = tmp_path / f"{uuid.uuid4().hex}.json"
    path.write_text(json.dumps(wf))
    proc = ryla(
        "generate",
        str(path),
        "--endpoint",
        gateway.url,
        "--json",
        env=env_for(tmp_path),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    return str(json.loads(proc.stdout.splitlines()[-1])["jobs"][0]["job_id"])


def test_jobs_show_prints_the_timings(gateway: Gateway, tmp_path: Path) -> None:
    job_id = run_job(gateway, tmp_path)
    proc = ryla(
        "jobs", "show", job_id, "--endpoint", gateway.url, env=env_for(tmp_path), cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["job", job_id]
    assert lines[1].startswith("status    succeeded")
    at = lines.index("timings")
    rows = [line.rsplit(None, 2) for line in lines[at + 1 :]]  # label, seconds, "s"
    labels = [label.strip() for label, _, _ in rows]
    assert "executing" in labels and labels[-1] == "total"
    assert all(unit == "s" for _, _, unit in rows)
    seconds = [float(value) for _, value, _ in rows]
    assert sum(seconds[:-1]) <= seconds[-1] + 0.002  # the phases do not overlap
    as_json = ryla(
        "jobs",
        "show",
        job_id,
        "--json",
        "--endpoint",
        gateway.url,
        env=env_for(tmp_path),
        cwd=tmp_path,
    )
    assert json.loads(as_json.stdout)["timings"]


def test_jobs_list_is_a_table_newest_first(gateway: Gateway, tmp_path: Path) -> None:
    first, second = run_job(gateway, tmp_path), run_job(gateway, tmp_path)
    proc = ryla("jobs", "list", "--endpoint", gateway.url, env=env_for(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    header, *rows = proc.stdout.splitlines()
    assert header.split() == ["ID", "STATUS", "PHASE", "PROGRESS", "AGE", "OUTPUTS"]
    ids = [row.split()[0] for row in rows]
    assert ids.index(second) < ids.index(first)
    row = rows[ids.index(second)].split()
    assert row[1] == "succeeded" and row[-1] == "1"


def test_jobs_list_pages_with_a_command_that_works_when_pasted(
    gateway: Gateway, tmp_path: Path
) -> None:
    run_job(gateway, tmp_path)
    run_job(gateway, tmp_path)
    env = env_for(tmp_path)
    proc = ryla("jobs", "list", "--limit", "1", "--endpoint", gateway.url, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 2  # the header and one job
    (more,) = [line for line in proc.stderr.splitlines() if line.startswith("more: ")]
    argv = shlex.split(more.removeprefix("more: "))
    assert argv[:3] == ["ryla", "jobs", "list"] and "--endpoint" in argv and "--before" in argv
    page2 = ryla(*argv[1:], env=env, cwd=tmp_path)
    assert page2.returncode == 0, page2.stderr
    assert page2.stdout.splitlines()[1].split()[0] != proc.stdout.splitlines()[1].split()[0]


def test_jobs_list_json_and_status_filter(gateway: Gateway, tmp_path: Path) -> None:
    job_id = run_job(gateway, tmp_path)
    env = env_for(tmp_path)
    args = ("jobs", "list", "--json", "--status", "succeeded", "--endpoint", gateway.url)
    proc = ryla(*args, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    page = json.loads(proc.stdout)
    assert set(page) == {"jobs", "next"}
    assert job_id in [job["job_id"] for job in page["jobs"]]
    assert {job["status"] for job in page["jobs"]} == {"succeeded"}
    bad = ryla("jobs", "list", "--status", "done", "--endpoint", gateway.url, env=env, cwd=tmp_path)
    assert bad.returncode == 2 and "--status" in bad.stderr


def test_jobs_logs_of_a_local_job(gateway: Gateway, tmp_path: Path) -> None:
    job_id = run_job(gateway, tmp_path)
    env = env_for(tmp_path)
    proc = ryla("jobs", "logs", job_id, "--json", "--endpoint", gateway.url, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert records[-1]["type"] == "end" and records[-1]["job_id"] == job_id
    assert all(r["type"] == "line" for r in records[:-1])
    assert records[-1]["lines"] == len(records) - 1


class _ModalJobLogs(BaseHTTPRequestHandler):
    """A gateway that says the job ran on Modal as function call ``fc-ryla-test``."""

    def do_GET(self) -> None:
        parts = self.path.split("?")[0].strip("/").split("/")
        if len(parts) == 3 and parts[0] == "jobs" and parts[2] == "logs":
            body = {"job_id": parts[1], "lines": [], "source": "modal", "call_id": "fc-ryla-test"}
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        else:
            self.send_error(404)

    def log_message(self, format: str, *args: object) -> None:
        return None


def test_jobs_logs_of_a_modal_job_asks_modal_for_its_function_call(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ModalJobLogs)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with FakeModalControl() as fake:
            fake.add_app("hello", logs=["worker line"])
            env = {**env_for(tmp_path), **fake.env(tmp_path / "home"), "RYLA_APP": "hello"}
            url = f"http://127.0.0.1:{server.server_address[1]}"
            proc = ryla(
                "jobs", "logs", "job-1", "--endpoint", url, "-t", "20", env=env, cwd=tmp_path
            )
            assert proc.returncode == 0, proc.stderr
            assert proc.stdout.splitlines() == ["worker line"]
            requests = fake.calls_named("AppFetchLogs")
            assert requests and {r.function_call_id for r in requests} == {"fc-ryla-test"}
    finally:
        server.shutdown()
        server.server_close()
