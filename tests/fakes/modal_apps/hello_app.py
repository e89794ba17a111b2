"""A tiny Modal app deployed against the fake control plane, shaped like the real one.

It has what `modal_apps/comfyui_app.py` has, in miniature: a GPU class with enter/exit hooks and
`@modal.concurrent`, a plain GPU function, a web endpoint behind proxy auth, a Volume and a Secret.
Nothing here runs: `modal deploy` only declares it to the (fake) server.
"""

from __future__ import annotations

from typing import Any

import modal

app = modal.App("hello-app")
image = modal.Image.debian_slim(python_version="3.11").pip_install("fastapi[standard]")
models = modal.Volume.from_name("hello-models", create_if_missing=True)
hf_secret = modal.Secret.from_name("hello-hf-token")


@app.function(gpu="L4", image=image, volumes={"/models": models}, secrets=[hf_secret], timeout=600)
def download(name: str) -> str:
    return f"/models/{name}"


@app.cls(
    gpu="L4",
    image=image,
    volumes={"/models": models},
    secrets=[hf_secret],
    scaledown_window=300,
    timeout=1200,
)
@modal.concurrent(max_inputs=4)
class Worker:
    @modal.enter()
    def start(self) -> None:
        self.ready = True

    @modal.method()
    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        return {"job": job, "ready": self.ready}

    @modal.exit()
    def stop(self) -> None:
        self.ready = False


@app.function(image=image)
@modal.fastapi_endpoint(method="GET", requires_proxy_auth=True)
def web() -> dict[str, str]:
    return {"status": "ok"}
