"""Whether a second process would find a CPU of its own (the load's second parsing
process, hosts-for's second checking process)."""

from __future__ import annotations

import os


def idle_cpu() -> bool:
    """Whether a second CPU is free for a worker: there is one, and the machine's run
    queue (the load average over the last minute, this process included) leaves one idle.
    On a busy machine the worker waits for a core and only adds its fork, its pickles and
    their copy back (README, bench_fleet.py)."""
    cpus = len(os.sched_getaffinity(0))
    if cpus < 2:
        return False
    try:
        running = os.getloadavg()[0]
    except OSError:  # no load average to read: as before it was asked
        return True
    return running <= cpus - 1
