"""The namespace tier's rollback faults (tests/faults.py: Ctrl-C just before and just after
the kernel takes a request, ENOBUFS half-way through a pipelined batch), one at every
netlink send of one realize (the three kinds in turn; the namespace tier tries every kind
at every send of the modes it can build), for the modes only this kernel has: a macvtap
on an 802.1Q sub-interface, a tap on a VLAN-filtering bridge, and two VFs of the real PF
(one handed over whole, one as a passthru macvtap). After each failed realize the host
(`ip -d link`, `bridge vlan`), the PF's VF entries and netmap's state are as before.

strace's SIGINT at every sendto of the CLI (test_rollback_signals) is not repeated here:
it starts one interpreter per send, which under TCG costs far more than the faults it adds.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from faults import enobufs_half_way, faulty_kernel, interrupt_after, interrupt_before
from vmhost import HOST, guest, host_dump, ip, vf_entries

from netmap.errors import ApplyError
from netmap.load import load_fleet
from netmap.netlink.apply import realize_plan, release_guest
from netmap.plan.planner import build_plan
from netmap.query.graph import build_graph
from netmap.state import HostState

pytestmark = pytest.mark.vm
UPLINKS = ("nmvmup0", "nmvmup1")
NETWORKS = """[networks.tagged-mv]
segment = "lab"
vlan = 151

[networks.tagged-br]
segment = "lab"
vlan = 152

[networks.vf-whole]
segment = "lab-storage"
vlan = 153

[networks.vf-mv]
segment = "lab-storage"
vlan = 154
"""


def host_mapping(pf: str) -> str:
    return f"""[host]
name = "{HOST}"
features = ["tun", "macvtap", "bridge", "sriov", "vhost-net"]

[uplinks.nmvmup0]
segments = ["lab"]

[uplinks.nmvmup1]
segments = ["lab"]

[uplinks.{pf}]
segments = ["lab-storage"]
sriov = {{ total_vfs = 4 }}

[networks.tagged-mv]
mode = "macvtap-vepa"
uplink = "nmvmup0"

[networks.tagged-br]
mode = "bridge"
uplink = "nmvmup1"

[networks.vf-whole]
mode = "sriov-vf"
uplink = "{pf}"
spoofchk = false

[networks.vf-mv]
mode = "sriov-vf"
uplink = "{pf}"
vf_attach = "macvtap"
"""


@pytest.fixture
def four_modes(sriov_pf, fleet) -> Iterator[tuple[str, object]]:
    for name in UPLINKS:
        ip("link", "add", name, "type", "dummy")
        ip("link", "set", name, "up")
    root = fleet(NETWORKS, host_mapping(sriov_pf), {"g4": guest(
        "g4", ("tagged-mv", "52:54:00:6b:00:01"), ("tagged-br", "52:54:00:6b:00:02"),
        ("vf-whole", "52:54:00:6b:00:03"), ("vf-mv", "52:54:00:6b:00:04"))})
    loaded = load_fleet(root)
    yield sriov_pf, build_plan(build_graph(loaded), loaded.guests["g4"], loaded.hosts[HOST])
    release_guest(HOST, "g4", None)
    for name in UPLINKS:
        ip("link", "del", name, check=False)


def snapshot(pf: str) -> tuple[dict, list[dict], dict]:
    return host_dump(), vf_entries(pf), HostState.load(HOST).data


def test_a_fault_at_every_netlink_send_leaves_host_pf_and_state_as_before(four_modes) -> None:
    pf, plan = four_modes
    kinds = {type(step).__name__ for _, step in plan.steps}
    assert {"EnsureVlanLink", "CreateMacvtap", "BridgeVlan", "CreateTap", "ClaimVf"} <= kinds
    before = snapshot(pf)
    with pytest.MonkeyPatch.context() as patch:
        sends = faulty_kernel(patch, 0, None)
        assert realize_plan(plan).changed
    total = sends[0]
    realized = snapshot(pf)
    assert len({e["vf"] for e in realized[1] if e["mac"].startswith("52:54:00:6b")}) == 2
    release_guest(HOST, "g4", None)
    assert snapshot(pf) == before, "the counting run's release left changes behind"
    assert total >= 10
    faults = (interrupt_after, interrupt_before, enobufs_half_way)
    for at in range(1, total + 1):
        fault = faults[at % len(faults)]  # each kind at every third send: TCG is slow
        with pytest.MonkeyPatch.context() as patch, \
                pytest.raises((ApplyError, KeyboardInterrupt)) as caught:
            faulty_kernel(patch, at, fault)
            realize_plan(plan)
        if isinstance(caught.value, ApplyError):
            problem = caught.value.problem
            assert ("every change was undone" in problem
                    or "nothing was changed" in problem), problem
        else:  # only before the transaction exists: nothing was touched yet
            assert at == 1, f"{fault.__name__} at send {at}: {caught.value!r}"
        now = snapshot(pf)
        assert now[0] == before[0], f"{fault.__name__} at send {at}: links or VLANs"
        assert now[1] == before[1], f"{fault.__name__} at send {at}: VF entries"
        assert now[2] == before[2], f"{fault.__name__} at send {at}: netmap's state"
    assert realize_plan(plan).changed  # the host is still usable afterwards
    assert snapshot(pf)[1] == realized[1]  # the same two VFs claimed, as the first time
