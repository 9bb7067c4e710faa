#!/usr/bin/env python3
"""Benchmark realize/release against iproute2, measured in the same run (needs root).

For N = 10, 100, 1000 macvtap endpoints (add + up) on one uplink in a throw-away network
namespace (prefix nmA-bench, or --prefix):
  netmap      realize_plan() of one guest with N NICs: lock, state (2 atomic writes), one
              link dump, pipelined requests, read-back and verify
  ip -batch   the same operations from one `ip -batch` process (the practical floor)
  ip per op   one `ip` process per operation (what shell-based tools do)
and release: netmap release_guest() vs `ip -batch` "link del". Then a 4-NIC guest (bridge,
vxlan, macvtap-vepa, macvtap-private) realized in-process, median of 20 runs.
Prints ratios against the baselines; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from netmap.load import load_fleet
from netmap.netlink.apply import realize_plan, release_guest
from netmap.plan.planner import build_plan
from netmap.query.graph import build_graph

NETWORKS = """
[networks.flat]
segment = "fabric"
[networks.mgmt]
segment = "fabric2"
[networks.blue]
vni = 7001
mtu = 1450
[networks.priv]
segment = "fabric"
"""
HOST = """[host]
name = "bench"
netns = "{netns}"
features = ["vhost-net", "tun", "macvtap", "bridge", "vxlan"]
[uplinks.eth0]
segments = ["fabric"]
[uplinks.eth1]
segments = ["fabric2"]
[uplinks.eth2]
segments = ["fabric3"]
[networks.flat]
mode = "macvtap-bridge"
uplink = "eth0"
[networks.priv]
mode = "macvtap-private"
uplink = "eth0"
[networks.mgmt]
mode = "bridge"
uplink = "eth1"
[networks.blue]
mode = "vxlan"
uplink = "eth2"
vxlan = {{ remotes = ["10.251.0.2"] }}
"""


def mac(i: int) -> str:
    return f"52:54:01:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"


def sh(argv: list[str], stdin: str | None = None) -> None:
    subprocess.run(argv, input=stdin, text=True, check=True, capture_output=True)


def ip_batch(netns: str, lines: list[str]) -> float:
    start = time.perf_counter()
    sh(["ip", "-n", netns, "-batch", "-"], "\n".join(lines) + "\n")
    return time.perf_counter() - start


def ip_each(netns: str, lines: list[str]) -> float:
    start = time.perf_counter()
    for line in lines:
        sh(["ip", "-n", netns, *line.split()])
    return time.perf_counter() - start


def fleet_dir(base: Path, netns: str, n: int) -> Path:
    (base / "hosts").mkdir(parents=True)
    (base / "guests").mkdir()
    (base / "networks.toml").write_text(NETWORKS)
    (base / "hosts" / "bench.toml").write_text(HOST.format(netns=netns))
    nics = "".join(f'\n[[nics]]\nnetwork = "flat"\nmac = "{mac(i)}"\n' for i in range(n))
    (base / "guests" / "many.toml").write_text(f'[guest]\nname = "many"\nhost = "bench"\n{nics}')
    four = "".join(f'\n[[nics]]\nnetwork = "{net}"\nmac = "{mac(100000 + i)}"\n'
                   for i, net in enumerate(["mgmt", "blue", "flat", "priv"]))
    (base / "guests" / "four.toml").write_text(f'[guest]\nname = "four"\nhost = "bench"\n{four}')
    return base


def plan_of(root: Path, guest: str):
    fleet = load_fleet(root)
    return build_plan(build_graph(fleet), fleet.guests[guest], fleet.hosts["bench"])


def one_size(n: int, work: Path, per_op: bool, prefix: str = "nmA") -> dict[str, float]:
    netns = f"{prefix}-bench-{uuid.uuid4().hex[:6]}"
    sh(["ip", "netns", "add", netns])
    try:
        sh(["ip", "-n", netns, "-batch", "-"], "link set lo up\n"
           "link add eth0 type veth peer name p0\nlink set eth0 up\nlink set p0 up\n")
        root = fleet_dir(work / f"m{n}", netns, n)
        state = work / f"state{n}"
        plan = plan_of(root, "many")
        out: dict[str, float] = {}
        start = time.perf_counter()
        realize_plan(plan, state_dir=state)
        out["netmap create"] = time.perf_counter() - start
        start = time.perf_counter()
        release_guest("bench", "many", netns, state_dir=state)
        out["netmap release"] = time.perf_counter() - start
        add = []
        for i in range(n):
            add += [f"link add link eth0 name mv{i} address {mac(i)} type macvtap mode bridge",
                    f"link set mv{i} up"]
        delete = [f"link del mv{i}" for i in range(n)]
        out["ip -batch create"] = ip_batch(netns, add)
        out["ip -batch release"] = ip_batch(netns, delete)
        if per_op:
            out["ip per op create"] = ip_each(netns, add)
            ip_batch(netns, delete)
        return out
    finally:
        sh(["ip", "netns", "del", netns])


def four_nic(work: Path, runs: int, prefix: str = "nmA") -> tuple[float, float]:
    netns = f"{prefix}-bench-{uuid.uuid4().hex[:6]}"
    sh(["ip", "netns", "add", netns])
    try:
        sh(["ip", "-n", netns, "-batch", "-"], "\n".join(
            f"link add eth{i} type veth peer name p{i}\nlink set eth{i} up\nlink set p{i} up"
            for i in range(3)) + "\naddr add 10.251.0.1/24 dev eth2\n")
        root = fleet_dir(work / "four", netns, 1)
        state = work / "state-four"
        plan = plan_of(root, "four")
        create, release = [], []
        for _ in range(runs):
            start = time.perf_counter()
            realize_plan(plan, state_dir=state)
            create.append(time.perf_counter() - start)
            start = time.perf_counter()
            release_guest("bench", "four", netns, state_dir=state)
            release.append(time.perf_counter() - start)
        return statistics.median(create), statistics.median(release)
    finally:
        sh(["ip", "netns", "del", netns])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--no-per-op", action="store_true", help="skip one-ip-per-operation")
    parser.add_argument("--prefix", default="nmA",
                        help="namespace name prefix (only namespaces this run made are deleted)")
    args = parser.parse_args()
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else None  # like /run: tmpfs
    with tempfile.TemporaryDirectory(prefix="nmA-bench", dir=shm) as tmp:
        work = Path(tmp)
        print(f"{'N':>5} | {'netmap':>9} {'ip -batch':>9} {'ip/op':>9} | {'x batch':>7} "
              f"{'x ip/op':>7} || {'release':>9} {'ip -batch':>9} {'x batch':>7}"
              "    (ms per endpoint)")
        for n in (int(s) for s in args.sizes.split(",")):
            r = one_size(n, work, not args.no_per_op, args.prefix)
            per = {k: v / n * 1000 for k, v in r.items()}
            op = per.get("ip per op create", float("nan"))
            print(f"{n:>5} | {per['netmap create']:9.3f} {per['ip -batch create']:9.3f} "
                  f"{op:9.3f} | {r['netmap create'] / r['ip -batch create']:7.2f} "
                  f"{r['netmap create'] / r.get('ip per op create', float('nan')):7.2f} || "
                  f"{per['netmap release']:9.3f} {per['ip -batch release']:9.3f} "
                  f"{r['netmap release'] / r['ip -batch release']:7.2f}")
        create, release = four_nic(work, 20, args.prefix)
        print(f"4-NIC guest (bridge + vxlan + 2 macvtap), in-process, median of 20: realize "
              f"{create * 1000:.1f} ms, release {release * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
