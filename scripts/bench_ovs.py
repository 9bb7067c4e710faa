#!/usr/bin/env python3
"""Benchmark the ovs mode against its floor, side by side in one run (needs root and
Open vSwitch's binaries; starts its own ovsdb-server and ovs-vswitchd, userspace datapath,
in a throw-away namespace per shape and size, and removes everything after).

For N = 10, 100, 1000 guests of each shape:
  1nic        one NIC each: network VLAN 10 on OVS bridge br-a (uplink eth0, a trunk)
  2nic-vlan   two NICs each: VLAN 10 on br-a (eth0) and VLAN 20 on br-b (eth1)
  2nic-plain  two NICs each on br-a and br-b, untagged networks
  netmap   build the N plans and realize all N guests in one call (what
           `netmap realize --all --host H` does after the mappings are loaded: one lock,
           one link dump, one tap batch, one OVSDB transaction, wait for ovs-vswitchd,
           read back and verify, state); release: all N in one call (`release --all`)
  floor    the same taps from one `ip -batch`, then ONE `ovs-vsctl` transaction that adds
           the bridges, the uplinks and every port with its tag and external_ids (as
           netmap's plan sets them), waiting for ovs-vswitchd as ovs-vsctl does; release:
           one `ovs-vsctl del-br` transaction and one `ip -batch` link del
netmap runs first, then the floor, on the same ovs-vswitchd, whose datapath a bridge made
and deleted before either has already created. Prints times and ratios;
asserts nothing. --repeat R runs each shape and size R times and keeps each side's best.
Also prints the CPU time of netmap's realize (this process) and of the floor's realize
(its ovs-vsctl and ip, child processes), each the least of the R runs, and the load
average before and after: the machine may be shared, and CPU time is what load does not
inflate.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from ovs_lab import OvsInstance, missing, start_ovs  # noqa: E402

from netmap.load import load_fleet  # noqa: E402
from netmap.netlink.apply import realize_plans, release_guests  # noqa: E402
from netmap.plan import EnsureOvsPort, Plan  # noqa: E402
from netmap.plan.planner import build_plan  # noqa: E402
from netmap.query.graph import build_graph  # noqa: E402


@dataclass(frozen=True)
class Shape:
    name: str
    networks: tuple[tuple[str, int | None, str, str], ...]  # (network, vlan, bridge, uplink)


SHAPES = (Shape("1nic", (("blue", 10, "br-a", "eth0"),)),
          Shape("2nic-vlan", (("blue", 10, "br-a", "eth0"), ("red", 20, "br-b", "eth1"))),
          Shape("2nic-plain", (("green", None, "br-a", "eth0"),
                               ("yellow", None, "br-b", "eth1"))))


def mac(i: int, nic: int) -> str:
    return f"52:54:0{nic + 2}:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"


def sh(argv: list[str], stdin: str | None = None) -> None:
    subprocess.run(argv, input=stdin, text=True, check=True, capture_output=True)


def write_fleet(root: Path, shape: Shape, netns: str, remote: str, n: int) -> None:
    for sub in ("hosts", "guests"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    networks, host = [], [f'[host]\nname = "bench"\nnetns = "{netns}"\novsdb = "{remote}"\n'
                          'features = ["tun"]\n']
    for net, vlan, bridge, uplink in shape.networks:
        networks.append(f'[networks.{net}]\nsegment = "seg-{uplink}"\n'
                        + (f"vlan = {vlan}\n" if vlan is not None else ""))
        host.append(f'[uplinks.{uplink}]\nsegments = ["seg-{uplink}"]\n'
                    f'[networks.{net}]\nmode = "ovs"\nuplink = "{uplink}"\n'
                    f'bridge = "{bridge}"\ndatapath_type = "netdev"\n')
    (root / "networks.toml").write_text("".join(networks))
    (root / "hosts" / "bench.toml").write_text("".join(host))
    for i in range(n):
        nics = "".join(f'[[nics]]\nnetwork = "{net}"\nmac = "{mac(i, k)}"\n'
                       for k, (net, *_rest) in enumerate(shape.networks))
        (root / "guests" / f"g{i}.toml").write_text(
            f'[guest]\nname = "g{i}"\nhost = "bench"\n{nics}')


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def netmap_run(root: Path, state: Path, n: int,
               ) -> tuple[float, float, float, list[Plan]]:
    fleet = load_fleet(root)
    graph = build_graph(fleet)
    host = fleet.hosts["bench"]
    guests = [fleet.guests[f"g{i}"] for i in range(n)]
    # the walk of what loading built is loading's (the command line pays it before it
    # plans); left pending, the collector would charge it to the first plan timed
    gc.collect()
    start, cpu = time.perf_counter(), time.process_time()
    plans = [build_plan(graph, guest, host) for guest in guests]
    realize_plans(plans, state_dir=state)
    made, cpu = time.perf_counter() - start, time.process_time() - cpu
    gc.collect()  # realize's garbage: a release on the command line is its own process
    start = time.perf_counter()
    release_guests("bench", [guest.name for guest in guests], host.netns, state_dir=state)
    return made, time.perf_counter() - start, cpu, plans


def floor_run(ovs: OvsInstance, netns: str, shape: Shape, plans: list[Plan],
              ) -> tuple[float, float, float]:
    ports = [step for plan in plans for nic in plan.nics for step in nic.steps
             if isinstance(step, EnsureOvsPort) and step.port == nic.device]
    macs = {str(nic.device): nic.mac for plan in plans for nic in plan.nics}
    start, cpu = time.perf_counter(), children_cpu()
    lines = []
    for port in ports:
        lines += [f"tuntap add {port.port} mode tap",
                  f"link set {port.port} address fe{macs[port.port][2:]} up"]
    sh(["ip", "-n", netns, "-batch", "-"], "\n".join(lines) + "\n")
    args: list[str] = []
    for _net, _vlan, bridge, uplink in shape.networks:
        args += ["--", "--may-exist", "add-br", bridge, "--", "set", "Bridge", bridge,
                 "datapath_type=netdev", "--", "--may-exist", "add-port", bridge, uplink]
    for port in ports:
        tag = [f"tag={port.tag}"] if port.tag is not None else []
        args += ["--", "--may-exist", "add-port", port.bridge, port.port, *tag, "--", "set",
                 "Port", port.port, *(f'external_ids:"{k}"="{v}"' for k, v in
                                      port.external_ids)]
    ovs.vsctl(*args[1:], timeout=900)  # ovs-vswitchd takes seconds per hundred netdev ports
    made, cpu = time.perf_counter() - start, children_cpu() - cpu
    start = time.perf_counter()
    args = []
    for _net, _vlan, bridge, _uplink in shape.networks:
        args += ["--", "del-br", bridge]
    ovs.vsctl(*args[1:], timeout=900)
    sh(["ip", "-n", netns, "-batch", "-"], "".join(f"link del {p.port}\n" for p in ports))
    return made, time.perf_counter() - start, cpu


def one_run(shape: Shape, n: int, state_parent: str | None, prefix: str,
            ) -> tuple[float, float, float, float, float, float]:
    netns = f"{prefix}-{uuid.uuid4().hex[:6]}"
    base = Path(tempfile.mkdtemp(prefix="ovb", dir="/tmp"))
    state = Path(tempfile.mkdtemp(prefix="ovb-state", dir=state_parent or base))
    sh(["ip", "netns", "add", netns])
    ovs = None
    try:
        for _net, _vlan, _bridge, uplink in shape.networks:
            sh(["ip", "-n", netns, "link", "add", uplink, "type", "veth", "peer", "name",
                f"{uplink}p"])
            sh(["ip", "-n", netns, "link", "set", uplink, "up"])
            sh(["ip", "-n", netns, "link", "set", f"{uplink}p", "up"])
        ovs = start_ovs(netns, base / "ovs")
        # ovs-vswitchd makes its userspace datapath with the first bridge and keeps it:
        # made here, so that neither side pays for it
        ovs.vsctl("add-br", "br-warm", "--", "set", "Bridge", "br-warm", "datapath_type=netdev")
        ovs.vsctl("del-br", "br-warm")
        write_fleet(base / "m", shape, netns, ovs.remote, n)
        made, gone, cpu, plans = netmap_run(base / "m", state, n)
        floor_made, floor_gone, floor_cpu = floor_run(ovs, netns, shape, plans)
        return made, floor_made, gone, floor_gone, cpu, floor_cpu
    finally:
        if ovs is not None:
            ovs.stop()
        subprocess.run(["ip", "netns", "del", netns], check=False)
        shutil.rmtree(base, ignore_errors=True)
        if state_parent:
            shutil.rmtree(state, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--shapes", default=",".join(s.name for s in SHAPES))
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--state-parent", metavar="DIR",
                        help="make netmap's state directory in DIR (default: in the run's "
                        "temporary directory, /tmp)")
    parser.add_argument("--netns-prefix", default="nmov-bench",
                        help="the throw-away namespaces' name prefix (default: %(default)s)")
    args = parser.parse_args()
    why = missing()
    if why:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    chosen = [s for s in SHAPES if s.name in args.shapes.split(",")]
    print("load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    print(f"{'shape':<11} {'N':>5} {'realize':>8} {'floor':>7} {'ratio':>6}   "
          f"{'release':>8} {'floor':>7} {'ratio':>6}   {'cpu':>6} {'floor':>6}")
    for shape in chosen:
        for n in (int(s) for s in args.sizes.split(",")):
            runs = [one_run(shape, n, args.state_parent, args.netns_prefix)
                    for _ in range(args.repeat)]
            made, floor_made, gone, floor_gone, cpu, floor_cpu = (
                min(r[k] for r in runs) for k in range(6))
            print(f"{shape.name:<11} {n:>5} {made:>7.2f}s {floor_made:>6.2f}s "
                  f"{made / floor_made:>5.2f}x   {gone:>7.2f}s {floor_gone:>6.2f}s "
                  f"{gone / floor_gone:>5.2f}x   {cpu:>5.3f}s {floor_cpu:>5.3f}s", flush=True)
    print("load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
