"""Starts the engine subprocess and runs one request on it (stdlib only, Python 2.7 and 3).

The engine lives in its own virtual environment (torch, numpy, onnxruntime); this side
only knows the interpreter path that install.py wrote into ``engine.json`` next to the
plug-in, or the NEURAL_RESTORE_ENGINE_PYTHON environment variable.

Lifetime: the engine never outlives the plug-in. Its stdin is a pipe whose only write end
is held by this process (``close_fds``; no other child inherits it), and the engine stops
its job and exits when that pipe closes. When the user cancels the progress bar GIMP kills
the plug-in; the kernel then closes the pipe, the engine exits on its own, and init reaps
it (no zombie). In normal runs ``close()`` closes stdin and waits for the exit.

Hangs: the engine sends a progress frame at least every 0.25 s while it works, so a long
silence means it is stuck. ``EngineProcess`` reads frames on a helper thread and gives up
(killing the engine) after NEURAL_RESTORE_ENGINE_TIMEOUT seconds without a frame
(default 120, which also covers a slow first import of torch before the hello).
"""
import json
import os
import subprocess
import threading
import time

try:
    import queue
except ImportError:  # Python 2.7 (GIMP 2.10)
    import Queue as queue

from .protocol import PROTOCOL_VERSION, ProtocolError, encode_frame, read_frame

CONFIG_NAME = "engine.json"
INSTALL_HINT = ("Run 'python3 install.py' from the Neural Restore folder, then restart GIMP.")
TIMEOUT_ENV = "NEURAL_RESTORE_ENGINE_TIMEOUT"
DEFAULT_TIMEOUT_S = 120.0
# While waiting for a frame, on_idle is called this often, so the host's progress display
# (elapsed time) stays alive even while the engine is silent, e.g. importing torch.
IDLE_TICK_S = 0.5  # half the promised once-a-second, so a loaded machine still keeps it
_clock = getattr(time, "monotonic", time.time)


def engine_timeout():
    """Seconds of engine silence after which the plug-in gives up (env override, else 120)."""
    try:
        value = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    except ValueError:
        return DEFAULT_TIMEOUT_S
    return value if value > 0 else DEFAULT_TIMEOUT_S


class EngineFailure(Exception):
    """The engine reported an error, or could not be started or talked to.

    ``kind`` is one of: bad-input, engine, cancelled, protocol, setup.
    """

    def __init__(self, kind, message):
        Exception.__init__(self, message)
        self.kind = kind
        self.message = message


def load_config(plugin_dir):
    """Read engine.json; raise EngineFailure('setup') with the fix when it is missing or broken."""
    override = os.environ.get("NEURAL_RESTORE_ENGINE_PYTHON")
    if override:
        return {"engine_python": override, "engine_module": "engine"}
    path = os.path.join(plugin_dir, CONFIG_NAME)
    try:
        with open(path) as handle:
            config = json.load(handle)
    except (IOError, OSError):
        raise EngineFailure("setup", "Neural Restore's engine is not set up (%s is missing). %s"
                            % (path, INSTALL_HINT))
    except ValueError:
        raise EngineFailure("setup", "Neural Restore's engine config %s is damaged. %s"
                            % (path, INSTALL_HINT))
    python = config.get("engine_python") if isinstance(config, dict) else None
    if not python or not os.path.isfile(python):
        raise EngineFailure("setup", "Neural Restore's engine Python (%s) is missing. %s"
                            % (python, INSTALL_HINT))
    return config


class EngineProcess(object):
    """One engine child process; use as a context manager so it is always reaped."""

    def __init__(self, config, stderr_path=None, timeout=None):
        self.config = config
        self.stderr_path = stderr_path
        self.timeout = engine_timeout() if timeout is None else float(timeout)
        self.process = None
        self.hello = None
        self._next_id = 1
        self._frames = queue.Queue()
        self._reader = None

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.close()  # __exit__ does not run when __enter__ fails: reap the child here
            raise
        return self

    def __exit__(self, *exc_info):
        self.close()
        return False

    def start(self, on_idle=None):
        # -I: ignore PYTHON* variables and the working directory, so nothing on GIMP's side
        # (its env, a checkout it was started from) can shadow the installed engine.
        command = [self.config["engine_python"], "-I", "-m", self.config.get("engine_module", "engine"), "serve"]
        env = dict(os.environ)
        # GIMP's own Python settings must not leak into the engine's interpreter.
        for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP"):
            env.pop(name, None)
        stderr = open(self.stderr_path, "ab") if self.stderr_path else None
        try:
            # close_fds: the engine must hold no copy of any other pipe (see the module doc).
            self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            stderr=stderr, env=env, close_fds=True)
        except OSError as exc:
            raise EngineFailure("setup", "Could not start the Neural Restore engine (%s): %s. %s"
                                % (command[0], exc, INSTALL_HINT))
        finally:
            if stderr is not None:
                stderr.close()
        # A helper thread does the blocking reads so the main thread can time out and tick.
        self._reader = threading.Thread(target=self._pump, args=(self.process.stdout, self._frames))
        self._reader.daemon = True
        self._reader.start()
        header, _ = self._read("while starting", on_idle)
        if header.get("type") != "hello" or header.get("protocol") != PROTOCOL_VERSION:
            raise EngineFailure("setup", "The engine speaks another protocol version (%r). %s"
                                % (header.get("protocol"), INSTALL_HINT))
        self.hello = header

    @staticmethod
    def _pump(stream, frames):
        """Reader thread: every frame (None at end of stream) or the read error, in order."""
        try:
            while True:
                frame = read_frame(stream)
                frames.put((None, frame))
                if frame is None:
                    return
        except Exception as exc:  # noqa: BLE001 - handed to the main thread, which reports it
            frames.put((exc, None))

    def _read(self, what, on_idle=None):
        deadline = _clock() + self.timeout
        while True:
            left = deadline - _clock()
            if left <= 0:
                self._kill()
                raise EngineFailure("engine", "The Neural Restore engine stopped responding (no word from "
                                    "it for %g s %s), so it was stopped. %s"
                                    % (self.timeout, what, self._log_hint()))
            try:
                error, frame = self._frames.get(timeout=min(IDLE_TICK_S, left))
            except queue.Empty:
                if on_idle is not None:
                    on_idle()
                continue
            break
        if isinstance(error, ProtocolError):
            raise EngineFailure("protocol", "The engine sent garbage (%s). %s" % (error, self._log_hint()))
        if error is not None or frame is None:
            code = self._exit_code()
            raise EngineFailure("engine", "The Neural Restore engine stopped unexpectedly (%s, exit code %s). %s"
                                % (what, code, self._log_hint()))
        return frame

    def _exit_code(self):
        # The pipe closes a moment before the process is gone; wait briefly for the code.
        for _ in range(20):
            code = self.process.poll()
            if code is not None:
                return code
            time.sleep(0.05)
        return None

    def _log_hint(self):
        log = (self.hello or {}).get("log")
        if log:
            return "Details are in %s." % log
        if self.stderr_path:  # no hello yet: its error output is all there is
            return "Details may be in %s." % self.stderr_path
        return ""

    def features(self):
        """What this engine understands beyond protocol 1's basics (hello 'features')."""
        return set((self.hello or {}).get("features") or ())

    def supported_params(self, op, params):
        """``params`` without the ones this engine does not advertise for ``op``.

        An engine that lists no params (older than the 'op_params' hello key) gets the
        params unchanged. Choice values it does not know are dropped too, so the engine
        uses its default instead of refusing the request.
        """
        advertised = ((self.hello or {}).get("op_params") or {}).get(op)
        if advertised is None:
            return dict(params)
        kept = {}
        for name, value in params.items():
            spec = advertised.get(name)
            if spec is None:
                continue
            choices = spec.get("choices") if isinstance(spec, dict) else None
            if choices and value not in choices:
                continue
            kept[name] = value
        return kept

    def estimate(self, op, width, height, param_sets, on_idle=None, selected_pixels=None):
        """Seconds and bytes the engine expects for each params dict, or None if unsupported.

        Returns {"seconds": [...], "memory_bytes": [...], "memory_available": n} (entries
        may be None where the engine has no estimate). selected_pixels: how many pixels of
        the area the selection covers (Inpaint's hole), when known.
        """
        if "estimate" not in self.features():
            return None
        request_id = self._next_id
        self._next_id += 1
        frame = {"type": "estimate", "id": request_id, "op": op, "width": width, "height": height,
                 "params": [self.supported_params(op, p) for p in param_sets]}
        if selected_pixels is not None:
            frame["selected_pixels"] = int(selected_pixels)
        self._send(frame)
        header, _ = self._read("while estimating", on_idle)
        if header.get("type") == "error":
            raise EngineFailure(header.get("kind", "engine"), header.get("message", "unknown error"))
        return header

    def run(self, op, params, buffers, on_progress=None, on_idle=None, preview_interval_s=None,
            on_preview=None):
        """Send one request; call on_progress(fraction, text) per progress frame.

        Returns (info dict, [WireBuffer]) or raises EngineFailure. ``info["partial"]`` is
        True when the engine stopped on our cancel and sent the result so far.
        on_progress may return True to ask the engine to cancel. on_idle() is called about
        once a second while no frame arrives. With preview_interval_s (and an engine that
        offers previews), on_preview([WireBuffer]) gets intermediate results.
        """
        request_id = self._next_id
        self._next_id += 1
        header = {"type": "request", "id": request_id, "op": op, "params": self.supported_params(op, params)}
        if preview_interval_s and on_preview is not None and "preview" in self.features():
            header["preview_interval_s"] = preview_interval_s
        self._send(header, buffers)
        cancel_sent = False
        while True:
            header, result_buffers = self._read("while running %s" % op, on_idle)
            kind = header.get("type")
            if kind == "progress":
                if on_progress is not None and on_progress(header.get("fraction", 0.0),
                                                           header.get("text", "")) and not cancel_sent:
                    self._send({"type": "cancel", "id": request_id})
                    cancel_sent = True
            elif kind == "preview":
                if on_preview is not None and result_buffers:
                    on_preview(result_buffers)
            elif kind == "result":
                info = dict(header.get("info") or {})
                if header.get("partial"):
                    info["partial"] = True
                return info, result_buffers
            elif kind == "error":
                raise EngineFailure(header.get("kind", "engine"), header.get("message", "unknown error"))

    def _send(self, header, buffers=()):
        try:
            self.process.stdin.write(encode_frame(header, buffers))
            self.process.stdin.flush()
        except (IOError, OSError, ValueError):
            code = self._exit_code()
            raise EngineFailure("engine", "The Neural Restore engine stopped unexpectedly (exit code %s). %s"
                                % (code, self._log_hint()))

    def _kill(self):
        try:
            self.process.kill()
        except OSError:  # already gone
            pass

    def close(self, on_idle=None):
        """Close the engine's input and wait for it to exit (killed after 10 s). on_idle() is
        called every IDLE_TICK_S meanwhile: an engine's exit (PyTorch's teardown) took 1.8 s
        on a loaded 2-core machine, longer than the host may go without hearing from us."""
        if self.process is None:
            return
        try:
            self.process.stdin.close()
        except (IOError, OSError):
            pass
        # A hung engine must never keep GIMP waiting: 10 s to finish, then it is killed.
        deadline = _clock() + 10
        next_tick = _clock() + IDLE_TICK_S
        while self.process.poll() is None and _clock() < deadline:
            time.sleep(0.02)
            if on_idle is not None and _clock() >= next_tick:
                next_tick = _clock() + IDLE_TICK_S
                on_idle()
        if self.process.poll() is None:
            self._kill()
        self.process.wait()
        # The reader sees end of stream once the engine is gone; only then close its pipe.
        self._reader.join(5)
        if not self._reader.is_alive():
            self.process.stdout.close()
        self.process = None
