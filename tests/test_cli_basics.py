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
