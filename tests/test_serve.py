"""`python -m engine serve` driven by the plug-in's own stdlib client, as GIMP would."""
import os
import sys
import time

import numpy as np
import pytest

from neural_restore.client import EngineFailure, EngineProcess, load_config
from neural_restore.protocol import WireBuffer


@pytest.fixture
def config():
    return {"engine_python": sys.executable, "engine_module": "engine"}


def _image_buffer(width=24, height=20, channels=4, x=5, y=-3, seed=0):
    data = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    return data, WireBuffer("image", width, height, channels, "u8", data.tobytes(), x, y)


def test_hello_lists_ops(config):
    with EngineProcess(config) as engine:
        assert engine.hello["protocol"] == 1
        assert {"denoise", "inpaint"} <= set(engine.hello["ops"])


def test_denoise_request_keeps_geometry_and_alpha(config):
    data, buf = _image_buffer()
    seen = []
    with EngineProcess(config) as engine:
        info, results = engine.run("denoise", {"iterations": 20}, [buf], lambda f, t: seen.append(f))
    (out,) = results
    assert (out.width, out.height, out.channels, out.dtype, out.x, out.y) == (24, 20, 4, "u8", 5, -3)
    assert out.title == "Denoised"
    pixels = np.frombuffer(out.data, np.uint8).reshape(20, 24, 4)
    np.testing.assert_array_equal(pixels[..., 3], data[..., 3])
    assert seen and seen[-1] == 1.0
    assert info["seconds"] > 0


def test_inpaint_blends_a_feathered_mask_and_keeps_the_rest(config):
    data, buf = _image_buffer(channels=3, x=0, y=0)
    mask = np.zeros((20, 24), np.uint8)
    mask[5:12, 6:15] = 255
    mask[5:12, 15] = 128  # a feathered edge
    mask_buf = WireBuffer("mask", 24, 20, 1, "u8", mask.tobytes())
    with EngineProcess(config) as engine:
        _, (out,) = engine.run("inpaint", {"iterations": 20}, [buf, mask_buf])
    pixels = np.frombuffer(out.data, np.uint8).reshape(20, 24, 3)
    np.testing.assert_array_equal(pixels[mask == 0], data[mask == 0])
    assert not np.array_equal(pixels[mask == 255], data[mask == 255])


def test_float_and_16bit_come_back_in_their_dtype(config):
    for dtype, np_dtype in (("u16", "<u2"), ("f32", "<f4")):
        data = (np.random.default_rng(2).random((16, 16, 1)) * (65535 if dtype == "u16" else 1)).astype(np_dtype)
        buf = WireBuffer("image", 16, 16, 1, dtype, data.tobytes())
        with EngineProcess(config) as engine:
            _, (out,) = engine.run("denoise", {"iterations": 3}, [buf])
        assert out.dtype == dtype and len(out.data) == data.nbytes


@pytest.mark.parametrize("op, params, buffers, message", [
    ("denoise", {"iterations": "many"}, "image", "integer"),
    ("denoise", {"colour": 1}, "image", "no parameter"),
    ("sharpen-everything", {}, "image", "unknown operation"),
    ("inpaint", {}, "image", "needs a mask"),
    ("inpaint", {}, "image+empty", "mask is empty"),
    ("denoise", {}, "tiny", "at least"),
])
def test_bad_requests_get_bad_input_and_the_engine_keeps_serving(config, op, params, buffers, message):
    _, image = _image_buffer()
    send = {"image": [image], "tiny": [_image_buffer(4, 4)[1]],
            "image+empty": [image, WireBuffer("mask", 24, 20, 1, "u8", bytes(480), 5, -3)]}[buffers]
    with EngineProcess(config) as engine:
        with pytest.raises(EngineFailure) as failure:
            engine.run(op, params, send)
        assert failure.value.kind == "bad-input" and message in failure.value.message
        # the same process still answers
        _, results = engine.run("denoise", {"iterations": 2}, [image])
        assert results


def test_cancel_stops_the_job(config):
    _, buf = _image_buffer(64, 64)
    started = time.monotonic()
    with EngineProcess(config) as engine:
        with pytest.raises(EngineFailure) as failure:
            engine.run("denoise", {"iterations": 100000}, [buf], lambda f, t: time.monotonic() - started > 1.0)
    assert failure.value.kind == "cancelled"
    assert time.monotonic() - started < 30


def test_engine_killed_mid_run_is_reported(config):
    _, buf = _image_buffer(64, 64)
    with EngineProcess(config) as engine:
        def kill_on_first_progress(fraction, text):
            engine.process.kill()
        with pytest.raises(EngineFailure) as failure:
            engine.run("denoise", {"iterations": 100000}, [buf], kill_on_first_progress)
    assert failure.value.kind == "engine" and "stopped unexpectedly" in failure.value.message


def test_missing_config_says_run_install(tmp_path, monkeypatch):
    monkeypatch.delenv("NEURAL_RESTORE_ENGINE_PYTHON", raising=False)
    with pytest.raises(EngineFailure) as failure:
        load_config(str(tmp_path))
    assert failure.value.kind == "setup" and "install.py" in failure.value.message
    (tmp_path / "engine.json").write_text('{"engine_python": "/nowhere/python"}')
    with pytest.raises(EngineFailure, match="install.py"):
        load_config(str(tmp_path))
    (tmp_path / "engine.json").write_text("{broken")
    with pytest.raises(EngineFailure, match="damaged"):
        load_config(str(tmp_path))


def test_garbage_on_stdin_gives_a_protocol_error(config):
    import subprocess
    process = subprocess.Popen([sys.executable, "-m", "engine", "serve"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out, _ = process.communicate(b"\xff\xff\xff\xffgarbage", timeout=60)
    from neural_restore.protocol import read_frame
    import io
    stream = io.BytesIO(out)
    assert read_frame(stream)[0]["type"] == "hello"
    header, _ = read_frame(stream)
    assert header["type"] == "error" and header["kind"] == "protocol"
    assert process.returncode == 2


def test_engine_stops_working_when_the_plugin_goes_away(config):
    """GIMP kills a plug-in whose progress the user cancels: the engine must not run on."""
    import subprocess
    from neural_restore.protocol import encode_frame, read_frame
    data, buf = _image_buffer(64, 64)
    process = subprocess.Popen([sys.executable, "-I", "-m", "engine", "serve"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert read_frame(process.stdout)[0]["type"] == "hello"
    process.stdin.write(encode_frame({"type": "request", "id": 1, "op": "denoise",
                                      "params": {"iterations": 100000}}, [buf]))
    process.stdin.flush()
    assert read_frame(process.stdout)[0]["type"] == "progress"  # it is working
    started = time.monotonic()
    process.stdin.close()
    process.stdout.close()
    assert process.wait(timeout=30) == 0
    assert time.monotonic() - started < 10
