"""How long does the offline /object_info check take next to what the gateway does anyway?

Builds a 50-node graph of real ComfyUI 0.3.64 nodes (EmptyImage -> 47 x ImageInvert ->
ImageBlur -> SaveImage, every other invert swapped for an ImageScale with enum and min/max
widgets) and times ``check_workflow`` on it against the recorded /object_info, next to two
baselines measured in the same run: ``json.loads`` of the same workflow's text (the gateway
parses every request body) and the one-time ``load_object_info``.  Goal: a few milliseconds at
most per check, and far below the one-time load.

    python bench/validate.py [--runs 200] [--protocol-dir ../shared/comfyui-protocol]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from ryla_modal.validate import check_workflow, load_object_info  # noqa: E402


def graph(nodes: int = 50) -> dict[str, Any]:
    """A valid chain of ``nodes`` real nodes."""
    g: dict[str, Any] = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0},
        }
    }
    for i in range(2, nodes - 1):
        if i % 2:
            node = {
                "class_type": "ImageScale",
                "inputs": {
                    "image": [str(i - 1), 0],
                    "upscale_method": "bilinear",
                    "width": 64,
                    "height": 64,
                    "crop": "disabled",
                },
            }
        else:
            node = {"class_type": "ImageInvert", "inputs": {"image": [str(i - 1), 0]}}
        g[str(i)] = node
    g[str(nodes - 1)] = {
        "class_type": "ImageBlur",
        "inputs": {"image": [str(nodes - 2), 0], "blur_radius": 3, "sigma": 1.5},
    }
    g[str(nodes)] = {
        "class_type": "SaveImage",
        "inputs": {"images": [str(nodes - 1), 0], "filename_prefix": "bench"},
    }
    return g


def timed(fn: Any, runs: int) -> float:
    """Median seconds of ``fn()`` over ``runs`` calls."""
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument(
        "--protocol-dir", type=Path, default=ROOT.parent / "shared" / "comfyui-protocol"
    )
    args = parser.parse_args()
    path = args.protocol_dir / "31_object_info_full.json"
    if not path.is_file():
        print(f"no {path.name} in {args.protocol_dir}; pass --protocol-dir", file=sys.stderr)
        return 2

    object_info = load_object_info(path)
    workflow = graph(50)
    text = json.dumps(workflow)
    report = check_workflow(workflow, object_info)
    assert report.ok, report.to_comfy_body()
    broken = json.loads(text)
    broken["10"]["inputs"]["upscale_method"] = "nope"
    broken["20"]["inputs"] = {}
    assert not check_workflow(broken, object_info).ok

    load_s = timed(lambda: load_object_info(path), max(3, args.runs // 20))
    parse_s = timed(lambda: json.loads(text), args.runs)
    check_s = timed(lambda: check_workflow(workflow, object_info), args.runs)
    broken_s = timed(lambda: check_workflow(broken, object_info), args.runs)

    print(f"nodes in the graph          : {len(workflow)}")
    print(f"load_object_info (once)     : {load_s * 1e3:8.3f} ms")
    print(f"json.loads of the workflow  : {parse_s * 1e3:8.3f} ms")
    print(f"check_workflow, valid graph : {check_s * 1e3:8.3f} ms")
    print(f"check_workflow, two errors  : {broken_s * 1e3:8.3f} ms")
    print(f"check / json.loads          : {check_s / parse_s:8.1f} x")
    print(f"check / load_object_info    : {check_s / load_s:8.3f} x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
