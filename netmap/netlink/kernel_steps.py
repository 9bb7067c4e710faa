"""One kernel change per step kind, and its undo; the reasons shown when the kernel says no.

Creation of the many endpoints (taps, macvtaps) is pipelined by the transaction; what is
here runs once per shared object, per repair, per rollback, or per release.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Sequence

from netmap import plan as p
from netmap.netlink import rtmsg, rtnl


def run_inverse(kernel: rtnl.Rtnl, links: dict[str, rtmsg.Link], step: p.Step,
                info: dict) -> None:
    """Undo one step (from this run, or from state at release)."""
    def index(name: str) -> int | None:
        live = kernel.get(name)
        return live.index if live else None

    if isinstance(step, (p.EnsureBridge, p.EnsureVlanLink, p.EnsureVxlan, p.CreateTap,
                         p.CreateMacvtap)):
        delete_quietly(kernel, step.name)
    elif isinstance(step, p.EnslavePort):
        port = index(step.port)
        if port is not None:
            kernel.call(rtmsg.set_link(port, master=0))
    elif isinstance(step, p.BridgeVlan):
        port = index(step.port)
        if port is not None:
            kernel.call(rtmsg.bridge_vlan(port, step.vid, access=False, add=False))
    elif isinstance(step, p.RequireLink):
        port = index(step.name)
        if port is not None:
            kernel.call(rtmsg.set_link(port, up=False))
    elif isinstance(step, p.ClaimVf) and "index" in info:
        if step.macvtap:
            delete_quietly(kernel, step.macvtap)
        from netmap.netlink import open_iproute

        pf = index(step.pf)
        if pf is not None:  # the entry as found at the claim (older state: cleared)
            found = info.get("found") or {}
            entry = {"vf": int(info["index"]), "mac": found.get("mac", "00:00:00:00:00:00"),
                     "vlan": found.get("vlan", 0)}
            if "spoofchk" in found:
                entry["spoofchk"] = found["spoofchk"]
            with open_iproute(kernel.netns) as ipr:
                ipr.link("set", index=pf, vf=entry)


def delete_quietly(kernel: rtnl.Rtnl, name: str) -> None:
    """Delete `name`; already gone is fine (undo must be repeatable)."""
    try:
        kernel.call(rtmsg.del_link(name=name))
    except OSError as err:
        if err.errno != errno.ENODEV:
            raise


def add_vxlan_remotes(kernel: rtnl.Rtnl, index: int, remotes: Sequence[str],
                      ) -> list[tuple[str, OSError]]:
    """Head-end replication for vxlan device `index` without a multicast group: broadcast
    and unknown frames go to every remote (FDB entries of the all-zero MAC), one pipelined
    batch. Returns the (remote, error) pairs the kernel refused."""
    errors = kernel.batch([rtmsg.fdb_append(index, remote) for remote in remotes])
    return [(remote, error) for remote, error in zip(remotes, errors, strict=True)
            if error is not None]


def make_access_port(kernel: rtnl.Rtnl, port: int, vid: int, *, drop_default: bool,
                     send: Callable[[tuple[int, int, bytes]], None] | None = None) -> None:
    """Bridge port `port` carries `vid` as PVID, untagged; an access port carries its one
    VLAN only, so the bridge's default VLAN, which every new port gets, is dropped (when
    `drop_default` says the port has it). `send` sends the first request, the one that
    makes the change (realize's transaction learns whether the kernel refused it)."""
    (send or kernel.call)(rtmsg.bridge_vlan(port, vid, access=True))
    if drop_default and vid != p.DEFAULT_PVID:
        kernel.call(rtmsg.bridge_vlan(port, p.DEFAULT_PVID, access=False, add=False))


def explain(step: p.Step, err: OSError) -> str:
    if isinstance(step, p.EnsureVlanLink) and err.errno == errno.EOPNOTSUPP:
        return ("this kernel has no 802.1Q VLAN support (module 8021q), so the sub-interface "
                f"{step.name} cannot exist")
    if isinstance(step, (p.EnsureBridge, p.BridgeVlan)) and err.errno == errno.EOPNOTSUPP:
        return ("this kernel has no bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING, which "
                "needs 802.1Q), so a bridge cannot carry the network's VLAN")
    if isinstance(step, p.ClaimVf) and err.errno == errno.EOPNOTSUPP:
        return f"{step.pf}'s driver does not manage VFs through netlink"
    if err.errno == errno.EEXIST:
        return f"{getattr(step, 'name', '')} appeared meanwhile (another tool made it)"
    if err.errno == errno.EBUSY and isinstance(step, (p.EnslavePort, p.CreateMacvtap)):
        return ("the uplink is busy: a bridge port and a macvtap lower device exclude each "
                "other (one rx_handler per interface)")
    return err.strerror or str(err)


def fix_for(step: p.Step, err: OSError) -> str | None:
    if isinstance(step, p.EnsureVlanLink) and err.errno == errno.EOPNOTSUPP:
        return ("load the 8021q module ('modprobe 8021q'); a kernel built without "
                "CONFIG_VLAN_8021Q cannot carry a VLAN network in any mode (bridge VLAN "
                "filtering needs it too)")
    if isinstance(step, (p.EnsureBridge, p.BridgeVlan)) and err.errno == errno.EOPNOTSUPP:
        return "use a kernel with 802.1Q and bridge VLAN filtering, or an untagged network"
    if isinstance(step, p.ClaimVf) and err.errno == errno.EOPNOTSUPP:
        return (f"check that {step.pf} is an SR-IOV PF whose driver sets VF MAC/VLAN "
                "through netlink (ip link set PF vf N mac ...)")
    return None
