#!/usr/bin/python3
"""A misbehaving stand-in for ``python -m engine serve`` (stdlib only, runs in any Python 3).

Started by the plug-in as ``fake_engine.py -I -m engine serve`` (it poses as the engine's
Python via NEURAL_RESTORE_ENGINE_PYTHON; the arguments are ignored). What it does is read
at each start from the file ``fake-mode`` next to this script, so one GIMP start can try
every mode:

  die-mid-run        hello, read the request, one progress frame, then SIGKILL itself
  hang-mid-run       hello, read the request, one progress frame, then sleep forever
  hang-before-hello  sleep forever without a word
  garbage            write bytes that are no frame, then wait for stdin to close
  old-protocol       a hello for protocol 99

Every start appends "<pid> <mode>" to ``fake-starts`` next to this script, so tests can
check that the plug-in refused bad input without starting an engine, and that a killed or
abandoned fake is gone afterwards.
"""
import json
import os
import signal
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def send(header):
    raw = json.dumps(header).encode("utf-8")
    sys.stdout.buffer.write(struct.pack(">I", len(raw)) + raw)
    sys.stdout.buffer.flush()


def read_request():
    length = struct.unpack(">I", sys.stdin.buffer.read(4))[0]
    header = json.loads(sys.stdin.buffer.read(length))
    sizes = {"u8": 1, "u16": 2, "f32": 4}
    for desc in header.get("buffers", []):
        sys.stdin.buffer.read(desc["width"] * desc["height"] * desc["channels"] * sizes[desc["dtype"]])
    return header


def main():
    with open(os.path.join(HERE, "fake-mode")) as handle:
        mode = handle.read().strip()
    with open(os.path.join(HERE, "fake-starts"), "a") as handle:
        handle.write("%d %s\n" % (os.getpid(), mode))
    if mode == "hang-before-hello":
        time.sleep(3600)
    if mode == "garbage":
        sys.stdout.buffer.write(b"Traceback (most recent call last):\n" * 4)
        sys.stdout.buffer.flush()
        sys.stdin.buffer.read()
        return
    send({"type": "hello", "protocol": 99 if mode == "old-protocol" else 1, "engine": "fake",
          "ops": ["denoise", "inpaint"]})
    if mode == "old-protocol":
        sys.stdin.buffer.read()
        return
    request = read_request()
    send({"type": "progress", "id": request["id"], "fraction": 0.1, "text": "iteration 1/10"})
    if mode == "die-mid-run":
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(3600)  # hang-mid-run


if __name__ == "__main__":
    main()
