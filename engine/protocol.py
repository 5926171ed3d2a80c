"""Frames of the plug-in ⇄ engine protocol (spec: docs/protocol.md).

This is the engine's half; ``gimp_plugin/neural_restore/protocol.py`` is the plug-in's
stdlib-only half. Both must stay byte-compatible: tests/test_protocol.py runs one
against the other.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np

PROTOCOL_VERSION = 1
MAX_HEADER_BYTES = 1 << 20
MAX_BUFFER_BYTES = 1 << 32
MAX_BUFFERS = 16
MAX_SIDE = 65535

# Wire dtypes are little-endian whatever the host's byte order.
WIRE_DTYPES: dict[str, np.dtype] = {
    "u8": np.dtype("u1"),
    "u16": np.dtype("<u2"),
    "f32": np.dtype("<f4"),
}
_HEADER_LENGTH = struct.Struct(">I")
_DESCRIPTOR_KEYS = ("name", "width", "height", "channels", "dtype", "x", "y")


class ProtocolError(Exception):
    """The byte stream does not follow docs/protocol.md."""


@dataclass
class Buffer:
    """One image-like buffer: ``pixels`` is H×W×C in a wire dtype; x/y are image offsets."""

    name: str
    pixels: np.ndarray
    x: int = 0
    y: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def descriptor(self) -> dict[str, Any]:
        height, width, channels = self.pixels.shape
        dtype = wire_dtype_name(self.pixels.dtype)
        return {**self.extra, "name": self.name, "width": width, "height": height,
                "channels": channels, "dtype": dtype, "x": self.x, "y": self.y}


@dataclass
class Message:
    header: dict[str, Any]
    buffers: list[Buffer] = field(default_factory=list)

    @property
    def type(self) -> str:
        return self.header["type"]

    def buffer(self, name: str) -> Buffer | None:
        return next((b for b in self.buffers if b.name == name), None)


def wire_dtype_name(dtype: np.dtype) -> str:
    for name, wire in WIRE_DTYPES.items():
        if np.dtype(dtype).newbyteorder("<") == wire and np.dtype(dtype).kind == wire.kind:
            return name
    raise ValueError(f"dtype {dtype} has no wire form (use uint8, uint16 or float32)")


def _int_field(desc: dict[str, Any], key: str, low: int, high: int, default: int | None = None) -> int:
    value = desc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ProtocolError(f"buffer field {key!r} must be an integer in [{low}, {high}], got {value!r}")
    return value


def parse_descriptor(desc: Any) -> tuple[dict[str, Any], tuple[int, int, int], np.dtype, int]:
    """Validate one descriptor; return it with its shape, dtype and size in bytes."""
    if not isinstance(desc, dict):
        raise ProtocolError("a buffer descriptor must be a JSON object")
    if not isinstance(desc.get("name"), str):
        raise ProtocolError("a buffer descriptor needs a string 'name'")
    width = _int_field(desc, "width", 1, MAX_SIDE)
    height = _int_field(desc, "height", 1, MAX_SIDE)
    channels = _int_field(desc, "channels", 1, 4)
    _int_field(desc, "x", -(1 << 30), 1 << 30, 0)
    _int_field(desc, "y", -(1 << 30), 1 << 30, 0)
    dtype = WIRE_DTYPES.get(desc.get("dtype"))  # type: ignore[arg-type]
    if dtype is None:
        raise ProtocolError(f"unknown buffer dtype {desc.get('dtype')!r} (u8, u16 or f32)")
    nbytes = width * height * channels * dtype.itemsize
    if nbytes > MAX_BUFFER_BYTES:
        raise ProtocolError(f"buffer {desc['name']!r} is larger than {MAX_BUFFER_BYTES} bytes")
    return desc, (height, width, channels), dtype, nbytes


def parse_header(raw: bytes) -> tuple[dict[str, Any], list[tuple[dict[str, Any], tuple[int, int, int], np.dtype, int]]]:
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"frame header is not UTF-8 JSON: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise ProtocolError("frame header must be a JSON object with a string 'type'")
    descriptors = header.get("buffers", [])
    if not isinstance(descriptors, list) or len(descriptors) > MAX_BUFFERS:
        raise ProtocolError(f"'buffers' must be a list of at most {MAX_BUFFERS} descriptors")
    return header, [parse_descriptor(d) for d in descriptors]


def _read_exactly(stream: BinaryIO, count: int, *, at_frame_start: bool = False) -> bytes | None:
    chunks = []
    remaining = count
    while remaining:
        chunk = stream.read(min(remaining, 1 << 24))
        if not chunk:
            if at_frame_start and remaining == count:
                return None
            raise ProtocolError(f"stream ended inside a frame ({count - remaining} of {count} bytes)")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_message(stream: BinaryIO) -> Message | None:
    """Read one frame; None on a clean end of stream between frames."""
    prefix = _read_exactly(stream, _HEADER_LENGTH.size, at_frame_start=True)
    if prefix is None:
        return None
    (length,) = _HEADER_LENGTH.unpack(prefix)
    if not 2 <= length <= MAX_HEADER_BYTES:
        raise ProtocolError(f"frame header length {length} is outside [2, {MAX_HEADER_BYTES}]")
    raw = _read_exactly(stream, length)
    assert raw is not None
    header, descriptors = parse_header(raw)
    buffers = []
    for desc, shape, dtype, nbytes in descriptors:
        data = _read_exactly(stream, nbytes)
        assert data is not None
        pixels = np.frombuffer(data, dtype=dtype).reshape(shape)
        extra = {k: v for k, v in desc.items() if k not in _DESCRIPTOR_KEYS}
        buffers.append(Buffer(desc["name"], pixels, desc.get("x", 0), desc.get("y", 0), extra))
    return Message(header, buffers)


def encode_message(header: dict[str, Any], buffers: list[Buffer] = ()) -> bytes:  # type: ignore[assignment]
    header = dict(header)
    if buffers:
        header["buffers"] = [b.descriptor() for b in buffers]
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    if len(raw) > MAX_HEADER_BYTES:
        raise ValueError("frame header too large")
    parts = [_HEADER_LENGTH.pack(len(raw)), raw]
    for b in buffers:
        wire = WIRE_DTYPES[wire_dtype_name(b.pixels.dtype)]
        parts.append(np.ascontiguousarray(b.pixels, dtype=wire).tobytes())
    return b"".join(parts)


def write_message(stream: BinaryIO, header: dict[str, Any], buffers: list[Buffer] = ()) -> None:  # type: ignore[assignment]
    stream.write(encode_message(header, buffers))
    stream.flush()
