"""Audio and 3D files for the stand-in's save nodes, written with the stdlib only.

ComfyUI encodes audio with PyAV and meshes with numpy; the stand-in has neither.  The files here
are well-formed containers of the right kind (a FLAC stream, MPEG-1 Layer III frames of silence,
an Ogg Opus header stream, a glTF 2.0 binary with ComfyUI's exact layout), so names, sizes and
types behave like the real thing, while the audio itself is silence.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence

Vec3 = tuple[float, float, float]


def flac_bytes(channels: int, sample_rate: int, samples: int, tags: Mapping[str, str]) -> bytes:
    """A FLAC stream: STREAMINFO and a VORBIS_COMMENT block with the tags, no audio frames."""
    info = bytearray()
    info += struct.pack(">HH", 4096, 4096)  # min/max block size
    info += (0).to_bytes(3, "big") + (0).to_bytes(3, "big")  # min/max frame size: unknown
    packed = (sample_rate << 44) | ((channels - 1) << 41) | (15 << 36) | (samples & (2**36 - 1))
    info += packed.to_bytes(8, "big")
    info += bytes(16)  # MD5 of the audio: unknown
    comment = _vorbis_comment(tags)
    out = bytearray(b"fLaC")
    out += bytes([0x00]) + len(info).to_bytes(3, "big") + info
    out += bytes([0x80 | 4]) + len(comment).to_bytes(3, "big") + comment
    return bytes(out)


def mp3_bytes(channels: int, sample_rate: int, samples: int) -> bytes:
    """MPEG-1 Layer III at 128 kbit/s: one silent frame (all-zero side info) per 1152 samples."""
    rates = {44100: 0b00, 48000: 0b01, 32000: 0b10}
    rate = sample_rate if sample_rate in rates else 44100
    header = bytes([0xFF, 0xFB, 0x90 | (rates[rate] << 2), 0xC0 if channels == 1 else 0x00])
    frame = header + bytes(144 * 128000 // rate - len(header))
    return frame * max(1, math.ceil(samples / 1152))


def opus_bytes(channels: int, sample_rate: int, tags: Mapping[str, str]) -> bytes:
    """An Ogg Opus stream holding its two header packets (OpusHead, OpusTags)."""
    head = b"OpusHead" + struct.pack("<BBHIhB", 1, channels, 312, sample_rate, 0, 0)
    vendor = b"ryla stand-in"
    body = b"".join(_length_prefixed(f"{k}={v}".encode()) for k, v in tags.items())
    opus_tags = b"OpusTags" + _length_prefixed(vendor) + struct.pack("<I", len(tags)) + body
    return _ogg_page(head, 0, 0x02) + _ogg_page(opus_tags, 1, 0x04)


def glb_bytes(
    vertices: Sequence[Vec3], faces: Sequence[tuple[int, int, int]], meta: object
) -> bytes:
    """ComfyUI's ``save_glb``: one mesh, float32 positions, uint32 indices, JSON + BIN chunks."""
    vbuf = b"".join(struct.pack("<3f", *v) for v in vertices)
    ibuf = b"".join(struct.pack("<3I", *f) for f in faces)
    vpad, ipad = _pad(vbuf, b"\x00"), _pad(ibuf, b"\x00")
    data = vpad + ipad
    gltf: dict[str, object] = {
        "asset": {"version": "2.0", "generator": "ComfyUI"},
        "buffers": [{"byteLength": len(data)}],
        "bufferViews": [
            {"buffer": 0, "byteOffset": 0, "byteLength": len(vbuf), "target": 34962},
            {"buffer": 0, "byteOffset": len(vpad), "byteLength": len(ibuf), "target": 34963},
        ],
        "accessors": [
            {
                "bufferView": 0,
                "byteOffset": 0,
                "componentType": 5126,
                "count": len(vertices),
                "type": "VEC3",
                "max": [max(v[i] for v in vertices) for i in range(3)],
                "min": [min(v[i] for v in vertices) for i in range(3)],
            },
            {
                "bufferView": 1,
                "byteOffset": 0,
                "componentType": 5125,
                "count": 3 * len(faces),
                "type": "SCALAR",
            },
        ],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0}, "indices": 1, "mode": 4}]}],
        "nodes": [{"mesh": 0}],
        "scenes": [{"nodes": [0]}],
        "scene": 0,
    }
    if meta is not None:
        asset = gltf["asset"]
        assert isinstance(asset, dict)
        asset["extras"] = meta
    text = _pad(json.dumps(gltf).encode("utf8"), b" ")
    total = 12 + 8 + len(text) + 8 + len(data)
    return (
        struct.pack("<4sII", b"glTF", 2, total)
        + struct.pack("<II", len(text), 0x4E4F534A)
        + text
        + struct.pack("<II", len(data), 0x004E4942)
        + data
    )


def unit_cube(size: float) -> tuple[list[Vec3], list[tuple[int, int, int]]]:
    """A cube's 8 corners and 12 triangles."""
    h = size / 2
    verts = [(x, y, z) for x in (-h, h) for y in (-h, h) for z in (-h, h)]
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    faces = [t for a, b, c, d in quads for t in ((a, b, c), (a, c, d))]
    return verts, faces


def _pad(buf: bytes, fill: bytes) -> bytes:
    return buf + fill * ((4 - len(buf) % 4) % 4)


def _length_prefixed(data: bytes) -> bytes:
    return struct.pack("<I", len(data)) + data


def _vorbis_comment(tags: Mapping[str, str]) -> bytes:
    vendor = b"ryla stand-in"
    body = b"".join(_length_prefixed(f"{k}={v}".encode()) for k, v in tags.items())
    return _length_prefixed(vendor) + struct.pack("<I", len(tags)) + body


def _ogg_crc(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
            crc &= 0xFFFFFFFF
    return crc


def _ogg_page(packet: bytes, sequence: int, flags: int) -> bytes:
    lacing = [255] * (len(packet) // 255) + [len(packet) % 255]
    header = struct.pack("<4sBBqII", b"OggS", 0, flags, 0, 0x52594C41, sequence)
    page = header + b"\x00\x00\x00\x00" + bytes([len(lacing)]) + bytes(lacing) + packet
    crc = _ogg_crc(page)
    return page[:22] + struct.pack("<I", crc) + page[26:]
