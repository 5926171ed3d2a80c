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
from typing import Sequence

from . import __version__
from .errors import BadInput, Cancelled, EngineError
from .logs import LOGGER_NAME, diagnostics, setup_logging
from .ops import OPS, JobContext, OpSpec, run_op

log = logging.getLogger(LOGGER_NAME)
EXIT_ENGINE, EXIT_BAD_INPUT, EXIT_CANCELLED = 1, 2, 130


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
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="output image; PNG/TIFF keep 16-bit and float samples")
    if spec.needs_mask:
        parser.add_argument("--mask", type=Path, required=True,
                            help="mask image of the same size: white = pixels to fill")
    for param in spec.params:
        parser.add_argument(f"--{param.name.replace('_', '-')}", dest=param.name, type=param.kind,
                            default=param.default, choices=param.choices,
                            help=f"{param.help} (default: {param.default})")
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


def _run_file_op(args: argparse.Namespace) -> int:
    from .imageio import check_writable, read_image, read_mask, write_image

    spec: OpSpec = args.op_spec
    check_writable(args.output)  # before minutes of work, not after
    loaded = read_image(args.input)
    mask = read_mask(args.mask, loaded.pixels.shape[:2]) if spec.needs_mask else None
    params = {p.name: getattr(args, p.name) for p in spec.params}
    bar = None if args.quiet else ProgressBar()
    layers = run_op(spec.name, loaded.pixels, mask, params, JobContext(bar))
    write_image(args.output, layers[0].pixels, loaded.sample_type)
    for extra in layers[1:]:
        extra_path = args.output.with_name(f"{args.output.stem}-{extra.role}{args.output.suffix}")
        write_image(extra_path, extra.pixels, loaded.sample_type)
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
