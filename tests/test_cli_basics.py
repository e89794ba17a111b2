"""The CLI's front door: version, help, unknown commands, one meaning per flag, a fast start."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

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


def test_help_lists_usage_and_every_command_in_panels() -> None:
    from ryla_modal.cli import COMMANDS

    proc = run_ryla("--help")
    assert proc.returncode == 0
    assert "Usage" in proc.stdout
    for name, entry in COMMANDS.items():
        assert name in proc.stdout and entry.panel in proc.stdout
    assert "--install-completion" in proc.stdout  # typer's shell completion, on the root


@pytest.mark.parametrize("argv", [[], ["jobs"], ["models"]])
def test_a_bare_group_prints_its_help_on_stdout_and_exits_0(argv: list[str]) -> None:
    proc = run_ryla(*argv)
    assert proc.returncode == 0, proc.stderr
    assert "Usage: ryla" in proc.stdout
    assert proc.stderr == ""


def test_unknown_command_is_usage_error() -> None:
    proc = run_ryla("no-such-command")
    assert proc.returncode == 2
    assert "no-such-command" in proc.stderr


@pytest.mark.parametrize(("typo", "meant"), [("genrate", "generate"), ("jbos", "jobs")])
def test_a_mistyped_command_gets_did_you_mean(typo: str, meant: str) -> None:
    proc = run_ryla(typo, "x")
    assert proc.returncode == 2
    assert f"Did you mean '{meant}'?" in proc.stderr


def test_mistyped_subcommand_gets_did_you_mean() -> None:
    proc = run_ryla("jobs", "lsit")
    assert proc.returncode == 2
    assert "Did you mean 'list'?" in proc.stderr


def test_shell_completion_completes_commands_lazily() -> None:
    env = {**os.environ, "_RYLA_COMPLETE": "complete_bash", "COMP_WORDS": "ryla jobs l"}
    env["COMP_CWORD"] = "2"
    argv = [sys.executable, "-m", "ryla_modal.cli"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["list", "logs"]


def test_help_pages_use_the_four_option_panels() -> None:
    proc = run_ryla("generate", "--help")
    assert proc.returncode == 0
    for panel in ("Workflow", "Deadlines", "Output", "Connection"):
        assert f"─ {panel} ─" in proc.stdout, panel
    assert "Examples:" in proc.stdout


def test_numbers_are_checked_with_one_wording() -> None:
    proc = run_ryla("generate", "wf.json", "--count", "0")
    assert proc.returncode == 2
    assert "0 is not in the range 1<=x<=1000" in proc.stderr
    proc = run_ryla("logs", "--timeout", "soon")
    assert proc.returncode == 2
    assert "'soon' is not a valid number" in proc.stderr


# --- one meaning per flag -------------------------------------------------------------------------

#: the commands that talk to the network: each takes --timeout, the whole command's deadline
NETWORK_COMMANDS = [
    ("generate",),
    ("health",),
    ("validate",),
    ("logs",),
    ("apps",),
    ("stop",),
    ("deploy",),
    ("jobs", "list"),
    ("jobs", "show"),
    ("jobs", "status"),
    ("jobs", "wait"),
    ("jobs", "cancel"),
    ("jobs", "logs"),
]


def _all_commands() -> dict[tuple[str, ...], Any]:
    from typer._click import Context

    from ryla_modal.cli import app

    root = app()
    found: dict[tuple[str, ...], Any] = {}
    ctx = Context(root)
    for name in root.list_commands(ctx):
        command = root.get_command(ctx, name)
        subs = getattr(command, "commands", {})
        if subs:
            for sub_name, sub in subs.items():
                found[(name, sub_name)] = sub
        else:
            found[(name,)] = command
    return found


def test_every_network_command_has_timeout_as_its_whole_deadline() -> None:
    commands = _all_commands()
    for path in NETWORK_COMMANDS:
        options = {opt: p for p in commands[path].params for opt in getattr(p, "opts", [])}
        assert "--timeout" in options, path
        assert "-t" in options["--timeout"].opts, path
        assert "whole command" in (options["--timeout"].help or ""), path
    gen = {o for p in commands[("generate",)].params for o in getattr(p, "opts", [])}
    assert {"--cold-start-timeout", "--execution-timeout"} <= gen


def test_a_short_flag_means_one_thing_across_commands() -> None:
    meaning: dict[str, set[str]] = {}
    for command in _all_commands().values():
        for param in command.params:
            opts = list(getattr(param, "opts", [])) + list(getattr(param, "secondary_opts", []))
            longs = [o for o in opts if o.startswith("--")]
            for short in (o for o in opts if o.startswith("-") and not o.startswith("--")):
                meaning.setdefault(short, set()).update(longs[:1])
    assert {k: v for k, v in meaning.items() if len(v) != 1} == {}
    assert meaning["-n"] == {"--count"} and meaning["-t"] == {"--timeout"}


def test_help_imports_nothing_heavy() -> None:
    code = (
        "import sys\n"
        "from ryla_modal.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('modal', 'fastapi', 'uvicorn', 'websockets', 'asyncio', 'pydantic')"
        " if m in sys.modules]\n"
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


def test_type_checkers_see_every_export_re_exported() -> None:
    """The TYPE_CHECKING block imports each lazy export as ``X as X`` from the module that
    defines it, so ``from ryla_modal import RylaClient`` type-checks under mypy --strict."""
    import ast
    from pathlib import Path

    import ryla_modal

    source = Path(ryla_modal.__file__).read_text(encoding="utf-8")
    guarded = next(
        node
        for node in ast.parse(source).body
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"
    )
    seen: dict[str, str] = {}
    for stmt in guarded.body:
        assert isinstance(stmt, ast.ImportFrom) and stmt.module, ast.dump(stmt)
        for alias in stmt.names:
            assert alias.asname == alias.name, f"{alias.name} is not re-exported as itself"
            seen[alias.name] = stmt.module
    assert seen == ryla_modal._EXPORTS


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
    """A one-job `ryla generate` is mostly start-up: keep pydantic (typer's per-parameter
    adapters included), asyncio, the server side and the other commands off its import path
    (bench/overhead.py has the timing)."""
    code = (
        "import sys\n"
        "from ryla_modal.cli import main\n"
        "rc = main(['generate', '--help'])\n"
        "import ryla_modal.client, ryla_modal.cli._render, ryla_modal.workflow\n"
        "from ryla_modal import RylaClient\n"
        "unwanted = ('pydantic', 'typer._adapters', 'asyncio', 'fastapi', 'uvicorn', 'modal',\n"
        "            'websockets',\n"
        "            'ryla_modal.gateway.schemas', 'ryla_modal.cli.serve_cmd',\n"
        "            'ryla_modal.cli.modal_cmds', 'ryla_modal.cli.jobs_cmd')\n"
        "print('RC=%s LOADED=%s' % (rc, ','.join(m for m in unwanted if m in sys.modules)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "RC=0 LOADED="
