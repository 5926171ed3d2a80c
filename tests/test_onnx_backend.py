"""The ONNX backend end to end, on small randomly initialised nets exported to a temp folder:
export parity, seamless tiling, no torch on the runner path, the ISR converter (checked against
an independent numpy implementation of ISR's Keras graph), degradations, and a training smoke
run that writes a checkpoint + model card and resumes."""
from __future__ import annotations

import argparse

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx", reason="torch.onnx.export needs the onnx package (the engine's 'export' extra)")

from engine.errors import BadInput, Cancelled  # noqa: E402
from engine.onnx import runner, tiling  # noqa: E402
from onnx_export import degrade  # noqa: E402
from onnx_export.data import PatchData, psnr, split_files  # noqa: E402
from onnx_export.export import export_with_card  # noqa: E402
from onnx_export.models import RDN, RDNConfig, UNet, UNetConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PARITY_TOL = 1e-4


def _test_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Photo-like content: smooth gradients, an edge, some texture and noise, in [0, 1]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([x / w, y / h, 0.5 + 0.3 * np.sin(x / 5.0) * np.cos(y / 7.0)], axis=2)
    base[(x - w / 2) ** 2 + (y - h / 3) ** 2 < (min(h, w) / 4) ** 2] *= 0.4
    return np.clip(base + 0.05 * rng.standard_normal((h, w, 3)), 0, 1).astype(np.float32)


def _randomise_head(model: UNet) -> UNet:
    # An untrained U-Net is the identity (zero head); give it a real detail path to test.
    torch.nn.init.normal_(model.head.weight, std=0.05)
    torch.nn.init.normal_(model.head.bias, std=0.01)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict, torch.nn.Module]]:
    out = tmp_path_factory.mktemp("onnx_models")
    torch.manual_seed(0)
    nets = {
        "rdn_x2": ("rdn", RDN(RDNConfig(C=2, D=3, G=8, G0=16, scale=2, upscaling="shuffle", input_skip=True))),
        "rdn_x4_ups": ("rdn", RDN(RDNConfig(C=2, D=2, G=8, G0=16, scale=4, upscaling="ups"))),
        "unet": ("unet", _randomise_head(UNet(UNetConfig(base=8, depth=3, max_channels=32)))),
    }
    models = {}
    for name, (kind, net) in nets.items():
        path = out / f"{name}.onnx"
        card = export_with_card(net.eval(), kind, path)
        models[name] = (path, card, net)
    return models


# -- export ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["rdn_x2", "rdn_x4_ups", "unet"])
def test_export_parity_and_card(exported, name: str) -> None:
    path, card, net = exported[name]
    parity = card["export"]["parity"]
    assert len(parity["sizes"]) >= 3
    assert parity["max_abs_diff"] < PARITY_TOL, parity
    on_disk = json.loads(path.with_suffix(".json").read_text())
    assert on_disk["runtime"]["scale"] == net.scale
    assert on_disk["runtime"]["size_multiple"] == net.size_multiple
    assert on_disk["export"]["sha256"] == card["export"]["sha256"]


def test_export_dynamic_sizes_beyond_the_parity_set(exported) -> None:
    path, _card, net = exported["rdn_x2"]
    model = runner.load_model(path, device="cpu")
    x = np.random.default_rng(1).random((1, 3, 23, 9), dtype=np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    got = model.infer(x)
    assert got.shape == (1, 3, 46, 18)
    assert np.abs(got - want).max() < PARITY_TOL


# -- runner + tiling ---------------------------------------------------------------------------

def test_session_cache_and_providers(exported) -> None:
    path = exported["rdn_x2"][0]
    a = runner.load_model(path, device="auto")
    assert runner.load_model(path, device="auto") is a
    assert a.provider in runner.available_providers()
    assert runner.choose_providers("cpu") == ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in runner.available_providers():
        assert a.provider == "CPUExecutionProvider"
        with pytest.raises(BadInput):
            runner.choose_providers("cuda")
    assert a.session.get_session_options().intra_op_num_threads == runner.available_cpu_threads()


@pytest.mark.parametrize("length,tile,overlap,multiple,scale", [
    (300, 80, 16, 1, 1), (301, 66, 16, 1, 2), (512, 160, 32, 16, 1), (100, 300, 16, 1, 4), (97, 70, 16, 1, 3)])
def test_blend_weights_are_a_partition_of_unity(length, tile, overlap, multiple, scale) -> None:
    plan = tiling.make_plan(length, length, tile, overlap, multiple)
    total = np.zeros(plan.padded_height * scale)
    for start, w in zip(plan.ys, tiling.axis_weights(plan.ys, plan.tile_height, overlap, scale)):
        assert all(s % multiple == 0 for s in plan.ys)
        total[start * scale:start * scale + len(w)] += w
    np.testing.assert_allclose(total, 1.0, atol=1e-6)
    steps = np.diff([*plan.ys, plan.padded_height - plan.tile_height])
    assert all(plan.tile_height - s >= overlap for s in steps if s > 0)


@pytest.mark.parametrize("name,shape", [("rdn_x2", (150, 170)), ("unet", (200, 184))])
def test_tiled_equals_untiled_away_from_borders(exported, name: str, shape: tuple[int, int]) -> None:
    path, _card, net = exported[name]
    model = runner.load_model(path, device="cpu")
    image = _test_image(*shape)
    whole = runner.run_rgb(model, image, tile=1024)
    calls: list[float] = []
    tiled = runner.run_rgb(model, image, tile=1, progress=lambda f, t: calls.append(f))  # smallest tiles
    assert len(calls) >= 4 and calls[-1] == 1.0, "expected several tiles"
    s, m = model.scale, 8
    assert whole.shape == tiled.shape == (shape[0] * s, shape[1] * s, 3)
    diff = np.abs(whole - tiled)[m * s:-m * s, m * s:-m * s].max()
    assert diff < 1 / 255, f"tiled vs untiled max diff {diff:.4g}"
    with torch.no_grad():  # the untiled ONNX run is the torch net (padded to its size rule)
        mult = net.size_multiple
        ph, pw = -(-shape[0] // mult) * mult, -(-shape[1] // mult) * mult
        padded = np.pad(image, ((0, ph - shape[0]), (0, pw - shape[1]), (0, 0)), mode="reflect")
        want = net(torch.from_numpy(padded.transpose(2, 0, 1)[None].copy()))[0].numpy().transpose(1, 2, 0)
    assert np.abs(want[:shape[0] * s, :shape[1] * s] - whole).max() < PARITY_TOL


def test_run_model_alpha_grey_and_cancel(exported) -> None:
    model = runner.load_model(exported["rdn_x2"][0], device="cpu")
    rgba = np.concatenate([_test_image(20, 30), np.linspace(0, 1, 600, dtype=np.float32).reshape(20, 30, 1)], 2)
    out = runner.run_model(model, rgba)
    assert out.shape == (40, 60, 4) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    np.testing.assert_allclose(out[:, :, 3], tiling.resize_alpha(rgba[:, :, 3:], 2)[:, :, 0])
    grey_alpha = runner.run_model(model, rgba[:, :, [0, 3]])
    assert grey_alpha.shape == (40, 60, 2)
    with pytest.raises(Cancelled):
        runner.run_model(model, _test_image(150, 150), tile=1, cancel_requested=lambda: True)


def test_tile_budget_and_out_of_memory_retry() -> None:
    side = tiling.tile_from_budget(256 * 2**20, 1000, overlap=32, multiple=16)
    assert side % 16 == 0 and tiling.min_tile(32, 16) <= side <= tiling.MAX_TILE
    assert tiling.tile_from_budget(1, 1000, overlap=16) == tiling.min_tile(16, 1)

    class SmallGpu:  # an identity "net" that runs out of memory on tiles over 100 px
        def run(self, _names, feeds, _run_options=None):  # InferenceSession.run's signature
            x = feeds["input"]
            if max(x.shape[2:]) > 100:
                raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory")
            return [x]

    fake = runner.OnnxModel(path=Path("fake.onnx"), session=SmallGpu(), card={}, provider="CPUExecutionProvider",
                            input_name="input", output_name="output", scale=1, size_multiple=1,
                            tile_overlap=16, activation_floats_per_px=10)
    image = _test_image(300, 260)
    texts: list[str] = []
    out = runner.run_rgb(fake, image, tile=400, progress=lambda f, t: texts.append(t))
    np.testing.assert_allclose(out, image, atol=1e-6)
    assert any("out of memory" in t for t in texts)


def test_runner_path_never_imports_torch(exported) -> None:
    path = exported["unet"][0]
    code = (
        "import sys, numpy as np\n"
        "from engine.onnx import runner\n"
        f"m = runner.load_model({str(path)!r})\n"
        "out = runner.run_model(m, np.random.default_rng(0).random((40, 50, 4), dtype=np.float32), tile=1)\n"
        "assert out.shape == (40, 50, 4), out.shape\n"
        "bad = sorted(k for k in sys.modules if k.split('.')[0] in ('torch', 'onnx_export'))\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_upscale_and_sharpen_ops_never_import_torch(tmp_path: Path) -> None:
    """The ops (and the CLI module they run under) on the ONNX path, in a fresh interpreter."""
    from tests.tiny_nets import export_tiny_nets

    models = export_tiny_nets(tmp_path / "models")
    code = (
        "import sys, numpy as np\n"
        "from engine import cli, ops\n"
        "img = np.random.default_rng(0).random((20, 24, 4), dtype=np.float32)\n"
        "(up,) = ops.run_op('upscale', img, None, {'scale': 4})\n"
        "(sharp,) = ops.run_op('sharpen', img, None, {})\n"
        "assert up.pixels.shape == (80, 96, 4) and sharp.pixels.shape == (20, 24, 4)\n"
        "bad = sorted(k for k in sys.modules if k.split('.')[0] in ('torch', 'onnx_export'))\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "NEURAL_RESTORE_MODELS": str(models)}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


# -- ISR converter -----------------------------------------------------------------------------

def _keras_conv(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Keras Conv2D(padding='same', stride 1) on H×W×Cin with a (kh, kw, in, out) kernel."""
    kh, kw = kernel.shape[:2]
    padded = np.pad(x, ((kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    h, w = x.shape[:2]
    out = np.zeros((h, w, kernel.shape[3]), dtype=np.float64)
    for dy in range(kh):
        for dx in range(kw):
            out += np.einsum("hwi,io->hwo", padded[dy:dy + h, dx:dx + w], kernel[dy, dx])
    return out + bias


def _isr_reference(x: np.ndarray, w: dict[str, tuple[np.ndarray, np.ndarray]], C: int, D: int, scale: int,
                   upscaling: str) -> np.ndarray:
    """ISR's Keras RDN graph in numpy (NHWC semantics, TF depth_to_space), written from its
    layer description, independent of our torch model and the converter."""
    relu = lambda a: np.maximum(a, 0.0)  # noqa: E731
    f_m1 = _keras_conv(x, *w["F_m1"])
    h = _keras_conv(f_m1, *w["F_0"])
    outs = []
    for d in range(1, D + 1):
        feats = h
        for c in range(1, C + 1):
            feats = np.concatenate([feats, relu(_keras_conv(feats, *w[f"F_{d}_{c}"]))], axis=2)
        h = _keras_conv(feats, *w[f"LFF_{d}"]) + h
        outs.append(h)
    h = _keras_conv(_keras_conv(np.concatenate(outs, axis=2), *w["GFF_1"]), *w["GFF_2"]) + f_m1
    h = relu(_keras_conv(h, *w["UPN1"]))
    h = relu(_keras_conv(h, *w["UPN2"]))
    h = _keras_conv(h, *w["UPN3"])
    hh, ww, ch = h.shape
    if upscaling == "ups":  # UpSampling2D, nearest
        h = h.repeat(scale, axis=0).repeat(scale, axis=1)
    else:  # tf.nn.depth_to_space, NHWC: out[y·s+i, x·s+j, c] = in[y, x, (i·s + j)·C' + c]
        c_out = ch // scale ** 2
        h = h.reshape(hh, ww, scale, scale, c_out).transpose(0, 2, 1, 3, 4).reshape(hh * scale, ww * scale, c_out)
    return _keras_conv(h, *w["SR"])


def _write_isr_hdf5(path: Path, C: int, D: int, G: int, G0: int, scale: int, upscaling: str,
                    whole_model: bool, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(seed)
    shapes: dict[str, tuple[int, int, int, int]] = {"F_m1": (3, 3, 3, G0), "F_0": (3, 3, G0, G0)}
    for d in range(1, D + 1):
        for c in range(1, C + 1):
            shapes[f"F_{d}_{c}"] = (3, 3, G0 + (c - 1) * G, G)
        shapes[f"LFF_{d}"] = (1, 1, G0 + C * G, G0)
    shapes.update({"GFF_1": (1, 1, D * G0, G0), "GFF_2": (3, 3, G0, G0), "UPN1": (5, 5, G0, 64),
                   "UPN2": (3, 3, 64, 32), "UPN3": (3, 3, 32, 3 * scale ** 2),
                   "SR": (3, 3, 3 * scale ** 2 if upscaling == "ups" else 3, 3)})
    weights = {}
    for name, shape in shapes.items():
        fan_in = shape[0] * shape[1] * shape[2]
        weights[name] = ((rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32),
                         (0.05 * rng.standard_normal(shape[3])).astype(np.float32))
    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights") if whole_model else f
        if whole_model:  # a whole saved model also holds optimiser slots, to be ignored
            f.create_group("optimizer_weights").create_dataset("training/Adam/F_m1/kernel/m:0",
                                                               data=np.zeros(1, np.float32))
        names = ["LR", *shapes, "UPsample" if upscaling == "ups" else "PixelShuffle"]
        root.attrs["layer_names"] = [n.encode() for n in names]
        for name in names:
            group = root.create_group(name)
            if name not in shapes:
                group.attrs["weight_names"] = []
                continue
            group.attrs["weight_names"] = [f"{name}/kernel:0".encode(), f"{name}/bias:0".encode()]
            group.create_dataset(f"{name}/kernel:0", data=weights[name][0])  # Keras nests name/name
            group.create_dataset(f"{name}/bias:0", data=weights[name][1])
    return weights


@pytest.mark.parametrize("scale,upscaling,whole_model", [(2, "ups", False), (3, "shuffle", True)])
def test_isr_converter_matches_keras_graph(tmp_path: Path, scale: int, upscaling: str, whole_model: bool) -> None:
    from onnx_export import isr_convert

    C, D, G, G0 = 2, 3, 4, 8
    h5 = tmp_path / "isr.hdf5"
    weights = _write_isr_hdf5(h5, C, D, G, G0, scale, upscaling, whole_model, seed=scale)
    model = isr_convert.load_isr_rdn(h5)
    assert model.config == RDNConfig(C=C, D=D, G=G, G0=G0, scale=scale, kernel_size=3, upscaling=upscaling)
    x = _test_image(7, 6, seed=3)
    want = _isr_reference(x.astype(np.float64), weights, C, D, scale, upscaling)
    with torch.no_grad():
        got = model(torch.from_numpy(x.transpose(2, 0, 1)[None].copy()))[0].numpy().transpose(1, 2, 0)
    assert got.shape == want.shape == (7 * scale, 6 * scale, 3)
    assert np.abs(got - want).max() < 1e-4
    onnx_path = tmp_path / "isr.onnx"
    assert isr_convert.main([str(h5), "-o", str(onnx_path)]) == 0
    card = json.loads(onnx_path.with_suffix(".json").read_text())
    assert card["architecture"]["params"]["D"] == D and card["export"]["parity"]["max_abs_diff"] < PARITY_TOL
    onnx_out = runner.run_rgb(runner.load_model(onnx_path, device="cpu"), x)
    assert np.abs(onnx_out - want).max() < 1e-4


# -- degradations and data ---------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(32, 32, 3), (41, 27, 3), (24, 40, 1)])
def test_degradations_deterministic_and_shape_preserving(shape: tuple[int, int, int]) -> None:
    img = _test_image(shape[0], shape[1])[:, :, :shape[2]]
    outs = []
    for seed in range(12):
        a = degrade.sharpen_degradation(img, np.random.default_rng(seed))
        b = degrade.sharpen_degradation(img, np.random.default_rng(seed))
        np.testing.assert_array_equal(a, b)
        assert a.shape == img.shape and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
        outs.append(a)
    assert not np.array_equal(outs[0], outs[1])
    assert degrade.gaussian_blur(img, 2.0).shape == img.shape
    assert degrade.defocus_blur(img, 3.0).shape == img.shape
    assert degrade.resize_blur(img, 2.5).shape == img.shape
    lr = degrade.bicubic_downscale(img, 2)
    assert lr.shape == (shape[0] // 2, shape[1] // 2, shape[2])
    # A blur removes detail: the blurred image is closer to its own blur than the original is.
    assert psnr(degrade.gaussian_blur(img, 1.5), img) < 40


def test_denoise_degradation_is_blind_deterministic_and_validation_fixed() -> None:
    img = _test_image(48, 40)
    levels, kinds_seen = [], set()
    for seed in range(40):
        a = degrade.denoise_degradation(img, np.random.default_rng(seed))
        np.testing.assert_array_equal(a, degrade.denoise_degradation(img, np.random.default_rng(seed)))
        assert a.shape == img.shape and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
        noise = a - img
        levels.append(float(noise.std()))
        # grey grain: the same noise in every channel
        kinds_seen.add("luminance" if np.median(np.abs(noise[..., 0] - noise[..., 1])) < 0.01 else "colour")
    assert min(levels) < 0.03 < 0.12 < max(levels) < 0.25  # blind: weak to strong noise
    assert kinds_seen == {"luminance", "colour"}
    # Signal-dependent noise is stronger on bright pixels than on dark ones.
    flat = np.concatenate([np.full((64, 64, 3), 0.1, np.float32), np.full((64, 64, 3), 0.8, np.float32)])
    noisy = degrade.signal_noise(flat, 0.1, np.random.default_rng(0))
    assert (noisy - flat)[64:].std() > 1.5 * (noisy - flat)[:64].std()
    # Validation: white Gaussian σ=25/255, the same for the same rng.
    grey = np.full((96, 96, 3), 0.5, np.float32)
    v = degrade.validation_noise(grey, np.random.default_rng(1))
    assert abs(float((v - grey).std()) - 25 / 255) < 0.003
    np.testing.assert_array_equal(v, degrade.validation_noise(grey, np.random.default_rng(1)))


def test_dejpeg_degradation_blocks_on_a_shifted_grid_and_validation_is_fixed() -> None:
    img = _test_image(64, 48)
    levels = []
    for seed in range(24):
        a = degrade.dejpeg_degradation(img, np.random.default_rng(seed))
        np.testing.assert_array_equal(a, degrade.dejpeg_degradation(img, np.random.default_rng(seed)))
        assert a.shape == img.shape and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
        levels.append(psnr(a, img))
    assert max(levels) - min(levels) > 3.0  # blind: low and high qualities
    # Some inputs are not JPEG'd (the net must learn to leave a clean image alone).
    rounded = np.round(img * 255) / 255
    assert any(np.array_equal(degrade.dejpeg_degradation(img, np.random.default_rng(seed)), rounded)
               for seed in range(60))
    # The grid moves with the offset: a shifted save is the save of the shifted image, not a crop of it.
    ramp = np.repeat(np.repeat(_test_image(8, 8), 8, axis=0), 8, axis=1)  # 64², steps on the 8-px grid
    aligned = degrade.jpeg_at(ramp, 30)
    shifted = degrade.jpeg_at(ramp, 30, offset=(4, 4))
    assert shifted.shape == ramp.shape and psnr(shifted, ramp) < psnr(aligned, ramp) - 1.0
    # Validation: JPEG q 20 at the crop's corner, the same every time.
    v = degrade.validation_jpeg(img)
    np.testing.assert_array_equal(v, degrade.jpeg(img, degrade.VALIDATION_JPEG_QUALITY))


def test_validation_split_is_by_name_and_disjoint(tmp_path: Path) -> None:
    files = [tmp_path / f"img{i:03d}.png" for i in range(200)]
    train, val = split_files(files, 0.1)
    assert set(train).isdisjoint(val) and len(train) + len(val) == 200
    assert 5 <= len(val) <= 40
    moved = [Path("/elsewhere") / p.name for p in files]
    assert [p.name for p in split_files(moved, 0.1)[1]] == [p.name for p in val]


# -- training ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    folder = tmp_path_factory.mktemp("tiny_images")
    for i in range(5):
        Image.fromarray((_test_image(36, 44, seed=i) * 255).astype(np.uint8)).save(folder / f"t{i}.png")
    return folder


def test_training_smoke_checkpoint_card_resume(tmp_path: Path, tiny_images: Path) -> None:
    from onnx_export import train

    ckpt = tmp_path / "rdn.pt"
    common = ["--model", "rdn", "--scale", "2", "--data", str(tiny_images), "--out", str(ckpt),
              "--batch", "2", "--patch", "8", "--val-every", "1", "--log-every", "1",
              "--C", "1", "--D", "2", "--G", "4", "--G0", "8", "--threads", "1"]
    assert train.main([*common, "--steps", "2"]) == 0
    card = json.loads(ckpt.with_suffix(".json").read_text())
    assert card["training"]["steps"] == 2
    assert card["architecture"]["params"] == {"C": 1, "D": 2, "G": 4, "G0": 8, "scale": 2,
                                              "kernel_size": 3, "upscaling": "shuffle", "input_skip": True}
    assert card["data"]["validation_images"] >= 1 and card["data"]["train_images"] >= 1
    assert np.isfinite(card["validation"]["last"]["psnr"])
    assert len(card["validation"]["history"]) == 2
    assert card["commands"][0].startswith("python -m onnx_export.train --model rdn")
    with pytest.raises(SystemExit):  # an existing checkpoint is never overwritten silently
        train.main([*common, "--steps", "3"])
    assert train.main([*common, "--steps", "3", "--resume"]) == 0
    state = torch.load(ckpt, weights_only=True)
    assert state["step"] == 3 and len(state["commands"]) == 2
    card = json.loads(ckpt.with_suffix(".json").read_text())
    assert card["training"]["steps"] == 3 and len(card["validation"]["history"]) == 3

    from onnx_export import export

    onnx_path = tmp_path / "rdn.onnx"
    assert export.main([str(ckpt), "-o", str(onnx_path)]) == 0
    exported_card = json.loads(onnx_path.with_suffix(".json").read_text())
    assert exported_card["training"]["steps"] == 3 and exported_card["runtime"]["scale"] == 2
    assert exported_card["export"]["parity"]["max_abs_diff"] < PARITY_TOL


def test_export_keeps_the_history_of_slim_initial_weights(tmp_path: Path, tiny_images: Path) -> None:
    """The shipped checkpoints keep only weights: a run started from one gets their story
    from their card (``--initial-card``)."""
    from onnx_export import export, train

    first = tmp_path / "first.pt"
    arch = ["--model", "rdn", "--scale", "2", "--data", str(tiny_images), "--batch", "2", "--patch", "8",
            "--val-every", "1", "--C", "1", "--D", "2", "--G", "4", "--G0", "8", "--threads", "1"]
    assert train.main([*arch, "--out", str(first), "--steps", "2"]) == 0
    assert export.main([str(first), "-o", str(tmp_path / "shipped" / "rdn_x2.onnx")]) == 0
    shipped_card = json.loads((tmp_path / "shipped" / "rdn_x2.json").read_text())
    slim = tmp_path / "slim.pt"
    torch.save({"model": torch.load(first, weights_only=True)["model"]}, slim)
    more = tmp_path / "more.pt"
    assert train.main([*arch, "--out", str(more), "--steps", "3", "--init-from", str(slim)]) == 0
    out = tmp_path / "new" / "rdn_x2.onnx"
    assert export.main([str(more), "-o", str(out), "--initial-card", str(tmp_path / "shipped" / "rdn_x2.json")]) == 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["commands"][0] == shipped_card["commands"][0]
    assert card["commands"][1] == f"# then, initialised from {slim}:" and "--init-from" in card["commands"][2]
    assert len(card["commands"]) == 3 and card["initialised_from"] == str(slim)
    assert card["training"]["steps_including_initial_weights"] == 2 + 3
    assert card["validation"]["history_of_initial_weights"] == shipped_card["validation"]["history"]


def test_initial_card_is_prepended_once_to_a_chain_of_initialisations() -> None:
    """Weights started from weights that were themselves initialised from others: the slim
    checkpoint's commands (with their own markers) come first in the training card, and the
    export's --initial-card must not add that chain a second time."""
    from onnx_export.export import with_initial_card

    initial = {"commands": ["train A", "# then, initialised from a.pt:", "train B"],
               "training": {"steps": 5, "steps_including_initial_weights": 12}, "validation": {"history": [1]}}
    card = {"commands": ["train A", "# then, initialised from a.pt:", "train B", "# then, initialised from b.pt:",
                         "train C", "train C --resume"], "training": {"steps": 4}}
    merged = with_initial_card(card, initial, "b.json")
    assert merged["commands"] == ["train A", "# then, initialised from a.pt:", "train B",
                                  "# then, initialised from b.pt:", "train C", "train C --resume"]
    assert merged["initialised_from"] == "b.pt" and merged["training"]["steps_including_initial_weights"] == 16


def test_a_deeper_rdn_grown_from_a_trained_one_starts_as_that_net(tmp_path: Path, tiny_images: Path) -> None:
    from onnx_export.models.rdn import deepen_state

    torch.manual_seed(0)
    small = RDN(RDNConfig(C=2, D=2, G=4, G0=8, scale=2, input_skip=True))
    for p in small.parameters():  # a "trained" net: no zero weights anywhere
        p.data.normal_(0, 0.1)
    deep = RDN(RDNConfig(C=2, D=5, G=4, G0=8, scale=2, input_skip=True))
    deep.load_state_dict(deepen_state(small.state_dict(), deep))
    x = torch.rand(1, 3, 12, 10)
    with torch.no_grad():
        assert torch.allclose(deep(x), small(x), atol=1e-6)
    # Training wakes the added blocks: the first step gives GFF_1's new columns a gradient
    # (they multiply the added blocks' non-zero outputs), the second the added LFFs.
    opt = torch.optim.Adam(deep.parameters(), lr=1e-3)
    deep(x).square().mean().backward()
    assert deep.gff_1.weight.grad[:, 16:].abs().sum() > 0
    opt.step()
    opt.zero_grad()
    deep(x).square().mean().backward()
    assert all(deep.rdbs[d].lff.weight.grad.abs().sum() > 0 for d in (2, 3, 4))
    with pytest.raises(ValueError, match="only D may differ"):
        deepen_state(small.state_dict(), RDN(RDNConfig(C=2, D=5, G=8, G0=8, scale=2)))
    with pytest.raises(ValueError, match="more than"):
        deepen_state(deep.state_dict(), small)

    # Through the trainer: --init-from a checkpoint with fewer blocks, --D more.
    arch = ["--model", "rdn", "--scale", "2", "--data", str(tiny_images), "--batch", "2", "--patch", "8",
            "--val-every", "1", "--C", "1", "--G", "4", "--G0", "8", "--threads", "1"]
    _assert_trainer_grows_without_change(tmp_path, arch, ["--D", "2"], ["--D", "3"])


def _assert_trainer_grows_without_change(tmp_path: Path, arch: list[str], small: list[str], big: list[str]) -> None:
    """Train ``small`` one step, then ``big`` --init-from it at learning rate 0: the grown net
    must validate exactly as the small one did."""
    from onnx_export import train

    first, grown = tmp_path / "first.pt", tmp_path / "grown.pt"
    assert train.main([*arch, *small, "--lr", "0", "--out", str(first), "--steps", "1"]) == 0
    assert train.main([*arch, *big, "--lr", "0", "--out", str(grown), "--steps", "1", "--init-from", str(first)]) == 0
    psnr_first = json.loads(first.with_suffix(".json").read_text())["validation"]["last"]["psnr"]
    psnr_grown = json.loads(grown.with_suffix(".json").read_text())["validation"]["last"]["psnr"]
    assert psnr_grown == pytest.approx(psnr_first, abs=1e-4)


def test_a_wider_unet_grown_from_a_trained_one_starts_as_that_net(tmp_path: Path, tiny_images: Path) -> None:
    from onnx_export.models.unet import UNet, UNetConfig, widen_state

    torch.manual_seed(0)
    narrow = UNet(UNetConfig(base=4, depth=2, max_channels=12))  # levels 4, 8, 12: the cap bites
    for p in narrow.parameters():  # a "trained" net: no zero weights anywhere
        p.data.normal_(0, 0.1)
    wide = UNet(UNetConfig(base=6, depth=2, max_channels=12))  # levels 6, 12, 12
    wide.load_state_dict(widen_state(narrow.state_dict(), wide))
    x = torch.rand(1, 3, 16, 12)
    with torch.no_grad():
        assert torch.allclose(wide(x), narrow(x), atol=1e-6)
    # Training wakes the added channels: the head's new columns get a gradient at once (they
    # multiply the new channels' non-zero activations), the new channels after the first step.
    opt = torch.optim.Adam(wide.parameters(), lr=1e-3)
    wide(x).square().mean().backward()
    assert wide.head.weight.grad[:, 4:].abs().sum() > 0
    opt.step()
    opt.zero_grad()
    wide(x).square().mean().backward()
    assert wide.stem.weight.grad[4:].abs().sum() > 0 and wide.fuses[0].weight.grad[:4, 4:6].abs().sum() > 0
    # A higher channel cap too: the source's levels are read from its tensors (4, 8, 12 → 6, 12, 18).
    wider_cap = UNet(UNetConfig(base=6, depth=2, max_channels=18))
    wider_cap.load_state_dict(widen_state(narrow.state_dict(), wider_cap))
    with torch.no_grad():
        assert torch.allclose(wider_cap(x), narrow(x), atol=1e-6)
    with pytest.raises(ValueError, match="narrower net of the same depth"):
        widen_state(wide.state_dict(), narrow)
    with pytest.raises(ValueError, match="narrower net of the same depth"):
        widen_state(narrow.state_dict(), UNet(UNetConfig(base=6, depth=3, max_channels=12)))

    # Through the trainer: --init-from a checkpoint with a smaller --base.
    arch = ["--model", "unet", "--data", str(tiny_images), "--batch", "2", "--patch", "16", "--val-every", "1",
            "--depth", "2", "--threads", "1"]
    _assert_trainer_grows_without_change(tmp_path, arch, ["--base", "4"], ["--base", "6"])


def test_training_smoke_unet_with_patchgan(tmp_path: Path, tiny_images: Path) -> None:
    from onnx_export import train

    ckpt = tmp_path / "sharpen.pt"
    net = ["--batch", "2", "--patch", "16", "--base", "4", "--depth", "2", "--max-channels", "8", "--threads", "1"]
    assert train.main(["--model", "unet", "--data", str(tiny_images), "--out", str(ckpt), "--steps", "2", *net,
                       "--gan-weight", "0.01", "--val-every", "2", "--noise-prob", "0.1"]) == 0
    state = torch.load(ckpt, weights_only=True)
    assert state["disc"] is not None and state["step"] == 2
    card = json.loads(ckpt.with_suffix(".json").read_text())
    assert card["task"] == "sharpen" and card["architecture"]["size_multiple"] == 4
    assert "noise σ ≤ 0.02 (p 0.1); JPEG q 70–95 (p 0.3)" in card["training"]["degradation"]
    # A run started from a full checkpoint's weights keeps how those weights were made.
    tuned = tmp_path / "tuned.pt"
    assert train.main(["--model", "unet", "--data", str(tiny_images), "--out", str(tuned), "--steps", "1", *net,
                       "--init-from", str(ckpt)]) == 0
    commands = json.loads(tuned.with_suffix(".json").read_text())["commands"]
    assert commands[0] == card["commands"][0] and commands[1] == f"# then, initialised from {ckpt}:"
    assert "--init-from" in commands[2] and len(commands) == 3


def test_training_a_denoise_unet_records_its_task(tmp_path: Path, tiny_images: Path) -> None:
    from onnx_export import export, train

    ckpt = tmp_path / "denoise.pt"
    net = ["--data", str(tiny_images), "--batch", "2", "--patch", "16", "--base", "4", "--depth", "2",
           "--max-channels", "8", "--threads", "1", "--val-every", "2"]
    assert train.main(["--model", "unet", "--task", "denoise", "--out", str(ckpt), "--steps", "2", *net]) == 0
    card = json.loads(ckpt.with_suffix(".json").read_text())
    assert card["task"] == "denoise" and torch.load(ckpt, weights_only=True)["task"] == "denoise"
    assert "white Gaussian" in card["training"]["degradation"]
    # Validation is σ=25 noise: the untrained net (the identity) scores the noisy input's PSNR.
    assert card["validation"]["last"]["baseline_psnr"] == pytest.approx(20.2, abs=0.6)
    with pytest.raises(SystemExit, match="trained for denoise"):
        train.main(["--model", "unet", "--task", "sharpen", "--out", str(ckpt), "--steps", "3", "--resume", *net])
    assert train.main(["--model", "unet", "--out", str(ckpt), "--steps", "3", "--resume", *net]) == 0
    assert json.loads(ckpt.with_suffix(".json").read_text())["task"] == "denoise"
    with pytest.raises(SystemExit):  # argparse: an RDN only upscales
        train.main(["--model", "rdn", "--task", "denoise", "--out", str(tmp_path / "x.pt"), "--steps", "1", *net[:2]])
    onnx_path = tmp_path / "denoise.onnx"
    assert export.main([str(ckpt), "-o", str(onnx_path)]) == 0
    exported = json.loads(onnx_path.with_suffix(".json").read_text())
    assert exported["task"] == exported["runtime"]["task"] == "denoise"


def test_training_a_dejpeg_unet_from_a_denoise_one(tmp_path: Path, tiny_images: Path) -> None:
    """The JPEG-artefact net: its own task in checkpoint and card, its degradation described,
    validation on JPEG q 20, started from a blind denoise net's weights, exported as dejpeg."""
    from onnx_export import export, train

    net = ["--model", "unet", "--data", str(tiny_images), "--batch", "2", "--patch", "16", "--base", "4",
           "--depth", "2", "--max-channels", "8", "--threads", "1", "--val-every", "2"]
    assert train.main([*net, "--task", "denoise", "--out", str(tmp_path / "denoise.pt"), "--steps", "1"]) == 0
    ckpt = tmp_path / "dejpeg.pt"
    assert train.main([*net, "--task", "dejpeg", "--out", str(ckpt), "--steps", "2", "--lr", "0",
                       "--init-from", str(tmp_path / "denoise.pt")]) == 0
    card = json.loads(ckpt.with_suffix(".json").read_text())
    assert card["task"] == "dejpeg" and torch.load(ckpt, weights_only=True)["task"] == "dejpeg"
    assert "JPEG q 8–98" in card["training"]["degradation"] and "validation: JPEG q 20" in card["training"]["degradation"]
    start = torch.load(tmp_path / "denoise.pt", weights_only=True)["model"]
    for key, value in torch.load(ckpt, weights_only=True)["model"].items():  # lr 0: still the denoise net
        torch.testing.assert_close(value, start[key])
    onnx_path = tmp_path / "dejpeg.onnx"
    assert export.main([str(ckpt), "-o", str(onnx_path)]) == 0
    exported = json.loads(onnx_path.with_suffix(".json").read_text())
    assert exported["task"] == exported["runtime"]["task"] == "dejpeg"
    assert runner.load_model(onnx_path, "cpu").input_channels == 3


def test_a_denoise_unet_that_reads_the_noise_level_grows_from_a_blind_one_and_exports(
        tmp_path: Path, tiny_images: Path) -> None:
    """--in-channels 4: the input carries the level the engine measures (what the blind probe
    net removes: the run-time input); widened from a blind net, whose zero-head identity it
    keeps; exported with its card."""
    from engine.noise_level import LEVEL_UNIT, probe_noise_level
    from onnx_export import export, train

    probe_path = SHIPPED / "noise_probe.onnx"
    probe = runner.load_model(probe_path, "cpu")
    noisy = degrade.validation_noise(_test_image(48, 40), np.random.default_rng(1))
    net_input = degrade.denoise_input(noisy, probe)
    np.testing.assert_array_equal(net_input[..., :3], noisy)
    np.testing.assert_allclose(net_input[..., 3], probe_noise_level(noisy, probe) / LEVEL_UNIT)
    assert 0.3 < float(net_input[0, 0, 3]) < 0.6  # σ=25/255 would read 0.5
    data = PatchData([tiny_images], "denoise", patch=16, in_channels=4, level_probe=probe_path)
    batch = data.batch(3, np.random.default_rng(0))
    assert batch.source.shape == (3, 4, 16, 16) and batch.target.shape == (3, 3, 16, 16)
    levels = batch.source[:, 3]
    assert np.all(levels == levels[:, :1, :1]) and levels.min() > 0  # one plane per patch
    for _name, src, _tgt in data.validation(multiple=8):
        assert src.shape[2] == 4

    net = ["--model", "unet", "--task", "denoise", "--data", str(tiny_images), "--batch", "2", "--patch", "16",
           "--base", "4", "--depth", "2", "--max-channels", "8", "--threads", "1", "--val-every", "1"]
    blind, ckpt = tmp_path / "blind.pt", tmp_path / "denoise.pt"
    assert train.main([*net, "--lr", "0", "--out", str(blind), "--steps", "1"]) == 0
    assert train.main([*net, "--in-channels", "4", "--lr", "0", "--out", str(ckpt), "--steps", "1",
                       "--init-from", str(blind), "--level-probe", str(probe_path)]) == 0
    card = json.loads(ckpt.with_suffix(".json").read_text())
    assert card["architecture"]["params"]["in_channels"] == 4 and "noise level" in card["architecture"]["input"]
    last = card["validation"]["last"]  # the identity, grown: still scores the noisy input
    assert last["psnr"] == pytest.approx(last["baseline_psnr"], abs=1e-4)
    onnx_path = tmp_path / "denoise.onnx"
    assert export.main([str(ckpt), "-o", str(onnx_path)]) == 0
    exported = json.loads(onnx_path.with_suffix(".json").read_text())
    assert exported["runtime"]["input_channels"] == 4 and exported["runtime"]["task"] == "denoise"
    with pytest.raises(SystemExit):  # argparse: only a denoise net takes the level
        train.main([*net[:3], "sharpen", *net[4:], "--in-channels", "4", "--out", str(tmp_path / "x.pt"),
                    "--steps", "1"])


def test_an_inpainting_unet_trains_on_the_hole_grows_from_a_3_channel_net_and_exports(
        tmp_path: Path, tiny_images: Path) -> None:
    from onnx_export import export, train
    from onnx_export.models.unet import UNet, UNetConfig, widen_state

    # The hole channel is read with zero weights: the grown net computes the source net on RGB.
    torch.manual_seed(0)
    rgb_net = UNet(UNetConfig(base=4, depth=2, max_channels=8))
    for p in rgb_net.parameters():
        p.data.normal_(0, 0.1)
    hole_net = UNet(UNetConfig(base=4, depth=2, max_channels=8, in_channels=4))
    hole_net.load_state_dict(widen_state(rgb_net.state_dict(), hole_net))
    x = torch.rand(1, 4, 16, 12)
    with torch.no_grad():
        assert torch.allclose(hole_net(x), rgb_net(x[:, :3]), atol=1e-6)

    net = ["--model", "unet", "--data", str(tiny_images), "--batch", "2", "--patch", "16", "--base", "4",
           "--depth", "2", "--max-channels", "8", "--threads", "1", "--val-every", "1"]
    rgb_ckpt, ckpt = tmp_path / "denoise.pt", tmp_path / "inpaint.pt"
    assert train.main([*net, "--task", "denoise", "--lr", "0", "--out", str(rgb_ckpt), "--steps", "1"]) == 0
    assert train.main([*net, "--task", "inpaint", "--lr", "0", "--out", str(ckpt), "--steps", "1",
                       "--init-from", str(rgb_ckpt)]) == 0
    card = json.loads(ckpt.with_suffix(".json").read_text())
    assert card["task"] == "inpaint" and card["architecture"]["params"]["in_channels"] == 4
    assert card["validation"]["last"]["metric"] == "RGB PSNR in the hole"
    # A zero-head net returns the pre-fill; grown from a net whose head is zero (untrained, lr 0)
    # it still does: the validation scores the smooth fill's own PSNR in the hole.
    assert card["validation"]["last"]["psnr"] == pytest.approx(card["validation"]["last"]["baseline_psnr"], abs=1e-4)
    # One training step with a weighted loss moves the net, and only the hole counts.
    assert train.main([*net, "--out", str(ckpt), "--steps", "3", "--resume"]) == 0
    onnx_path = tmp_path / "inpaint.onnx"
    assert export.main([str(ckpt), "-o", str(onnx_path)]) == 0
    exported = json.loads(onnx_path.with_suffix(".json").read_text())
    assert exported["runtime"]["task"] == "inpaint" and exported["runtime"]["input_channels"] == 4
    assert exported["export"]["parity"]["max_abs_diff"] < 1e-4


def test_sharpen_mix_probabilities_touch_training_only(tiny_images: Path) -> None:
    img = _test_image(32, 40)
    blur_only = np.clip(degrade.random_blur(img, np.random.default_rng(3)), 0.0, 1.0)
    np.testing.assert_array_equal(degrade.sharpen_degradation(img, np.random.default_rng(3), 0.0, 0.0), blur_only)
    noisy = degrade.sharpen_degradation(img, np.random.default_rng(3), 1.0, 0.0)
    assert np.std(noisy - blur_only) > 1e-3
    default = PatchData([tiny_images], "sharpen", patch=16)
    clean = PatchData([tiny_images], "sharpen", patch=16, noise_probability=0.0, jpeg_probability=0.0)
    for (_, a, _), (_, b, _) in zip(default.validation(8), clean.validation(8), strict=True):
        np.testing.assert_array_equal(a, b)  # validation keeps the default mix


def test_blur_mix_chooses_the_blur_kind() -> None:
    from onnx_export import train

    img = _test_image(32, 40)
    # All weight on resize blur: the draw is a resize blur (the same rng stream after the kind).
    resize_only = degrade.random_blur(img, np.random.default_rng(5), (0.0, 0.0, 1.0))
    rng = np.random.default_rng(5)
    rng.choice(degrade.BLUR_KINDS, p=[0.0, 0.0, 1.0])
    factor = float(rng.uniform(1.5, 3.0))
    filters = [degrade._RESAMPLE.BICUBIC, degrade._RESAMPLE.BILINEAR, degrade._RESAMPLE.BOX]
    np.testing.assert_array_equal(resize_only, degrade.resize_blur(img, factor, filters[int(rng.integers(3))]))
    gaussian_only = degrade.random_blur(img, np.random.default_rng(5), (1.0, 0.0, 0.0))
    assert not np.array_equal(gaussian_only, resize_only)
    assert train._blur_mix("2,1,2") == pytest.approx((0.4, 0.2, 0.4))
    for bad in ("1,2", "1,-1,1", "0,0,0", "a,b,c"):
        with pytest.raises(argparse.ArgumentTypeError):
            train._blur_mix(bad)


def test_noise_mix_and_jpeg_share_choose_the_denoise_degradation() -> None:
    from onnx_export import train

    img = _test_image(48, 40)
    for seed in range(6):
        # All weight on grey grain: the same noise in every channel, whatever the draw.
        grain = degrade.denoise_degradation(img, np.random.default_rng(seed), (0, 0, 1, 0), 0.0) - img
        assert np.median(np.abs(grain[..., 0] - grain[..., 1])) < 0.01
        # Always JPEG'd: 8-bit values, and not the un-JPEG'd draw.
        jpegged = degrade.denoise_degradation(img, np.random.default_rng(seed), (1, 0, 0, 0), 1.0)
        plain = degrade.denoise_degradation(img, np.random.default_rng(seed), (1, 0, 0, 0), 0.0)
        np.testing.assert_allclose(jpegged * 255, np.round(jpegged * 255), atol=1e-3)
        assert not np.array_equal(jpegged, plain)
    # The defaults are the mix every run drew before session 21 (the noise probe's).
    np.testing.assert_array_equal(degrade.denoise_degradation(img, np.random.default_rng(3)),
                                  degrade.denoise_degradation(img, np.random.default_rng(3), degrade.NOISE_MIX,
                                                              degrade.DENOISE_JPEG_PROBABILITY))
    assert train._noise_mix("4,2,1,3") == pytest.approx((0.4, 0.2, 0.1, 0.3))
    for bad in ("1,2,3", "1,-1,1,1", "0,0,0,0"):
        with pytest.raises(argparse.ArgumentTypeError):
            train._noise_mix(bad)
    args = train.parse_args(["--model", "unet", "--task", "denoise", "--data", "x", "--out", "y.pt", "--steps", "1",
                             "--noise-mix", "1,1,1,1", "--denoise-jpeg-prob", "0.35"])
    assert args.noise_mix == pytest.approx((0.25,) * 4) and args.denoise_jpeg_prob == 0.35
    assert "shares 0.25, 0.25, 0.25, 0.25" in train.degradation_text(args, "denoise")
    assert "JPEG q 75–95 (p 0.35)" in train.degradation_text(args, "denoise")
    with pytest.raises(SystemExit):
        train.parse_args(["--model", "unet", "--task", "denoise", "--data", "x", "--out", "y.pt", "--steps", "1",
                          "--denoise-jpeg-prob", "1.5"])


def test_patch_data_shapes(tiny_images: Path) -> None:
    data = PatchData([tiny_images], "upscale", patch=8, scale=2)
    batch = data.batch(3, np.random.default_rng(0))
    assert batch.source.shape == (3, 3, 8, 8) and batch.target.shape == (3, 3, 16, 16)
    sharpen = PatchData([tiny_images], "sharpen", patch=16)
    b = sharpen.batch(2, np.random.default_rng(0))
    assert b.source.shape == b.target.shape == (2, 3, 16, 16)
    for _name, src, tgt in sharpen.validation(multiple=8):
        assert src.shape == tgt.shape and src.shape[0] % 8 == 0


# -- the shipped nets ----------------------------------------------------------------------------

SHIPPED = REPO / "engine" / "models"


@pytest.mark.parametrize("name", ["rdn_x2", "rdn_x4", "sharpen", "noise_probe", "denoise", "inpaint", "dejpeg"])
def test_weight_checkpoints_are_the_shipped_nets(name: str) -> None:
    """onnx_export/checkpoints/NAME.pt (what --init-from starts a longer run from) holds the
    weights of the shipped NAME.onnx, not an older or newer net."""
    from onnx_export.models import build_model

    model = runner.load_model(SHIPPED / f"{name}.onnx", "cpu")
    arch = model.card["architecture"]
    net = build_model(arch["kind"], arch["params"]).eval()
    net.load_state_dict(torch.load(REPO / "onnx_export" / "checkpoints" / f"{name}.pt", weights_only=True)["model"])
    x = np.random.default_rng(0).random((1, model.input_channels, 32, 48), dtype=np.float32)  # a multiple of every size rule
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    assert np.abs(model.infer(x) - want).max() < PARITY_TOL


def test_shipped_nets_beat_their_baselines(shared_data: Path) -> None:
    """On a photo no net was trained on (F16, 96² centre): sharpen lifts a σ=1.6 Gaussian blur,
    ×2 beats bicubic (Y-PSNR, the SR protocol), denoise cleans σ=25 noise, each by a clear margin."""
    from PIL import Image

    from engine.noise_level import level_plane, probe_noise_level

    with Image.open(shared_data / "dip" / "denoising" / "F16_GT.png") as im:
        photo = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    y, x = (photo.shape[0] - 96) // 2, (photo.shape[1] - 96) // 2
    truth = photo[y:y + 96, x:x + 96]
    blurred = np.clip(degrade.gaussian_blur(truth, 1.6), 0.0, 1.0)
    sharpened = runner.run_model(runner.load_model(SHIPPED / "sharpen.onnx", "cpu"), blurred)
    assert psnr(sharpened, truth) > psnr(blurred, truth) + 1.5
    small = degrade.bicubic_downscale(truth, 2)
    enlarged = runner.run_model(runner.load_model(SHIPPED / "rdn_x2.onnx", "cpu"), small)
    bicubic = degrade.bicubic_upscale(small, 2)
    assert psnr(enlarged, truth, shave=2, y_only=True) > psnr(bicubic, truth, shave=2, y_only=True) + 1.0
    noisy = degrade.validation_noise(truth, np.random.default_rng(0))
    probe = runner.load_model(SHIPPED / "noise_probe.onnx", "cpu")
    assert psnr(runner.run_model(probe, noisy), truth) > psnr(noisy, truth) + 6.0  # the blind net
    level = probe_noise_level(noisy, probe)
    assert 0.8 * 25 / 255 < level < 25 / 255  # it removes most of the noise (and a little detail)
    denoised = runner.run_model(runner.load_model(SHIPPED / "denoise.onnx", "cpu"), noisy,
                                guide=level_plane(level, 96, 96))
    assert psnr(denoised, truth) > psnr(noisy, truth) + 6.0


def test_passes_average_the_net_over_grid_symmetries(exported) -> None:
    from engine.symmetry import grid_symmetry

    path, _card, net = exported["rdn_x2"]
    model = runner.load_model(path, device="cpu")
    image = _test_image(40, 56)
    averaged = runner.run_rgb(model, image, tile=1024, passes=8)
    singles = [grid_symmetry(runner.run_rgb(model, np.ascontiguousarray(grid_symmetry(image, k)), tile=1024),
                             k, inverse=True) for k in range(8)]
    np.testing.assert_allclose(averaged, np.mean(singles, axis=0), rtol=0, atol=1e-5)
    assert not np.allclose(singles[0], singles[5], atol=1e-4)  # the orientations really differ
    np.testing.assert_array_equal(runner.run_rgb(model, image, tile=1024, passes=1),
                                  runner.run_rgb(model, image, tile=1024))
    # Tiled (each tile averaged on its own) still matches untiled away from the borders.
    tiled = runner.run_rgb(model, image, tile=1, passes=2)
    whole = runner.run_rgb(model, image, tile=1024, passes=2)
    assert np.abs(tiled - whole)[16:-16, 16:-16].max() < 1 / 255
    for bad in (0, 3, 16, True):
        with pytest.raises(BadInput, match="passes"):
            runner.run_rgb(model, image, passes=bad)


def test_eight_passes_help_the_shipped_nets(shared_data: Path) -> None:
    """Measured on the held-out split (README "Passes"): 8 passes add ~0.1 dB to both nets."""
    from PIL import Image

    with Image.open(shared_data / "dip" / "denoising" / "F16_GT.png") as im:
        photo = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    y, x = (photo.shape[0] - 96) // 2, (photo.shape[1] - 96) // 2
    truth = photo[y:y + 96, x:x + 96]
    blurred = np.clip(degrade.gaussian_blur(truth, 1.6), 0.0, 1.0)
    sharpen = runner.load_model(SHIPPED / "sharpen.onnx", "cpu")
    one, eight = (psnr(runner.run_model(sharpen, blurred, passes=p), truth) for p in (1, 8))
    assert eight > one + 0.03
    small = degrade.bicubic_downscale(truth, 2)
    rdn = runner.load_model(SHIPPED / "rdn_x2.onnx", "cpu")
    one, eight = (psnr(runner.run_model(rdn, small, passes=p), truth, shave=2, y_only=True) for p in (1, 8))
    assert eight > one + 0.03
