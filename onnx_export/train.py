"""Train an RDN (upscale) or a U-Net (sharpen); resumable checkpoints + a model card JSON.

    python -m onnx_export.train --model rdn --scale 2 --data DIR [DIR...] --out ckpt/rdn_x2.pt \
        --steps 200000 --batch 16 --patch 48 [--resume] [--C 4 --D 8 --G 32 --G0 64]
    python -m onnx_export.train --model unet --data DIR... --out ckpt/sharpen.pt --steps N \
        --batch 8 --patch 96 [--base 32 --depth 4] [--gan-weight 0.005] [--noise-prob 0.5 --jpeg-prob 0.3]
    python -m onnx_export.train --model unet --task denoise --data DIR... --out ckpt/denoise.pt ...
    python -m onnx_export.train --model unet --task inpaint --data DIR... --out ckpt/inpaint.pt ...
    python -m onnx_export.train --model unet --task dejpeg --data DIR... --out ckpt/dejpeg.pt ...
    ... [--init-from CHECKPOINT]   start from another checkpoint's weights (its commands go in the card);
                                   an RDN with more blocks (--D) than the checkpoint's starts as
                                   the checkpoint's net, the added blocks passing their input on;
                                   a U-Net with a larger --base likewise (the added channels are
                                   read with zero weights until training grows them), and an
                                   inpainting U-Net from a 3-channel one (the hole channel too)

``--steps`` is the total: with ``--resume`` an existing checkpoint is continued up to it (the
architecture then comes from the checkpoint; architecture flags, if given, must agree).
Validation PSNR (Y channel, ``scale`` px shaved, for upscale; RGB for sharpen) is measured on
the name-hash validation split every ``--val-every`` steps and at the end, and a checkpoint is
written each time. The model card (``<out>.json``) records architecture, data, steps,
validation history and every command that built the checkpoint.

Loss: L1 (the RDN/EDSR choice: sharper than L2 at equal PSNR; for inpainting over the hole
only, and validation PSNR is measured over the hole); for the U-Net optionally plus
``--gan-weight`` × LSGAN loss from a conditional PatchGAN. Adam, cosine-decayed learning rate.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from .data import PatchData, psnr
from . import degrade
from .degrade import bicubic_upscale
from .models.rdn import block_count, deepen_state
from .models.unet import source_base, source_in_channels, widen_state
from .models import (KIND_TASKS, TASK_IN_CHANNELS, TASKS, PatchDiscriminator, build_model, model_params,
                     runtime_facts)

CHECKPOINT_FORMAT = 1
ARCH_FLAGS = {"rdn": ("C", "D", "G", "G0", "upscaling", "input_skip"), "unet": ("base", "depth", "max_channels")}
DEFAULT_ARCH: dict[str, dict[str, Any]] = {
    "rdn": {"C": 4, "D": 8, "G": 32, "G0": 64, "upscaling": "shuffle", "input_skip": True},
    "unet": {"base": 32, "depth": 4, "max_channels": 256},
}


def card_path(checkpoint: Path) -> Path:
    return checkpoint.with_suffix(".json")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m onnx_export.train", description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=("rdn", "unet"), required=True)
    p.add_argument("--scale", type=int, choices=(2, 3, 4), help="rdn only (default 2)")
    p.add_argument("--task", choices=("sharpen", "denoise", "inpaint", "dejpeg"),
                   help="unet only: what it learns to undo (default sharpen; a checkpoint keeps its own)")
    p.add_argument("--data", nargs="+", required=True, help="image folders (or files)")
    p.add_argument("--out", type=Path, required=True, help="checkpoint path (.pt)")
    p.add_argument("--steps", type=int, required=True, help="total optimisation steps")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--patch", type=int, default=48, help="net input patch side (LR side for rdn)")
    p.add_argument("--resume", action="store_true", help="continue --out if it exists")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--min-lr-ratio", type=float, default=0.01, help="cosine floor, × --lr")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = all cores")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--val-every", type=int, default=1000)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--val-max-side", type=int, default=256, help="validation crops (net input px)")
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--gan-weight", type=float, default=0.0, help="unet only: adversarial weight")
    p.add_argument("--noise-prob", type=float, default=degrade.NOISE_PROBABILITY,
                   help="unet only: share of training inputs with light noise (validation keeps the default)")
    p.add_argument("--jpeg-prob", type=float, default=degrade.JPEG_PROBABILITY,
                   help="unet only: share of training inputs JPEG'd (validation keeps the default)")
    p.add_argument("--blur-mix", type=_blur_mix, default=degrade.BLUR_MIX, metavar="G,D,R",
                   help="unet only: relative shares of Gaussian, defocus and resize blur in training "
                        "batches (default 2,1,1; validation keeps the default)")
    p.add_argument("--noise-mix", type=_noise_mix, default=degrade.NOISE_MIX, metavar="W,S,L,C",
                   help="unet --task denoise: relative shares of white / signal-dependent / luminance-only / "
                        "correlated noise in training batches (default "
                        f"{','.join(f'{v:g}' for v in degrade.NOISE_MIX)}; validation keeps white σ=25)")
    p.add_argument("--denoise-jpeg-prob", type=float, default=degrade.DENOISE_JPEG_PROBABILITY,
                   help="unet --task denoise: share of noisy training inputs JPEG'd at q 75–95 "
                        f"(default {degrade.DENOISE_JPEG_PROBABILITY:g})")
    p.add_argument("--in-channels", dest="in_channels", type=int, choices=(3, 4),
                   help="unet --task denoise: 4 = also read the noise level to remove (a strength "
                        "knob at run time); the other tasks' inputs are fixed (inpaint: 4)")
    p.add_argument("--level-probe", type=Path, help="--in-channels 4: the blind denoise net (.onnx) whose "
                   "residual is the level (default: the engine's noise_probe.onnx)")
    p.add_argument("--init-from", type=Path, help="start from another checkpoint's weights where the "
                   "shapes match (e.g. a ×4 RDN from the ×2 one: only the upsampling head differs)")
    # architecture (None = the checkpoint's on resume, else DEFAULT_ARCH)
    p.add_argument("--C", type=int)
    p.add_argument("--D", type=int)
    p.add_argument("--G", type=int)
    p.add_argument("--G0", type=int)
    p.add_argument("--upscaling", choices=("shuffle", "ups"))
    p.add_argument("--input-skip", dest="input_skip", type=lambda v: v.lower() in ("1", "true", "yes"),
                   metavar="BOOL", help="rdn: add the bilinearly enlarged input to the output (default true)")
    p.add_argument("--base", type=int)
    p.add_argument("--depth", type=int)
    p.add_argument("--max-channels", dest="max_channels", type=int)
    args = p.parse_args(argv)
    if args.model == "unet" and args.gan_weight < 0:
        p.error("--gan-weight must be ≥ 0")
    if args.model == "rdn" and args.gan_weight:
        p.error("--gan-weight is for --model unet")
    if args.in_channels is not None and not (args.model == "unet" and args.task == "denoise"):
        p.error("--in-channels is for --model unet --task denoise (3 or 4)")
    if args.task is not None and args.task not in KIND_TASKS[args.model]:
        p.error(f"--task {args.task} is not a task of --model {args.model}")
    if not all(0.0 <= v <= 1.0 for v in (args.noise_prob, args.jpeg_prob, args.denoise_jpeg_prob)):
        p.error("--noise-prob, --jpeg-prob and --denoise-jpeg-prob are probabilities in [0, 1]")
    return args


def _shares(text: str, count: int, example: str) -> tuple[float, ...]:
    """"a,b,…" relative weights → ``count`` shares summing to 1 (argparse type)."""
    try:
        weights = [float(v) for v in text.split(",")]
    except ValueError:
        weights = []
    if len(weights) != count or min(weights) < 0 or sum(weights) <= 0:
        raise argparse.ArgumentTypeError(f"give {count} non-negative weights, e.g. {example}")
    total = sum(weights)
    return tuple(w / total for w in weights)


def _noise_mix(text: str) -> tuple[float, ...]:
    """"W,S,L,C" (white, signal-dependent, luminance, correlated) → shares (argparse type)."""
    return _shares(text, len(degrade.NOISE_KINDS), "4,2,1,3")


def _blur_mix(text: str) -> tuple[float, float, float]:
    """"G,D,R" relative weights → shares summing to 1 (argparse type)."""
    return _shares(text, 3, "2,1,2")  # type: ignore[return-value]


def _arch_from_args(args: argparse.Namespace) -> dict[str, Any]:
    given = {k: getattr(args, k) for k in ARCH_FLAGS[args.model] if getattr(args, k) is not None}
    params = {**DEFAULT_ARCH[args.model], **given}
    if args.model == "rdn":
        params["scale"] = args.scale or 2
    elif args.in_channels is not None and args.in_channels != 3:
        params["in_channels"] = args.in_channels
    elif args.task in TASK_IN_CHANNELS:
        params["in_channels"] = TASK_IN_CHANNELS[args.task]
    return params


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a half checkpoint


def _write_json_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def discriminator_layers(patch: int) -> int:
    """pix2pix's 3 (70×70 receptive field), fewer for small patches: the critic's last maps
    must keep > 1 pixel (instance norm needs it; one logit per patch is no PatchGAN)."""
    return max(1, min(3, int(math.log2(max(patch, 8) / 4))))


def learning_rate(step: int, total: int, base: float, floor_ratio: float) -> float:
    t = min(step / max(total, 1), 1.0)
    return base * (floor_ratio + (1 - floor_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: PatchData, device: torch.device) -> dict[str, float]:
    """Mean validation PSNR of the net and of the trivial baseline (bicubic / the input)."""
    model.eval()
    scores, baselines = [], []
    upscale, inpaint = data.task == "upscale", data.task == "inpaint"
    for _name, src, tgt in data.validation(multiple=int(getattr(model, "size_multiple", 1))):
        x = torch.from_numpy(src.transpose(2, 0, 1)[None].copy()).to(device)
        out = model(x)[0].clamp(0, 1).cpu().numpy().transpose(1, 2, 0)
        if inpaint:  # over the hole: elsewhere the result is the input
            hole = src[:, :, 3] > 0.5
            scores.append(psnr(out, tgt, where=hole))
            baselines.append(psnr(src[:, :, :3], tgt, where=hole))
        elif upscale:
            scores.append(psnr(out, tgt, shave=data.scale, y_only=True))
            baselines.append(psnr(bicubic_upscale(src, data.scale), tgt, shave=data.scale, y_only=True))
        else:
            scores.append(psnr(out, tgt))
            baselines.append(psnr(src[:, :, :3], tgt))
    model.train()
    if not scores:
        return {}
    return {"psnr": float(np.mean(scores)), "baseline_psnr": float(np.mean(baselines)),
            "images": len(scores),
            "metric": "Y-PSNR, shave=scale" if upscale else "RGB PSNR in the hole" if inpaint else "RGB PSNR"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    command = "python -m onnx_export.train " + shlex.join(argv)
    torch.set_num_threads(args.threads or max(1, len(os.sched_getaffinity(0))))
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")

    state: dict[str, Any] | None = None
    if args.resume and args.out.exists():
        state = torch.load(args.out, map_location="cpu", weights_only=True)
        if state.get("format") != CHECKPOINT_FORMAT or state.get("kind") != args.model:
            raise SystemExit(f"{args.out} is not a {args.model} checkpoint of this trainer")
        params = dict(state["params"])
        task = state.get("task", TASKS[args.model])
        if args.task is not None and args.task != task:
            raise SystemExit(f"--resume: {args.out} was trained for {task}, not {args.task}")
        asked = _arch_from_args(args)
        clash = {k: (params.get(k), v) for k, v in asked.items()
                 if getattr(args, k, None) is not None and params.get(k) != v}
        if clash:
            raise SystemExit(f"--resume: architecture differs from the checkpoint: {clash}")
    elif args.out.exists() and not args.resume:
        raise SystemExit(f"{args.out} exists: pass --resume to continue it, or choose another --out")
    else:
        params = _arch_from_args(args)
        task = args.task or TASKS[args.model]
    torch.manual_seed(args.seed)
    model = build_model(args.model, params).to(device)
    multiple = int(getattr(model, "size_multiple", 1))
    if args.patch % multiple:
        raise SystemExit(f"--patch must be a multiple of {multiple} for this net")
    data = PatchData(args.data, task, args.patch, scale=params.get("scale", 1),
                     val_fraction=args.val_fraction, val_max_side=args.val_max_side,
                     noise_probability=args.noise_prob, jpeg_probability=args.jpeg_prob,
                     blur_mix=args.blur_mix, in_channels=params.get("in_channels", 3),
                     level_probe=args.level_probe, noise_mix=args.noise_mix,
                     denoise_jpeg_probability=args.denoise_jpeg_prob)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.999))
    disc = disc_opt = None
    if args.gan_weight > 0 or (state is not None and state.get("disc") is not None):
        disc = PatchDiscriminator(n_layers=discriminator_layers(args.patch)).to(device)
        disc_opt = torch.optim.Adam(disc.parameters(), lr=args.lr, betas=(0.5, 0.999))

    rng = np.random.default_rng(args.seed)
    step = 0
    history: list[dict[str, Any]] = []
    commands: list[str] = []
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if disc is not None and state.get("disc") is not None:
            disc.load_state_dict(state["disc"])
            disc_opt.load_state_dict(state["disc_optimizer"])  # type: ignore[union-attr]
        step = int(state["step"])
        history = list(state.get("history", []))
        commands = list(state.get("commands", []))
        rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        print(f"resumed {args.out} at step {step}", flush=True)
    elif args.init_from is not None:
        checkpoint = torch.load(args.init_from, map_location="cpu", weights_only=True)
        source = checkpoint.get("model", checkpoint)
        # A full checkpoint knows how its weights were made: keep that chain in this card.
        commands = [*checkpoint.get("commands", []), f"# then, initialised from {args.init_from}:"]
        own = model.state_dict()
        if args.model == "rdn" and block_count(source) < params["D"]:
            # A deeper net grown from a trained one: the added blocks start as identities, so
            # training starts at the source's quality instead of from a scrambled fusion layer.
            model.load_state_dict(deepen_state(source, model))
            print(f"initialised from {args.init_from}: its {block_count(source)} blocks, "
                  f"{params['D'] - block_count(source)} added as identities", flush=True)
        elif args.model == "unet" and "stem.weight" in source and (
                source_base(source) < params["base"] or source_in_channels(source) < params.get("in_channels", 3)):
            # A wider net grown from a trained one: the added channels are read with zero
            # weights, so training starts at the source's quality (see unet.widen_state).
            model.load_state_dict(widen_state(source, model))
            print(f"initialised from {args.init_from}: base {source_base(source)} widened to "
                  f"{params['base']}, {source_in_channels(source)} input channels to "
                  f"{params.get('in_channels', 3)} (added channels read with zero weights)", flush=True)
        else:
            taken = {k: v for k, v in source.items() if k in own and own[k].shape == v.shape}
            model.load_state_dict(taken, strict=False)
            print(f"initialised {len(taken)}/{len(own)} tensors from {args.init_from}", flush=True)
    commands.append(command)

    def save(last_eval: dict[str, Any] | None) -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        _save_atomic({
            "format": CHECKPOINT_FORMAT, "kind": args.model, "task": task, "params": params,
            "model": model.state_dict(), "optimizer": opt.state_dict(),
            "disc": disc.state_dict() if disc is not None else None,
            "disc_optimizer": disc_opt.state_dict() if disc_opt is not None else None,
            "step": step, "history": history, "commands": commands,
            "numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
        }, args.out)
        _write_json_atomic(model_card(args, task, params, model, data, step, history, commands, last_eval),
                           card_path(args.out))

    model.train()
    started, last_log = time.monotonic(), step
    last_eval: dict[str, Any] | None = history[-1] if history else None
    while step < args.steps:
        lr = learning_rate(step, args.steps, args.lr, args.min_lr_ratio)
        for group in opt.param_groups:
            group["lr"] = lr
        sample = data.batch(args.batch, rng)
        src = torch.from_numpy(sample.source).to(device)
        tgt = torch.from_numpy(sample.target).to(device)
        out = model(src)
        if sample.weight is not None:  # inpainting: only the hole counts
            weight = torch.from_numpy(sample.weight).to(device)
            loss = (torch.abs(out - tgt) * weight).sum() / (weight.sum() * out.shape[1]).clamp_min(1.0)
        else:
            loss = F.l1_loss(out, tgt)
        if disc is not None and args.gan_weight > 0:
            fake_score = disc(src, out)
            loss = loss + args.gan_weight * F.mse_loss(fake_score, torch.ones_like(fake_score))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if disc is not None and args.gan_weight > 0:
            real, fake = disc(src, tgt), disc(src, out.detach())
            d_loss = 0.5 * (F.mse_loss(real, torch.ones_like(real)) + F.mse_loss(fake, torch.zeros_like(fake)))
            disc_opt.zero_grad(set_to_none=True)  # type: ignore[union-attr]
            d_loss.backward()
            disc_opt.step()  # type: ignore[union-attr]
        step += 1
        if step % args.log_every == 0 or step == args.steps:
            rate = (step - last_log) / max(time.monotonic() - started, 1e-9)
            print(f"step {step}/{args.steps} loss {loss.item():.5f} lr {lr:.2e} {rate:.2f} steps/s", flush=True)
            started, last_log = time.monotonic(), step
        if step % args.val_every == 0 or step == args.steps:
            last_eval = {"step": step, **evaluate(model, data, device)}
            history.append(last_eval)
            print(f"validation at step {step}: {json.dumps(last_eval)}", flush=True)
            save(last_eval)
    if state is not None and step == int(state["step"]):
        save(last_eval)  # nothing left to train; still record the command in the card
    return 0


def degradation_text(args: argparse.Namespace, task: str) -> str:
    if task == "upscale":
        return "antialiased bicubic downscale (Pillow)"
    if task == "inpaint":
        return (f"random holes: strokes / compact shapes / scattered pixels / strokes and shapes (shares "
                f"{', '.join(f'{v:.2f}' for v in degrade.HOLE_MIX)}), at most "
                f"{degrade.MAX_HOLE_SHARE:.0%} of a patch; input: push-pull pre-fill (engine.fill) + the hole")
    if task == "denoise":
        return (f"one of white Gaussian / signal-dependent (shot + read) / luminance-only / spatially "
                f"correlated (blurred 0.4–1 px) noise "
                f"(shares {', '.join(f'{v:.2f}' for v in args.noise_mix)}), σ ≤ "
                f"{degrade.MAX_NOISE_SIGMA * 255:.0f}/255, clipped; 8-bit rounding "
                f"(p {degrade.QUANTISE_PROBABILITY:g}); JPEG q 75–95 (p {args.denoise_jpeg_prob:g}); "
                f"validation: white Gaussian σ=25/255"
                + ("; the input's 4th channel: the noise level measured by the blind net noise_probe "
                   "(engine.noise_level.probe_noise_level)" if args.in_channels == 4 else ""))
    if task == "dejpeg":
        return (f"JPEG q {degrade.DEJPEG_QUALITY[0]}–{degrade.DEJPEG_QUALITY[1]} (Pillow), chroma 4:2:0 "
                f"(4:4:4 p {degrade.DEJPEG_FULL_CHROMA_PROBABILITY:g}), block grid shifted 0–15 px, "
                f"saved twice p {degrade.DEJPEG_TWICE_PROBABILITY:g}, not JPEG'd (8-bit rounding only) "
                f"p {degrade.DEJPEG_CLEAN_PROBABILITY:g}, light noise σ ≤ "
                f"{degrade.DEJPEG_MAX_NOISE_SIGMA * 255:.0f}/255 first p {degrade.DEJPEG_NOISE_PROBABILITY:g}; "
                f"validation: JPEG q {degrade.VALIDATION_JPEG_QUALITY}")
    return ("one of Gaussian σ 0.5–3 / defocus disk r 1–4 / resize blur ×1.5–3 "
            f"(shares {', '.join(f'{v:.2f}' for v in args.blur_mix)}); "
            f"noise σ ≤ 0.02 (p {args.noise_prob:g}); JPEG q 70–95 (p {args.jpeg_prob:g})")


def model_card(args: argparse.Namespace, task: str, params: dict[str, Any], model: torch.nn.Module, data: PatchData,
               step: int, history: list[dict[str, Any]], commands: list[str],
               last_eval: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "name": args.out.stem,
        "task": task,
        "architecture": {"kind": args.model, "params": model_params(model), **runtime_facts(model, task)},
        "training": {
            "steps": step, "batch": args.batch, "patch": args.patch, "lr": args.lr,
            "loss": "L1" + (f" + {args.gan_weight} LSGAN (PatchGAN)" if args.gan_weight else ""),
            "degradation": degradation_text(args, task),
            "seed": args.seed, "torch": torch.__version__,
            "updated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        },
        "data": {
            "folders": [str(d) for d in args.data],
            "train_images": len(data.train_files), "validation_images": len(data.val_files),
            "validation_files": [p.name for p in data.val_files],
            "split": f"sha1(file name) < {args.val_fraction}",
        },
        "validation": {"last": last_eval, "history": history},
        "commands": commands,
        "initialised_from": str(args.init_from) if args.init_from else None,
    }


if __name__ == "__main__":
    sys.exit(main())
