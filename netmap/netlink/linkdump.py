"""Discovery's view of the links: rtnl's dump and rtmsg's parser, reduced to Interfaces.

One RTM_GETLINK dump without statistics (IFLA_EXT_MASK = RTEXT_FILTER_SKIP_STATS, the bulk
of a link message), parsed in place by rtmsg.link_fields (the parser realize uses too);
here only what discovery adds: the kinds netmap tells apart (physical, loopback, tap/tun),
which IFLA_LINK is a lower device, and ifindexes turned into names once all are known.
"""

from __future__ import annotations

from netmap.errors import InputError
from netmap.model.inventory import LOOPBACK, PHYSICAL, Interface
from netmap.netlink.rtmsg import (
    ARPHRD_ETHER,
    ARPHRD_LOOPBACK,
    IFF_LOOPBACK,
    IFF_TAP,
    RT_SCOPE_SITE,
    RT_SCOPE_UNIVERSE,
    LinkFields,
    link_fields,
)
from netmap.netlink.rtnl import Rtnl, netns_path

__all__ = ["dump_addresses", "dump_links", "netns_path", "open_route_socket"]

OPER_STATES = ("unknown", "notpresent", "down", "lowerlayerdown", "testing", "dormant", "up")
# kinds whose IFLA_LINK is a lower device (a NIC reports its own index, a veth its peer)
LOWER_KINDS = ("macvlan", "macvtap", "vxlan", "ipvlan", "vlan")


def open_route_socket(netns: str | None = None) -> Rtnl:
    """An rtnetlink socket in `netns` (close() it). Never creates the namespace as a side
    effect of reading it."""
    if netns is not None and not netns_path(netns).exists():
        raise InputError(f"network namespace {netns!r} does not exist",
                         fix="check the name with 'ip netns list'")
    return Rtnl(netns)


def dump_links(kernel: Rtnl) -> list[Interface]:
    """Every link in the socket's namespace, in ifindex order."""
    return _resolve(kernel.dump_links(link_fields))


def dump_addresses(kernel: Rtnl) -> dict[int, tuple[str, ...]]:
    """ifindex -> its global- and site-scope addresses as "address/prefix" (what a vxlan
    underlay needs to send from); host- and link-scope addresses are left out."""
    found = kernel.addresses(scopes=(RT_SCOPE_UNIVERSE, RT_SCOPE_SITE))
    return {index: tuple(addresses) for index, addresses in found.items()}


def _resolve(raw: list[LinkFields]) -> list[Interface]:
    """Interfaces from link_fields() results, master/lower ifindexes turned into names."""
    names = {fields["index"]: fields["name"] for fields in raw}
    links = [_interface(fields, names) for fields in raw]
    links.sort(key=lambda i: i.index)
    return links


def _interface(fields: LinkFields, names: dict[int, str]) -> Interface:
    index = fields["index"]
    kind = fields.get("kind")
    lower = fields.get("vxlan_link") if kind == "vxlan" else fields.get("lower")
    if kind == "tun" and fields.get("tun_type") is not None:
        kind = "tap" if fields.get("tun_type") == IFF_TAP else "tun"
    elif kind is None:
        if_type, flags = fields["if_type"], fields["flags"]
        kind = (LOOPBACK if flags & IFF_LOOPBACK or if_type == ARPHRD_LOOPBACK
                else PHYSICAL if if_type == ARPHRD_ETHER else f"arphrd-{if_type}")
    if kind not in LOWER_KINDS or lower == index:
        lower = None
    state = fields.get("operstate")
    oper_state = OPER_STATES[state] if isinstance(state, int) and state < len(OPER_STATES) \
        else "unknown"
    master = fields.get("master")
    return Interface(
        index=index, name=fields["name"], kind=kind, mtu=fields["mtu"], mac=fields["address"],
        admin_up=fields["up"], carrier=fields.get("carrier"), oper_state=oper_state,
        master=names.get(master) if master else None,
        lower=names.get(lower) if lower else None,
        mode=fields.get("macvlan_mode"), vni=fields.get("vni"),
        vxlan_port=fields.get("vxlan_port"), vxlan_group=fields.get("vxlan_group"),
        vxlan_local=fields.get("vxlan_local"), bond_mode=fields.get("bond_mode"),
        vlan_id=fields.get("vlan_id"), perm_mac=fields.get("perm_address"),
        altnames=fields.get("altnames", ()), parent=fields.get("parent"),
        multi_queue=fields.get("multi_queue"))
