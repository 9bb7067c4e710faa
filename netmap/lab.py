"""The lab: a fleet's hosts as network namespaces, cabled to a shared fabric.

A `fabric` namespace holds one Linux bridge per segment; each host namespace gets one veth
per uplink, named as that host's mapping says (eth0 on host-a, eno2 on host-b), whose peer
is enslaved to the bridge of the uplink's first segment. Uplinks used as a vxlan underlay
get an address on a lab-only subnet so the overlay can run between host namespaces.

Every namespace is named PREFIX-HOST (and PREFIX-fabric), and marked as the lab's: its
loopback's alias says `netmap-lab:PREFIX`. The marker lives inside the namespace, so it
goes with it: a namespace someone else makes later under the same name is unmarked, and
tearing down deletes only marked namespaces, never another's that happens to be named alike.

Built with iproute2's `ip -batch` (one process per namespace); SR-IOV cannot be faked here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass, field

from netmap.errors import ApplyError, InputError, NetmapError
from netmap.model.fleet import Fleet, Host, mapping_file
from netmap.modes import mode_of

UNDERLAY_NET = "10.250"  # lab-only addresses, inside namespaces the lab creates
MARK = "netmap-lab:"  # + prefix: the alias of `lo` in every namespace the lab made
DEFAULT_PREFIX = "nm-lab"


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
        raise ApplyError(f"{' '.join(argv)} failed: {done.stderr.strip()}",
                         fix="see iproute2's message; every namespace of this run was removed")


def _short(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=4).hexdigest()


def uplink_mac(netns: str, uplink: str) -> str:
    """A lab uplink's MAC: unicast, locally administered, 02:..., below every tap's.

    A Linux bridge takes the lowest MAC of its ports unless given one. libvirt and netmap
    give a guest's tap fe:+ the guest's MAC for that reason: a NIC's vendor prefix is lower,
    so the bridge on the uplink keeps the uplink's MAC. A veth's random MAC starts with fe
    one time in 64; then the bridge of a migration's destination took the arriving tap's
    MAC, which the source's bridge holds as its own port's, and the source swallowed every
    packet of the migration stream (a migration that timed out)."""
    digest = hashlib.blake2b(f"{netns}/{uplink}".encode(), digest_size=5).digest()
    return "02:" + ":".join(f"{byte:02x}" for byte in digest)


def namespaces() -> list[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                             check=False).stdout
    return [line.split()[0] for line in listing.splitlines() if line.strip()]


def namespace_exists(name: str) -> bool:
    return name in namespaces()


def lab_mark(netns: str) -> str | None:
    """The prefix of the lab that made `netns`, or None if no lab made it."""
    done = subprocess.run(["ip", "-n", netns, "-j", "link", "show", "lo"],
                          capture_output=True, text=True, check=False)
    try:
        alias = json.loads(done.stdout)[0].get("ifalias", "") if done.returncode == 0 else ""
    except (ValueError, IndexError, AttributeError):
        return None
    return alias[len(MARK):] if alias.startswith(MARK) else None


def host_namespace(prefix: str, host: str) -> str:
    return f"{prefix}-{host}"


def _check_prefix(prefix: str, hosts: list[Host]) -> None:
    """A host's namespace is PREFIX-HOST; its mapping's netns must name it, or netmap would
    act in another namespace than the one the lab built (or on nothing)."""
    from netmap.load.parse import name_problem

    problem = name_problem(prefix)
    if problem:
        raise InputError(f"lab prefix {problem}", key="--prefix", fix="use a plain name")
    for host in hosts:
        wanted = host_namespace(prefix, host.name)
        if host.netns is not None and host.netns != wanted:
            suffix = f"-{host.name}"
            their = host.netns.removesuffix(suffix) if host.netns.endswith(suffix) else None
            fix = f'set netns = "{wanted}" in it'
            if their:
                fix += f", or build the lab with --prefix {their}"
            raise InputError(f"host {host.name} names namespace {host.netns!r}, but the lab "
                             f"with prefix {prefix!r} builds {wanted!r}",
                             file=mapping_file(host), key="host.netns", fix=fix)


def build_lab(fleet: Fleet, prefix: str = DEFAULT_PREFIX,
              hosts: list[str] | None = None) -> Lab:
    """Create the namespaces; on any failure every namespace this call created is removed.
    Refuses, before creating anything, a namespace name that is already taken."""
    unknown = [name for name in hosts or () if name not in fleet.hosts]
    if unknown:
        raise InputError(f"unknown host(s) {', '.join(unknown)}",
                         fix="name hosts of the mappings: " + ", ".join(sorted(fleet.hosts)))
    chosen = [fleet.hosts[name] for name in (hosts or sorted(fleet.hosts))]
    _check_prefix(prefix, chosen)
    lab = Lab(prefix, f"{prefix}-fabric")
    planned = [lab.fabric, *(host_namespace(prefix, h.name) for h in chosen)]
    taken = [name for name in planned if name in namespaces()]
    if taken:
        raise InputError(f"network namespace(s) {', '.join(taken)} exist already",
                         fix=f"scripts/lab down --prefix {prefix} removes a lab built before "
                         "(only namespaces the lab made); or choose another --prefix")
    created: list[str] = []
    try:
        _add_namespace(lab.fabric, prefix, created)
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
                     if mode_of(b).uplink_use == "underlay"}
        for host_index, host in enumerate(chosen, start=1):
            netns = host_namespace(prefix, host.name)
            _add_namespace(netns, prefix, created)
            _answer_arp_only_for_own_addresses(netns)
            lab.hosts[host.name] = netns
            host_cmds, fabric_cmds = ["link set lo up"], []
            for uplink in host.uplinks.values():
                peer = f"f{_short(netns + uplink.name)}"
                host_cmds.append(f"link add {uplink.name} address {uplink_mac(netns, uplink.name)} "
                                 f"mtu {uplink.mtu} type veth "
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
        for netns in reversed(created):  # only what this call made, marked or not yet
            subprocess.run(["ip", "netns", "del", netns], check=False, capture_output=True)
        raise
    return lab


def add_namespace(lab: Lab, role: str) -> str:
    """One more namespace for `lab`, PREFIX-ROLE (a stand-in peer, in tests), marked like
    the lab's own so that tearing the lab down removes it too."""
    netns = host_namespace(lab.prefix, role)
    if netns in namespaces():
        raise InputError(f"network namespace {netns} exists already",
                         fix=f"scripts/lab down --prefix {lab.prefix}, or another role name")
    _add_namespace(netns, lab.prefix, [])
    lab.hosts[role] = netns
    return netns


def _add_namespace(netns: str, prefix: str, created: list[str]) -> None:
    done = subprocess.run(["ip", "netns", "add", netns], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:  # e.g. made by someone else since the check: not ours
        raise ApplyError(f"cannot create network namespace {netns}: {done.stderr.strip()}",
                         fix="every namespace of this run was removed; try again")
    created.append(netns)
    _ip_batch(netns, [f"link set lo alias {MARK}{prefix}"])


# A lab host has several uplinks on one segment (host-b: eno2 with a vxlan underlay address,
# eno3 under the bridge that carries the migration address). Linux answers ARP for any of its
# addresses on every interface by default, so a peer may learn the migration address at eno2's
# MAC; under strict reverse-path filtering (inherited from the machine's own rp_filter) the
# host then drops that peer's packets. Well-run hosts on a shared L2 answer only for the
# address of the interface asked, and announce from it: so does the lab.
ARP_SYSCTLS = {"arp_ignore": "1", "arp_announce": "2"}


def _answer_arp_only_for_own_addresses(netns: str) -> None:
    script = "; ".join(f"echo {value} > /proc/sys/net/ipv4/conf/all/{key}"
                       for key, value in ARP_SYSCTLS.items())
    done = subprocess.run(["ip", "netns", "exec", netns, "sh", "-c", script],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ApplyError(f"cannot set the ARP rules of {netns}: {done.stderr.strip()}",
                         fix="every namespace of this run was removed; see the message")


def _raise_bridge_mtu(lab: Lab, hosts: list) -> None:
    """A bridge takes the smallest MTU of its ports; set it after enslaving."""
    cmds = []
    for segment, bridge in lab.segment_bridges.items():
        mtus = [u.mtu for h in hosts for u in h.uplinks.values()
                if u.segments and u.segments[0] == segment]
        if mtus:
            cmds.append(f"link set {bridge} mtu {min(mtus)}")
    _ip_batch(lab.fabric, cmds)


def teardown_lab(lab: Lab) -> list[str]:
    """Delete the lab's namespaces that carry its mark; return the names left alone."""
    left = []
    for netns in lab.namespaces():
        if lab_mark(netns) == lab.prefix:
            subprocess.run(["ip", "netns", "del", netns], check=False, capture_output=True)
        elif namespace_exists(netns):
            left.append(netns)
    return left


def teardown_prefix(prefix: str) -> tuple[list[str], list[str]]:
    """Delete every namespace the lab with `prefix` made, whatever hosts it had; return
    (deleted, left alone: named PREFIX-... but not marked by that lab)."""
    deleted, left = [], []
    for netns in namespaces():
        if not netns.startswith(f"{prefix}-"):
            continue
        if lab_mark(netns) == prefix:
            subprocess.run(["ip", "netns", "del", netns], check=False, capture_output=True)
            deleted.append(netns)
        else:
            left.append(netns)
    return deleted, left


def lab_for(fleet: Fleet, prefix: str) -> Lab:
    """The Lab that `build_lab` would make, for tearing down one built by another process."""
    lab = Lab(prefix, f"{prefix}-fabric")
    for host in fleet.hosts.values():
        lab.hosts[host.name] = host_namespace(prefix, host.name)
    return lab


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="scripts/lab", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--mappings", default="mappings")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX,
                        help="namespaces are PREFIX-HOST and PREFIX-fabric; each host's "
                        "mapping must say netns = \"PREFIX-HOST\" (default: %(default)s)")
    parser.add_argument("hosts", nargs="*", help="hosts to build (default: all)")
    args = parser.parse_intermixed_args(argv)
    try:
        return _down(args.prefix) if args.action == "down" else _up(args)
    except NetmapError as err:
        print(f"scripts/lab: error: {err}", file=sys.stderr)
        return err.exit_code


def _down(prefix: str) -> int:
    deleted, left = teardown_prefix(prefix)
    for netns in deleted:
        print(f"removed netns {netns}")
    for netns in left:
        made_by = lab_mark(netns)
        why = (f"made by the lab with --prefix {made_by}" if made_by is not None
               else "not made by scripts/lab (no lab mark on its lo)")
        print(f"left netns {netns} alone: {why}", file=sys.stderr)
    if not deleted and not left:
        print(f"no lab namespaces with prefix {prefix}")
    return 0


def _up(args: argparse.Namespace) -> int:
    from netmap.load import load_fleet

    fleet = load_fleet(args.mappings)
    lab = build_lab(fleet, args.prefix, args.hosts or None)
    for host, netns in lab.hosts.items():
        uplinks = ", ".join(fleet.hosts[host].uplinks)
        print(f"{host}: netns {netns} uplinks {uplinks}")
    print(f"fabric: netns {lab.fabric} bridges "
          + ", ".join(f"{b}={s}" for s, b in lab.segment_bridges.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
