"""What realize changed on a device other guests share, and release puts back.

A guest realized beside others may need more of a device netmap made for them: a larger
MTU on the 802.1Q sub-interface its macvtap sits on (a macvlan cannot be larger than its
lower device), VLAN filtering on a bridge an untagged network uses too. The device stays
when that guest is released (the others still use it), so what the guest changed must be
put back then, or the host keeps it for good and the next check of those guests no longer
describes it. Like a VF entry (found at the claim, restored at release), the value before
the change is recorded in the device's state record, with the guests that need the change:
every guest that needs it joins (not only the one that made it), and the last of them to
leave puts the old value back.

State: ``resources["link:NAME"]["info"]["changed"] = {attr: {"old": v, "guests": [...]}}``.
"""

from __future__ import annotations

from typing import Any

from netmap import plan as p
from netmap.netlink import rtmsg, rtnl
from netmap.state import HostState


def hold(state: HostState, guest: str, step: p.Step, verdict: str,
         undo_repair: dict | None) -> None:
    """Record, before the change, what `guest` changes of a device others use (a repair
    while the device has other users) and which recorded changes it needs."""
    record = state.resource(step.resource)
    if record is None or not step.restored:
        return
    changed: dict[str, dict[str, Any]] = record["info"].setdefault("changed", {})
    others = [g for g in record["guests"] if g != guest]
    if verdict == "repair" and others:
        for attr in step.restored:
            if attr in (undo_repair or {}) and attr not in changed:
                changed[attr] = {"old": (undo_repair or {})[attr], "guests": []}
    for attr, entry in changed.items():
        if step.needs_changed(attr, entry["old"]) and guest not in entry["guests"]:
            entry["guests"].append(guest)
    if not changed:
        del record["info"]["changed"]


def give_back(kernel: rtnl.Rtnl, links: dict[str, rtmsg.Link], record: dict[str, Any],
              guest: str) -> dict[str, object]:
    """`guest` leaves a device that stays: drop it from the changes it needed and put back
    those no remaining guest needs. Returns what failed ({} when all is done); the failed
    changes keep `guest`, so a later release tries again."""
    changed = record["info"].get("changed")
    if not changed:
        return {}
    step = p.step_from_dict(record["step"])
    live = links.get(step.target)
    back = {}
    for attr, entry in list(changed.items()):
        if guest in entry["guests"]:
            entry["guests"].remove(guest)
            if not entry["guests"]:
                back[attr] = entry["old"]
                del changed[attr]
    if not changed:
        del record["info"]["changed"]
    if not back or live is None:  # gone meanwhile: nothing to put back
        return {}
    try:
        kernel.call(set_request(live.index, back))
    except OSError as err:
        for attr, old in back.items():
            changed = record["info"].setdefault("changed", {})
            changed[attr] = {"old": old, "guests": [guest]}
        return {"error": f"could not put back {_shown(back)} on {live.name}: {err}"}
    return {}


def set_request(index: int, attrs: dict[str, object]) -> tuple[int, int, bytes]:
    """One RTM_NEWLINK that sets the MTU and/or a bridge's VLAN filtering."""
    data = b""
    if "vlan_filtering" in attrs:
        data = rtmsg.vlan_filtering_data(bool(attrs["vlan_filtering"]))
    mtu = attrs.get("mtu")
    return rtmsg.set_link(index, mtu=int(mtu) if isinstance(mtu, int) else None,
                          kind="bridge" if data else None, data=data)


def _shown(attrs: dict[str, object]) -> str:
    return ", ".join(f"{k} {v}" for k, v in attrs.items())
