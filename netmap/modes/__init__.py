"""The modes a binding can name, one module per family, and the registry that maps each mode
name to its Mode object (netmap/modes/base.py says what a mode answers).

Adding a mode: write netmap/modes/NAME.py with a Mode subclass and `MODES = (...)`, and add
the module to FAMILIES below. Nothing outside this package names a mode.
"""

from __future__ import annotations

import dataclasses

from netmap.model.fleet import Binding, Network, Uplink, Vxlan
from netmap.modes import bridge, macvtap, ovs, sriov, vxlan
from netmap.modes.base import Mode, NicContext

__all__ = ["REGISTRY", "Mode", "NicContext", "binding_problem", "bridge_clash",
           "fields_problem", "mode_of", "semantic_classes", "semantic_of", "sharing_problem",
           "uplink_conflict"]

FAMILIES = (bridge, macvtap, sriov, vxlan, ovs)  # the registry: one entry per module

_BINDING_DEFAULTS = {spec.name: spec.default for spec in dataclasses.fields(Binding)}

# mode name -> Mode, in the order FAMILIES and their MODES give (messages list them so)
REGISTRY: dict[str, Mode] = {mode.name: mode for family in FAMILIES for mode in family.MODES}


def mode_of(binding: Binding) -> Mode:
    """The mode a binding names (load accepts only names in the registry)."""
    return REGISTRY[binding.mode]


def semantic_of(binding: Binding) -> str:
    """The binding's forwarding class (DESIGN.md, "Modes and their forwarding semantics")."""
    return REGISTRY[binding.mode].semantic


def semantic_classes() -> tuple[str, ...]:
    """Every forwarding class a mode has, each once: what a guest NIC may pin."""
    return tuple(dict.fromkeys(mode.semantic for mode in REGISTRY.values()))


def _names(modes: list[str]) -> str:
    return modes[0] if len(modes) == 1 else f"{', '.join(modes[:-1])} and {modes[-1]}"


def binding_problem(mode: Mode, network: Network, uplink: Uplink, bridge: str | None,
                    vxlan: Vxlan | None) -> tuple[str, str, str] | None:
    """(key under the binding's table, what is wrong, fix) when the binding cannot stand."""
    problem = mode.network_problem(network) or mode.uplink_problem(uplink)
    if problem:
        return ("mode", *problem)
    if bridge is not None and not mode.takes_bridge:
        bridged = _names([m.name for m in REGISTRY.values() if m.takes_bridge])
        return ("bridge", f"only {bridged} modes use a bridge, not {mode.name}", "remove bridge")
    if vxlan is not None and not mode.takes_vxlan:
        takers = [m.name for m in REGISTRY.values() if m.takes_vxlan]
        return ("vxlan", f"only {_names(takers)} mode{'s' if len(takers) > 1 else ''} takes "
                f"vxlan options, not {mode.name}", "remove the vxlan table")
    return None


def fields_problem(binding: Binding) -> tuple[str, str, str] | None:
    """(key, what is wrong, fix) when the binding sets a field another mode owns, or its own
    mode refuses the value of one of its fields."""
    mode = REGISTRY[binding.mode]
    for owner in REGISTRY.values():
        for name in owner.owns_fields:
            if owner is not mode and getattr(binding, name) != _BINDING_DEFAULTS[name]:
                return (name, f"only {owner.name} mode takes {name}, not {mode.name}",
                        f'remove {name}, or use mode = "{owner.name}"')
    return mode.fields_problem(binding)


def sharing_problem(uplink: str, users: list[Binding]) -> tuple[str, str, str, str] | None:
    """(network, key, what is wrong, fix) when the bindings on `uplink` cannot stand
    together: each mode's own rule first, then the rules every mode shares."""
    if len(users) < 2:
        return None  # a binding alone on its uplink shares it with nothing
    for name in dict.fromkeys(b.mode for b in users):
        problem = REGISTRY[name].sharing_problem(uplink, users)
        if problem is not None:
            return problem
    conflict = uplink_conflict(uplink, users)
    if conflict is None:
        return None
    network, what, fix = conflict
    return network, "uplink", what, fix


def uplink_conflict(uplink: str, users: list[Binding]) -> tuple[str, str, str] | None:
    """(network whose uplink key is wrong, what is wrong, fix) when bindings sharing
    `uplink` cannot stand together: a bridge port and a macvlan lower device both need the
    uplink's single rx_handler (EBUSY), a bridge port stops receiving for its own address
    (an underlay's), and a passthru macvtap owns its uplink outright."""
    if len(users) < 2:
        return None  # every conflict below takes two bindings on one uplink
    by_use: dict[str, list[Binding]] = {}
    for binding in users:
        by_use.setdefault(REGISTRY[binding.mode].uplink_use, []).append(binding)
    whole, ported = by_use.get("whole"), by_use.get("port")
    if whole:
        other = next(b for b in users if b is not whole[0])
        return (other.network, f"uses {uplink}, which network {whole[0].network} hands to one "
                f"guest whole ({whole[0].mode})", "give the passthrough network an uplink of "
                "its own")
    if ported and "underlay" in by_use:
        return (by_use["underlay"][0].network, f"uses {uplink} as vxlan underlay, which "
                f"network {ported[0].network} enslaves to a bridge; a bridge port stops "
                "receiving for its own address, so the overlay would die",
                "use another uplink as underlay")
    if ported and "macvlan" in by_use:
        return (by_use["macvlan"][0].network, f"puts a macvtap on {uplink}, which network "
                f"{ported[0].network} enslaves to a bridge; the kernel allows only one of them",
                "use bridge mode for both, or separate uplinks")
    return None


def bridge_clash(bindings: list[Binding], networks: dict[str, Network],
                 ) -> tuple[str, str, str, str] | None:
    """(network, key, what is wrong, fix) when two of a host's bindings (in file order) put
    their guests in bridges of one name but of different kinds (a Linux bridge, an OVS
    bridge): the host holds one device of that name, so realize would refuse the second
    kind, or OVS would find its bridge's own port taken. Reported at a binding that names
    the bridge (`bridge = ...`), the later one where both do."""
    seen: dict[str, tuple[Binding, str]] = {}
    for binding in bindings:
        mode = REGISTRY[binding.mode]
        name = mode.guest_bridge(binding, networks[binding.network])
        if name is None:
            continue
        first = seen.setdefault(name, (binding, mode.bridge_kind))
        if first[1] == mode.bridge_kind:
            continue
        other, kind = first
        at = binding if binding.bridge is not None else other
        peer, peer_kind = (other, kind) if at is binding else (binding, mode.bridge_kind)
        return (at.network, "bridge", f"makes {name} a {REGISTRY[at.mode].bridge_kind} "
                f"bridge, but {name} is the {peer_kind} bridge {name} of network "
                f"{peer.network}; a host has one device of a name",
                f"name another bridge in [networks.{at.network}] bridge")
    return None
