"""Every output kind and inputs by URL through the whole stack: client → gateway → LocalExecutor
→ runner → ComfyUI stand-in, over real sockets; and `ryla generate --input URL --previews`."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ryla_modal.client import InputUpload, InputURL, RylaClient
from ryla_modal.errors import ExecutionError
from ryla_modal.fetch import FetchRules
from ryla_modal.gateway.app import _CHUNK, Limits
from tests._file_server import FileServer, file_server
from tests.conftest import ComfyServer, random_color, stub_process, unique
from tests.gateway_fixtures import TOKEN, Gateway, b64, png_bytes, running_gateway, sha256, wait_job

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyServer]:
    server = stub_process(tmp_path_factory.mktemp("kinds-stub"))
    server.process.start(ready_timeout=20)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def files() -> Iterator[FileServer]:
    with file_server() as srv:
        yield srv


@pytest.fixture(scope="module")
def gateway(stub: ComfyServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """Private URLs allowed (the file server is on 127.0.0.1), as `ryla serve
    --allow-private-urls` does; inputs past 200 kB are refused by the worker."""
    with running_gateway(
        stub,
        tmp_path_factory.mktemp("kinds-gw"),
        limits=Limits(allow_private_urls=True),
        fetch_rules=FetchRules(allow_private=True, max_bytes=200_000, timeout_s=20.0),
    ) as gw:
        yield gw


@pytest.fixture(scope="module")
def strict_gateway(
    stub: ComfyServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """The defaults, as on Modal: private and loopback addresses refused."""
    with running_gateway(stub, tmp_path_factory.mktemp("strict-gw")) as gw:
        yield gw


def every_kind(input_name: str) -> dict[str, Any]:
    prefix = unique("kinds")
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": input_name}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
        "4": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["1", 0]}},
        "5": {"class_type": "PrimitiveString", "inputs": {"value": f"caption ✓ {prefix}"}},
        "6": {"class_type": "PreviewAny", "inputs": {"source": ["5", 0]}},
        "7": {
            "class_type": "EmptyAudio",
            "inputs": {"duration": 0.1, "sample_rate": 44100, "channels": 1},
        },
        "8": {
            "class_type": "SaveAudioMP3",
            "inputs": {"audio": ["7", 0], "filename_prefix": f"audio/{prefix}", "quality": "V0"},
        },
        "9": {"class_type": "RylaUnitCube", "inputs": {"size": 1.0, "batch_size": 1}},
        "10": {"class_type": "SaveGLB", "inputs": {"mesh": ["9", 0], "filename_prefix": prefix}},
    }


def test_every_kind_through_the_gateway_with_a_url_input(
    gateway: Gateway, files: FileServer, tmp_path: Path
) -> None:
    name = f"{unique('in')}.png"
    data = png_bytes((10, 200, 30), size=12)
    files.files[name] = data
    url = files.url(f"/files/{name}?signature=s3cr3t")
    wf = every_kind(name)
    with RylaClient(gateway.url, token=TOKEN) as client:
        result = client.generate(
            wf,
            out_dir=tmp_path,
            inputs=[InputURL(name, url, sha256(data))],
            previews=True,
        )
    job = result.job
    got = [(o.node_id, o.kind, o.mime) for o in job.outputs]
    assert got == [
        ("2", "images", "image/png"),
        ("3", "images", "image/png"),  # the temp preview, asked for
        ("4", "images", "image/png"),  # the websocket image
        ("6", "text", "text/plain; charset=utf-8"),
        ("8", "audio", "audio/mpeg"),
        ("10", "3d", "model/gltf-binary"),
    ]
    caption = wf["5"]["inputs"]["value"]
    assert [o.text for o in job.outputs if o.kind == "text"] == [caption]
    assert result.texts == [caption]
    # every output, text included, is a file saved and checked against its sha256
    assert [f.kind for f in result.files] == [o.kind for o in job.outputs]
    for saved, info in zip(result.files, job.outputs, strict=True):
        assert saved.path.is_file() and saved.sha256 == info.sha256
        assert hashlib.sha256(saved.path.read_bytes()).hexdigest() == info.sha256
    assert result.files[3].path.read_text("utf-8") == caption
    assert result.manifest is not None
    manifest = json.loads(result.manifest.read_text())
    assert [(o["kind"], o["text"]) for o in manifest["outputs"]][3] == ("text", caption)
    assert "s3cr3t" not in json.dumps(manifest)
    assert files.hits[f"/files/{name}"] == 1
    assert job.timings.fetching_inputs is not None  # the fetch is a phase of its own
    record = gateway.store.get(job.job_id)
    assert record is not None and record.inputs[0].url is not None
    assert "s3cr3t" not in record.model_dump_json()  # the record keeps the URL redacted


def test_a_long_text_is_a_file_only_and_the_client_reads_it_back(
    gateway: Gateway, tmp_path: Path
) -> None:
    long = "é" * 70_000  # past the 64 K characters a job record carries inline
    wf = {
        "1": {"class_type": "PrimitiveString", "inputs": {"value": long}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
    }
    with RylaClient(gateway.url, token=TOKEN) as client:
        result = client.generate(wf, out_dir=tmp_path)
    (info,) = result.job.outputs
    assert (info.kind, info.text, info.size) == ("text", None, len(long.encode("utf-8")))
    assert result.texts == [long]


@pytest.mark.parametrize("size", [1, _CHUNK, _CHUNK + 1, 3 * _CHUNK + 5])
def test_small_outputs_in_one_response_and_large_ones_streamed_serve_the_same_bytes(
    gateway: Gateway, size: int
) -> None:
    """Up to one chunk an output goes out as one response, past it as a stream: either way the
    bytes, their length and their x-sha256 are the file's."""
    text = (unique("t") + "x" * size)[:size]
    wf = {
        "1": {"class_type": "PrimitiveString", "inputs": {"value": text}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
    }
    c = gateway.client()
    resp = c.post("/jobs", json={"workflow": wf})
    assert resp.status_code == 202, resp.text
    job = wait_job(c, resp.json()["job_id"])
    assert job["status"] == "succeeded", job
    (info,) = job["outputs"]
    download = c.get(f"/jobs/{job['job_id']}/outputs/{info['index']}")
    assert download.status_code == 200
    assert download.content == text.encode("ascii")
    assert download.headers["content-length"] == str(size) == str(info["size"])
    assert download.headers["x-sha256"] == info["sha256"] == sha256(download.content)


def test_previews_are_left_out_unless_asked(gateway: Gateway) -> None:
    name = f"{unique('np')}.png"
    wf = every_kind(name)
    c = gateway.client()
    body = {"workflow": wf, "inputs": [{"name": name, "data_b64": b64(png_bytes(size=6))}]}
    resp = c.post("/jobs", json=body)
    assert resp.status_code == 202, resp.text
    job = wait_job(c, resp.json()["job_id"])
    assert job["status"] == "succeeded", job
    assert "3" not in [o["node_id"] for o in job["outputs"]]
    text = next(o for o in job["outputs"] if o["kind"] == "text")
    download = c.get(f"/jobs/{job['job_id']}/outputs/{text['index']}")
    assert download.status_code == 200
    assert download.text == text["text"] and download.headers["x-sha256"] == text["sha256"]


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({"url": "file:///etc/passwd"}, "url"),  # the schema's http(s) pattern
        ({"url": "http://127.0.0.1:9/x.png"}, "non-public"),
        ({"url": "http://169.254.169.254/latest/meta-data"}, "non-public"),
        ({"url": "http://[::1]/x.png"}, "non-public"),
        ({"url": "http://user:pw@example.com/x.png"}, "credentials"),
    ],
)
def test_unsafe_urls_are_refused_at_submit(
    strict_gateway: Gateway, spec: dict[str, str], needle: str
) -> None:
    c = strict_gateway.client()
    job_id = str(uuid.uuid4())
    body = {
        "job_id": job_id,
        "workflow": every_kind("x.png"),
        "inputs": [{"name": "x.png", **spec}],
    }
    resp = c.post("/jobs", json=body)
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    expected = "invalid_request" if spec["url"].startswith("file:") else "input_url_refused"
    assert error["type"] == expected and needle in error["message"]
    assert "pw" not in error["message"]
    assert c.get(f"/jobs/{job_id}").status_code == 404  # nothing was created


@pytest.mark.parametrize(
    "inputs",
    [
        [{"name": "x.png"}],  # neither
        [{"name": "x.png", "data_b64": "aGk=", "url": "https://example.com/x.png"}],  # both
        [{"name": "x.png", "url": "https://example.com/x.png", "sha256": "xyz"}],
        [{"name": "x.png", "url": ""}],
    ],
)
def test_malformed_input_specs_are_422(strict_gateway: Gateway, inputs: list[Any]) -> None:
    resp = strict_gateway.client().post(
        "/jobs", json={"workflow": every_kind("x.png"), "inputs": inputs}
    )
    assert resp.status_code == 422, resp.text


def test_inline_data_with_a_wrong_sha256_is_422(strict_gateway: Gateway) -> None:
    body = {
        "workflow": every_kind("x.png"),
        "inputs": [{"name": "x.png", "data_b64": b64(png_bytes()), "sha256": "0" * 64}],
    }
    resp = strict_gateway.client().post("/jobs", json=body)
    assert resp.status_code == 422
    assert resp.json()["error"]["type"] == "input_sha256_mismatch"


@pytest.mark.parametrize(
    ("route", "sha", "error_type"),
    [
        ("/files/{name}", "ab" * 32, "input_sha256_mismatch"),
        ("/chunked/{big}", None, "input_too_large"),
        ("/redirect/{name}", None, "input_fetch_failed"),
        ("/status/404", None, "input_fetch_failed"),
    ],
)
def test_url_inputs_that_cannot_be_used_fail_the_job_before_comfyui(
    gateway: Gateway, files: FileServer, route: str, sha: str | None, error_type: str
) -> None:
    name, big = f"{unique('f')}.png", f"{unique('big')}.png"
    files.files[name] = png_bytes()
    files.files[big] = b"\0" * 300_000
    spec: dict[str, Any] = {"name": name, "url": files.url(route.format(name=name, big=big))}
    if sha:
        spec["sha256"] = sha
    before = gateway.stats()["prompts_received"]
    c = gateway.client()
    resp = c.post("/jobs", json={"workflow": every_kind(name), "inputs": [spec]})
    assert resp.status_code == 202, resp.text
    job = wait_job(c, resp.json()["job_id"])
    assert job["status"] == "failed"
    assert job["error"]["type"] == error_type, job["error"]
    assert gateway.stats()["prompts_received"] == before
    with RylaClient(gateway.url, token=TOKEN) as client, pytest.raises(ExecutionError) as info:
        client.wait(job["job_id"])
    assert job["error"]["message"] in str(info.value)


def test_the_same_url_is_the_same_job_and_another_url_a_conflict(
    gateway: Gateway, files: FileServer
) -> None:
    name = f"{unique('same')}.png"
    files.files[name] = png_bytes(size=5)
    job_id = str(uuid.uuid4())
    wf = every_kind(name)
    wf["1"]["inputs"]["image"] = name
    c = gateway.client()

    def submit(url: str) -> int:
        spec = {"name": name, "url": url}
        return c.post(
            "/jobs", json={"job_id": job_id, "workflow": wf, "inputs": [spec]}
        ).status_code

    assert submit(files.url(f"/files/{name}")) == 202
    assert submit(files.url(f"/files/{name}")) == 200
    assert submit(files.url(f"/files/{name}?v=2")) == 409
    assert wait_job(c, job_id)["status"] == "succeeded"


# --- the CLI ----------------------------------------------------------------------------------


def test_cli_generate_with_a_url_input_previews_and_json(
    gateway: Gateway, files: FileServer, tmp_path: Path
) -> None:
    name = f"{unique('cli')}.png"
    data = png_bytes((1, 2, 3), size=7)
    files.files[name] = data
    wf_path = tmp_path / "wf.json"
    wf = every_kind(name)
    wf["5"]["inputs"]["value"] = f"[cli] {random_color()}"  # brackets: rich would eat them
    wf_path.write_text(json.dumps(wf))
    env = {"PATH": "/usr/bin:/bin", "RYLA_CONFIG_DIR": str(tmp_path / "cfg"), "RYLA_TOKEN": TOKEN}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ryla_modal.cli",
            "generate",
            str(wf_path),
            "--endpoint",
            gateway.url,
            "--input",
            files.url(f"/files/{name}#sha256={sha256(data)}"),
            "--previews",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    (job,) = result["jobs"]
    assert job["status"] == "succeeded"
    assert job["texts"] == [wf["5"]["inputs"]["value"]]
    assert len(job["files"]) == 6  # the preview included
    assert any(Path(f).suffix == ".txt" for f in job["files"])


def test_cli_input_accepts_files_and_urls_together(
    gateway: Gateway, files: FileServer, tmp_path: Path
) -> None:
    """Both kinds reach the job: the upload inline, the URL fetched by the server."""
    url_name, file_name = f"{unique('u')}.png", f"{unique('f')}.png"
    files.files[url_name] = png_bytes(size=4)
    (tmp_path / file_name).write_bytes(png_bytes(size=3))
    wf = {
        "1": {"class_type": "LoadImage", "inputs": {"image": url_name}},
        "2": {"class_type": "LoadImage", "inputs": {"image": file_name}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "a"}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "b"}},
    }
    with RylaClient(gateway.url, token=TOKEN) as client:
        result = client.generate(
            wf,
            out_dir=tmp_path / "out",
            inputs=[
                InputURL.from_url(files.url(f"/files/{url_name}")),
                InputUpload.from_path(tmp_path / file_name),
            ],
        )
    assert result.job.status == "succeeded" and len(result.files) == 2
    assert files.hits[f"/files/{url_name}"] == 1


def test_the_modal_payload_carries_url_inputs_and_previews() -> None:
    """What the gateway spawns on Modal reads back, in the worker, as the same inputs."""
    from ryla_modal.cloud.executor import job_payload
    from ryla_modal.cloud.worker import _inputs
    from ryla_modal.comfy.runner import InputFile, JobInput
    from ryla_modal.comfy.runner import InputURL as RunnerURL
    from ryla_modal.gateway.schemas import JobRecord

    record = JobRecord(
        job_id="j1",
        status="queued",
        created_at=1.0,
        updated_at=1.0,
        workflow_sha256="0" * 64,
        previews=True,
    )
    given: list[JobInput] = [
        InputFile("a.png", b"\x89PNG"),
        RunnerURL("b.png", "https://x.example/b.png?s=1", None),
    ]
    payload = job_payload(record, {"1": {}}, given)
    assert payload["previews"] is True
    assert json.loads(json.dumps(payload)) == payload  # plain data for Modal's serializer
    assert _inputs(payload) == given


async def test_the_async_client_sends_urls_and_previews_and_reads_texts(
    gateway: Gateway, files: FileServer, tmp_path: Path
) -> None:
    from ryla_modal.client import AsyncRylaClient

    name = f"{unique('async')}.png"
    files.files[name] = png_bytes(size=9)
    wf = every_kind(name)
    async with AsyncRylaClient(gateway.url, token=TOKEN) as client:
        result = await client.generate(
            wf,
            out_dir=tmp_path,
            inputs=[InputURL.from_url(files.url(f"/files/{name}"))],
            previews=True,
        )
    assert result.texts == [wf["5"]["inputs"]["value"]]
    assert "3" in [o.node_id for o in result.job.outputs]  # the temp preview
    assert [f.kind for f in result.files].count("text") == 1
