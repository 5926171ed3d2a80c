"""pytest plug-in module providing the session-scoped ``gimp3`` fixture.

Wire it from tests/conftest.py with ``pytest_plugins = ["tests.gimp_harness.fixtures"]``
(or pass ``-p tests.gimp_harness.fixtures``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

from .chroot import DEFAULT_ROOT, Gimp3Chroot


def _skip_reason() -> str | None:
    if os.environ.get("NEURAL_RESTORE_SKIP_GIMP"):
        return "NEURAL_RESTORE_SKIP_GIMP is set"
    if not sys.platform.startswith("linux"):
        return "the GIMP 3 chroot harness needs Linux"
    if os.geteuid() != 0:
        return "the GIMP 3 chroot harness needs root (debootstrap, chroot, mount)"
    return None


@pytest.fixture(scope="session")
def gimp3() -> Iterator[Gimp3Chroot]:
    """A provisioned GIMP 3 chroot (built on first use, then cached on disk)."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    chroot = Gimp3Chroot(DEFAULT_ROOT)
    chroot.provision()  # a failure here fails the tests loudly: CI must not skip them
    try:
        yield chroot
    finally:
        chroot.close()
