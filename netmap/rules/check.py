"""The pre-migration check: can a host realize the same topology for a guest? Pure."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import networkx as nx

from netmap.model import names
from netmap.model.fleet import (
    Guest,
    GuestNic,
    Host,
    Network,
    Vxlan,
    mapping_file,
)
from netmap.modes import REGISTRY
from netmap.query import graph as g

ERROR, WARNING, INFO = "error", "warning", "info"


@dataclass(frozen=True)
class Finding:
    """One thing check found: a stable code, how bad, which NIC, what, and how to fix it."""

    code: str
    severity: str
    nic: int | None
    message: str
    hint: str

    def as_dict(self) -> dict[str, object]:
        return {"code": self.code, "severity": self.severity, "nic": self.nic,
                "message": self.message, "hint": self.hint}


@dataclass(frozen=True)
class Report:
    guest: str
    source: str | None
    dest: str
    strict: bool
    pairs: tuple[tuple[g.NicView | None, g.NicView], ...]
    findings: tuple[Finding, ...] = field(default=())

    @property
    def compatible(self) -> bool:
        return not any(f.severity == ERROR for f in self.findings)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == WARNING]

    def as_dict(self) -> dict[str, object]:
        return {
            "guest": self.guest, "source": self.source, "destination": self.dest,
            "strict": self.strict, "compatible": self.compatible,
            "nics": [{"source": s.as_dict() if s else None, "destination": d.as_dict()}
                     for s, d in self.pairs],
            "findings": [f.as_dict() for f in self.findings],
        }


def _nic_label(nic: GuestNic) -> str:
    return f"NIC {nic.index} ({nic.mac}, network {nic.network})"


def check_migration(graph: nx.DiGraph, guest_name: str, dest: str, *,
                    source: str | None = None, strict: bool = False) -> Report:
    """Compare the guest's view on its source host with the view on `dest`."""
    fleet = g.fleet_of(graph)
    guest = fleet.guests[guest_name]
    host = fleet.hosts[dest]
    src = source if source is not None else guest.host
    findings: list[Finding] = []
    pairs = []
    if src == dest:
        findings.append(Finding("SAME_HOST", INFO, None,
                                f"{guest.name} already runs on {dest}; checked in place.",
                                "name another host with --to to check a migration"))
    before_views = _views_on(graph, guest, src) if src else [None] * len(guest.nics)
    for nic, before in zip(guest.nics, before_views, strict=True):
        after = g.nic_view(graph, guest.name, nic, dest)
        pairs.append((before, after))
        findings.extend(_nic_findings(graph, guest, nic, before, after, host, strict))
    findings.extend(_capacity_findings(graph, guest, host))
    unreadable = [p for p in fleet.problems if p.file and "/guests/" in p.file.replace("\\", "/")]
    if unreadable:
        findings.append(Finding(
            "FLEET_INCOMPLETE", WARNING, None,
            f"{len(unreadable)} guest file(s) could not be read (first: {unreadable[0].file}); "
            "MACs and capacity used by those guests were not counted.",
            "run 'netmap show' to see what is wrong in them and fix it"))
    return Report(guest.name, src, dest, strict, tuple(pairs), tuple(findings))


def _views_on(graph: nx.DiGraph, guest: Guest, host: str) -> list[g.NicView]:
    """The guest's views on its source host, computed once per graph: a placement query
    compares them with every candidate host."""
    memo = graph.graph.setdefault("source_views", {})
    views = memo.get((guest.name, host))
    if views is None:
        views = memo[guest.name, host] = g.guest_view(graph, guest, host)
    return views


def _nic_findings(graph: nx.DiGraph, guest: Guest, nic: GuestNic, before: g.NicView | None,
                  after: g.NicView, host: Host, strict: bool) -> list[Finding]:
    fleet = g.fleet_of(graph)
    network = fleet.networks[nic.network]
    label = _nic_label(nic)
    mapping = mapping_file(host)
    out: list[Finding] = []
    reference = before if before is not None and before.bound else None
    if before is not None and not before.bound:
        out.append(Finding(
            "SOURCE_UNBOUND", WARNING, nic.index,
            f"{label}: source {before.host} does not bind {nic.network}; compared against "
            "the network's definition instead.",
            f"add [networks.{nic.network}] to {before.host}'s mapping"))
    if not after.bound:
        out.append(unbound_finding(network, nic, host))
        return out
    assert after.mode is not None  # bound
    mode = REGISTRY[after.mode]
    if not after.reaches_segment:
        out.append(Finding(
            "SEGMENT_UNREACHABLE", ERROR, nic.index,
            f"{label}: {host.name} binds {nic.network} to uplink {after.uplink}, which does "
            f"not reach segment {network.segment_id}; frames would land on another L2 domain.",
            f'add "{network.segment_id}" to [uplinks.{after.uplink}] segments in {mapping} if '
            f"it is cabled there, else bind {nic.network} to an uplink that reaches "
            f"{network.segment_id}"))
    want_vlan = reference.vlan if reference else network.vlan
    if after.vlan != want_vlan:
        out.append(Finding(
            "VLAN_MISMATCH", ERROR, nic.index,
            f"{label}: VLAN {_vlan(want_vlan)} on the source but {_vlan(after.vlan)} on "
            f"{host.name}; the guest would join another broadcast domain.",
            f"make [networks.{nic.network}] vlan on {host.name} match {_vlan(want_vlan)}"))
    need_mtu = g.needed_mtu(graph, guest, nic, reference)
    if after.mtu is not None and after.mtu < need_mtu:
        out.append(Finding(
            "MTU_TOO_SMALL", ERROR, nic.index,
            f"{label}: the guest uses MTU {need_mtu}, but {host.name} gives at most "
            f"{after.mtu} (limited by {after.mtu_reason}); larger frames would be dropped.",
            f"raise the MTU of {after.mtu_reason.split(' MTU')[0]} on {host.name} to "
            f"{need_mtu}{_overhead(host, nic.network)}, or lower the guest's MTU"))
    if reference is not None and reference.mode == after.mode and mode.takes_vxlan:
        out.extend(_overlay_findings(fleet.hosts[reference.host], host, nic, label))
    want_class = nic.semantic or (reference.semantic if reference else None)
    if want_class and after.semantic != want_class:
        pinned = nic.semantic is not None
        severity = ERROR if strict or pinned else WARNING
        why = "the guest pins it" if pinned else ("--strict" if strict else "")
        out.append(Finding(
            "SEMANTIC_CHANGED", severity, nic.index,
            f"{label}: forwarding changes from {want_class} to {after.semantic} "
            f"({reference.mode if reference else 'pinned'} -> {after.mode}); guests on the "
            f"same host would reach each other differently{f' ({why})' if why else ''}.",
            f"bind {nic.network} on {host.name} with a mode of class {want_class}, or accept "
            "the change"))
    uses_vhost = mode.uses_vhost(after.devices)
    if uses_vhost and nic.vhost != "off" and "vhost-net" not in host.features:
        required = nic.vhost == "required"
        out.append(Finding(
            "VHOST_MISSING", ERROR if required else WARNING, nic.index,
            f"{label}: {host.name} does not offer vhost-net"
            + (", which this NIC requires." if required
               else "; the NIC falls back to QEMU's userspace virtio-net (slower)."),
            f'load vhost_net on {host.name} and add "vhost-net" to its features, '
            'or set vhost = "preferred" on the NIC'))
    for role, name in after.devices:
        problem = names.ifname_problem(name)
        if problem:
            out.append(Finding(
                "NAME_TOO_LONG", ERROR, nic.index,
                f"{label}: the {role} device realize would create on {host.name}: {problem}.",
                f"rename uplink {after.uplink} or set bridge = \"...\" in the binding"))
    out.extend(_mac_findings(graph, guest, nic, host, label))
    return out


def _peers(vxlan: Vxlan) -> str:
    family = "IPv6" if vxlan.ipv6 else "IPv4"
    if vxlan.group:
        return f"multicast group {vxlan.group}"
    if vxlan.remotes:
        return f"unicast remotes ({family}) {', '.join(vxlan.remotes)}"
    return "no peers (neither group nor remotes)"


def _overlay_findings(source: Host, dest: Host, nic: GuestNic, label: str) -> list[Finding]:
    """VTEPs of one VNI exchange frames only when they agree on the UDP port and on where
    broadcast and unknown frames go (the same multicast group, or unicast remotes of the
    same address family). Which remotes list reaches which host, and whether the underlay
    routes a group between hosts, the mappings cannot tell: netmap assumes a routed
    underlay that connects every host's VTEP."""
    was = source.bindings[nic.network].vxlan or Vxlan()
    now = dest.bindings[nic.network].vxlan or Vxlan()
    table = f"[networks.{nic.network}] vxlan in {mapping_file(dest)}"
    out: list[Finding] = []
    if was.port != now.port:
        out.append(Finding(
            "VXLAN_PORT_MISMATCH", ERROR, nic.index,
            f"{label}: {source.name}'s VTEP uses UDP port {was.port}, {dest.name}'s "
            f"{now.port}; VTEPs of one VNI must agree on VNI and port, so the guest's frames "
            "would be lost both ways.",
            f"set port = {was.port} in {table} (or change every host of the VNI)"))
    unicast = not was.group and not now.group and was.remotes and now.remotes
    if (was.group != now.group or (not was.remotes) != (not now.remotes)
            or (unicast and was.ipv6 != now.ipv6)):
        out.append(Finding(
            "VXLAN_PEERS_MISMATCH", ERROR, nic.index,
            f"{label}: on {source.name} the VNI floods to {_peers(was)}, on {dest.name} to "
            f"{_peers(now)}; {dest.name}'s VTEP would not reach the guest's peers (broadcast "
            "and ARP would be lost).",
            f"use the same {'group' if was.group else 'kind of peers'} in {table}"))
    return out


def unbound_finding(network: Network, nic: GuestNic, host: Host) -> Finding:
    mapping = mapping_file(host)
    return unbound_finding_at(network, nic, host.name, mapping)


def unbound_finding_at(network: Network, nic: GuestNic, host: str, mapping: str) -> Finding:
    """`unbound_finding` from the host's name and mapping file alone."""
    return Finding(
        "NETWORK_UNBOUND", ERROR, nic.index,
        f"{_nic_label(nic)}: {host} has no binding for network {nic.network}, so the "
        "guest would lose this link.",
        f"add [networks.{nic.network}] (mode, uplink reaching {network.segment_id}) to "
        f"{mapping}, or pick another host")


def _mac_findings(graph: nx.DiGraph, guest: Guest, nic: GuestNic, host: Host,
                  label: str) -> list[Finding]:
    fleet = g.fleet_of(graph)
    network = fleet.networks[nic.network]
    out = []
    for other_name, other_index in g.mac_owners(graph).get(nic.mac, ()):
        if other_name == guest.name:
            continue
        other = fleet.guests[other_name]
        other_network = fleet.networks[other.nics[other_index].network]
        if other.host == host.name:
            out.append(Finding(
                "MAC_IN_USE", ERROR, nic.index,
                f"{label}: guest {other_name} on {host.name} already uses {nic.mac}; two "
                "endpoints with one MAC confuse the bridge and the switch.",
                f"give {guest.name} or {other_name} another MAC"))
        elif (other_network.segment_id, other_network.vlan) == (network.segment_id,
                                                                 network.vlan):
            out.append(Finding(
                "MAC_DUPLICATE", ERROR, nic.index,
                f"{label}: guest {other_name} (on {other.host or 'no host'}) uses {nic.mac} "
                f"on the same L2 domain ({network.segment_id}, VLAN {_vlan(network.vlan)}).",
                f"give {guest.name} or {other_name} another MAC"))
    return out


def _capacity_findings(graph: nx.DiGraph, guest: Guest, host: Host) -> list[Finding]:
    out: list[Finding] = []
    needs_vf: Counter[str] = Counter()
    needs_whole: Counter[str] = Counter()
    first_nic: dict[str, int] = {}
    for nic in guest.nics:
        binding = host.bindings.get(nic.network)
        if binding is None:
            continue
        claim = REGISTRY[binding.mode].claims
        if claim == "vf":
            needs_vf[binding.uplink] += 1
        elif claim == "uplink":
            needs_whole[binding.uplink] += 1
        else:
            continue
        first_nic.setdefault(binding.uplink, nic.index)
    if needs_vf:
        used = g.vf_usage(graph, host.name, excluding=guest.name)
        for uplink, wanted in needs_vf.items():
            pool = host.uplinks[uplink].sriov
            total = pool.total_vfs if pool else 0
            if used[uplink] + wanted > total:
                out.append(Finding(
                    "NO_FREE_VF", ERROR, first_nic[uplink],
                    f"{host.name}'s PF {uplink} has {total - used[uplink]} free VF(s) of "
                    f"{total}; {guest.name} needs {wanted}.",
                    f"free VFs on {uplink} (move a guest away) or raise sriov_numvfs"))
    if needs_whole:
        used = g.passthrough_usage(graph, host.name, excluding=guest.name)
        for uplink, wanted in needs_whole.items():
            if used[uplink] + wanted > 1:
                out.append(Finding(
                    "UPLINK_TAKEN", ERROR, first_nic[uplink],
                    f"{host.name}'s uplink {uplink} is passed through whole to "
                    f"{'another guest' if used[uplink] else 'more than one NIC'}; "
                    "macvtap passthrough allows one.",
                    f"move the guest that holds {uplink} first, or pick another host"))
    others = [o for o in g.guests_on(graph, host.name) if o.name != guest.name]
    if host.max_guests is not None and len(others) + 1 > host.max_guests:
        out.append(Finding(
            "HOST_FULL", ERROR, None,
            f"{host.name} already runs {len(others)} guest(s), its limit (max_guests).",
            f"raise max_guests in {host.name}'s mapping or pick another host"))
    if host.max_endpoints is not None:
        used_endpoints = sum(len(o.nics) for o in others)
        if used_endpoints + len(guest.nics) > host.max_endpoints:
            out.append(Finding(
                "HOST_FULL", ERROR, None,
                f"{host.name} has {host.max_endpoints - used_endpoints} free endpoint(s) of "
                f"{host.max_endpoints}; {guest.name} needs {len(guest.nics)}.",
                f"raise max_endpoints in {host.name}'s mapping or pick another host"))
    return out


def _overhead(host: Host, network: str) -> str:
    """' + N' for the vxlan overhead the underlay carries on top of the guest's MTU."""
    binding = host.bindings.get(network)
    overhead = REGISTRY[binding.mode].underlay_overhead(binding) if binding else 0
    return f" + {overhead}" if overhead else ""


def _vlan(vlan: int | None) -> str:
    return "untagged" if vlan is None else str(vlan)
