"""Turning the client's typed `JobEvent`s into something people (stderr) or scripts (stdout) read.

Three renderers with one interface (``event(label, JobEvent)``, ``close()``):
- `LiveRenderer`: a rich progress display on a terminal — the phase with elapsed time, node i/n
  and its type, a sampler step bar — one row per job;
- `PlainRenderer`: one stderr line per change (and per retry), for logs and CI (no terminal);
- `JsonRenderer`: NDJSON events on stdout for scripts.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import TYPE_CHECKING, Any, Protocol

from ryla_modal.cli._output import note, print_json

if TYPE_CHECKING:  # pragma: no cover
    from ryla_modal.client import JobEvent
    from ryla_modal.job import Job

COLD_START_NOTE = "waiting for a GPU container (cold starts take 2-5 min)"


def describe(job: Job, kind: str = "update") -> str:
    """One short phrase for where a job is.

    "done" is said once, by the ``done`` event after the outputs are saved; the update that
    reports success says the job finished on the server.
    """
    p = job.progress
    if kind == "done":
        return f"done: {len(job.outputs)} output(s)"
    if kind == "downloading":
        return "downloading outputs"
    if job.status == "succeeded":
        return f"finished on the server: {len(job.outputs)} output(s)"
    if job.status == "failed":
        return f"failed: {job.error.message if job.error else 'unknown error'}"
    if job.status == "cancelled":
        return "cancelled"
    if job.status == "queued" or job.phase == "waiting_for_gpu":
        return COLD_START_NOTE
    if job.phase == "starting_comfyui":
        return "starting ComfyUI"
    if job.phase == "uploading_inputs":
        return "uploading inputs"
    if job.phase == "collecting_outputs":
        return "collecting outputs"
    if p is not None and p.node_id is not None:
        text = f"node {min(p.nodes_done + 1, p.nodes_total or 1)}/{p.nodes_total or '?'}"
        if p.node_type:
            text += f" {p.node_type}"
        if p.step is not None and p.steps:
            text += f" · step {p.step}/{p.steps}"
        return text
    return "running"


class Renderer(Protocol):
    def event(self, label: str, ev: JobEvent) -> None: ...
    def close(self) -> None: ...


def retry_json(label: str, ev: JobEvent) -> dict[str, Any]:
    """A retry as NDJSON: what is retried, after which attempt, the delay and the cause."""
    r = ev.retry
    assert r is not None
    return {
        "type": "retry",
        "label": label,
        "job_id": ev.job_id,
        "what": r.what,
        "attempt": r.attempt,
        "max_attempts": r.max_attempts,
        "delay_s": round(r.delay_s, 3),
        "cause": r.cause,
        "elapsed_s": round(ev.elapsed_s, 3),
    }


def event_json(label: str, ev: JobEvent) -> dict[str, Any]:
    """The NDJSON shape of one event (documented in `ryla generate --help`)."""
    job = ev.job
    if ev.retry is not None or job is None:
        return retry_json(label, ev)
    data: dict[str, Any] = {
        "type": ev.kind,
        "label": label,
        "job_id": job.job_id,
        "status": job.status,
        "phase": job.phase,
        "elapsed_s": round(ev.elapsed_s, 3),
    }
    if job.progress is not None:
        data["progress"] = dataclasses.asdict(job.progress)
    if ev.output is not None:
        data["output"] = {
            "index": ev.output.index,
            "path": str(ev.output.path),
            "size": ev.output.size,
            "sha256": ev.output.sha256,
        }
    return data


class JsonRenderer:
    def event(self, label: str, ev: JobEvent) -> None:
        print_json(event_json(label, ev))

    def close(self) -> None:
        return None


class PlainRenderer:
    """A line on stderr whenever a job's phrase changes; quiet otherwise."""

    def __init__(self) -> None:
        self._last: dict[str, str] = {}

    def event(self, label: str, ev: JobEvent) -> None:
        if ev.retry is not None or ev.job is None:
            note(f"[{label}] {_clock(ev.elapsed_s)} {ev.retry}")
            return
        if ev.kind == "saved" and ev.output is not None:
            note(f"[{label}] saved {ev.output.path}")
            return
        if ev.kind == "submitted":
            text = f"submitted job {ev.job.job_id}"
        else:
            text = describe(ev.job, ev.kind)
        if self._last.get(label) != text:
            self._last[label] = text
            note(f"[{label}] {_clock(ev.elapsed_s)} {text}")

    def close(self) -> None:
        return None


class LiveRenderer:
    """rich progress rows on stderr; only used when stderr is a terminal and --json is off."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.fields[label]}", markup=False),
            TextColumn("{task.description}", markup=False),
            BarColumn(bar_width=24),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._tasks: dict[str, Any] = {}
        self._started = time.monotonic()
        self._progress.start()

    def event(self, label: str, ev: JobEvent) -> None:
        task = self._tasks.get(label)
        if task is None:
            task = self._progress.add_task("submitting", total=None, label=label)
            self._tasks[label] = task
        job = ev.job
        if ev.retry is not None or job is None:
            self._progress.console.print(f"{label} {ev.retry}", markup=False, highlight=False)
            return
        p = job.progress
        if ev.kind == "saved" and ev.output is not None:
            self._progress.console.print(f"saved {ev.output.path}", markup=False, highlight=False)
            return
        description = describe(job, ev.kind)
        if p is not None and p.step is not None and p.steps:
            self._progress.update(task, description=description, total=p.steps, completed=p.step)
        elif job.status in ("succeeded", "failed", "cancelled"):
            self._progress.update(task, description=description, total=1, completed=1)
        else:
            self._progress.update(task, description=description, total=None)

    def close(self) -> None:
        self._progress.stop()


def make_renderer(*, as_json: bool) -> Renderer:
    if as_json:
        return JsonRenderer()
    if sys.stderr.isatty():
        return LiveRenderer()
    return PlainRenderer()


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes:d}:{secs:02d}"
