"""Shell steps and fixed paths of the ComfyUI image, as plain strings (no modal import).

``ryla_modal.cloud.app`` chains these into cached image layers; keeping them here makes them
testable without Modal (the object_info step is run against the ComfyUI stand-in in the tests).
Every value that reaches a shell is validated by ``cloud.settings`` and quoted with ``shlex``.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path

from ryla_modal.cloud.settings import CustomNode

COMFY_DIR = "/opt/ryla/ComfyUI"  # inside the image, beside the object_info snapshot
MODELS_DIR = "/models"  # the models Volume
OUTPUTS_DIR = "/outputs"  # the outputs Volume: the worker writes, the gateway serves
OBJECT_INFO_PATH = "/opt/ryla/object_info.json"
MODEL_PATHS_FILE = f"{COMFY_DIR}/extra_model_paths.yaml"

#: ComfyUI 0.3.64 model folders -> folders on the models volume that feed them (the legacy names
#: ``clip``/``unet``/``t2i_adapter`` too, so volumes laid out after older guides still work).
MODEL_FOLDERS: Mapping[str, tuple[str, ...]] = {
    "checkpoints": ("checkpoints",),
    "configs": ("configs",),
    "loras": ("loras",),
    "vae": ("vae",),
    "vae_approx": ("vae_approx",),
    "text_encoders": ("text_encoders", "clip"),
    "diffusion_models": ("diffusion_models", "unet"),
    "clip_vision": ("clip_vision",),
    "style_models": ("style_models",),
    "embeddings": ("embeddings",),
    "diffusers": ("diffusers",),
    "controlnet": ("controlnet", "t2i_adapter"),
    "gligen": ("gligen",),
    "upscale_models": ("upscale_models",),
    "hypernetworks": ("hypernetworks",),
    "photomaker": ("photomaker",),
    "classifiers": ("classifiers",),
    "model_patches": ("model_patches",),
    "audio_encoders": ("audio_encoders",),
}


def git_checkout_commands(repo: str, commit: str | None, dest: str) -> list[str]:
    """Fetch exactly one commit (shallow), or the default branch when no commit is pinned."""
    q_repo, q_dest = shlex.quote(repo), shlex.quote(dest)
    if commit is None:
        return [f"git clone --depth 1 {q_repo} {q_dest}"]
    q_commit = shlex.quote(commit)
    return [
        f"mkdir -p {q_dest} && cd {q_dest} && git init -q && git remote add origin {q_repo}"
        f" && git fetch -q --depth 1 origin {q_commit} && git checkout -q FETCH_HEAD"
        f' && test "$(git rev-parse HEAD)" = {q_commit}'
    ]


def comfyui_commands(repo: str, commit: str) -> list[str]:
    """ComfyUI at ``commit`` plus its requirements (torch is already in an earlier layer)."""
    return [
        *git_checkout_commands(repo, commit, COMFY_DIR),
        f"pip install -r {COMFY_DIR}/requirements.txt",
    ]


def custom_node_commands(nodes: Sequence[CustomNode]) -> list[str]:
    """One clone per node into ``custom_nodes/<dir>``, then its requirements.txt and install.py.

    ComfyUI-Manager runs the same two on install; many nodes need one or the other before they
    import.  A node that still fails to import fails the object_info step after these.
    """
    out: list[str] = []
    for node in nodes:
        dest = f"{COMFY_DIR}/custom_nodes/{node.directory}"
        out += git_checkout_commands(node.url, node.commit, dest)
        q_dest = shlex.quote(dest)
        req = shlex.quote(f"{dest}/requirements.txt")
        out.append(f"if [ -f {req} ]; then pip install -r {req}; fi")
        out.append(f"if [ -f {q_dest}/install.py ]; then cd {q_dest} && python install.py; fi")
    return out


def model_paths_yaml(models_dir: str = MODELS_DIR) -> str:
    """ComfyUI's ``extra_model_paths.yaml``: every model folder also looks on the volume."""
    lines = ["ryla:", f"  base_path: {models_dir}", "  is_default: true"]
    for folder, sources in MODEL_FOLDERS.items():
        if len(sources) == 1:
            lines.append(f"  {folder}: {sources[0]}")
        else:
            lines.append(f"  {folder}: |")
            lines += [f"    {s}" for s in sources]
    return "\n".join(lines) + "\n"


def snapshot_node_commands(comfy_dir: str = COMFY_DIR) -> list[str]:
    """Write the ``ryla_snapshot`` custom node (``cloud/snapshot_node.py``) into ComfyUI."""
    from ryla_modal.cloud.snapshot_node import NODE_DIRECTORY, node_files

    folder = f"{comfy_dir}/custom_nodes/{NODE_DIRECTORY}"
    return [write_file_command(f"{folder}/{name}", text) for name, text in node_files().items()]


def write_file_command(path: str, text: str) -> str:
    parent = shlex.quote(str(Path(path).parent))
    return f"mkdir -p {parent} && printf %s {shlex.quote(text)} > {shlex.quote(path)}"


def object_info_command(
    out: str = OBJECT_INFO_PATH, *, comfy_dir: str = COMFY_DIR, timeout: float = 900.0
) -> str:
    """Run ``object_info_snapshot.py`` (inlined: ryla_modal is not in the image at this layer)."""
    source = (Path(__file__).parent / "object_info_snapshot.py").read_text(encoding="utf-8")
    argv = ["--out", out, "--cwd", comfy_dir, "--timeout", f"{timeout:g}"]
    argv += ["--", "python", "main.py", "--cpu", "--disable-auto-launch"]
    return f"python -c {shlex.quote(source)} {shlex.join(argv)}"
