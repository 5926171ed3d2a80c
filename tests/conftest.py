"""Shared test set-up: the repo root on sys.path, the plug-in package importable, data paths."""
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO / "gimp_plugin"))  # the plug-in's stdlib package: neural_restore


@pytest.fixture
def shared_data() -> Path:
    assert SHARED_DATA.is_dir(), f"test data missing: {SHARED_DATA}"
    return SHARED_DATA

pytest_plugins = ["tests.gimp_harness.fixtures"]
