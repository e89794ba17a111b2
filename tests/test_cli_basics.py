"""The CLI's front door: version, help, unknown commands, and a fast start."""

from __future__ import annotations

import subprocess
import sys

from ryla_modal import __version__


def run_ryla(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ryla_modal.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_version_prints_package_version() -> None:
    proc = run_ryla("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"ryla {__version__}"


def test_help_lists_usage() -> None:
    proc = run_ryla("--help")
    assert proc.returncode == 0
    assert "Usage" in proc.stdout


def test_unknown_command_is_usage_error() -> None:
    proc = run_ryla("no-such-command")
    assert proc.returncode == 2
    assert "no-such-command" in proc.stderr


def test_help_imports_nothing_heavy() -> None:
    code = (
        "import sys\n"
        "from ryla_modal.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('modal', 'fastapi', 'uvicorn', 'websockets') if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "HEAVY="


def test_public_all_is_complete_and_sorted() -> None:
    import ryla_modal

    assert list(ryla_modal.__all__) == sorted(ryla_modal.__all__)
    for name in ryla_modal.__all__:
        assert getattr(ryla_modal, name) is not None


def test_readme_imports_exist() -> None:
    """Every ``from ryla_modal import ...`` in README.md names a public export."""
    import re
    from pathlib import Path

    import ryla_modal

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    imported = [
        name.strip()
        for names in re.findall(r"^from ryla_modal import ([\w, ]+)$", readme, re.M)
        for name in names.split(",")
    ]
    assert "RylaClient" in imported
    for name in imported:
        assert name in ryla_modal.__all__, name
        assert getattr(ryla_modal, name) is not None


def test_generate_path_imports_only_what_it_uses() -> None:
    """A one-job `ryla generate` is mostly start-up: keep pydantic, typer, asyncio, the server
    side and the other commands off its import path (bench/overhead.py has the timing)."""
    code = (
        "import sys\n"
        "from ryla_modal.cli import main\n"
        "rc = main(['generate', '--help'])\n"
        "import ryla_modal.client, ryla_modal.cli._render, ryla_modal.workflow\n"
        "from ryla_modal import RylaClient\n"
        "unwanted = ('pydantic', 'typer', 'asyncio', 'fastapi', 'uvicorn', 'modal', 'websockets',\n"
        "            'ryla_modal.gateway.schemas', 'ryla_modal.cli.serve_cmd',\n"
        "            'ryla_modal.cli.modal_cmds', 'ryla_modal.cli.jobs_cmd')\n"
        "print('RC=%s LOADED=%s' % (rc, ','.join(m for m in unwanted if m in sys.modules)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "RC=0 LOADED="
