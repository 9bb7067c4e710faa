#!/usr/bin/env python3
"""Benchmark the ovs mode against its floor, side by side in one run (needs root and
Open vSwitch's binaries; starts its own ovsdb-server and ovs-vswitchd, userspace datapath,
in a throw-away namespace, and removes everything after).

For N = 10, 100, 1000 guests with one OVS NIC each (network VLAN 10 on OVS bridge br-ovs,
uplink eth0 a trunk):
  netmap   realize each guest in-process (plan, lock, state, tap through rtnetlink, one
           OVSDB transaction, wait for ovs-vswitchd, read-back and verify), then release each
  floor    the same N taps from one `ip -batch`, then ONE `ovs-vsctl` transaction that adds
           the bridge, the uplink and the N ports with their tags and external_ids (waiting
           for ovs-vswitchd as ovs-vsctl does); release: one ovs-vsctl del-port transaction
           and one `ip -batch` link del
Prints times and ratios; asserts nothing.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from ovs_lab import missing, start_ovs  # noqa: E402

from netmap.load import load_fleet  # noqa: E402
from netmap.modes.ovs import ovs_port_ids  # noqa: E402
from netmap.netlink.apply import realize_plan, release_guest  # noqa: E402
from netmap.plan.planner import build_plan  # noqa: E402
from netmap.query.graph import build_graph  # noqa: E402

NETWORKS = '[networks.blue]\nsegment = "fabric"\nvlan = 10\n'
HOST = """[host]
name = "bench"
netns = "{netns}"
ovsdb = "{remote}"
features = ["tun"]
[uplinks.eth0]
segments = ["fabric"]
[networks.blue]
mode = "ovs"
uplink = "eth0"
bridge = "br-ovs"
datapath_type = "netdev"
"""


def mac(i: int) -> str:
    return f"52:54:02:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"


def sh(argv: list[str], stdin: str | None = None) -> None:
    subprocess.run(argv, input=stdin, text=True, check=True, capture_output=True)


def write_fleet(root: Path, netns: str, remote: str, n: int) -> None:
    for sub in ("hosts", "guests"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "networks.toml").write_text(NETWORKS)
    (root / "hosts" / "bench.toml").write_text(HOST.format(netns=netns, remote=remote))
    for i in range(n):
        (root / "guests" / f"g{i}.toml").write_text(
            f'[guest]\nname = "g{i}"\nhost = "bench"\n[[nics]]\nnetwork = "blue"\n'
            f'mac = "{mac(i)}"\n')


def netmap_run(root: Path, state: Path, n: int) -> tuple[float, float, list]:
    fleet = load_fleet(root)
    graph = build_graph(fleet)
    host = fleet.hosts["bench"]
    guests = [fleet.guests[f"g{i}"] for i in range(n)]
    start = time.perf_counter()
    plans = []
    for guest in guests:
        plan = build_plan(graph, guest, host)
        realize_plan(plan, state_dir=state)
        plans.append(plan)
    made = time.perf_counter() - start
    start = time.perf_counter()
    for guest in guests:
        release_guest("bench", guest.name, host.netns, state_dir=state)
    return made, time.perf_counter() - start, plans


def floor_run(ovs, netns: str, plans: list) -> tuple[float, float]:
    taps = [(str(plan.nics[0].device), plan) for plan in plans]
    fleet_binding = None
    start = time.perf_counter()
    lines = []
    for tap, plan in taps:
        lines += [f"tuntap add {tap} mode tap", f"link set {tap} address "
                  f"fe{plan.nics[0].mac[2:]} up"]
    sh(["ip", "-n", netns, "-batch", "-"], "\n".join(lines) + "\n")
    args = ["--may-exist", "add-br", "br-ovs", "--", "set", "Bridge", "br-ovs",
            "datapath_type=netdev", "--", "--may-exist", "add-port", "br-ovs", "eth0"]
    for tap, plan in taps:
        nic = plan.nics[0]
        ids = ovs_port_ids(plan.guest, _nic(nic), fleet_binding or _binding())
        args += ["--", "--may-exist", "add-port", "br-ovs", tap, "tag=10", "--", "set",
                 "Port", tap, *(f'external_ids:"{k}"="{v}"' for k, v in ids)]
    ovs.vsctl(*args, timeout=600)  # ovs-vswitchd takes seconds per hundred netdev ports
    made = time.perf_counter() - start
    start = time.perf_counter()
    ovs.vsctl("del-br", "br-ovs", timeout=600)
    sh(["ip", "-n", netns, "-batch", "-"], "".join(f"link del {tap}\n" for tap, _ in taps))
    return made, time.perf_counter() - start


def _nic(nic):  # the GuestNic the plan's NIC came from, for its external_ids
    from netmap.model.fleet import GuestNic

    return GuestNic(nic.nic, nic.network, nic.mac)


def _binding():
    from netmap.model.fleet import Binding

    return Binding("blue", "ovs", "eth0", "br-ovs")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000")
    args = parser.parse_args()
    why = missing()
    if why:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    print(f"{'N':>6} {'netmap realize':>15} {'floor':>8} {'ratio':>6}   "
          f"{'netmap release':>15} {'floor':>8} {'ratio':>6}")
    for n in (int(s) for s in args.sizes.split(",")):
        netns = f"ov-bench-{uuid.uuid4().hex[:6]}"
        base = Path(tempfile.mkdtemp(prefix="ovb", dir="/tmp"))
        sh(["ip", "netns", "add", netns])
        ovs = None
        try:
            sh(["ip", "-n", netns, "link", "add", "eth0", "type", "veth", "peer", "name",
                "eth0p"])
            sh(["ip", "-n", netns, "link", "set", "eth0", "up"])
            sh(["ip", "-n", netns, "link", "set", "eth0p", "up"])
            ovs = start_ovs(netns, base / "ovs")
            write_fleet(base / "m", netns, ovs.remote, n)
            made, gone, plans = netmap_run(base / "m", base / "state", n)
            print(f"{n:>6} netmap: realize {made:.2f}s, release {gone:.2f}s", flush=True)
            floor_made, floor_gone = floor_run(ovs, netns, plans)
            print(f"{n:>6} {made:>14.2f}s {floor_made:>7.2f}s {made / floor_made:>5.1f}x   "
                  f"{gone:>14.2f}s {floor_gone:>7.2f}s {gone / floor_gone:>5.1f}x", flush=True)
        finally:
            if ovs is not None:
                ovs.stop()
            subprocess.run(["ip", "netns", "del", netns], check=False)
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
