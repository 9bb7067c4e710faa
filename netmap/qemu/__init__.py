"""QEMU integration: a helper that speaks QEMU's bridge-helper protocol for logical networks.

`qemu-system-x86_64 -netdev bridge,id=n0,br=prod,helper=netmap-qemu-helper` attaches the
guest to the logical network `prod` as this host's mapping realizes it. This module decides
*what* serves a network on a host (pure): realize's plan for that one NIC, the same steps;
`acl` decides *whether* the helper may, `helper` speaks the protocol and applies the plan
through realize's transaction (netmap/netlink/apply.py), and netmap/netlink/tapfd.py opens
the fd QEMU gets. `netdev` is QEMU's side of an endpoint realize built.

Which modes a helper fd can serve (each mode's `qemu_fd` says; today):
  bridge, vxlan     a tap on the binding's bridge (tun fd)
  ovs               a tap that is an access port of the binding's OVS bridge (tun fd)
  macvtap-*         a macvtap on the uplink (its /dev/tapN fd); needs the guest's MAC
  sriov-vf          no: a VF is a PCI device (vfio-pci), not something an fd carries
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from netmap.errors import InputError
from netmap.model.fleet import IFNAMSIZ, Binding, Fleet, Guest, GuestNic, Host, Network
from netmap.modes import Mode, mode_of

if TYPE_CHECKING:
    from netmap.plan import NicPlan, Plan
    from netmap.qemu.helper import Request

# A logical network name as load.py accepts it: no '/', no leading '.', nothing to escape.
_NETWORK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
TAP_PREFIX = "nmq"  # helper-made taps: nmq + 8 hex (realize's are nm + 10, never equal)


HELPER_GUEST = "qemu-helper"  # the guest an endpoint is for when the helper is not told
STATE_PREFIX = "qemu:"  # state records a helper's endpoint as guest qemu:IFNAME


@dataclass(frozen=True)
class Endpoint:
    """What the helper will build for the request on this host: realize's plan for one NIC
    (the same steps realize makes for that network), and what the helper itself needs of it.
    Pure data."""

    network: Network
    binding: Binding
    host: Host
    mtu: int
    ifname: str  # the tap or macvtap to create
    mac: str | None  # the guest's MAC when known (--mac, --guest); macvtap needs it
    bridge: str | None  # bridge, vxlan and ovs modes
    plan: Plan  # realize's steps for it, as guest `owner` in the host's state
    guest: str | None = None  # --guest, when given (an OVS port's vm-id)

    @property
    def owner(self) -> str:
        """Who uses the endpoint's devices in the host's state (released at QEMU's exit)."""
        return self.plan.guest


def network_name_problem(name: str) -> str | None:
    """Why `name` must not be served. Checked before the ACL or anything else sees it."""
    size = len(name.encode())
    if size >= IFNAMSIZ:
        # CVE-2019-13164: qemu-bridge-helper did not limit --br= to IFNAMSIZ; a long name
        # passed the ACL and was copied past the end of the ifreq (an ACL bypass). Refuse.
        return (f"{name!r} has {size} bytes; names of {IFNAMSIZ} bytes or more are refused "
                "(they would be cut to the kernel's IFNAMSIZ)")
    if not _NETWORK_NAME.fullmatch(name):  # not match: its $ accepts a final newline
        return (f"{name!r} is not a logical network name (letters, digits, '_', '.', '-', "
                "not starting with '.' or '-', no '/')")
    return None


def _refuse_queues(guest: Guest, nic: GuestNic, host: Host) -> None:
    """QEMU's bridge-helper protocol passes one descriptor, one queue: a NIC with several
    would start with one, or (a tap made with IFF_MULTI_QUEUE by someone else) not at all."""
    if nic.queues <= 1:
        return
    from netmap.model.names import tap_name

    raise InputError(
        f"guest {guest.name}'s NIC {nic.index} on network {nic.network!r} has "
        f"queues = {nic.queues}; the bridge helper hands QEMU one file descriptor, one queue",
        file=str(guest.source or ""), key=f"nics[{nic.index}].queues",
        fix=f"run 'netmap realize {guest.name} --host {host.name}': it makes "
        f"{tap_name(guest.name, nic.index)} for {nic.queues} queues and prints the libvirt "
        f"<interface> and QEMU's -netdev options (queues={nic.queues}) that attach the guest "
        "to it; or set queues = 1 in the guest's mapping")


def _random_tap_name() -> str:
    # what secrets.token_hex(4) returns, without importing secrets (hmac, base64) while
    # QEMU waits for the helper
    return f"{TAP_PREFIX}{os.urandom(4).hex()}"


def _random_guest_mac() -> str:
    """A locally administered unicast MAC standing in for a guest's unknown one: the plan
    gives the tap's host side the guest's MAC with fe: (plan.host_side_mac), so the tap
    gets fe: and five random bytes, as qemu-bridge-helper and libvirt give it."""
    return "02:" + ":".join(f"{byte:02x}" for byte in os.urandom(5))


def _unknown_guest(nic: NicPlan, mac_known: bool) -> NicPlan:
    """An OVS port of a guest the helper was not told: without the ids it would only make
    up (a logical port shared by every such helper, a MAC that is not the guest's)."""
    from dataclasses import replace

    from netmap.plan import EnsureOvsPort

    made_up = {"iface-id": f"{HELPER_GUEST}-nic{nic.nic}"}
    if not mac_known:
        made_up["attached-mac"] = nic.mac

    port = nic.step_of(EnsureOvsPort, nic.device) if nic.device else None
    if port is None:
        return nic
    known = replace(port, external_ids=tuple(
        (key, value) for key, value in port.external_ids if made_up.get(key) != value))
    return replace(nic, steps=tuple(known if step is port else step for step in nic.steps))


def plan_endpoint(request: Request, fleet: Fleet, host: Host) -> Endpoint:
    """Resolve the logical network on `host` into what to build; refuse what a tap fd
    cannot serve. Pure."""
    from netmap.load import require_guest
    from netmap.load.tomlcheck import did_you_mean
    from netmap.model import names
    from netmap.model.mtu import effective_mtu

    network = fleet.networks.get(request.network)
    if network is None:
        raise InputError(f"no logical network {request.network!r}",
                         file=f"{fleet.root}/networks.toml", key=f"networks.{request.network}",
                         fix=did_you_mean(request.network, fleet.networks))
    binding = host.bindings.get(network.name)
    if binding is None:
        raise InputError(f"host {host.name} does not realize network {network.name!r}",
                         file=str(host.source or ""), key=f"networks.{network.name}",
                         fix=f"add [networks.{network.name}] to the host mapping, or run the "
                         "guest on a host that has it (netmap hosts-for)")
    mode = mode_of(binding)
    if mode.qemu_fd is None:
        problem, fix = mode.qemu_refusal(network, host.name)
        raise InputError(problem, fix=fix)
    mtu, _ = effective_mtu(network, binding, host)
    vlan = binding.vlan if binding.vlan is not None else network.vlan
    mac, index = request.mac, None
    if request.guest is not None:
        guest = require_guest(fleet, request.guest)
        nics = [n for n in guest.nics if n.network == network.name
                and (request.mac is None or n.mac.lower() == request.mac)]
        if len(nics) != 1:
            raise InputError(
                f"guest {guest.name} has {len(nics)} NICs on network {network.name!r}"
                + (f" with MAC {request.mac}" if request.mac else ""),
                file=str(guest.source or ""),
                fix="pass --mac=MAC to pick one" if nics else
                f"the guest's mapping must list a NIC on {network.name!r}")
        mac, index = nics[0].mac.lower(), nics[0].index
        _refuse_queues(guest, nics[0], host)
    elif request.mac is not None:  # the NIC may still be in the mappings, under any guest
        for guest in fleet.guests.values():
            for nic in guest.nics:
                if nic.network == network.name and nic.mac.lower() == request.mac:
                    _refuse_queues(guest, nic, host)
    ifname = (names.tap_name(request.guest, index) if request.guest is not None and index is
              not None else _random_tap_name())
    if mode.qemu_fd == "macvtap" and mac is None:
        raise InputError(
            f"network {network.name!r} is {binding.mode} on {host.name}: a macvtap only "
            "receives frames for the guest's MAC, which QEMU does not tell the helper",
            fix="run the helper as helper=\"netmap-qemu-helper --mac=MAC\" (or "
            "--guest=NAME), with MAC the -device's mac=")
    plan = _plan(mode, network, binding, host, ifname, mac, index, request.guest, vlan, mtu)
    return Endpoint(network, binding, host, mtu, ifname, mac, mode.guest_bridge(binding, network),
                    plan, request.guest)


def _plan(mode: Mode, network: Network, binding: Binding, host: Host, ifname: str,
          mac: str | None, index: int | None, guest: str | None, vlan: int | None,
          mtu: int) -> Plan:
    """realize's plan for one NIC on `network`, its endpoint named `ifname`: the steps come
    from the same place as realize's (planner.context_plan, the mode's steps), so the
    helper builds, records and releases what realize would."""
    from netmap.modes import NicContext
    from netmap.plan import Plan
    from netmap.plan.planner import context_plan

    nic = GuestNic(index or 0, network.name, mac or _random_guest_mac())
    name = guest or HELPER_GUEST
    devices = dict(mode.devices(name, nic.index, binding, network))
    devices["macvtap" if mode.qemu_fd == "macvtap" else "tap"] = ifname
    planned = context_plan(mode, NicContext(Guest(name, None, (nic,)), nic, binding, network,
                                            binding.uplink, vlan, mtu, devices))
    if guest is None:
        planned = _unknown_guest(planned, mac is not None)
    # netns None: the helper runs inside the host's namespace already (enter_netns)
    return Plan(f"{STATE_PREFIX}{ifname}", host.name, None, (planned,))
