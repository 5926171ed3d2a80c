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
  preview-result     a newer engine's hello (features, op_params without "preset"); records
                     the request header (buffers as their sizes) in ``fake-requests``; two previews (the inverted
                     image), then the inverted image as the result
  preview-die        one preview, then SIGKILL itself
  preview-hang       one preview (and ``fake-preview-sent`` written), then silence: the test
                     kills the plug-in as GIMP's cancel does
  partial            progress until a cancel frame arrives, then a ``partial`` result

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


def send_buffers(header, buffers):
    """A frame with buffers: (descriptor, bytes) pairs."""
    header = dict(header, buffers=[desc for desc, _ in buffers])
    raw = json.dumps(header).encode("utf-8")
    sys.stdout.buffer.write(struct.pack(">I", len(raw)) + raw + b"".join(data for _, data in buffers))
    sys.stdout.buffer.flush()


def read_frame():
    length = struct.unpack(">I", sys.stdin.buffer.read(4))[0]
    header = json.loads(sys.stdin.buffer.read(length))
    sizes = {"u8": 1, "u16": 2, "f32": 4}
    buffers = []
    for desc in header.get("buffers", []):
        size = desc["width"] * desc["height"] * desc["channels"] * sizes[desc["dtype"]]
        buffers.append((desc, sys.stdin.buffer.read(size)))
    return header, buffers


def read_request():
    return read_frame()[0]


NEWER_HELLO = {"features": ["op-params", "estimate", "preview", "partial-result"],
               "op_params": {op: {"iterations": {"default": 0}, "seed": {"default": 0},
                                  "device": {"default": "auto", "choices": ["auto", "cpu", "cuda"]}}
                             for op in ("denoise", "inpaint")}}


def inverted(buffers, name):
    """The request's image, every byte inverted (u8), as buffer ``name``."""
    desc, data = buffers[0]
    return [(dict(desc, name=name, title="Fake"), bytes(255 - b for b in bytearray(data)))]


def newer_engine(mode):
    send(dict({"type": "hello", "protocol": 1, "engine": "fake"}, **NEWER_HELLO))
    header, buffers = read_frame()
    with open(os.path.join(HERE, "fake-requests"), "a") as handle:
        record = {k: v for k, v in header.items() if k != "buffers"}
        record["buffer_sizes"] = [[b["width"], b["height"]] for b in header.get("buffers", [])]
        handle.write(json.dumps(record) + "\n")
    request_id = header["id"]
    send({"type": "progress", "id": request_id, "fraction": 0.1, "text": "iteration 1/10"})
    if mode == "partial":
        while True:  # progress until the plug-in's cancel frame
            send({"type": "progress", "id": request_id, "fraction": 0.2, "text": "iteration 2/10"})
            if read_frame()[0].get("type") == "cancel":
                send_buffers({"type": "result", "id": request_id, "partial": True, "info": {"partial": True}},
                             inverted(buffers, "image"))
                sys.stdin.buffer.read()
                return
    send_buffers({"type": "preview", "id": request_id}, inverted(buffers, "image"))
    if mode == "preview-die":
        time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "preview-hang":
        open(os.path.join(HERE, "fake-preview-sent"), "w").close()
        time.sleep(3600)
    time.sleep(1.2)
    send_buffers({"type": "preview", "id": request_id}, inverted(buffers, "image"))
    send({"type": "progress", "id": request_id, "fraction": 1.0, "text": "done"})
    send_buffers({"type": "result", "id": request_id, "info": {"iterations": 10}}, inverted(buffers, "image"))
    sys.stdin.buffer.read()


def main():
    with open(os.path.join(HERE, "fake-mode")) as handle:
        mode = handle.read().strip()
    with open(os.path.join(HERE, "fake-starts"), "a") as handle:
        handle.write("%d %s\n" % (os.getpid(), mode))
    if mode == "hang-before-hello":
        time.sleep(3600)
    if mode.startswith("preview-") or mode == "partial":
        newer_engine(mode)
        return
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
    if mode == "slow-exit":  # a long teardown after its input closes (PyTorch's can take seconds)
        sys.stdin.buffer.read()
        time.sleep(1.6)
        return
    request = read_request()
    send({"type": "progress", "id": request["id"], "fraction": 0.1, "text": "iteration 1/10"})
    if mode == "die-mid-run":
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(3600)  # hang-mid-run


if __name__ == "__main__":
    main()
