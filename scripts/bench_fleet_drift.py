#!/usr/bin/env python3
"""Benchmark: `netmap fleet drift` over N lab hosts against its floor, the same Ansible ad-hoc
run of `netmap discover --json` alone (same inventory, forks and SSH), target <= 1.3x.

Each host is a network namespace with a veth uplink and its own sshd on its loopback,
reached through an ssh ProxyCommand that enters the namespace. The mappings compared are
the drafts `netmap fleet discover --write` makes first. Needs root, sshd, socat, ansible.

    sudo python3 scripts/bench_fleet_drift.py [--hosts 20] [--rounds 3] [--links N]

The shape of each host's inventory: by default one veth uplink; --links N adds N guest
taps on N/10 bridges (a hypervisor with a few hundred links).
fleet drift runs what it runs by default (`discover --json --with-state`: the inventory
and netmap's state); the floor runs `discover --json` alone.

Every figure is the median of interleaved rounds; namespaces, daemons and files are removed
at the end (also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
from ssh_lab import MISSING, ssh_lab  # noqa: E402  (scripts/ is not a package)

NETWORKS = '[networks.mgmt]\nsegment = "bench"\n'


def _timed(argv: list[str], env: dict[str, str]) -> tuple[float, int]:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, env=env, check=False, cwd=REPO)
    return time.perf_counter() - start, done.returncode


def _extra_links(count: int) -> str:
    """`ip -batch` lines for a hypervisor's shape: `count` guest taps spread over
    count/10 bridges."""
    bridges = max(1, count // 10) if count else 0
    lines = [f"link add br{b} type bridge\nlink set br{b} up" for b in range(bridges)]
    for index in range(count):
        lines.append(f"tuntap add dev tap{index} mode tap")
        lines.append(f"link set tap{index} master br{index % bridges}")
        lines.append(f"link set tap{index} up")
    return "".join(line + "\n" for line in lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prefix", default="flb")
    parser.add_argument("--links", type=int, default=0,
                        help="guest taps per host, on N/10 bridges")
    args = parser.parse_args()
    if MISSING:
        print(f"needs {MISSING}", file=sys.stderr)
        return 2
    scratch = Path(tempfile.mkdtemp(prefix="netmap-bench-fleet-"))
    names = [f"{args.prefix}{os.getpid() % 1000}-h{i:02d}" for i in range(args.hosts)]
    made: list[str] = []
    sshd = contextlib.ExitStack()
    try:
        for netns in names:
            subprocess.run(["ip", "netns", "add", netns], check=True)
            made.append(netns)
            subprocess.run(["ip", "-n", netns, "-batch", "-"], check=True, text=True,
                           input="link set lo up\nlink add eth0 type veth peer name eth0p\n"
                           "link set eth0 up\nlink set eth0p up\n" + _extra_links(args.links))
        # Ansible as it runs by default: each host's connection kept open between runs
        inventory = sshd.enter_context(ssh_lab({netns: netns for netns in names},
                                               scratch / "ssh",
                                               reuse_connections=True)).inventory
        mappings = scratch / "mappings"
        (mappings / "guests").mkdir(parents=True)
        (mappings / "networks.toml").write_text(NETWORKS)
        env = {**os.environ, "PYTHONPATH": str(REPO),
               "ANSIBLE_SSH_CONTROL_PATH_DIR": str(scratch / "cp")}
        # this checkout's netmap on every host, with a state directory of its own
        netmap_there = (f"env PYTHONPATH={REPO} NETMAP_STATE_DIR={scratch / 'state'} "
                        f"{sys.executable} -m netmap")
        remote = f"{netmap_there} discover --json"
        netmap = [sys.executable, "-m", "netmap", "--mappings", str(mappings), "fleet"]
        drafted = subprocess.run([*netmap, "discover", "-i", str(inventory), "--command",
                                  remote, "--write", str(mappings / "hosts"), "--json"],
                                 capture_output=True, text=True, env=env, cwd=REPO)
        if drafted.returncode != 0:
            print(f"fleet discover failed: {drafted.stderr}{drafted.stdout[-2000:]}",
                  file=sys.stderr)
            return 1
        floor_argv = [shutil.which("ansible") or "ansible", "all", "-i", str(inventory), "-m",
                      "ansible.builtin.command", "-a", remote, "--forks", "20", "--one-line"]
        drift_argv = [*netmap, "drift", "-i", str(inventory), "--command",
                      f"{netmap_there} discover --json --with-state", "--json"]
        floor, drift = [], []
        for _ in range(args.rounds):
            seconds, code = _timed(floor_argv, env)
            assert code == 0, "the floor run failed"
            floor.append(seconds)
            seconds, code = _timed(drift_argv, env)
            if code != 0:
                said = subprocess.run(drift_argv, capture_output=True, text=True, env=env,
                                      cwd=REPO, check=False).stdout
                print(f"fleet drift found drift or an unreachable host:\n{said[-3000:]}",
                      file=sys.stderr)
                return 1
            drift.append(seconds)
        f, d = statistics.median(floor), statistics.median(drift)
        links = 3 + args.links + (max(1, args.links // 10) if args.links else 0)
        print(f"hosts {args.hosts} of {links} links each (--links {args.links}), "
              f"rounds {args.rounds} (medians)")
        print(f"floor  ansible ad-hoc `netmap discover --json`   {f:6.2f} s")
        print(f"netmap fleet drift --json                      {d:6.2f} s  "
              f"= {d / f:.2f}x the floor (target <= 1.3x)")
        return 0
    finally:
        sshd.close()
        for netns in made:
            subprocess.run(["ip", "netns", "del", netns], check=False)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
