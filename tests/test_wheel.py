"""The wheel alone is enough: installed into a fresh venv, run from an empty folder,
`ryla init` and `ryla deploy` work against the control-plane stand-in (no checkout needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.fakes.modal_control import FakeModalControl, function_definition

ROOT = Path(__file__).resolve().parent.parent


def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, **kwargs)  # type: ignore[call-overload]
    assert proc.returncode == 0, f"{argv}\n{proc.stdout}\n{proc.stderr}"
    return proc  # type: ignore[no-any-return]


@pytest.mark.timeout(400)
def test_the_wheel_in_a_fresh_venv_inits_and_deploys_from_an_empty_folder(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps",
         "-q", "-w", str(dist)],
        cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = dist.glob("ryla_modal-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "ryla_modal/cloud/app.py" in names
    assert "ryla_modal/cloud/templates/ryla.toml" in names

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
         str(wheel)])  # fmt: skip
    # The dependencies come from this environment (no network); ryla_modal itself only from
    # the wheel: a path added by a .pth line does not run the editable install's own .pth.
    site = run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
    ).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    empty = tmp_path / "empty"
    empty.mkdir()
    where = run([str(python), "-c", "import ryla_modal; print(ryla_modal.__file__)"], cwd=empty)
    assert where.stdout.strip().startswith(str(venv)), where.stdout

    with FakeModalControl() as fake:
        env = {k: v for k, v in fake.env(tmp_path / "home").items() if not k.startswith("RYLA_")}
        env.pop("PYTHONPATH", None)
        env["RYLA_CONFIG_DIR"] = str(tmp_path / "config")
        ryla = str(venv / "bin" / "ryla")
        run([ryla, "init"], cwd=empty, env=env)
        toml = empty / "ryla.toml"
        toml.write_text(toml.read_text().replace("min_containers = 0", "min_containers = 1"))
        deployed = run([ryla, "deploy", "--json"], cwd=empty, env=env)
        assert fake.errors == []

    out = json.loads(deployed.stdout)
    record = fake.deployed["ryla-comfyui"]
    assert out["endpoint"] == record["web_urls"]["gateway"]
    worker = function_definition(record["functions"]["ComfyWorker.*"])
    assert worker.module_name == "ryla_modal.cloud.app"
    assert worker.autoscaler_settings.min_containers == 1
    assert sorted(os.listdir(empty)) == ["ryla.toml"]  # nothing else was written here
