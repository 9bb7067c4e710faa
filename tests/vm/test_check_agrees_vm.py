"""check agrees with realize on a full kernel (issue 13, item 6): the cases of
tests/agreement.py, the destination being this VM itself (HOST), its uplinks dummy links
named as the mapping says, its SR-IOV PF the first igb PF with the mapping's total_vfs
enabled, its Open vSwitch its own ovsdb-server and ovs-vswitchd on the kernel datapath
(the openvswitch module). Here 802.1Q, bridge VLAN filtering, SR-IOV and OVS's kernel
datapath exist, so no case may end as "this tier lacks it": every VLAN and VF case is
proven, not only refused.

Budget: the VM tier must stay under 10 minutes of TCG time on a 2-core machine, and a case
costs 4-6 s here (a realize, a release, a dozen iproute2 and udevadm processes): the 176
VLAN and VF cases of these modes took 12 minutes in an earlier run, all 266 would take
more (342 with ovs). It runs agreement.VM_CASES, 40 cases (173 s for the 31 without
ovs, measured on a busy machine; the nine ovs ones 46 s, 81 s beside a namespace run):
every mode untagged and on VLAN 100, every finding check reports for these modes at each
step kind it names, tagged where it can be (the namespace tier cannot build VLANs but runs
every untagged case of every mode), the cases that found bugs here (a shared uplink.VLAN
and a shared bridge put back after release, one MAC on two VFs of one PF), and ovs on the
kernel datapath: a second network in the OVS bridge, the operator's bridge of the other
datapath, the operator's bridge holding the uplink.
tests/test_check_agrees.py checks, without root, that the selection still covers every
mode and finding as generate() grows. vxlan is left to the namespace tier, which builds
all of it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from vmhost import HOST, pfs, set_numvfs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/agreement.py
from agreement import (
    MIXED,
    MODES,
    UNDERLAY,
    VM_CASES,
    Tally,
    add_ovs_bridges,
    assert_agrees,
    generate,
    host_dump,
)
from ovs_lab import OvsInstance, missing, start_ovs

from netmap.model.fleet import Host

pytestmark = pytest.mark.vm


def settle() -> None:
    """Wait until the VM's udev has handled every new link. It runs the root file system's
    99-default.link (MACAddressPolicy=persistent): a link made with a random MAC (a dummy,
    a VF netdev, a bridge) gets another MAC from udev, a VF netdev another name, whenever
    udev's worker gets to it, which under TCG can be after a dump. A real host's udev is
    just as asynchronous, but nothing there dumps it within milliseconds of a change."""
    subprocess.run(["udevadm", "settle", "--timeout=60"], check=True)


@pytest.fixture
def quiet_pf() -> Iterator[str]:
    """The first PF without IPv6 autoconfiguration. build brings it up, and igb resets it
    on every write to sriov_numvfs: each time the kernel would add a link-local address
    and run duplicate address detection on it, whose 'tentative' flag then clears a second
    later, in the middle of a case. netmap neither adds addresses nor brings a PF up, so
    its link-local address is no part of what a case compares (the dummies are made the
    same way). Restored after: down with eui64, as the VM booted it."""
    pf = pfs()[0]
    was_up = "UP" in json.loads(subprocess.run(["ip", "-j", "link", "show", pf], check=True,
                                               capture_output=True, text=True).stdout)[0]["flags"]
    subprocess.run(["ip", "link", "set", pf, "addrgenmode", "none"], check=True)
    subprocess.run(["ip", "-6", "addr", "flush", "dev", pf], check=True)
    yield pf
    set_numvfs(pf, 0)
    if not was_up:
        subprocess.run(["ip", "link", "set", pf, "down"], check=True)
    subprocess.run(["ip", "link", "set", pf, "addrgenmode", "eui64"], check=True)


def configured(pf: str) -> int:
    return int(Path(f"/sys/class/net/{pf}/device/sriov_numvfs").read_text())


@pytest.fixture(scope="module")
def vm_ovs() -> Iterator[OvsInstance]:
    """The VM's own Open vSwitch on the kernel datapath (the openvswitch module), one for
    the OVS cases of this file, as tests/vm/test_ovs_vm.py starts it. No datapath is left:
    ovs-vswitchd deletes ovs-system with the last bridge of its type, and one a failure
    left behind is deleted after it stops."""
    if subprocess.run(["modprobe", "openvswitch"], capture_output=True).returncode:
        pytest.fail("no openvswitch module in the VM's kernel")
    assert missing() is None, missing()
    directory = Path(tempfile.mkdtemp(prefix="nmao", dir="/tmp"))  # a short socket path
    ovs = start_ovs(None, directory)
    try:
        yield ovs
    finally:
        ovs.stop()
        if "ovs-system" in subprocess.run(["ovs-dpctl", "show"], capture_output=True,
                                          text=True, check=False).stdout:
            subprocess.run(["ovs-dpctl", "del-dp", "ovs-system"], check=False)
        shutil.rmtree(directory, ignore_errors=True)


class VmHost:
    """The VM as the destination: dummies for the mapping's uplinks (an address on a vxlan
    underlay), removed again by clear; the PF's pool set to the mapping's total_vfs and
    kept for the next case (quiet_pf empties it): under TCG making VFs costs seconds, and
    release leaves their entries as found. OVS cases: the VM's Open vSwitch, its OVSDB
    read back with the rest."""

    def __init__(self, pf: str, ovs: OvsInstance | None = None) -> None:
        self.name = HOST
        self.netns = None
        self.pf = pf
        self.sysfs_root = None
        self.probe = None  # this kernel's own answer
        self.ovs = ovs

    def build(self, host: Host, ovs_bridges: tuple = ()) -> None:
        underlays = {b.uplink: 6 if b.vxlan and b.vxlan.ipv6 else 4
                     for b in host.bindings.values() if b.mode == "vxlan"}
        commands = []
        for uplink in host.uplinks.values():
            if uplink.sriov is not None:
                if configured(uplink.name) != uplink.sriov.total_vfs:
                    set_numvfs(uplink.name, uplink.sriov.total_vfs)
                commands += [f"link set {uplink.name} mtu {uplink.mtu}",
                             f"link set {uplink.name} up"]
                continue
            commands += [f"link add {uplink.name} mtu {uplink.mtu} type dummy",
                         f"link set {uplink.name} addrgenmode none",
                         f"link set {uplink.name} up"]
            if uplink.name in underlays:
                commands.append(f"addr add {UNDERLAY[underlays[uplink.name]]} dev "
                                f"{uplink.name} nodad")
        subprocess.run(["ip", "-batch", "-"], input="\n".join(commands) + "\n", text=True,
                       check=True, capture_output=True)
        if ovs_bridges:
            assert self.ovs is not None
            add_ovs_bridges(self.ovs, ovs_bridges)
        settle()

    def clear(self, host: Host) -> None:
        if self.ovs is not None:
            self.ovs.del_bridges()
        for uplink in host.uplinks.values():
            if uplink.sriov is not None:
                subprocess.run(["ip", "link", "set", uplink.name, "mtu", "1500"], check=True)
            else:
                subprocess.run(["ip", "link", "del", uplink.name], check=False,
                               capture_output=True)

    def dump(self) -> object:
        settle()
        links = host_dump(None)
        return {**links, "ovsdb": self.ovs.rows()} if self.ovs else links

    def lacks_sriov(self) -> bool:
        return False


@pytest.mark.parametrize("mode", [m for m in MODES if not m.startswith("vxlan")])
def test_check_agrees_with_realize_on_a_full_kernel(mode: str, quiet_pf: str,
                                                    request: pytest.FixtureRequest,
                                                    tmp_path: Path) -> None:
    ovs = request.getfixturevalue("vm_ovs") if "ovs" in mode else None
    live = VmHost(quiet_pf, ovs)
    tally = Tally()
    cases = [c for c in generate(HOST, None, live.pf, modes=(mode,),
                                 ovsdb=ovs.remote if ovs else None, datapath="system")
             if c.name in VM_CASES]
    assert cases, mode
    disagreements = []
    for n, case in enumerate(cases):  # every case, so one run shows every disagreement
        try:
            tally.add(assert_agrees(case, tmp_path / f"c{n}" / "mappings",
                                    tmp_path / f"c{n}" / "state", live))
        except AssertionError as err:
            disagreements.append(f"{case.name}: {err}")
    assert not disagreements, "\n".join(disagreements)
    lacking = [(o.case, o.needs_vm) for o in tally.outcomes if o.needs_vm]
    assert not lacking, f"refused for want of kernel support in the VM: {lacking}"
    assert any(o.compatible and o.result == "realized" for o in tally.outcomes)
    if mode in MIXED:  # a move between a Linux bridge and OVS keeps the class: no warning
        assert all(o.compatible and not o.warnings for o in tally.outcomes
                   if o.case.endswith("-plain")), tally.outcomes


SHARED_NETWORKS = """[networks.tagged]
segment = "fab"
vlan = 100
mtu = 1400

[networks.flat]
segment = "fab"
mtu = 1400
"""


def _shared_host(mode: str) -> str:
    # an untagged network in the same bridge; a macvtap's uplink cannot be a bridge port
    flat = '[networks.flat]\nmode = "bridge"\nuplink = "up0"\n' if mode == "bridge" else ""
    return f"""[host]
name = "{HOST}"
features = ["tun", "macvtap", "bridge", "vhost-net"]

[uplinks.up0]
segments = ["fab"]
mtu = 9000

[networks.tagged]
mode = "{mode}"
uplink = "up0"

{flat}"""


def _guest_mtu(name: str, network: str, n: int, mtu: int | None) -> str:
    line = f"mtu = {mtu}\n" if mtu else ""
    return (f'[guest]\nname = "{name}"\nhost = "{HOST}"\n\n[[nics]]\nnetwork = "{network}"\n'
            f'mac = "52:54:00:a7:00:{n:02x}"\n{line}')


def _link(name: str) -> dict | None:
    done = subprocess.run(["ip", "-d", "-j", "link", "show", name], capture_output=True,
                          text=True, check=False)
    return json.loads(done.stdout)[0] if done.returncode == 0 else None


@pytest.mark.parametrize("mode", ["macvtap-bridge", "bridge"])
def test_a_shared_device_gets_back_what_the_last_guest_needing_it_changed(
        mode: str, fleet, tmp_path: Path) -> None:
    """What the agreement cases neighbour-mtu and shared-bridge found, for several guests:
    g1 made the device (uplink.VLAN at MTU 1400; or the bridge, for an untagged network);
    g2 and g3 need more of it (MTU 1450 and 1500), g4 less (MTU 1300, never lowered); or
    g2, g3 and g4 all need VLAN filtering. Released one by one, the device keeps what a
    remaining guest needs and gets its old value back when the last such guest goes."""
    from netmap.load import load_fleet
    from netmap.netlink.apply import realize_plan, release_guest
    from netmap.plan.planner import build_plan
    from netmap.query.graph import build_graph

    subprocess.run(["ip", "link", "add", "up0", "mtu", "9000", "type", "dummy"], check=True)
    try:
        first = ("g1", "flat" if mode == "bridge" else "tagged", None)
        guests = [first, ("g2", "tagged", 1450), ("g3", "tagged", 1500),
                  ("g4", "tagged", 1300)]
        root = fleet(SHARED_NETWORKS, _shared_host(mode),
                     {name: _guest_mtu(name, net, n, mtu)
                      for n, (name, net, mtu) in enumerate(guests)})
        loaded = load_fleet(root)
        assert not loaded.problems, [str(problem) for problem in loaded.problems]
        graph = build_graph(loaded)
        state = tmp_path / "state"

        def realize(name: str) -> None:
            realize_plan(build_plan(graph, loaded.guests[name], loaded.hosts[HOST]),
                         state_dir=state)

        def release(name: str) -> None:
            release_guest(HOST, name, None, state_dir=state)

        def shared() -> object:
            if mode == "bridge":
                return _link("br-up0")["linkinfo"]["info_data"]["vlan_filtering"]
            return _link("up0.100")["mtu"]

        realize("g1")
        before = shared()
        for name in ("g2", "g3", "g4"):
            realize(name)
        changed = shared()
        assert changed == (1 if mode == "bridge" else 1500)
        assert before == (0 if mode == "bridge" else 1400)
        release("g2")  # g3 still needs the change
        assert shared() == changed
        release("g3")  # g4 needs VLAN filtering too, not the larger MTU
        assert shared() == (changed if mode == "bridge" else before)
        release("g4")
        assert shared() == before
        release("g1")
        assert _link("up0.100") is None
        assert _link("br-up0") is None
    finally:
        subprocess.run(["ip", "link", "del", "up0"], check=False)
