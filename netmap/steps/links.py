"""The uplink the host must already have, and what every step that creates a link shares.
Pure: see base.py for the host views they are given; the link kinds are in shared_links.py
(bridge, 802.1Q, vxlan: several guests use them) and taps.py (each NIC's own tap or macvtap).

A link step's verdict: ``create`` (absent), ``unchanged`` (present and as planned),
``repair`` (netmap's own object that drifted: MTU, master, mode, MAC, link state),
``recreate`` (netmap's own tap in the other queue mode, which no guest holds: deleted and
made again), ``adopt`` (a shared object someone else made that is exactly what the plan
needs: used, never deleted), or a refusal that says why and how to fix it.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from netmap.steps.base import (
    Action,
    Changes,
    Kernel,
    LiveHost,
    LiveLink,
    ReleasePhase,
    StateRecord,
    Step,
    master_name,
    refuse,
)


@dataclass(frozen=True)
class RequireLink(Step):
    """An interface the host must already have (an uplink): up, or brought up."""

    kind: ClassVar[str] = "require-link"
    release_phase: ClassVar[ReleasePhase] = "undo-last"
    name: str
    mtu: int = 0  # the MTU the endpoints need through it (vxlan: plus its overhead)

    @property
    def resource(self) -> str:
        return f"up:{self.name}"

    @property
    def target(self) -> str:
        return self.name

    def describe(self) -> str:
        need = f" with MTU >= {self.mtu}" if self.mtu else ""
        return f"uplink {self.name} must exist{need}; bring it up if it is down"

    def describe_undo(self) -> str | None:
        return f"set {self.name} down again"

    def decide(self, live: LiveHost, nic: int) -> Action:
        have = live.links.get(self.name)
        if have is None:
            raise refuse(f"uplink {self.name} does not exist on {live.host}",
                         "check the NIC and its driver, or fix [uplinks] in the host "
                         "mapping")
        if have.mtu < self.mtu:  # else the kernel only says EINVAL, or drops big frames
            raise refuse(f"uplink {self.name} on {live.host} has MTU {have.mtu}; the guest's "
                         f"endpoints need {self.mtu} through it",
                         f"raise it ('ip link set {self.name} mtu {self.mtu}') or correct "
                         f"[uplinks.{self.name}] mtu in the host mapping, which says more "
                         "than the NIC has")
        return Action(nic, self, "unchanged" if have.up else "repair", {"up": True},
                      {"up": False})

    def makes(self, verdict: str) -> bool:
        return verdict in ("create", "repair")  # brought up by netmap: down again at release

    def undo(self, kernel: Kernel, info: dict) -> None:
        kernel.set_up(self.name, False)

    def still_needed(self, links: Mapping[str, LiveLink], going: set[str],
                     leaving: set[str]) -> str | None:
        uplink = links.get(self.name)
        if uplink is None:
            return None
        users = sorted(link.name for link in links.values() if link.name not in going and (
            link.lower == uplink.index or link.vxlan_link == uplink.index))
        master = master_name(links, uplink)
        if master and master not in going and uplink.name not in leaving:
            users.append(f"bridge {master}")
        return f"still carries {', '.join(users)}" if users else None


@dataclass(frozen=True)
class LinkStep(Step):
    """A step that creates the link `name`; deleting that link undoes it."""

    link_kind: ClassVar[str] = ""  # the kernel's kind of the link ("bridge", "tun", ...)
    release_phase: ClassVar[ReleasePhase] = "delete"
    planned_as: ClassVar[str | None] = "link"
    name: str

    @property
    def resource(self) -> str:
        return f"link:{self.name}"

    @property
    def target(self) -> str:
        return self.name

    def describe_undo(self) -> str | None:
        return f"delete {self.link_kind} {self.name}"

    def undo(self, kernel: Kernel, info: dict) -> None:
        kernel.delete_link(self.name)

    def record_made(self, state: StateRecord, links: Mapping[str, LiveLink],
                    verdict: str) -> bool:
        """Which device is netmap's (its ifindex), also one a crashed run made and this one
        finished; an adopted link is someone else's."""
        live = links.get(self.name)
        if verdict == "adopt" or live is None or live.kind != self.link_kind:
            return False
        return state.record_identity(self.resource, live.index)

    def replaced(self, live: LiveLink | None, made_ifindex: int | None) -> str | None:
        if live is None:
            return None
        if live.kind != self.link_kind:
            return f"now a {live.kind}, not netmap's"
        if made_ifindex is not None and live.index != made_ifindex:
            return (f"now another {live.kind} (ifindex {live.index}; netmap's was ifindex "
                    f"{made_ifindex}): not netmap's, left alone")
        return None

    def decide(self, live: LiveHost, nic: int) -> Action:
        name, host = self.name, live.host
        have = live.links.get(name)
        if have is None:
            return Action(nic, self, "create")
        want_kind = self.link_kind
        made = live.state.made_ifindex(self.resource)
        if made is not None and have.index != made:
            users = ", ".join(live.state.users(self.resource)) or "no guest"
            raise refuse(f"{name} on {host} is not the {want_kind} netmap made (ifindex "
                         f"{made}, for {users}): that one is gone and a {have.kind or 'plain'} "
                         f"device someone else made (ifindex {have.index}) now has its name",
                         f"if that device is stale, delete it ('ip link del {name}') and "
                         f"realize again; if it must stay, release {users} on {host} first "
                         f"(netmap then forgets its own {name} and leaves this one alone) and "
                         "rename the endpoint or the bridge in the mapping")
        mine = live.ours(name)
        if have.kind != want_kind:
            if mine:  # netmap made it for another mode: the binding changed since
                users = ", ".join(live.state.users(self.resource))
                raise refuse(f"{name} on {host} is the {have.kind} netmap made for {users}, "
                             f"but the plan now needs a {want_kind} (the binding's mode "
                             "changed)",
                             f"release {users} on {host} first ('netmap release'), then "
                             "realize")
            raise refuse(f"{name} exists on {host} as a {have.kind or 'plain'} device, "
                         f"not the {want_kind} netmap would create",
                         f"remove or rename {name}, or choose another name in the mapping")
        if self.batched and not mine:
            raise refuse(f"{name} exists on {host} but netmap did not make it (a foreign "
                         "device holds the endpoint's name)",
                         f"remove {name} if it is stale ('ip link del {name}')")
        return self._compare(live, nic, have, mine)

    def wanted(self, live: LiveHost, have: LiveLink, mine: bool,
               others: list[str]) -> tuple[dict[str, object], list[str]]:
        """What must hold of the live link (repairable in place), and what differs that
        cannot be changed in place."""
        return {"up": True}, []

    def apply(self, ops: Changes, action: Action) -> None:
        repair = dict(action.repair or {})
        if action.verdict != "repair" or not repair.pop("up", False):
            super().apply(ops, action)
            return
        # netmap's link left down (a run killed between making it and bringing it up, seen
        # in the VM with an 802.1Q link): up as create brings it up, IPv6 address
        # generation off first, or it comes up with a link-local address and sends DAD
        undo = (f"restore {self.name}",
                lambda: ops.set_attrs(self.name, action.undo_repair or {}))
        if repair:
            ops.repair(self.name, repair, undo=undo)
        else:
            ops.will_undo(undo)
        ops.bring_up(self.name)

    def _compare(self, live: LiveHost, nic: int, have: LiveLink, mine: bool) -> Action:
        """Same kind: what differs, repairable on netmap's own devices, else refused."""
        others = [g for g in live.state.users(self.resource) if g != live.guest]
        want, identity = self.wanted(live, have, mine, others)
        name = self.name
        if identity:
            raise refuse(f"{name} exists on {live.host}"
                         f"{'' if mine else ', not made by netmap,'} but differs in what "
                         f"cannot be changed in place: {'; '.join(identity)}",
                         f"release the guest that uses {name} (or delete it) and realize "
                         "again" if mine else
                         f"delete {name} if nothing uses it ('ip link del {name}'), or make "
                         "the binding in the host mapping say what it is")
        current = {"up": have.up, "mtu": have.mtu, "mac": have.address,
                   "master": master_name(live.links, have), "mode": have.macvlan_mode,
                   "vlan_filtering": have.vlan_filtering, "ageing": have.ageing}
        diff = {k: v for k, v in want.items() if current.get(k) != v}
        if not diff:
            return Action(nic, self, "unchanged" if mine else "adopt")
        if not mine:  # someone else's: used as it is, never changed (release could not undo)
            changes = ", ".join(f"{k} {_shown(k, current.get(k))} (want {_shown(k, v)})"
                                for k, v in diff.items())
            raise refuse(f"{name} on {live.host} is not netmap's and differs: {changes}",
                         f"make {name} match, or let netmap create its own bridge (set "
                         "bridge = \"...\" in the binding)")
        return Action(nic, self, "repair", diff, {k: current.get(k) for k in diff})


def _shown(key: str, value: object) -> str:
    if key == "ageing" and isinstance(value, int):  # clock_t, 1/100 s
        return f"{value / 100:g}s"
    return str(value)


def unsupported(err: OSError) -> bool:
    return err.errno == errno.EOPNOTSUPP


NO_VLAN_FILTERING = ("this kernel has no bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING, "
                     "which needs 802.1Q), so a bridge cannot carry the network's VLAN")
NO_VLAN_FILTERING_FIX = ("use a kernel with 802.1Q and bridge VLAN filtering, or an untagged "
                         "network")


UPLINK_BUSY = ("the uplink is busy: a bridge port and a macvtap lower device exclude each "
               "other (one rx_handler per interface)")
