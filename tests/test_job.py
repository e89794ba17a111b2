"""The client's plain job reader agrees with the gateway's pydantic contract.

The two are written separately (the client must not pay for pydantic at start-up), so these tests
are what keeps them one shape: the same fields, and a server-made job reads back unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import pytest
from pydantic import BaseModel

from ryla_modal import job as client_job
from ryla_modal.gateway import schemas


@pytest.mark.parametrize(
    ("plain", "model"),
    [
        (client_job.Job, schemas.Job),
        (client_job.Progress, schemas.Progress),
        (client_job.OutputInfo, schemas.OutputInfo),
        (client_job.JobError, schemas.JobError),
        (client_job.Timings, schemas.Timings),
        (client_job.WebhookStatus, schemas.WebhookStatus),
    ],
)
def test_same_fields_as_the_contract(plain: type, model: type[BaseModel]) -> None:
    fields = {f.name for f in dataclasses.fields(plain)} - {"extra"}
    assert fields == set(model.model_fields)


def full_record() -> schemas.JobRecord:
    return schemas.JobRecord(
        job_id="3f2c-a",
        status="failed",
        phase="executing",
        created_at=1_700_000_000.25,
        updated_at=1_700_000_009.5,
        progress=schemas.Progress(
            node_id="3", node_type="KSampler", nodes_done=2, nodes_total=7, step=4, steps=20
        ),
        outputs=[
            schemas.OutputInfo(
                index=0,
                node_id="9",
                filename="ComfyUI_00001_.png",
                kind="images",
                mime="image/png",
                size=123,
                sha256="ab" * 32,
                data_b64="aGk=",
            ),
            schemas.OutputInfo(
                index=1,
                node_id="12",
                filename="text_00001_.txt",
                kind="text",
                mime="text/plain",
                size=5,
                sha256="cd" * 32,
                text="hello",
            ),
        ],
        error=schemas.JobError.model_validate(
            {
                "type": "execution_error",
                "message": "CUDA out of memory",
                "node_id": "3",
                "node_type": "KSampler",
                "exception_type": "torch.OutOfMemoryError",
                "traceback_tail": ["line 1", "line 2"],
                "current_inputs": {"seed": [1]},  # a ComfyUI field the contract passes through
            }
        ),
        timings=schemas.Timings(queued=1.5, executing=7, total=9.25),
        call_id="fc-123",
        workflow_sha256="0" * 64,
        webhook=schemas.WebhookStatus(
            events=["failed", "succeeded"],
            state="pending",
            attempts=2,
            last_status=503,
            last_error="HTTP 503",
            next_attempt_at=1_700_000_020.0,
            due_since=1_700_000_009.5,
        ),
        webhook_url="https://example.com/hook?token=secret",
    )


def test_a_server_made_job_reads_back_unchanged() -> None:
    answer = json.loads(full_record().public().model_dump_json())
    job = client_job.Job.from_dict(answer)
    assert job.to_dict() == answer
    assert job.error is not None and job.error.extra == {"current_inputs": {"seed": [1]}}
    assert job.progress == client_job.Progress("3", "KSampler", 2, 7, 4, 20)
    assert job.webhook is not None and job.webhook.attempts == 2
    assert "token=secret" not in json.dumps(answer)  # the webhook URL stays private
    assert job.finished


def test_a_minimal_job_and_unknown_fields() -> None:
    job = client_job.Job.from_dict(
        {
            "job_id": "j1",
            "status": "queued",
            "created_at": 1,
            "updated_at": 2,
            "added_in_a_later_server": {"x": 1},
        }
    )
    assert (job.phase, job.progress, job.outputs, job.error, job.timings) == (
        None,
        None,
        [],
        None,
        client_job.Timings(),
    )
    assert isinstance(job.created_at, float)
    assert not job.finished


def _answer(**changes: Any) -> dict[str, Any]:
    answer: dict[str, Any] = json.loads(full_record().public().model_dump_json())
    answer.update(changes)
    return answer


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ([], "job: expected an object, got list"),
        (_answer(status="exploded"), "job.status: 'exploded' is not one of"),
        (_answer(phase="dreaming"), "job.phase: 'dreaming' is not one of"),
        (_answer(job_id=7), "job.job_id: expected a string, got 7"),
        (_answer(created_at=True), "job.created_at: expected an integer or a number, got True"),
        (_answer(outputs="many"), "job.outputs: expected a list"),
        (_answer(outputs=[{"index": 0}]), "job.outputs[0].node_id: missing"),
        (_answer(progress={"nodes_done": "two"}), "job.progress.nodes_done: expected an integer"),
        (_answer(error={"message": "x"}), "job.error.type: missing"),
        (
            _answer(error={"type": "t", "message": "m", "traceback_tail": [1]}),
            "job.error.traceback_tail: expected a list of strings",
        ),
        (
            _answer(timings={"executing": "slow"}),
            "job.timings.executing: expected an integer or a number",
        ),
    ],
)
def test_a_bad_answer_names_the_field(answer: Any, message: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        client_job.Job.from_dict(answer)
