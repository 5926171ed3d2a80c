"""Facts about the machine the engine runs on, shared by both backends (no torch import)."""
from __future__ import annotations

import math
import os


def available_cpu_threads() -> int:
    """CPUs this process may really use: the affinity mask, capped by a cgroup v2 quota
    (containers often allow fewer CPUs than the host shows, and oversubscribed convs run
    slower, not faster)."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)
