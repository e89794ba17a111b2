"""ComfyUI answers → our errors and output lists, on bodies recorded from the real server (0.3.64).

The bodies below are copied from the protocol transcripts (10, 11, 13, 14); the integration tests
in test_comfy_runner.py exercise the same code over real sockets.
"""

from __future__ import annotations

import concurrent.futures
import http.server
import threading
import time

import pytest

from ryla_modal.comfy.api import (
    ComfyAPI,
    OutputRef,
    execution_error,
    is_terminal,
    output_refs,
    raise_for_history,
    validation_error,
)
from ryla_modal.comfy.runner import UNCACHE_INPUT, guess_mime, uncache_sinks
from ryla_modal.errors import (
    ComfyUIUnavailable,
    ExecutionError,
    JobCancelled,
    WorkflowValidationError,
)
from tests._hang_servers import TricklePeer

# transcript 10, case "unknown_class_type": top-level error, empty node_errors
INVALID_PROMPT = {
    "error": {
        "type": "invalid_prompt",
        "message": "Cannot execute because node NoSuchNode does not exist.",
        "details": "Node ID '#1'",
        "extra_info": {},
    },
    "node_errors": {},
}
# transcript 10, case "values_out_of_range_min_and_max": two nodes with errors
OUT_OF_RANGE = {
    "error": {
        "type": "prompt_outputs_failed_validation",
        "message": "Prompt outputs failed validation",
        "details": "",
        "extra_info": {},
    },
    "node_errors": {
        "1": {
            "errors": [
                {
                    "type": "value_smaller_than_min",
                    "message": "Value 0 smaller than min of 1",
                    "details": "width",
                    "extra_info": {"input_name": "width", "received_value": 0},
                }
            ],
            "dependent_outputs": ["4"],
            "class_type": "EmptyImage",
        },
        "3": {
            "errors": [
                {
                    "type": "value_bigger_than_max",
                    "message": "Value 99 bigger than max of 31",
                    "details": "blur_radius",
                    "extra_info": {"input_name": "blur_radius", "received_value": 99},
                }
            ],
            "dependent_outputs": ["4"],
            "class_type": "ImageBlur",
        },
    },
}
# transcript 11: the execution_error message (traceback shortened to 3 of its 7 frames)
EXEC_ERROR = {
    "prompt_id": "611c56b3-310b-49fb-a91f-7c43dfae8b90",
    "node_id": "1",
    "node_type": "LoadImage",
    "executed": [],
    "exception_message": "cannot identify image file '<comfyui>/input/corrupt.png'\n",
    "exception_type": "PIL.UnidentifiedImageError",
    "traceback": [
        '  File "<comfyui>/nodes.py", line 1647, in load_image\n    img = ...\n',
        '  File "<comfyui>/node_helpers.py", line 31, in pillow\n    x = fn(arg)\n',
        '  File "<site-packages>/PIL/Image.py", line 3730, in open\n    raise Unid...(msg)\n',
    ],
    "current_inputs": {"image": ["corrupt.png"]},
    "current_outputs": ["3", "2", "1"],
    "timestamp": 1795714469548,
}
# transcript 14, history of the interrupted p1
INTERRUPTED_ENTRY = {
    "outputs": {},
    "status": {
        "status_str": "error",
        "completed": False,
        "messages": [
            ["execution_start", {"prompt_id": "p1", "timestamp": 1}],
            ["execution_cached", {"nodes": [], "prompt_id": "p1", "timestamp": 1}],
            [
                "execution_interrupted",
                {
                    "prompt_id": "p1",
                    "node_id": "3",
                    "node_type": "ImageBlur",
                    "executed": ["2", "1"],
                    "timestamp": 2,
                },
            ],
        ],
    },
    "meta": {},
}
# transcript 13: a SaveImage in a subfolder plus a PreviewImage (temp)
SAVE_AND_PREVIEW_ENTRY = {
    "outputs": {
        "3": {
            "images": [{"filename": "inv_00001_.png", "subfolder": "proto_up", "type": "output"}]
        },
        "4": {
            "images": [
                {"filename": "ComfyUI_temp_tacci_00001_.png", "subfolder": "", "type": "temp"}
            ]
        },
    },
    "status": {"status_str": "success", "completed": True, "messages": []},
}


def test_invalid_prompt_shape_keeps_the_top_level_error() -> None:
    exc = validation_error(400, INVALID_PROMPT)
    assert isinstance(exc, WorkflowValidationError)
    assert exc.error["type"] == "invalid_prompt"
    assert exc.node_errors == {}
    assert "NoSuchNode does not exist" in str(exc)
    assert "Node ID '#1'" in str(exc)


def test_node_errors_shape_names_every_node_and_input() -> None:
    exc = validation_error(400, OUT_OF_RANGE)
    assert set(exc.node_errors) == {"1", "3"}
    text = str(exc)
    assert "node 1 (EmptyImage): Value 0 smaller than min of 1: width" in text
    assert "node 3 (ImageBlur): Value 99 bigger than max of 31: blur_radius" in text


def test_plain_text_500_becomes_a_workflow_error_with_the_body() -> None:
    exc = validation_error(500, "500 Internal Server Error\n\nServer got itself in trouble")
    assert isinstance(exc, WorkflowValidationError)
    assert "HTTP 500" in str(exc)
    assert "Server got itself in trouble" in str(exc)
    assert exc.hint and "API format" in exc.hint


def test_execution_error_carries_node_exception_and_traceback_tail() -> None:
    exc = execution_error(EXEC_ERROR, job_id="job-1")
    assert (exc.node_id, exc.node_type) == ("1", "LoadImage")
    assert exc.exception_type == "PIL.UnidentifiedImageError"
    assert exc.job_id == "job-1"
    assert "cannot identify image file" in str(exc)
    assert "node 1 (LoadImage)" in str(exc)
    assert exc.traceback_tail[-1].endswith("raise Unid...(msg)")
    assert len(exc.traceback_tail) == 3


def test_history_with_execution_error_raises_execution_error() -> None:
    entry = {
        "outputs": {},
        "status": {
            "status_str": "error",
            "completed": False,
            "messages": [["execution_start", {}], ["execution_error", EXEC_ERROR]],
        },
    }
    with pytest.raises(ExecutionError) as info:
        raise_for_history(entry, job_id="j")
    assert info.value.node_type == "LoadImage"


def test_history_with_interrupt_raises_job_cancelled() -> None:
    with pytest.raises(JobCancelled, match="node 3 \\(ImageBlur\\)") as info:
        raise_for_history(INTERRUPTED_ENTRY, job_id="p1")
    assert info.value.job_id == "p1"


def test_history_error_without_message_still_fails() -> None:
    with pytest.raises(ExecutionError):
        raise_for_history({"status": {"status_str": "error", "messages": []}}, job_id="j")


def test_history_success_does_not_raise() -> None:
    raise_for_history(SAVE_AND_PREVIEW_ENTRY, job_id="j")


def test_output_refs_skip_temp_previews_unless_asked() -> None:
    refs = output_refs(SAVE_AND_PREVIEW_ENTRY)
    assert refs == [OutputRef("3", "images", "inv_00001_.png", "proto_up", "output")]
    with_temp = output_refs(SAVE_AND_PREVIEW_ENTRY, include_temp=True)
    assert [r.type for r in with_temp] == ["output", "temp"]


def test_output_refs_take_every_file_list_and_ignore_the_rest() -> None:
    entry = {
        "outputs": {
            "10": {
                "gifs": [
                    {
                        "filename": "clip_00001.mp4",
                        "subfolder": "",
                        "type": "output",
                        "format": "video/h264-mp4",
                        "frame_rate": 8.0,
                    }
                ]
            },
            "9": {
                "images": [{"filename": "a.webp", "subfolder": "", "type": "output"}],
                "animated": [True],
                "text": ["hello"],
            },
            "12": {"audio": [{"filename": "s.flac", "subfolder": "au", "type": "output"}]},
            "2:5": {"video": [{"filename": "v.webm", "subfolder": "", "type": "output"}]},
            "bad": "not a dict",
        }
    }
    refs = output_refs(entry)
    assert [(r.node_id, r.kind, r.filename) for r in refs] == [
        ("2:5", "video", "v.webm"),
        ("9", "images", "a.webp"),
        ("10", "gifs", "clip_00001.mp4"),
        ("12", "audio", "s.flac"),
    ]


def test_output_refs_list_a_file_reported_twice_once() -> None:
    item = {"filename": "x.png", "subfolder": "", "type": "output"}
    entry = {"outputs": {"1": {"images": [item]}, "2": {"images": [dict(item)]}}}
    assert len(output_refs(entry)) == 1


@pytest.mark.parametrize(
    ("msg", "terminal"),
    [
        ({"type": "executing", "data": {"node": None, "prompt_id": "p"}}, True),
        ({"type": "executing", "data": {"node": "3", "prompt_id": "p"}}, False),
        ({"type": "execution_success", "data": {"prompt_id": "p"}}, True),
        ({"type": "execution_error", "data": {"prompt_id": "p"}}, True),
        ({"type": "execution_interrupted", "data": {"prompt_id": "p"}}, True),
        ({"type": "progress", "data": {"value": 1, "max": 2, "prompt_id": "p"}}, False),
        ({"type": "status", "data": {"status": {}}}, False),
    ],
)
def test_terminal_messages(msg: dict[str, object], terminal: bool) -> None:
    assert is_terminal(msg) is terminal


@pytest.mark.parametrize(
    ("name", "mime"),
    [
        ("a.png", "image/png"),
        ("a.WEBP", "image/webp"),
        ("clip.webm", "video/webm"),
        ("clip.mp4", "video/mp4"),
        ("a.gif", "image/gif"),
        ("s.flac", "audio/flac"),
        ("s.wav", "audio/wav"),
        ("meta.json", "application/json"),
        ("notes.txt", "text/plain"),
    ],
)
def test_mime_from_extension(name: str, mime: str) -> None:
    assert guess_mime(name, "application/octet-stream") == mime


def test_mime_falls_back_to_the_server_then_octet_stream() -> None:
    assert guess_mime("noext", "image/png; charset=x") == "image/png"
    assert guess_mime("noext") == "application/octet-stream"


def test_uncache_sinks_marks_only_nodes_nothing_links_to() -> None:
    wf = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0]}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    out = uncache_sinks(wf, "job-9")
    assert [n for n in out if UNCACHE_INPUT in out[n]["inputs"]] == ["3", "4"]
    assert out["3"]["inputs"][UNCACHE_INPUT] == "job-9"
    assert UNCACHE_INPUT not in wf["3"]["inputs"]  # the caller's workflow is untouched


def test_ws_url_follows_the_base_url() -> None:
    with ComfyAPI("http://127.0.0.1:8188/") as api:
        assert api.ws_url("abc") == "ws://127.0.0.1:8188/ws?clientId=abc"
    with ComfyAPI("https://x.example/comfy") as api:
        assert api.ws_url("a b") == "wss://x.example/comfy/ws?clientId=a%20b"


def test_event_socket_parses_binary_frames_skips_junk_then_reports_the_close() -> None:
    """Binary frames (types 1 and 4, transcripts 21/22) come back parsed; odd text never does.

    The socket announces ``supports_preview_metadata`` first, so ComfyUI sends event 4 frames,
    whose metadata names the prompt and node.
    """
    import json
    import struct
    import threading

    from websockets.sync.server import ServerConnection, serve

    from ryla_modal.comfy.api import BinaryFrame, SocketClosed

    progress = {"type": "progress", "data": {"value": 1, "max": 3, "prompt_id": "p", "node": "3"}}
    release = threading.Event()
    seen_paths: list[str] = []
    first_messages: list[str | bytes] = []

    def handler(conn: ServerConnection) -> None:
        assert conn.request is not None
        seen_paths.append(conn.request.path)
        first_messages.append(conn.recv(timeout=5))
        conn.send(json.dumps({"type": "status", "data": {"sid": "abc"}}))
        conn.send(struct.pack(">II", 1, 1) + b"\xff\xd8\xff\xe0jpeg")  # legacy preview
        meta = json.dumps({"node_id": "3", "prompt_id": "p", "image_type": "image/jpeg"}).encode()
        conn.send(struct.pack(">II", 4, len(meta)) + meta + b"\xff\xd8jpeg")  # with metadata
        conn.send(struct.pack(">II", 4, 999) + b"{")  # a metadata length past the end: junk
        conn.send(b"\x00\x00")  # shorter than any header: junk
        conn.send("not json")
        conn.send("[1, 2, 3]")
        conn.send(json.dumps(progress))
        release.wait(10)  # hold the socket open until the client has timed out once

    with serve(handler, "127.0.0.1", 0) as server:
        port = server.socket.getsockname()[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        with ComfyAPI(f"http://127.0.0.1:{port}") as api:
            sock = api.open_events("abc")
            try:
                first = sock.recv(5)
                assert isinstance(first, dict) and first["type"] == "status"
                assert sock.recv(5) == BinaryFrame(1, "image/jpeg", b"\xff\xd8\xff\xe0jpeg")
                assert sock.recv(5) == BinaryFrame(
                    4, "image/jpeg", b"\xff\xd8jpeg", node_id="3", prompt_id="p"
                )
                assert sock.recv(5) == progress
                assert sock.recv(0.2) is None  # nothing more: a timeout, not an error
                release.set()
                with pytest.raises(SocketClosed):
                    sock.recv(5)
            finally:
                sock.close()
        server.shutdown()
    assert seen_paths == ["/ws?clientId=abc"]
    assert [json.loads(m) for m in first_messages] == [
        {"type": "feature_flags", "data": {"supports_preview_metadata": True}}
    ]


def test_open_events_on_a_closed_port_is_socket_closed() -> None:
    import socket

    from ryla_modal.comfy.api import SocketClosed

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with ComfyAPI(f"http://127.0.0.1:{port}") as api, pytest.raises(SocketClosed):
        api.open_events("x", open_timeout=2)


# --- a total deadline on every request to ComfyUI -------------------------------------------------

HANG_GUARD_S = 10.0  # far past every budget below: reaching it means the request hung


@pytest.mark.parametrize("what", ["headers", "body"])
def test_a_comfyui_that_trickles_cannot_hold_a_request_past_its_deadline(what: str) -> None:
    """httpx's timeout is per read: a byte every 50 ms never trips it, the total deadline does."""
    with (
        concurrent.futures.ThreadPoolExecutor(1) as pool,  # exits last: the peer closes first
        TricklePeer(what, interval_s=0.05) as peer,
        ComfyAPI(peer.url, http_timeout=0.5) as api,
    ):
        asked = pool.submit(api.history, "some-prompt")
        with pytest.raises(ComfyUIUnavailable, match=r"GET /history/some-prompt within 0\.5 s"):
            asked.result(timeout=HANG_GUARD_S)


def test_a_download_from_a_trickling_comfyui_ends_at_its_size_budget() -> None:
    """An output may take the answer's deadline plus its size at the slowest rate allowed."""
    ref = OutputRef(node_id="9", kind="images", filename="a.png", subfolder="", type="output")

    def download() -> int:
        with api.view(ref) as resp:
            return sum(len(chunk) for chunk in resp.iter_bytes())

    with (
        concurrent.futures.ThreadPoolExecutor(1) as pool,
        TricklePeer("body", interval_s=0.05) as peer,  # 1 MB announced, a byte per 50 ms
        ComfyAPI(peer.url, http_timeout=0.5, min_transfer_bytes_per_s=10_000_000) as api,
    ):
        fetched = pool.submit(download)
        with pytest.raises(ComfyUIUnavailable, match=r"stopped sending a\.png"):
            fetched.result(timeout=HANG_GUARD_S)


def test_a_download_slower_than_the_answer_budget_still_completes_within_its_size_budget() -> None:
    """The 30 s of an answer do not cut a big output short: its size buys it time."""
    body = b"x" * 20

    class Steady(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            for i in range(len(body)):  # 20 bytes over 1 s: longer than the 0.3 s budget
                time.sleep(0.05)
                self.wfile.write(body[i : i + 1])
                self.wfile.flush()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Steady)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    ref = OutputRef(node_id="9", kind="video", filename="v.mp4", subfolder="", type="output")
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        # 0.3 s for the answer + 20 bytes at 2 B/s: 10.3 s in all
        with (
            ComfyAPI(url, http_timeout=0.3, min_transfer_bytes_per_s=2) as api,
            api.view(ref) as resp,
        ):
            assert b"".join(resp.iter_bytes()) == body
    finally:
        server.shutdown()
        server.server_close()
