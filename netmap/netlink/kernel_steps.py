"""The kernel side of the steps' undo: netmap.steps.base.Kernel over rtnetlink, by name.

A step's undo (netmap/steps) says what to undo; this says it to the kernel. Every change
tolerates the device being gone already (undo must be repeatable). Realize's transaction
(ensure.py) extends it with the changes a step's apply makes; release uses it as it is.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from netmap.errors import ApplyError
from netmap.netlink import rtmsg, rtnl
from netmap.steps.base import LinkOptions

if TYPE_CHECKING:
    from pyroute2 import IPRoute


class RtnlKernel:
    """netmap.steps.base.Kernel: plain changes by name, over one rtnetlink socket."""

    def __init__(self, kernel: rtnl.Rtnl) -> None:
        self.kernel = kernel
        self.reidentified: dict[str, int] = {}  # link resource -> ifindex of a device remade
        self._pyroute: IPRoute | None = None

    def index_of(self, name: str) -> int | None:
        live = self.kernel.get(name)
        return live.index if live else None

    def _index(self, name: str) -> int:
        index = self.index_of(name)
        if index is None:
            raise ApplyError(f"{name} vanished while realizing")
        return index

    def delete_link(self, name: str) -> None:
        delete_quietly(self.kernel, name)

    def set_up(self, name: str, up: bool) -> None:
        index = self.index_of(name)
        if index is not None:
            self.kernel.call(rtmsg.set_link(index, up=up))

    def set_master(self, port: str, bridge: str | None) -> None:
        index = self.index_of(port)
        if index is not None:
            self.kernel.call(rtmsg.set_link(index, master=self._index(bridge) if bridge else 0))

    def drop_bridge_vlan(self, port: str, vid: int) -> None:
        index = self.index_of(port)
        # a crashed realize recorded VLANs it never added, maybe on a port that never joined
        # its bridge, where the kernel refuses the delete (EOPNOTSUPP): absent is undone
        if index is not None and vid in self.port_vlans(port):
            self.kernel.call(rtmsg.bridge_vlan(index, vid, access=False, add=False))

    def add_port_vlan(self, port: str, vid: int, *, access: bool) -> None:
        self.kernel.call(rtmsg.bridge_vlan(self._index(port), vid, access=access))

    def port_vlans(self, port: str) -> dict[int, int]:
        return self.kernel.bridge_vlans().get(port, {})

    def set_vf(self, pf: str, entry: dict[str, object]) -> None:
        from pyroute2.netlink.exceptions import NetlinkError

        index = self.index_of(pf)
        if index is None:
            return
        try:  # pyroute2 pops keys from the dict it is given
            self.pyroute().link("set", index=index, vf=dict(entry))
        except NetlinkError as err:  # an OSError, as every other refusal: a step explains it
            raise OSError(err.code, os.strerror(err.code)) from err

    def set_attrs(self, name: str, attrs: Mapping[str, object]) -> None:
        live = self.kernel.get(name)
        if live is None:
            raise ApplyError(f"{name} vanished while realizing")
        # a MAC it already has is left alone: nothing changes, yet a VF netdev would ask its
        # PF, which refuses it while it enforces a MAC on the VF's entry (igbvf: EADDRNOTAVAIL)
        attrs = {key: value for key, value in attrs.items()
                 if not (key == "mac" and str(value).lower() == (live.address or "").lower())}
        if attrs:
            self.kernel.call(link_attrs(live.index, attrs, self._index))

    def make_tap(self, name: str, *, multi_queue: bool, up: bool, mtu: int | None,
                 mac: str | None, master: str | None) -> None:
        error = self.kernel.create_taps([name], [name] if multi_queue else [])[0]
        if error is not None:
            raise error
        for request in rtmsg.up_without_ipv6(name=name, up=up, mtu=mtu, mac=mac,
                                             master=self._index(master) if master else None):
            self.kernel.call(request)

    def remade(self, name: str) -> None:
        self.reidentified[f"link:{name}"] = self._index(name)

    def pyroute(self) -> IPRoute:  # opened once, only for SR-IOV VF entries
        if self._pyroute is None:
            from netmap.netlink import open_iproute

            self._pyroute = open_iproute(self.kernel.netns)
        return self._pyroute

    def close(self) -> None:
        if self._pyroute is not None:
            self._pyroute.close()
            self._pyroute = None


def link_attrs(index: int, attrs: Mapping[str, Any],
               index_of: Callable[[str], int]) -> tuple[int, int, bytes]:
    """The request that sets a link's repairable attributes (a verdict's repair, or the
    values it found): up, mtu, mac, master by name, a bridge's vlan_filtering and ageing,
    a macvtap's mode."""
    attrs = dict(attrs)
    kind = data = None
    if "vlan_filtering" in attrs:
        kind, data = "bridge", rtmsg.vlan_filtering_data(bool(attrs.pop("vlan_filtering")))
    if "ageing" in attrs:
        kind = "bridge"
        data = (data or b"") + rtmsg._u32(rtmsg.IFLA_BR_AGEING_TIME, int(attrs.pop("ageing")))
    if "mode" in attrs:
        kind, data = "macvtap", rtmsg.macvtap_data(str(attrs.pop("mode")))
    if attrs.get("master"):
        master: int | None = index_of(str(attrs.pop("master")))
    else:  # a master named as None (found without one) means none: 0
        master = 0 if attrs.pop("master", False) is not False else None
    return rtmsg.set_link(index, kind=kind, data=data or b"", master=master,
                          **attrs)


def link_data(kind: str, options: LinkOptions, index_of: Callable[[str], int]) -> bytes:
    """IFLA_INFO_DATA of a new link of `kind` from the step's options."""
    if kind == "bridge":
        return rtmsg.bridge_data(options["ageing"], options["vlan_filtering"])
    if kind == "vlan":
        return rtmsg.vlan_data(options["vid"])
    if kind == "macvtap":
        return rtmsg.macvtap_data(options["mode"])
    if kind == "vxlan":
        return rtmsg.vxlan_data(options["vni"], index_of(options["underlay"]), options["port"],
                                options.get("group"), options.get("local"),
                                options.get("remotes", ()))
    raise ValueError(f"no link data for kind {kind}")


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

