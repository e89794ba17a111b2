"""cloud.models: validation of the item list, URL downloads over a real local HTTP server."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from ryla_modal.cloud.models import download_all, plan
from ryla_modal.errors import ConfigError

BODY = b"not really a checkpoint" * 1000


class _Handler(http.server.BaseHTTPRequestHandler):
    seen_auth: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        _Handler.seen_auth.append(self.headers.get("authorization"))
        if self.path != "/files/model.safetensors":
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("content-length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Handler.seen_auth = []
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_url_download_is_whole_idempotent_and_keeps_the_token_home(
    server: str, tmp_path: Path
) -> None:
    items = [{"folder": "checkpoints", "url": f"{server}/files/model.safetensors"}]

    first = download_all(items, tmp_path, token="hf_secret_value")
    second = download_all(items, tmp_path, token="hf_secret_value")

    assert (tmp_path / "checkpoints" / "model.safetensors").read_bytes() == BODY
    assert [d["skipped"] for d in first + second] == [False, True]
    assert first[0]["size"] == len(BODY)
    assert _Handler.seen_auth == [None]  # one request, and no HF token to a non-HF host
    assert "hf_secret_value" not in repr(first + second)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["model.safetensors"]


def test_a_failed_download_leaves_nothing(server: str, tmp_path: Path) -> None:
    items = [{"folder": "loras", "url": f"{server}/missing.safetensors"}]
    with pytest.raises(ConfigError, match="HTTP 404"):
        download_all(items, tmp_path)
    assert list((tmp_path / "loras").iterdir()) == []


@pytest.mark.parametrize(
    ("item", "words"),
    [
        ({"folder": "../etc", "url": "https://h/x"}, "folder '../etc'"),
        ({"folder": "loras", "url": "http://example.com/x"}, "https"),
        ({"folder": "loras", "url": "https://h/x", "hf_repo": "a/b"}, "either url or hf_repo"),
        ({"folder": "loras", "hf_repo": "nobody", "hf_file": "x"}, "owner/name"),
        ({"folder": "loras", "url": "https://h/x", "name": "../../x"}, "plain file name"),
    ],
)
def test_bad_items_name_what_is_wrong(item: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError, match="download item 0") as info:
        plan([item])
    assert words in str(info.value)


def test_hf_items_default_to_main_and_the_file_name() -> None:
    (entry,) = plan([{"folder": "vae", "hf_repo": "org/m", "hf_file": "sub/ae.safetensors"}])
    assert entry == {
        "folder": "vae",
        "hf_repo": "org/m",
        "hf_file": "sub/ae.safetensors",
        "revision": "main",
        "name": "ae.safetensors",
    }
