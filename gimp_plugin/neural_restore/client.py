"""Starts the engine subprocess and runs one request on it (stdlib only, Python 2.7 and 3).

The engine lives in its own virtual environment (torch, numpy, onnxruntime); this side
only knows the interpreter path that install.py wrote into ``engine.json`` next to the
plug-in, or the NEURAL_RESTORE_ENGINE_PYTHON environment variable.
"""
import json
import os
import subprocess
import sys

from .protocol import PROTOCOL_VERSION, ProtocolError, encode_frame, read_frame

CONFIG_NAME = "engine.json"
INSTALL_HINT = ("Run 'python3 install.py' from the Neural Restore folder, then restart GIMP.")


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

    def __init__(self, config, stderr_path=None):
        self.config = config
        self.stderr_path = stderr_path
        self.process = None
        self.hello = None
        self._next_id = 1

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc_info):
        self.close()
        return False

    def start(self):
        # -I: ignore PYTHON* variables and the working directory, so nothing on GIMP's side
        # (its env, a checkout it was started from) can shadow the installed engine.
        command = [self.config["engine_python"], "-I", "-m", self.config.get("engine_module", "engine"), "serve"]
        env = dict(os.environ)
        # GIMP's own Python settings must not leak into the engine's interpreter.
        for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP"):
            env.pop(name, None)
        stderr = open(self.stderr_path, "ab") if self.stderr_path else None
        try:
            self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            stderr=stderr, env=env, close_fds=True)
        except OSError as exc:
            raise EngineFailure("setup", "Could not start the Neural Restore engine (%s): %s. %s"
                                % (command[0], exc, INSTALL_HINT))
        finally:
            if stderr is not None:
                stderr.close()
        header, _ = self._read("the engine did not start")
        if header.get("type") != "hello" or header.get("protocol") != PROTOCOL_VERSION:
            raise EngineFailure("setup", "The engine speaks another protocol version (%r). %s"
                                % (header.get("protocol"), INSTALL_HINT))
        self.hello = header

    def _read(self, what):
        try:
            frame = read_frame(self.process.stdout)
        except ProtocolError as exc:
            raise EngineFailure("protocol", "The engine sent garbage (%s). %s" % (exc, self._log_hint()))
        if frame is None:
            code = self.process.poll()
            raise EngineFailure("engine", "The Neural Restore engine stopped unexpectedly (%s, exit code %s). %s"
                                % (what, code, self._log_hint()))
        return frame

    def _log_hint(self):
        log = (self.hello or {}).get("log")
        return ("Details are in %s." % log) if log else ""

    def run(self, op, params, buffers, on_progress=None):
        """Send one request; call on_progress(fraction, text) per progress frame.

        Returns (info dict, [WireBuffer]) or raises EngineFailure.
        on_progress may return True to ask the engine to cancel.
        """
        request_id = self._next_id
        self._next_id += 1
        self._send({"type": "request", "id": request_id, "op": op, "params": params}, buffers)
        cancel_sent = False
        while True:
            header, result_buffers = self._read("while running %s" % op)
            kind = header.get("type")
            if kind == "progress":
                if on_progress is not None and on_progress(header.get("fraction", 0.0),
                                                           header.get("text", "")) and not cancel_sent:
                    self._send({"type": "cancel", "id": request_id})
                    cancel_sent = True
            elif kind == "result":
                return header.get("info", {}), result_buffers
            elif kind == "error":
                raise EngineFailure(header.get("kind", "engine"), header.get("message", "unknown error"))

    def _send(self, header, buffers=()):
        try:
            self.process.stdin.write(encode_frame(header, buffers))
            self.process.stdin.flush()
        except (IOError, OSError):
            code = self.process.poll()
            raise EngineFailure("engine", "The Neural Restore engine stopped unexpectedly (exit code %s). %s"
                                % (code, self._log_hint()))

    def close(self):
        if self.process is None:
            return
        try:
            self.process.stdin.close()
        except (IOError, OSError):
            pass
        try:
            self.process.wait(timeout=10) if sys.version_info[0] >= 3 else self.process.wait()
        except Exception:  # noqa: BLE001 - a hung engine must never keep GIMP waiting
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()
        self.process = None
