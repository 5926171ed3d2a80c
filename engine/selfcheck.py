"""``python -m engine selfcheck``: start ``engine serve`` like the plug-in does and run a tiny job."""
from __future__ import annotations

import subprocess
import sys

import numpy as np

from .errors import EngineError
from .protocol import PROTOCOL_VERSION, Buffer, read_message, write_message


def selfcheck(iterations: int = 5) -> int:
    """Round-trip a 32×32 DIP denoise through the protocol; print one line; 0 on success."""
    process = subprocess.Popen([sys.executable, "-I", "-m", "engine", "serve"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdin is not None and process.stdout is not None
    try:
        hello = read_message(process.stdout)
        if hello is None or hello.type != "hello" or hello.header.get("protocol") != PROTOCOL_VERSION:
            raise EngineError(f"engine serve did not say hello: {process.stderr.read().decode()[-500:]}")
        image = np.random.default_rng(0).integers(0, 256, (32, 32, 4), dtype=np.uint8)
        write_message(process.stdin, {"type": "request", "id": 1, "op": "denoise",
                                      # the DIP (PyTorch) path: the install's heavier half
                                      "params": {"method": "dip", "iterations": iterations}},
                      [Buffer("image", image, 3, 4)])
        while True:
            reply = read_message(process.stdout)
            if reply is None:
                raise EngineError("engine serve stopped during the self-check")
            if reply.type == "error":
                raise EngineError(f"self-check job failed: {reply.header.get('message')}")
            if reply.type == "result":
                break
        out = reply.buffer("image")
        if out is None or out.pixels.shape != image.shape or (out.x, out.y) != (3, 4):
            raise EngineError("self-check result has the wrong geometry")
        if not np.array_equal(out.pixels[..., 3], image[..., 3]):
            raise EngineError("self-check result lost the alpha channel")
    finally:
        process.stdin.close()
        process.wait(timeout=30)
    print(f"selfcheck: engine {hello.header['engine']} ran a {iterations}-iteration denoise "
          f"through the plug-in protocol in {reply.header['info']['seconds']:.1f} s: ok")
    return 0
