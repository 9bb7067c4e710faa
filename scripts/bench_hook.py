#!/usr/bin/env python3
"""Benchmark: the libvirt hook's start-up, against `python -c pass` measured in the same run.

libvirt runs the qemu hook synchronously for every start, stop and reconnect of every
guest, so the pass-through path (any operation but `migrate begin`) must cost little more
than the interpreter itself. Measured, each as a fresh process, interleaved round by round
so that machine noise hits all alike:

  baseline      python -c pass
  pass-through  the hook entry point with `GUEST started begin -` (what libvirt runs most)
  restore       `GUEST restore begin -`: reads the XML and hands it on
  migrate       `GUEST migrate begin -`: the full check and rewrite, for reference

Prints the median of each and its ratio to the baseline; the target for pass-through is
at most 3x. Needs nothing but this checkout and its example mappings.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ENTRY = "import sys; from netmap.libvirt.hook import main; sys.exit(main())"
VM1 = b"""<domain type='kvm'><name>vm1</name><devices>
<interface type='direct'><mac address='52:54:00:12:34:56'/><source dev='eth0' mode='vepa'/>
<model type='virtio'/><driver name='vhost'/></interface>
<interface type='network'><mac address='52:54:00:12:34:57'/>
<source network='netmap-vf-eno1' portgroup='storage'/><model type='virtio'/></interface>
</devices></domain>
"""


def run_once(argv: list[str], stdin: bytes, env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, input=stdin, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, env=env, check=False)
    elapsed = (time.perf_counter() - start) * 1000
    if done.returncode != 0:
        raise SystemExit(f"{argv[-4:]} failed ({done.returncode}): {done.stderr.decode()}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO), "NETMAP_MAPPINGS": str(REPO / "mappings"),
           "NETMAP_HOST": "host-b"}
    python = sys.executable
    cases = {
        "baseline (python -c pass)": ([python, "-c", "pass"], b""),
        "pass-through (started begin)": ([python, "-c", ENTRY, "vm1", "started", "begin", "-"],
                                         VM1),
        "restore begin (echo XML)": ([python, "-c", ENTRY, "vm1", "restore", "begin", "-"],
                                     VM1),
        "migrate begin (check+rewrite)": ([python, "-c", ENTRY, "vm1", "migrate", "begin",
                                           "-"], VM1),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for argv, stdin in cases.values():
        run_once(argv, stdin, env)  # warm the page cache and .pyc files
    for _ in range(args.rounds):
        for name, (argv, stdin) in cases.items():
            times[name].append(run_once(argv, stdin, env))
    base = statistics.median(times["baseline (python -c pass)"])
    print(f"{'case':<32} {'median ms':>10} {'ratio':>7}   ({args.rounds} rounds, {python})")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<32} {median:>10.1f} {median / base:>6.2f}x")
    ratio = statistics.median(times["pass-through (started begin)"]) / base
    print(f"pass-through target <= 3x: {'met' if ratio <= 3 else 'MISSED'} ({ratio:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
