"""The one registry of engine operations: op name → params → backend call.

Both front ends use it: ``serve`` (the plug-in's protocol) and the CLI. An op takes a
float32 H×W×C image in [0, 1] (alpha, if any, in the last channel), an optional bool
mask (H×W, float
weight in [0, 1] or bool: non-zero = fill), validated params and a JobContext, and returns named result layers.
Backends are imported inside the op so that, e.g., the ONNX path never imports torch.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .errors import BadInput, Cancelled


@dataclass(frozen=True)
class Param:
    name: str
    kind: type
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    minimum: int | float | None = None
    maximum: int | float | None = None

    def coerce(self, value: Any) -> Any:
        if self.kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise BadInput(f"parameter {self.name!r} must be an integer, got {value!r}")
        if self.kind is str and not isinstance(value, str):
            raise BadInput(f"parameter {self.name!r} must be a string, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise BadInput(f"parameter {self.name!r} must be one of {', '.join(self.choices)}; got {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise BadInput(f"parameter {self.name!r} must be ≥ {self.minimum}, got {value!r}")
        if self.maximum is not None and value > self.maximum:
            raise BadInput(f"parameter {self.name!r} must be ≤ {self.maximum}, got {value!r}")
        return value


@dataclass
class ResultLayer:
    role: str  # machine name, e.g. "image"
    title: str  # what the plug-in names the layer
    pixels: np.ndarray  # float32 H×W×C


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

    def cancel_requested(self) -> bool:
        return bool(self._cancel_requested and self._cancel_requested())

    def check_cancelled(self) -> None:
        if self.cancel_requested():
            raise Cancelled()


OpRunner = Callable[[np.ndarray, "np.ndarray | None", dict[str, Any], JobContext], list[ResultLayer]]
# (validated params, image height, image width) -> expected seconds on this machine, or None.
OpEstimator = Callable[[dict[str, Any], int, int], "float | None"]


@dataclass(frozen=True)
class OpSpec:
    name: str
    summary: str
    run: OpRunner
    params: tuple[Param, ...] = ()
    needs_mask: bool = False
    min_side: int = 8
    estimate: OpEstimator | None = None

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
    return {
        "iterations": params["iterations"] or None,  # 0 means "choose for me" (automatic stop)
        "seed": params["seed"],
        "device": params["device"],
        "preset": params["preset"],
        "progress": ctx.progress,
        "cancel_requested": ctx.cancel_requested,
    }


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


def _inpaint(image: np.ndarray, mask: np.ndarray | None, params: dict[str, Any],
             ctx: JobContext) -> list[ResultLayer]:
    from .dip import tasks

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

    return _run_dip(tasks.inpaint, (np.clip(colour, 0.0, 1.0), hole), params, ctx, finish)


def _dip_estimate(task: str) -> OpEstimator:
    """Seconds a DIP op is expected to take (for the dialog): ms/iteration of the preset's net
    at this size × the iterations it is expected to run. Inpainting is estimated for the whole
    layer; the real run optimises only the hole's window, so it is usually faster."""

    def estimate(params: dict[str, Any], height: int, width: int) -> float | None:
        from .dip import presets

        return presets.estimate_seconds(task, params["preset"], params["device"],
                                       params["iterations"] or None, height, width)

    return estimate


_DIP_PARAMS = (
    Param("iterations", int, 0, "optimisation steps; 0 = automatic (stops when the result has "
          "settled)", minimum=0, maximum=100000),
    Param("seed", int, 0, "random seed (same seed, same device → same result)", minimum=0,
          maximum=2**31 - 1),
    Param("device", str, "auto", "where to compute", choices=("auto", "cpu", "cuda")),
    Param("preset", str, "auto", "speed/quality: fast, quality (paper-sized nets), paper "
          "(the paper's exact settings, no automatic stop) or auto (fast on CPU, quality on GPU)",
          choices=("auto", "fast", "quality", "paper")),
)

OPS: dict[str, OpSpec] = {
    spec.name: spec
    for spec in (
        OpSpec("denoise", "Deep Image Prior denoising (noise level not needed)",
               _denoise_like("denoise", "Denoised"), _DIP_PARAMS, estimate=_dip_estimate("denoise")),
        OpSpec("inpaint", "Deep Image Prior inpainting of the masked pixels", _inpaint, _DIP_PARAMS,
               needs_mask=True, estimate=_dip_estimate("inpaint")),
        OpSpec("dejpeg", "Deep Image Prior removal of JPEG artefacts (quality not needed)",
               _denoise_like("dejpeg", "JPEG artifacts removed"), _DIP_PARAMS,
               estimate=_dip_estimate("dejpeg")),
    )
}


def get_op(name: str) -> OpSpec:
    spec = OPS.get(name)
    if spec is None:
        raise BadInput(f"unknown operation {name!r}; known: {', '.join(OPS)}")
    return spec


def estimate_seconds(name: str, params: dict[str, Any] | None, height: int, width: int) -> float | None:
    """How long ``name`` is expected to take on an image of this size, or None if unknown."""
    spec = get_op(name)
    return spec.estimate(spec.validate(params), height, width) if spec.estimate else None


def run_op(name: str, image: np.ndarray, mask: np.ndarray | None, params: dict[str, Any] | None,
           ctx: JobContext | None = None) -> list[ResultLayer]:
    """Validate everything an op needs, then run it."""
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
    return spec.run(image.astype(np.float32, copy=False), mask, values, ctx or JobContext())
