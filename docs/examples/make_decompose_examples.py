"""Decompose into layers on Double-DIP's own inputs, with our CLI exactly as a user runs it.

    python docs/examples/make_decompose_examples.py [--side 128] [case ...]   # needs ../shared/data/doubledip
    python docs/examples/make_decompose_examples.py --side 0 dehaze-hongkong watermark-full-size   # + <case>-detail.png, 1:1

Each case downscales one of ../shared/data/doubledip's images (longer side ``--side``; the CPU
budget of a README picture), runs ``python -m engine decompose`` on it, and writes
docs/examples/decompose/<case>.png: the input, then every layer of the manifest top first
(masks in grey), captioned with the layer titles. Commands and seconds go to
docs/examples/decompose/results.json.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DATA = REPO.parent / "shared" / "data" / "doubledip"
OUT = HERE / "decompose"

# case -> (mode, image, hint, second image or None). A hint is an image (white = hinted) or a
# box (left, top, right, bottom as fractions of the image). fotolia_watermark.png is the
# watermark's box in fotolia.jpg; the box for fotolia2.jpg (the same mark, centred, over white
# clouds and a turbine) was read off the picture. input1/input2 are Double-DIP's two mixtures
# of the same two layers.
CASES = {
    "segment-texture": ("segment", "texture12.jpg", None, None),
    "transparency": ("transparency", "input1.jpg", None, None),
    "transparency-two-shots": ("transparency", "input1.jpg", None, "input2.jpg"),
    "dehaze-tiananmen": ("dehaze", "tiananmen.png", None, None),
    "watermark": ("watermark", "fotolia.jpg", "fotolia_watermark.png", None),
    "watermark-fotolia2": ("watermark", "fotolia2.jpg", (0.32, 0.43, 0.69, 0.57), None),
    # At full size (--side 0): larger than the working side, so fitted on a reduced copy
    # (dehaze) or on the mark's box and margin (watermark), then carried to full size.
    "dehaze-hongkong": ("dehaze", "hongkong.png", None, None),
    "watermark-full-size": ("watermark", "fotolia.jpg", "fotolia_watermark.png", None),
}
# Tiles of a full-size case are shown at most this large in the picture.
SHEET_TILE_SIDE = 520
# Full-size cases (--side 0) also get <case>-detail.png: the input beside this layer, 1:1, in a
# DETAIL_SIZE crop centred on the image (or on the hint's box), to show the detail kept.
DETAIL_LAYER = {"dehaze": "Dehazed", "watermark": "Clean", "segment": "Foreground", "transparency": "Transmission"}
DETAIL_SIZE = (400, 300)
CAPTION_HEIGHT = 14


def _fit(image: Image.Image, side: int, resample: Image.Resampling) -> Image.Image:
    """``image`` with its longer side ``side`` (0: as it is)."""
    if side == 0:
        return image
    scale = side / max(image.size)
    return image.resize((max(8, round(image.width * scale)), max(8, round(image.height * scale))), resample)


def _sheet(tiles: list[tuple[str, Image.Image]], out: Path) -> None:
    tiles = [(caption, tile if max(tile.size) <= SHEET_TILE_SIDE else _fit(tile, SHEET_TILE_SIDE, Image.Resampling.LANCZOS))
             for caption, tile in tiles]
    gap = 6
    width = sum(t.width for _, t in tiles) + gap * (len(tiles) - 1)
    height = max(t.height for _, t in tiles) + CAPTION_HEIGHT
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for caption, tile in tiles:
        canvas.paste(tile.convert("RGB"), (x, CAPTION_HEIGHT))
        draw.text((x + 2, 1), caption, fill=(0, 0, 0))
        x += tile.width + gap
    canvas.save(out, optimize=True)


def _detail(source: Image.Image, title: str, layer: Image.Image, around: tuple[int, int, int, int] | None,
            out: Path) -> None:
    """The input and ``layer`` (titled ``title``) side by side at 1:1, a DETAIL_SIZE crop
    centred on ``around`` (a box) or on the image."""
    left, top, right, bottom = around or (0, 0, source.width, source.height)
    width, height = min(DETAIL_SIZE[0], source.width), min(DETAIL_SIZE[1], source.height)
    x = min(max(0, (left + right - width) // 2), source.width - width)
    y = min(max(0, (top + bottom - height) // 2), source.height - height)
    box = (x, y, x + width, y + height)
    _sheet([("input, 1:1", source.crop(box)), (f"{title}, 1:1", layer.crop(box))], out)


def make_case(name: str, side: int, iterations: int) -> dict[str, object]:
    mode, image_name, hint_name, second_name = CASES[name]
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        source = _fit(Image.open(DATA / image_name).convert("RGB"), side, Image.Resampling.LANCZOS)
        source.save(work / "input.png")
        args = ["decompose", str(work / "input.png"), "-o", str(work / "layers"), "--mode", mode, "--seed", "0"]
        if isinstance(hint_name, tuple):
            hint = Image.new("L", source.size, 0)
            left, top, right, bottom = hint_name
            ImageDraw.Draw(hint).rectangle((round(left * source.width), round(top * source.height),
                                            round(right * source.width), round(bottom * source.height)), fill=255)
            hint.save(work / "hint.png")
            args += ["--hint", str(work / "hint.png")]
        elif hint_name:
            hint = Image.open(DATA / hint_name).convert("L").resize(source.size, Image.Resampling.NEAREST)
            hint.save(work / "hint.png")
            args += ["--hint", str(work / "hint.png")]
        tiles = [("input", source)]
        if second_name:
            second = _fit(Image.open(DATA / second_name).convert("RGB"), side, Image.Resampling.LANCZOS)
            second.save(work / "second.png")
            args += ["--second", str(work / "second.png")]
            tiles.append(("second input", second))
        if iterations:
            args += ["--iterations", str(iterations)]
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "engine", *args], cwd=REPO, check=True)
        seconds = round(time.monotonic() - started, 1)
        manifest = json.loads((work / "layers" / "manifest.json").read_text())
        for layer in manifest["layers"]:
            tiles.append((layer["title"], Image.open(work / "layers" / layer["file"])))
        OUT.mkdir(exist_ok=True)
        _sheet(tiles, OUT / f"{name}.png")
        if side == 0:
            hint_box = Image.open(work / "hint.png").getbbox() if (work / "hint.png").exists() else None
            _detail(source, DETAIL_LAYER[mode], dict(tiles)[DETAIL_LAYER[mode]], hint_box, OUT / f"{name}-detail.png")
    shown = " ".join(shlex.quote(a) for a in args).replace(str(work) + "/", "")
    return {"mode": mode, "image": f"../shared/data/doubledip/{image_name}",
            "hint": list(hint_name) if isinstance(hint_name, tuple) else hint_name,
            "second": f"../shared/data/doubledip/{second_name}" if second_name else None,
            "size": list(source.size), "command": f"python -m engine {shown}", "seconds": seconds,
            "picture": f"docs/examples/decompose/{name}.png"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("cases", nargs="*", help=f"some of {', '.join(CASES)} (default: all)")
    parser.add_argument("--side", type=int, default=128, help="longer side of the downscaled input (0: full size)")
    parser.add_argument("--iterations", type=int, default=0, help="0 = the engine's automatic count")
    args = parser.parse_args()
    unknown = sorted(set(args.cases) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES)}")
    results_path = OUT / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for name in args.cases or list(CASES):
        results[name] = make_case(name, args.side, args.iterations)
        OUT.mkdir(exist_ok=True)
        results_path.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps({name: results[name]}), flush=True)


if __name__ == "__main__":
    main()
