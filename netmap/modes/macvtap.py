"""macvtap-bridge, -vepa, -private, -passthrough: a macvtap per guest NIC on the uplink (or
on its 802.1Q device when the network has a VLAN), in the kernel's macvlan mode."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from netmap.model import names
from netmap.model.fleet import Binding, Network
from netmap.modes.base import Mode, NicContext, UplinkUse

if TYPE_CHECKING:
    from netmap.steps import Step


class Macvtap(Mode):
    family = "macvtap"
    uplink_use: ClassVar[UplinkUse] = "macvlan"
    kernel_features = ("macvtap",)
    endpoint = "macvtap"
    libvirt_type = "direct"
    qemu_fd = "macvtap"

    def __init__(self, name: str, semantic: str, macvlan_mode: str, libvirt_mode: str) -> None:
        self.name = name
        self.semantic = semantic
        self.macvlan_mode = macvlan_mode
        self.libvirt_forward = libvirt_mode
        self.libvirt_direct_mode = libvirt_mode

    def devices(self, guest: str, nic: int, binding: Binding,
                network: Network) -> tuple[tuple[str, str], ...]:
        vlan = binding.vlan if binding.vlan is not None else network.vlan
        lower = (("vlan", names.vlan_name(binding.uplink, vlan)),) if vlan is not None else ()
        return (*lower, ("macvtap", names.tap_name(guest, nic)))

    def steps(self, ctx: NicContext) -> list[Step]:
        # the step classes only when planning: load and check read modes without them
        from netmap.steps import CreateMacvtap, EnsureVlanLink

        steps: list[Step] = []
        lower = ctx.uplink
        if "vlan" in ctx.devices:
            lower = ctx.devices["vlan"]
            steps.append(EnsureVlanLink(lower, ctx.uplink, int(ctx.vlan or 0), ctx.mtu))
        assert self.macvlan_mode is not None
        steps.append(CreateMacvtap(ctx.devices["macvtap"], lower, self.macvlan_mode,
                                   ctx.nic.mac, ctx.mtu))
        return steps


class MacvtapPassthrough(Macvtap):
    """One guest owns the uplink: no other binding may use it, no second guest either."""

    uplink_use = "whole"
    claims = "uplink"
    foreign_uppers_break = "passthrough hands the uplink to one guest"


MODES = (
    Macvtap("macvtap-bridge", "local-switching", "bridge", "bridge"),
    Macvtap("macvtap-vepa", "external-hairpin", "vepa", "vepa"),
    Macvtap("macvtap-private", "isolated", "private", "private"),
    MacvtapPassthrough("macvtap-passthrough", "dedicated", "passthru", "passthrough"),
)
