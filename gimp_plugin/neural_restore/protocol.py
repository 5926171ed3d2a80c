"""Plug-in half of the engine protocol (spec: docs/protocol.md; engine half: engine/protocol.py).

Stdlib only, Python 2.7 and 3 syntax: pixels stay ``bytes`` here, never arrays.
"""
import json
import struct

PROTOCOL_VERSION = 1
MAX_HEADER_BYTES = 1 << 20
MAX_BUFFERS = 16
DTYPE_SIZES = {"u8": 1, "u16": 2, "f32": 4}
_LENGTH = struct.Struct(">I")


class ProtocolError(Exception):
    """The engine sent bytes that do not follow docs/protocol.md."""


class WireBuffer(object):
    """A buffer as it travels: a descriptor dict plus its raw bytes."""

    def __init__(self, name, width, height, channels, dtype, data, x=0, y=0, **extra):
        self.name = name
        self.width = int(width)
        self.height = int(height)
        self.channels = int(channels)
        self.dtype = dtype
        self.data = data
        self.x = int(x)
        self.y = int(y)
        self.extra = extra
        if dtype not in DTYPE_SIZES:
            raise ProtocolError("unknown dtype %r" % (dtype,))
        if len(data) != self.nbytes:
            raise ValueError("buffer %r holds %d bytes, its geometry needs %d"
                             % (name, len(data), self.nbytes))

    @property
    def nbytes(self):
        return self.width * self.height * self.channels * DTYPE_SIZES[self.dtype]

    @property
    def title(self):
        return self.extra.get("title", self.name)

    # Result attributes (docs/protocol.md): how a layer of a result stack composites.
    @property
    def blend(self):
        return self.extra.get("blend", "normal")

    @property
    def opacity(self):
        try:
            return max(0.0, min(1.0, float(self.extra.get("opacity", 1.0))))
        except (TypeError, ValueError):
            return 1.0

    @property
    def mask(self):
        """Name of the buffer that is this layer's layer mask, or None."""
        return self.extra.get("mask")

    @property
    def visible(self):
        return self.extra.get("visible", True) is not False

    @property
    def is_mask(self):
        """True for a buffer that only serves as another result's layer mask."""
        return self.extra.get("kind", "layer") == "mask"

    def descriptor(self):
        desc = dict(self.extra)
        desc.update(name=self.name, width=self.width, height=self.height,
                    channels=self.channels, dtype=self.dtype, x=self.x, y=self.y)
        return desc


def encode_frame(header, buffers=()):
    header = dict(header)
    if buffers:
        header["buffers"] = [b.descriptor() for b in buffers]
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return b"".join([_LENGTH.pack(len(raw)), raw] + [bytes(b.data) for b in buffers])


def _read_exactly(stream, count, at_frame_start=False):
    chunks = []
    remaining = count
    while remaining:
        chunk = stream.read(min(remaining, 1 << 24))
        if not chunk:
            if at_frame_start and remaining == count:
                return None
            raise ProtocolError("the engine's output ended inside a frame")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _descriptor_size(desc):
    try:
        size = DTYPE_SIZES[desc["dtype"]]
        dims = [int(desc["width"]), int(desc["height"]), int(desc["channels"])]
    except (KeyError, TypeError, ValueError):
        raise ProtocolError("malformed buffer descriptor %r" % (desc,))
    if min(dims) < 1 or dims[2] > 4:
        raise ProtocolError("bad buffer geometry %r" % (desc,))
    return dims[0] * dims[1] * dims[2] * size


def read_frame(stream):
    """Return (header dict, [WireBuffer]) or None at a clean end of stream."""
    prefix = _read_exactly(stream, _LENGTH.size, at_frame_start=True)
    if prefix is None:
        return None
    length = _LENGTH.unpack(prefix)[0]
    if not 2 <= length <= MAX_HEADER_BYTES:
        raise ProtocolError("frame header length %d out of range" % length)
    try:
        header = json.loads(_read_exactly(stream, length).decode("utf-8"))
    except ValueError:
        raise ProtocolError("frame header is not JSON")
    if not isinstance(header, dict) or not isinstance(header.get("type"), type(u"")):
        raise ProtocolError("frame header has no 'type'")
    descriptors = header.pop("buffers", [])
    if not isinstance(descriptors, list) or len(descriptors) > MAX_BUFFERS:
        raise ProtocolError("bad 'buffers' list")
    buffers = []
    for desc in descriptors:
        data = _read_exactly(stream, _descriptor_size(desc))
        fields = dict((str(k), v) for k, v in desc.items() if k != "data")
        try:
            buffers.append(WireBuffer(data=data, **fields))
        except (TypeError, ValueError):
            raise ProtocolError("malformed buffer descriptor %r" % (desc,))
    return header, buffers
