#!/usr/bin/env python3
"""Benchmark: netmap's discovery of ~1,000 links against `ip -j -d link show` + json.loads.

Builds throw-away network namespaces (prefix nmB, or --prefix) of two shapes, each holding
about LINKS links: mixed kinds (veth, bridge, macvlan, vxlan with a remote, tap, tun) and
veth pairs only, and measures on each in the same run:

  baseline   `ip -n NS -j -d link show` as a subprocess, plus json.loads of its output
  netmap     netmap.netlink.discover.discover(NS): socket in NS, RTM_GETLINK dump, parse,
             sysfs and /dev features: everything `netmap discover` does before rendering
  dump only  the dump and parse on an already open socket
  pyroute2   IPRoute(netns=NS).get_links(), for reference (fewer rounds: it is slow)
  CLI        `netmap discover --netns NS --json` as a process vs `ip -j -d link show` as a
             process (includes Python's start-up and imports), interleaved, with
             `python -c pass` for scale

and prints the median of each, its ratio to the baseline, and PASS/MISSED against the
target (the CLI at most 3x `ip` as a process) for each shape. Needs root. The namespace is
deleted on exit, whatever happens.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from netmap.netlink.discover import discover, dump_links, open_route_socket

REPO = Path(__file__).resolve().parent.parent
TARGET = 3.0  # discover --json as a process, at most this many times `ip -j -d link show`


def median_ms(action: Callable[[], object], rounds: int) -> float:
    action()  # warm caches and imports; the first round is not what a user waits for twice
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def build(netns: str, links: int, mixed: bool = True) -> None:
    """About `links` links: veth pairs only, or (mixed) groups of a veth pair, a bridge with
    the veth as port, an empty bridge, two macvlans on the peer, a vxlan device with one
    remote, a tap and a tun."""
    subprocess.run(["ip", "netns", "add", netns], check=True)
    commands = ["link set lo up"]
    if not mixed:
        commands += [f"link add b{i} type veth peer name b{i}p" for i in range(links // 2)]
    else:
        groups = links // 9  # nine links each
        for i in range(groups):
            commands += [f"link add v{i} type veth peer name v{i}p",  # 2 links
                         f"link add br{i} type bridge", f"link set v{i} master br{i}",
                         f"link add mv{i} link v{i}p type macvlan mode bridge",
                         f"link add mp{i} link v{i}p type macvlan mode private",
                         f"link add vx{i} type vxlan id {i + 1} dstport 4789 local 10.0.0.1",
                         f"tuntap add t{i} mode tap", f"tuntap add tn{i} mode tun",
                         f"link add brq{i} type bridge", f"link set br{i} up"]
    subprocess.run(["ip", "-n", netns, "-batch", "-"], input="\n".join(commands) + "\n",
                   text=True, check=True)
    if mixed:  # each vxlan device floods to one remote: discover then reads the FDB too
        floods = [f"fdb append 00:00:00:00:00:00 dev vx{i} dst 10.0.{i // 250}.{i % 250 + 2}"
                  for i in range(links // 9)]
        subprocess.run(["bridge", "-n", netns, "-batch", "-"], input="\n".join(floods) + "\n",
                       text=True, check=True)


def interleaved_ms(commands: dict[str, list[str]], rounds: int) -> dict[str, float]:
    """Each command as a process, in turn round by round (so drift hits all alike): medians."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    for argv in commands.values():  # warm the page cache and .pyc files
        subprocess.run(argv, capture_output=True, check=True, cwd=REPO)
    for _ in range(rounds):
        for name, argv in commands.items():
            start = time.perf_counter()
            subprocess.run(argv, capture_output=True, check=True, cwd=REPO)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1000 for name, values in times.items()}


def measure(netns: str, rounds: int) -> float:
    """Print one shape's rows; return the CLI's ratio to `ip -j -d link show`."""
    def baseline() -> object:
        out = subprocess.run(["ip", "-n", netns, "-j", "-d", "link", "show"],
                             capture_output=True, check=True).stdout
        return json.loads(out)

    count = len(baseline())  # type: ignore[arg-type]
    assert len(discover(netns).interfaces) == count
    rows = [("baseline: ip -j -d link show + json.loads", median_ms(baseline, rounds))]
    rows.append(("netmap discover() (socket, dump, parse, sysfs)",
                 median_ms(lambda: discover(netns), rounds)))
    sock = open_route_socket(netns)
    try:
        rows.append(("netmap dump + parse on an open socket",
                     median_ms(lambda: dump_links(sock), rounds)))
    finally:
        sock.close()
    from pyroute2 import IPRoute

    with IPRoute(netns=netns) as ipr:
        rows.append(("pyroute2 IPRoute.get_links()",
                     median_ms(lambda: list(ipr.get_links()), max(rounds // 5, 2))))
    processes = interleaved_ms({
        "ip": ["ip", "-n", netns, "-j", "-d", "link", "show"],
        "netmap": [sys.executable, "-m", "netmap", "discover", "--netns", netns, "--json"],
        "python": [sys.executable, "-c", "pass"]}, max(rounds, 5))
    base = rows[0][1]
    print(f"{count} links in namespace {netns}, median of {rounds} rounds")
    for label, ms in rows:
        print(f"  {label:<50} {ms:8.1f} ms  {ms / base:5.2f}x")
    ip_ms = processes["ip"]
    for label, name in (("process: ip -j -d link show", "ip"),
                        ("process: netmap discover --json", "netmap"),
                        ("process: python -c pass (for scale)", "python")):
        print(f"  {label:<50} {processes[name]:8.1f} ms  {processes[name] / ip_ms:5.2f}x")
    return processes["netmap"] / ip_ms


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--links", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--prefix", default="nmB",
                        help="namespace name prefix (only the namespaces this run made are "
                        "deleted)")
    args = parser.parse_args()
    made: list[str] = []
    try:
        ratios = {}
        for shape, mixed in (("mixed kinds", True), ("veth pairs", False)):
            netns = f"{args.prefix}-bench-{uuid.uuid4().hex[:6]}"
            made.append(netns)
            build(netns, args.links, mixed)
            print(f"shape: {shape}")
            ratios[shape] = measure(netns, args.rounds)
        for shape, ratio in ratios.items():
            print(f"target: netmap discover --json <= {TARGET:g}x ip -j -d link show, {shape}: "
                  f"{'PASS' if ratio <= TARGET else 'MISSED'} ({ratio:.2f}x)")
    finally:
        for netns in made:
            subprocess.run(["ip", "netns", "del", netns], check=False, capture_output=True)
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
