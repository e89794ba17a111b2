"""Start ComfyUI once, save its ``GET /object_info`` to a file, stop it.

Runs during the Modal image build (``cloud.image.object_info_command``), before ``ryla_modal`` is
in the image, so it uses the standard library only.  The gateway reads the saved file and refuses
a broken workflow in milliseconds instead of after a GPU cold start.  Any failure exits 1 with the
tail of ComfyUI's log, which fails the image build: an image without the file is never deployed.

A custom node that fails to import is such a failure too: ComfyUI only logs it ("Cannot import
… module for custom nodes: ERROR", then "(IMPORT FAILED): PATH" in its import-times list) and
serves without the node, so the build checks the log and names each node and its error.

    python object_info_snapshot.py --out /opt/ryla/object_info.json --cwd ComfyUI \\
        -- python main.py --cpu
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import IO

_POLL_S = 0.5
_PROBE_TIMEOUT_S = 2.0
_FETCH_TIMEOUT_S = 120.0
_STOP_GRACE_S = 10.0
_LOG_TAIL_BYTES = 8192
_LOG_SCAN_BYTES = 4 * 1024 * 1024  # import lines come first; a huge log is cut, not read whole
_IMPORT_FAILED_RE = re.compile(r"\(IMPORT FAILED\):\s*(\S.*?)\s*$", re.MULTILINE)
_CANNOT_IMPORT_RE = re.compile(
    r"Cannot import (\S.*?) module for custom nodes: (.*?)\s*$", re.MULTILINE
)


def import_failures(log_text: str) -> list[tuple[str, str]]:
    """``[(node folder name, its error)]`` from ComfyUI's start-up log (ComfyUI 0.3.x wording)."""
    errors = {path: error for path, error in _CANNOT_IMPORT_RE.findall(log_text)}
    out: list[tuple[str, str]] = []
    for path in _IMPORT_FAILED_RE.findall(log_text):
        name = os.path.basename(path.rstrip("/")) or path
        out.append((name, errors.get(path, "see the log above")))
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float) -> bytes:
    # Only ever our own loopback ComfyUI (http://127.0.0.1:PORT).
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310
        return bytes(resp.read())


def snapshot(
    command: Sequence[str], out: str, *, cwd: str | None = None, timeout: float = 600.0
) -> int:
    """Returns the number of node classes saved; raises RuntimeError with the log tail."""
    with tempfile.TemporaryFile() as log:
        return _snapshot(command, out, cwd=cwd, timeout=timeout, log=log)


def _snapshot(
    command: Sequence[str], out: str, *, cwd: str | None, timeout: float, log: IO[bytes]
) -> int:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [*command, "--listen", "127.0.0.1", "--port", str(port)],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with status {proc.returncode} before ready")
            if time.monotonic() > deadline:
                raise RuntimeError(f"ComfyUI did not answer /system_stats within {timeout:g} s")
            try:
                _get(f"{base}/system_stats", _PROBE_TIMEOUT_S)
                break
            except (urllib.error.URLError, OSError):
                time.sleep(_POLL_S)
        body = _get(f"{base}/object_info", _FETCH_TIMEOUT_S)
        info = json.loads(body)
        if not isinstance(info, dict) or not info:
            raise RuntimeError("GET /object_info did not return a non-empty JSON object")
        failed = import_failures(_head(log))
        if failed:
            listed = "; ".join(f"{name}: {error}" for name, error in failed)
            raise RuntimeError(f"custom nodes failed to import: {listed}")
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        tmp = f"{out}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(body)
        os.replace(tmp, out)
        return len(info)
    except (RuntimeError, OSError, ValueError) as exc:
        raise RuntimeError(f"{exc}\n--- ComfyUI log (tail) ---\n{_tail(log)}") from exc
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, _STOP_GRACE_S), (signal.SIGKILL, _STOP_GRACE_S)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait)
            if sig == signal.SIGTERM:
                # The leader is gone; its children (custom-node helpers) go with the group.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                return


def _head(fh: IO[bytes]) -> str:
    fh.flush()
    fh.seek(0)
    return bytes(fh.read(_LOG_SCAN_BYTES)).decode("utf-8", "replace")


def _tail(fh: IO[bytes]) -> str:
    fh.seek(0, os.SEEK_END)
    size = fh.tell()
    fh.seek(max(0, size - _LOG_TAIL_BYTES))
    return bytes(fh.read()).decode("utf-8", "replace")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", required=True, help="where to write the JSON")
    parser.add_argument("--cwd", default=None, help="run ComfyUI here (its checkout)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for ready")
    parser.add_argument("command", nargs="+", help="ComfyUI's command, after --")
    args = parser.parse_args(argv)
    try:
        count = snapshot(args.command, args.out, cwd=args.cwd, timeout=args.timeout)
    except RuntimeError as exc:
        print(f"object_info snapshot failed: {exc}", file=sys.stderr)
        return 1
    print(f"saved /object_info ({count} node classes) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
