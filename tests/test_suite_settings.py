"""The suite's own settings: in CI, hypothesis runs the same derandomized examples every time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PROBE = (
    "import tests.conftest as c; from hypothesis import settings; d = settings.default;"
    " print(c.HYPOTHESIS_PROFILE, d.derandomize, d.deadline, d.database)"
)


def _profile(**env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("CI", "HYPOTHESIS_PROFILE")}
    r = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=REPO,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return r.stdout.split()


@pytest.mark.parametrize("ci", ["true", "1"])
def test_ci_runs_hypothesis_derandomized_without_deadline(ci: str) -> None:
    assert _profile(CI=ci) == ["ci", "True", "None", "None"]


def test_outside_ci_hypothesis_keeps_exploring() -> None:
    name, derandomize, *_ = _profile()
    assert (name, derandomize) == ("default", "False")
    assert _profile(HYPOTHESIS_PROFILE="ci")[:2] == ["ci", "True"]


def test_the_ci_entry_point_sets_ci() -> None:
    assert 'CI="${CI:-true}"' in (REPO / ".ci" / "run").read_text()
