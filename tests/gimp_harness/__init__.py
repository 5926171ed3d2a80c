"""Test harness: run the plug-in inside a real headless GIMP 3.0 (Debian trixie chroot)."""

from .chroot import (
    DEFAULT_ROOT,
    Gimp3Chroot,
    GimpHarnessError,
    engine_python_binds,
    mounts_under,
)

__all__ = [
    "DEFAULT_ROOT",
    "Gimp3Chroot",
    "GimpHarnessError",
    "engine_python_binds",
    "mounts_under",
]
