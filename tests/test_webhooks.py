"""Webhooks over real sockets: signed deliveries, retries, address rules, redirects, restarts.

The receivers are real HTTP servers on 127.0.0.1 (``http.server`` in a thread); the gateway is
the real app on uvicorn in front of the ComfyUI stand-in, or `ryla serve` as a subprocess.
Retries use short backoff settings (``WebhookSettings`` / ``RYLA_WEBHOOK_*``), never patched
sleeps.  Signatures are checked with the ``standardwebhooks`` package itself.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import http.server
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

import ryla_modal
from ryla_modal.client import RylaClient
from ryla_modal.errors import ConfigError
from ryla_modal.gateway.schemas import JobRecord, WebhookStatus
from ryla_modal.gateway.store import MemoryJobStore, SQLiteJobStore
from ryla_modal.gateway.webhooks import WebhookSettings, payload, retry_delay, webhook_id
from ryla_modal.webhooks import WebhookVerificationError, new_secret, secret_key, verify_webhook
from tests.conftest import ComfyServer, simple_workflow, unique
from tests.gateway_fixtures import TOKEN, Gateway, running_gateway, wait_job
from tests.test_serve_cli import Serve
from tests.test_serve_cli import launch_serve as launch_serve  # the fixture, used here

SECRET = "whsec_" + base64.b64encode(b"ryla-test-webhook-key-32-bytes!!").decode("ascii")
FAST = WebhookSettings(
    secret=SECRET,
    allow_private=True,
    retry_initial_s=0.05,
    retry_max_s=0.2,
    budget_s=60.0,
    poll_s=0.05,
)


# --- a real receiver ----------------------------------------------------------------------


@dataclasses.dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """An HTTP server that answers POSTs from a script of statuses, then ``then`` forever.

    ``location`` is sent with 3xx answers.  Every request is kept, in order.
    """

    def __init__(self, script: list[int], then: int = 200, location: str | None = None) -> None:
        self.script = list(script)
        self.then = then
        self.location = location
        self.received: list[Received] = []
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                with receiver.arrived:
                    receiver.received.append(
                        Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                    status = receiver.script.pop(0) if receiver.script else receiver.then
                    receiver.arrived.notify_all()
                self.send_response(status)
                if receiver.location and 300 <= status < 400:
                    self.send_header("location", receiver.location)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook?token=abc"

    def count(self) -> int:
        with self.lock:
            return len(self.received)

    def wait_for(self, n: int, timeout: float = 20.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self.arrived:
            while len(self.received) < n:
                left = deadline - time.monotonic()
                assert left > 0, f"{len(self.received)} deliveries, expected {n}"
                self.arrived.wait(min(left, 0.5))
            return list(self.received)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(*args: Any, **kw: Any) -> Receiver:
        made.append(Receiver(*args, **kw))
        return made[-1]

    try:
        yield make
    finally:
        for r in made:
            r.close()


def wait_webhook(
    c: httpx.Client, job_id: str, done: Callable[[dict[str, Any]], bool], timeout: float = 30.0
) -> dict[str, Any]:
    """Poll the job until its ``webhook`` satisfies ``done``; fails the test at ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = c.get(f"/jobs/{job_id}").json()
        if job.get("webhook") and done(job["webhook"]):
            return job
        assert time.monotonic() < deadline, f"webhook not as expected: {job.get('webhook')}"
        time.sleep(0.05)


@pytest.fixture
def gateway(comfy: ComfyServer, tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    import contextlib

    stack = contextlib.ExitStack()

    def make(**kw: Any) -> Gateway:
        return stack.enter_context(running_gateway(comfy, tmp_path / f"w{uuid.uuid4().hex}", **kw))

    with stack:
        yield make


# --- delivery, retries, signatures --------------------------------------------------------


def test_fails_twice_then_accepts_three_attempts_recorded_and_signed(
    gateway: Callable[..., Gateway], receivers: Callable[..., Receiver]
) -> None:
    receiver = receivers([500, 503])
    gw = gateway(webhooks=FAST)
    with RylaClient(gw.url, token=TOKEN) as client:
        job = client.submit(simple_workflow(unique("wh")), webhook=receiver.url)
    assert job.webhook is not None and job.webhook.state in ("waiting", "pending", "delivered")
    c = gw.client()
    final = wait_job(c, job.job_id)
    assert final["status"] == "succeeded"
    shown = wait_webhook(c, job.job_id, lambda w: w["state"] == "delivered")["webhook"]
    assert shown["attempts"] == 3
    assert shown["last_status"] == 200
    assert shown["last_error"] is None
    assert shown["delivered_at"] >= final["updated_at"]
    assert "url" not in shown  # the URL (and its ?token=) stays off the public job

    got = receiver.wait_for(3)
    assert len(got) == 3  # delivered: no fourth attempt
    assert {r.headers["webhook-id"] for r in got} == {webhook_id(job.job_id, "succeeded")}
    assert len({r.body for r in got}) == 1  # the same bytes on every attempt
    for r in got:
        assert r.path == "/hook?token=abc"
        Webhook(SECRET).verify(r.body, r.headers)  # the package's own check
        assert verify_webhook(r.body, r.headers, SECRET)["type"] == "job.succeeded"

    event = json.loads(got[-1].body)
    data = event["data"]
    assert data["job_id"] == job.job_id and data["status"] == "succeeded"
    assert data["timings"]["total"] is not None
    assert data["url"] == f"{gw.url}/jobs/{job.job_id}"
    [out] = data["outputs"]
    assert out["url"] == f"{gw.url}/jobs/{job.job_id}/outputs/0"
    file = c.get(out["url"])
    assert hashlib.sha256(file.content).hexdigest() == out["sha256"]
    assert "webhook" not in data


def test_only_the_events_asked_for_are_sent(
    gateway: Callable[..., Gateway], receivers: Callable[..., Receiver]
) -> None:
    receiver = receivers([])
    gw = gateway(webhooks=FAST)
    c = gw.client()
    asked = {"url": receiver.url, "events": ["succeeded"]}
    ok = c.post("/jobs", json={"workflow": simple_workflow(unique("ev")), "webhook": asked})
    assert ok.status_code == 202, ok.text
    assert ok.json()["webhook"]["events"] == ["succeeded"]
    job = wait_job(c, ok.json()["job_id"])
    shown = wait_webhook(c, job["job_id"], lambda w: w["state"] == "delivered")["webhook"]
    assert shown["attempts"] == 1

    cancel_only = {"url": receiver.url, "events": ["cancelled"]}
    resp = c.post("/jobs", json={"workflow": simple_workflow(unique("ev")), "webhook": cancel_only})
    job = wait_job(c, resp.json()["job_id"])
    assert job["status"] == "succeeded"
    assert job["webhook"]["state"] == "not_sent" and job["webhook"]["attempts"] == 0
    assert receiver.count() == 1


# --- address rules and redirects ----------------------------------------------------------


def test_submit_refuses_unsafe_urls_and_servers_without_a_secret(
    gateway: Callable[..., Gateway], receivers: Callable[..., Receiver]
) -> None:
    receiver = receivers([])
    strict = gateway(webhooks=dataclasses.replace(FAST, allow_private=False))
    c = strict.client()
    wf = simple_workflow(unique("no"))
    for url in (
        receiver.url,  # loopback
        "http://10.1.2.3/hook",  # private
        "http://169.254.169.254/latest/meta-data",  # link-local (cloud metadata)
        "http://[::1]:9/hook",
        "ftp://example.com/hook",
        "http://user:pw@example.com/hook",
    ):
        resp = c.post("/jobs", json={"workflow": wf, "webhook": {"url": url}})
        assert resp.status_code == 422, (url, resp.text)
        assert resp.json()["error"]["type"] == "invalid_webhook"
        assert "pw" not in resp.text
    assert (
        "--allow-private-webhooks"
        in c.post("/jobs", json={"workflow": wf, "webhook": {"url": receiver.url}}).json()["error"][
            "message"
        ]
    )
    resp = c.post("/jobs", json={"workflow": wf, "webhook": {"url": receiver.url, "events": []}})
    assert resp.status_code == 422
    resp = c.post(
        "/jobs", json={"workflow": wf, "webhook": {"url": receiver.url, "events": ["running"]}}
    )
    assert resp.status_code == 422
    assert c.get("/jobs").json()["jobs"] == []  # nothing was created

    no_secret = gateway().client()
    resp = no_secret.post("/jobs", json={"workflow": wf, "webhook": {"url": receiver.url}})
    assert resp.status_code == 422
    assert "RYLA_WEBHOOK_SECRET" in resp.json()["error"]["message"]
    assert receiver.count() == 0


def test_the_rules_hold_again_at_delivery(
    gateway: Callable[..., Gateway], receivers: Callable[..., Receiver]
) -> None:
    """Accepted at submit (private allowed then), refused when delivered (no longer allowed):
    the rules are checked on the resolved address at every attempt, not only at submit."""
    receiver = receivers([])
    gw = gateway(webhooks=FAST, deliver_with=dataclasses.replace(FAST, allow_private=False))
    c = gw.client()
    resp = c.post(
        "/jobs", json={"workflow": simple_workflow(unique("r")), "webhook": {"url": receiver.url}}
    )
    assert resp.status_code == 202, resp.text
    shown = wait_webhook(c, resp.json()["job_id"], lambda w: w["attempts"] >= 2)["webhook"]
    assert shown["state"] == "pending"
    assert shown["last_status"] is None
    assert shown["last_error"].startswith("refused:")
    assert "127.0.0.1" in shown["last_error"] and "token=abc" not in shown["last_error"]
    assert receiver.count() == 0


def test_redirects_are_not_followed_and_retries_give_up_after_the_budget(
    gateway: Callable[..., Gateway], receivers: Callable[..., Receiver]
) -> None:
    target = receivers([])
    redirecting = receivers([], then=307, location=target.url)
    gw = gateway(webhooks=dataclasses.replace(FAST, budget_s=2.0))  # room for >= 2 tries
    c = gw.client()
    resp = c.post(
        "/jobs",
        json={"workflow": simple_workflow(unique("rd")), "webhook": {"url": redirecting.url}},
    )
    shown = wait_webhook(c, resp.json()["job_id"], lambda w: w["state"] == "failed")["webhook"]
    assert shown["last_status"] == 307
    assert "redirect" in shown["last_error"] and "gave up" in shown["last_error"]
    assert shown["next_attempt_at"] is None
    assert shown["attempts"] == redirecting.count() >= 2
    assert target.count() == 0


# --- a pending delivery across a `ryla serve` restart ---------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_pending_delivery_survives_a_restart(
    tmp_path: Path,
    receivers: Callable[..., Receiver],
    launch_serve: Callable[..., Serve],
    sig: signal.Signals,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    receiver = receivers([], then=503)
    monkeypatch.setenv("RYLA_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("RYLA_WEBHOOK_RETRY_INITIAL_S", "0.2")
    monkeypatch.setenv("RYLA_WEBHOOK_RETRY_MAX_S", "0.2")
    monkeypatch.setenv("RYLA_WEBHOOK_POLL_S", "0.05")
    data = tmp_path / "data"
    first = launch_serve(data, "--allow-private-webhooks")
    with first.client() as c:
        resp = c.post(
            "/jobs",
            json={"workflow": simple_workflow(unique("rs")), "webhook": {"url": receiver.url}},
        )
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["job_id"]
        assert wait_job(c, job_id)["status"] == "succeeded"
        before = wait_webhook(c, job_id, lambda w: w["attempts"] >= 1)["webhook"]
        assert before["state"] == "pending" and before["last_status"] == 503
    os.killpg(first.proc.pid, sig)
    first.proc.wait(timeout=30)
    if first.comfy_pid is not None:
        _kill_group(first.comfy_pid)
    tried = receiver.count()
    receiver.then = 200  # the receiver is back

    second = launch_serve(data, "--allow-private-webhooks")
    with second.client() as c:
        shown = wait_webhook(c, job_id, lambda w: w["state"] == "delivered")["webhook"]
    # An attempt cut by SIGKILL may have reached the receiver unrecorded: at least once.
    assert shown["attempts"] >= 2 and receiver.count() >= tried + 1
    last = receiver.received[-1]
    event = verify_webhook(last.body, last.headers, SECRET)
    assert event["data"]["job_id"] == job_id and event["type"] == "job.succeeded"


def _kill_group(pid: int) -> None:
    import contextlib

    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


# --- the outbox in the stores --------------------------------------------------------------


def _record(job_id: str) -> JobRecord:
    now = time.time()
    return JobRecord(
        job_id=job_id,
        status="running",
        created_at=now,
        updated_at=now,
        workflow_sha256="0" * 64,
        webhook=WebhookStatus(events=["succeeded", "failed"]),
        webhook_url="https://example.com/hook",
        webhook_base_url="http://127.0.0.1:8000",
    )


def test_the_sqlite_outbox_is_written_with_the_final_status_and_survives_reopening(
    tmp_path: Path,
) -> None:
    store = SQLiteJobStore(tmp_path)
    store.create_if_absent(_record("a"))
    store.create_if_absent(_record("b"))
    assert store.due_webhooks(time.time() + 1, 10) == []
    store.update("a", status="succeeded")
    store.update("b", status="cancelled")  # not among its events
    assert store.get("b").webhook.state == "not_sent"  # type: ignore[union-attr]
    store.close()

    store = SQLiteJobStore(tmp_path)
    try:
        assert store.due_webhooks(time.time() + 1, 10) == ["a"]
        hook = store.get("a").webhook  # type: ignore[union-attr]
        assert hook is not None and hook.state == "pending" and hook.due_since is not None
        later = hook.model_copy(update={"attempts": 1, "next_attempt_at": time.time() + 3600})
        store.save_webhook("a", later)
        assert store.due_webhooks(time.time() + 1, 10) == []
        assert store.due_webhooks(time.time() + 7200, 10) == ["a"]
        store.save_webhook("a", later.model_copy(update={"state": "delivered"}))
        assert store.due_webhooks(time.time() + 7200, 10) == []
        assert store.get("a").webhook.attempts == 1  # type: ignore[union-attr]
    finally:
        store.close()


def test_the_memory_outbox_follows_the_same_rules() -> None:
    store = MemoryJobStore()
    woken: list[int] = []
    store.on_webhook_due = lambda: woken.append(1)
    store.create_if_absent(_record("a"))
    store.update("a", progress=None)
    assert store.due_webhooks(time.time() + 1, 10) == [] and woken == []
    store.update("a", status="failed")
    assert store.due_webhooks(time.time() + 1, 10) == ["a"] and woken == [1]
    store.update("a", status="succeeded")  # final stays final: nothing queued twice
    assert woken == [1]


# --- payload, backoff, settings, verify ----------------------------------------------------


def test_backoff_doubles_from_the_first_retry_and_is_capped() -> None:
    s = WebhookSettings()
    assert retry_delay(1, s, lambda: 1.0) == s.retry_initial_s <= 5.0
    assert retry_delay(2, s, lambda: 1.0) == 2 * s.retry_initial_s
    assert retry_delay(50, s, lambda: 1.0) == s.retry_max_s == 600.0
    assert retry_delay(50, s, lambda: 0.0) == 300.0  # jitter only shortens
    assert s.budget_s == 24 * 3600 and s.attempt_timeout_s == 10.0


def test_settings_from_the_environment() -> None:
    s = WebhookSettings.from_env({"RYLA_WEBHOOK_SECRET": SECRET, "RYLA_WEBHOOK_BUDGET_S": "60"})
    assert s.enabled and s.budget_s == 60 and SECRET not in repr(s)
    assert not WebhookSettings.from_env({}).enabled
    with pytest.raises(ConfigError) as err:
        WebhookSettings.from_env({"RYLA_WEBHOOK_SECRET": "hunter2"})
    assert "hunter2" not in str(err.value)
    with pytest.raises(ConfigError):
        WebhookSettings.from_env({"RYLA_WEBHOOK_RETRY_MAX_S": "soon"})
    # the attempt deadline is at most 10 s, whatever the environment says
    assert (
        WebhookSettings.from_env({"RYLA_WEBHOOK_ATTEMPT_TIMEOUT_S": "99"}).attempt_timeout_s == 10
    )


def _signed(body: bytes, secret: str = SECRET, at: float | None = None) -> dict[str, str]:
    import datetime as dt

    when = int(time.time() if at is None else at)
    sig = Webhook(secret_key(secret)).sign(
        "msg_1", dt.datetime.fromtimestamp(when, tz=dt.UTC), body.decode()
    )
    return {"Webhook-Id": "msg_1", "Webhook-Timestamp": str(when), "Webhook-Signature": sig}


def test_verify_accepts_a_good_delivery_and_explains_a_bad_one() -> None:
    body = payload(_record("v").model_copy(update={"status": "succeeded"}))
    assert verify_webhook(body, _signed(body), SECRET)["data"]["job_id"] == "v"
    assert verify_webhook(body.decode(), _signed(body), SECRET)["type"] == "job.succeeded"
    with pytest.raises(WebhookVerificationError, match="does not match"):
        verify_webhook(body + b" ", _signed(body), SECRET)
    with pytest.raises(WebhookVerificationError, match="does not match"):
        verify_webhook(body, _signed(body, new_secret()), SECRET)
    with pytest.raises(WebhookVerificationError, match="five minutes"):
        verify_webhook(body, _signed(body, at=time.time() - 3600), SECRET)
    with pytest.raises(WebhookVerificationError, match="webhook-signature"):
        verify_webhook(body, {"webhook-id": "x", "webhook-timestamp": "1"}, SECRET)
    with pytest.raises(ConfigError):
        verify_webhook(body, _signed(body), "not-a-secret")
    assert len(secret_key(new_secret())) == 32


def test_receivers_reach_verify_from_the_package_root() -> None:
    assert ryla_modal.verify_webhook is verify_webhook
    assert ryla_modal.WebhookVerificationError is WebhookVerificationError


def test_on_modal_the_dict_outbox_is_shared_by_worker_and_gateway(
    tmp_path: Path, receivers: Callable[..., Receiver]
) -> None:
    """The worker's final write queues the delivery (``webhook:<id>`` before ``final:<id>``);
    one claim per attempt across processes; the keys go once it is delivered."""
    from ryla_modal.cloud.store import DictJobStore
    from ryla_modal.gateway.webhooks import Deliverer
    from tests.test_cloud_backend import MemoryDict

    receiver = receivers([500])
    d = MemoryDict()
    gateway_store = DictJobStore(d, outputs_dir=tmp_path, role="gateway")
    worker_store = DictJobStore(d, outputs_dir=tmp_path, role="worker")
    record = _record("m").model_copy(update={"status": "queued", "webhook_url": receiver.url})
    gateway_store.create_if_absent(record)
    worker_store.update("m", status="running", phase="executing")
    assert "webhook:m" not in list(d.keys())
    worker_store.update("m", status="succeeded", phase="done")
    keys = [k for op, k in d.ops if op == "put"]
    assert keys.index("webhook:m") < keys.index("final:m")
    assert gateway_store.due_webhooks(time.time() + 1, 10) == ["m"]

    worker = Deliverer(worker_store, FAST).deliver("m")  # right after the job, in the worker
    assert worker is not None and worker.state == "pending" and worker.last_status == 500
    assert not gateway_store.claim_webhook("m", 1)  # attempt 1 was the worker's
    gateway = Deliverer(gateway_store, FAST)
    deadline = time.monotonic() + 10
    while (state := gateway.deliver("m")) is None:  # ...attempt 2 waits for its time
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert state.state == "delivered" and state.attempts == 2
    assert gateway_store.get("m").webhook.state == "delivered"  # type: ignore[union-attr]
    left = list(d.keys())
    assert "webhook:m" not in left and "webhook-claim:m" not in left
    assert receiver.count() == 2


def test_ryla_generate_webhook_sends_the_finished_job(
    gateway: Callable[..., Gateway], receivers: Callable[..., Receiver], tmp_path: Path
) -> None:
    from tests.cli_helpers import ryla, ryla_env
    from tests.test_cli_generate import write_workflow

    receiver = receivers([])
    gw = gateway(webhooks=FAST)
    wf = write_workflow(tmp_path / "wf.json", unique("cliwh"))
    env = ryla_env(tmp_path, RYLA_TOKEN=TOKEN, RYLA_ENDPOINT=gw.url)
    proc = ryla("generate", str(wf), "--webhook", receiver.url, "--out", "o", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    [got] = receiver.wait_for(1)
    event = verify_webhook(got.body, got.headers, SECRET)
    assert event["type"] == "job.succeeded"
    saved = tmp_path / proc.stdout.splitlines()[0]
    assert event["data"]["outputs"][0]["sha256"] == hashlib.sha256(saved.read_bytes()).hexdigest()

    refused = ryla("generate", str(wf), "--webhook", "ftp://x/y", env=env, cwd=tmp_path)
    assert refused.returncode != 0 and "only http and https" in refused.stderr
