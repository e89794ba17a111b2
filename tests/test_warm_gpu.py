"""From install to a warm GPU: `ryla init`, ryla.toml's [deploy], the packaged app, `--check`,
`ryla models`, `ryla warm` and `ryla doctor`, with the REAL `modal` against the control-plane
stand-in and a real gateway on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from ryla_modal import defaults
from ryla_modal.cloud import prices
from ryla_modal.cloud.models import download_all
from ryla_modal.cloud.settings import AppSettings
from ryla_modal.errors import ConfigError
from tests.fakes.comfyui_command import fake_comfyui_command
from tests.fakes.modal_control import FakeModalControl, function_definition

ROOT = Path(__file__).resolve().parent.parent
SNAPSHOT = ROOT / "src" / "ryla_modal" / "cloud" / "object_info_snapshot.py"
CLI_TIMEOUT_S = 120
WORKFLOW = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0},
    },
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "d"}},
}


@pytest.fixture
def fake() -> Iterator[FakeModalControl]:
    with FakeModalControl() as control:
        yield control
    assert control.errors == [], f"the fake itself failed: {control.errors}"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """An empty folder outside the checkout, where the user runs `ryla`."""
    out = tmp_path / "project"
    out.mkdir()
    return out


def cli_env(fake: FakeModalControl, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in fake.env(tmp_path / "home").items() if not k.startswith("RYLA_")}
    env.update(RYLA_CONFIG_DIR=str(tmp_path / "config"), **extra)
    env.pop("PYTHONPATH", None)
    return env


def ryla(
    args: list[str], *, cwd: Path, env: dict[str, str], python: str = sys.executable
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python, "-m", "ryla_modal.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )


def object_info_file(tmp_path: Path) -> Path:
    """The image build's object_info step, run against the ComfyUI stand-in."""
    out = tmp_path / "object_info.json"
    proc = subprocess.run(
        [sys.executable, str(SNAPSHOT), "--out", str(out), "--", *fake_comfyui_command()],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return out


def write_toml(folder: Path, deploy: str) -> None:
    (folder / "ryla.toml").write_text(f"[deploy]\n{deploy}\n", encoding="utf-8")


# --- ryla init and ryla.toml ---------------------------------------------------------------------


def test_init_writes_a_commented_toml_that_parses_to_the_defaults(folder: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RYLA_")}
    first = ryla(["init", "--app"], cwd=folder, env=env)
    assert first.returncode == 0, first.stderr
    text = (folder / "ryla.toml").read_text()
    assert text.count("#") > 20 and "RYLA_MIN_CONTAINERS" in text
    assert AppSettings.load({}, project=folder / "ryla.toml") == AppSettings()
    app_text = (folder / "comfyui_app.py").read_text()
    assert "class ComfyWorker" in app_text and "ryla deploy comfyui_app.py" in app_text

    (folder / "ryla.toml").write_text("# mine\n")
    again = ryla(["init"], cwd=folder, env=env)
    assert again.returncode == 5
    assert "already exists" in again.stderr and "--force" in again.stderr
    assert (folder / "ryla.toml").read_text() == "# mine\n"  # untouched
    forced = ryla(["init", "--force"], cwd=folder, env=env)
    assert forced.returncode == 0 and "[deploy]" in (folder / "ryla.toml").read_text()


def test_deploy_table_is_read_checked_and_overridden_by_env(folder: Path) -> None:
    write_toml(
        folder,
        'gpu = "h100:2"\nmin_containers = 1\nbuffer_containers = 2\nsnapshot = "GPU"\n'
        'secrets = ["hf"]\nscaledown_window = 60\n'
        'custom_nodes = [{url = "https://github.com/o/N.git", commit = "' + "a" * 40 + '"}]\n'
        '[[deploy.models]]\nfolder = "loras"\nhf_repo = "o/r"\nhf_file = "x.safetensors"\n',
    )
    path = folder / "ryla.toml"
    s = AppSettings.load({}, project=path)
    assert (s.gpu, s.min_containers, s.buffer_containers, s.snapshot) == ("H100:2", 1, 2, "gpu")
    assert s.secrets == ("hf",) and s.scaledown_window_s == 60
    assert s.custom_nodes[0].directory == "N" and s.models[0]["name"] == "x.safetensors"
    assert AppSettings.from_env(s.to_env()) == s  # what containers get back

    env = {"RYLA_MIN_CONTAINERS": "0", "RYLA_SNAPSHOT": "off", "RYLA_GPU": "T4"}
    o = AppSettings.load(env, project=path)
    assert (o.gpu, o.min_containers, o.snapshot, o.buffer_containers) == ("T4", 0, "off", 2)

    for body, words in [
        ('snapshot = "yes"', "[deploy] snapshot: 'yes' is not one of off, cpu, gpu"),
        ("min_containers = -1", "[deploy] min_containers: -1 is outside 0..100"),
        ('gpu = "A1000"', "[deploy] gpu: 'A1000' is not a Modal GPU type"),
        ('colour = "red"', "[deploy] colour: unknown key"),
        ('secrets = "hf"', "[deploy] secrets: must be a list of strings"),
        ("min_containers = 3\nmax_containers = 2", "min_containers (3) is more than"),
    ]:
        write_toml(folder, body)
        with pytest.raises(ConfigError) as info:
            AppSettings.load({}, project=path)
        assert words in str(info.value), (body, str(info.value))
        assert str(path) in str(info.value) or "max_containers" in str(info.value)
    with pytest.raises(ConfigError, match="RYLA_BUFFER_CONTAINERS: 'x' is not a whole number"):
        AppSettings.load({"RYLA_BUFFER_CONTAINERS": "x"}, project=None)


def test_a_bad_toml_fails_ryla_deploy_before_modal_is_called(
    fake: FakeModalControl, tmp_path: Path, folder: Path
) -> None:
    write_toml(folder, 'snapshot = "sometimes"')
    proc = ryla(["deploy"], cwd=folder, env=cli_env(fake, tmp_path))
    assert proc.returncode == 5, proc.stderr
    assert "ryla.toml [deploy] snapshot: 'sometimes'" in proc.stderr
    assert fake.calls == []


# --- the packaged app, keep-warm settings and `ryla warm` ----------------------------------------


def test_ryla_deploy_from_an_empty_folder_defines_the_class_with_ryla_toml(
    fake: FakeModalControl, tmp_path: Path, folder: Path
) -> None:
    write_toml(
        folder,
        'app = "warm-test"\ngpu = "h100"\nmin_containers = 1\nbuffer_containers = 2\n'
        'scaledown_window = 90\nsnapshot = "cpu"',
    )
    proc = ryla(["deploy", "--json"], cwd=folder, env=cli_env(fake, tmp_path))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    record = fake.deployed["warm-test"]
    assert out["endpoint"] == record["web_urls"]["gateway"]
    worker = function_definition(record["functions"]["ComfyWorker.*"])
    assert worker.resources.gpu_config.gpu_type == "H100"
    assert worker.autoscaler_settings.min_containers == 1
    assert worker.autoscaler_settings.buffer_containers == 2
    assert worker.task_idle_timeout_secs == 90
    # Containers import the packaged module, whatever file or folder the deploy ran from.
    assert worker.module_name == "ryla_modal.cloud.app"
    env_dicts = [dict(r.env_dict) for r in fake.calls_named("SecretGetOrCreate") if r.env_dict]
    assert env_dicts and all(e["RYLA_SNAPSHOT"] == "cpu" for e in env_dicts)
    assert all(e["RYLA_MIN_CONTAINERS"] == "1" for e in env_dicts)
    config = tomllib.loads((tmp_path / "config" / "config.toml").read_text())
    assert config["app"] == "warm-test"


def test_ryla_deploy_file_deploys_the_users_own_copy(
    fake: FakeModalControl, tmp_path: Path, folder: Path
) -> None:
    env = cli_env(fake, tmp_path)
    assert ryla(["init", "--app"], cwd=folder, env=env).returncode == 0
    app_file = folder / "comfyui_app.py"
    app_file.write_text(
        app_file.read_text().replace("cpu=1.0,\n    memory=1024,", "cpu=2.0,\n    memory=2048,", 1)
    )
    proc = ryla(["deploy", "comfyui_app.py"], cwd=folder, env=env)
    assert proc.returncode == 0, proc.stderr
    record = fake.deployed[defaults.DEFAULT_APP_NAME]
    checker = function_definition(record["functions"]["check_workflows"])
    assert checker.resources.milli_cpu == 2000 and checker.resources.memory_mb == 2048
    worker = function_definition(record["functions"]["ComfyWorker.*"])
    assert worker.module_name == "comfyui_app"  # the user's file, not the packaged module


def test_ryla_warm_changes_the_deployed_autoscaler_and_prints_the_cost(
    fake: FakeModalControl, tmp_path: Path, folder: Path
) -> None:
    write_toml(folder, 'app = "warm-test"\ngpu = "H200"')
    env = cli_env(fake, tmp_path)
    assert ryla(["deploy"], cwd=folder, env=env).returncode == 0
    worker_id = fake.function_id("warm-test", "ComfyWorker.*")

    on = ryla(["warm", "--min", "2", "--for", "30m", "--json"], cwd=folder, env=env)
    assert on.returncode == 0, on.stderr
    answer = json.loads(on.stdout)
    (request,) = fake.calls_named("FunctionUpdateSchedulingParams")
    assert request.function_id == worker_id
    assert request.settings.min_containers == 2
    assert not request.settings.HasField("buffer_containers")  # left as it was
    assert answer["containers_kept_warm"] == 2
    expected = prices.GPU_USD_PER_SECOND["H200"] * 3600 * 2
    assert answer["usd_per_hour"] == pytest.approx(expected)
    assert answer["price_source"] == prices.SOURCE and answer["price_as_of"] == prices.AS_OF
    assert answer["turn_off_at"] and answer["turn_off_command"].startswith("ryla warm --off")

    text = ryla(["warm", "--min", "1", "--for", "1h"], cwd=folder, env=env)
    assert text.returncode == 0, text.stderr
    assert f"${prices.GPU_USD_PER_SECOND['H200'] * 3600:.2f}/hour" in text.stdout
    assert "nothing turns this off by itself" in text.stderr

    off = ryla(["warm", "--off"], cwd=folder, env=env)
    assert off.returncode == 0, off.stderr
    assert "nothing kept warm" in off.stdout
    assert fake.autoscaler[worker_id].min_containers == 0
    assert fake.autoscaler[worker_id].buffer_containers == 0

    bad = ryla(["warm"], cwd=folder, env=env)
    assert bad.returncode == 2 and "--min" in bad.stderr
    missing = ryla(["warm", "--min", "1", "--app", "nope"], cwd=folder, env=env)
    assert missing.returncode == 1 and "nope" in missing.stderr


def test_hourly_cost_table() -> None:
    assert prices.hourly_cost("H100:2", 1).usd_per_hour == pytest.approx(0.001097 * 3600 * 2)
    assert prices.hourly_cost("L40S", 0).describe().startswith("nothing kept warm")
    assert "as of" in prices.hourly_cost("L40S", 1).describe()
    assert prices.hourly_cost("XYZ", 1).usd_per_hour is None


# --- custom nodes that fail to import ------------------------------------------------------------


def test_object_info_step_fails_the_build_naming_a_node_that_failed_to_import(
    tmp_path: Path,
) -> None:
    out = tmp_path / "object_info.json"
    proc = subprocess.run(
        [
            *[sys.executable, str(SNAPSHOT), "--out", str(out), "--timeout", "30", "--"],
            *fake_comfyui_command(
                "--import-failed",
                "ComfyUI-Broken=No module named 'cv3'",
                "--import-failed",
                "OtherNode=boom",
            ),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "custom nodes failed to import" in proc.stderr
    assert "ComfyUI-Broken: No module named 'cv3'" in proc.stderr
    assert "OtherNode: boom" in proc.stderr
    assert not out.exists()


def test_custom_node_commands_run_requirements_and_install_py() -> None:
    from ryla_modal.cloud.image import custom_node_commands
    from ryla_modal.cloud.settings import CustomNode

    commands = custom_node_commands([CustomNode("https://github.com/o/Node.git", "b" * 40)])
    assert any("requirements.txt" in c and "pip install -r" in c for c in commands)
    assert any("install.py" in c and "python install.py" in c for c in commands)


# --- `ryla deploy --check` -----------------------------------------------------------------------


def test_deploy_check_validates_against_the_baked_object_info_and_the_volume(
    fake: FakeModalControl, tmp_path: Path, folder: Path
) -> None:
    from ryla_modal.cloud.checks import check_workflows

    info = object_info_file(tmp_path)
    # A model loader as ComfyUI lists one: its file list is empty in the image (the files are
    # on the volume, which the build does not see).
    baked = json.loads(info.read_text())
    baked["ModelImage"] = {
        "input": {"required": {"ckpt_name": [[]]}},
        "output": ["IMAGE"],
        "output_node": False,
        "name": "ModelImage",
    }
    info.write_text(json.dumps(baked))
    models = tmp_path / "volume"
    (models / "checkpoints").mkdir(parents=True)
    (models / "checkpoints" / "present.ckpt").write_bytes(b"x")
    fake.function_handlers[("ryla-comfyui", "check_workflows")] = lambda wfs: check_workflows(
        wfs, info, models
    )

    def workflow(ckpt: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "1": {"class_type": "ModelImage", "inputs": {"ckpt_name": ckpt}},
            "2": {
                "class_type": "SaveImage",
                "inputs": {"images": ["1", 0], "filename_prefix": "c"},
            },
            **(extra or {}),
        }

    (folder / "good.json").write_text(json.dumps(workflow("present.ckpt")))
    bad = workflow("missing.ckpt", {"3": {"class_type": "NoSuchNode", "inputs": {}}})
    (folder / "bad.json").write_text(json.dumps(bad))
    env = cli_env(fake, tmp_path)

    good = ryla(["deploy", "--check", "good.json", "--json"], cwd=folder, env=env)
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["checks"][0]["ok"] is True

    failed = ryla(["deploy", "--check", "good.json", "--check", "bad.json"], cwd=folder, env=env)
    assert failed.returncode == 3, failed.stderr
    error = failed.stderr.split("error:", 1)[1]
    assert "bad.json: missing nodes NoSuchNode and missing models missing.ckpt" in error, error
    assert "good.json" not in error

    unreadable = ryla(["deploy", "--check", "nothing.json"], cwd=folder, env=env)
    assert unreadable.returncode == 3 and "nothing.json" in unreadable.stderr


# --- `ryla models` -------------------------------------------------------------------------------

BODY = b"model bytes " * 5000
BODY_SHA = hashlib.sha256(BODY).hexdigest()


class _Files(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[dict[str, str | None]]] = []

    def do_GET(self) -> None:
        _Files.seen.append(
            {"path": self.path, "auth": self.headers.get("authorization"),
             "range": self.headers.get("range")}
        )  # fmt: skip
        if self.path.startswith("/redirect"):
            self.send_response(302)
            port = int(self.server.server_address[1])  # type: ignore[index]
            self.send_header("location", f"http://127.0.0.1:{port}/m.bin")
            self.end_headers()
            return
        if self.path != "/m.bin":
            self.send_response(404)
            self.end_headers()
            return
        start = 0
        if self.headers.get("range"):
            start = int(self.headers["range"].split("=")[1].rstrip("-"))
            self.send_response(206)
        else:
            self.send_response(200)
        self.send_header("content-length", str(len(BODY) - start))
        self.end_headers()
        self.wfile.write(BODY[start:])

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def files() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    _Files.seen = []
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_models_add_downloads_through_the_apps_function(
    fake: FakeModalControl, tmp_path: Path, folder: Path, files: str
) -> None:
    volume = tmp_path / "volume"
    fake.function_handlers[("ryla-comfyui", "download_models")] = lambda items, on_clash="skip": (
        download_all(items, volume, token="hf_x", on_clash=on_clash)
    )
    env = cli_env(fake, tmp_path)
    assert ryla(["deploy"], cwd=folder, env=env).returncode == 0

    added = ryla(
        ["models", "add", f"{files}/m.bin", "--to", "checkpoints", "--sha256", BODY_SHA],
        cwd=folder,
        env=env,
    )
    assert added.returncode == 0, added.stderr
    assert "checkpoints/m.bin" in added.stdout and "added" in added.stdout
    assert (volume / "checkpoints" / "m.bin").read_bytes() == BODY
    assert all(seen["auth"] is None for seen in _Files.seen)  # the HF token stays home

    same = ryla(["models", "add", f"{files}/m.bin", "--to", "checkpoints"], cwd=folder, env=env)
    assert same.returncode == 5 and "already holds a file" in same.stderr

    wrong = ryla(
        ["models", "add", f"{files}/m.bin", "--to", "loras", "--sha256", "0" * 64],
        cwd=folder,
        env=env,
    )
    assert wrong.returncode == 5 and "sha256 is" in wrong.stderr
    assert list((volume / "loras").iterdir()) == []  # nothing half-written

    calls_before = len(fake.calls)
    for args, words in [
        (["http://example.com/m.bin", "--to", "checkpoints"], "https"),
        ([f"{files}/m.bin", "--to", "../etc"], "folder '../etc'"),
        (["hf://just-a-repo", "--to", "loras"], "hf://OWNER/REPO/FILE"),
        ([f"{files}/m.bin", "--to", "loras", "--sha256", "xyz"], "not 64 hex"),
    ]:
        proc = ryla(["models", "add", *args], cwd=folder, env=env)
        assert proc.returncode == 5, (args, proc.stderr)
        assert words in proc.stderr, (args, proc.stderr)
    assert len(fake.calls) == calls_before  # refused before modal was called


def test_downloads_resume_and_send_the_token_to_hugging_face_hosts_only(
    files: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ryla_modal.cloud import models as models_mod

    # "localhost" plays a Hugging Face host that redirects to a CDN on another host.
    monkeypatch.setattr(models_mod, "_HF_HOSTS", ("localhost",))
    port = files.rsplit(":", 1)[1]
    part = tmp_path / "loras" / ".m.bin.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(BODY[:1000])  # an earlier transfer was cut here
    items = [{"folder": "loras", "url": f"http://localhost:{port}/redirect", "name": "m.bin"}]

    download_all(items, tmp_path, token="hf_secret")

    assert (tmp_path / "loras" / "m.bin").read_bytes() == BODY
    assert not part.exists()
    first, second = _Files.seen
    assert first["path"] == "/redirect" and first["auth"] == "Bearer hf_secret"
    assert second["path"] == "/m.bin" and second["auth"] is None  # not to the CDN host
    assert second["range"] == "bytes=1000-"


def test_models_list_goes_through_the_gateway(tmp_path: Path, folder: Path) -> None:
    from tests.gateway_fixtures import TOKEN, app_served

    files = {"checkpoints": ["sd15.safetensors"], "loras": ["a/b.safetensors"]}
    with app_served("http://127.0.0.1:9", tmp_path / "w", token=TOKEN, extra_models=files) as url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RYLA_")}
        env.update(RYLA_ENDPOINT=url, RYLA_TOKEN=TOKEN, RYLA_CONFIG_DIR=str(tmp_path))
        listed = ryla(["models", "list"], cwd=folder, env=env)
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.split() == ["checkpoints/sd15.safetensors", "loras/a/b.safetensors"]
        as_json = ryla(["models", "list", "--json"], cwd=folder, env=env)
        assert json.loads(as_json.stdout) == {"folders": files}
        refused = ryla(["models", "list"], cwd=folder, env={**env, "RYLA_TOKEN": "wrong"})
        assert refused.returncode == 5


# --- `ryla doctor` -------------------------------------------------------------------------------


def test_doctor_names_failing_checks_with_fixes_then_passes(
    fake: FakeModalControl, tmp_path: Path, folder: Path
) -> None:
    from ryla_modal.gateway.object_info import FileObjectInfo
    from tests.gateway_fixtures import TOKEN, app_served

    info = object_info_file(tmp_path)
    write_toml(folder, 'app = "doc-test"\nsecrets = ["hf-secret"]')
    (folder / "wf.json").write_text(json.dumps(WORKFLOW))
    (folder / "broken.json").write_text(
        json.dumps({**WORKFLOW, "3": {"class_type": "Nope", "inputs": {}}})
    )
    fake.missing_secrets.add("hf-secret")
    fake.missing_volumes.add(defaults.MODAL_MODELS_VOLUME)
    objects = FileObjectInfo(info)
    with app_served("http://127.0.0.1:9", tmp_path / "w", token=TOKEN, object_info=objects) as url:
        env = cli_env(fake, tmp_path, RYLA_ENDPOINT=url, RYLA_TOKEN="wrong-token")
        failing = ryla(["doctor", "wf.json", "--json"], cwd=folder, env=env)
        assert failing.returncode == 1, failing.stderr
        report = {c["name"]: c for c in json.loads(failing.stdout)["checks"]}
        assert list(report) == [
            "modal", "token", "settings", "secrets and volumes", "app deployed",
            "endpoint", "proxy auth", "logs", "workflow",
        ]  # fmt: skip
        assert report["modal"]["ok"] and report["token"]["ok"] and report["settings"]["ok"]
        assert not report["secrets and volumes"]["ok"]
        assert "hf-secret" in report["secrets and volumes"]["detail"]
        assert "modal secret create hf-secret" in report["secrets and volumes"]["fix"]
        assert not report["app deployed"]["ok"] and "ryla deploy" in report["app deployed"]["fix"]
        assert report["endpoint"]["ok"]  # it answers, but refuses our token
        assert not report["proxy auth"]["ok"] and "RYLA_MODAL_KEY" in report["proxy auth"]["fix"]
        assert not report["logs"]["ok"]
        assert all(c["fix"] for c in report.values() if not c["ok"])

        text = ryla(["doctor"], cwd=folder, env=env)
        assert text.returncode == 1
        assert (
            "FAIL app deployed: doc-test" in text.stdout and "fix: run `ryla deploy`" in text.stdout
        )

        # Fix each: create the secret, deploy (creates the volumes), use the right token.
        fake.missing_secrets.clear()
        assert ryla(["deploy"], cwd=folder, env=env).returncode == 0
        env["RYLA_TOKEN"] = TOKEN
        passing = ryla(["doctor", "wf.json", "--json"], cwd=folder, env=env)
        assert passing.returncode == 0, passing.stdout
        report = {c["name"]: c for c in json.loads(passing.stdout)["checks"]}
        assert all(c["ok"] for c in report.values()), report
        assert report["app deployed"]["detail"] == "doc-test v1"
        assert report["modal"]["detail"].startswith("modal 1.6")

        broken = ryla(["doctor", "broken.json"], cwd=folder, env=env)
        assert broken.returncode == 1
        assert "FAIL workflow: broken.json" in broken.stdout and "Nope" in broken.stdout
