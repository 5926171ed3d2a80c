"""Command line: ``python -m engine <op> IN -o OUT [options]``, plus ``serve`` and ``selfcheck``.

Every failure ends with one clear line on stderr and a non-zero exit (2 = bad input,
1 = engine error, 130 = cancelled); tracebacks go to the log file only.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from . import __version__
from .errors import BadInput, Cancelled, EngineError
from .logs import LOGGER_NAME, diagnostics, setup_logging
from .ops import OPS, JobContext, OpSpec, run_op

if TYPE_CHECKING:
    from .imageio import LoadedImage

log = logging.getLogger(LOGGER_NAME)
EXIT_ENGINE, EXIT_BAD_INPUT, EXIT_CANCELLED = 1, 2, 130


# Where the CLI's default differs from the protocol's: a file has what a plug-in must send.
CLI_DEFAULTS = {"jpeg_tables": "file"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not the whole usage block
        raise BadInput(f"{self.prog}: {message} (see --help)")


class ProgressBar:
    """A one-line bar on a terminal; a line per 10 % when stderr is a file or pipe."""

    def __init__(self, stream=sys.stderr, width: int = 30) -> None:
        self.stream = stream
        self.width = width
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self._last_decile = -1

    def __call__(self, fraction: float, text: str) -> None:
        elapsed = time.monotonic() - self.started
        if self.tty:
            filled = int(round(fraction * self.width))
            bar = "#" * filled + "." * (self.width - filled)
            self.stream.write(f"\r[{bar}] {fraction:4.0%} {text}  {elapsed:5.0f}s ")
            if fraction >= 1.0:
                self.stream.write("\n")
        else:
            decile = int(fraction * 10)
            if decile > self._last_decile:
                self._last_decile = decile
                self.stream.write(f"{fraction:4.0%} {text} ({elapsed:.0f}s)\n")
        self.stream.flush()


def _add_op_parser(sub: argparse._SubParsersAction, spec: OpSpec) -> None:
    parser = sub.add_parser(spec.name, help=spec.summary, description=spec.summary)
    parser.add_argument("input", type=Path, help="input image (PNG, TIFF, JPEG, WebP, BMP)")
    if spec.layered:
        parser.add_argument("-o", "--output", type=Path, required=True,
                            help="output folder: one PNG per layer plus manifest.json (created if missing)")
    else:
        parser.add_argument("-o", "--output", type=Path, required=True,
                            help="output image; PNG/TIFF keep 16-bit and float samples")
    if spec.needs_mask:
        parser.add_argument("--mask", type=Path, required=True,
                            help="mask image of the same size: white = pixels to fill")
    elif spec.mask_optional:
        parser.add_argument("--hint", dest="mask", type=Path, default=None,
                            help="optional hint mask of the same size (white = marked), e.g. the rough "
                                 "foreground to segment or a box around a watermark")
    if spec.second_image:
        parser.add_argument("--second", type=Path, default=None,
                            help="a second image of the same size (decompose --mode transparency: "
                                 "another mix of the same two layers, e.g. a second shot with the "
                                 "polariser turned)")
    for param in spec.params:
        default = CLI_DEFAULTS.get(param.name, param.default)
        parser.add_argument(f"--{param.name.replace('_', '-')}", dest=param.name, type=param.kind,
                            default=default, choices=param.choices,
                            help=f"{param.help} (default: {default})")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.set_defaults(op_spec=spec)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m engine",
                     description="Neural Restore engine: neural image restoration from the command line.")
    parser.add_argument("--version", action="version", version=f"neural-restore-engine {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for spec in OPS.values():
        _add_op_parser(sub, spec)
    sub.add_parser("serve", help="speak the plug-in protocol on stdin/stdout (started by the GIMP plug-in)")
    sub.add_parser("selfcheck", help="run a tiny job through the plug-in protocol and report")
    return parser


def _layer_stack_folder(folder: Path) -> Path:
    """Create (or reuse) the output folder of a layered op before any work is done."""
    if folder.exists() and not folder.is_dir():
        raise BadInput(f"{folder} is a file; a layered op writes a folder of layers")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"cannot create the output folder {folder}: {exc.strerror}") from None
    return folder


def _write_layer_stack(folder: Path, layers: list, loaded: LoadedImage, op: str, params: dict) -> Path:
    """One PNG per result (16-bit when the input was deeper than 8, with the input's colour
    profile and EXIF) plus manifest.json: the stack top first, with what GIMP would set (blend,
    opacity, mask, visibility)."""
    import json

    from .imageio import write_image

    entries = []
    for layer in layers:
        file_name = f"{layer.role}.png"
        write_image(folder / file_name, layer.pixels, loaded.sample_type, loaded.metadata)
        entries.append({"file": file_name, "role": layer.role, "title": layer.title, "kind": layer.kind,
                        "blend": layer.blend, "opacity": layer.opacity, "mask": layer.mask,
                        "visible": layer.visible})
    manifest = folder / "manifest.json"
    manifest.write_text(json.dumps({"op": op, "params": params, "order": "top first",
                                    "composite": "each layer over the ones below it, normal mode, "
                                                 "mixing the sRGB-encoded values; a mask entry names "
                                                 "the file that is the layer's mask",
                                    "layers": entries}, indent=2) + "\n")
    return manifest


def _run_file_op(args: argparse.Namespace) -> int:
    from .imageio import check_writable, read_image, read_mask, write_image

    spec: OpSpec = args.op_spec
    # Before minutes of work, not after.
    if spec.layered:
        _layer_stack_folder(args.output)
    else:
        check_writable(args.output)
    loaded = read_image(args.input)
    mask_path = getattr(args, "mask", None)
    mask = read_mask(mask_path, loaded.pixels.shape[:2]) if mask_path is not None else None
    second_path = getattr(args, "second", None)
    second = read_image(second_path).pixels if second_path is not None else None
    params = {p.name: getattr(args, p.name) for p in spec.params}
    if params.get("jpeg_tables") == "file":  # the input's own tables, if it is a JPEG
        params["jpeg_tables"] = loaded.jpeg_tables
    bar = None if args.quiet else ProgressBar()
    layers = run_op(spec.name, loaded.pixels, mask, params, JobContext(bar), second=second)
    if spec.layered:
        manifest = _write_layer_stack(args.output, layers, loaded, spec.name, params)
        if not args.quiet:
            print(f"wrote {len(layers)} layers and {manifest}", file=sys.stderr)
        return 0
    write_image(args.output, layers[0].pixels, loaded.sample_type, loaded.metadata)
    for extra in layers[1:]:
        extra_path = args.output.with_name(f"{args.output.stem}-{extra.role}{args.output.suffix}")
        write_image(extra_path, extra.pixels, loaded.sample_type, loaded.metadata)
    if not args.quiet:
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    log_path = setup_logging()
    try:
        args = build_parser().parse_args(argv)
        if args.command == "serve":
            from .serve import serve

            return serve()
        if args.command == "selfcheck":
            from .selfcheck import selfcheck

            return selfcheck()
        return _run_file_op(args)
    except Cancelled:
        print("cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    except BadInput as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except EngineError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_ENGINE
    except Exception as exc:  # noqa: BLE001 - never a traceback on the terminal
        log.exception("CLI failure")
        print(f"error: internal engine error: {exc!r}; details in {log_path} ({diagnostics()})",
              file=sys.stderr)
        return EXIT_ENGINE
