"""The lab: a fleet's hosts as network namespaces, cabled to a shared fabric.

A `fabric` namespace holds one Linux bridge per segment; each host namespace gets one veth
per uplink, named as that host's mapping says (eth0 on host-a, eno2 on host-b), whose peer
is enslaved to the bridge of the uplink's first segment. Uplinks used as a vxlan underlay
get an address on a lab-only subnet so the overlay can run between host namespaces.

Built with iproute2's `ip -batch` (one process per namespace); SR-IOV cannot be faked here.
"""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass, field

from netmap.model import Fleet

UNDERLAY_NET = "10.250"  # lab-only addresses, inside namespaces the lab creates


@dataclass
class Lab:
    prefix: str
    fabric: str
    hosts: dict[str, str] = field(default_factory=dict)  # host name -> namespace
    segment_bridges: dict[str, str] = field(default_factory=dict)  # segment -> bridge
    underlay: dict[tuple[str, str], str] = field(default_factory=dict)  # (host, uplink) -> ip

    def namespaces(self) -> list[str]:
        return [self.fabric, *self.hosts.values()]


def _ip_batch(netns: str | None, commands: list[str]) -> None:
    if not commands:
        return
    argv = ["ip", *(["-n", netns] if netns else []), "-batch", "-"]
    done = subprocess.run(argv, input="\n".join(commands) + "\n", text=True,
                          capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")


def _short(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=4).hexdigest()


def namespace_exists(name: str) -> bool:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                             check=False).stdout
    return any(line.split()[0] == name for line in listing.splitlines() if line.strip())


def build_lab(fleet: Fleet, prefix: str = "nm-lab", hosts: list[str] | None = None) -> Lab:
    """Create the namespaces; on any failure everything created so far is removed."""
    lab = Lab(prefix, f"{prefix}-fabric")
    chosen = [fleet.hosts[name] for name in (hosts or sorted(fleet.hosts))]
    try:
        subprocess.run(["ip", "netns", "add", lab.fabric], check=True, capture_output=True)
        segments = sorted({s for h in chosen for u in h.uplinks.values() for s in u.segments})
        fabric_cmds = ["link set lo up"]
        for index, segment in enumerate(segments):
            bridge = f"seg{index}"
            lab.segment_bridges[segment] = bridge
            # ageing 0: a hub, so frames still reach a guest's MAC right after it moved hosts
            fabric_cmds.append(f"link add {bridge} type bridge ageing_time 0")
            fabric_cmds.append(f"link set {bridge} up")
        _ip_batch(lab.fabric, fabric_cmds)
        underlays = {(h.name, b.uplink) for h in chosen for b in h.bindings.values()
                     if b.mode == "vxlan"}
        for host_index, host in enumerate(chosen, start=1):
            netns = host.netns or f"{prefix}-{host.name}"
            subprocess.run(["ip", "netns", "add", netns], check=True, capture_output=True)
            lab.hosts[host.name] = netns
            host_cmds, fabric_cmds = ["link set lo up"], []
            for uplink in host.uplinks.values():
                peer = f"f{_short(netns + uplink.name)}"
                host_cmds.append(f"link add {uplink.name} mtu {uplink.mtu} type veth "
                                 f"peer name {peer} mtu {uplink.mtu} netns {lab.fabric}")
                host_cmds.append(f"link set {uplink.name} up")
                if uplink.segments:
                    fabric_cmds.append(f"link set {peer} master "
                                       f"{lab.segment_bridges[uplink.segments[0]]}")
                fabric_cmds.append(f"link set {peer} up")
                if (host.name, uplink.name) in underlays:
                    seg = segments.index(uplink.segments[0]) if uplink.segments else 255
                    address = f"{UNDERLAY_NET}.{seg}.{host_index}"
                    host_cmds.append(f"addr add {address}/24 dev {uplink.name}")
                    lab.underlay[(host.name, uplink.name)] = address
            _ip_batch(netns, host_cmds)
            _ip_batch(lab.fabric, fabric_cmds)
        _raise_bridge_mtu(lab, chosen)
    except BaseException:
        teardown_lab(lab)
        raise
    return lab


def _raise_bridge_mtu(lab: Lab, hosts: list) -> None:
    """A bridge takes the smallest MTU of its ports; set it after enslaving."""
    cmds = []
    for segment, bridge in lab.segment_bridges.items():
        mtus = [u.mtu for h in hosts for u in h.uplinks.values()
                if u.segments and u.segments[0] == segment]
        if mtus:
            cmds.append(f"link set {bridge} mtu {min(mtus)}")
    _ip_batch(lab.fabric, cmds)


def teardown_lab(lab: Lab) -> None:
    for netns in lab.namespaces():
        subprocess.run(["ip", "netns", "del", netns], check=False, capture_output=True)


def lab_for(fleet: Fleet, prefix: str) -> Lab:
    """The Lab that `build_lab` would make, for tearing down one built by another process."""
    lab = Lab(prefix, f"{prefix}-fabric")
    for host in fleet.hosts.values():
        lab.hosts[host.name] = host.netns or f"{prefix}-{host.name}"
    return lab


def main(argv: list[str] | None = None) -> int:
    import argparse

    from netmap.load import load_fleet

    parser = argparse.ArgumentParser(prog="scripts/lab", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--mappings", default="mappings")
    parser.add_argument("--prefix", default="nm-lab")
    parser.add_argument("hosts", nargs="*", help="hosts to build (default: all with uplinks)")
    args = parser.parse_intermixed_args(argv)
    fleet = load_fleet(args.mappings)
    if args.action == "down":
        teardown_lab(lab_for(fleet, args.prefix))
        return 0
    lab = build_lab(fleet, args.prefix, args.hosts or None)
    for host, netns in lab.hosts.items():
        uplinks = ", ".join(fleet.hosts[host].uplinks)
        print(f"{host}: netns {netns} uplinks {uplinks}")
    print(f"fabric: netns {lab.fabric} bridges "
          + ", ".join(f"{b}={s}" for s, b in lab.segment_bridges.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
