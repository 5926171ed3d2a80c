"""Decompose on images larger than its working side (engine/dip/full_resolution.py): the split
is fitted on a reduced copy and carried to full size. Small images and a small working side
stand in for a photo and the default 256 (CPU)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from engine import budget
from engine.dip import doubledip, full_resolution
from engine.errors import BadInput, Cancelled
from engine.ops import estimate_seconds, run_op
from tests.test_decompose import SMALL_NETS, _crop, _psnr

unit = st.floats(0.0, 1.0, width=32)


@settings(max_examples=40, deadline=None)
@given(arrays(np.float32, (6, 5, 3), elements=st.floats(-0.5, 0.5, width=32)),
       arrays(np.float32, (6, 5, 1), elements=unit), arrays(np.float32, (6, 5, 1), elements=unit))
def test_split_residual_adds_up_to_the_residual(residual, weight, share) -> None:
    first, second = full_resolution.split_residual(residual, weight, share)
    denominator = weight * share + (1 - weight) * (1 - share)
    exact = np.broadcast_to(denominator >= full_resolution.MIN_DIVISOR, residual.shape)
    np.testing.assert_allclose((weight * first + (1 - weight) * second)[exact], residual[exact], atol=1e-5)
    # The share decides who gets it: all of it to the first layer when share = 1.
    ones = np.ones_like(weight)
    first, second = full_resolution.split_residual(residual, 0.5 * ones, ones)
    np.testing.assert_allclose(first, 2 * residual, atol=1e-6)
    np.testing.assert_array_equal(second, 0 * residual)


def test_working_shape_keeps_small_images_and_scales_the_longer_side() -> None:
    assert budget.decompose_working_shape(300, 200, 384) == (300, 200)
    assert budget.decompose_working_shape(3000, 4000, 384) == (288, 384)
    assert budget.decompose_working_shape(20, 4000, 384) == (8, 384)  # never below 8 px


def _true_layers_carried(mode: str, factor: int, size: int = 96):
    """(full-size truth, the carried layers) when the split of the reduced copy is exact."""
    a, b = _crop("dip/denoising/F16_GT.png", size), _crop("dip/inpainting/kate.png", size)
    work = (size // factor, size // factor)
    small = lambda x: full_resolution.resized(x, work)  # noqa: E731
    if mode == "dehaze":
        t = np.linspace(0.2, 0.9, size, dtype=np.float32)[:, None, None] * np.ones((1, size, 1), np.float32)
        airlight = np.array([0.85, 0.87, 0.9], np.float32)
        hazy = (a * t + airlight * (1 - t)).astype(np.float32)
        layers = full_resolution.carried("dehaze", {"dehazed": small(a), "transmission": small(t)}, airlight,
                                         hazy, small(hazy))
        return a, layers, hazy
    weight = np.full((size, size, 1), 0.3, np.float32)
    mix = (weight * a + (1 - weight) * b).astype(np.float32)
    layers = full_resolution.carried("transparency", {"reflection": small(a), "transmission": small(b),
                                                      "weight": small(weight)}, None, mix, small(mix))
    return (a, b), layers, mix


@pytest.mark.parametrize("factor", [2, 4])
def test_carrying_an_exact_split_gives_back_the_detail_the_copy_lost(factor: int) -> None:
    """Given the true layers at the reduced size, the carried layers beat the plain enlargement
    of those layers, and recombine into the full image."""
    truth, layers, hazy = _true_layers_carried("dehaze", factor)
    plain = full_resolution.resized(full_resolution.resized(truth, (96 // factor,) * 2), (96, 96))
    assert _psnr(layers["dehazed"], truth) > _psnr(plain, truth) + 6
    t = layers["transmission"]
    airlight = np.array([0.85, 0.87, 0.9], np.float32)
    assert _psnr(t * layers["dehazed"] + (1 - t) * airlight, hazy) > 45

    (reflection, transmission), layers, mix = _true_layers_carried("transparency", factor)
    for name, layer_truth in (("reflection", reflection), ("transmission", transmission)):
        plain = full_resolution.resized(full_resolution.resized(layer_truth, (96 // factor,) * 2), (96, 96))
        assert _psnr(layers[name], layer_truth) > _psnr(plain, layer_truth) + 2
    w = layers["weight"]
    assert _psnr(w * layers["reflection"] + (1 - w) * layers["transmission"], mix) > 40


def test_segment_mask_edge_lands_on_the_full_images_edge() -> None:
    """The enlarged mask's edge is snapped to the full image's colour edge: a disc of one
    photo in another, split exactly on a 4× smaller copy, keeps its outline at full size."""
    size = 128
    yy, xx = np.mgrid[:size, :size] / size
    truth = (yy - 0.5) ** 2 + (xx - 0.45) ** 2 < 0.3**2
    inner, outer = _crop("dip/sr/zebra_GT.png", size), _crop("dip/inpainting/kate.png", size)
    image = np.where(truth[..., None], inner, outer).astype(np.float32)
    work = (32, 32)
    small_mask = (full_resolution.resized(truth.astype(np.float32), work) > 0.5).astype(np.float32)[..., None]
    small = {"foreground": full_resolution.resized(inner, work), "background": full_resolution.resized(outer, work),
             "mask": small_mask}
    plain = full_resolution.carried("segment", small, None, image, full_resolution.resized(image, work))
    snapped = full_resolution.carried("segment", small, None, image, full_resolution.resized(image, work),
                                      snap_mask=doubledip._mask_snapped_to_colour_edges)

    def iou(layers) -> float:
        found = layers["mask"][..., 0] > 0.5
        return float((found & truth).sum() / (found | truth).sum())

    assert iou(snapped) > iou(plain)
    assert iou(snapped) > 0.98
    # The object's own detail (away from the edge, where the enlarged mask is soft).
    inside = (yy - 0.5) ** 2 + (xx - 0.45) ** 2 < 0.25**2
    assert _psnr(snapped["foreground"][inside], image[inside]) > 40


@pytest.mark.parametrize("mode", doubledip.MODES)
def test_a_layer_larger_than_the_working_side_comes_back_full_size_and_recombines(mode: str) -> None:
    image = _crop("dip/inpainting/kate.png", 160)[:, :128]  # 160×128, fitted at 80×64
    hint = np.zeros(image.shape[:2], bool)
    hint[50:110, 30:100] = True
    fitted: list[tuple[np.ndarray, doubledip.Decomposition]] = []
    original = doubledip._fit_decomposition

    def recording(image, *args, **kwargs):
        fitted.append((image, original(image, *args, **kwargs)))
        return fitted[-1][1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(doubledip, "_fit_decomposition", recording)
        result = doubledip.decompose(image, mode, hint if mode in ("segment", "watermark") else None,
                                     iterations=30, device="cpu", nets=SMALL_NETS, working_side=80)
    ((small_image, small_result),) = fitted
    # (Watermark fits its box and margin, reduced to the working side.)
    assert small_image.shape == ((80, 64, 3) if mode != "watermark" else (80, 79, 3))
    for name, layer in result.layers.items():
        assert layer.shape[:2] == image.shape[:2], name
        assert layer.dtype == np.float32 and layer.min() >= 0 and layer.max() <= 1, name
    # The residual went back into the layers: they recombine into the image, better than the
    # fit's own layers (30 iterations) into the copy; closely but where a layer had to be
    # clipped to [0, 1] (dehaze: a dark pixel under thin haze) or the mask's edge moved.
    own = _psnr(np.clip(small_result.composite(), 0, 1), small_image)
    carried = _psnr(np.clip(result.composite(), 0, 1), image)
    assert carried > own
    assert carried > 30 or mode == "dehaze"


def test_watermark_is_fitted_on_its_box_and_margin_and_the_rest_is_the_image() -> None:
    image = _crop("dip/inpainting/kate.png", 256)
    box = np.zeros((256, 256), bool)
    box[100:130, 90:150] = True  # 60×30: with its 32 px margins 124×94, under the working side
    yy, xx = np.mgrid[:256, :256]
    opacity = np.where(box & (((xx // 3) % 3 == 0) | ((yy // 3) % 4 == 0)), 0.5, 0.0)[..., None]
    marked = (opacity * 1.0 + (1 - opacity) * image).astype(np.float32)
    fitted: list[tuple[int, ...]] = []
    original = doubledip._fit_decomposition

    def recording(image, *args, **kwargs):
        fitted.append(image.shape)
        return original(image, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(doubledip, "_fit_decomposition", recording)
        result = doubledip.decompose(marked, "watermark", box, iterations=250, device="cpu", nets=SMALL_NETS,
                                     working_side=128)
    assert fitted == [(94, 124, 3)]
    clean, mask = result.layers["clean"], result.layers["mask"]
    assert clean.shape == marked.shape and mask.shape == (256, 256, 1)
    window = np.zeros((256, 256), bool)
    window[68:162, 58:182] = True
    np.testing.assert_array_equal(clean[~window], marked[~window])
    assert not mask[~window].any()
    assert _psnr(clean[box], image[box]) > _psnr(marked[box], image[box]) + 3


def test_previews_and_a_cancelled_runs_layers_are_full_size() -> None:
    image = _crop("dip/denoising/F16_GT.png", 128)
    shown: list[dict[str, np.ndarray]] = []
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 40

    with pytest.MonkeyPatch.context() as patch:
        import functools

        patch.setattr(doubledip, "fit_generators", functools.partial(doubledip.fit_generators, preview_interval_s=0.0))
        with pytest.raises(Cancelled) as raised:
            doubledip.decompose(image, "dehaze", iterations=100000, device="cpu", nets=SMALL_NETS,
                                working_side=64, cancel_requested=cancel, preview=shown.append)
    partial = raised.value.partial
    assert partial is not None and partial.layers["dehazed"].shape == (128, 128, 3)
    assert shown and all(layers["dehazed"].shape == (128, 128, 3) for layers in shown)


def test_working_side_is_checked_and_reaches_the_op() -> None:
    image = _crop("dip/denoising/F16_GT.png", 96)
    with pytest.raises(BadInput, match="working side"):
        doubledip.decompose(image, "dehaze", iterations=5, device="cpu", working_side=10)
    with pytest.raises(BadInput, match="working_side"):
        run_op("decompose", image, None, {"mode": "dehaze", "working_side": -1})
    (dehazed, *_) = [layer for layer in run_op("decompose", image, None,
                                               {"mode": "dehaze", "iterations": 5, "device": "cpu",
                                                "preset": "fast", "working_side": 64})
                     if layer.role == "dehazed"]
    assert dehazed.pixels.shape == (96, 96, 3)


def test_estimates_follow_the_working_copy() -> None:
    def estimate(side: int, working_side: int = 0, iterations: int = 0) -> float | None:
        params = {"mode": "dehaze", "device": "cpu", "preset": "fast", "iterations": iterations,
                  "working_side": working_side}
        return estimate_seconds("decompose", params, side, side)

    # A 4000² photo is fitted at 256²: the fit's minutes, and seconds per megapixel to carry it.
    carry = doubledip.CPU_SECONDS_CARRY_PER_MEGAPIXEL["dehaze"] * 16
    assert estimate(4000) == pytest.approx(estimate(256) + carry, abs=0.2)
    # A smaller working copy: each iteration is cheaper (an automatic run spends the CPU's
    # time budget on more of them).
    assert estimate(4000, working_side=128, iterations=500) < estimate(4000, iterations=500)


def test_memory_need_is_the_working_copys_fit_plus_the_full_size_copies(monkeypatch) -> None:
    params = {"mode": "segment", "device": "cpu", "preset": "auto", "working_side": 0}
    need = budget.working_bytes("decompose", params, 3000, 4000)
    fit = budget.DECOMPOSE_FIT_BYTES_PER_PIXEL["segment"] * 192 * 256
    assert need == budget.TORCH_BASE_BYTES + fit + budget.DECOMPOSE_IMAGE_BYTES_PER_PIXEL * 3000 * 4000
    # A larger working side costs more; two nets (dehaze) less than three.
    assert budget.working_bytes("decompose", {**params, "working_side": 1024}, 3000, 4000) > need
    assert budget.working_bytes("decompose", {**params, "mode": "dehaze"}, 3000, 4000) < need
    monkeypatch.setenv(budget.BUDGET_ENV, "1000")
    with pytest.raises(BadInput, match=r"decompose on the image \(4000×3000 pixels\) needs about 3\.\d GB.*"
                                       r"smaller working size"):
        budget.check("decompose", params, (3000, 4000, 3), None)
    budget.check("decompose", params, (96, 128, 3), None)  # a small one fits


def test_progress_covers_the_carry_and_ends_at_one() -> None:
    image = _crop("dip/denoising/F16_GT.png", 96)
    reports: list[tuple[float, str]] = []
    doubledip.decompose(image, "dehaze", iterations=5, device="cpu", nets=SMALL_NETS, working_side=64,
                        progress=lambda fraction, text: reports.append((fraction, text)))
    fractions = [fraction for fraction, _ in reports]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    carry = [text for fraction, text in reports if "carrying the layers to 96×96" in text]
    assert carry and all(fraction <= doubledip.FIT_SHARE for fraction, _ in reports[:-1])


def test_two_shots_larger_than_the_working_side_are_solved_at_full_size() -> None:
    from tests.test_decompose import _two_synthetic_layers

    bands, discs = _two_synthetic_layers(128)
    first = (0.5 * bands + 0.5 * discs).astype(np.float32)
    second = (0.7 * bands + 0.3 * discs).astype(np.float32)
    result = doubledip.decompose(first, "transparency", second=second, iterations=150, device="cpu",
                                 nets=SMALL_NETS, working_side=64)
    layers = result.layers
    assert {name: layer.shape for name, layer in layers.items()} == {
        "transmission": (128, 128, 3), "reflection": (128, 128, 3), "weight": (128, 128, 1),
        "second_weight": (128, 128, 1)}
    # Solved from both full-size shots: each recombines from the layers and its own weight.
    w1, w2 = layers["weight"], layers["second_weight"]
    assert _psnr(w1 * layers["reflection"] + (1 - w1) * layers["transmission"], first) > 35
    assert _psnr(w2 * layers["reflection"] + (1 - w2) * layers["transmission"], second) > 35
