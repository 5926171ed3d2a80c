"""Shared test set-up: the repo root on sys.path, the plug-in package importable, data paths."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
# Not under /tmp or /var/cache: the harness binds it into the chroot at the same path.
ENGINE_VENV = Path(os.environ.get("NEURAL_RESTORE_TEST_VENV", "/opt/neural-restore-test/engine-venv"))
EXCHANGE = "/tmp/nr-plugin-test"
PY27_ROOT = Path(os.environ.get("NEURAL_RESTORE_PY27_ROOT", "/var/cache/neural-restore/py27-bullseye"))
GIMP2_TESTS = REPO / "tests" / "gimp2"
sys.path.insert(0, str(REPO / "gimp_plugin"))  # the plug-in's stdlib package: neural_restore


@pytest.fixture
def shared_data() -> Path:
    assert SHARED_DATA.is_dir(), f"test data missing: {SHARED_DATA}"
    return SHARED_DATA

pytest_plugins = ["tests.gimp_harness.fixtures"]


@pytest.fixture(scope="session", autouse=True)
def engine_state_of_this_test_run(tmp_path_factory) -> None:
    """The engine's log and its measured speeds (engine.measured_speed) go to a folder of this
    test run: the user's time estimates are not taught by tiny test images, and a record left
    by an earlier run cannot change this run's estimates. (GIMP runs get a clean environment.)"""
    if "NEURAL_RESTORE_LOG_DIR" not in os.environ:
        os.environ["NEURAL_RESTORE_LOG_DIR"] = str(tmp_path_factory.mktemp("engine-state"))


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


# The fixtures of the real-GIMP and Python 2.7 tests live here (not imported from one test
# module into another) so that every module that needs them just names them.
_installed = set()  # chroot roots install.py already ran for, in this pytest process


@pytest.fixture(scope="module")
def gimp(gimp3):
    """GIMP 3 with Neural Restore installed by install.py (engine venv + plug-in + config).

    install.py runs once per pytest process.
    """
    if str(gimp3.root) in _installed:
        return gimp3
    result = subprocess.run(
        [sys.executable, str(REPO / "install.py"), "--venv", str(ENGINE_VENV),
         "--gimp-dir", str(gimp3.plugin_dir)],
        capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "selfcheck" in result.stdout and "ok" in result.stdout
    config = json.loads((gimp3.plugin_dir / "neural-restore" / "engine.json").read_text())
    gimp3.bind_python(Path(config["engine_python"]))
    exchange = gimp3.to_host(EXCHANGE)
    shutil.rmtree(exchange, ignore_errors=True)
    exchange.mkdir(parents=True)
    _installed.add(str(gimp3.root))
    return gimp3


@pytest.fixture(scope="module")
def python27() -> Path:
    """CPython 2.7 of a cached Debian 11 root, for the GIMP 2.10 plug-in's own files."""
    if os.environ.get("NEURAL_RESTORE_SKIP_GIMP"):
        pytest.skip("NEURAL_RESTORE_SKIP_GIMP is set")
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("provisioning the Python 2.7 root needs Linux and root (debootstrap)")
    proc = subprocess.run(["bash", str(GIMP2_TESTS / "provision_py27.sh"), str(PY27_ROOT)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return PY27_ROOT / "usr" / "bin" / "python2.7"
