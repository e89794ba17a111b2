"""Every output kind and inputs by URL, one job at a time, against ComfyUI (stand-in; real too).

Kinds: text (PreviewAny), images sent as websocket frames (SaveImageWebsocket), ``temp``
previews (PreviewImage, PreviewAudio) only when asked, audio (SaveAudio, SaveAudioMP3,
SaveAudioOpus), 3D (SaveGLB), animated WEBP/PNG and video (SaveVideo, SaveWEBM).  Real ComfyUI
has no model-free MESH source and needs torchaudio for the audio nodes: those run on the stand-in
(and on a real ComfyUI that has them).  The stand-in has no video encoder: video runs only on a
real ComfyUI.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from ryla_modal.comfy.runner import ComfyRunner, InputFile, InputURL, JobInput, OutputFile
from ryla_modal.errors import InputFetchError, OutputIntegrityError
from ryla_modal.fetch import FetchRules
from tests._file_server import file_server
from tests.conftest import ComfyServer, random_color, unique
from tests.test_comfy_runner import NoSocketProxy, png_bytes, set_fault

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LOCAL_URLS = FetchRules(allow_private=True, timeout_s=20.0)


def job() -> str:
    return str(uuid.uuid4())


def runner_for(server: ComfyServer, **kw: Any) -> ComfyRunner:
    return ComfyRunner(server.base_url, process=server.process, **kw)


def has_nodes(server: ComfyServer, *names: str) -> bool:
    info = httpx.get(f"{server.base_url}/object_info", timeout=30).json()
    return all(n in info for n in names)


def need(server: ComfyServer, *names: str) -> None:
    if not has_nodes(server, *names):
        pytest.skip(f"this ComfyUI lacks {', '.join(names)}")


def image(color: int | None = None, size: int = 16, batch: int = 1) -> dict[str, Any]:
    return {
        "class_type": "EmptyImage",
        "inputs": {
            "width": size,
            "height": size,
            "batch_size": batch,
            "color": random_color() if color is None else color,
        },
    }


def size_of(data: bytes | None) -> tuple[int, int]:
    from PIL import Image

    assert data is not None
    with Image.open(io.BytesIO(data)) as img:
        return img.size


def on_disk(server: ComfyServer, out: OutputFile) -> bytes:
    return (server.output_dir / out.subfolder / out.filename).read_bytes()


# --- text ---------------------------------------------------------------------------------------


def test_text_outputs_are_collected(comfy: ComfyServer, tmp_path: Path) -> None:
    text = f"a [bracketed] prompt ✓ {uuid.uuid4().hex}"
    wf = {
        "1": {"class_type": "PrimitiveString", "inputs": {"value": text}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
        "3": {
            "class_type": "StringConcatenate",
            "inputs": {"string_a": ["1", 0], "string_b": "tail", "delimiter": " | "},
        },
        "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 0]}},
    }
    with runner_for(comfy, work_dir=tmp_path) as runner:
        result = runner.run(wf, job_id=job(), timeout_s=60)
    assert [(o.index, o.node_id, o.kind, o.mime) for o in result.outputs] == [
        (0, "2", "text", "text/plain; charset=utf-8"),
        (1, "4", "text", "text/plain; charset=utf-8"),
    ]
    first, second = result.outputs
    assert (first.text, second.text) == (text, f"{text} | tail")
    # A text output is a file like any other: saved, sized and checksummed.
    assert first.path is not None and first.path.read_text("utf-8") == text
    assert first.size == len(text.encode("utf-8"))
    assert first.sha256 == hashlib.sha256(text.encode("utf-8")).hexdigest()


# --- SaveImageWebsocket -------------------------------------------------------------------------


def websocket_workflow(batch: int = 2, size: int = 24) -> dict[str, Any]:
    return {
        "1": image(size=size, batch=batch),
        "2": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["1", 0]}},
    }


@pytest.mark.parametrize("metadata", [True, False], ids=["event4", "legacy-event1"])
def test_websocket_images_are_captured(comfy: ComfyServer, metadata: bool) -> None:
    """Both frame formats of transcripts 21/22: with metadata (event 4) and legacy (event 1)."""
    with runner_for(comfy) as runner:
        runner.api.preview_metadata = metadata
        result = runner.run(websocket_workflow(batch=2, size=24), job_id=job(), timeout_s=60)
    assert [(o.node_id, o.kind, o.type, o.mime) for o in result.outputs] == [
        ("2", "images", "websocket", "image/png"),
        ("2", "images", "websocket", "image/png"),
    ]
    for n, out in enumerate(result.outputs, start=1):
        assert out.filename == f"SaveImageWebsocket_{n:05}_.png"
        assert out.data is not None and out.data.startswith(PNG_MAGIC)
        assert size_of(out.data) == (24, 24)
        assert (out.size, out.sha256) == (len(out.data), hashlib.sha256(out.data).hexdigest())
    assert not list(comfy.output_dir.rglob("SaveImageWebsocket*"))  # no file on the server


def test_websocket_images_next_to_files_and_previews_of_other_nodes(comfy: ComfyServer) -> None:
    """Only the websocket node's frames count: a sampler's latent previews are not outputs."""
    if not comfy.is_stub:
        pytest.skip("latent previews need a sampler and a model on a real ComfyUI")
    prefix = unique("wsmix")
    wf = {
        "1": image(size=16),
        "2": {
            "class_type": "RylaSlowSteps",
            "inputs": {"image": ["1", 0], "steps": 3, "step_seconds": 0.0, "preview": True},
        },
        "3": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["2", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }
    with runner_for(comfy, work_dir=None) as runner:
        result = runner.run(wf, job_id=job(), timeout_s=60)
    assert [(o.node_id, o.type) for o in result.outputs] == [("3", "websocket"), ("4", "output")]
    assert result.outputs[0].mime == "image/png"


def test_websocket_images_saved_to_work_dir(comfy: ComfyServer, tmp_path: Path) -> None:
    with runner_for(comfy, work_dir=tmp_path) as runner:
        result = runner.run(websocket_workflow(batch=1), job_id=job(), timeout_s=60)
    (out,) = result.outputs
    assert out.path is not None and out.path.parent.parent == tmp_path
    assert out.path.read_bytes().startswith(PNG_MAGIC)
    assert hashlib.sha256(out.path.read_bytes()).hexdigest() == out.sha256
    assert out.data is None


def test_websocket_images_without_a_socket_fail_the_job(comfy: ComfyServer) -> None:
    """Nothing else keeps these images: a run that could not watch them all must say so."""
    proxy = NoSocketProxy(int(comfy.base_url.rsplit(":", 1)[1]))
    try:
        with (
            ComfyRunner(proxy.url, history_poll_s=0.05) as runner,
            pytest.raises(OutputIntegrityError, match="SaveImageWebsocket") as info,
        ):
            runner.run(websocket_workflow(batch=1), job_id=job(), timeout_s=60)
    finally:
        proxy.close()
    assert "new job_id" in (info.value.hint or "")


def test_websocket_images_lost_to_a_dropped_socket_fail_the_job(
    launch_stub: Callable[..., ComfyServer],
) -> None:
    server = launch_stub()
    wf = {
        "1": image(size=16),
        "2": {
            "class_type": "RylaSlowSteps",
            "inputs": {"image": ["1", 0], "steps": 2, "step_seconds": 0.05},
        },
        "3": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["2", 0]}},
    }
    set_fault(server, "drop-socket", after_node=1)
    with (
        runner_for(server, history_poll_s=0.05) as runner,
        pytest.raises(OutputIntegrityError, match=r"node\(s\) 3 "),
    ):
        runner.run(wf, job_id=job(), timeout_s=60)


# --- temp previews ------------------------------------------------------------------------------


def test_previews_per_run(comfy: ComfyServer) -> None:
    prefix = unique("prev")
    wf = {
        "1": image(size=8),
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    with runner_for(comfy) as runner:
        without = runner.run(wf, job_id=job(), timeout_s=60)
        with_previews = runner.run(wf, job_id=job(), timeout_s=60, previews=True)
    assert [o.type for o in without.outputs] == ["output"]
    assert [(o.node_id, o.type, o.kind) for o in with_previews.outputs] == [
        ("2", "output", "images"),
        ("3", "temp", "images"),
    ]
    assert with_previews.outputs[1].filename.startswith("ComfyUI_temp_")


# --- audio and 3D -------------------------------------------------------------------------------


def audio_workflow(prefix: str) -> dict[str, Any]:
    empty = {"duration": 0.25, "sample_rate": 44100, "channels": 2}
    return {
        "1": {"class_type": "EmptyAudio", "inputs": empty},
        "2": {"class_type": "SaveAudio", "inputs": {"audio": ["1", 0], "filename_prefix": prefix}},
        "3": {
            "class_type": "SaveAudioMP3",
            "inputs": {"audio": ["1", 0], "filename_prefix": prefix, "quality": "128k"},
        },
        "4": {
            "class_type": "SaveAudioOpus",
            "inputs": {"audio": ["1", 0], "filename_prefix": prefix, "quality": "64k"},
        },
        "5": {"class_type": "PreviewAudio", "inputs": {"audio": ["1", 0]}},
    }


def test_audio_outputs_with_their_mime_types(comfy: ComfyServer) -> None:
    need(comfy, "EmptyAudio", "SaveAudio", "SaveAudioMP3", "SaveAudioOpus", "PreviewAudio")
    prefix = f"audio/{unique('snd')}"
    with runner_for(comfy) as runner:
        plain = runner.run(audio_workflow(prefix), job_id=job(), timeout_s=120)
        with_previews = runner.run(
            audio_workflow(prefix), job_id=job(), timeout_s=120, previews=True
        )
    got = [(o.node_id, o.kind, o.type, Path(o.filename).suffix, o.mime) for o in plain.outputs]
    assert got == [
        ("2", "audio", "output", ".flac", "audio/flac"),
        ("3", "audio", "output", ".mp3", "audio/mpeg"),
        ("4", "audio", "output", ".opus", "audio/ogg"),
    ]
    flac, mp3, opus = plain.outputs
    assert flac.subfolder == "audio" and flac.data is not None
    assert flac.data.startswith(b"fLaC") and flac.data == on_disk(comfy, flac)
    assert mp3.data is not None and (mp3.data[:3] == b"ID3" or mp3.data[0] == 0xFF)
    assert opus.data is not None and opus.data.startswith(b"OggS")
    preview = with_previews.outputs[-1]
    assert (preview.node_id, preview.type, preview.mime) == ("5", "temp", "audio/flac")


def test_3d_outputs_are_glb(comfy: ComfyServer) -> None:
    need(comfy, "RylaUnitCube", "SaveGLB")
    prefix = f"mesh/{unique('cube')}"
    wf = {
        "1": {"class_type": "RylaUnitCube", "inputs": {"size": 2.0, "batch_size": 2}},
        "2": {"class_type": "SaveGLB", "inputs": {"mesh": ["1", 0], "filename_prefix": prefix}},
    }
    with runner_for(comfy) as runner:
        result = runner.run(wf, job_id=job(), timeout_s=60)
    assert [(o.kind, o.mime, o.subfolder) for o in result.outputs] == [
        ("3d", "model/gltf-binary", "mesh"),
        ("3d", "model/gltf-binary", "mesh"),
    ]
    data = result.outputs[0].data
    assert data is not None and data == on_disk(comfy, result.outputs[0])
    magic, version, total = struct.unpack("<4sII", data[:12])
    assert (magic, version, total) == (b"glTF", 2, len(data))
    (json_len,) = struct.unpack("<I", data[12:16])
    gltf = json.loads(data[20 : 20 + json_len])
    assert gltf["accessors"][0]["count"] == 8 and gltf["accessors"][1]["count"] == 36
    assert json.loads(gltf["asset"]["extras"]["prompt"])["2"]["class_type"] == "SaveGLB"


# --- animated images and video ------------------------------------------------------------------


def frames(data: bytes | None) -> int:
    from PIL import Image

    assert data is not None
    with Image.open(io.BytesIO(data)) as img:
        return int(getattr(img, "n_frames", 1))


def test_animated_webp_and_png(comfy: ComfyServer) -> None:
    """Listed under ``images`` like stills (with ``animated: [true]``): one file per batch."""
    need(comfy, "SaveAnimatedWEBP", "SaveAnimatedPNG")
    prefix = f"anim/{unique('anim')}"
    wf = {  # three frames that differ (an encoder may merge equal neighbours into one frame)
        "1": image(size=16),
        "4": image(size=16),
        "5": {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["4", 0]}},
        "6": {"class_type": "ImageBatch", "inputs": {"image1": ["5", 0], "image2": ["1", 0]}},
        "2": {
            "class_type": "SaveAnimatedWEBP",
            "inputs": {
                "images": ["6", 0],
                "filename_prefix": prefix,
                "fps": 6.0,
                "lossless": True,
                "quality": 80,
                "method": "default",
            },
        },
        "3": {
            "class_type": "SaveAnimatedPNG",
            "inputs": {
                "images": ["6", 0],
                "filename_prefix": prefix,
                "fps": 6.0,
                "compress_level": 4,
            },
        },
    }
    with runner_for(comfy) as runner:
        result = runner.run(wf, job_id=job(), timeout_s=60)
    assert [
        (o.node_id, o.kind, o.subfolder, Path(o.filename).suffix, o.mime) for o in result.outputs
    ] == [
        ("2", "images", "anim", ".webp", "image/webp"),
        ("3", "images", "anim", ".png", "image/png"),
    ]
    webp, apng = result.outputs
    assert webp.data is not None and webp.data[:4] == b"RIFF" and webp.data[8:12] == b"WEBP"
    assert apng.data is not None and apng.data.startswith(PNG_MAGIC) and b"acTL" in apng.data
    for out in result.outputs:
        assert frames(out.data) == 3 and size_of(out.data) == (16, 16)
        assert out.data == on_disk(comfy, out)
        assert (out.size, out.sha256) == (len(out.data), hashlib.sha256(out.data).hexdigest())


def test_video_outputs(comfy: ComfyServer) -> None:
    """SaveVideo (MP4) and SaveWEBM list their files under ``images`` too; the mime says video."""
    need(comfy, "CreateVideo", "SaveVideo", "SaveWEBM")
    prefix = f"vid/{unique('vid')}"
    wf = {
        "1": image(size=16, batch=3),
        "2": {"class_type": "CreateVideo", "inputs": {"images": ["1", 0], "fps": 6.0}},
        "3": {
            "class_type": "SaveVideo",
            "inputs": {
                "video": ["2", 0],
                "filename_prefix": prefix,
                "format": "mp4",
                "codec": "h264",
            },
        },
        "4": {
            "class_type": "SaveWEBM",
            "inputs": {
                "images": ["1", 0],
                "filename_prefix": prefix,
                "codec": "vp9",
                "fps": 6.0,
                "crf": 32.0,
            },
        },
    }
    with runner_for(comfy) as runner:
        result = runner.run(wf, job_id=job(), timeout_s=120)
    assert [
        (o.node_id, o.kind, o.subfolder, Path(o.filename).suffix, o.mime) for o in result.outputs
    ] == [
        ("3", "images", "vid", ".mp4", "video/mp4"),
        ("4", "images", "vid", ".webm", "video/webm"),
    ]
    mp4, webm = result.outputs
    assert mp4.data is not None and mp4.data[4:8] == b"ftyp"
    assert webm.data is not None and webm.data.startswith(b"\x1a\x45\xdf\xa3")  # EBML
    for out in result.outputs:
        assert out.data == on_disk(comfy, out)
        assert (out.size, out.sha256) == (len(out.data), hashlib.sha256(out.data).hexdigest())


# --- inputs by URL ------------------------------------------------------------------------------


def load_url_workflow(name: str, prefix: str) -> dict[str, Any]:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


def test_url_inputs_are_fetched_and_loaded(comfy: ComfyServer) -> None:
    data = png_bytes(12, 10)
    name = f"{unique('url')}.png"
    with file_server() as srv:
        srv.files[name] = data
        inputs = [
            InputURL(name, srv.url(f"/files/{name}?X-Sig=abc"), hashlib.sha256(data).hexdigest())
        ]
        with runner_for(comfy, fetch_rules=LOCAL_URLS) as runner:
            result = runner.run(
                load_url_workflow(name, unique("urlout")), job_id=job(), inputs=inputs, timeout_s=60
            )
        assert srv.hits[f"/files/{name}"] == 1
    (out,) = result.outputs
    assert size_of(out.data) == (12, 10)
    fetching = result.timings.fetching_inputs
    assert fetching is not None and fetching > 0.0  # a step of its own, before uploading


def test_url_and_uploaded_inputs_together(comfy: ComfyServer) -> None:
    a, b = png_bytes(6, 6), png_bytes(9, 9)
    name_a, name_b = f"{unique('up')}.png", f"{unique('url')}.png"
    wf = {
        **load_url_workflow(name_a, unique("ua")),
        "11": {"class_type": "LoadImage", "inputs": {"image": name_b}},
        "12": {
            "class_type": "SaveImage",
            "inputs": {"images": ["11", 0], "filename_prefix": unique("ub")},
        },
    }
    with file_server() as srv:
        srv.files[name_b] = b
        inputs: list[JobInput] = [
            InputFile(name_a, a),
            InputURL(name_b, srv.url(f"/chunked/{name_b}")),
        ]
        with runner_for(comfy, fetch_rules=LOCAL_URLS) as runner:
            result = runner.run(wf, job_id=job(), inputs=inputs, timeout_s=60)
    assert sorted(size_of(o.data) for o in result.outputs) == [(6, 6), (9, 9)]


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("sha256", "input_sha256_mismatch"),
        ("too_large", "input_too_large"),
        ("private", "input_url_refused"),
        ("redirect", "input_fetch_failed"),
        ("missing", "input_fetch_failed"),
    ],
)
def test_bad_url_inputs_fail_before_anything_is_submitted(
    comfy: ComfyServer, case: str, reason: str
) -> None:
    name = f"{unique('bad')}.png"
    rules = LOCAL_URLS
    with file_server() as srv:
        srv.files[name] = png_bytes()
        url, sha = srv.url(f"/files/{name}"), None
        if case == "sha256":
            sha = "ab" * 32
        elif case == "too_large":
            rules = FetchRules(allow_private=True, max_bytes=10, timeout_s=20.0)
        elif case == "private":
            rules = FetchRules()  # the default: no private or loopback addresses
        elif case == "redirect":
            url = srv.url(f"/redirect/{name}")
        elif case == "missing":
            url = srv.url("/files/nothing-here.png")
        before = comfy.prompts_received()
        with (
            runner_for(comfy, fetch_rules=rules) as runner,
            pytest.raises(InputFetchError) as info,
        ):
            runner.run(
                load_url_workflow(name, unique("never")),
                job_id=job(),
                inputs=[InputURL(name, url, sha)],
                timeout_s=60,
            )
    assert info.value.reason == reason and info.value.name == name
    assert comfy.prompts_received() == before  # ComfyUI never saw the job
