"""``python -m engine serve``: the plug-in's subprocess entry (protocol: docs/protocol.md).

A reader thread owns stdin so that a ``cancel`` frame is seen while an op runs in the
main thread; only the main thread writes to stdout.
"""
from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from typing import BinaryIO

import numpy as np

from . import __version__, budget
from .errors import BadInput, Cancelled, EngineError
from .imageio import from_float, to_float
from .logs import LOGGER_NAME, diagnostics, setup_logging
from .ops import OPS, JobContext, ResultLayer, estimate_seconds, get_op, run_op
from .protocol import PROTOCOL_VERSION, Buffer, Message, ProtocolError, read_message, write_message

log = logging.getLogger(LOGGER_NAME)
PROGRESS_INTERVAL_S = 0.25
# Previews are full images: never more often than this, whatever the request asks.
MIN_PREVIEW_INTERVAL_S = 1.0
# What this engine understands beyond protocol 1's request/cancel (listed in the hello, so
# a plug-in can tell an older engine from a newer one and only ask for what it knows).
FEATURES = ("op-params", "estimate", "preview", "partial-result", "memory-budget", "second-image")
_SAMPLE_TYPES = {np.dtype("u1"): "u8", np.dtype("<u2"): "u16", np.dtype("<f4"): "f32"}


class _Session:
    def __init__(self, stdin: BinaryIO, stdout: BinaryIO) -> None:
        self.stdin = stdin
        self.stdout = stdout
        self.inbox: queue.Queue[Message | ProtocolError | None] = queue.Queue()
        self.cancelled_ids: set[int] = set()
        self.lock = threading.Lock()
        # Set when stdin closes: the plug-in is gone (GIMP closed it, or the user's cancel
        # killed it), so a running job must stop instead of computing for nobody.
        self.peer_gone = threading.Event()

    def read_forever(self) -> None:
        try:
            while True:
                message = read_message(self.stdin)
                if message is None or message.type == "shutdown":
                    break
                if message.type == "cancel":
                    with self.lock:
                        self.cancelled_ids.add(message.header.get("id"))  # type: ignore[arg-type]
                    continue
                self.inbox.put(message)
        except ProtocolError as exc:
            self.inbox.put(exc)
            return
        except Exception as exc:  # noqa: BLE001 - e.g. a closed pipe: end the session quietly
            log.info("stdin reader stopped: %r", exc)
        self.peer_gone.set()
        self.inbox.put(None)

    def is_cancelled(self, request_id: int) -> bool:
        if self.peer_gone.is_set():
            return True
        with self.lock:
            return request_id in self.cancelled_ids

    def send(self, header: dict, buffers: list[Buffer] = ()) -> None:  # type: ignore[assignment]
        try:
            write_message(self.stdout, header, buffers)
        except (BrokenPipeError, ValueError, OSError):
            self.peer_gone.set()  # nobody reads our answers any more


def _decode_request(message: Message) -> tuple[str, dict, np.ndarray, np.ndarray | None, np.ndarray | None,
                                                Buffer]:
    op = message.header.get("op")
    if not isinstance(op, str) or op not in OPS:
        raise BadInput(f"unknown operation {op!r}; this engine knows {', '.join(OPS)}")
    params = message.header.get("params", {})
    if not isinstance(params, dict):
        raise BadInput("request 'params' must be a JSON object")
    source = message.buffer("image")
    if source is None:
        raise BadInput("request has no 'image' buffer")
    mask_buffer = message.buffer("mask")
    mask = None
    if mask_buffer is not None:
        if mask_buffer.pixels.shape[2] != 1:
            raise BadInput("the mask buffer must have one channel")
        mask = to_float(mask_buffer.pixels)[:, :, 0]  # selection strength 0…1
    second_buffer = message.buffer("second")
    if second_buffer is not None and not OPS[op].second_image:
        raise BadInput(f"{op} takes no 'second' buffer")
    second = None if second_buffer is None else to_float(second_buffer.pixels)
    return op, params, to_float(source.pixels), mask, second, source


def _result_offsets(source: Buffer, pixels: np.ndarray) -> tuple[int, int]:
    """Where a result layer sits in image coordinates: the source's offsets when it has the
    source's size; scaled with it when it is an integer enlargement (upscale), so the offsets
    stay those of the same content in the enlarged image; else the origin."""
    in_h, in_w = source.pixels.shape[:2]
    out_h, out_w = pixels.shape[:2]
    if (out_h, out_w) == (in_h, in_w):
        return source.x, source.y
    if out_w % in_w == 0 and out_h % in_h == 0 and out_w // in_w == out_h // in_h:
        factor = out_w // in_w
        return source.x * factor, source.y * factor
    return 0, 0


def op_params() -> dict[str, dict[str, dict]]:
    """Each op's params as the hello lists them: the plug-in sends only these."""
    return {name: {p.name: {"default": p.default, "choices": list(p.choices) if p.choices else None,
                            "minimum": p.minimum, "maximum": p.maximum}
                   for p in spec.params}
            for name, spec in OPS.items()}


def _wire_layers(layers: list[ResultLayer], source: Buffer) -> list[Buffer]:
    sample_type = _SAMPLE_TYPES[source.pixels.dtype]
    # Composite attributes (blend, opacity, mask, visible, kind) ride along only where they
    # differ from a plain layer, so single-layer results look exactly as before.
    return [Buffer(layer.role, from_float(layer.pixels, sample_type), *_result_offsets(source, layer.pixels),
                   {"title": layer.title, **layer.attributes()}) for layer in layers]


def _is_layer_list(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, ResultLayer) for v in value)


def _estimate(session: _Session, message: Message) -> None:
    """Answer an ``estimate`` frame: seconds and memory per param set, for the dialog."""
    request_id = message.header.get("id")
    try:
        op = get_op(str(message.header.get("op")))
        width, height = int(message.header["width"]), int(message.header["height"])  # type: ignore[arg-type]
        variants = message.header.get("params") or [{}]
        if not isinstance(variants, list) or not all(isinstance(v, dict) for v in variants):
            raise BadInput("estimate 'params' must be a list of JSON objects")
        selected = message.header.get("selected_pixels")  # optional: how much of the area is selected
        selected = None if selected is None else max(0, int(selected))  # type: ignore[arg-type]
        seconds, memory = [], []
        for raw in variants:
            values = op.validate(raw)
            seconds.append(estimate_seconds(op.name, values, height, width, selected))
            memory.append(budget.working_bytes(op.name, values, height, width))
        session.send({"type": "estimate", "id": request_id, "seconds": seconds,
                      "memory_bytes": memory, "memory_available": budget.available_bytes()})
    except (KeyError, TypeError, ValueError) as exc:
        session.send({"type": "error", "id": request_id, "kind": "bad-input",
                      "message": f"malformed estimate request: {exc!r}"})
    except EngineError as exc:
        session.send({"type": "error", "id": request_id, "kind": exc.kind, "message": exc.message})


def _handle(session: _Session, message: Message) -> None:
    if message.type == "estimate":
        _estimate(session, message)
        return
    request_id = message.header.get("id")
    started = time.monotonic()
    last_sent = [0.0]
    source: Buffer | None = None

    def progress(fraction: float, text: str) -> None:
        now = time.monotonic()
        if fraction >= 1.0 or now - last_sent[0] >= PROGRESS_INTERVAL_S:
            last_sent[0] = now
            session.send({"type": "progress", "id": request_id, "fraction": fraction, "text": text})

    try:
        if message.type != "request":
            raise BadInput(f"unexpected message type {message.type!r}")
        op, params, image, mask, second, source = _decode_request(message)
        log.info("request %s: %s %s on %s×%s×%s %s", request_id, op, params, *source.pixels.shape,
                 _SAMPLE_TYPES[source.pixels.dtype])
        preview = _preview_sender(session, request_id, source, message.header.get("preview_interval_s"))
        ctx = JobContext(progress, lambda: session.is_cancelled(request_id), preview)  # type: ignore[arg-type]
        layers = run_op(op, image, mask, params, ctx, second=second)
        elapsed = time.monotonic() - started
        log.info("request %s done in %.1f s", request_id, elapsed)
        session.send({"type": "result", "id": request_id, "info": {"seconds": round(elapsed, 3)}},
                     _wire_layers(layers, source))
    except Cancelled as exc:
        # Asked to stop by a cancel frame (not by the plug-in vanishing): hand back what the
        # op had so far, so the user can keep it. Marked partial in header and info.
        if source is not None and not session.peer_gone.is_set() and _is_layer_list(exc.partial):
            elapsed = time.monotonic() - started
            log.info("request %s cancelled after %.1f s; sending the partial result", request_id, elapsed)
            session.send({"type": "result", "id": request_id, "partial": True,
                          "info": {"seconds": round(elapsed, 3), "partial": True}},
                         _wire_layers(exc.partial, source))  # type: ignore[arg-type]
        else:
            log.info("request %s: cancelled", request_id)
            session.send({"type": "error", "id": request_id, "kind": exc.kind, "message": exc.message})
    except EngineError as exc:
        log.info("request %s: %s: %s", request_id, exc.kind, exc.message)
        session.send({"type": "error", "id": request_id, "kind": exc.kind, "message": exc.message})
    except Exception as exc:  # noqa: BLE001 - report any bug to the plug-in, keep serving
        log.exception("request %s failed", request_id)
        session.send({"type": "error", "id": request_id, "kind": "engine",
                      "message": f"internal engine error: {exc!r} ({diagnostics()}; log: {_log_path()})"})


def _preview_sender(session: _Session, request_id: object, source: Buffer, interval: object):
    """JobContext.preview for a request that asked for previews (else None: ops skip them)."""
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval <= 0:
        return None
    interval = max(float(interval), MIN_PREVIEW_INTERVAL_S)
    last_sent = [time.monotonic()]  # the first preview after one interval, not at once

    def send_preview(layers: list[ResultLayer]) -> None:
        now = time.monotonic()
        if now - last_sent[0] < interval or not _is_layer_list(layers):
            return
        last_sent[0] = now
        session.send({"type": "preview", "id": request_id}, _wire_layers(layers, source))

    return send_preview


def _log_path() -> str:
    path = setup_logging()
    return str(path) if path else "no log file"


def serve(stdin: BinaryIO | None = None, stdout: BinaryIO | None = None) -> int:
    """Run the protocol on the given streams (default: this process's stdin/stdout)."""
    if stdout is None:
        # Keep the real stdout for frames; anything printed by libraries goes to stderr.
        stdout = os.fdopen(os.dup(1), "wb")
        os.dup2(2, 1)
        sys.stdout = sys.stderr
    if stdin is None:
        stdin = sys.stdin.buffer
    log_path = setup_logging()
    log.info("serve start: %s", diagnostics())
    session = _Session(stdin, stdout)
    session.send({"type": "hello", "protocol": PROTOCOL_VERSION, "engine": __version__,
                  "ops": list(OPS), "op_params": op_params(),
                  "op_second_image": [name for name, spec in OPS.items() if spec.second_image],
                  "features": list(FEATURES), "python": sys.executable, "log": str(log_path) if log_path else None})
    threading.Thread(target=session.read_forever, name="stdin-reader", daemon=True).start()
    while True:
        item = session.inbox.get()
        if item is None:
            log.info("serve end")
            return 0
        if isinstance(item, ProtocolError):
            log.error("protocol error: %s", item)
            session.send({"type": "error", "id": None, "kind": "protocol", "message": str(item)})
            return 2
        _handle(session, item)
