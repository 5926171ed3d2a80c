"""Shared test set-up: the repo root on sys.path, the plug-in package importable, data paths."""
import json
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


@pytest.fixture(scope="session")
def engine_python(tmp_path_factory) -> str:
    """An 'engine python' for the plug-in's client that runs THIS checkout's engine.

    The client starts ``<python> -I -m engine serve``; -I ignores PYTHONPATH, so a plain
    sys.executable would import whatever engine the venv has installed (for a git worktree
    that is another checkout). This wrapper puts the repo first on sys.path.
    """
    wrapper = tmp_path_factory.mktemp("engine-python") / "python"
    wrapper.write_text(
        "#!/bin/sh\n"
        "# called as: python -I -m engine ARGS...\n"
        "shift 3\n"
        f"exec '{sys.executable}' -I -c 'import runpy, sys; sys.path.insert(0, {json.dumps(str(REPO))}); "
        "sys.argv[0] = \"engine\"; runpy.run_module(\"engine\", run_name=\"__main__\", alter_sys=True)' \"$@\"\n")
    wrapper.chmod(0o755)
    return str(wrapper)
