"""A gateway that lies: output names that try to escape the output folder, a wrong sha256,
malformed job answers.

It speaks the job API's shapes (so the real client parses it) and nothing else: every job is
already ``succeeded`` with the outputs listed in ``OUTPUTS``.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

PAYLOAD = b"\x89PNG\r\n\x1a\n" + b"hostile-but-harmless" * 8

# (server filename, sha256 the server claims)
OUTPUTS: list[tuple[str, str]] = [
    ("../../x.png", hashlib.sha256(PAYLOAD).hexdigest()),
    ("/etc/passwd", hashlib.sha256(PAYLOAD).hexdigest()),
    ("a\x00b.png", hashlib.sha256(PAYLOAD).hexdigest()),
    ("n" * 500 + ".png", hashlib.sha256(PAYLOAD).hexdigest()),
]
WRONG_SHA = "0" * 64


def create_hostile_app(
    *, wrong_checksum: bool = False, job_fields: dict[str, Any] | None = None
) -> FastAPI:
    """``job_fields`` replaces fields of every job answer (a malformed answer)."""
    app = FastAPI()
    outputs = list(OUTPUTS)
    if wrong_checksum:
        outputs = [("good.png", WRONG_SHA)]

    def job(job_id: str) -> dict[str, Any]:
        now = time.time()
        answer = {
            "job_id": job_id,
            "status": "succeeded",
            "phase": "done",
            "created_at": now,
            "updated_at": now,
            "progress": None,
            "outputs": [
                {
                    "index": i,
                    "node_id": "../9" if i == 0 else "9",
                    "filename": name,
                    "kind": "images",
                    "mime": "image/png",
                    "size": len(PAYLOAD),
                    "sha256": sha,
                }
                for i, (name, sha) in enumerate(outputs)
            ],
            "error": None,
            "timings": {"executing": 0.1},
        }
        return {**answer, **(job_fields or {})}

    @app.post("/jobs")
    async def submit(request: Request) -> JSONResponse:
        body = await request.json()
        return JSONResponse(job(body["job_id"]), status_code=202)

    @app.get("/jobs/{job_id}")
    async def status(job_id: str) -> JSONResponse:
        return JSONResponse(job(job_id))

    @app.get("/jobs/{job_id}/outputs/{index}")
    async def output(job_id: str, index: int) -> Response:
        name, sha = outputs[index]
        return Response(
            PAYLOAD,
            media_type="image/png",
            headers={"x-sha256": sha, "content-disposition": f'attachment; filename="{name!r}"'},
        )

    return app
