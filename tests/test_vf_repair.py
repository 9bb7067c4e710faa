"""A claimed VF repaired in place (netmap/steps/vf_repair.py), around the step itself
(tests/test_steps.py holds its decisions): realize's transaction reports a repair that the
kernel refuses as it reports a refused claim, and who holds a macvtap open is read from the
processes' open files (the VM tier, tests/vm/test_sriov.py, does both on a real PF)."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from dataclasses import replace

import pytest
from conftest import needs_netns
from test_steps import CLAIMED_ENTRY, CLAIMED_NETDEV, CLAIMED_TAP, MACVTAP_CLAIM, QEMU
from test_steps import claimed_and_done as claimed

from netmap import plan as p
from netmap.errors import ApplyError
from netmap.netlink import holders, rtnl
from netmap.netlink.ensure import Transaction

PREFIX = "nmvr"


class RefusingPf(Transaction):
    """The transaction with a PF whose driver refuses VF entry changes the first time
    (EOPNOTSUPP), and every other change recorded instead of made (no root here)."""

    def __init__(self) -> None:
        super().__init__(rtnl.Rtnl.__new__(rtnl.Rtnl), None,  # type: ignore[arg-type]
                         p.Plan("vm1", "host-a", None))
        self.calls: list[tuple] = []

    def set_vf(self, pf: str, entry: dict[str, object]) -> None:
        self.calls.append(("set_vf", pf, dict(entry)))
        if len(self.calls) == 1:
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    def set_attrs(self, name: str, attrs: object) -> None:
        self.calls.append(("set_attrs", name, attrs))

    def set_up(self, name: str, up: bool) -> None:
        self.calls.append(("set_up", name, up))


def test_a_vf_repair_the_kernel_refuses_is_explained_and_undone() -> None:
    """A repair's OSError reached the user raw ("[Errno 95] Operation not supported"): now
    it says what failed on which VF of which PF, the step's explanation and a fix, as a
    refused claim does; rollback puts back what the repair set."""
    drifted = {"eno1v3": CLAIMED_NETDEV, "nm2": replace(CLAIMED_TAP, mtu=1400)}
    action = MACVTAP_CLAIM.decide(claimed({**CLAIMED_ENTRY, "vlan": 999}, drifted,
                                          held=QEMU), 0)
    txn = RefusingPf()
    with pytest.raises(ApplyError) as failed:
        txn._run(action)
    assert failed.value.problem == (
        "repair the claim of VF 3 of eno1 (MAC 52:54:00:00:00:03) in place: VF 3 of eno1 "
        "has vlan 999, want 100; nm2 has MTU 1400, want 1500: eno1's driver does not "
        "manage VFs through netlink")
    assert "ip link set eno1 vf 3" in (failed.value.fix or "")
    assert failed.value.step == MACVTAP_CLAIM
    assert txn.rollback() == []
    assert txn.calls[1:] == [("set_attrs", "nm2", {"mtu": 1400}),
                             ("set_vf", "eno1", {"vf": 3, "vlan": 999})]


@pytest.fixture
def macvtap(netns_factory) -> Iterator[tuple[str, str, int]]:
    """A passthru macvtap on a veth in a namespace of its own: (netns, name, ifindex)."""
    netns = netns_factory(PREFIX)
    run = ["ip", "-n", netns, "link"]
    subprocess.run([*run, "add", "nmvrdev", "type", "veth", "peer", "nmvrpeer"], check=True)
    subprocess.run([*run, "add", "nmvrtap", "link", "nmvrdev", "type", "macvtap", "mode",
                    "passthru"], check=True)
    with rtnl.Rtnl(netns) as kernel:
        live = kernel.get("nmvrtap")
    assert live is not None
    yield netns, "nmvrtap", live.index


@needs_netns
def test_who_holds_a_macvtap_open_is_found_by_its_char_device(macvtap) -> None:
    """A macvtap says nothing through rtnetlink of an open /dev/tapN (its carrier is its
    lower's): a process holding it is found by the char device's number, read from the
    namespace's own sysfs (devtmpfs names nodes by ifindex, which repeat across
    namespaces)."""
    netns, name, ifindex = macvtap
    assert holders.macvtap_holders(name, ifindex, netns) == []
    ready, done = os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:  # opens it as the QEMU helper does, then waits to be told to exit
        try:
            from netmap.netlink import tapfd

            tapfd.enter_netns(netns)
            tapfd.private_sysfs()
            fd = tapfd.open_macvtap(name, ifindex)
            os.write(ready[1], b"open")
            os.read(done[0], 1)
            os.close(fd)
        finally:
            os._exit(0)
    try:
        assert os.read(ready[0], 4) == b"open"
        held = holders.macvtap_holders(name, ifindex, netns)
        assert len(held) == 1, held
        assert held[0].endswith(f"(pid {pid})"), held
    finally:
        os.write(done[1], b"x")
        os.waitpid(pid, 0)
    assert holders.macvtap_holders(name, ifindex, netns) == []
    assert holders.macvtap_holders(name, ifindex + 1000, netns) == []  # no such char device
