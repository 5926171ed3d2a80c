"""`python -m engine serve` driven by the plug-in's own stdlib client, as GIMP would."""
import os
import sys
import time

import numpy as np
import pytest

from neural_restore.client import EngineFailure, EngineProcess, load_config
from neural_restore.protocol import WireBuffer


@pytest.fixture
def config(engine_python):
    return {"engine_python": engine_python, "engine_module": "engine"}


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
        _, (out,) = engine.run("inpaint", {"iterations": 20, "method": "dip"}, [buf, mask_buf])
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
        engine.hello.pop("op_params")  # send params unfiltered, as a plug-in older than op_params does
        with pytest.raises(EngineFailure) as failure:
            engine.run(op, params, send)
        assert failure.value.kind == "bad-input" and message in failure.value.message
        # the same process still answers
        _, results = engine.run("denoise", {"iterations": 2}, [image])
        assert results


def test_cancel_stops_the_job_and_returns_the_result_so_far(config):
    # DIP ops keep their averaged output when cancelled: the engine answers the cancel frame
    # with that output as a result marked partial (the plug-in names it "... (result so far)").
    _, buf = _image_buffer(64, 64)
    started = time.monotonic()
    with EngineProcess(config) as engine:
        info, results = engine.run("denoise", {"iterations": 100000, "method": "dip"}, [buf],
                                   lambda f, t: time.monotonic() - started > 1.0)
    assert info.get("partial") is True
    assert [(r.width, r.height, r.channels) for r in results] == [(buf.width, buf.height, buf.channels)]
    assert time.monotonic() - started < 30


def test_engine_killed_mid_run_is_reported(config):
    _, buf = _image_buffer(64, 64)
    with EngineProcess(config) as engine:
        def kill_on_first_progress(fraction, text):
            engine.process.kill()
        with pytest.raises(EngineFailure) as failure:
            engine.run("denoise", {"iterations": 100000, "method": "dip"}, [buf], kill_on_first_progress)
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


# --- op params in the hello, estimates, memory budget, previews, partial results ------------

def test_hello_lists_each_ops_params_and_the_features(config):
    with EngineProcess(config) as engine:
        params = engine.hello["op_params"]
        assert set(params["denoise"]) >= {"iterations", "seed", "device"}
        assert params["denoise"]["device"]["choices"] == ["auto", "cpu", "cuda"]
        assert {"estimate", "preview", "partial-result", "memory-budget"} <= engine.features()
        # a param the engine does not list is not sent (an old engine meets a newer plug-in)
        assert engine.supported_params("denoise", {"iterations": 2, "not-a-param": 1}) == {"iterations": 2}


def test_estimate_answers_per_param_set_with_memory(config, monkeypatch):
    monkeypatch.setenv("NEURAL_RESTORE_MEMORY_BUDGET_MB", "512")
    with EngineProcess(config) as engine:
        reply = engine.estimate("denoise", 256, 128, [{"iterations": 10, "method": "dip"}, {"iterations": 20, "method": "dip"}])
        assert reply["type"] == "estimate" and len(reply["seconds"]) == 2
        assert all(s is None or s > 0 for s in reply["seconds"])
        assert reply["memory_available"] == 512 << 20
        assert reply["memory_bytes"][0] > 256 * 128 * 1000
        engine._send({"type": "estimate", "id": 99, "op": "denoise", "width": 8, "height": 8,
                      "params": [{"bogus": 1}]})
        header, _ = engine._read("estimating")
        assert header["type"] == "error" and header["kind"] == "bad-input" and "no parameter" in header["message"]


def test_an_image_beyond_the_memory_budget_is_refused_naming_the_need(config, monkeypatch):
    monkeypatch.setenv("NEURAL_RESTORE_MEMORY_BUDGET_MB", "100")
    _, buf = _image_buffer(64, 64)
    with EngineProcess(config) as engine:
        with pytest.raises(EngineFailure) as failure:
            engine.run("denoise", {"iterations": 2, "method": "dip"}, [buf])
    assert failure.value.kind == "bad-input"
    assert "needs about 412 MB of memory, this machine has 100 MB free" in failure.value.message


def test_inpaint_budget_counts_the_hole_window_not_the_image():
    from engine import budget
    mask = np.zeros((4000, 4000), np.float32)
    mask[100:110, 200:220] = 1
    assert budget.work_area("inpaint", 4000, 4000, mask) == (74, 84)
    assert budget.work_area("denoise", 4000, 4000, mask) == (4000, 4000)


class _ServeInProcess(object):
    """engine.serve on pipes in a thread, with a stand-in op: what serve does, not DIP."""

    def __init__(self):
        import threading
        from engine import serve as serve_module
        in_read, self.in_write = os.pipe()
        out_read, out_write = os.pipe()
        self.stdout = os.fdopen(out_read, "rb")
        self.stdin = os.fdopen(self.in_write, "wb")
        self.thread = threading.Thread(target=serve_module.serve,
                                       args=(os.fdopen(in_read, "rb"), os.fdopen(out_write, "wb")))
        self.thread.daemon = True
        self.thread.start()

    def send(self, header, buffers=()):
        from neural_restore.protocol import encode_frame
        self.stdin.write(encode_frame(header, buffers))
        self.stdin.flush()

    def read(self):
        from neural_restore.protocol import read_frame
        return read_frame(self.stdout)

    def close(self):
        self.stdin.close()
        self.thread.join(10)


@pytest.fixture
def stand_in_op(monkeypatch):
    """Op 'count': previews 'step k' images until cancelled, then offers its last one."""
    from engine import ops
    from engine.errors import Cancelled

    def run(image, mask, params, ctx):
        step = 0
        while True:
            step += 1
            layers = [ops.ResultLayer("image", "Counted", np.full_like(image, step / 255.0))]
            if ctx.preview is not None:
                ctx.preview(layers)
            ctx.progress(min(step / 1000.0, 0.99), "step %d" % step)
            if ctx.cancel_requested():
                raise Cancelled(partial=layers)
            time.sleep(0.05)

    monkeypatch.setitem(ops.OPS, "count", ops.OpSpec("count", "test op", run))


def test_previews_arrive_as_frames_and_cancel_returns_the_partial_result(stand_in_op, monkeypatch):
    from engine import serve as serve_module
    monkeypatch.setattr(serve_module, "MIN_PREVIEW_INTERVAL_S", 0.2)
    data, buf = _image_buffer(8, 8, channels=3, x=2, y=1)
    served = _ServeInProcess()
    try:
        assert served.read()[0]["type"] == "hello"
        served.send({"type": "request", "id": 7, "op": "count", "params": {}, "preview_interval_s": 0.2}, [buf])
        previews = []
        while len(previews) < 2:
            header, buffers = served.read()
            if header["type"] == "preview":
                previews.append(buffers[0])
        served.send({"type": "cancel", "id": 7})
        while True:
            header, buffers = served.read()
            if header["type"] == "result":
                break
        assert header["partial"] is True and header["info"]["partial"] is True
        (out,) = buffers
        assert (out.width, out.height, out.channels, out.dtype, out.x, out.y) == (8, 8, 3, "u8", 2, 1)
        first, second = (p.data[0] for p in previews)  # each preview is a newer step
        assert second > first and out.data[0] >= second
        assert (previews[0].width, previews[0].x, previews[0].title) == (8, 2, "Counted")
    finally:
        served.close()


def test_no_preview_frames_unless_asked_and_cancel_without_partial_is_an_error(stand_in_op, monkeypatch):
    from engine import ops
    from engine.errors import Cancelled

    def run(image, mask, params, ctx):
        assert ctx.preview is None
        while not ctx.cancel_requested():
            ctx.progress(0.5, "working")
            time.sleep(0.05)
        raise Cancelled()

    monkeypatch.setitem(ops.OPS, "count", ops.OpSpec("count", "test op", run))
    _, buf = _image_buffer(8, 8)
    served = _ServeInProcess()
    try:
        served.read()
        served.send({"type": "request", "id": 1, "op": "count", "params": {}}, [buf])
        assert served.read()[0]["type"] == "progress"
        served.send({"type": "cancel", "id": 1})
        while True:
            header, _ = served.read()
            if header["type"] != "progress":
                break
        assert header["type"] == "error" and header["kind"] == "cancelled"
    finally:
        served.close()


def test_serve_runs_without_a_writable_log_folder(config, monkeypatch):
    monkeypatch.setenv("NEURAL_RESTORE_LOG_DIR", "/proc/neural-restore-logs")
    _, buf = _image_buffer(16, 16)
    with EngineProcess(config) as engine:
        assert engine.hello["log"] is None
        _, results = engine.run("denoise", {"iterations": 2}, [buf])
    assert results


def test_decompose_takes_a_second_mix_buffer(config):
    yy, xx = np.mgrid[:32, :32] / 32
    bands = 0.5 + 0.4 * np.sin(12 * (xx + yy))
    discs = np.where((yy - 0.4) ** 2 + (xx - 0.6) ** 2 < 0.06, 0.9, 0.1)
    first, second = ((w * bands + (1 - w) * discs)[..., None].repeat(3, 2) * 255 for w in (0.5, 0.7))
    buffers = [WireBuffer("image", 32, 32, 3, "u8", first.astype(np.uint8).tobytes(), 2, 3),
               WireBuffer("second", 32, 32, 3, "u8", second.astype(np.uint8).tobytes())]
    with EngineProcess(config) as engine:
        assert "second-image" in engine.hello["features"]
        assert "decompose" in engine.hello["op_second_image"]
        params = {"mode": "transparency", "iterations": 10, "device": "cpu"}
        info, results = engine.run("decompose", params, buffers, lambda f, t: None)
        assert [r.title for r in results] == ["Reflection", "Transmission", "Reflection weight"]
        assert all((r.width, r.height, r.x, r.y) == (32, 32, 2, 3) for r in results)
        small = WireBuffer("second", 16, 32, 3, "u8", bytes(32 * 16 * 3))
        with pytest.raises(EngineFailure, match="same size"):
            engine.run("decompose", params, [buffers[0], small], lambda f, t: None)
