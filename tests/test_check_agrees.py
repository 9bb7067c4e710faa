"""check agrees with realize, on the CI kernel (namespaces, prefix nmag): tests/agreement.py
generates the cases; here the destination is a network namespace whose uplinks are veths
into a fabric namespace, rebuilt per case from the destination's mapping and removed after.
OVS cases run on the userspace datapath (netdev) of one ovsdb-server and ovs-vswitchd in
the destination namespace (tests/ovs_lab.py), shared by every case; its OVSDB is part of
what a case compares before and after.

This kernel has no 802.1Q, no bridge VLAN filtering, no SR-IOV and no openvswitch module: a
case that needs them must be refused up front for that (nothing changed), and the VM tier
(tests/vm/test_check_agrees_vm.py) runs the same cases on a kernel that has them.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from agreement import (
    INVALID,
    MIXED,
    MODES,
    UNDERLAY,
    VARIANTS,
    VM_CASES,
    Tally,
    add_ovs_bridges,
    assert_agrees,
    combined,
    generate,
    host_dump,
    write,
)
from conftest import needs_netns
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from ovs_lab import OvsInstance, start_ovs
from ovs_lab import missing as ovs_missing

from netmap.cli import main
from netmap.model.fleet import Host
from netmap.netlink.kernel_support import KernelProbe
from netmap.query.graph import build_graph
from netmap.rules.check import check_migration

PREFIX = "nmag"
OVS_PREFIX = "nmao"  # the destination's Open vSwitch directory under /tmp


def _ip(netns: str, commands: list[str]) -> None:
    done = subprocess.run(["ip", "-n", netns, "-batch", "-"], input="\n".join(commands) + "\n",
                          text=True, capture_output=True, check=False)
    assert done.returncode == 0, done.stderr


class NamespaceHost:
    """The destination as a namespace; its uplinks are veths whose peers sit in a fabric
    namespace (up, so the uplinks have carrier). The vxlan underlay gets an address, as a
    real underlay has one."""

    def __init__(self, netns: str, fabric: str, ovs: OvsInstance | None) -> None:
        self.name = "dst"
        self.netns = netns
        self.fabric = fabric
        self.pf = "pf0"  # no such PF: this kernel has no SR-IOV device
        self.sysfs_root = None  # the real /sys: the namespace's uplinks have no SR-IOV pool
        self.probe = KernelProbe()
        # the namespace's Open vSwitch (userspace datapath), shared by every case; None
        # where Open vSwitch is not installed. Read back and cleared in the cases of
        # hosts with an OVS binding or bridge (the others never reach OVSDB: three
        # ovs-vsctl processes a case would add 20 s to the sweep)
        self.ovs = ovs
        self.ovsdb = ovs.remote if ovs else None
        self.ovs_case = False

    def build(self, host: Host, ovs_bridges: tuple = ()) -> None:
        underlays = {b.uplink: 6 if b.vxlan and b.vxlan.ipv6 else 4
                     for b in host.bindings.values() if b.mode == "vxlan"}
        commands = []
        for index, uplink in enumerate(host.uplinks.values()):
            commands += [f"link add {uplink.name} mtu {uplink.mtu} type veth peer name "
                         f"agf{index} mtu {uplink.mtu} netns {self.fabric}",
                         # no link-local address appearing after the case's first read
                         f"link set {uplink.name} addrgenmode none",
                         f"link set {uplink.name} up"]
            if uplink.name in underlays:
                commands.append(f"addr add {UNDERLAY[underlays[uplink.name]]} dev "
                                f"{uplink.name} nodad")
        _ip(self.netns, commands)
        _ip(self.fabric, [f"link set agf{i} up" for i in range(len(host.uplinks))])
        self.ovs_case = self.ovs is not None and (bool(ovs_bridges) or any(
            b.mode == "ovs" for b in host.bindings.values()))
        if ovs_bridges:
            assert self.ovs is not None
            add_ovs_bridges(self.ovs, ovs_bridges)

    def clear(self, host: Host) -> None:
        """Remove the uplinks (a veth's peer goes with it), and the endpoints and OVS
        bridges a case made or a failed case left, for the next case."""
        if self.ovs is not None and self.ovs_case:
            self.ovs.del_bridges()
        subprocess.run(["ip", "-n", self.netns, "-force", "-batch", "-"], text=True,
                       input="".join(f"link del {name}\n" for name in host.uplinks),
                       capture_output=True, check=False)

    def dump(self) -> object:
        links = host_dump(self.netns)
        return {**links, "ovsdb": self.ovs.rows()} if self.ovs and self.ovs_case else links

    def lacks_sriov(self) -> bool:
        return True


@pytest.fixture(scope="module")
def destination() -> Iterator[NamespaceHost]:
    """The destination namespace and the fabric, and, where Open vSwitch is installed, one
    ovsdb-server and ovs-vswitchd in the destination for every case (tests/ovs_lab.py;
    starting them per case would cost more than the OVS cases themselves)."""
    tag = f"{os.getpid() % 100000}"
    netns, fabric = f"{PREFIX}{tag}-dst", f"{PREFIX}{tag}-fab"
    made = []
    ovs = None
    try:
        for name in (netns, fabric):
            subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
            made.append(name)
        _ip(netns, ["link set lo up"])
        if ovs_missing() is None:  # a short path: a unix socket's has at most 107 bytes
            ovs = start_ovs(netns, Path(tempfile.mkdtemp(prefix=f"{OVS_PREFIX}-", dir="/tmp")))
        yield NamespaceHost(netns, fabric, ovs)
    finally:
        if ovs is not None:
            ovs.stop()
        for name in made:
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def _needs_ovs(mode: str, destination: NamespaceHost) -> None:
    """Skip a case of an OVS mode where Open vSwitch is not installed, saying why."""
    if "ovs" in mode and destination.ovs is None:
        pytest.skip(str(ovs_missing()))


def test_the_vm_share_covers_every_mode_and_finding(tmp_path: Path) -> None:
    """agreement.VM_CASES, the VM tier's budgeted share (pure, no root): every mode the VM
    proves, untagged and tagged, every finding check reports in any case of those modes,
    and only cases generate() makes."""
    cases = generate("h", modes=tuple(m for m in MODES if not m.startswith("vxlan")))
    chosen = [c for c in cases if c.name in VM_CASES]
    assert sorted(c.name for c in chosen) == sorted(VM_CASES)

    def codes(selection: list) -> set[str]:
        found = set()
        for n, case in enumerate(selection):
            fleet = write(case, tmp_path / f"c{len(found)}-{n}-{case.name}")
            found |= {f.code for f in check_migration(build_graph(fleet), case.guest,
                                                      case.dest).errors}
        return found

    assert codes(chosen) == codes(cases)
    assert {(c.name.split("-vlan100-")[0] if "-vlan100-" in c.name else
             c.name.split("-untagged-")[0], "-vlan100-" in c.name) for c in chosen} == {
        (m, tagged) for m in MODES if not m.startswith("vxlan") for tagged in (False, True)}


@needs_netns
@pytest.mark.parametrize("mode", MODES)
def test_check_agrees_with_realize(mode: str, destination: NamespaceHost,
                                   tmp_path: Path) -> None:
    _needs_ovs(mode, destination)
    tally = Tally()
    for n, case in enumerate(generate("dst", destination.netns, destination.pf,
                                      modes=(mode,), ovsdb=destination.ovsdb)):
        root = tmp_path / f"c{n}" / "mappings"
        tally.add(assert_agrees(case, root, tmp_path / f"c{n}" / "state", destination))
    # every case ran to a verdict, and the kernel-independent ones were proven here
    assert all(o.result and o.result != INVALID for o in tally.outcomes)
    proven = [o for o in tally.outcomes if o.needs_vm is None]
    if mode in ("bridge", "vxlan-group", "vxlan-remotes", *MIXED) or mode.startswith(
            ("macvtap", "ovs")):
        assert any(o.compatible and o.result == "realized" for o in proven), tally.outcomes
    if mode in MIXED:  # a move between a Linux bridge and OVS keeps the class: no warning
        assert all(o.compatible and not o.warnings for o in tally.outcomes
                   if o.case.endswith("-plain")), tally.outcomes
    if mode == "ovs":  # the uplink in the operator's other bridge, or an access port there:
        # check --live sees it, realize refuses
        assert {(o.case.split("-")[-1], o.codes, o.result) for o in tally.outcomes
                if o.case.endswith(("-uplink-elsewhere", "-uplink-access"))} == {
            ("elsewhere", ("OVS_UPLINK_WRONG_BRIDGE",), "refused at ovs-port"),
            ("access", ("OVS_UPLINK_NOT_TRUNK",), "refused at ovs-port")}, tally.outcomes


@needs_netns
def test_a_kernel_datapath_bridge_is_refused_up_front_without_the_module(
        destination: NamespaceHost, tmp_path: Path) -> None:
    """The OVS cases once more with datapath_type "system" (a bridge in the openvswitch
    module's datapath, which this kernel lacks): check cannot know the kernel, so realize
    must refuse before any change, naming what the kernel lacks (the VM tier builds
    them). It used to make the bridge, find that ovs-vswitchd could not use the port,
    and roll back."""
    _needs_ovs("ovs", destination)
    if Path("/sys/module/openvswitch").exists():
        pytest.skip("this kernel has the openvswitch module")
    tally = Tally()
    for n, case in enumerate(generate("dst", destination.netns, destination.pf,
                                      modes=("ovs",), variants=("plain", "two-nics"),
                                      ovsdb=destination.ovsdb, datapath="system")):
        tally.add(assert_agrees(case, tmp_path / f"c{n}" / "mappings",
                                tmp_path / f"c{n}" / "state", destination))
    assert {(o.result, o.needs_vm) for o in tally.outcomes} == {
        ("refused at ovs-bridge", "Open vSwitch's kernel datapath")}, tally.outcomes


@needs_netns
def test_realize_json_names_the_step_it_failed_at(destination: NamespaceHost, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """check: MTU_TOO_SMALL (the uplink is a byte short); `realize --force --json` is
    refused at the uplink before any change, and says so by step kind."""
    case = next(c for c in generate("dst", destination.netns, modes=("macvtap-vepa",),
                                    variants=("mtu-uplink",)) if "untagged" in c.name)
    root = tmp_path / "mappings"
    fleet = write(case, root)
    monkeypatch.setenv("NETMAP_MAPPINGS", str(root))
    monkeypatch.setenv("NETMAP_STATE_DIR", str(tmp_path / "state"))
    destination.build(fleet.hosts["dst"])
    try:
        before = destination.dump()
        assert main(["realize", "vm", "--host", "dst", "--json"]) == 1  # check refuses
        capsys.readouterr()
        assert main(["realize", "vm", "--host", "dst", "--force", "--json"]) == 3
        error = json.loads(capsys.readouterr().out)
        assert error["step"] == {"kind": "require-link",
                                 "do": "uplink up0 must exist with MTU >= 1400; bring it up "
                                       "if it is down"}
        assert "has MTU 1399" in error["problem"]
        assert "nothing was changed" in error["problem"]
        assert destination.dump() == before
    finally:
        destination.clear(fleet.hosts["dst"])


@needs_netns
@settings(max_examples=int(os.environ.get("NETMAP_AGREE_EXAMPLES", "20")), deadline=None,
          derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mode=st.sampled_from(MODES), vlan=st.sampled_from([None, 100]),
       variants=st.lists(st.sampled_from(VARIANTS[1:]), min_size=2, max_size=3, unique=True))
def test_check_agrees_with_realize_for_combined_variants(
        mode: str, vlan: int | None, variants: list[str], destination: NamespaceHost,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """Two or three variations at once (a neighbour and a short uplink, a pinned class
    and a VLAN mismatch...); derandomized, so CI runs the same cases every time
    (NETMAP_AGREE_EXAMPLES=500 searches wider)."""
    assume("ovs" not in mode or destination.ovs is not None)
    case = combined("dst", mode, None if mode.startswith("vxlan") else vlan, tuple(variants),
                    destination.netns, destination.pf, ovsdb=destination.ovsdb)
    assume(case is not None)
    assert case is not None
    work = tmp_path_factory.mktemp("combined")
    outcome = assert_agrees(case, work / "mappings", work / "state", destination)
    assume(outcome.result != INVALID)
