"""check agrees with realize (issue 13, item 6): generated cases and the assertion, shared by
the namespace tier (tests/test_check_agrees.py) and the VM tier (tests/vm/).

A case is a fleet (networks.toml, a source host, a destination host, the guest under test
and the guests already placed on the destination) covering one mode (bridge, vxlan with a
group or with remotes, macvtap bridge/vepa/private/passthrough, sriov-vf handed over whole
or as macvtap, ovs; and a move from a Linux-bridge host to an OVS host and back), with or
without a VLAN, and one variation: MTUs at and around the limit, capacity (VF pool,
passthrough uplink taken, max_guests, max_endpoints), a MAC in use, each topology
difference check knows, and an OVS bridge the operator made before (of the other datapath
than the binding asks for, or holding the uplink as its port; or another bridge holding the
uplink, where the host is not what the mapping says and `check --live` is the check that
must agree, Case.live_check). The live destination is
built as its mapping says (uplinks with the mapping's names and MTUs, its Open vSwitch, the
placed guests realized there first), so that "the host is what the mappings say" holds and
check's verdict must be realize's:

* check compatible -> realize succeeds (and release leaves the host as it was);
* check incompatible -> `netmap realize` refuses (exit 1, nothing changed), and with
  --force realize fails at the step the finding names (EXPECTED_STEP), with every change
  undone; or, for a finding about the topology rather than the host (BUILDS: the host can
  build it, the guest would just land elsewhere or differently), --force builds it, which
  is what --force is for; a network the host does not bind cannot even be planned.

A tier whose kernel lacks what a case needs (802.1Q, bridge VLAN filtering, SR-IOV, OVS's
kernel datapath) must refuse it up front (netmap.netlink.kernel_support), nothing changed;
such cases are the VM tier's to prove (`Outcome.needs_vm`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from ovs_lab import OvsInstance
from steady import steady_link

from netmap.cli import main
from netmap.errors import ApplyError
from netmap.load import load_fleet
from netmap.model import names
from netmap.model.fleet import Fleet, Host
from netmap.netlink.apply import realize_plan, release_guest
from netmap.netlink.kernel_support import KernelProbe, UnsupportedKernel
from netmap.plan import ClaimVf, CreateMacvtap
from netmap.plan.planner import build_plan
from netmap.query.graph import build_graph, needed_mtu
from netmap.rules.check import Report, check_migration
from netmap.state import HostState

GUEST = "vm"
SOURCE = "src"
MAC = "52:54:00:a6:00:01"
# ovs-from-bridge: the guest moves from a Linux-bridge host to an OVS host (the
# destination's mode first), bridge-from-ovs back
MODES = ("bridge", "vxlan-group", "vxlan-remotes", "vxlan6-group", "vxlan6-remotes",
         "macvtap-bridge", "macvtap-vepa",
         "macvtap-private", "macvtap-passthrough", "sriov-hostdev", "sriov-macvtap",
         "ovs", "ovs-from-bridge", "bridge-from-ovs")
VARIANTS = ("plain", "two-nics", "mtu-exact", "mtu-uplink", "mtu-binding", "guest-mtu",
            "vlan-mismatch", "segment", "semantic-pinned", "vhost-required", "unbound",
            "vxlan-port", "vxlan-peers", "vxlan-family", "neighbour", "vf-pool",
            "max-guests", "max-endpoints", "neighbour-mtu", "shared-bridge", "mac-in-use",
            "mac-in-use-same", "mac-duplicate", "long-uplink", "ovs-bridge-exists",
            "ovs-uplink-port", "ovs-uplink-elsewhere", "ovs-uplink-access")
# A mixed move differs from the destination's own mode only in what check compares with
# the source (MTU, VLAN, class, the L2 domain a MAC is in): the variants about the
# destination alone run in the modes of its own.
MIXED = ("ovs-from-bridge", "bridge-from-ovs")
MIXED_VARIANTS = ("plain", "mtu-exact", "mtu-uplink", "mtu-binding", "guest-mtu",
                  "vlan-mismatch", "semantic-pinned", "mac-duplicate")
# the datapath of an OVS bridge the live host cannot run: the other one
OTHER_DATAPATH = {"netdev": "system", "system": "netdev"}
# vxlan peers per address family: (group, other group, remotes); the underlay's own
# address is UNDERLAY[family] (the live host gives its uplink that one)
PEERS = {4: ("239.1.1.1", "239.1.1.2", ("10.250.0.2", "10.250.0.3")),
         6: ("ff05::101", "ff05::102", ("fd00:250::2", "fd00:250::3"))}
UNDERLAY = {4: "10.250.0.1/24", 6: "fd00:250::1/64"}

# finding -> the step kind realize --force fails at (a refusal before any change, or the
# kernel's refusal of that step, rolled back). MTU_TOO_SMALL: the uplink where it cannot
# carry the guest's MTU (the plan asks it for that), else the vxlan device where other
# guests use it at the smaller MTU, else it builds; NAME_TOO_LONG by the role of the
# device (see NAME_STEP); MAC_IN_USE where the two endpoints are macvtaps on one lower
# device (the kernel refuses a second macvlan with a MAC in use, EADDRINUSE), or at the VF
# claim where the two are VFs of one PF (netmap refuses one MAC on two VF entries).
EXPECTED_STEP = {"NO_FREE_VF": "vf", "UPLINK_TAKEN": "macvtap",
                 "OVS_UPLINK_WRONG_BRIDGE": "ovs-port", "OVS_UPLINK_NOT_TRUNK": "ovs-port"}
NAME_STEP = {"vlan": "vlan-link", "bridge": "bridge", "vxlan": "vxlan", "tap": "tap",
             "macvtap": "macvtap"}
INVALID = "not a fleet: a placed guest does not fit its host"
PLAN_PROBLEM = frozenset({"NETWORK_UNBOUND"})
# About the topology, not the host: the destination can build it (realize --force does).
BUILDS = frozenset({"SEGMENT_UNREACHABLE", "VLAN_MISMATCH", "SEMANTIC_CHANGED",
                    "VXLAN_PORT_MISMATCH", "VXLAN_PEERS_MISMATCH", "MAC_DUPLICATE",
                    "VHOST_MISSING", "HOST_FULL"})


@dataclass(frozen=True)
class Case:
    name: str
    files: dict[str, str]  # path under the mappings directory -> text
    dest: str
    neighbours: tuple[str, ...] = ()  # guests placed on dest: realized there first
    guest: str = GUEST
    # OVS bridges the operator made on dest before: (name, datapath type, ports, each
    # its name and any column=value for ovs-vsctl add-port, space-separated)
    ovs_bridges: tuple[tuple[str, str, tuple[str, ...]], ...] = ()
    # the live host differs from the mapping where only `check --live` can see it (an
    # uplink in another OVS bridge, or not a trunk): that check is the one realize must
    # agree with
    live_check: bool = False


@dataclass
class Outcome:
    case: str
    compatible: bool
    codes: tuple[str, ...]
    result: str  # realized | refused at <kind> | plan problem
    needs_vm: str | None = None  # what this tier's kernel lacks for the case, if anything
    warnings: tuple[str, ...] = ()


class LiveHost(Protocol):
    """The destination as a real host of one tier: built from its mapping, read back."""

    name: str
    netns: str | None  # what the destination's mapping says (a lab namespace, or none)
    pf: str  # the SR-IOV PF's name (its pool is set to the mapping's total_vfs)
    sysfs_root: str | None
    probe: KernelProbe | None

    def build(self, host: Host, ovs_bridges: tuple[tuple[str, str, tuple[str, ...]], ...],
              ) -> None: ...
    def clear(self, host: Host) -> None: ...
    def dump(self) -> object: ...
    def lacks_sriov(self) -> bool: ...


# --- the cases -------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Params:
    mode: str
    vlan: int | None
    variant: str
    uplink: str = "up0"
    uplink_mtu: int = 1500
    segments: tuple[str, ...] = ("fab",)
    network_mtu: int = 1500
    binding_mtu: int | None = None
    binding_vlan: int | None = None
    nic_mtu: int | None = None
    semantic: str | None = None
    vhost: str = "preferred"
    nics: int = 1
    bound: bool = True
    port: int = 4789
    family: int = 4  # vxlan: the destination's underlay family
    other_group: bool = False  # vxlan: the destination floods to another group
    total_vfs: int = 2
    max_guests: int | None = None
    max_endpoints: int | None = None
    neighbour: str | None = None  # the network a placed guest uses: "net" or "aux"
    neighbour_mac: str = "52:54:00:a6:00:99"
    aux_shares: bool = False  # network aux (MTU 1400) in net's bridge, else bridged on up1
    far_mac: str | None = None  # a guest on the source host with this MAC on `net`
    # ovs: the datapath the live host runs (a binding's, unless `binding_datapath`), its
    # OVSDB, and an OVS bridge the operator made before (of the host's datapath; with
    # the uplink as its port or not)
    datapath: str = "netdev"
    binding_datapath: str | None = None
    ovsdb: str | None = None
    existing_bridge: bool = False
    existing_uplink_port: bool = False
    existing_name: str | None = None  # the operator's bridge, if not the binding's
    existing_uplink_tag: int | None = None  # the uplink its access port of this VLAN


def _ends(mode: str) -> tuple[str, str]:
    """(the source's generated mode, the destination's) for a generated mode."""
    if mode in MIXED:
        dest, source = mode.split("-from-")
        return source, dest
    return mode, mode


def _mode_parts(mode: str, datapath: str = "netdev") -> tuple[str, dict[str, str]]:
    """(binding mode, extra binding keys) for one end's generated mode."""
    if mode.startswith("vxlan"):
        return "vxlan", {}
    if mode.startswith("sriov-"):
        return "sriov-vf", {"vf_attach": f'"{mode.removeprefix("sriov-")}"'}
    if mode == "ovs":
        return "ovs", {"datapath_type": f'"{datapath}"'}
    return mode, {}


def _variant(p: _Params) -> _Params | None:
    """The parameters of one variant, or None where it says nothing for this mode."""
    overlay, sriov = p.mode.startswith("vxlan"), p.mode.startswith("sriov")
    overhead = (70 if p.mode.startswith("vxlan6") else 50) if overlay else 0
    dest_mode = _ends(p.mode)[1]
    v = p.variant
    if p.mode in MIXED and v not in MIXED_VARIANTS:
        return None
    if v == "plain":
        return p
    if v == "two-nics":
        return replace(p, nics=2)
    if v == "mtu-exact":  # the uplink carries exactly what the guest needs
        return replace(p, network_mtu=1400, uplink_mtu=1400 + overhead)
    if v == "mtu-uplink":  # one byte short on the uplink (vxlan: with its overhead)
        return replace(p, network_mtu=1400, uplink_mtu=1399 + overhead)
    if v == "mtu-binding":  # the binding gives less than the network, the uplink could carry it
        return replace(p, network_mtu=1400, binding_mtu=1300, uplink_mtu=1500 + overhead)
    if v == "guest-mtu":  # the guest is configured above the network's MTU
        return replace(p, nic_mtu=1450, network_mtu=1400, uplink_mtu=1400 + overhead)
    if v == "vlan-mismatch":
        return None if overlay else replace(p, binding_vlan=300)
    if v == "segment":
        return None if overlay else replace(p, segments=("elsewhere",))
    if v == "semantic-pinned":
        return replace(p, semantic="isolated" if p.mode != "macvtap-private" else "dedicated")
    if v == "vhost-required":
        return replace(p, vhost="required")
    if v == "unbound":
        return replace(p, bound=False)
    if v == "vxlan-port":
        return replace(p, port=4790) if overlay else None
    if v == "vxlan-peers":  # another group; or a group where the source has remotes
        return replace(p, other_group=True) if overlay else None
    if v == "vxlan-family":  # the same kind of peers, of the other address family
        return replace(p, family=10 - p.family) if overlay else None
    if v == "mac-duplicate":  # a guest on another host, on the same L2 domain, has the MAC
        return replace(p, far_mac=MAC)
    if v == "neighbour":
        return replace(p, neighbour="net")
    if v == "neighbour-mtu":  # a placed guest's endpoint at the network's MTU, ours above
        return replace(p, neighbour="net", nic_mtu=1450, network_mtu=1400,
                       uplink_mtu=1500 + overhead)
    if v == "shared-bridge":  # another network in the same bridge, at its own MTU
        return replace(p, neighbour="aux", aux_shares=True) if dest_mode in (
            "bridge", "ovs") else None
    if v == "ovs-bridge-exists":  # the operator's OVS bridge, of the datapath the host runs
        return replace(p, existing_bridge=True, binding_datapath=OTHER_DATAPATH[
            p.datapath]) if p.mode == "ovs" else None
    if v == "ovs-uplink-port":  # ... with the uplink already its port
        return replace(p, existing_bridge=True, existing_uplink_port=True) if (
            p.mode == "ovs") else None
    if v == "ovs-uplink-elsewhere":  # ... another bridge of the operator's holds the uplink
        return replace(p, existing_bridge=True, existing_uplink_port=True,
                       existing_name="br-other") if p.mode == "ovs" else None
    if v == "ovs-uplink-access":  # ... the binding's bridge, the uplink an access port there
        return replace(p, existing_bridge=True, existing_uplink_port=True,
                       existing_uplink_tag=7) if p.mode == "ovs" else None
    if v == "vf-pool":
        return replace(p, neighbour="net", total_vfs=1) if sriov else None
    if v == "max-guests":
        return replace(p, neighbour="aux", max_guests=1)
    if v == "max-endpoints":
        return replace(p, neighbour="aux", max_endpoints=2, nics=2)
    if v == "mac-in-use":
        return replace(p, neighbour="aux", neighbour_mac=MAC)
    if v == "mac-in-use-same":
        return None if p.mode == "macvtap-passthrough" else replace(
            p, neighbour="net", neighbour_mac=MAC)
    if v == "long-uplink":
        return None if sriov else replace(p, uplink="enp129s0f0np0")
    raise AssertionError(v)


def _network(p: _Params, source: bool) -> str:
    mode, _ = _mode_parts(_ends(p.mode)[1])
    if mode == "vxlan":
        return f"[networks.net]\nvni = 5001\nmtu = {p.network_mtu}\n"
    vlan = f"vlan = {p.vlan}\n" if p.vlan is not None else ""
    del source
    return f'[networks.net]\nsegment = "fab"\n{vlan}mtu = {p.network_mtu}\n'


def _binding(p: _Params, uplink: str, *, dest: bool) -> str:
    mode, extra = _mode_parts(_ends(p.mode)[dest], p.binding_datapath or p.datapath)
    lines = [f'mode = "{mode}"', f'uplink = "{uplink}"',
             *(f"{k} = {v}" for k, v in extra.items())]
    if dest and p.binding_mtu is not None:
        lines.append(f"mtu = {p.binding_mtu}")
    if dest and p.binding_vlan is not None:
        lines.append(f"vlan = {p.binding_vlan}")
    if mode == "vxlan":
        source_family = 6 if p.mode.startswith("vxlan6") else 4
        family = p.family if dest else source_family
        group, other, remotes = PEERS[family]
        if p.mode.endswith("-group") or (dest and p.other_group):
            peers = f'group = "{other if dest and p.other_group else group}"'
        else:
            peers = f"remotes = {json.dumps(list(remotes))}"
        port = f", port = {p.port}" if dest else ""
        lines.append(f"vxlan = {{ {peers}{port} }}")
    return "\n".join(lines) + "\n"


def _host(name: str, p: _Params, *, dest: bool, netns: str | None, pf: str) -> str:
    mode, extra = _mode_parts(_ends(p.mode)[dest], p.binding_datapath or p.datapath)
    features = '"tun", "macvtap", "vxlan", "bridge", "sriov"' + (
        "" if dest and p.variant == "vhost-required" else ', "vhost-net"')
    head = [f'[host]\nname = "{name}"\nfeatures = [{features}]']
    if dest and netns:
        head.append(f'netns = "{netns}"')
    if dest and p.ovsdb:  # a binding of the placed guests may be ovs too
        head.append(f'ovsdb = "{p.ovsdb}"')
    if dest and p.max_guests is not None:
        head.append(f"max_guests = {p.max_guests}")
    if dest and p.max_endpoints is not None:
        head.append(f"max_endpoints = {p.max_endpoints}")
    uplink = (pf if mode == "sriov-vf" else p.uplink) if dest else (
        "srcpf" if mode == "sriov-vf" else "eth9")
    segments = ", ".join(f'"{s}"' for s in (p.segments if dest else ("fab",)))
    mtu = p.uplink_mtu if dest else 9000
    text = "\n".join(head) + f"\n\n[uplinks.{uplink}]\nsegments = [{segments}]\nmtu = {mtu}\n"
    if mode == "sriov-vf":
        text += f"sriov = {{ total_vfs = {p.total_vfs if dest else 8} }}\n"
    if dest:
        text += '\n[uplinks.up1]\nsegments = ["fab"]\nmtu = 1500\n'
        # in the bridge of `net` when it shares its uplink (an OVS port is on one bridge)
        aux_mode, aux_extra, aux_uplink = (mode, extra, uplink) if p.aux_shares else (
            "bridge", {}, "up1")
        text += (f'\n[networks.aux]\nmode = "{aux_mode}"\nuplink = "{aux_uplink}"\n'
                 + "".join(f"{k} = {v}\n" for k, v in aux_extra.items()))
    if p.bound or not dest:
        text += f"\n[networks.net]\n{_binding(p, uplink, dest=dest)}"
    return text


def _guest(name: str, host: str, nics: list[dict[str, object]]) -> str:
    text = f'[guest]\nname = "{name}"\nhost = "{host}"\n'
    for nic in nics:
        text += "\n[[nics]]\n" + "".join(
            f"{k} = {json.dumps(v)}\n" for k, v in nic.items() if v is not None)
    return text


def _case(p: _Params, dest: str, netns: str | None, pf: str) -> Case:
    macs = [MAC, "52:54:00:a6:00:02"]
    nics = [{"network": "net", "mac": macs[i], "vhost": p.vhost, "semantic": p.semantic,
             "mtu": p.nic_mtu} for i in range(p.nics)]
    files = {
        "networks.toml": _network(p, source=False)
        + '\n[networks.aux]\nsegment = "fab"\nmtu = 1400\n',
        f"hosts/{SOURCE}.toml": _host(SOURCE, p, dest=False, netns=None, pf=pf),
        f"hosts/{dest}.toml": _host(dest, p, dest=True, netns=netns, pf=pf),
        f"guests/{GUEST}.toml": _guest(GUEST, SOURCE, nics),
    }
    if p.far_mac:
        files["guests/far.toml"] = _guest("far", SOURCE, [{"network": "net",
                                                           "mac": p.far_mac}])
    neighbours: tuple[str, ...] = ()
    if p.neighbour:
        files["guests/nb.toml"] = _guest("nb", dest, [{"network": p.neighbour,
                                                      "mac": p.neighbour_mac}])
        neighbours = ("nb",)
    bridges = ()
    if p.existing_bridge:
        tag = f" tag={p.existing_uplink_tag}" if p.existing_uplink_tag is not None else ""
        ports = (p.uplink + tag,) if p.existing_uplink_port else ()
        bridges = ((p.existing_name or names.bridge_name(p.uplink), p.datapath, ports),)
    vlan = f"vlan{p.vlan}" if p.vlan else "untagged"
    return Case(f"{p.mode}-{vlan}-{p.variant}", files, dest, neighbours, ovs_bridges=bridges,
                live_check=p.existing_name is not None or p.existing_uplink_tag is not None)


def generate(dest: str, netns: str | None = None, pf: str = "pf0",
             modes: tuple[str, ...] = MODES, variants: tuple[str, ...] = VARIANTS,
             *, ovsdb: str | None = None, datapath: str = "netdev") -> list[Case]:
    """Every mode, untagged and on VLAN 100 (overlays: untagged only), with each variant
    that applies to it: one dimension varied at a time from a case that fits. `ovsdb`
    and `datapath`: the destination's Open vSwitch (its socket, the datapath it runs)."""
    cases = []
    for mode in modes:
        for vlan in (None,) if mode.startswith("vxlan") else (None, 100):
            for variant in variants:
                base = _Params(mode, vlan, variant, family=6 if "vxlan6" in mode else 4,
                               uplink_mtu=1600 if mode.startswith("vxlan") else 1500,
                               datapath=datapath, ovsdb=ovsdb)
                params = _variant(base)
                if params is not None:
                    cases.append(_case(params, dest, netns, pf))
    return cases


def combined(dest: str, mode: str, vlan: int | None, variants: tuple[str, ...],
             netns: str | None = None, pf: str = "pf0", *, ovsdb: str | None = None,
             datapath: str = "netdev") -> Case | None:
    """One case with several variants applied in turn (None where one does not apply to
    the mode): interactions the one-at-a-time cases of `generate` do not reach."""
    params = _Params(mode, vlan, "plain", family=6 if "vxlan6" in mode else 4,
                     uplink_mtu=1600 if mode.startswith("vxlan") else 1500,
                     datapath=datapath, ovsdb=ovsdb)
    for variant in variants:
        applied = _variant(replace(params, variant=variant))
        if applied is None:
            return None
        params = applied
    live = params.existing_name is not None or params.existing_uplink_tag is not None
    if live and (params.neighbour == "net" or params.aux_shares):
        return None  # the live difference refuses the placed guest too: nothing to compare
    case = _case(params, dest, netns, pf)
    vlan_text = f"vlan{vlan}" if vlan else "untagged"
    return replace(case, name=f"{mode}-{vlan_text}-{'+'.join(variants)}")


# The VM tier's share (tests/vm/test_check_agrees_vm.py): the 342 cases of the modes a VM
# proves (every mode but vxlan, which the namespace tier builds in full) cost 4-6 s each
# under TCG, far past the VM tier's 10 minutes; these 40 took 173 s (the 31 before ovs)
# and 46 to 81 s (the nine of ovs on the kernel datapath). Every mode untagged
# and on VLAN 100 (plain), every finding check reports in any case of those modes, each at
# a step kind of its own, preferably tagged (the namespace tier cannot build VLANs), and
# the cases that once found bugs here.
# tests/test_check_agrees.py::test_the_vm_share_covers_every_mode_and_finding holds it to
# that as generate() grows.
VM_CASES = (
    *(f"{mode}-{vlan}-plain" for mode in MODES if not mode.startswith("vxlan")
      for vlan in ("untagged", "vlan100")),
    "bridge-vlan100-mtu-uplink",  # MTU_TOO_SMALL at the uplink
    "macvtap-vepa-vlan100-neighbour-mtu",  # raised on a shared uplink.VLAN, put back
    "bridge-vlan100-shared-bridge",  # VLAN filtering on a shared bridge, put back
    "bridge-vlan100-vlan-mismatch",  # VLAN_MISMATCH
    "bridge-vlan100-mac-duplicate",  # MAC_DUPLICATE
    "macvtap-bridge-vlan100-mac-in-use-same",  # MAC_IN_USE at the macvtap
    "macvtap-bridge-vlan100-semantic-pinned",  # SEMANTIC_CHANGED
    "macvtap-vepa-vlan100-segment",  # SEGMENT_UNREACHABLE
    "macvtap-private-vlan100-long-uplink",  # NAME_TOO_LONG at the 802.1Q link
    "macvtap-private-vlan100-max-guests",  # HOST_FULL
    "macvtap-passthrough-vlan100-neighbour",  # UPLINK_TAKEN
    "macvtap-passthrough-vlan100-unbound",  # NETWORK_UNBOUND
    "sriov-hostdev-vlan100-vf-pool",  # NO_FREE_VF
    "sriov-hostdev-vlan100-mac-in-use-same",  # MAC_IN_USE at the VF claim
    "sriov-macvtap-untagged-mac-in-use-same",  # the same, with a VF macvtap
    "sriov-macvtap-vlan100-two-nics",  # two VFs for one guest
    "sriov-macvtap-vlan100-vhost-required",  # VHOST_MISSING
    # ovs on the kernel datapath: tagged ports in the openvswitch module's datapath, a
    # second network in the same OVS bridge, the operator's bridge of the other datapath
    # used as it is, the operator's bridge holding the uplink as its port
    "ovs-vlan100-shared-bridge",
    "ovs-vlan100-ovs-bridge-exists",
    "ovs-untagged-ovs-uplink-port",
)


# --- the assertion ---------------------------------------------------------------------------

def write(case: Case, root: Path) -> Fleet:
    for relative, text in case.files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    fleet = load_fleet(root)
    assert not fleet.problems, [str(problem) for problem in fleet.problems]
    return fleet


def expected_steps(report: Report, fleet: Fleet, graph, case: Case) -> set[str]:
    """The step kinds realize --force must fail at, from check's errors: empty when every
    error is about the topology (the host can build it)."""
    kinds = set()
    for finding in report.errors:
        if finding.code in BUILDS:
            continue
        if finding.code == "FEATURE_MISSING" and finding.message.startswith("vhost-net "):
            continue  # check --live: the host lacks vhost-net; a tap is built without it
        after = report.pairs[finding.nic][1] if finding.nic is not None else None
        if finding.code == "MTU_TOO_SMALL":
            assert after is not None
            assert finding.nic is not None
            if not _uplink_carries(report, fleet, graph, case, finding.nic):
                kinds.add("require-link")
            elif after.mode == "vxlan" and _placed_on(fleet, case, after.network):
                kinds.add("vxlan")  # placed guests' vxlan device carries less
            continue  # else the mapping gives less than the uplink could carry: builds
        if finding.code == "NAME_TOO_LONG":
            assert after is not None
            kinds.update(NAME_STEP[role] for role, name in after.devices if len(name) > 15)
            continue
        if finding.code == "MAC_IN_USE":
            # two endpoints with one MAC collide on one macvlan lower (the kernel refuses)
            # or on one PF's VF entries (netmap refuses); elsewhere it builds
            kinds.update(_mac_collisions(fleet, graph, case))
            continue
        assert finding.code in EXPECTED_STEP, f"no expectation for {finding.code}"
        kinds.add(EXPECTED_STEP[finding.code])
    return kinds


def _placed_on(fleet: Fleet, case: Case, network: str) -> bool:
    """Whether a guest placed on the destination uses `network` too."""
    return any(nic.network == network for name in case.neighbours
               for nic in fleet.guests[name].nics)


def _uplink_carries(report: Report, fleet: Fleet, graph, case: Case, index: int) -> bool:
    """Whether the destination's uplink (as mapped, and so as built) carries the MTU the
    guest uses on NIC `index`, with the vxlan overhead on an underlay."""
    guest = fleet.guests[case.guest]
    source, after = report.pairs[index]
    need = needed_mtu(graph, guest, guest.nics[index], source)
    host = fleet.hosts[case.dest]
    binding = host.bindings[guest.nics[index].network]
    if binding.mode == "vxlan":
        need += binding.vxlan.overhead if binding.vxlan else 50
    assert after.uplink is not None
    return host.uplinks[after.uplink].mtu >= need


def _mac_collisions(fleet: Fleet, graph, case: Case) -> set[str]:
    """The step kinds where the guest's MAC meets a placed guest's: a macvtap on the same
    lower device, a VF on the same PF."""
    def places(guest: str) -> set[tuple[str, str, str]]:
        plan = build_plan(graph, fleet.guests[guest], fleet.hosts[case.dest])
        return {("macvtap", s.lower, s.mac) if isinstance(s, CreateMacvtap)
                else ("vf", s.pf, s.mac) for _, s in plan.steps
                if isinstance(s, (CreateMacvtap, ClaimVf))}
    ours = places(case.guest)
    return {kind for name in case.neighbours for kind, _, _ in ours & places(name)}


def _lacked(live: LiveHost, err: ApplyError) -> str | None:
    """What this tier lacks, when `err` is the up-front refusal for that lack."""
    if isinstance(err.__cause__, UnsupportedKernel):
        return err.__cause__.problem.split("needs ", 1)[1].split(",", 1)[0]
    kind = getattr(err.step, "kind", None)
    if kind == "vf" and live.lacks_sriov() and "has no SR-IOV" in err.problem:
        return "SR-IOV"
    return None


def _realize_cli(case: Case, root: Path, state_dir: Path) -> int:
    env = {"NETMAP_MAPPINGS": str(root), "NETMAP_STATE_DIR": str(state_dir),
           "NETMAP_HOST": case.dest}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return main(["realize", case.guest, "--host", case.dest, "--as-host"])
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def assert_agrees(case: Case, root: Path, state_dir: Path, live: LiveHost) -> Outcome:
    """Run check, then realize on the live destination, and assert they agree; the host
    is left as it was found (every guest released, the uplinks removed)."""
    fleet = write(case, root)
    graph = build_graph(fleet)
    report = check_migration(graph, case.guest, case.dest)
    host = fleet.hosts[case.dest]
    codes = tuple(f.code for f in report.errors)
    outcome = Outcome(case.name, report.compatible, codes, "",
                      warnings=tuple(f.code for f in report.warnings))
    for name in case.neighbours:  # a placed guest must fit where it is (or it is not there)
        here = check_migration(graph, name, case.dest).errors
        if [f for f in here if f.code not in ("MAC_IN_USE", "MAC_DUPLICATE")]:
            outcome.result = INVALID
            return outcome
    live.build(host, case.ovs_bridges)
    try:
        with _placed(case, fleet, graph, state_dir, live) as (lacked, before):
            if lacked:  # a placed guest already needs what this tier lacks
                outcome.result, outcome.needs_vm = "placed guest refused", lacked
                return outcome
            mapped = not report.compatible  # what realize itself checks before it acts
            if case.live_check:
                report = _with_live(report, fleet, case)
                outcome.compatible = report.compatible
                outcome.codes = tuple(f.code for f in report.errors)
            _agree(case, fleet, graph, report, root, state_dir, live, outcome, before,
                   mapped)
    finally:
        live.clear(host)
    return outcome


def _with_live(report: Report, fleet: Fleet, case: Case) -> Report:
    """`check --live`: the mapping's findings and the live destination's drift that
    concerns the guest (netmap.commands.fleet.live_findings, what the CLI adds)."""
    from netmap.commands.fleet import live_findings

    found = live_findings(fleet, fleet.guests[case.guest], fleet.hosts[case.dest])
    return replace(report, findings=report.findings + found)


@contextlib.contextmanager
def _placed(case: Case, fleet: Fleet, graph, state_dir: Path,
            live: LiveHost) -> Iterator[tuple[str | None, object]]:
    """The guests the mappings place on the destination, realized there; released after,
    and the host then must be exactly as built. Yields what the tier lacked for them (if
    anything) and the host as it is with them."""
    empty = live.dump()
    done: list[str] = []
    lacked = None
    try:
        for name in case.neighbours:
            plan = build_plan(graph, fleet.guests[name], fleet.hosts[case.dest])
            try:
                realize_plan(plan, state_dir=state_dir, sysfs_root=live.sysfs_root,
                             kernel_probe=live.probe)
            except ApplyError as err:
                lacked = _lacked(live, err)
                assert lacked, f"{case.name}: placed guest {name} failed: {err}"
                break
            done.append(name)
        yield lacked, (live.dump() if done else empty)
    finally:
        for name in reversed(done):
            release_guest(case.dest, name, live.netns, state_dir=state_dir)
    now = live.dump()
    assert now == empty, f"{case.name}: the host is not clean after release: {_diff(empty, now)}"
    assert not HostState.load(case.dest, state_dir).guests, f"{case.name}: state not empty"


def _agree(case: Case, fleet: Fleet, graph, report: Report, root: Path, state_dir: Path,
           live: LiveHost, outcome: Outcome, before: object, mapped: bool) -> None:
    """`mapped`: the mappings alone make the guest incompatible (else only `check --live`
    found the host not as mapped)."""
    plan = build_plan(graph, fleet.guests[case.guest], fleet.hosts[case.dest])
    where = f"{case.name} (check: {', '.join(outcome.codes) or 'compatible'})"
    if report.compatible:
        expected: set[str] | None = set()
    else:
        # realize checks the mappings, as check does; what only `check --live` sees, its
        # own decide refuses before any change (exit 3, "nothing was changed")
        assert _realize_cli(case, root, state_dir) == (1 if mapped else 3), (
            f"{where}: realize did not refuse")
        now = live.dump()
        assert now == before, (f"{where}: the refused realize changed the host: "
                               f"{_diff(before, now)}")
        codes = set(outcome.codes)
        expected = None if codes & PLAN_PROBLEM else expected_steps(report, fleet, graph,
                                                                    case)
    if expected is None:  # the network is not bound: realize cannot even plan it
        assert plan.problems, f"{where}: a plan was made"
        try:
            realize_plan(plan, state_dir=state_dir, sysfs_root=live.sysfs_root,
                         kernel_probe=live.probe)
        except ApplyError as err:
            assert err.step is None, f"{where}: {err}"
            assert "has no binding" in err.problem, f"{where}: {err}"
            outcome.result = "plan problem"
            return
        raise AssertionError(f"{where}: realize --force built an unplannable guest")
    try:
        result = realize_plan(plan, state_dir=state_dir, sysfs_root=live.sysfs_root,
                              kernel_probe=live.probe)
    except ApplyError as err:
        kind = getattr(err.step, "kind", None)
        now = live.dump()
        assert now == before, (f"{where}: the failed realize left changes: {err}: "
                               f"{_diff(before, now)}")
        assert HostState.load(case.dest, state_dir).guest(case.guest) is None, where
        lacked = _lacked(live, err)
        outcome.result = f"refused at {kind}"
        if lacked and (kind in expected or "require-link" not in expected):
            # refused for what this tier lacks, before (or at) the step check named; a
            # require-link refusal would have come first (it is decided before support)
            outcome.needs_vm = lacked
            return
        assert expected, f"{where}: check found no host problem, realize failed: {err}"
        assert kind in expected, (f"{where}: realize failed at {kind}, check named "
                                  f"{sorted(expected)}: {err}")
        return
    assert not expected, (f"{where}: realize --force succeeded, check said it fails at "
                          f"{sorted(expected)}")
    assert result.nics, where
    outcome.result = "realized"
    release_guest(case.dest, case.guest, live.netns, state_dir=state_dir)
    after = live.dump()
    assert after == before, f"{where}: release did not restore the host: {_diff(before, after)}"


# --- reading a host back (iproute2, not netmap's own code) ------------------------------------

def host_dump(netns: str | None = None) -> dict[str, object]:
    """Links (full detail, minus counters and timers) with their addresses, and bridge
    VLANs: two iproute2 processes, since a run reads the host a thousand times."""
    def run(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout

    where = ["-n", netns] if netns else []
    links = {}
    for link in json.loads(run("ip", *where, "-d", "-j", "addr", "show")):
        links[link["ifname"]] = steady_link(link)
    bridged = any(link.get("linkinfo", {}).get("info_kind") == "bridge" for link in links.values())
    return {"links": links,
            "vlans": run("bridge", *where, "-j", "vlan", "show") if bridged else ""}


def add_ovs_bridges(ovs: OvsInstance,
                    bridges: tuple[tuple[str, str, tuple[str, ...]], ...]) -> None:
    """The OVS bridges an operator made (no netmap mark): (name, datapath type, ports)."""
    args: list[str] = []
    for name, datapath, ports in bridges:
        args += ["--", "add-br", name, "--", "set", "Bridge", name, f"datapath_type={datapath}"]
        for port in ports:
            args += ["--", "add-port", name, *port.split()]
    if args:
        ovs.vsctl(*args[1:])


@dataclass
class Tally:
    """What a run of cases showed, for the test's summary and its coverage assertions."""

    outcomes: list[Outcome] = field(default_factory=list)

    def add(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)

    def codes(self) -> set[str]:
        return {code for o in self.outcomes for code in o.codes}

    def results(self) -> set[str]:
        return {o.result for o in self.outcomes}


def _diff(before: object, after: object, where: str = "") -> str:
    """Only what differs between two host dumps (down to the key of a link that changed),
    for a message: a link's whole dump would hide the one field that moved."""
    if isinstance(before, dict) and isinstance(after, dict):
        parts = [_diff(before.get(k), after.get(k), f"{where}.{k}" if where else str(k))
                 for k in sorted(set(before) | set(after), key=str)
                 if before.get(k) != after.get(k)]
        return "; ".join(parts)
    return f"{where}: {before!r} -> {after!r}"
