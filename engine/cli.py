"""Command line: ``python -m engine <op> IN -o OUT [options]``, plus ``serve`` and ``selfcheck``.

Several inputs (files or folders of images) make a batch: ``-o`` is then a folder, each result
is named after its input, and a file that fails is reported and skipped (``--mask`` and the
other companion images may be folders, matched by file name).

Every failure ends with one clear line on stderr and a non-zero exit (2 = bad input,
1 = engine error, 130 = cancelled); tracebacks go to the log file only.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from . import __version__
from .errors import BadInput, Cancelled, EngineError
from .imageio import WRITABLE
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


# What a folder given as input (or as a folder of masks) is searched for: the types read and written.
BATCH_SUFFIXES = tuple(sorted(WRITABLE))
BATCH_FORMATS = ("png", "tif", "jpg", "webp", "bmp")
_FOLDER_OF_MATCHES = " (a folder: the image with the input's file name, for a batch)"


def _add_op_parser(sub: argparse._SubParsersAction, spec: OpSpec) -> None:
    parser = sub.add_parser(spec.name, help=spec.summary, description=spec.summary)
    parser.add_argument("input", type=Path, nargs="+",
                        help="input image (PNG, TIFF, JPEG, WebP, BMP); several, or folders of them, "
                             "make a batch")
    if spec.layered:
        parser.add_argument("-o", "--output", type=Path, required=True,
                            help="output folder: one PNG per layer plus manifest.json (created if missing); "
                                 "a batch writes one such folder per input, named after it")
    else:
        parser.add_argument("-o", "--output", type=Path, required=True,
                            help="output image; PNG/TIFF keep 16-bit and float samples; for a batch (or "
                                 "when it is an existing folder) a folder, created if missing, where each "
                                 "result takes its input's name")
        parser.add_argument("--format", choices=BATCH_FORMATS, default="png",
                            help="batch: the results' file type (default: png, lossless and 16-bit "
                                 "capable: a restored JPEG is not compressed again)")
    if spec.needs_mask:
        parser.add_argument("--mask", type=Path, required=True,
                            help="mask image of the same size: white = pixels to fill" + _FOLDER_OF_MATCHES)
    elif spec.mask_optional:
        parser.add_argument("--hint", dest="mask", type=Path, default=None,
                            help="optional hint mask of the same size (white = marked), e.g. the rough "
                                 "foreground to segment or a box around a watermark" + _FOLDER_OF_MATCHES)
    if spec.second_image:
        parser.add_argument("--second", type=Path, default=None,
                            help="a second image of the same size (decompose --mode transparency: "
                                 "another mix of the same two layers, e.g. a second shot with the "
                                 "polariser turned)" + _FOLDER_OF_MATCHES)
    for param in spec.params:
        default = CLI_DEFAULTS.get(param.name, param.default)
        parser.add_argument(f"--{param.name.replace('_', '-')}", dest=param.name, type=param.kind,
                            default=default, choices=param.choices,
                            help=f"{param.help} (default: {default})")
    parser.add_argument("--skip-existing", action="store_true",
                        help="leave out inputs whose result is already there (to resume a batch)")
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


def _output_folder(folder: Path, what: str = "a layered op writes a folder of layers") -> Path:
    """Create (or reuse) an output folder (a layered op's, a batch's) before any work is done."""
    if folder.exists() and not folder.is_dir():
        raise BadInput(f"{folder} is a file; {what}")
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


@dataclass(frozen=True)
class FileJob:
    """One input and where its result goes; ``mask``/``second``: its companion images."""
    input: Path
    output: Path
    mask: Path | None = None
    second: Path | None = None


def _run_file_job(spec: OpSpec, job: FileJob, args: argparse.Namespace, progress) -> list:
    """Read, run, write one image (the output was checked writable before)."""
    from .imageio import read_image, read_mask, write_image

    if spec.layered:
        _output_folder(job.output)
    loaded = read_image(job.input)
    mask = read_mask(job.mask, loaded.pixels.shape[:2]) if job.mask is not None else None
    second = read_image(job.second).pixels if job.second is not None else None
    params = {p.name: getattr(args, p.name) for p in spec.params}
    if params.get("jpeg_tables") == "file":  # the input's own tables, if it is a JPEG
        params["jpeg_tables"] = loaded.jpeg_tables
    layers = run_op(spec.name, loaded.pixels, mask, params, JobContext(progress), second=second)
    if spec.layered:
        _write_layer_stack(job.output, layers, loaded, spec.name, params)
        return layers
    write_image(job.output, layers[0].pixels, loaded.sample_type, loaded.metadata)
    for extra in layers[1:]:
        extra_path = job.output.with_name(f"{job.output.stem}-{extra.role}{job.output.suffix}")
        write_image(extra_path, extra.pixels, loaded.sample_type, loaded.metadata)
    return layers


def _companion_names(args: argparse.Namespace) -> dict[str, str]:
    return {"mask": "--hint" if args.op_spec.mask_optional else "--mask", "second": "--second"}


def _companion(path: Path | None, image: Path, option: str) -> Path | None:
    """A companion image (mask, hint, second shot): a file serves every input; in a folder,
    the image with the input's file name (any image type)."""
    if path is None or not path.is_dir():
        return path
    matches = sorted(p for p in path.iterdir() if p.stem == image.stem and p.suffix.lower() in BATCH_SUFFIXES)
    if not matches:
        raise BadInput(f"{option} folder {path} has no image named {image.stem} (for {image.name})")
    return matches[0]


def is_batch(args: argparse.Namespace) -> bool:
    inputs: list[Path] = args.input
    return (len(inputs) > 1 or inputs[0].is_dir()
            or (not args.op_spec.layered and args.output.is_dir()))


def batch_inputs(inputs: list[Path]) -> list[Path]:
    """The files to process: each file named, and each named folder's images (not its
    subfolders, nor hidden files), in name order, each once; missing ones fail before any
    work."""
    files: list[Path] = []
    missing = [str(p) for p in inputs if not p.exists()]
    if missing:
        raise BadInput(f"input not found: {', '.join(missing)}")
    for path in inputs:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                           and p.suffix.lower() in BATCH_SUFFIXES)
            if not found:
                raise BadInput(f"{path} holds no images ({', '.join(BATCH_SUFFIXES)})")
            files.extend(found)
        else:
            files.append(path)
    seen: set[Path] = set()  # `in/*.png in/a.png` names a.png twice: one result
    return [p for p in files if not (p.resolve() in seen or seen.add(p.resolve()))]


def plan_batch(args: argparse.Namespace) -> list[FileJob]:
    """Every input's job, checked before any work: the output folder can be written, no two
    results share a name, no result would overwrite an input."""
    from .imageio import check_writable

    spec: OpSpec = args.op_spec
    inputs = batch_inputs(args.input)
    if not args.output.exists() and args.output.suffix.lower() in BATCH_SUFFIXES:  # a typo'd single run
        raise BadInput(f"{args.output.name} names an image, but there are several inputs: give an output folder")
    folder = _output_folder(args.output, "several inputs need an output folder (-o)")
    outputs: dict[Path, Path] = {}
    for path in inputs:
        out = folder / (path.stem if spec.layered else f"{path.stem}.{args.format}")
        if out in outputs:
            raise BadInput(f"{outputs[out].name} and {path.name} would both be written to {out.name}: "
                           "rename one, or run them as two batches")
        outputs[out] = path
    written_over = [p for out, p in outputs.items() if not spec.layered and out.resolve() == p.resolve()]
    if written_over:
        raise BadInput(f"the result of {written_over[0]} would replace it: choose another output folder "
                       "(or another --format)")
    check_writable(next(iter(outputs)) if not spec.layered else folder / "probe.png")
    return [FileJob(path, out, getattr(args, "mask", None), getattr(args, "second", None))
            for out, path in outputs.items()]


def _run_batch(args: argparse.Namespace) -> int:
    """Each job in turn; a file that fails is reported and the rest go on. Exit 0 when all
    were written, else the code of the failures (2 when every one was bad input, else 1)."""
    spec: OpSpec = args.op_spec
    jobs = plan_batch(args)
    if args.skip_existing:
        # A layered result is there once its manifest is (written last).
        kept = [job for job in jobs if not (job.output / "manifest.json" if spec.layered else job.output).exists()]
        if not args.quiet and len(kept) < len(jobs):
            print(f"{len(jobs) - len(kept)} already done (--skip-existing)", file=sys.stderr)
        jobs = kept
    failed: dict[str, int] = {}
    options = _companion_names(args)
    for number, job in enumerate(jobs, 1):
        if not args.quiet:
            print(f"[{number}/{len(jobs)}] {job.input} → {job.output}", file=sys.stderr)
        try:
            job = FileJob(job.input, job.output, _companion(job.mask, job.input, options["mask"]),
                          _companion(job.second, job.input, options["second"]))
            _run_file_job(spec, job, args, None if args.quiet else ProgressBar())
        except (Cancelled, KeyboardInterrupt):
            print(f"stopped at {job.input}: {number - 1 - len(failed)} of {len(jobs)} results written",
                  file=sys.stderr)
            raise
        except EngineError as exc:  # this file's fault, or the engine's on it: go on with the rest
            print(f"error: {job.input}: {exc.message}", file=sys.stderr)
            failed[str(job.input)] = EXIT_BAD_INPUT if isinstance(exc, BadInput) else EXIT_ENGINE
        except Exception as exc:  # noqa: BLE001 - a bug met on one file must not lose the others
            log.exception("CLI batch failure on %s", job.input)
            print(f"error: {job.input}: internal engine error: {exc!r}; details in the log", file=sys.stderr)
            failed[str(job.input)] = EXIT_ENGINE
    done = len(jobs) - len(failed)
    if not args.quiet or failed:
        print(f"wrote {done} of {len(jobs)} results to {args.output}"
              + (f"; failed: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    if not failed:
        return 0
    return EXIT_BAD_INPUT if set(failed.values()) == {EXIT_BAD_INPUT} else EXIT_ENGINE


def _run_file_op(args: argparse.Namespace) -> int:
    from .imageio import check_writable

    spec: OpSpec = args.op_spec
    if is_batch(args):
        return _run_batch(args)
    if args.skip_existing and (args.output / "manifest.json" if spec.layered else args.output).exists():
        if not args.quiet:
            print(f"{args.output} is already there (--skip-existing)", file=sys.stderr)
        return 0
    if not spec.layered:  # before minutes of work, not after (a layered op's folder: in the job)
        check_writable(args.output)
    options = _companion_names(args)
    source = args.input[0]
    job = FileJob(source, args.output, _companion(getattr(args, "mask", None), source, options["mask"]),
                  _companion(getattr(args, "second", None), source, options["second"]))
    layers = _run_file_job(spec, job, args, None if args.quiet else ProgressBar())
    if not args.quiet:
        written = args.output / "manifest.json" if spec.layered else args.output
        print(f"wrote {f'{len(layers)} layers and ' if spec.layered else ''}{written}", file=sys.stderr)
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
