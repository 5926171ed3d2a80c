"""How fast the shipped nets really run on this machine, so time estimates follow the machine.

``ops._NET_SECONDS_PER_MEGAPIXEL`` was measured on one dev CPU; on a slower 2-core CPU the
dialog's estimates came out 2–3.5× low (benchmarks/results/2026-12-07-nets-estimates-inpaint-cpu.json).
So after every CPU run of a net over at least ``MIN_MEGAPIXELS`` the engine records the rate
it saw, on the same scale as those constants: seconds per megapixel and pass, times the
thread factor the estimate divides by. Records are kept per model *file* (its name and the
SHA-256 in its card), so another net under the same name starts afresh, in ``net-speeds.json``
in the engine's state folder (beside its log). Deep Image Prior keeps its own kind of record
there (``dip:<net>``: how much slower or faster than its table a CPU fit ran, see
``engine.dip.presets``). An estimate uses the mean of the last
``KEEP`` runs when there are any (one run on a busy machine then weighs a third). A record
that cannot be read or written is ignored: an estimate is a hint, never a reason to fail.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .logs import log_dir

MIN_MEGAPIXELS = 0.05  # below this, session start-up and padding dominate the time
KEEP = 3
FILE_NAME = "net-speeds.json"


def records_path() -> Path:
    return log_dir() / FILE_NAME


def thread_factor(threads: int) -> float:
    """What the estimate divides a one-thread rate by (two threads measured 1.6–1.9×)."""
    return max(1.0, 0.9 * threads)


def _read() -> dict[str, list[float]]:
    try:
        data = json.loads(records_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {key: [float(v) for v in runs if isinstance(v, (int, float)) and v > 0]
            for key, runs in data.items() if isinstance(runs, list)}


def recorded(key: str) -> float | None:
    """The recorded one-thread seconds per megapixel and pass of ``key``, or None."""
    runs = _read().get(key)
    return sum(runs) / len(runs) if runs else None


def record(key: str, seconds: float, megapixels: float, passes: int, threads: int) -> None:
    """Add one CPU run of ``key`` (skipped when too small to say anything)."""
    if megapixels < MIN_MEGAPIXELS or seconds <= 0 or passes < 1:
        return
    record_value(key, seconds / (megapixels * passes) * thread_factor(threads))


def record_value(key: str, value: float) -> None:
    """Keep ``value`` as the latest of ``key``'s last ``KEEP`` measurements (DIP records the
    ratio of its measured to its tabled time per iteration: ``dip.presets``)."""
    if not value > 0:
        return
    data = _read()
    data[key] = (data.get(key, []) + [round(value, 4)])[-KEEP:]
    path = records_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)  # two engines at once: the last writer wins, never a torn file
    except OSError:
        pass
