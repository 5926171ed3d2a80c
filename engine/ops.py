"""The one registry of engine operations: op name → params → backend call.

Both front ends use it: ``serve`` (the plug-in's protocol) and the CLI. An op takes a
float32 H×W×C image in [0, 1] (alpha, if any, in the last channel), an optional
mask (H×W float weight in [0, 1] or bool: non-zero = fill, or an op's hint), validated params and a JobContext, and returns named result layers.
Backends are imported inside the op so that, e.g., the ONNX path never imports torch.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .errors import BadInput, Cancelled, EngineError


@dataclass(frozen=True)
class Param:
    name: str
    kind: type
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    minimum: int | float | None = None
    maximum: int | float | None = None

    def coerce(self, value: Any) -> Any:
        if self.kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise BadInput(f"parameter {self.name!r} must be an integer, got {value!r}")
        if self.kind is str and not isinstance(value, str):
            raise BadInput(f"parameter {self.name!r} must be a string, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise BadInput(f"parameter {self.name!r} must be one of {', '.join(map(str, self.choices))}; got {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise BadInput(f"parameter {self.name!r} must be ≥ {self.minimum}, got {value!r}")
        if self.maximum is not None and value > self.maximum:
            raise BadInput(f"parameter {self.name!r} must be ≤ {self.maximum}, got {value!r}")
        return value


@dataclass
class ResultLayer:
    """One result. An op returning several lists them top of the stack first; a front end
    rebuilds the composite from these attributes (docs/protocol.md, "Result attributes")."""

    role: str  # machine name, e.g. "image"
    title: str  # what the plug-in names the layer
    pixels: np.ndarray  # float32 H×W×C (a mask: H×W×1)
    blend: str = "normal"  # layer mode; mixing happens in the sRGB-encoded values sent
    opacity: float = 1.0
    mask: str | None = None  # role of the result that is this layer's layer mask
    visible: bool = True
    kind: str = "layer"  # "layer", or "mask": only used as another result's layer mask

    def attributes(self) -> dict[str, Any]:
        """The composite attributes that differ from a plain layer (what goes on the wire)."""
        plain = ResultLayer(self.role, self.title, self.pixels)
        return {name: getattr(self, name) for name in ("blend", "opacity", "mask", "visible", "kind")
                if getattr(self, name) != getattr(plain, name)}


class JobContext:
    """What a running op may ask of its caller: report progress, ask whether to stop."""

    def __init__(self, progress: Callable[[float, str], None] | None = None,
                 cancel_requested: Callable[[], bool] | None = None,
                 preview: Callable[[list[ResultLayer]], None] | None = None) -> None:
        self._progress = progress
        self._cancel_requested = cancel_requested
        # Set by a front end that shows intermediate results (the plug-in's live preview);
        # ops offer previews only when it is set (building one costs a host copy).
        self.preview = preview
        self.started = time.monotonic()

    def progress(self, fraction: float, text: str) -> None:
        if self._progress is not None:
            self._progress(min(max(float(fraction), 0.0), 1.0), text)

    def stage(self, start: float, end: float, preview: bool = False) -> "JobContext":
        """A context for one step of a longer job: its progress 0–1 is shown as start–end
        (so the front end's remaining-time estimate holds); previews only if ``preview``."""
        outer = self

        def progress(fraction: float, text: str) -> None:
            outer.progress(start + (end - start) * fraction, text)

        inner = JobContext(progress, self._cancel_requested, self.preview if preview else None)
        inner.started = self.started
        return inner

    def cancel_requested(self) -> bool:
        return bool(self._cancel_requested and self._cancel_requested())

    def check_cancelled(self) -> None:
        if self.cancel_requested():
            raise Cancelled()


OpRunner = Callable[[np.ndarray, "np.ndarray | None", dict[str, Any], JobContext], list[ResultLayer]]
# (validated params, image height, image width) -> expected seconds on this machine, or None;
# an op that fills a mask (inpaint) also takes selected_pixels, the hole's size when known.
OpEstimator = Callable[..., "float | None"]


@dataclass(frozen=True)
class OpSpec:
    name: str
    summary: str
    run: OpRunner
    params: tuple[Param, ...] = ()
    needs_mask: bool = False
    # The op takes a mask if one is given (e.g. a hint), and runs without one too.
    mask_optional: bool = False
    # The op returns a layer stack (ResultLayer attributes say how it composites); the CLI
    # writes it as a folder of PNGs plus manifest.json.
    layered: bool = False
    min_side: int = 8
    estimate: OpEstimator | None = None
    # The op takes an optional second image of the same size (the protocol's ``second``
    # buffer, the CLI's --second); its runner then gets it as the ``second`` keyword.
    second_image: bool = False

    def validate(self, raw: dict[str, Any] | None) -> dict[str, Any]:
        raw = dict(raw or {})
        unknown = sorted(set(raw) - {p.name for p in self.params})
        if unknown:
            raise BadInput(f"{self.name} has no parameter(s) {', '.join(unknown)}")
        return {p.name: p.coerce(raw.get(p.name, p.default)) for p in self.params}


def split_alpha(image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    if image.shape[2] in (2, 4):
        return image[:, :, :-1], image[:, :, -1:]
    return image, None


def join_alpha(colour: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    return colour if alpha is None else np.concatenate([colour, alpha], axis=2)


def _dip_kwargs(params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    kwargs = {
        "iterations": params["iterations"] or None,  # 0 means "choose for me" (automatic stop)
        "seed": params["seed"],
        "device": params["device"],
        "preset": params["preset"],
        "progress": ctx.progress,
        "cancel_requested": ctx.cancel_requested,
    }
    if "tile" in params:  # single-image DIP ops (Double-DIP fits the image whole)
        kwargs["tile"] = params["tile"] or None  # 0 means "the largest that fits in memory"
    if "fits" in params:  # likewise: Double-DIP has no averaged fits
        kwargs["fits"] = params["fits"] or None  # 0 means "the preset's"
    if "strength" in params:  # denoise: the share of the measured noise level to remove
        kwargs["strength"] = params["strength"] / 100.0
    if "working_side" in params:  # decompose: larger images are split on a reduced copy
        kwargs["working_side"] = params["working_side"] or None  # 0 means "the device's"
    return kwargs


def _run_dip(task: Callable[..., np.ndarray], args: tuple, params: dict[str, Any], ctx: JobContext,
             finish: Callable[[np.ndarray], list[ResultLayer]]) -> list[ResultLayer]:
    """Run a DIP task; previews and a cancel's partial result go through ``finish`` too, so
    the front end gets full-size layers post-processed exactly like the result."""
    kwargs = _dip_kwargs(params, ctx)
    if ctx.preview is not None:
        front_end_preview = ctx.preview
        kwargs["preview"] = lambda so_far: front_end_preview(finish(so_far))
    try:
        return finish(task(*args, **kwargs))
    except Cancelled as cancelled:
        if isinstance(cancelled.partial, np.ndarray):
            raise Cancelled(cancelled.message, partial=finish(cancelled.partial)) from None
        raise


def _denoise_like(task_name: str, title: str) -> OpRunner:
    def run(image: np.ndarray, mask: np.ndarray | None, params: dict[str, Any],
            ctx: JobContext) -> list[ResultLayer]:
        from .dip import tasks

        colour, alpha = split_alpha(image)
        return _run_dip(getattr(tasks, task_name), (np.clip(colour, 0.0, 1.0),), params, ctx,
                        lambda restored: [ResultLayer("image", title, join_alpha(restored, alpha))])

    return run


def hole_window(hole: np.ndarray, margin: int) -> tuple[slice, slice]:
    """The hole's bounding box grown by ``margin`` px on each side, within the image."""
    rows, cols = np.flatnonzero(hole.any(axis=1)), np.flatnonzero(hole.any(axis=0))
    height, width = hole.shape
    return (slice(max(0, int(rows[0]) - margin), min(height, int(rows[-1]) + 1 + margin)),
            slice(max(0, int(cols[0]) - margin), min(width, int(cols[-1]) + 1 + margin)))


def _inpaint_with_net(colour: np.ndarray, hole: np.ndarray, params: dict[str, Any],
                      ctx: JobContext) -> np.ndarray:
    """The colour channels with the hole filled by the trained net: a smooth fill
    (engine.fill) that the net adds texture and edges to, run on the hole's box plus context
    (the net's reach, or half the box's longer side if larger: the fill's sources)."""
    from .fill import smooth_fill
    from .onnx import runner

    model = runner.load_model(runner.find_model("inpaint"), params["device"])
    reach = int(model.card.get("architecture", {}).get("receptive_radius", 64))
    rows, cols = hole_window(hole, 0)
    box_side = max(rows.stop - rows.start, cols.stop - cols.start)
    window = hole_window(hole, max(reach, box_side // 2))
    crop, crop_hole = colour[window], hole[window]  # never all hole: the image is not
    grey = crop.shape[2] == 1
    rgb = np.repeat(crop, 3, axis=2) if grey else crop
    passes = net_passes(params["passes"], *rgb.shape[:2])
    ctx.progress(0.0, f"inpaint net on {'GPU' if model.on_gpu else 'CPU'}"
                      + (f", {passes} passes" if passes > 1 else ""))
    started = time.monotonic()
    filled = smooth_fill(rgb, crop_hole)
    net_input = np.concatenate([filled, crop_hole[:, :, None].astype(np.float32)], axis=2)
    out = runner.run_rgb(model, net_input, progress=ctx.progress, cancel_requested=ctx.cancel_requested,
                         passes=passes)
    _record_speed("inpaint", model, time.monotonic() - started, rgb.shape[0] * rgb.shape[1], passes)
    np.clip(out, 0.0, 1.0, out=out)
    if grey:
        out = out.mean(axis=2, keepdims=True)
    result = colour.copy()
    result[window] = np.where(crop_hole[:, :, None], out, crop)
    return result


def _inpaint_with_patches(colour: np.ndarray, hole: np.ndarray, params: dict[str, Any],
                          ctx: JobContext) -> np.ndarray:
    """Method patch: the hole's wide parts filled with texture copied from the image
    (engine.patch_fill); its thin parts (scratches, text, scattered pixels), where no patch
    fits, by the trained net first — copying there made noise (half of kate's pixels
    missing: 8.7 dB in the hole, the net 31.8)."""
    from .patch_fill import patch_fill, wide_part

    wide = wide_part(hole)
    filled = colour
    if (hole & ~wide).any():
        filled = _inpaint_with_net(colour, hole, params, ctx.stage(0.0, 0.2 if wide.any() else 1.0))
    if wide.any():
        rows, cols = hole_window(wide, 0)
        expected = patch_fill_seconds(rows.stop - rows.start, cols.stop - cols.start, int(wide.sum()))
        base = filled
        filled = _with_heartbeat(lambda: patch_fill(base, wide), ctx.stage(0.2, 1.0), expected,
                                 "copying texture from the image (patch-based fill, CPU)")
    ctx.progress(1.0, "patch-based fill done" if wide.any()
                 else "the selection is thin (no patch fits): filled by the network")
    return filled


# How often a step that cannot report its own progress (OpenCV's fill) is looked in on.
HEARTBEAT_S = 0.5


def _with_heartbeat(work: Callable[[], Any], ctx: JobContext, expected_seconds: float, text: str) -> Any:
    """``work()`` while a helper thread reports progress (elapsed against ``expected_seconds``,
    never past 95 %) every HEARTBEAT_S, so a long copy does not look like a hung engine (the
    plug-in stops one silent for 120 s); a cancel asked for meanwhile ends the op when
    ``work`` returns (a C call cannot be interrupted). ``work`` runs in this thread: OpenCV's
    shift-map fill called from another thread gave different fills from call to call (on a
    repeating pattern 32 dB one time, 70 the next), from the op's thread near exact each time."""
    import threading

    done = threading.Event()
    started = time.monotonic()

    def beat() -> None:
        while not done.wait(HEARTBEAT_S):
            elapsed = time.monotonic() - started
            ctx.progress(min(0.95, elapsed / max(expected_seconds, 1e-3)), f"{text}, {elapsed:.0f} s")

    heart = threading.Thread(target=beat, name="neural-restore-heartbeat", daemon=True)
    heart.start()
    try:
        result = work()
    finally:
        done.set()
        heart.join()  # no progress frame after this point: the caller's are the only ones
    ctx.check_cancelled()
    return result


def _inpaint(image: np.ndarray, mask: np.ndarray | None, params: dict[str, Any],
             ctx: JobContext) -> list[ResultLayer]:
    assert mask is not None
    weight = mask.astype(np.float32)  # 1 = fill; partial values (feathered selection) blend
    hole = weight > 0
    if not hole.any():
        raise BadInput("the mask is empty: mark the pixels to fill (white in a mask file, "
                       "the selection in GIMP)")
    if hole.all():
        raise BadInput("the mask covers the whole image: nothing is left to fill the hole from")
    colour, alpha = split_alpha(image)

    def finish(filled: np.ndarray) -> list[ResultLayer]:
        if alpha is not None:
            # Filled pixels become opaque, so a hole cut into transparency is filled too.
            filled = join_alpha(filled, np.ones_like(alpha))
        w = weight[:, :, None]
        result = np.where(hole[:, :, None], w * filled + (1.0 - w) * image, image)
        return [ResultLayer("image", "Inpainted", result.astype(np.float32))]

    colour = np.clip(colour, 0.0, 1.0)
    if params["method"] == "net":
        return finish(_inpaint_with_net(colour, hole, params, ctx))
    if params["method"] == "patch":
        return finish(_inpaint_with_patches(colour, hole, params, ctx))
    from .dip import tasks

    return _run_dip(tasks.inpaint, (colour, hole), params, ctx, finish)


def _dip_estimate(task: str) -> OpEstimator:
    """Seconds a DIP op is expected to take (for the dialog): ms/iteration of the preset's net
    at this size × the iterations it is expected to run. Inpainting is estimated for the whole
    layer; the real run optimises only the hole's window, so it is usually faster."""

    def estimate(params: dict[str, Any], height: int, width: int) -> float | None:
        from .dip import presets

        return presets.estimate_seconds(task, params["preset"], params["device"],
                                       params["iterations"] or None, height, width, params["fits"] or None)

    return estimate


DECOMPOSE_MODES = ("segment", "transparency", "dehaze", "watermark")


def _decompose_estimate(params: dict[str, Any], height: int, width: int) -> float | None:
    from .dip import doubledip

    return doubledip.estimate_seconds(params["mode"], params["preset"], params["device"],
                                      params["iterations"] or None, height, width,
                                      params.get("working_side") or None)
# The layer a live preview shows per mode: the one that holds the picture without the
# separated part (background, transmission, dehazed image, clean image).
DECOMPOSE_PREVIEW_LAYER = {"segment": "background", "transparency": "transmission", "dehaze": "dehazed",
                           "watermark": "clean"}


def _grey_as(layer: np.ndarray, channels: int) -> np.ndarray:
    """A one-channel map as a layer of the image's channel count (alpha opaque)."""
    colour = 3 if channels >= 3 else 1
    grey = np.repeat(layer, colour, axis=2)
    return join_alpha(grey, np.ones_like(layer) if channels in (2, 4) else None)


def _solid(colour: np.ndarray, shape: tuple[int, int], alpha: np.ndarray | None) -> np.ndarray:
    return join_alpha(np.broadcast_to(colour, (*shape, colour.shape[0])).astype(np.float32), alpha)


def decomposition_layers(result: Any, alpha: np.ndarray | None) -> list[ResultLayer]:
    """A `doubledip.Decomposition` as a layer stack (top first) whose composite is the image:
    segment: Foreground (layer mask = its mask) over Background; transparency: Reflection
    (mask = its mixing weight) over Transmission; dehaze: Transmission map (hidden) over
    Haze (airlight colour, mask = 1 − t) over Dehazed; watermark: Watermark (its colour,
    mask = its opacity) over Clean. Every layer keeps the source's alpha."""
    L, shape = result.layers, next(iter(result.layers.values())).shape[:2]
    if result.mode == "segment":
        return [ResultLayer("foreground", "Foreground", join_alpha(L["foreground"], alpha), mask="foreground-mask"),
                ResultLayer("background", "Background", join_alpha(L["background"], alpha)),
                ResultLayer("foreground-mask", "Foreground mask", L["mask"], kind="mask")]
    if result.mode == "transparency":
        return [ResultLayer("reflection", "Reflection", join_alpha(L["reflection"], alpha), mask="reflection-weight"),
                ResultLayer("transmission", "Transmission", join_alpha(L["transmission"], alpha)),
                ResultLayer("reflection-weight", "Reflection weight", L["weight"], kind="mask")]
    if result.mode == "dehaze":
        t = L["transmission"]
        channels = L["dehazed"].shape[2] + (0 if alpha is None else 1)
        return [ResultLayer("transmission", "Transmission map", _grey_as(t, channels), visible=False),
                ResultLayer("haze", "Haze", _solid(result.colour, shape, alpha), mask="haze-mask"),
                ResultLayer("dehazed", "Dehazed", join_alpha(L["dehazed"], alpha)),
                ResultLayer("haze-mask", "Haze mask", (1.0 - t).astype(np.float32), kind="mask")]
    return [ResultLayer("watermark", "Watermark", _solid(result.colour, shape, alpha), mask="watermark-mask"),
            ResultLayer("clean", "Clean", join_alpha(L["clean"], alpha)),
            ResultLayer("watermark-mask", "Watermark mask", L["mask"], kind="mask")]


def _decompose(image: np.ndarray, mask: np.ndarray | None, params: dict[str, Any],
               ctx: JobContext, second: np.ndarray | None = None) -> list[ResultLayer]:
    from .dip import doubledip

    colour, alpha = split_alpha(image)
    if second is not None:
        # The second mix's alpha is not used: the layers keep the first image's.
        second = np.clip(split_alpha(second)[0], 0.0, 1.0)
    hint = None if mask is None else mask > 0.5
    mode = params["mode"]
    preview: Callable[[dict[str, np.ndarray]], None] | None = None
    if ctx.preview is not None:
        show = ctx.preview
        shown = DECOMPOSE_PREVIEW_LAYER[mode]

        def show_layers(layers: dict[str, np.ndarray]) -> None:
            # One full-size layer like the source (alpha included), so a front end can show
            # it over the source; the whole stack comes with the result.
            show([ResultLayer(shown, shown.title(), join_alpha(layers[shown], alpha))])

        preview = show_layers

    try:
        result = doubledip.decompose(np.clip(colour, 0.0, 1.0), mode, hint, second=second,
                                     preview=preview, **_dip_kwargs(params, ctx))
    except Cancelled as cancelled:
        if isinstance(cancelled.partial, doubledip.Decomposition):  # the stack so far, as a result
            raise Cancelled(cancelled.message, partial=decomposition_layers(cancelled.partial, alpha)) from None
        raise
    return decomposition_layers(result, alpha)


# Shared by the single-image DIP ops and Upscale's dip method.
_FITS_PARAM = Param("fits", int, 0, "independent fits averaged, each a whole run (another seed, the image "
                    "mirrored or turned): cleaner; on a CPU they run side by side, one per core, else "
                    "that many times slower; 0 = the preset's (4 for quality on a CPU; auto on a 2-core "
                    "CPU 2, else 1)", minimum=0, maximum=16)

_DIP_PARAMS = (
    Param("iterations", int, 0, "optimisation steps; 0 = automatic (stops when the result has "
          "settled)", minimum=0, maximum=100000),
    Param("seed", int, 0, "random seed (same seed, same device → same result)", minimum=0,
          maximum=2**31 - 1),
    Param("device", str, "auto", "where to compute", choices=("auto", "cpu", "cuda")),
    Param("preset", str, "auto", "speed/quality: fast, quality (paper-sized nets), paper "
          "(the paper's exact settings, no automatic stop) or auto (fast on CPU, quality on GPU)",
          choices=("auto", "fast", "quality", "paper")),
    Param("tile", int, 0, "images larger than this many px a side are restored in overlapping "
          "tiles; 0 = the largest tile that fits in the free memory (at most 1024)",
          minimum=0, maximum=65535),
    _FITS_PARAM,
)

# Double-DIP stops by itself like the DIP ops (0 iterations) and has no paper/quality
# difference beyond the nets, so its preset says so.
_DECOMPOSE_PARAMS = (
    Param("mode", str, "segment", "which layers to split into", choices=DECOMPOSE_MODES),
    _DIP_PARAMS[0],
    _DIP_PARAMS[1],
    _DIP_PARAMS[2],
    Param("preset", str, "auto", "nets: fast (light), quality or paper (the paper's) or auto (the paper's "
          "on a GPU, light on a CPU)", choices=("auto", "fast", "quality", "paper")),
    Param("working_side", int, 0, "an image whose longer side is larger is split on a copy reduced to this "
          "side and the split carried to full size (fine detail kept in the layers); larger: finer "
          "edges, slower, more memory; 0 = automatic (256 on a CPU, 384 for watermark, 512 on a GPU)",
          minimum=0, maximum=8192),
)

# -- trained nets (ONNX Runtime; no torch on this path) -------------------------------------

# Protocol buffers are at most 65 535 px a side; GIMP images may be larger, but a result that
# cannot travel back is refused before any work.
MAX_RESULT_SIDE = 65535


# passes = 0 (automatic) averages 8 passes up to this many input pixels: seconds on a CPU (at
# 1 MP 2–10 s by net on the slower dev CPU), for 0.1–0.3 dB (README "Passes"); larger images
# get one pass, so the time grows with the area at the one-pass rate.
AUTO_PASSES_MAX_PIXELS = 1_000_000
AUTO_PASSES = 8


def net_passes(requested: int, height: int, width: int) -> int:
    """Passes a trained net runs over a height×width input (``requested`` 0 = automatic)."""
    if requested:
        return requested
    return AUTO_PASSES if height * width <= AUTO_PASSES_MAX_PIXELS else 1


def _run_net(name: str, image: np.ndarray, device: str, ctx: JobContext, passes: int,
             guide: np.ndarray | None = None, note: str = "") -> np.ndarray:
    """Run the shipped net ``name`` (models/<name>.onnx) over the image, alpha/grey handled,
    averaged over ``passes`` (0 = automatic) grid symmetries; ``guide``: the channels the net
    reads after RGB, if any (H×W×k); ``note`` ends the first progress message."""
    from .onnx import runner

    model = runner.load_model(runner.find_model(name), device)
    passes = net_passes(passes, *image.shape[:2])
    ctx.progress(0.0, f"{name} on {'GPU' if model.on_gpu else 'CPU'}"
                      + (f", {passes} passes" if passes > 1 else "") + (f"; {note}" if note else ""))
    started = time.monotonic()
    out = runner.run_model(model, image, progress=ctx.progress, cancel_requested=ctx.cancel_requested,
                           passes=passes, guide=guide)
    _record_speed(name, model, time.monotonic() - started, image.shape[0] * image.shape[1], passes)
    return out


def _speed_key(name: str, card: dict[str, Any]) -> str:
    """Which model file a measured speed belongs to (engine.measured_speed)."""
    return f"{name}:{str(card.get('export', {}).get('sha256', ''))[:16]}"


def _record_speed(name: str, model: Any, seconds: float, pixels: int, passes: int) -> None:
    if model.on_gpu:  # GPU estimates are not made (nothing measured to scale)
        return
    from .measured_speed import record
    from .system import available_cpu_threads

    record(_speed_key(name, model.card), seconds, pixels / 1e6, passes, available_cpu_threads())


def _has_jpeg_tables(params: dict[str, Any]) -> bool:
    from .jpeg_consistency import parse_tables

    return parse_tables(params.get("jpeg_tables", "")) is not None  # (.get: the bare estimators' callers)


def _removes_jpeg_artifacts_first(params: dict[str, Any]) -> bool:
    """Upscale's ``jpeg_artifacts``: auto removes them when the JPEG's tables came with the
    image (measured: better at every quality 30–95; without the tables worse at 95)."""
    choice = params.get("jpeg_artifacts", "auto")
    return choice == "remove" or (choice == "auto" and _has_jpeg_tables(params))


# The enlargement each method computes for each offered scale; the result is then resized to
# the scale asked for (Pillow's bicubic, antialiased when reducing). Measured (nets_bench.py
# --only upscale_other): ×3 as the ×4 net reduced is 2.1 dB above bicubic ×3 (the ×2 net
# enlarged: −0.19 dB on the split, +0.05 on the DIP photos); for ×8 a second network pass
# (×2 after ×4) is no better than bicubic's ×2 (−0.01 / −0.04 dB).
UPSCALE_COMPUTED_SCALE = {"rdn": {2: 2, 3: 4, 4: 4, 8: 4}, "dip": {2: 2, 3: 4, 4: 4, 8: 8}}


def upscale_computed_scale(params: dict[str, Any]) -> int:
    """The enlargement Upscale's method computes for ``params["scale"]``."""
    return UPSCALE_COMPUTED_SCALE[params.get("method", "rdn")][params["scale"]]


def _upscale(image: np.ndarray, mask: np.ndarray | None, params: dict[str, Any],
             ctx: JobContext) -> list[ResultLayer]:
    scale = params["scale"]
    height, width = image.shape[:2]
    if max(height, width) * max(scale, upscale_computed_scale(params)) > MAX_RESULT_SIDE:
        raise BadInput(f"×{scale} of a {width}×{height} image would exceed {MAX_RESULT_SIDE} px on a side: "
                       f"upscale a smaller area (select it first in GIMP)")

    from .onnx.tiling import resize_to  # Pillow only

    def to_result_size(pixels: np.ndarray) -> np.ndarray:
        same = pixels.shape[:2] == (height * scale, width * scale)
        return pixels if same else resize_to(pixels, height * scale, width * scale)

    title = f"Upscaled ×{scale}"
    enlarged = _enlarge(image, params, ctx, title, to_result_size)
    if upscale_computed_scale(params) != scale:
        ctx.progress(1.0, f"resized to ×{scale}")
    return [ResultLayer("image", title, to_result_size(enlarged))]


def _enlarge(image: np.ndarray, params: dict[str, Any], ctx: JobContext, title: str,
             to_result_size: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Upscale's work at the method's computed scale (upscale_computed_scale); its previews
    are shown at the result's size."""
    scale = upscale_computed_scale(params)
    if _removes_jpeg_artifacts_first(params):
        # An enlargement makes JPEG blocks and ringing bigger: the JPEG net (kept to the file's
        # tables) goes first, as waifu2x's noise reduction (README, Upscale's "JPEG artifacts").
        from .jpeg_consistency import parse_tables

        height, width = image.shape[:2]
        first = _net_or_dip_estimate("dejpeg")({**params, "method": "net"}, height, width)
        total = _upscale_estimate(params, height, width)
        share = first / total if first and total else _JPEG_STEP_SHARE
        step = ctx.stage(0.0, share)
        image = _keep_to_tables(_run_net("dejpeg", image, params["device"], step, params["passes"],
                                         note="removing JPEG artifacts before enlarging"),
                                image, parse_tables(params["jpeg_tables"]), step)
        ctx = ctx.stage(share, 1.0, preview=True)
    if params["method"] == "rdn":
        return _run_net(f"rdn_x{scale}", image, params["device"], ctx, params["passes"])
    from .dip import tasks
    from .onnx.tiling import resize_alpha  # Pillow only: alpha is resampled, never fitted

    colour, alpha = split_alpha(image)
    big_alpha = None if alpha is None else resize_alpha(np.clip(alpha, 0.0, 1.0), scale)
    preview: Callable[[np.ndarray], None] | None = None
    if ctx.preview is not None:
        show = ctx.preview

        def show_so_far(so_far: np.ndarray) -> None:
            show([ResultLayer("image", title, to_result_size(join_alpha(so_far, big_alpha)))])

        preview = show_so_far

    big = tasks.super_resolve(np.clip(colour, 0.0, 1.0), scale, iterations=params["iterations"] or None,
                              seed=params["seed"], device=params["device"], preset=params["preset"],
                              tile=params["tile"] or None, fits=params["fits"] or None, progress=ctx.progress,
                              cancel_requested=ctx.cancel_requested, preview=preview)
    return join_alpha(np.asarray(big, np.float32), big_alpha)


def scaled_detail(source: np.ndarray, restored: np.ndarray, amount: float) -> np.ndarray:
    """``source + amount · (restored − source)`` on the colour channels, clipped to [0, 1], in
    ``restored``'s memory; alpha (last of 2 or 4 channels) stays ``restored``'s. amount 1 is
    ``restored``, 0 the source, 2 twice the detail the net recovered."""
    colours = restored.shape[2] - 1 if restored.shape[2] in (2, 4) else restored.shape[2]
    detail = restored[:, :, :colours]
    base = np.clip(source[:, :, :colours], 0.0, 1.0)
    detail -= base
    detail *= np.float32(amount)
    detail += base
    np.clip(detail, 0.0, 1.0, out=detail)
    return restored


_run_dip_denoise = _denoise_like("denoise", "Denoised")


def _denoise(image: np.ndarray, mask: np.ndarray | None, params: dict[str, Any],
             ctx: JobContext) -> list[ResultLayer]:
    if params["method"] == "dip":
        return _run_dip_denoise(image, mask, params, ctx)
    return [ResultLayer("image", "Denoised", _denoise_with_net(image, params, ctx))]


_run_dip_dejpeg = _denoise_like("dejpeg", "JPEG artifacts removed")


def _keep_to_tables(restored: np.ndarray, image: np.ndarray, tables: Any, ctx: JobContext) -> np.ndarray:
    from .jpeg_consistency import make_consistent

    if tables is None:
        return restored
    restored, note = make_consistent(restored, image, tables)
    ctx.progress(1.0, f"JPEG artifacts removed; {note}")
    return restored


# Upscale's JPEG step, as a share of the progress bar when no estimate says better.
_JPEG_STEP_SHARE = 0.3


def _dejpeg(image: np.ndarray, mask: np.ndarray | None, params: dict[str, Any],
            ctx: JobContext) -> list[ResultLayer]:
    from .jpeg_consistency import parse_tables

    tables = parse_tables(params["jpeg_tables"])  # a malformed text fails before the work
    if params["method"] == "dip":
        layers = _run_dip_dejpeg(image, mask, params, ctx)
    else:
        layers = [ResultLayer("image", "JPEG artifacts removed",
                              _run_net("dejpeg", image, params["device"], ctx, params["passes"]))]
    # Also after a cancelled DIP run: its best-so-far result is what the user gets.
    layers[0].pixels = _keep_to_tables(layers[0].pixels, image, tables, ctx)
    return layers


def _denoise_with_net(image: np.ndarray, params: dict[str, Any], ctx: JobContext) -> np.ndarray:
    """The shipped denoise net. One with a fourth input channel is told the noise level to
    remove: the level measured in the image (engine.noise_level, by the blind net
    noise_probe), times the strength above 100 %. Below 100 % the net removes what it
    measures and that share of its correction is kept (the rest of the noise stays, as
    grain): told a lower level, it removes nearly as much (10 %: 92 % of it at σ=25), since
    it sees the noise itself."""
    from .onnx import runner

    model = runner.load_model(runner.find_model("denoise"), params["device"])
    strength = params["strength"] / 100.0
    if model.input_channels == 3:  # a blind net (e.g. one trained before the level input)
        if strength > 1.0:
            raise BadInput(f"{model.path.name} is a blind denoise net: it cannot be told to remove more "
                           "than it measures (strength up to 100, or install a net that reads the noise level)")
        out = _run_net("denoise", image, params["device"], ctx, params["passes"])
    else:
        guide, level = denoise_level_guide(split_alpha(image)[0], max(strength, 1.0), params["device"])
        out = _run_net("denoise", image, params["device"], ctx, params["passes"], guide=guide,
                       note=f"noise level measured: {level * 255:.1f}/255, strength {params['strength']} %")
    return scaled_detail(image, out, strength) if strength < 1.0 else out


def denoise_level_guide(colour: np.ndarray, strength: float = 1.0, device: str = "cpu") -> tuple[np.ndarray, float]:
    """(the level-reading denoise net's fourth channel, the measured level): what the blind
    net noise_probe removes from the colour channels (engine.noise_level), × ``strength``."""
    from .noise_level import level_plane, probe_noise_level
    from .onnx import runner

    probe = runner.load_model(runner.find_model("noise_probe"), device)
    rgb = np.repeat(colour, 3, axis=2) if colour.shape[2] == 1 else colour
    level = probe_noise_level(rgb, probe)
    return level_plane(level * strength, *colour.shape[:2]), level


def _sharpen(image: np.ndarray, mask: np.ndarray | None, params: dict[str, Any],
             ctx: JobContext) -> list[ResultLayer]:
    sharp = _run_net("sharpen", image, params["device"], ctx, params["passes"])
    if params["amount"] != 100:
        sharp = scaled_detail(image, sharp, params["amount"] / 100.0)
    return [ResultLayer("image", "Sharpened", sharp)]


_NET_DEVICE = Param("device", str, "auto", "where to compute (auto: CUDA if onnxruntime-gpu sees a GPU)",
                    choices=("auto", "cpu", "cuda"))
_NET_PASSES = Param("passes", int, 0, "trained net: average the net over this many mirrored/turned copies "
                    "of the image (8: ~0.1 dB better, 8× the time); 0 = automatic: 8 up to 1 megapixel, "
                    "else 1", choices=(0, 1, 2, 4, 8))
# Like unsharp mask's amount: a sharpen net's result is the input plus the detail it
# recovered, and how much of that detail to add is a matter of taste (and of how blurred the
# photo is); above 100 % it extrapolates, which can also lift noise and halos.
_SHARPEN_AMOUNT = Param("amount", int, 100, "percent of the recovered detail added: 100 = the net's "
                        "result, 0 = the input unchanged, 200 = twice the detail", minimum=0, maximum=300)

# CPU seconds per megapixel of input for the shipped nets with one ONNX Runtime thread: the
# engine's tiled run (padding, overlaps, blending) on a 1024² photo, 1 pass, measured by
# `benchmarks/nets_bench.py --only estimates` (results/2026-11-22-nets-estimates-cpu.json;
# bare 256² runs gave 17-30 % less and the estimates came out low).
# Two threads measured 1.6-1.9× faster: more threads are counted at 0.9 each.
# Sharpen: the base-24 net of session 13 took 1.57× the base-16 net's time in the same
# --only estimates run (2.66 vs 1.69 s, results/2026-12-02-nets-sharpen-base24-cpu.json): 0.54 × 1.57.
# Inpaint (the whole op: fill, then the net; session 14, results/2026-12-07-nets-estimates-inpaint-cpu.json):
# 1.71 s/MP on a machine where the same run gave rdn_x2 10.7 and sharpen 2.18, i.e. 0.16 × rdn_x2
# and 0.78 × sharpen: 0.7 on the scale above.
# noise_probe (the blind denoise net) and dejpeg: base 16, the design denoise had until
# session 18; denoise is now base 24 like sharpen (plus a 4th input channel): sharpen's rate.
_NET_SECONDS_PER_MEGAPIXEL = {"rdn_x2": 4.59, "rdn_x4": 3.22, "sharpen": 0.85, "denoise": 0.85, "noise_probe": 0.54,
                              "inpaint": 0.7, "dejpeg": 0.54}


def _net_seconds(name: str, device: str, height: int, width: int, passes: int) -> float | None:
    """Expected seconds of a shipped net on a height×width input; None on a GPU (not measured).
    The rate measured on this machine by earlier runs of the same model file if there is
    one (engine.measured_speed), else the built-in one."""
    from .measured_speed import recorded, thread_factor
    from .onnx import runner  # no torch on this path
    from .system import available_cpu_threads

    try:
        if runner.choose_providers(device)[0] != "CPUExecutionProvider":
            return None
        card = runner.read_card(runner.find_model(name))
    except EngineError:  # no onnxruntime, CUDA requested without it, no model file: no estimate
        return None
    one_thread = recorded(_speed_key(name, card)) or _NET_SECONDS_PER_MEGAPIXEL[name]
    per_megapixel = one_thread / thread_factor(available_cpu_threads())
    return round(net_passes(passes, height, width) * per_megapixel * height * width / 1e6, 1)


def _upscale_estimate(params: dict[str, Any], height: int, width: int) -> float | None:
    scale = upscale_computed_scale(params)
    if params["method"] == "dip":
        from .dip import presets

        seconds = presets.estimate_seconds("super_resolve", params["preset"], params["device"],
                                           params["iterations"] or None, height * scale, width * scale,
                                           params["fits"] or None)
    else:
        seconds = _net_seconds(f"rdn_x{scale}", params["device"], height, width, params["passes"])
    if seconds is not None and _removes_jpeg_artifacts_first(params):
        first = _net_or_dip_estimate("dejpeg")({**params, "method": "net"}, height, width)
        seconds = None if first is None else seconds + first
    return seconds


# Keeping a dejpeg result to the JPEG's tables (engine.jpeg_consistency), on the CPU: 3.2 s
# for 12 megapixels on the 2-core dev machine beside a benchmark (README).
JPEG_TABLES_SECONDS_PER_MEGAPIXEL = 0.27


# The patch-based fill on the 2-core dev CPU (engine.patch_fill, seams blended;
# benchmarks/patch_fill_bench.py, results/2026-12-08-patch-fill-cpu.json): ~0.3 s for a 46²
# hole in a 256² photo, 2.5 s in a 0.5-megapixel one, 5.5–7 s for a 100² hole with 0.5–9
# megapixels round it, 8.5 s for 300², 16 s for 500² (~4 min for 1000² beside a benchmark):
# the time grows with the window up to about half a megapixel, then with the hole.
PATCH_SECONDS_PER_WINDOW_MEGAPIXEL = 12.0
PATCH_WINDOW_KNEE_MEGAPIXELS = 0.5
PATCH_SECONDS_PER_HOLE_MEGAPIXEL = 40.0


def patch_fill_seconds(box_height: int, box_width: int, hole_pixels: int | None = None) -> float:
    """Expected seconds of the patch-based fill for a hole with this bounding box and
    ``hole_pixels`` pixels (None: the whole box)."""
    from .patch_fill import context_for

    context = context_for(max(box_height, box_width))
    window = (box_height + 2 * context) * (box_width + 2 * context) / 1e6
    hole = box_height * box_width if hole_pixels is None else min(hole_pixels, box_height * box_width)
    return (PATCH_SECONDS_PER_WINDOW_MEGAPIXEL * min(window, PATCH_WINDOW_KNEE_MEGAPIXELS)
            + PATCH_SECONDS_PER_HOLE_MEGAPIXEL * hole / 1e6)


def _net_or_dip_estimate(task: str) -> OpEstimator:
    """Denoise's, Inpaint's and Remove JPEG Artifacts': the shipped net ``task`` or the DIP task of that name (Inpaint's
    for the whole layer: the real run works on the hole's box and its context only)."""

    def estimate(params: dict[str, Any], height: int, width: int, selected_pixels: int | None = None) -> float | None:
        if params["method"] == "dip":
            return _dip_estimate(task)(params, height, width)
        if params["method"] == "patch":
            # Inpaint's: height × width is the selection's box. The net fills its thin parts
            # (counted as if it ran on all of the box: most selections have some), the copies
            # its wide ones (counted as all that is selected: a scattering of dust spots over
            # a scan is all thin, but the dialog cannot tell).
            net = _net_seconds(task, params["device"], height, width, params["passes"])
            return None if net is None else net + patch_fill_seconds(height, width, selected_pixels)
        seconds = _net_seconds(task, params["device"], height, width, params["passes"])
        if task == "denoise" and seconds is not None:  # + measuring the noise (noise_level: ≤ 9 crops)
            from .noise_level import PROBE_GRID, PROBE_SIDE

            side = PROBE_GRID * PROBE_SIDE
            seconds += _net_seconds("noise_probe", params["device"], min(height, side), min(width, side), 1) or 0.0
        if task == "dejpeg" and seconds is not None and _has_jpeg_tables(params):
            seconds += JPEG_TABLES_SECONDS_PER_MEGAPIXEL * height * width / 1e6
        return seconds

    return estimate


def _sharpen_estimate(params: dict[str, Any], height: int, width: int) -> float | None:
    return _net_seconds("sharpen", params["device"], height, width, params["passes"])


_JPEG_TABLES = Param("jpeg_tables", str, "", "the JPEG's quantisation tables, as engine.jpeg_consistency "
                     "writes them (docs/protocol.md); JPEG artefact removal is then kept consistent "
                     "with the JPEG's data, which stops the net smoothing good JPEGs. The CLI reads "
                     "them from a JPEG input ('file', its default); 'none' or empty: not used")
_UPSCALE_PARAMS = (
    Param("scale", int, 2, "enlargement factor: 2 and 4 are the networks' own; 3 = the ×4 result reduced; "
          "8 = the ×4 result enlarged ×2 by bicubic (Deep Image Prior: ×8 itself)", choices=(2, 3, 4, 8)),
    Param("method", str, "rdn", "rdn: trained net, seconds; dip: Deep Image Prior, minutes, no training data",
          choices=("rdn", "dip")),
    _NET_DEVICE,
    Param("iterations", int, 0, "dip only: optimisation steps; 0 = automatic", minimum=0, maximum=100000),
    Param("seed", int, 0, "dip only: random seed", minimum=0, maximum=2**31 - 1),
    Param("preset", str, "auto", "dip only: speed/quality preset", choices=("auto", "fast", "quality", "paper")),
    Param("tile", int, 0, "dip only: tile side in input px for large images; 0 = from the free memory",
          minimum=0, maximum=65535),
    _FITS_PARAM,
    _NET_PASSES,
    Param("jpeg_artifacts", str, "auto", "remove JPEG blocking and ringing before enlarging (the JPEG "
          "net, kept to jpeg_tables): auto = when the JPEG's tables are given (the image was a JPEG "
          "file), remove, keep", choices=("auto", "remove", "keep")),
    _JPEG_TABLES,
)

# Denoise: the trained net by default (seconds, blind: white, signal-dependent or grey noise
# up to σ≈55/255), DIP on request (minutes; adapts to the one image, no training data). The
# DIP settings come first, as before the net existed; method and passes were added after them.
_NET_OR_DIP_PARAMS = _DIP_PARAMS + (
    Param("method", str, "net", "net: trained U-Net, seconds; dip: Deep Image Prior, minutes "
          "(the settings above are for dip)", choices=("net", "dip")),
    _NET_PASSES,
)
# Inpaint likewise: the trained net fills in seconds (a smooth fill plus the texture and edges
# it learnt), DIP in minutes (fits the one image: better where the picture repeats itself,
# e.g. stripes and fabric). The same settings in the same order as denoise.
# A third method, the default since session 22: the net's and DIP's fills of a large hole are
# smooth (what is likely on average); removing an object wants the photo's texture, which
# the patch-based fill copies (engine.patch_fill) — with the net for the hole's thin parts.
_INPAINT_PARAMS = _DIP_PARAMS + (
    Param("method", str, "patch", "patch: texture copied from the image round the hole where it is "
          "wide (removing objects), the trained net where it is thin (scratches, text, dust), seconds; "
          "net: the trained U-Net everywhere (a smooth fill of wide areas), seconds; dip: Deep Image "
          "Prior, minutes (the settings above are for dip)", choices=("net", "dip", "patch")),
    _NET_PASSES,
)
# Remove JPEG Artifacts likewise: a trained U-Net (blind to the quality, seconds) or DIP.
_DEJPEG_PARAMS = _NET_OR_DIP_PARAMS + (_JPEG_TABLES,)
# How much Denoise removes, as a share of the noise level measured in the image: the net
# reads that level (× the strength above 100 %) as a fourth input, DIP's automatic stop fits
# down to it. As photo editors' "strength" sliders.
_DENOISE_PARAMS = _NET_OR_DIP_PARAMS + (
    Param("strength", int, 100, "percent of the noise measured in the image to remove: 100 = as measured; "
          "less: net: that share of its correction (the rest of the noise stays, as grain), dip: its "
          "automatic stop fits closer to the input; more: the net is told the noise is that much stronger "
          "(for noise the measurement underrates: JPEG'd or camera noise), dip stops sooner (smoother)",
          minimum=10, maximum=400),
)

OPS: dict[str, OpSpec] = {
    spec.name: spec
    for spec in (
        OpSpec("denoise", "Remove noise with a trained U-Net (seconds) or a Deep Image Prior (minutes); "
               "the noise level need not be known", _denoise, _DENOISE_PARAMS, estimate=_net_or_dip_estimate("denoise")),
        OpSpec("inpaint", "Fill the masked pixels with a trained U-Net (seconds), a Deep Image Prior "
               "(minutes) or texture copied from the image (patch-based, seconds)", _inpaint,
               _INPAINT_PARAMS, needs_mask=True,
               estimate=_net_or_dip_estimate("inpaint")),
        OpSpec("dejpeg", "Remove JPEG blocking and ringing with a trained U-Net (seconds) or a Deep Image "
               "Prior (minutes); the quality need not be known", _dejpeg, _DEJPEG_PARAMS,
               estimate=_net_or_dip_estimate("dejpeg")),
        OpSpec("upscale", "Enlarge ×2, ×3, ×4 or ×8 with a trained RDN (or Deep Image Prior)", _upscale,
               _UPSCALE_PARAMS, estimate=_upscale_estimate),
        OpSpec("sharpen", "Remove blur (defocus, soft lens, resize) with a trained U-Net", _sharpen,
               (_NET_DEVICE, _NET_PASSES, _SHARPEN_AMOUNT), estimate=_sharpen_estimate),
        OpSpec("decompose", "Double-DIP: split the image into layers (segment, transparency, dehaze, "
               "watermark); the mask is the hint; transparency also takes a second mix of the "
               "same two layers", _decompose,
               _DECOMPOSE_PARAMS,
               mask_optional=True, layered=True, estimate=_decompose_estimate, second_image=True),
    )
}


def get_op(name: str) -> OpSpec:
    spec = OPS.get(name)
    if spec is None:
        raise BadInput(f"unknown operation {name!r}; known: {', '.join(OPS)}")
    return spec


def estimate_seconds(name: str, params: dict[str, Any] | None, height: int, width: int,
                     selected_pixels: int | None = None) -> float | None:
    """How long ``name`` is expected to take on an image of this size, or None if unknown.
    ``selected_pixels``: for an op that fills a mask (inpaint), how many of those pixels
    are to be filled, when the caller knows (None: all of them)."""
    spec = get_op(name)
    if not spec.estimate:
        return None
    if spec.needs_mask and selected_pixels is not None:
        return spec.estimate(spec.validate(params), height, width, selected_pixels)  # type: ignore[call-arg]
    return spec.estimate(spec.validate(params), height, width)


def run_op(name: str, image: np.ndarray, mask: np.ndarray | None, params: dict[str, Any] | None,
           ctx: JobContext | None = None, second: np.ndarray | None = None) -> list[ResultLayer]:
    """Validate everything an op needs, then run it. ``second``: the optional second image
    of ops with `OpSpec.second_image` (same size as ``image``)."""
    spec = get_op(name)
    values = spec.validate(params)
    if image.ndim != 3 or image.shape[2] not in (1, 2, 3, 4):
        raise BadInput(f"image must be H×W×C with 1–4 channels, got shape {image.shape}")
    height, width = image.shape[:2]
    if min(height, width) < spec.min_side:
        raise BadInput(f"{name} needs an image at least {spec.min_side}×{spec.min_side} pixels; "
                       f"this one is {width}×{height}")
    if not np.all(np.isfinite(image)):
        raise BadInput("the image contains NaN or infinite values")
    if spec.needs_mask:
        if mask is None:
            raise BadInput(f"{name} needs a mask of the pixels to fill")
        if mask.shape != (height, width):
            raise BadInput(f"mask is {mask.shape[1]}×{mask.shape[0]} but the image is {width}×{height}")
        mask = np.clip(mask.astype(np.float32), 0.0, 1.0)
    elif spec.mask_optional and mask is not None:
        if mask.shape != (height, width):
            raise BadInput(f"mask is {mask.shape[1]}×{mask.shape[0]} but the image is {width}×{height}")
        mask = np.clip(mask.astype(np.float32), 0.0, 1.0)
    extra: dict[str, np.ndarray] = {}
    if second is not None:
        if not spec.second_image:
            raise BadInput(f"{name} takes no second image")
        if second.ndim != 3 or second.shape[:2] != (height, width):
            raise BadInput(f"the second image is {second.shape[1]}×{second.shape[0]} but the image is "
                           f"{width}×{height}; both must be the same size")
        if not np.all(np.isfinite(second)):
            raise BadInput("the second image contains NaN or infinite values")
        extra["second"] = second.astype(np.float32, copy=False)
    from . import budget

    budget.check(name, values, image.shape, mask)  # refuse before a backend loads
    return spec.run(image.astype(np.float32, copy=False), mask, values, ctx or JobContext(), **extra)
