"""Both halves of docs/protocol.md: engine/protocol.py (numpy) and the plug-in's stdlib client."""
import io
import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import protocol as engine_proto
from neural_restore import protocol as plugin_proto


def _engine_roundtrip(header, buffers):
    return engine_proto.read_message(io.BytesIO(engine_proto.encode_message(header, buffers)))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_plugin_frame_reads_back_in_engine(dtype, channels):
    pixels = (np.arange(5 * 7 * channels) % 200).astype(dtype).reshape(5, 7, channels)
    wire = {np.uint8: "u8", np.uint16: "u16", np.float32: "f32"}[dtype]
    raw = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    frame = plugin_proto.encode_frame(
        {"type": "request", "id": 3, "op": "denoise", "params": {"seed": 1}},
        [plugin_proto.WireBuffer("image", 7, 5, channels, wire, raw, x=-2, y=9)])
    message = engine_proto.read_message(io.BytesIO(frame))
    assert message.header["op"] == "denoise" and message.header["params"] == {"seed": 1}
    image = message.buffer("image")
    assert (image.x, image.y) == (-2, 9)
    assert image.pixels.dtype.kind == np.dtype(dtype).kind
    np.testing.assert_array_equal(image.pixels, pixels)


def test_engine_frame_reads_back_in_plugin():
    pixels = np.random.default_rng(1).integers(0, 65536, (4, 6, 4), dtype=np.uint16)
    frame = engine_proto.encode_message(
        {"type": "result", "id": 7, "info": {"seconds": 1.5}},
        [engine_proto.Buffer("image", pixels, 3, 4, {"title": "Denoised"})])
    header, buffers = plugin_proto.read_frame(io.BytesIO(frame))
    assert header == {"type": "result", "id": 7, "info": {"seconds": 1.5}}
    (buf,) = buffers
    assert (buf.name, buf.title, buf.width, buf.height, buf.channels, buf.dtype, buf.x, buf.y) == \
        ("image", "Denoised", 6, 4, 4, "u16", 3, 4)
    assert buf.data == pixels.astype("<u2").tobytes()


def test_frame_layout_matches_the_spec():
    frame = plugin_proto.encode_frame({"type": "cancel", "id": 1})
    (length,) = struct.unpack(">I", frame[:4])
    assert length == len(frame) - 4
    assert json.loads(frame[4:].decode()) == {"type": "cancel", "id": 1}


def test_several_frames_and_clean_end():
    stream = io.BytesIO(engine_proto.encode_message({"type": "progress", "id": 1, "fraction": 0.5})
                        + engine_proto.encode_message({"type": "error", "id": 1, "kind": "cancelled",
                                                       "message": "x"}))
    assert plugin_proto.read_frame(stream)[0]["fraction"] == 0.5
    assert plugin_proto.read_frame(stream)[0]["kind"] == "cancelled"
    assert plugin_proto.read_frame(stream) is None
    assert engine_proto.read_message(io.BytesIO(b"")) is None


@pytest.mark.parametrize("raw, reason", [
    (struct.pack(">I", 0), "length"),
    (struct.pack(">I", (1 << 20) + 1), "length"),
    (struct.pack(">I", 5) + b"nope!", "JSON"),
    (struct.pack(">I", 2) + b"[]", "object"),
    (struct.pack(">I", 10) + b'{"type":1}', "object"),
    (b"\x00\x00", "ended"),
])
def test_malformed_frames_are_protocol_errors(raw, reason):
    with pytest.raises(engine_proto.ProtocolError, match=reason):
        engine_proto.read_message(io.BytesIO(raw))
    with pytest.raises(plugin_proto.ProtocolError):
        plugin_proto.read_frame(io.BytesIO(raw))


@pytest.mark.parametrize("desc", [
    {"name": "image", "width": 0, "height": 1, "channels": 1, "dtype": "u8"},
    {"name": "image", "width": 1, "height": 1, "channels": 5, "dtype": "u8"},
    {"name": "image", "width": 1, "height": 1, "channels": 1, "dtype": "f64"},
    {"name": "image", "width": "2", "height": 1, "channels": 1, "dtype": "u8"},
    {"width": 1, "height": 1, "channels": 1, "dtype": "u8"},
    {"name": "image", "width": 65535, "height": 65535, "channels": 4, "dtype": "f32"},
])
def test_bad_descriptors_are_rejected(desc):
    header = json.dumps({"type": "request", "buffers": [desc]}).encode()
    with pytest.raises(engine_proto.ProtocolError):
        engine_proto.read_message(io.BytesIO(struct.pack(">I", len(header)) + header + b"\0" * 64))


def test_truncated_payload_is_an_error():
    frame = engine_proto.encode_message({"type": "request"},
                                        [engine_proto.Buffer("image", np.zeros((4, 4, 3), np.uint8))])
    with pytest.raises(engine_proto.ProtocolError, match="ended"):
        engine_proto.read_message(io.BytesIO(frame[:-1]))


@settings(max_examples=300, deadline=1000)
@given(st.binary(max_size=256))
def test_engine_reader_never_crashes_on_garbage(data):
    """Arbitrary bytes give a message, a clean end, or ProtocolError: never another exception."""
    stream = io.BytesIO(data)
    try:
        while engine_proto.read_message(stream) is not None:
            pass
    except engine_proto.ProtocolError:
        pass


@settings(max_examples=200, deadline=1000)
@given(st.dictionaries(st.text(max_size=8), st.one_of(st.integers(), st.text(max_size=8), st.none()),
                       max_size=6),
       st.lists(st.dictionaries(st.sampled_from(["name", "width", "height", "channels", "dtype", "x"]),
                                st.one_of(st.integers(-3, 70000), st.sampled_from(["u8", "u16", "f32", "x"]),
                                          st.none()), max_size=6), max_size=3))
def test_engine_reader_survives_odd_headers(header, descriptors):
    header = dict(header, type="request", buffers=descriptors)
    raw = json.dumps(header).encode()
    stream = io.BytesIO(struct.pack(">I", len(raw)) + raw + b"\x01" * 512)
    try:
        engine_proto.read_message(stream)
    except engine_proto.ProtocolError:
        pass
