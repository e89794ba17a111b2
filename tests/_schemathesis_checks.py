"""A schemathesis check for tests/test_openapi_schemathesis.py (loaded with SCHEMATHESIS_HOOKS).

``positive_data_acceptance`` with allowances for what no schema can say.  A workflow is a graph
whose node types, links and values only ComfyUI's ``/object_info`` can judge, so a workflow
valid by the published schema may still get a 422 that says the *graph* is wrong: ComfyUI's own
verdicts, a link to a node that is not there, links that loop, two input files under one name;
an input URL whose host resolves to a refused address, inline bytes that miss their sha256.
Likewise a page cursor the server did not issue (its alphabet is in the schema, its meaning is
not), and a webhook the server will not take (where its host resolves to, or a server without a
signing secret: ``invalid_webhook``).  Every other rejection of a schema-valid request
(``invalid_request``, another ``invalid_workflow``, a 400, a 413) means the document promises
more than the server takes, and fails.
"""

from __future__ import annotations

import re
from typing import Any

import schemathesis
from schemathesis.core.failures import Failure

#: ComfyUI's verdicts on a graph it would not run (unknown node types, values out of range...).
COMFYUI_VERDICTS = frozenset(
    {"prompt_outputs_failed_validation", "prompt_no_outputs", "invalid_prompt"}
)
#: Our own 422s that judge the graph rather than its shape.
GRAPH_VERDICTS = re.compile(r"links to node|links form a cycle|the name is used twice")
#: Not a rejection of the request's form: an unknown job, a job's state, backpressure.
STATE_ANSWERS = frozenset({404, 409, 429})
#: Inputs judged by content, not form: where a URL's host resolves (the address rules), and
#: whether inline bytes match the sha256 sent with them.
INPUT_VERDICTS = frozenset({"input_url_refused", "input_sha256_mismatch"})
#: A page cursor is opaque: the schema gives its alphabet, only the server knows its own.
ISSUED_ONLY = re.compile(r"before: not a page cursor of this server")


class SchemaValidRequestRejected(Failure):
    kind_title = "Schema-valid request rejected"


@schemathesis.check
def schema_valid_requests_are_accepted(ctx: Any, response: Any, case: Any) -> bool | None:
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return None
    status = response.status_code
    if status < 400 or status in STATE_ANSWERS:
        return None
    if status == 422:
        try:
            type_ = response.json()["error"]["type"]
        except (ValueError, KeyError, TypeError):
            type_ = None
        if type_ in COMFYUI_VERDICTS or type_ in INPUT_VERDICTS or type_ == "invalid_webhook":
            return None
        if type_ in ("invalid_workflow", "invalid_input") and GRAPH_VERDICTS.search(response.text):
            return None
        if type_ == "invalid_request" and ISSUED_ONLY.search(response.text):
            return None
    raise SchemaValidRequestRejected(
        operation=case.operation.label, message=f"answered {status}: {response.text[:300]}"
    )
