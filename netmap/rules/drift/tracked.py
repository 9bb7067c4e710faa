"""What netmap's state says it made on a host, as drift compares it with the live host.
Pure; below every drift module (drift_links, drift_bindings and drift all read it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrackedDevice:
    """One thing netmap's state says it made on the host: an interface (tap, macvtap,
    bridge, vxlan, vlan) with where realize put it, a claimed VF of a PF, or a VLAN it added
    to a port of a vlan-filtering bridge."""

    name: str  # the interface; for a VF claim, the VF netdev if known, else "PF/vfN"
    guests: tuple[str, ...]
    role: str = "tap"  # the plan step's kind: tap, macvtap, bridge, vxlan, vlan, vf, bridge-vlan
    bridge: str | None = None  # a tap's bridge
    lower: str | None = None  # a macvtap's lower device, a vxlan's underlay
    pf: str | None = None
    vf: int | None = None
    ifindex: int | None = None  # the device realize made (state.record_identity)
    pending: bool = False  # a realize recorded it and did not finish (crash, kill -9)
    multi_queue: bool | None = None  # a tap: made with IFF_MULTI_QUEUE (None: unknown)
    vid: int | None = None  # a bridge-vlan: the VLAN netmap added to port `name`
    mac: str | None = None  # a VF claim: the guest's MAC, which the PF's entry must carry

    @property
    def is_link(self) -> bool:
        return self.role not in ("vf", "bridge-vlan")

    @property
    def owners(self) -> str:
        return ", ".join(self.guests) or "no guest"


def tracked_from_state(state: object) -> list[TrackedDevice]:
    """What netmap.state recorded as made by netmap: a HostState, its `.data` dict, or
    already a list of TrackedDevice. Devices that were there before netmap (an uplink,
    a bridge the admin made) are not netmap's and are left out."""
    if isinstance(state, (list, tuple)):
        return list(state)
    data = getattr(state, "data", state)
    resources = data.get("resources", {}) if isinstance(data, dict) else {}
    guest_records = data.get("guests", {}) if isinstance(data, dict) else {}
    unfinished = {name for name, entry in guest_records.items()
                  if isinstance(entry, dict) and entry.get("status") == "pending"}
    out = []
    for key, record in resources.items():
        step = record.get("step") or {}
        guests = tuple(record.get("guests") or ())
        if key.startswith("link:") and record.get("created"):
            out.append(TrackedDevice(key[5:], guests, str(step.get("kind", "link")),
                                     bridge=step.get("bridge"),
                                     lower=step.get("lower") or step.get("underlay"),
                                     ifindex=(record.get("info") or {}).get("ifindex"),
                                     pending=bool(unfinished & set(guests)),
                                     multi_queue=step.get("multi_queue")))
        elif key.startswith("vf:"):
            _, pf, mac = key.split(":", 2)
            index = (record.get("info") or {}).get("index")
            vf = int(index) if index is not None else None
            out.append(TrackedDevice(f"{pf}/vf{vf}", guests, "vf", pf=pf, vf=vf,
                                     lower=step.get("macvtap"), mac=mac,
                                     pending=bool(unfinished & set(guests))))
        elif key.startswith("vlan:") and record.get("created"):
            port, _, vid = key[5:].rpartition(":")
            out.append(TrackedDevice(port, guests, "bridge-vlan", vid=int(vid),
                                     pending=bool(unfinished & set(guests))))
    return out
