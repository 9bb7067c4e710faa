"""What a link dump says that changes on its own, taken out, so that two dumps of a host
compare equal exactly when something changed it. Shared by the namespace tier and the VM
tier (tests/vm/vmhost.py puts this folder on the path)."""

from __future__ import annotations


def steady_link(link: dict) -> dict:
    """`link` (one entry of `ip -d -j link|addr show`) without counters, running timers,
    what follows carrier on its own (linkwatch, up to a second later: a tap loses carrier
    once its creating fd is closed) — operstate, NO-CARRIER/LOWER_UP, a bridge port's STP
    state — address lifetimes, and the qdisc: the kernel attaches the default one the
    first time a device comes up and keeps it after (netmap sets none; a VF netdev it
    brought up and down again keeps fq_codel or mq where it had noop), and the permanent
    address iproute2 prints when it differs from the MAC: igbvf takes the MAC it has at
    each reset (ifdown) as its permanent one, driver bookkeeping that nothing can set.
    Changed in place and returned."""
    for volatile in ("stats", "stats64", "operstate", "qdisc", "permaddr"):
        link.pop(volatile, None)
    link["flags"] = [f for f in link["flags"] if f not in ("NO-CARRIER", "LOWER_UP")]
    for part in ("info_data", "info_slave_data"):
        data = link.get("linkinfo", {}).get(part, {})
        for key in [k for k in data if k.endswith("_timer")]:
            del data[key]
    link.get("linkinfo", {}).get("info_slave_data", {}).pop("state", None)
    for address in link.get("addr_info", []):
        for key in ("valid_life_time", "preferred_life_time"):
            address.pop(key, None)
    return link
