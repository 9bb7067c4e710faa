"""Undoing a VF handed over as a passthru macvtap, on a real kernel: the VF netdev goes back
as found (down, its MAC, its IPv6 address generation) only after the PF's entry holds no MAC
any more, since igb refuses a VF's MAC change while its PF enforces one (seen in the VM lab:
EADDRNOTAVAIL on the next claim of a VF reused after a release). This kernel has no SR-IOV:
a veth plays the VF netdev, and the PF's entry is recorded, with the VF netdev's state at
the moment it was set."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
from conftest import ip_links, needs_netns

from netmap.netlink import rtnl
from netmap.netlink.kernel_steps import RtnlKernel
from netmap.steps.vf import ZERO_MAC, ClaimVf

pytestmark = needs_netns
FOUND_MAC = "02:00:5e:10:00:01"
GUEST_MAC = "52:54:00:5e:10:02"


def ip(netns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", netns, *args], check=True, capture_output=True,
                          text=True).stdout


def link(netns: str, name: str) -> dict:
    return ip_links(netns, name)[0]


class RecordingPf(RtnlKernel):
    """Release's kernel, with the PF's VF entry recorded instead of set (no SR-IOV here),
    together with the VF netdev's MAC at that moment."""

    def __init__(self, kernel: rtnl.Rtnl, netdev: str) -> None:
        super().__init__(kernel)
        self.netdev = netdev
        self.entries: list[tuple[dict[str, object], str]] = []

    def set_vf(self, pf: str, entry: dict[str, object]) -> None:
        self.entries.append((dict(entry), link(str(self.kernel.netns), self.netdev)["address"]))


@pytest.fixture
def claimed_vf(netns_factory) -> Iterator[tuple[str, rtnl.Rtnl]]:
    """A 'VF netdev' as a claim leaves it: the guest's MAC, IPv6 generation off, up, a
    passthru macvtap on it. Found before: down, FOUND_MAC, eui64."""
    netns = netns_factory("nmvf")
    ip(netns, "link", "add", "vfdev", "address", FOUND_MAC, "type", "veth", "peer", "vfpeer")
    ip(netns, "link", "set", "vfdev", "address", GUEST_MAC, "addrgenmode", "none")
    ip(netns, "link", "set", "vfdev", "up")
    ip(netns, "link", "add", "nmvf0", "link", "vfdev", "type", "macvtap", "mode", "passthru")
    with rtnl.Rtnl(netns) as kernel:
        yield netns, kernel


def test_the_vf_netdev_gets_its_mac_back_only_once_the_entry_holds_none(claimed_vf) -> None:
    netns, kernel = claimed_vf
    found = {"mac": ZERO_MAC, "vlan": 0, "spoofchk": 1, "netdev_mac": FOUND_MAC,
             "netdev_addr_gen_mode": 0}
    pf = RecordingPf(kernel, "vfdev")
    ClaimVf("pf0", GUEST_MAC, 131, True, macvtap="nmvf0").undo(
        pf, {"index": 2, "netdev": "vfdev", "found": found})

    assert "nmvf0" not in ip(netns, "link", "show")
    vf = link(netns, "vfdev")
    assert (vf["address"], "UP" in vf["flags"], vf["inet6_addr_gen_mode"]) == (
        FOUND_MAC, False, "eui64")
    entry = {"vf": 2, "mac": ZERO_MAC, "vlan": 0, "spoofchk": 1}
    assert pf.entries == [(entry, GUEST_MAC),  # first: the netdev still has the guest's MAC
                          (entry, FOUND_MAC)]  # again after: the VF reported its own MAC


def test_an_undo_repeated_after_a_release_changes_nothing_more(claimed_vf) -> None:
    netns, kernel = claimed_vf
    found = {"mac": FOUND_MAC, "vlan": 0, "netdev_mac": FOUND_MAC, "netdev_addr_gen_mode": 0}
    info = {"index": 0, "netdev": "vfdev", "found": found}
    step = ClaimVf("pf0", GUEST_MAC, None, False, macvtap="nmvf0")
    step.undo(RecordingPf(kernel, "vfdev"), info)
    after = link(netns, "vfdev")
    pf = RecordingPf(kernel, "vfdev")
    step.undo(pf, info)  # the macvtap gone, the netdev as found: repeatable
    assert link(netns, "vfdev") == after
    # an entry found with the netdev's own MAC: the VF reports it, the PF must not enforce it
    assert [entry["mac"] for entry, _ in pf.entries] == [ZERO_MAC]


def test_a_mac_a_link_already_has_is_not_asked_for_again(claimed_vf) -> None:
    """igbvf asks its PF even for the MAC it has, and the PF refuses while it enforces
    another one: set_attrs sends no MAC a link already has."""
    netns, kernel = claimed_vf
    sent: list[tuple[int, int, bytes]] = []
    call = kernel.call

    def recording(request: tuple[int, int, bytes]) -> object:
        sent.append(request)
        return call(request)

    kernel.call = recording  # type: ignore[method-assign]
    RtnlKernel(kernel).set_attrs("vfdev", {"mac": GUEST_MAC.upper()})
    assert sent == []
    RtnlKernel(kernel).set_attrs("vfdev", {"mac": FOUND_MAC})
    assert len(sent) == 1
    assert link(netns, "vfdev")["address"] == FOUND_MAC
