#!/usr/bin/env bash
# The one test command (README.md "Run the tests"; .ci/run calls exactly this).
# Sets up a development environment in .venv (torch CPU 2.13.0, the engine editable, test
# tools), then runs every test, the real-GIMP ones included (they need root on Linux: the
# harness builds a Debian 13 chroot with GIMP 3 the first time and caches it).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# torch first, pinned: an unpinned torch would pull several GB of CUDA packages.
.venv/bin/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dip,onnx,export,test]"
exec .venv/bin/python -m pytest "$@"
