"""The ComfyUI stand-in against the transcripts recorded from the real ComfyUI 0.3.64.

Each test starts a fresh stand-in (through our launcher), replays a transcript's HTTP requests in
order — waiting, before each, until our socket has as many messages as the recorder's had — and
compares: status codes, content types, JSON bodies (equal after ids, timestamps, tracebacks and
random temp names are normalised), and the WebSocket messages (same types, same data, same order).
Where the recording session had earlier prompts in the cache, the same prompts are run first.
"""

from __future__ import annotations

import copy
import hashlib
import io
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.conftest import ComfyServer
from tests.fakes.transcripts import (
    Transcript,
    load,
    missing_reason,
    object_info_full,
    protocol_dir,
)
from tests.fakes.ws_recorder import Message, WsRecorder

pytestmark = pytest.mark.skipif(protocol_dir() is None, reason=missing_reason())

Launch = Callable[..., ComfyServer]
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
TEMP_NAME_RE = re.compile(r"ComfyUI_temp_[a-z]{5}_")
HTTP_TIMEOUT = httpx.Timeout(10.0)


# --- ids and normalisation -------------------------------------------------------------------


@dataclass
class Ids:
    """The transcript's ids and ours, paired; both sides normalise to the same placeholder."""

    to_ours: dict[str, str] = field(default_factory=dict)
    placeholder: dict[str, str] = field(default_factory=dict)

    def pair(self, recorded: str, ours: str) -> None:
        name = self.placeholder.get(recorded) or f"<id{len(self.to_ours)}>"
        self.to_ours[recorded] = ours
        self.placeholder[recorded] = self.placeholder[ours] = name

    def ours(self, value: Any) -> Any:
        """A recorded request made ours: known ids swapped, unknown UUIDs given fresh ones."""
        if isinstance(value, str):
            if value not in self.to_ours and UUID_RE.match(value):
                self.pair(value, str(uuid.uuid4()))
            return self.to_ours.get(value, value)
        if isinstance(value, list):
            return [self.ours(v) for v in value]
        if isinstance(value, dict):
            return {self.ours(k): self.ours(v) for k, v in value.items()}
        return value


def norm(value: Any, ids: Ids, input_dir: str | None = None) -> Any:
    """What must match between the real server and ours: ids, times and tracebacks masked."""
    if isinstance(value, str):
        value = ids.placeholder.get(value, value)
        if input_dir:
            value = value.replace(input_dir, "<comfyui>/input")
        return TEMP_NAME_RE.sub("ComfyUI_temp_<rand>_", value)
    if isinstance(value, list):
        items = [norm(v, ids, input_dir) for v in value]
        # A queue/history tuple [number, prompt_id, prompt, extra_data, outputs]: the number
        # depends on what the server ran before; POST /prompt answers are checked for it.
        if len(items) == 5 and isinstance(items[1], str) and items[1].startswith("<id"):
            items[0] = "<number>"
        return items
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            key = ids.placeholder.get(k, k)
            if k == "timestamp":
                out[key] = "<ts>" if isinstance(v, int) else v
            elif k == "traceback":
                assert isinstance(v, list) and v and all(isinstance(f, str) for f in v), v
                out[key] = "<traceback>"
            else:
                out[key] = norm(v, ids, input_dir)
        if set(out) == {"prompt_id", "number", "node_errors"}:
            out["number"] = "<number>"
        return out
    return value


def shape(value: Any) -> Any:
    """Types and keys only (lists as the set of their element shapes)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return ["list", sorted({repr(shape(v)) for v in value})]
    return type(value).__name__


# --- replay ----------------------------------------------------------------------------------


@dataclass
class Exchange:
    label: str
    recorded: dict[str, Any]
    response: httpx.Response


def send(
    client: httpx.Client,
    base_url: str,
    request: dict[str, Any],
    ids: Ids,
    uploads: dict[str, bytes],
) -> httpx.Response:
    path = "/".join(ids.ours(part) for part in request["path"].split("/"))
    kwargs: dict[str, Any] = {"params": ids.ours(request.get("query"))}
    if "json" in request:
        kwargs["json"] = ids.ours(request["json"])
    elif "raw_body" in request:
        kwargs["content"] = request["raw_body"].encode()
        kwargs["headers"] = request.get("headers", {})
    elif "multipart" in request:
        parts = request["multipart"]
        kwargs["files"] = {
            name: (f["filename"], uploads[f["sha256"]], f["content_type"])
            for name, f in parts["files"].items()
        }
        kwargs["data"] = parts["fields"]
    return client.request(request["method"], base_url + path, **kwargs)


def learn_temp_names(theirs: list[Message], ours: list[Message], ids: Ids) -> None:
    """PreviewImage names carry 5 random letters: pair the recorded ones with ours."""
    for t_msg, o_msg in zip(theirs, ours, strict=False):
        if t_msg["type"] != "executed" or o_msg["type"] != "executed":
            continue
        t_images = (t_msg["data"].get("output") or {}).get("images", [])
        o_images = (o_msg["data"].get("output") or {}).get("images", [])
        for t_img, o_img in zip(t_images, o_images, strict=False):
            if TEMP_NAME_RE.search(t_img["filename"]) and t_img["filename"] != o_img["filename"]:
                ids.pair(t_img["filename"], o_img["filename"])


def learn_ids(recorded: dict[str, Any], response: httpx.Response, ids: Ids) -> None:
    """A POST /prompt answer pairs the recorded prompt_id with ours."""
    theirs = recorded["response"].get("json")
    if recorded["request"]["path"] != "/prompt" or not isinstance(theirs, dict):
        return
    if "prompt_id" in theirs and response.status_code == 200:
        ids.pair(theirs["prompt_id"], response.json()["prompt_id"])


def check_exchange(
    ex: Exchange,
    ids: Ids,
    uploads: dict[str, bytes],
    input_dir: str,
    *,
    shape_only: bool = False,
    skip_body: bool = False,
) -> None:
    rec, resp = ex.recorded["response"], ex.response
    where = f"{ex.label}: {ex.recorded['request']['method']} {ex.recorded['request']['path']}"
    assert resp.status_code == rec["status"], f"{where}: {resp.status_code} {resp.text[:300]}"
    for header in ("content-type", "content-disposition"):
        want = rec["headers"].get(header)
        got = resp.headers.get(header)
        assert norm(got, ids) == norm(want, ids), f"{where}: {header} {got!r} != {want!r}"
    if skip_body:
        return
    if "json" in rec:
        mine, theirs = resp.json(), rec["json"]
        if shape_only:
            assert shape(mine) == shape(theirs), where
        else:
            assert norm(mine, ids, input_dir) == norm(theirs, ids), where
    elif "text" in rec:
        assert resp.text == rec["text"], where
    elif "binary" in rec:
        magic = bytes.fromhex(rec["binary"]["head_hex"])[:4]
        assert resp.content[:4] == magic, f"{where}: starts {resp.content[:8]!r}"
        if rec["binary"]["sha256"] in uploads:  # our upload served back byte for byte
            sent = uploads[rec["binary"]["sha256"]]
            assert resp.content == sent, where


@dataclass
class Replay:
    ids: Ids
    exchanges: dict[str, Exchange]
    messages: list[Message]
    client_id: str


def replay(
    server: ComfyServer,
    transcript: Transcript,
    *,
    uploads: dict[str, bytes] | None = None,
    shape_only: frozenset[str] = frozenset(),
    skip_body: frozenset[str] = frozenset(),
) -> Replay:
    """Replay every HTTP request of ``transcript``; check each answer; return the socket's log."""
    uploads = uploads or {}
    ids = Ids()
    client_id = str(uuid.uuid4())
    ids.pair(transcript.client_id, client_id)
    first = next(
        (e["text"] for e in transcript.events if e["kind"] == "ws_send"),
        None,
    )
    exchanges: dict[str, Exchange] = {}
    with (
        WsRecorder(server.base_url, client_id, first_message=first) as ws,
        httpx.Client(timeout=HTTP_TIMEOUT, trust_env=False) as client,
    ):
        seen = 0
        for event in transcript.events:
            if event["kind"] == "ws_recv":
                seen += 1
            elif event["kind"] == "http":
                learn_temp_names(transcript.ws_messages()[:seen], ws.wait_count(seen), ids)
                label = event["label"]
                response = send(client, server.base_url, event["request"], ids, uploads)
                learn_ids(event, response, ids)
                exchange = Exchange(label, event, response)
                check_exchange(
                    exchange,
                    ids,
                    uploads,
                    str(server.input_dir),
                    shape_only=label in shape_only,
                    skip_body=label in skip_body,
                )
                exchanges[label] = exchange
        ws.wait_count(seen)
        messages = ws.settle()
    return Replay(ids, exchanges, messages, client_id)


def assert_same_messages(replayed: Replay, transcript: Transcript, input_dir: str) -> None:
    ours = [norm(m, replayed.ids, input_dir) for m in replayed.messages]
    theirs = [norm(m, replayed.ids) for m in transcript.ws_messages()]
    assert [m["type"] for m in ours] == [m["type"] for m in theirs]
    assert ours == theirs


def assert_numbers_follow(replayed: Replay, transcript: Transcript) -> None:
    """``number`` rises on every parsable POST /prompt; ``front`` negates; given ones are kept."""
    pairs = []
    for ex in replayed.exchanges.values():
        rec = ex.recorded
        submitted = rec["request"]["path"] == "/prompt" and rec["request"]["method"] == "POST"
        if submitted and ex.response.status_code == 200:
            pairs.append((rec["request"].get("json", {}), rec["response"]["json"], ex))
    assert pairs, f"{transcript.name}: no accepted prompts to compare"
    base_theirs = base_ours = None
    for body, theirs, ex in pairs:
        ours = ex.response.json()["number"]
        assert type(ours) is type(theirs["number"]), ex.label
        if "number" in body:
            assert ours == theirs["number"] == float(body["number"]), ex.label
            continue
        if base_theirs is None:
            base_theirs, base_ours = abs(theirs["number"]), abs(ours)
        assert base_ours is not None
        assert abs(ours) - base_ours == abs(theirs["number"]) - base_theirs, ex.label
        assert (ours < 0) == (theirs["number"] < 0), ex.label


def run_quietly(server: ComfyServer, prompt: dict[str, Any], timeout: float = 10.0) -> str:
    """Run a prompt for another client (no socket of ours sees it); wait for its history."""
    body = {"prompt": prompt, "client_id": str(uuid.uuid4())}
    resp = httpx.post(f"{server.base_url}/prompt", json=body, timeout=HTTP_TIMEOUT)
    assert resp.status_code == 200, resp.text
    prompt_id: str = resp.json()["prompt_id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hist = httpx.get(f"{server.base_url}/history/{prompt_id}", timeout=HTTP_TIMEOUT).json()
        if prompt_id in hist:
            return prompt_id
        time.sleep(0.05)
    raise AssertionError(f"setup prompt {prompt_id} did not finish within {timeout} s")


def recorded_prompt(number: str, label: str) -> dict[str, Any]:
    graph: dict[str, Any] = copy.deepcopy(load(number).http(label)["request"]["json"]["prompt"])
    return graph


def png(color: tuple[int, int, int], size: int = 8) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def fresh(launch_stub: Launch) -> Iterator[ComfyServer]:
    """A stand-in of our own: empty folders, empty cache, number 0 (like a fresh ComfyUI)."""
    yield launch_stub()


# --- the scenarios ---------------------------------------------------------------------------


def test_01_success_same_messages_history_and_png(fresh: ComfyServer) -> None:
    t = load("01")
    replayed = replay(fresh, t, shape_only=frozenset({"system_stats_before", "system_stats_after"}))
    assert_same_messages(replayed, t, str(fresh.input_dir))
    # /view served the real PNG the node wrote, with the recorded image's size.
    from PIL import Image

    png_bytes = replayed.exchanges["view_output"].response.content
    assert png_bytes == (fresh.output_dir / "proto_a_00001_.png").read_bytes()
    recorded = protocol_dir()
    assert recorded is not None
    with Image.open(io.BytesIO(png_bytes)) as ours, Image.open(recorded / "01_output.png") as real:
        assert ours.format == real.format == "PNG"
        assert ours.size == real.size


def test_02_cached_rerun_and_partial_rerun(fresh: ComfyServer) -> None:
    run_quietly(fresh, recorded_prompt("01", "submit"))  # the recording session's 01 ran first
    t = load("02")
    replayed = replay(fresh, t)
    assert_same_messages(replayed, t, str(fresh.input_dir))
    assert_numbers_follow(replayed, t)
    # The fully cached run re-sent the old file and wrote none; the partial one wrote one.
    assert sorted(p.name for p in fresh.output_dir.iterdir()) == [
        "proto_a_00001_.png",
        "proto_a_00002_.png",
    ]


def test_10_validation_error_bodies(fresh: ComfyServer) -> None:
    # The session had run 01 and 02 before: the same cache, so even the accepted case matches.
    run_quietly(fresh, recorded_prompt("01", "submit"))
    run_quietly(fresh, recorded_prompt("02", "submit_changed_sigma"))
    t = load("10")
    replayed = replay(fresh, t)
    assert set(t.notes["cases"]) <= set(replayed.exchanges)
    for label in t.notes["cases"]:  # spelled out, so a failure names the case
        rec = t.http(label)["response"]
        ours = replayed.exchanges[label].response
        assert ours.status_code == rec["status"], label
        if "json" in rec and "error" in rec["json"]:
            body = ours.json()
            assert body["error"]["type"] == rec["json"]["error"]["type"], label
            assert {
                nid: [e["type"] for e in err["errors"]] for nid, err in body["node_errors"].items()
            } == {
                nid: [e["type"] for e in err["errors"]]
                for nid, err in rec["json"]["node_errors"].items()
            }, label
    assert_numbers_follow(replayed, t)
    assert_same_messages(replayed, t, str(fresh.input_dir))


def test_11_runtime_error(fresh: ComfyServer) -> None:
    t = load("11")
    corrupt = b"this is not a png file\n"
    uploads = {hashlib.sha256(corrupt).hexdigest(): corrupt}
    replayed = replay(fresh, t, uploads=uploads)
    assert_same_messages(replayed, t, str(fresh.input_dir))
    error = next(m for m in replayed.messages if m["type"] == "execution_error")["data"]
    assert error["exception_type"] == "PIL.UnidentifiedImageError"
    assert list(fresh.output_dir.iterdir()) == []


def test_12_client_prompt_id(fresh: ComfyServer) -> None:
    t = load("12")
    replayed = replay(fresh, t)
    assert_same_messages(replayed, t, str(fresh.input_dir))
    assert_numbers_follow(replayed, t)
    first = replayed.exchanges["submit_custom_prompt_id"].response.json()
    again = replayed.exchanges["submit_same_prompt_id_again"].response.json()
    assert first["prompt_id"] == again["prompt_id"] == "my-custom-id-18b532"
    assert replayed.exchanges["submit_integer_prompt_id"].response.json()["prompt_id"] == "12345"
    # The second run under the same id replaced the first in history.
    hist = replayed.exchanges["history_custom_id_after_reuse"].response.json()
    entry = hist["my-custom-id-18b532"]
    assert entry["prompt"][0] == again["number"]
    assert entry["prompt"][2]["3"]["inputs"]["sigma"] == 3.0


def test_13_upload_view_and_loadimage(fresh: ComfyServer) -> None:
    t = load("13")

    def sha_of(label: str) -> str:
        sha: str = t.http(label)["request"]["multipart"]["files"]["image"]["sha256"]
        return sha

    red, tiny = png((200, 30, 30)), png((1, 2, 3), 4)
    uploads = {sha_of("upload_new"): red, sha_of("upload_overwrite_true"): tiny}
    replayed = replay(fresh, t, uploads=uploads)
    assert_same_messages(replayed, t, str(fresh.input_dir))
    names = sorted(p.name for p in fresh.input_dir.iterdir() if p.is_file())
    assert names == ["proto_upload_18b532 (1).png", "proto_upload_18b532.png"]
    assert (fresh.input_dir / "proto_upload_18b532.png").read_bytes() == tiny, "overwritten"
    assert (fresh.input_dir / "protosub" / "proto_upload_18b532.png").read_bytes() == red
    assert not (fresh.input_dir.parent / "escape.png").exists()
    from PIL import Image

    for label, fmt, mode in (
        ("view_channel_rgb", "PNG", "RGB"),
        ("view_channel_a", "PNG", "RGBA"),
        ("view_preview_webp", "WEBP", None),
    ):
        with Image.open(io.BytesIO(replayed.exchanges[label].response.content)) as img:
            assert img.format == fmt, label
            assert mode is None or img.mode == mode, label


def test_14_interrupt_and_queue(launch_stub: Launch) -> None:
    t = load("14")
    # Model-free nodes are fast here; 0.5 s per node makes the graph slow like the recording's.
    # p1 and q1 were interrupted while their heavy node 2 ran: a "hold" fault keeps each there
    # until the interrupt, so the requests in between never race node 2's end.
    server = launch_stub("--node-seconds", "0.5")

    def hold_node_2_of_the_next_prompt() -> None:
        body = {"fault": "hold", "after_node": 1}
        armed = httpx.post(f"{server.base_url}/_fake/fault", json=body, timeout=HTTP_TIMEOUT)
        assert armed.status_code == 200, armed.text

    ids = Ids()
    client_id = str(uuid.uuid4())
    ids.pair(t.client_id, client_id)
    recorded_ids: dict[str, str] = t.notes["ids"]
    input_dir = str(server.input_dir)

    with (
        WsRecorder(server.base_url, client_id) as ws,
        httpx.Client(timeout=HTTP_TIMEOUT, trust_env=False) as client,
    ):

        def do(label: str) -> httpx.Response:
            event = t.http(label)
            response = send(client, server.base_url, event["request"], ids, {})
            learn_ids(event, response, ids)
            check_exchange(Exchange(label, event, response), ids, {}, input_dir)
            return response

        def executing(name: str, node: str | None) -> Message:
            pid = ids.to_ours[recorded_ids[name]]
            return ws.wait_for(
                lambda m: (
                    m["type"] == "executing"
                    and m["data"].get("prompt_id") == pid
                    and m["data"]["node"] == node
                ),
                timeout=15,
            )

        def started(name: str) -> None:
            pid = ids.to_ours[recorded_ids[name]]
            ws.wait_for(lambda m: m["type"] == "execution_start" and m["data"]["prompt_id"] == pid)

        hold_node_2_of_the_next_prompt()
        do("submit_p1_slow")
        started("p1")  # as recorded: the worker took p1 before p2 arrived
        for label in ("submit_p2", "submit_p3", "submit_p4_front"):
            do(label)
        executing("p1", "2")  # the recording looked at the queue while p1 ran node 2
        for label in (
            "queue_running_and_pending",
            "prompt_queue_info_running",
            "queue_delete_p3",
            "queue_after_delete",
            "interrupt_targeted_not_running_noop",
            "interrupt_targeted_running",
        ):
            do(label)
        executing("p2", None)
        for label in (
            "history_p1_interrupted",
            "history_p3_deleted_from_queue",
            "interrupt_no_body_idle",
        ):
            do(label)
        hold_node_2_of_the_next_prompt()
        do("submit_q1_slow")
        started("q1")
        do("submit_q2_slow")
        executing("q1", "2")
        for label in ("queue_clear", "queue_after_clear", "interrupt_global_empty_json"):
            do(label)
        executing("q1", None)
        for label in ("history_delete_p2", "history_p2_after_delete"):
            do(label)
        messages = ws.settle()

    def stream(msgs: list[Message], pid: str) -> list[Message]:
        return [m for m in msgs if m["data"].get("prompt_id") == pid]

    theirs_all = t.ws_messages()
    for name in ("p1", "p4", "p2", "q1"):
        recorded = recorded_ids[name]
        ours = [norm(m, ids, input_dir) for m in stream(messages, ids.to_ours[recorded])]
        theirs = [norm(m, ids) for m in stream(theirs_all, recorded)]
        assert ours == theirs, name
    for name in ("p3", "q2"):  # deleted / cleared before they ran
        assert stream(messages, ids.to_ours[recorded_ids[name]]) == [], name

    def statuses(msgs: list[Message]) -> list[int]:
        return [
            m["data"]["status"]["exec_info"]["queue_remaining"]
            for m in msgs
            if m["type"] == "status"
        ]

    assert statuses(messages) == statuses(theirs_all)


def test_15_misc_endpoints(fresh: ComfyServer) -> None:
    # The session's output folder held transcript 14's file, which 15 views.
    graph = recorded_prompt("14", "submit_p4_front")
    setup_id = run_quietly(fresh, graph)
    t = load("15")
    replayed = replay(fresh, t, skip_body=frozenset({"history_max_items_1"}))
    assert_same_messages(replayed, t, str(fresh.input_dir))
    # Another prompt than the recording's was last; the answer is still that one entry.
    last = replayed.exchanges["history_max_items_1"].response.json()
    (recorded,) = t.http("history_max_items_1")["response"]["json"].values()
    assert list(last) == [setup_id]
    assert set(last[setup_id]) == set(recorded)


def test_16_other_clients_see_only_status(fresh: ComfyServer) -> None:
    t = load("16")
    notes = {k: v for e in t.events if e["kind"] == "note" for k, v in e.items() if k != "kind"}
    with WsRecorder(fresh.base_url) as anonymous:
        hello = anonymous.wait_count(1)[0]
        recorded_hello = notes["second_socket_without_clientId_first_message"]
        assert re.fullmatch(r"[0-9a-f]{32}", hello["data"]["sid"])
        assert shape(hello) == shape(recorded_hello)
        replayed = replay(fresh, t)
        assert_same_messages(replayed, t, str(fresh.input_dir))
        seen = anonymous.settle()
    assert seen[1:] == notes["second_socket_messages_during_other_clients_prompt"]


def test_object_info_matches_the_recorded_server(fresh: ComfyServer) -> None:
    real = object_info_full()
    ours = httpx.get(f"{fresh.base_url}/object_info", timeout=HTTP_TIMEOUT).json()
    shared = sorted(set(ours) & set(real))
    assert shared == sorted(
        [
            "EmptyImage",
            "EmptyLatentImage",
            "ImageBatch",
            "ImageBlur",
            "ImageInvert",
            "ImageScale",
            "LoadImage",
            "PreviewAny",
            "PreviewImage",
            "PrimitiveString",
            "SaveAnimatedPNG",
            "SaveAnimatedWEBP",
            "SaveGLB",
            "SaveImage",
            "SaveImageWebsocket",
            "StringConcatenate",
        ]
    )
    # The recording had no torchaudio, so the audio nodes (EmptyAudio, SaveAudio*, PreviewAudio)
    # are not in it; the stand-in copies them from comfy_extras/nodes_audio.py at that commit.
    for name in shared:
        mine, theirs = copy.deepcopy(ours[name]), copy.deepcopy(real[name])
        if name == "LoadImage":  # the file list is whatever the input folder holds
            mine["input"]["required"]["image"][0] = theirs["input"]["required"]["image"][0] = []
        assert mine == theirs, name
    slow = ours["RylaSlowSteps"]
    assert set(slow) == set(real["EmptyImage"]), "the stand-in's own node has the real shape"
    assert slow["input"]["required"]["steps"] == [
        "INT",
        {"default": 5, "min": 1, "max": 10000, "step": 1},
    ]
    one = httpx.get(f"{fresh.base_url}/object_info/RylaSlowSteps", timeout=HTTP_TIMEOUT).json()
    assert one == {"RylaSlowSteps": slow}
