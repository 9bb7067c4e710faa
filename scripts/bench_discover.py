#!/usr/bin/env python3
"""Benchmark: netmap's discovery of ~1,000 links against `ip -j -d link show` + json.loads.

Builds a throw-away network namespace (prefix nmB, or --prefix) holding LINKS links (veth
pairs), and measures in the same run:

  baseline   `ip -n NS -j -d link show` as a subprocess, plus json.loads of its output
  netmap     netmap.netlink.discover.discover(NS): socket in NS, RTM_GETLINK dump, parse,
             sysfs and /dev features: everything `netmap discover` does before rendering
  dump only  the dump and parse on an already open socket
  pyroute2   IPRoute(netns=NS).get_links(), for reference (fewer rounds: it is slow)
  CLI        `netmap discover --netns NS --json` as a process vs `ip -j -d link show` as a
             process (includes Python's start-up and imports)

and prints the median of each and its ratio to the baseline. Needs root. The namespace is
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--links", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--prefix", default="nmB",
                        help="namespace name prefix (only the namespace this run made is deleted)")
    args = parser.parse_args()
    netns = f"{args.prefix}-bench-{uuid.uuid4().hex[:6]}"
    try:
        build(netns, args.links)

        def baseline() -> object:
            out = subprocess.run(["ip", "-n", netns, "-j", "-d", "link", "show"],
                                 capture_output=True, check=True).stdout
            return json.loads(out)

        count = len(baseline())
        assert len(discover(netns).interfaces) == count
        rows = [("baseline: ip -j -d link show + json.loads", median_ms(baseline, args.rounds))]
        rows.append(("netmap discover() (socket, dump, parse, sysfs)",
                     median_ms(lambda: discover(netns), args.rounds)))
        sock = open_route_socket(netns)
        try:
            rows.append(("netmap dump + parse on an open socket",
                         median_ms(lambda: dump_links(sock), args.rounds)))
        finally:
            sock.close()
        from pyroute2 import IPRoute

        with IPRoute(netns=netns) as ipr:
            rows.append(("pyroute2 IPRoute.get_links()",
                         median_ms(lambda: list(ipr.get_links()), max(args.rounds // 5, 2))))
        cli = [sys.executable, "-m", "netmap", "discover", "--netns", netns, "--json"]
        ip_cli = ["ip", "-n", netns, "-j", "-d", "link", "show"]

        def run(argv: list[str]) -> Callable[[], object]:
            return lambda: subprocess.run(argv, capture_output=True, check=True,
                                          cwd=Path(__file__).resolve().parent.parent)

        cli_rounds = max(args.rounds // 3, 3)
        ip_ms = median_ms(run(ip_cli), cli_rounds)
        cli_ms = median_ms(run(cli), cli_rounds)
        base = rows[0][1]
        print(f"{count} links in namespace {netns}, median of {args.rounds} rounds")
        for label, ms in rows:
            print(f"  {label:<50} {ms:8.1f} ms  {ms / base:5.2f}x")
        print(f"  {'process: ip -j -d link show':<50} {ip_ms:8.1f} ms  1.00x")
        print(f"  {'process: netmap discover --json':<50} {cli_ms:8.1f} ms  {cli_ms / ip_ms:5.2f}x")
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False, capture_output=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
