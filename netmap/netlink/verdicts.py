"""Verdicts: what realize must do for each step, decided from live links and state before
anything is touched.

``create`` (absent), ``unchanged`` (present and as planned), ``repair`` (netmap's own
object that drifted: MTU, master, mode, MAC, link state), ``recreate`` (netmap's own tap
in the other queue mode, which no guest holds: deleted and made again), ``adopt`` (a shared
object someone else made that is exactly what the plan needs: used, never deleted), or a
refusal that says why and how to fix it. Pure reading: the only kernel access is through the
transaction's dumps, and SR-IOV pools come from sysfs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from netmap import plan as p
from netmap.errors import ApplyError
from netmap.netlink import rtmsg, vxlan_match
from netmap.netlink.sysfs import sriov_info

if TYPE_CHECKING:
    from netmap.netlink.transaction_view import TransactionView

BATCHED = (p.CreateTap, p.CreateMacvtap)
KIND_OF = {p.EnsureBridge: "bridge", p.EnsureVlanLink: "vlan", p.EnsureVxlan: "vxlan",
           p.CreateTap: "tun", p.CreateMacvtap: "macvtap"}


@dataclass
class Action:
    nic: int
    step: p.Step
    verdict: str  # create | unchanged | repair | recreate | adopt
    repair: dict | None = None  # set_link keywords that repair it
    undo_repair: dict | None = None


def refuse(problem: str, fix: str) -> ApplyError:
    return ApplyError(problem, fix=fix)


def decide_step(txn: TransactionView, nic: int, step: p.Step) -> Action:
    host = txn.plan.host
    if isinstance(step, p.RequireLink):
        live = txn.links.get(step.name)
        if live is None:
            raise refuse(f"uplink {step.name} does not exist on {host}",
                         "check the NIC and its driver, or fix [uplinks] in the host "
                         "mapping")
        if live.mtu < step.mtu:  # else the kernel only says EINVAL, or drops big frames
            raise refuse(f"uplink {step.name} on {host} has MTU {live.mtu}; the guest's "
                         f"endpoints need {step.mtu} through it",
                         f"raise it ('ip link set {step.name} mtu {step.mtu}') or correct "
                         f"[uplinks.{step.name}] mtu in the host mapping, which says more "
                         "than the NIC has")
        return Action(nic, step, "unchanged" if live.up else "repair", {"up": True},
                      {"up": False})
    if isinstance(step, p.EnslavePort):
        return _decide_port(txn, nic, step)
    if isinstance(step, p.BridgeVlan):
        vids = txn.bridge_vlans().get(step.port, {})
        flags = rtmsg.BRIDGE_VLAN_INFO_PVID | rtmsg.BRIDGE_VLAN_INFO_UNTAGGED
        ok = step.vid in vids and (not step.access or (vids[step.vid] & flags == flags
                                                       and set(vids) == {step.vid}))
        if step.port in txn.recreated_names():  # the port made again has no VLAN yet
            ok = False
        return Action(nic, step, "unchanged" if ok else "create")
    if isinstance(step, p.ClaimVf):
        return _decide_vf(txn, nic, step)
    name = step.name  # type: ignore[attr-defined]
    live = txn.links.get(name)
    if live is None:
        return Action(nic, step, "create")
    want_kind = KIND_OF[type(step)]
    made = txn.state.made_ifindex(step.resource)
    if made is not None and live.index != made:
        users = ", ".join(txn.state.users(step.resource)) or "no guest"
        raise refuse(f"{name} on {host} is not the {want_kind} netmap made (ifindex {made}, "
                     f"for {users}): that one is gone and a {live.kind or 'plain'} device "
                     f"someone else made (ifindex {live.index}) now has its name",
                     f"if that device is stale, delete it ('ip link del {name}') and realize "
                     f"again; if it must stay, release {users} on {host} first (netmap then "
                     f"forgets its own {name} and leaves this one alone) and rename the "
                     "endpoint or the bridge in the mapping")
    mine = txn.ours(name)
    if live.kind != want_kind:
        if mine:  # netmap made it for another mode: the binding changed since
            users = ", ".join(txn.state.users(step.resource))
            raise refuse(f"{name} on {host} is the {live.kind} netmap made for {users}, but "
                         f"the plan now needs a {want_kind} (the binding's mode changed)",
                         f"release {users} on {host} first ('netmap release'), then realize")
        raise refuse(f"{name} exists on {host} as a {live.kind or 'plain'} device, "
                     f"not the {want_kind} netmap would create",
                     f"remove or rename {name}, or choose another name in the mapping")
    if isinstance(step, BATCHED) and not mine:
        raise refuse(f"{name} exists on {host} but netmap did not make it (a foreign "
                     "device holds the endpoint's name)",
                     f"remove {name} if it is stale ('ip link del {name}')")
    return _compare(txn, nic, step, live, mine)

def _compare(txn: TransactionView, nic: int, step: p.Step, live: rtmsg.Link, mine: bool) -> Action:
    """Same kind: what differs, repairable on netmap's own devices, else refused."""
    want: dict[str, object] = {"up": True}
    identity: list[str] = []
    others = [g for g in txn.state.users(step.resource) if g != txn.plan.guest]
    if isinstance(step, p.EnsureBridge):
        # A bridge forwards a frame if its egress port's MTU allows (the taps', the
        # uplink's), never by its own, which only its own addresses use (netmap's have
        # none): a bridge other guests share keeps its MTU, so that realizing one guest
        # with a larger MTU (--force past MTU_TOO_SMALL) leaves nothing that its release
        # would have to put back.
        if not others:
            want["mtu"] = step.mtu
        if live.ageing is not None:  # how long a moved guest's MAC keeps pointing away
            want["ageing"] = step.ageing
        if step.vlan_filtering and not live.vlan_filtering:
            want["vlan_filtering"] = True
    elif isinstance(step, p.EnsureVlanLink):
        want["mtu"] = step.mtu
        if live.vlan_id != step.vid or live.lower != txn.links[step.lower].index:
            identity.append(f"VLAN {live.vlan_id} on ifindex {live.lower}")
    elif isinstance(step, p.EnsureVxlan):
        if others and mine and live.mtu != step.mtu:
            # the vxlan device is the bridge's egress port to the overlay: its MTU bounds
            # every guest's frames, and changing it would change the other guests' link
            raise refuse(f"{step.name} on {txn.plan.host} carries MTU {live.mtu} for "
                         f"{', '.join(others)}; {txn.plan.guest} needs {step.mtu} through "
                         "it, and netmap does not change a device other guests use",
                         f"give every guest of VNI {step.vni} the same MTU (mtu in the guest "
                         f"files), or release {', '.join(others)} on {txn.plan.host} first")
        want["mtu"] = step.mtu
        identity += _vxlan_differences(txn, step, live)
    elif isinstance(step, p.CreateTap):
        want.update(mtu=step.mtu, mac=step.mac)
        if step.bridge:  # an OVS port's tap ("") is added by OVSDB, not by a kernel master
            want["master"] = step.bridge
        if live.multi_queue is not None and live.multi_queue != step.multi_queue:
            return _requeue(txn, nic, step, live)
    elif isinstance(step, p.CreateMacvtap):
        want.update(mtu=step.mtu, mac=step.mac, mode=step.mode)
        lower = txn.links.get(step.lower)
        if lower is None or live.lower != lower.index:
            identity.append(f"it sits on ifindex {live.lower}, not on {step.lower}")
    name = step.name  # type: ignore[attr-defined]
    if identity:
        raise refuse(f"{name} exists on {txn.plan.host}{'' if mine else ', not made by netmap,'}"
                     f" but differs in what cannot be changed in place: {'; '.join(identity)}",
                     f"release the guest that uses {name} (or delete it) and realize again"
                     if mine else f"delete {name} if nothing uses it ('ip link del {name}'), "
                     "or make the binding in the host mapping say what it is")
    master = next((n for n, link in txn.links.items() if link.index == live.master), None)
    have = {"up": live.up, "mtu": live.mtu, "mac": live.address,
            "master": master, "mode": live.macvlan_mode,
            "vlan_filtering": live.vlan_filtering, "ageing": live.ageing}
    diff = {k: v for k, v in want.items() if have.get(k) != v}
    if not diff:
        return Action(nic, step, "unchanged" if mine else "adopt")
    if not mine:  # someone else's: used as it is, never changed (release could not undo)
        changes = ", ".join(f"{k} {_shown(k, have.get(k))} (want {_shown(k, v)})"
                            for k, v in diff.items())
        raise refuse(f"{name} on {txn.plan.host} is not netmap's and differs: {changes}",
                     f"make {name} match, or let netmap create its own bridge (set "
                     "bridge = \"...\" in the binding)")
    return Action(nic, step, "repair", diff, {k: have.get(k) for k in diff})

def _queue_mode(multi_queue: bool) -> str:
    return "multi-queue" if multi_queue else "single-queue"


def _requeue(txn: TransactionView, nic: int, step: p.CreateTap, live: rtmsg.Link) -> Action:
    """netmap's tap in the other queue mode: the kernel fixes IFF_MULTI_QUEUE when a tap is
    made, and QEMU and libvirt cannot open a tap whose mode differs from the queues they
    want (EINVAL). Made again, but only while no guest holds it: deleting it would cut a
    running guest off its network. A tap with a queue open has carrier, a multi-queue one
    also counts its queues."""
    queues = next((n.queues for n in txn.plan.nics if n.nic == nic), 1)
    users = ", ".join(txn.state.users(step.resource)) or txn.plan.guest
    if live.carrier or live.tun_queues:
        held = f"{live.tun_queues} queue(s) open" if live.tun_queues else "carrier on"
        raise refuse(f"tap {step.name} on {txn.plan.host} is {_queue_mode(bool(live.multi_queue))}"
                     f", but NIC {nic} of {txn.plan.guest} now asks for {queues} queue(s), "
                     f"which needs a {_queue_mode(step.multi_queue)} tap; a tap's queue mode "
                     f"is fixed when it is made, and a guest holds this one ({held})",
                     f"shut {users} down (or detach the NIC) and realize again, which makes "
                     f"the tap anew; or keep the NIC's queues as the running guest has them "
                     "until then")
    master = next((n for n, link in txn.links.items() if link.index == live.master), None)
    return Action(nic, step, "recreate", undo_repair={
        "multi_queue": bool(live.multi_queue), "mtu": live.mtu, "mac": live.address,
        "master": master, "up": live.up,
        "vlans": dict(txn.bridge_vlans().get(step.name, {})) if master else {}})


def _vxlan_differences(txn: TransactionView, step: p.EnsureVxlan, live: rtmsg.Link) -> list[str]:
    underlay = txn.links.get(step.underlay)
    return vxlan_match.differences(
        txn.kernel, live, vni=step.vni, underlay=underlay.index if underlay else None,
        port=step.port, group=step.group, local=step.local, remotes=step.remotes,
        name_of=lambda index: next((n for n, link in txn.links.items() if link.index == index),
                                   f"ifindex {index}"))


def _shown(key: str, value: object) -> str:
    if key == "ageing" and isinstance(value, int):  # clock_t, 1/100 s
        return f"{value / 100:g}s"
    return str(value)


def _decide_port(txn: TransactionView, nic: int, step: p.EnslavePort) -> Action:
    live = txn.links.get(step.port)
    if live is None:
        if step.port in txn.planned_names():
            return Action(nic, step, "create")
        raise refuse(f"{step.port} does not exist on {txn.plan.host}",
                     "check the uplink's name in the host mapping")
    bridge = txn.links.get(step.bridge)
    if live.master is None:
        addresses = txn.addresses().get(live.index)
        if addresses:
            # A bridge port hands every frame it receives to the bridge: the port's own
            # addresses stop answering, and with them host traffic or a vxlan underlay.
            raise refuse(f"{step.port} on {txn.plan.host} has addresses "
                         f"({', '.join(addresses)}); as a port of {step.bridge} it would "
                         "stop receiving for them (host traffic or a vxlan underlay on it "
                         "would break)",
                         f"move the addresses to bridge {step.bridge} yourself and enslave "
                         f"{step.port} (netmap then uses that bridge), or bind the network "
                         "to an uplink without addresses")
        return Action(nic, step, "create")
    if bridge is not None and live.master == bridge.index:
        return Action(nic, step, "unchanged")
    other = next((n for n, link in txn.links.items() if link.index == live.master), "?")
    raise refuse(f"{step.port} is already a port of {other} on {txn.plan.host}; an "
                 f"interface has one master, so it cannot join {step.bridge}",
                 f"take {step.port} out of {other}, or name bridge = \"{other}\" in "
                 "the binding")


def _decide_vf(txn: TransactionView, nic: int, step: p.ClaimVf) -> Action:
    claimed = txn.state.resource(step.resource)
    info = sriov_info(step.pf, txn.sysfs_root)
    if info is None:
        raise refuse(f"{step.pf} on {txn.plan.host} has no SR-IOV (no "
                     "sriov_totalvfs in sysfs)", "bind the network to an SR-IOV PF")
    if claimed and "index" in claimed["info"]:
        vf = info.vf(int(claimed["info"]["index"]))
        if vf is not None:
            txn.vfs[step.resource] = vf
            return Action(nic, step, "unchanged")
    taken = txn.state.claimed_vfs(step.pf)
    taken.update({vf.index: key for key, vf in txn.vfs.items()
                  if key.startswith(f"vf:{step.pf}:")})  # claimed earlier in this plan
    free = [vf for vf in info.vfs if vf.index not in taken]
    if step.macvtap:
        free = [vf for vf in free if vf.netdev]
    if not free:
        raise refuse(f"no free VF on {step.pf} ({txn.plan.host}): {info.num_vfs} VF(s) "
                     f"enabled of {info.total_vfs}, {len(taken)} claimed by netmap",
                     f"release a guest that uses {step.pf}, or raise "
                     f"/sys/class/net/{step.pf}/device/sriov_numvfs")
    txn.vfs[step.resource] = free[0]
    return Action(nic, step, "create")
