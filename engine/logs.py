"""The engine's rotating log file, and the diagnostics a bug report needs."""
from __future__ import annotations

import logging
import logging.handlers
import os
import platform
import sys
from pathlib import Path

from . import __version__

LOGGER_NAME = "neural_restore"


def log_dir() -> Path:
    override = os.environ.get("NEURAL_RESTORE_LOG_DIR")
    if override:
        return Path(override)
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Logs"
    else:
        base = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state"))
    return base / "neural-restore"


class _OneLineFormatter(logging.Formatter):
    """No tracebacks on the terminal: the CLI promises one clear line per failure."""

    def formatException(self, ei) -> str:  # noqa: N802 - logging's name
        return ""

    def format(self, record: logging.LogRecord) -> str:
        record.exc_text = ""
        return super().format(record).rstrip()


def setup_logging() -> Path | None:
    """Log to <log dir>/engine.log (1 MB × 3); returns the path, or None if not writable."""
    logger = logging.getLogger(LOGGER_NAME)
    if logger.handlers:
        handler = logger.handlers[0]
        return Path(handler.baseFilename) if isinstance(handler, logging.FileHandler) else None
    logger.setLevel(logging.INFO)
    path = log_dir() / "engine.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(path, maxBytes=1 << 20, backupCount=3,
                                                       encoding="utf-8")
    except OSError as exc:
        # Not writable (read-only home, full disk, odd permissions): keep running and log to
        # stderr, which the plug-in keeps in engine-stderr.log and the CLI shows.
        fallback = logging.StreamHandler(sys.stderr)
        fallback.setLevel(logging.WARNING)
        fallback.setFormatter(_OneLineFormatter("neural-restore engine: %(levelname)s %(message)s"))
        logger.addHandler(fallback)
        logger.warning("cannot write the log file %s (%s); logging warnings to stderr instead",
                       path, exc.strerror or exc)
        return None
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(message)s"))
    logger.addHandler(handler)
    return path


def diagnostics() -> str:
    """One line of versions for error reports (no torch import: it may be absent or slow)."""
    import numpy

    torch_version = sys.modules["torch"].__version__ if "torch" in sys.modules else "not loaded"
    return (f"neural-restore-engine {__version__}, Python {platform.python_version()}, "
            f"numpy {numpy.__version__}, torch {torch_version}, {platform.platform()}")
