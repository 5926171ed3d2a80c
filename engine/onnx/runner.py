"""ONNX Runtime sessions for the shipped nets, and whole-image inference with tiling.

Never imports torch (tested): the ONNX backend must work in an engine installed without it.

- ``load_model(path, device)``: an ``OnnxModel`` (session + model card), cached per
  (model file, provider choice, threads) and reloaded if the file changed. The card is
  ``model.json`` beside ``model.onnx`` (written by ``onnx_export.export``); its ``runtime``
  section gives the scale, the size rule, the tile overlap and the activation size per px.
- Providers: ``device="auto"`` uses CUDA when this onnxruntime build has the CUDA execution
  provider, else the CPU; ``"cuda"`` insists (BadInput if unavailable); ``"cpu"`` is the CPU.
  CPU sessions use as many intra-op threads as this process may really use (affinity mask and
  cgroup quota). CUDA uses the heuristic conv-algorithm search: the exhaustive default makes
  the first run at every new shape slow.
- ``run_model(model, image, ...)``: H×W×C float32 in [0, 1] with 1–4 channels (grey is run as
  RGB and averaged back; alpha is resampled separately, never through the net), tiled (see
  ``tiling``), output clipped to [0, 1]. If the provider runs out of memory the tile side is
  halved and the image restarted, down to the smallest tile the overlap allows.
  ``passes=K`` (1, 2, 4 or 8) runs the net on every tile under K of the pixel grid's
  symmetries (`engine.symmetry`: mirrored, transposed) and averages the K results turned back
  (self-ensemble): the net's errors differ by orientation, so the mean is ~0.1 dB better
  (README, "Passes") for K times the time and no extra memory beyond one tile's.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import BadInput, EngineError
from engine.symmetry import grid_symmetry
from engine.system import available_cpu_threads

from . import tiling

DEVICES = ("auto", "cpu", "cuda")
CPU_BUDGET_BYTES = 1536 * 2**20
# A big image's own float32 input and output count against the CPU budget (a 6000×4000 ×2
# result alone is 1.1 GB); the tiles' activations get what is left, but never less than
# engine.budget.NET_MIN_ACTIVATION_BYTES (ORT's arena grows in powers of two, so the real use
# can be ~1.5× the estimate: measured 1.3 GB peak for 3000×2000 ×2 with the 1.2 GB budget it
# then gets), and less on a machine short of memory (cpu_activation_budget).
CUDA_BUDGET_BYTES = 3 * 2**30
PASSES = (1, 2, 4, 8)


def models_dir() -> Path:
    """Where shipped models live: ``engine/models`` (package data), or $NEURAL_RESTORE_MODELS."""
    override = os.environ.get("NEURAL_RESTORE_MODELS")
    return Path(override) if override else Path(__file__).resolve().parents[1] / "models"


def find_model(name: str) -> Path:
    """``name`` (e.g. "rdn_x2") → its .onnx file, or an error that says what is missing."""
    path = models_dir() / f"{name}.onnx"
    if not path.is_file():
        raise EngineError(f"model {path.name} is not installed in {path.parent}: reinstall the engine "
                          f"or set NEURAL_RESTORE_MODELS to a folder holding it (with its .json card)")
    return path


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:  # the "onnx" extra is not installed
        raise EngineError("onnxruntime is not installed: install the engine with its 'onnx' extra") from exc
    return onnxruntime


def available_providers() -> list[str]:
    return list(_ort().get_available_providers())


def choose_providers(device: str = "auto") -> list[Any]:
    """The provider list for a session: CUDA first (with options) when chosen, CPU always last."""
    if device not in DEVICES:
        raise BadInput(f"device must be one of {', '.join(DEVICES)}; got {device!r}")
    has_cuda = "CUDAExecutionProvider" in available_providers()
    if device == "cuda" and not has_cuda:
        raise BadInput("CUDA was requested but this onnxruntime has no CUDA provider "
                       "(install onnxruntime-gpu, or choose device 'cpu' or 'auto')")
    if device in ("cuda", "auto") and has_cuda:
        return [("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


REINSTALL_HINT = ("reinstall the engine (python install.py, or pip install --force-reinstall "
                  "neural-restore-engine) to restore the shipped models")


def damaged(path: Path, why: str) -> EngineError:
    return EngineError(f"the model file {path} is damaged ({why}): {REINSTALL_HINT}")


def read_card(model_path: Path) -> dict[str, Any]:
    card_file = model_path.with_suffix(".json")
    if not card_file.exists():
        return {}
    try:
        card = json.loads(card_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise damaged(card_file, f"not a readable model card: {exc}") from None
    if not isinstance(card, dict):
        raise damaged(card_file, "not a model card")
    return card


def file_sha256(path: Path) -> str:
    """The checksum model cards carry (onnx_export.export writes it with this function)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_integrity(model_path: Path, card: dict[str, Any]) -> None:
    """The file must be the one the card describes (a few ms for our few-MB nets): a truncated
    download or a disk error then says "damaged" instead of failing somewhere inside ORT."""
    want = card.get("export", {}).get("sha256")
    if want and file_sha256(model_path) != want:
        raise damaged(model_path, "its checksum does not match its model card")


@dataclass
class OnnxModel:
    path: Path
    session: Any  # onnxruntime.InferenceSession
    card: dict[str, Any]
    provider: str  # the provider that really runs it (ORT may fall back to the CPU)
    input_name: str
    output_name: str
    scale: int
    size_multiple: int
    tile_overlap: int
    activation_floats_per_px: float
    input_channels: int = 3  # 4 for the inpainting net: RGB (hole pre-filled), then the hole
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def on_gpu(self) -> bool:
        return self.provider != "CPUExecutionProvider"

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """N×C×h×w float32 (C = ``input_channels``) → N×3×(s·h)×(s·w) float32 (unclipped)."""
        with self._lock:  # one run at a time per session keeps peak memory predictable
            return self.session.run([self.output_name], {self.input_name: batch})[0]

    def release_memory(self) -> None:
        """Give the CPU arena's free chunks back (ORT keeps them after a run): one tiny run with
        arena shrinkage, so the memory a big tile used is free again for the result's conversion."""
        if self.on_gpu:
            return
        options = _ort().RunOptions()
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        side = max(self.size_multiple, 8)
        with self._lock:
            self.session.run([self.output_name],
                             {self.input_name: np.zeros((1, self.input_channels, side, side), np.float32)}, options)


_CACHE: dict[tuple[str, tuple[str, ...], int], tuple[int, OnnxModel]] = {}
_CACHE_LOCK = threading.Lock()


def clear_cache() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()


def load_model(path: str | Path, device: str = "auto", threads: int | None = None) -> OnnxModel:
    """A session for ``path`` (cached: the same file, providers and threads give the same object)."""
    model_path = Path(path).resolve()
    if not model_path.is_file():
        raise EngineError(f"model file not found: {model_path}")
    providers = choose_providers(device)
    threads = threads or available_cpu_threads()
    key = (str(model_path), tuple(p if isinstance(p, str) else p[0] for p in providers), threads)
    mtime = model_path.stat().st_mtime_ns
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None and hit[0] == mtime:
            return hit[1]
        ort = _ort()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1  # the nets are one chain of convs: no parallel branches
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        card = read_card(model_path)
        check_integrity(model_path, card)
        try:
            session = ort.InferenceSession(str(model_path), sess_options=options, providers=providers)
        except Exception as exc:  # ORT's message is long; its first line says what is wrong
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise damaged(model_path, f"ONNX Runtime cannot load it: {first_line[:300]}") from None
        model = _describe(model_path, session, card)
        _CACHE[key] = (mtime, model)
        return model


def _describe(path: Path, session: Any, card: dict[str, Any]) -> OnnxModel:
    rt = card.get("runtime", {})
    inputs, outputs = session.get_inputs(), session.get_outputs()
    model = OnnxModel(
        path=path, session=session, card=card, provider=session.get_providers()[0],
        input_name=rt.get("input_name", inputs[0].name), output_name=rt.get("output_name", outputs[0].name),
        scale=int(rt.get("scale", 0)), size_multiple=int(rt.get("size_multiple", 1)),
        tile_overlap=int(rt.get("tile_overlap", tiling.DEFAULT_OVERLAP)),
        activation_floats_per_px=float(rt.get("activation_floats_per_px", 1024)),
        input_channels=int(rt.get("input_channels", 3)),
    )
    if model.scale <= 0:
        # No card: the scale is whatever a probe run gives (the size rule is then assumed 1).
        probe = np.zeros((1, model.input_channels, 32, 32), np.float32)
        model.scale = int(model.infer(probe).shape[2] // 32)
    return model


def _is_out_of_memory(exc: Exception) -> bool:
    text = str(exc).lower()
    return any(s in text for s in ("out of memory", "failed to allocate", "bad_alloc", "cudaerrormemoryallocation"))


def cpu_activation_budget(pixels: int, channels: int, scale: int) -> float:
    """Bytes the tiles' activations may take on a ``pixels``-pixel input of ``channels``:
    CPU_BUDGET_BYTES less the float32 input and output, and less again where the memory
    available would not hold that next to the image copies (engine.budget: smaller tiles, the
    same result, only slower); at least the minimum."""
    from engine import budget

    image_bytes = pixels * channels * 4 * (1 + scale * scale)  # float32 input and output
    return budget.net_activation_budget(pixels, scale, CPU_BUDGET_BYTES - image_bytes)


def _checked_passes(passes: int) -> int:
    if isinstance(passes, bool) or passes not in PASSES:
        raise BadInput(f"passes must be one of {', '.join(map(str, PASSES))}, got {passes!r}")
    return int(passes)


def infer_averaged(model: OnnxModel, batch: np.ndarray, passes: int) -> np.ndarray:
    """The net on an N×3×h×w batch under ``passes`` grid symmetries, results turned back and
    averaged (one pass: the net itself)."""
    if passes == 1:
        return model.infer(batch)
    total: np.ndarray | None = None
    for index in range(passes):
        turned = np.ascontiguousarray(grid_symmetry(batch, index, axes=(2, 3)))
        upright = grid_symmetry(model.infer(turned), index, inverse=True, axes=(2, 3))
        total = np.array(upright, dtype=np.float32) if total is None else total + upright
    assert total is not None
    total /= passes
    return total


def run_rgb(model: OnnxModel, rgb: np.ndarray, *, tile: int | None = None, overlap: int | None = None,
            memory_budget_bytes: float | None = None,
            progress: Callable[[float, str], None] | None = None,
            cancel_requested: Callable[[], bool] | None = None, passes: int = 1) -> np.ndarray:
    """H×W×C (C = the net's ``input_channels``: RGB, then any guide) → (s·H)×(s·W)×3 through
    the net (averaged over ``passes`` symmetries), tiled, unclipped."""
    passes = _checked_passes(passes)
    if rgb.ndim != 3 or rgb.shape[2] != model.input_channels:
        raise BadInput(f"{model.path.name} reads {model.input_channels} channels; got an array of shape {rgb.shape}")
    overlap = model.tile_overlap if overlap is None else overlap
    if tile is None:
        budget = memory_budget_bytes or (CUDA_BUDGET_BYTES if model.on_gpu else
                                         cpu_activation_budget(rgb.shape[0] * rgb.shape[1], rgb.shape[2], model.scale))
        tile = tiling.tile_from_budget(budget, model.activation_floats_per_px, overlap, model.size_multiple)
    smallest = tiling.min_tile(overlap, model.size_multiple)

    def infer(batch: np.ndarray) -> np.ndarray:  # clip per tile: no clipped copy of the whole image
        return infer_averaged(model, np.clip(batch, 0.0, 1.0), passes)

    while True:
        try:
            out = tiling.run_tiled(rgb, infer, scale=model.scale, multiple=model.size_multiple,
                                   tile=tile, overlap=overlap, progress=progress,
                                   cancel_requested=cancel_requested)
            model.release_memory()
            return out
        except Exception as exc:
            if not _is_out_of_memory(exc) or tile <= smallest:
                if isinstance(exc, EngineError):
                    raise
                if _is_out_of_memory(exc):
                    raise EngineError(f"out of memory even with {tile}-px tiles: {exc}") from exc
                raise EngineError(f"ONNX Runtime failed on {model.path.name}: {exc}") from exc
            tile = max(smallest, tile // 2)  # chaiNNer's remedy: smaller tiles, same result
            if progress is not None:
                progress(0.0, f"out of memory: retrying with {tile}-px tiles")


def run_model(model: OnnxModel, image: np.ndarray, *, tile: int | None = None, overlap: int | None = None,
              memory_budget_bytes: float | None = None,
              progress: Callable[[float, str], None] | None = None,
              cancel_requested: Callable[[], bool] | None = None, passes: int = 1,
              guide: np.ndarray | None = None) -> np.ndarray:
    """Restore/upscale an H×W×C (C = 1–4, alpha last if 2 or 4) float32 image in [0, 1] with a
    net that reads RGB and then the H×W×k ``guide`` channels, if any (the denoise net's
    noise level; the inpainting net's hole comes with its own fill: ``engine.ops``'s inpaint)."""
    guide_channels = 0 if guide is None else guide.shape[2]
    if model.input_channels != 3 + guide_channels:
        raise BadInput(f"{model.path.name} reads {model.input_channels} channels, not an image "
                       + (f"and {guide_channels} more" if guide_channels else "alone"))
    if guide is not None and guide.shape[:2] != image.shape[:2]:
        raise BadInput(f"guide of {guide.shape[:2]} for an image of {image.shape[:2]}")
    if image.ndim != 3 or image.shape[2] not in (1, 2, 3, 4):
        raise BadInput(f"image must be H×W×C with 1–4 channels, got shape {image.shape}")
    channels = image.shape[2]
    has_alpha = channels in (2, 4)
    colour = image[:, :, :channels - 1] if has_alpha else image
    grey = colour.shape[2] == 1
    rgb = np.repeat(colour, 3, axis=2) if grey else colour
    if guide is not None:
        rgb = np.concatenate([rgb, guide], axis=2)
    out = run_rgb(model, rgb.astype(np.float32, copy=False), tile=tile, overlap=overlap,
                  memory_budget_bytes=memory_budget_bytes, progress=progress, cancel_requested=cancel_requested,
                  passes=passes)
    np.clip(out, 0.0, 1.0, out=out)  # in place: a 6000×4000 ×2 result is 1.1 GB of float32
    if grey:
        out = out.mean(axis=2, keepdims=True)
    if has_alpha:
        alpha = tiling.resize_alpha(np.clip(image[:, :, -1:], 0.0, 1.0), model.scale)
        out = np.concatenate([out, alpha], axis=2)
    return out.astype(np.float32, copy=False)
