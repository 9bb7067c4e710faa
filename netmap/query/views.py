"""What `show` and `diff` say, as plain data (the --json answer; render.py draws it).

Each is a dict lookup over the model, so neither the graph (networkx) nor rich is
imported for it: a warm `show HOST --json` spent more importing those than answering.
What the graph would say here (a host's guests, an uplink reaching a segment, VFs in use)
is read from the same model: tests/test_views.py holds both equal.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from netmap.model.fleet import Fleet, Guest, Host, Vxlan, guests_placed_on
from netmap.model.mtu import effective_mtu
from netmap.modes import REGISTRY, mode_of, semantic_of
from netmap.query import l2
from netmap.query.graph import FleetGraph


def mac_clashes(fleet: Fleet, of: Iterable[Guest] | None = None,
                ) -> dict[tuple[str, int], list[str]]:
    """(guest, NIC) -> other guests using its MAC in its L2 domain or on its host, by the
    rule check's MAC_DUPLICATE follows (l2.mac_clashes); of the guests `of` (default: every
    guest), reading only the other users of their MACs when the fleet's guests can. No
    graph is searched (nor networkx imported) unless a MAC has two users."""
    nowhere: dict[str, Host] = {}
    graph = FleetGraph(fleet, nowhere, {}, None, fleet.hosts)
    return l2.mac_clashes(graph, None if of is None else list(of))


def vfs_in_use(host: Host, guests: Iterable[Guest]) -> Counter[str]:
    """VFs taken per PF uplink of `host` by `guests` (those placed there)."""
    used: Counter[str] = Counter()
    for guest in guests:
        for nic in guest.nics:
            binding = host.bindings.get(nic.network)
            if binding is not None and REGISTRY[binding.mode].claims == "vf":
                used[binding.uplink] += 1
    return used


def show_data(fleet: Fleet, hosts: Iterable[str]) -> dict[str, object]:
    """`netmap show`: each of `hosts` with its uplinks, the networks bound on each, and
    the guests placed there; then every file that could not be read."""
    hosts = list(hosts)
    placed: dict[str, list[Guest]] = {name: [] for name in hosts}
    for guest in guests_placed_on(fleet.guests, placed).values():
        placed[guest.host].append(guest)  # type: ignore[index]  # placed: host is set
    clashes = mac_clashes(fleet, [guest for name in hosts for guest in placed[name]])
    out = []
    for name in hosts:
        host = fleet.hosts[name]
        guests = placed[name]
        vfs = vfs_in_use(host, guests)
        uplinks = []
        for uplink in host.uplinks.values():
            networks = []
            for binding in host.bindings.values():
                if binding.uplink != uplink.name:
                    continue
                network = fleet.networks[binding.network]
                view_mtu, _ = effective_mtu(network, binding, host)
                networks.append({
                    "network": network.name, "mode": binding.mode, "semantic": semantic_of(binding),
                    "segment": network.segment_id,
                    "reaches_segment": network.is_overlay
                    or network.segment_id in uplink.segments,
                    "vlan": binding.vlan if binding.vlan is not None else network.vlan,
                    "mtu": view_mtu,
                    "guests": [
                        {"guest": guest.name, "nic": nic.index, "mac": nic.mac,
                         "mac_clash": clashes.get((guest.name, nic.index), [])}
                        for guest in guests for nic in guest.nics if nic.network == network.name
                    ],
                })
            uplinks.append({
                "uplink": uplink.name, "segments": list(uplink.segments), "mtu": uplink.mtu,
                "sriov": {"total_vfs": uplink.sriov.total_vfs, "used_vfs": vfs[uplink.name]}
                if uplink.sriov else None,
                "networks": networks,
            })
        out.append({"host": name, "features": sorted(host.features), "netns": host.netns,
                    "guests": [guest.name for guest in guests], "uplinks": uplinks,
                    "unbound": sorted(set(fleet.networks) - set(host.bindings))})
    return {"mappings": fleet.root, "hosts": out,
            "problems": [p.as_dict() for p in fleet.problems]}


def diff_rows(fleet: Fleet, a: Host, b: Host) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for name, network in fleet.networks.items():
        sides: list[dict[str, object] | None] = []
        for host in (a, b):
            binding = host.bindings.get(name)
            if binding is None:
                sides.append(None)
                continue
            mtu, _ = effective_mtu(network, binding, host)
            uplink = host.uplinks[binding.uplink]
            sides.append({
                "mode": binding.mode, "semantic": semantic_of(binding), "uplink": binding.uplink,
                "vlan": binding.vlan if binding.vlan is not None else network.vlan, "mtu": mtu,
                "reaches_segment": network.is_overlay or network.segment in uplink.segments,
                "vxlan": _vtep(binding.vxlan) if mode_of(binding).takes_vxlan else None,
            })
        differs = sorted(k for k in ("mode", "semantic", "vlan", "mtu", "reaches_segment",
                                     "vxlan")
                         if (sides[0] or {}).get(k) != (sides[1] or {}).get(k))
        rows.append({"network": name, "segment": network.segment_id, a.name: sides[0],
                     b.name: sides[1], "differs": differs})
    return rows


def _vtep(vxlan: Vxlan | None) -> str:
    """What VTEPs of one VNI must agree on besides the VNI: port and flooding peers."""
    vxlan = vxlan or Vxlan()
    peers = (f"group {vxlan.group}" if vxlan.group else
             f"remotes {', '.join(vxlan.remotes)}" if vxlan.remotes else "no peers")
    return f"port {vxlan.port} {peers}"
