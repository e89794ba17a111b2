"""Model-free nodes on Pillow, described exactly as the real server's GET /object_info shows them.

An IMAGE is a list of Pillow RGB images (a batch), a MASK a list of "L" images.  Pixels need not
match ComfyUI's; names, inputs, limits, outputs and the files written do.  ``RylaSlowSteps`` is
ours: it reports ``progress`` per step and honours interrupts between steps, like KSampler.

Every output kind ComfyUI 0.3.64 produces has a node here: files (SaveImage, SaveAudio*, SaveGLB),
``temp`` previews (PreviewImage, PreviewAudio), text (PreviewAny) and SaveImageWebsocket, whose
images travel only as binary websocket frames.  AUDIO is ``{"waveform": Silence,
"sample_rate"}``; MESH holds plain vertex and face lists (``RylaUnitCube`` makes one, since every
real MESH source needs a model).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageFilter, ImageOps
from PIL.PngImagePlugin import PngInfo

from .media import flac_bytes, glb_bytes, mp3_bytes, opus_bytes, unit_cube

Images = list[Image.Image]
InputTypes = dict[str, dict[str, Any]]  # {"required": {...}, "optional": {...}, "hidden": {...}}

UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
_RESAMPLE = {
    "nearest-exact": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "area": Image.Resampling.BOX,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
_IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


class InterruptProcessing(Exception):
    """POST /interrupt reached a node boundary or a progress step (ComfyUI's own exception)."""


@dataclass(frozen=True)
class Folders:
    """The three folders ComfyUI serves and writes (absolute, normalised)."""

    output: str
    input: str
    temp: str

    def by_type(self, kind: str) -> str | None:
        return {"output": self.output, "input": self.input, "temp": self.temp}.get(kind)


@dataclass
class RunContext:
    """What a node may use while it runs: folders, the prompt, interrupts and progress."""

    folders: Folders
    prompt: dict[str, Any]
    extra_pnginfo: Any
    disable_metadata: bool
    interrupted: threading.Event
    # (value, total, preview) where preview is ComfyUI's ("PNG" | "JPEG", image, max_size)
    report_progress: Callable[..., None]

    def wait(self, seconds: float) -> None:
        """Sleep, but wake at once (and raise) when an interrupt arrives."""
        if seconds > 0 and self.interrupted.wait(seconds):
            raise InterruptProcessing()


@dataclass(frozen=True)
class NodeResult:
    outputs: tuple[Any, ...]
    ui: dict[str, Any] | None = None


@dataclass(frozen=True)
class NodeDef:
    """One node class: its INPUT_TYPES, its object_info facts and the function that runs it."""

    name: str
    input_types: Callable[[Folders], InputTypes]
    outputs: tuple[str, ...]
    run: Callable[[RunContext, dict[str, Any]], NodeResult]
    display_name: str | None
    category: str
    python_module: str = "nodes"
    description: str = ""
    output_node: bool = False
    output_names: tuple[str, ...] | None = None
    extra_info: dict[str, Any] = field(default_factory=dict)
    # VALIDATE_INPUTS(names...) -> True | error text; replaces the combo check for those inputs.
    validate: Callable[[Folders, dict[str, Any]], bool | str] | None = None
    validate_args: tuple[str, ...] = ()
    # IS_CHANGED: part of the cache key (LoadImage: the file's hash).
    is_changed: Callable[[Folders, dict[str, Any]], str] | None = None

    def object_info(self, folders: Folders) -> dict[str, Any]:
        types = self.input_types(folders)
        entry: dict[str, Any] = {
            "input": types,
            "input_order": {cat: list(spec) for cat, spec in types.items()},
            "output": list(self.outputs),
            "output_is_list": [False] * len(self.outputs),
            "output_name": list(self.output_names or self.outputs),
            "name": self.name,
            "display_name": self.display_name,
            "description": self.description,
            "python_module": self.python_module,
            "category": self.category,
            "output_node": self.output_node,
        }
        entry.update(self.extra_info)
        return entry


# --- helpers ---------------------------------------------------------------------------------


def annotated_filepath(name: str) -> tuple[str, str | None]:
    """``"x.png [output]"`` → ("x.png", "output"); ComfyUI strips 9/8/7 characters blindly."""
    if name.endswith("[output]"):
        return name[:-9], "output"
    if name.endswith("[input]"):
        return name[:-8], "input"
    if name.endswith("[temp]"):
        return name[:-7], "temp"
    return name, None


def _inside(base: str, path: str) -> bool:
    return os.path.commonpath((base, os.path.abspath(path))) == base


def input_image_path(folders: Folders, name: str) -> str | None:
    """Where LoadImage reads ``name`` from; None if it would leave its folder (we refuse that)."""
    name, kind = annotated_filepath(name)
    base = folders.by_type(kind or "input") or folders.input
    path = os.path.join(base, name)
    return path if _inside(base, path) else None


def input_files(folders: Folders) -> list[str]:
    """LoadImage's combo list: image files directly in the input folder, sorted."""
    try:
        names = os.listdir(folders.input)
    except FileNotFoundError:
        return []
    return sorted(
        n
        for n in names
        if os.path.isfile(os.path.join(folders.input, n))
        and os.path.splitext(n)[1].lower() in _IMAGE_EXTENSIONS
    )


def describe(value: Any) -> Any:
    """ComfyUI's ``format_value`` for ``current_inputs``: plain values as-is, others as text."""
    if value is None or isinstance(value, int | float | bool | str):
        return value
    if isinstance(value, list) and value and isinstance(value[0], Image.Image):
        w, h = value[0].size
        return f"<IMAGE batch={len(value)} {w}x{h} mode={value[0].mode}>"
    return str(value)


def _rgb(color: int) -> tuple[int, int, int]:
    return (color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF


def _images(value: Any, name: str) -> Images:
    if not isinstance(value, list) or not all(isinstance(i, Image.Image) for i in value):
        raise TypeError(f"input {name!r} is not an IMAGE batch: {type(value).__name__}")
    return value


def _compute_vars(prefix: str, width: int, height: int) -> str:
    now = time.localtime()
    for key, val in (
        ("%width%", width),
        ("%height%", height),
        ("%year%", now.tm_year),
        ("%month%", f"{now.tm_mon:02}"),
        ("%day%", f"{now.tm_mday:02}"),
        ("%hour%", f"{now.tm_hour:02}"),
        ("%minute%", f"{now.tm_min:02}"),
        ("%second%", f"{now.tm_sec:02}"),
    ):
        prefix = prefix.replace(key, str(val))
    return prefix


def save_image_path(prefix: str, base: str, width: int, height: int) -> tuple[str, str, int, str]:
    """ComfyUI's ``get_save_image_path``: (folder, name, next counter, subfolder)."""
    if "%" in prefix:
        prefix = _compute_vars(prefix, width, height)
    subfolder = os.path.dirname(os.path.normpath(prefix))
    filename = os.path.basename(os.path.normpath(prefix))
    folder = os.path.join(base, subfolder)
    if os.path.commonpath((base, os.path.abspath(folder))) != base:
        raise Exception(  # ComfyUI raises a bare Exception with this text
            "**** ERROR: Saving image outside the output folder is not allowed."
            f"\n full_output_folder: {os.path.abspath(folder)}"
            f"\n         output_dir: {base}"
        )

    def counter_of(name: str) -> tuple[int, str]:
        prefix_len = len(filename)
        head = name[: prefix_len + 1]
        try:
            digits = int(name[prefix_len + 1 :].split("_")[0])
        except ValueError:
            digits = 0
        return digits, head

    try:
        taken = []
        for name in os.listdir(folder):
            digits, head = counter_of(name)
            if head[:-1] == filename and head[-1:] == "_":
                taken.append(digits)
        counter = max(taken) + 1 if taken else 1
    except FileNotFoundError:
        os.makedirs(folder, exist_ok=True)
        counter = 1
    return folder, filename, counter, subfolder


def _save(
    ctx: RunContext, images: Images, prefix: str, kind: str, compress_level: int
) -> NodeResult:
    base = ctx.folders.output if kind == "output" else ctx.folders.temp
    w, h = images[0].size if images else (0, 0)
    folder, filename, counter, subfolder = save_image_path(prefix, base, w, h)
    results = []
    for batch_number, img in enumerate(images):
        meta = None
        if not ctx.disable_metadata:
            meta = PngInfo()
            meta.add_text("prompt", json.dumps(ctx.prompt))
            if isinstance(ctx.extra_pnginfo, dict):
                for key, value in ctx.extra_pnginfo.items():
                    meta.add_text(str(key), json.dumps(value))
        name = f"{filename.replace('%batch_num%', str(batch_number))}_{counter:05}_.png"
        img.convert("RGB").save(
            os.path.join(folder, name), pnginfo=meta, compress_level=compress_level
        )
        results.append({"filename": name, "subfolder": subfolder, "type": kind})
        counter += 1
    return NodeResult((), {"images": results})


_WEBP_METHODS = {"default": 4, "fastest": 0, "slowest": 6}


def _save_animated_webp(ctx: RunContext, a: dict[str, Any]) -> NodeResult:
    """comfy_extras/nodes_images.py SaveAnimatedWEBP: every frame in one .webp, EXIF metadata."""
    images = _images(a["images"], "images")
    w, h = images[0].size if images else (0, 0)
    folder, filename, counter, subfolder = save_image_path(
        str(a["filename_prefix"]), ctx.folders.output, w, h
    )
    exif = images[0].getexif()
    if not ctx.disable_metadata:
        exif[0x0110] = f"prompt:{json.dumps(ctx.prompt)}"
        if isinstance(ctx.extra_pnginfo, dict):
            for n, (key, value) in enumerate(ctx.extra_pnginfo.items()):
                exif[0x010F - n] = f"{key}:{json.dumps(value)}"
    name = f"{filename}_{counter:05}_.webp"
    images[0].save(
        os.path.join(folder, name),
        save_all=True,
        duration=int(1000.0 / float(a["fps"])),
        append_images=images[1:],
        exif=exif,
        lossless=bool(a["lossless"]),
        quality=int(a["quality"]),
        method=_WEBP_METHODS[a["method"]],
    )
    ui = {"images": [{"filename": name, "subfolder": subfolder, "type": "output"}]}
    return NodeResult((), {**ui, "animated": [len(images) != 1]})


def _save_animated_png(ctx: RunContext, a: dict[str, Any]) -> NodeResult:
    """comfy_extras/nodes_images.py SaveAnimatedPNG: an APNG, metadata in ``comf`` chunks."""
    images = _images(a["images"], "images")
    w, h = images[0].size if images else (0, 0)
    folder, filename, counter, subfolder = save_image_path(
        str(a["filename_prefix"]), ctx.folders.output, w, h
    )
    meta = None
    if not ctx.disable_metadata:
        meta = PngInfo()
        for key, value in _metadata(ctx).items():
            meta.add(b"comf", key.encode("latin-1") + b"\0" + value.encode("latin-1"), True)
    name = f"{filename}_{counter:05}_.png"
    images[0].save(
        os.path.join(folder, name),
        pnginfo=meta,
        compress_level=int(a["compress_level"]),
        save_all=True,
        duration=int(1000.0 / float(a["fps"])),
        append_images=images[1:],
    )
    ui = {"images": [{"filename": name, "subfolder": subfolder, "type": "output"}]}
    return NodeResult((), {**ui, "animated": [True]})


@dataclass(frozen=True)
class Silence:
    """An AUDIO waveform's shape (batch, channels, samples); the stand-in's audio is silent."""

    batch: int
    channels: int
    samples: int


@dataclass(frozen=True)
class Mesh:
    """A MESH batch: one (vertices, faces) pair per item."""

    items: tuple[tuple[list[tuple[float, float, float]], list[tuple[int, int, int]]], ...]


def _metadata(ctx: RunContext) -> dict[str, str]:
    """What ComfyUI's audio and GLB savers embed: the prompt and extra_pnginfo, as JSON."""
    if ctx.disable_metadata:
        return {}
    meta = {"prompt": json.dumps(ctx.prompt)}
    if isinstance(ctx.extra_pnginfo, dict):
        for key, value in ctx.extra_pnginfo.items():
            meta[str(key)] = json.dumps(value)
    return meta


def _save_audio(
    ctx: RunContext, audio: Any, prefix: str, fmt: str, kind: str = "output"
) -> NodeResult:
    """comfy_extras/nodes_audio.py ``save_audio``: one file per batch item, ``{"audio": [...]}``."""
    base = ctx.folders.output if kind == "output" else ctx.folders.temp
    folder, filename, counter, subfolder = save_image_path(prefix, base, 0, 0)
    wave, rate = audio["waveform"], int(audio["sample_rate"])
    if not isinstance(wave, Silence):
        raise TypeError(f"input 'audio' is not AUDIO: {type(wave).__name__}")
    if fmt == "opus":
        rate = 48000 if rate > 48000 else next((r for r in _OPUS_RATES if r >= rate), 48000)
    results = []
    for batch_number in range(wave.batch):
        name = f"{filename.replace('%batch_num%', str(batch_number))}_{counter:05}_.{fmt}"
        if fmt == "mp3":
            data = mp3_bytes(wave.channels, rate, wave.samples)
        elif fmt == "opus":
            data = opus_bytes(wave.channels, rate, _metadata(ctx))
        else:
            data = flac_bytes(wave.channels, rate, wave.samples, _metadata(ctx))
        with open(os.path.join(folder, name), "wb") as fh:
            fh.write(data)
        results.append({"filename": name, "subfolder": subfolder, "type": kind})
        counter += 1
    return NodeResult((), {"audio": results})


_OPUS_RATES = (8000, 12000, 16000, 24000, 48000)


# --- the nodes -------------------------------------------------------------------------------


def _empty_image(ctx: RunContext, a: dict[str, Any]) -> NodeResult:
    color = _rgb(int(a["color"]))
    size = (int(a["width"]), int(a["height"]))
    return NodeResult(([Image.new("RGB", size, color) for _ in range(int(a["batch_size"]))],))


def _image_invert(ctx: RunContext, a: dict[str, Any]) -> NodeResult:
    return NodeResult(([ImageOps.invert(i.convert("RGB")) for i in _images(a["image"], "image")],))


def _image_batch(ctx: RunContext, a: dict[str, Any]) -> NodeResult:
    """nodes.py ImageBatch: image2's frames after image1's, scaled to image1's size if need be."""
    first, second = _images(a["image1"], "image1"), _images(a["image2"], "image2")
    size = first[0].size if first else None
    if size is not None:
        second = [
            i if i.size == size else i.resize(size, Image.Resampling.BILINEAR) for i in second
        ]
    return NodeResult(([*first, *second],))


def _image_blur(ctx: RunContext, a: dict[str, Any]) -> NodeResult:
    images = _images(a["image"], "image")
    if int(a["blur_radius"]) == 0:
        return NodeResult((images,))
    blur = ImageFilter.GaussianBlur(radius=float(a["sigma"]))
    return NodeResult(([i.filter(blur) for i in images],))


def _image_scale(ctx: RunContext, a: dict[str, Any]) -> NodeResult:
    images = _images(a["image"], "image")
    width, height = int(a["width"]), int(a["height"])
    if width == 0 and height == 0:
        return NodeResult((images,))
    out = []
    for img in images:
        w, h = img.size
        tw = width or max(1, round(w * height / h))
        th = height or max(1, round(h * width / w))
        if a["crop"] == "center":
            old_aspect, new_aspect = w / h, tw / th
            if old_aspect > new_aspect:
                cut = round((w - w * new_aspect / old_aspect) / 2)
                img = img.crop((cut, 0, w - cut, h))
            elif old_aspect < new_aspect:
                cut = round((h - h * old_aspect / new_aspect) / 2)
                img = img.crop((0, cut, w, h - cut))
        out.append(img.resize((tw, th), _RESAMPLE[a["upscale_method"]]))
    return NodeResult((out,))


def _save_image(ctx: RunContext, a: dict[str, Any]) -> NodeResult:
    return _save(ctx, _images(a["images"], "images"), str(a["filename_prefix"]), "output", 4)


def _preview_image(ctx: RunContext, a: dict[str, Any]) -> NodeResult:
    suffix = "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
    return _save(ctx, _images(a["images"], "images"), f"ComfyUI_temp_{suffix}", "temp", 1)


def _load_image(ctx: RunContext, a: dict[str, Any]) -> NodeResult:
    path = input_image_path(ctx.folders, str(a["image"]))
    if path is None:
        raise ValueError(f"Invalid image file: {a['image']}")
    with Image.open(path) as opened:  # a corrupt file raises UnidentifiedImageError, as in 11
        img = ImageOps.exif_transpose(opened) or opened
        rgb = img.convert("RGB")
        if "A" in img.getbands():
            mask = ImageOps.invert(img.getchannel("A"))
        else:
            mask = Image.new("L", (64, 64), 0)
    return NodeResult(([rgb], [mask]))


def _load_image_valid(folders: Folders, a: dict[str, Any]) -> bool | str:
    path = input_image_path(folders, str(a["image"]))
    if path is None or not os.path.exists(path):
        return f"Invalid image file: {a['image']}"
    return True


def _load_image_changed(folders: Folders, a: dict[str, Any]) -> str:
    path = input_image_path(folders, str(a.get("image", "")))
    try:
        with open(path or "", "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    except OSError:
        return ""


def _empty_latent(ctx: RunContext, a: dict[str, Any]) -> NodeResult:
    shape = [int(a["batch_size"]), 4, int(a["height"]) // 8, int(a["width"]) // 8]
    return NodeResult(({"samples": {"shape": shape}},))


def _slow_steps(ctx: RunContext, a: dict[str, Any]) -> NodeResult:
    images = _images(a["image"], "image")
    steps, pause = int(a["steps"]), float(a["step_seconds"])
    # a latent preview per step, as KSampler sends with --preview-method (JPEG, max 512 px)
    preview = ("JPEG", images[0], 512) if a.get("preview") and images else None
    for step in range(1, steps + 1):
        ctx.wait(pause)
        ctx.report_progress(step, steps, preview)  # raises InterruptProcessing first, like KSampler
    return NodeResult(([i.copy() for i in images],))


def _primitive_string(ctx: RunContext, a: dict[str, Any]) -> NodeResult:
    return NodeResult((str(a["value"]),))


def _string_concatenate(ctx: RunContext, a: dict[str, Any]) -> NodeResult:
    return NodeResult((str(a["delimiter"]).join([str(a["string_a"]), str(a["string_b"])]),))


def _preview_any(ctx: RunContext, a: dict[str, Any]) -> NodeResult:
    """comfy_extras/nodes_preview_any.py: ``{"ui": {"text": (value,)}}``."""
    source = a.get("source")
    value = "None"
    if isinstance(source, str):
        value = source
    elif isinstance(source, int | float | bool):
        value = str(source)
    elif source is not None:
        try:
            value = json.dumps(source)
        except Exception:
            value = str(source)
    return NodeResult((), {"text": [value]})


def _save_image_websocket(ctx: RunContext, a: dict[str, Any]) -> NodeResult:
    """custom_nodes/websocket_image_save.py: each image goes out as a preview, no file, no ui."""
    images = _images(a["images"], "images")
    for step, img in enumerate(images):
        ctx.report_progress(step, len(images), ("PNG", img, None))
    return NodeResult(())


def _empty_audio(ctx: RunContext, a: dict[str, Any]) -> NodeResult:
    samples = round(float(a["duration"]) * int(a["sample_rate"]))
    wave = Silence(batch=1, channels=int(a["channels"]), samples=samples)
    return NodeResult(({"waveform": wave, "sample_rate": int(a["sample_rate"])},))


def _save_flac(ctx: RunContext, a: dict[str, Any]) -> NodeResult:
    return _save_audio(ctx, a["audio"], str(a["filename_prefix"]), "flac")


def _save_mp3(ctx: RunContext, a: dict[str, Any]) -> NodeResult:
    return _save_audio(ctx, a["audio"], str(a["filename_prefix"]), "mp3")


def _save_opus(ctx: RunContext, a: dict[str, Any]) -> NodeResult:
    return _save_audio(ctx, a["audio"], str(a["filename_prefix"]), "opus")


def _preview_audio(ctx: RunContext, a: dict[str, Any]) -> NodeResult:
    suffix = "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
    return _save_audio(ctx, a["audio"], f"ComfyUI_temp_{suffix}", "flac", "temp")


def _unit_cube(ctx: RunContext, a: dict[str, Any]) -> NodeResult:
    cube = unit_cube(float(a["size"]))
    return NodeResult((Mesh(tuple(cube for _ in range(int(a["batch_size"])))),))


def _save_glb(ctx: RunContext, a: dict[str, Any]) -> NodeResult:
    """comfy_extras/nodes_hunyuan3d.py SaveGLB: one .glb per mesh, ``{"3d": [...]}``."""
    mesh = a["mesh"]
    if not isinstance(mesh, Mesh):
        raise TypeError(f"input 'mesh' is not a MESH: {type(mesh).__name__}")
    folder, filename, counter, subfolder = save_image_path(
        str(a["filename_prefix"]), ctx.folders.output, 0, 0
    )
    results = []
    for vertices, faces in mesh.items:
        name = f"{filename}_{counter:05}_.glb"
        with open(os.path.join(folder, name), "wb") as fh:
            fh.write(glb_bytes(vertices, faces, _metadata(ctx) or None))
        results.append({"filename": name, "subfolder": subfolder, "type": "output"})
        counter += 1
    return NodeResult((), {"3d": results})


def _changes_every_time(folders: Folders, a: dict[str, Any]) -> str:
    return str(time.time())  # SaveImageWebsocket.IS_CHANGED: never cached


def _const(types: InputTypes) -> Callable[[Folders], InputTypes]:
    return lambda _folders: types


_HIDDEN = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
_V3_INFO = {
    "output_tooltips": [None],
    "deprecated": False,
    "experimental": False,
    "api_node": False,
}
_SIZE = ["INT", {"default": 512, "min": 1, "max": 16384, "step": 1}]


def build_nodes(step_seconds: float = 0.1) -> dict[str, NodeDef]:
    """Every node the stand-in knows, by class name (``step_seconds``: RylaSlowSteps default)."""
    defs = [
        NodeDef(
            "EmptyImage",
            _const(
                {
                    "required": {
                        "width": _SIZE,
                        "height": _SIZE,
                        "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096}],
                        "color": [
                            "INT",
                            {
                                "default": 0,
                                "min": 0,
                                "max": 16777215,
                                "step": 1,
                                "display": "color",
                            },
                        ],
                    }
                }
            ),
            ("IMAGE",),
            _empty_image,
            "EmptyImage",
            "image",
        ),
        NodeDef(
            "ImageInvert",
            _const({"required": {"image": ["IMAGE"]}}),
            ("IMAGE",),
            _image_invert,
            "Invert Image",
            "image",
        ),
        NodeDef(
            "ImageBatch",
            _const({"required": {"image1": ["IMAGE"], "image2": ["IMAGE"]}}),
            ("IMAGE",),
            _image_batch,
            "Batch Images",
            "image",
        ),
        NodeDef(
            "ImageBlur",
            _const(
                {
                    "required": {
                        "image": ["IMAGE", {}],
                        "blur_radius": ["INT", {"default": 1, "min": 1, "max": 31, "step": 1}],
                        "sigma": ["FLOAT", {"default": 1.0, "min": 0.1, "max": 10.0, "step": 0.1}],
                    }
                }
            ),
            ("IMAGE",),
            _image_blur,
            None,
            "image/postprocessing",
            python_module="comfy_extras.nodes_post_processing",
            extra_info={
                "output_tooltips": [None],
                "deprecated": False,
                "experimental": False,
                "api_node": False,
            },
        ),
        NodeDef(
            "ImageScale",
            _const(
                {
                    "required": {
                        "image": ["IMAGE"],
                        "upscale_method": [UPSCALE_METHODS],
                        "width": ["INT", {"default": 512, "min": 0, "max": 16384, "step": 1}],
                        "height": ["INT", {"default": 512, "min": 0, "max": 16384, "step": 1}],
                        "crop": [["disabled", "center"]],
                    }
                }
            ),
            ("IMAGE",),
            _image_scale,
            "Upscale Image",
            "image/upscaling",
        ),
        NodeDef(
            "SaveImage",
            _const(
                {
                    "required": {
                        "images": ["IMAGE", {"tooltip": "The images to save."}],
                        "filename_prefix": [
                            "STRING",
                            {
                                "default": "ComfyUI",
                                "tooltip": "The prefix for the file to save. This may include"
                                " formatting information such as %date:yyyy-MM-dd% or"
                                " %Empty Latent Image.width% to include values from nodes.",
                            },
                        ],
                    },
                    "hidden": _HIDDEN,
                }
            ),
            (),
            _save_image,
            "Save Image",
            "image",
            description="Saves the input images to your ComfyUI output directory.",
            output_node=True,
        ),
        NodeDef(
            "PreviewImage",
            _const({"required": {"images": ["IMAGE"]}, "hidden": _HIDDEN}),
            (),
            _preview_image,
            "Preview Image",
            "image",
            description="Saves the input images to your ComfyUI output directory.",
            output_node=True,
        ),
        NodeDef(
            "LoadImage",
            lambda folders: {"required": {"image": [input_files(folders), {"image_upload": True}]}},
            ("IMAGE", "MASK"),
            _load_image,
            "Load Image",
            "image",
            validate=_load_image_valid,
            validate_args=("image",),
            is_changed=_load_image_changed,
        ),
        NodeDef(
            "EmptyLatentImage",
            _const(
                {
                    "required": {
                        "width": [
                            "INT",
                            {
                                "default": 512,
                                "min": 16,
                                "max": 16384,
                                "step": 8,
                                "tooltip": "The width of the latent images in pixels.",
                            },
                        ],
                        "height": [
                            "INT",
                            {
                                "default": 512,
                                "min": 16,
                                "max": 16384,
                                "step": 8,
                                "tooltip": "The height of the latent images in pixels.",
                            },
                        ],
                        "batch_size": [
                            "INT",
                            {
                                "default": 1,
                                "min": 1,
                                "max": 4096,
                                "tooltip": "The number of latent images in the batch.",
                            },
                        ],
                    }
                }
            ),
            ("LATENT",),
            _empty_latent,
            "Empty Latent Image",
            "latent",
            description="Create a new batch of empty latent images to be denoised via sampling.",
            extra_info={"output_tooltips": ["The empty latent image batch."]},
        ),
        NodeDef(
            "RylaSlowSteps",
            _const(
                {
                    "required": {
                        "image": ["IMAGE"],
                        "steps": ["INT", {"default": 5, "min": 1, "max": 10000, "step": 1}],
                    },
                    "optional": {
                        "step_seconds": [
                            "FLOAT",
                            {"default": step_seconds, "min": 0.0, "max": 600.0, "step": 0.01},
                        ],
                        "preview": ["BOOLEAN", {"default": False}],
                    },
                }
            ),
            ("IMAGE",),
            _slow_steps,
            "Slow Steps (ryla stand-in)",
            "testing",
            python_module="custom_nodes.ryla_stand_in",
            description="Passes the image through after `steps` waits, sending progress per step"
            " (and a JPEG preview frame per step with `preview`, like a sampler's latent preview).",
        ),
        NodeDef(
            "PrimitiveString",
            _const({"required": {"value": ["STRING", {"multiline": False}]}}),
            ("STRING",),
            _primitive_string,
            "String",
            "utils/primitive",
            python_module="comfy_extras.nodes_primitive",
            extra_info=_V3_INFO,
        ),
        NodeDef(
            "StringConcatenate",
            _const(
                {
                    "required": {
                        "string_a": ["STRING", {"multiline": True}],
                        "string_b": ["STRING", {"multiline": True}],
                        "delimiter": ["STRING", {"default": "", "multiline": False}],
                    }
                }
            ),
            ("STRING",),
            _string_concatenate,
            "Concatenate",
            "utils/string",
            python_module="comfy_extras.nodes_string",
            extra_info=_V3_INFO,
        ),
        NodeDef(
            "PreviewAny",
            _const({"required": {"source": ["*", {}]}}),
            (),
            _preview_any,
            "Preview Any",
            "utils",
            python_module="comfy_extras.nodes_preview_any",
            output_node=True,
        ),
        NodeDef(
            "SaveImageWebsocket",
            _const({"required": {"images": ["IMAGE"]}}),
            (),
            _save_image_websocket,
            "SaveImageWebsocket",
            "api/image",
            python_module="custom_nodes.websocket_image_save",
            output_node=True,
            is_changed=_changes_every_time,
        ),
        NodeDef(
            "EmptyAudio",
            _const(
                {
                    "required": {
                        "duration": [
                            "FLOAT",
                            {
                                "default": 60.0,
                                "min": 0.0,
                                "max": 0xFFFFFFFFFFFFFFFF,
                                "step": 0.01,
                                "tooltip": "Duration of the empty audio clip in seconds",
                            },
                        ],
                        "sample_rate": [
                            "INT",
                            {"default": 44100, "tooltip": "Sample rate of the empty audio clip."},
                        ],
                        "channels": [
                            "INT",
                            {
                                "default": 2,
                                "min": 1,
                                "max": 2,
                                "tooltip": "Number of audio channels (1 for mono, 2 for stereo).",
                            },
                        ],
                    }
                }
            ),
            ("AUDIO",),
            _empty_audio,
            "Empty Audio",
            "audio",
            python_module="comfy_extras.nodes_audio",
        ),
        NodeDef(
            "SaveAudio",
            _const(
                {
                    "required": {
                        "audio": ["AUDIO"],
                        "filename_prefix": ["STRING", {"default": "audio/ComfyUI"}],
                    },
                    "hidden": _HIDDEN,
                }
            ),
            (),
            _save_flac,
            "Save Audio (FLAC)",
            "audio",
            python_module="comfy_extras.nodes_audio",
            output_node=True,
        ),
        NodeDef(
            "SaveAudioMP3",
            _const(
                {
                    "required": {
                        "audio": ["AUDIO"],
                        "filename_prefix": ["STRING", {"default": "audio/ComfyUI"}],
                        "quality": [["V0", "128k", "320k"], {"default": "V0"}],
                    },
                    "hidden": _HIDDEN,
                }
            ),
            (),
            _save_mp3,
            "Save Audio (MP3)",
            "audio",
            python_module="comfy_extras.nodes_audio",
            output_node=True,
        ),
        NodeDef(
            "SaveAudioOpus",
            _const(
                {
                    "required": {
                        "audio": ["AUDIO"],
                        "filename_prefix": ["STRING", {"default": "audio/ComfyUI"}],
                        "quality": [
                            ["64k", "96k", "128k", "192k", "320k"],
                            {"default": "128k"},
                        ],
                    },
                    "hidden": _HIDDEN,
                }
            ),
            (),
            _save_opus,
            "Save Audio (Opus)",
            "audio",
            python_module="comfy_extras.nodes_audio",
            output_node=True,
        ),
        NodeDef(
            "PreviewAudio",
            _const({"required": {"audio": ["AUDIO"]}, "hidden": _HIDDEN}),
            (),
            _preview_audio,
            "Preview Audio",
            "audio",
            python_module="comfy_extras.nodes_audio",
            output_node=True,
        ),
        NodeDef(
            "RylaUnitCube",
            _const(
                {
                    "required": {
                        "size": ["FLOAT", {"default": 1.0, "min": 0.01, "max": 1000.0}],
                        "batch_size": ["INT", {"default": 1, "min": 1, "max": 64}],
                    }
                }
            ),
            ("MESH",),
            _unit_cube,
            "Unit Cube (ryla stand-in)",
            "testing",
            python_module="custom_nodes.ryla_stand_in",
            description="A model-free MESH: every real MESH source needs a 3D model.",
        ),
        NodeDef(
            "SaveGLB",
            _const(
                {
                    "required": {
                        "mesh": ["MESH"],
                        "filename_prefix": ["STRING", {"default": "mesh/ComfyUI"}],
                    },
                    "hidden": _HIDDEN,
                }
            ),
            (),
            _save_glb,
            "SaveGLB",
            "3d",
            python_module="comfy_extras.nodes_hunyuan3d",
            output_node=True,
        ),
        NodeDef(
            "SaveAnimatedWEBP",
            _const(
                {
                    "required": {
                        "images": ["IMAGE"],
                        "filename_prefix": ["STRING", {"default": "ComfyUI"}],
                        "fps": [
                            "FLOAT",
                            {"default": 6.0, "min": 0.01, "max": 1000.0, "step": 0.01},
                        ],
                        "lossless": ["BOOLEAN", {"default": True}],
                        "quality": ["INT", {"default": 80, "min": 0, "max": 100}],
                        "method": [list(_WEBP_METHODS)],
                    },
                    "hidden": _HIDDEN,
                }
            ),
            (),
            _save_animated_webp,
            "SaveAnimatedWEBP",
            "image/animation",
            python_module="comfy_extras.nodes_images",
            output_node=True,
        ),
        NodeDef(
            "SaveAnimatedPNG",
            _const(
                {
                    "required": {
                        "images": ["IMAGE"],
                        "filename_prefix": ["STRING", {"default": "ComfyUI"}],
                        "fps": [
                            "FLOAT",
                            {"default": 6.0, "min": 0.01, "max": 1000.0, "step": 0.01},
                        ],
                        "compress_level": ["INT", {"default": 4, "min": 0, "max": 9}],
                    },
                    "hidden": _HIDDEN,
                }
            ),
            (),
            _save_animated_png,
            "SaveAnimatedPNG",
            "image/animation",
            python_module="comfy_extras.nodes_images",
            output_node=True,
        ),
    ]
    return {d.name: d for d in defs}


def input_spec(types: InputTypes, name: str) -> tuple[Any, str, dict[str, Any]] | None:
    """(type, category, extra_info) of one input, as ComfyUI's ``get_input_info`` gives them."""
    for category in ("required", "optional", "hidden"):
        spec = types.get(category, {}).get(name)
        if spec is not None:
            if category == "hidden":
                return spec, category, {}
            extra = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            return spec[0], category, extra
    return None
