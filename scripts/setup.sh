#!/usr/bin/env bash
# The README's first command: install ryla into .venv and run the main job locally — a
# model-free workflow through the same job API (`ryla serve`) in front of the ComfyUI stand-in.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
.venv/bin/ryla --version
exec .venv/bin/python scripts/demo.py "$@"
