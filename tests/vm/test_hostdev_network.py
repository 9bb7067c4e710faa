"""libvirt's own hostdev network beside netmap on one PF: a private libvirtd in the VM (the
machine's libvirt 9.0 and QEMU 7.2, scripts/libvirt_lab.py's daemon in the VM's own network
namespace, where the PF is) defines `<forward mode='hostdev' managed='yes'><pf dev=PF/>`
and starts a guest on it. libvirt itself unbinds the VF it picks from igbvf, binds it to
vfio-pci, sets the guest's MAC and VLAN on the PF's entry, and QEMU opens the VF through
VFIO; after `virsh destroy` it gives the VF back to igbvf. netmap, acting on the same PF in
between, must see what libvirt holds as used and what it gave back as free.

Everything is read back through sysfs, iproute2 and /proc, not through netmap's own code.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_sriov import NETWORKS, claimed, has_carrier, host_mapping, pci_driver, vf_netdev
from vmhost import HOST, guest, host_dump, ip, set_numvfs, vf_entries, wait_until

from netmap.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import libvirt_lab  # scripts/ is not a package
from libvirt_lab import PrivateLibvirtd

pytestmark = [pytest.mark.vm,
              pytest.mark.skipif(libvirt_lab.missing() is not None,
                                 reason=str(libvirt_lab.missing()))]

POOL = "nmhd-pool"
DOMAIN = "nmhd-guest"
GUEST_MAC = "52:54:00:6d:00:01"
GUEST_VLAN = 300


def network_xml(pf: str) -> str:
    return f"""<network>
  <name>{POOL}</name>
  <forward mode='hostdev' managed='yes'><pf dev='{pf}'/></forward>
</network>
"""


# Debian's QEMU 7.2 failed libvirt's capability probe in the VM (which sees QEMU 10's module
# dir where 7.2 looks for its own modules: scripts/vmlab-install's wrapper covers it), so
# libvirt runs the lab's QEMU 10, found first on its PATH. <acpi/>: libvirt 9.0 passes
# -no-acpi, which QEMU 10 no longer takes, to a guest without it.
QEMU = os.environ.get("NETMAP_VMLAB_QEMU", "/opt/netmap-vmlab/bin/qemu-system-x86_64")
DOMAIN_XML = f"""<domain type='qemu'>
  <name>{DOMAIN}</name>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <features><acpi/></features>
  <devices>
    <emulator>{QEMU}</emulator>
    <interface type='network'>
      <mac address='{GUEST_MAC}'/>
      <source network='{POOL}'/>
      <vlan><tag id='{GUEST_VLAN}'/></vlan>
    </interface>
    <memballoon model='none'/>
  </devices>
</domain>
"""


@pytest.fixture
def libvirtd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PrivateLibvirtd]:
    """A private libvirtd in the VM's own network namespace, without netmap's hook; its
    guests, daemon and tree are gone afterwards, also when the test failed."""
    # as on a hypervisor that gives VFs to guests (and as test_sriov's vfio test does)
    subprocess.run(["modprobe", "vfio-pci"], check=True)
    monkeypatch.setenv("PATH", f"{Path(QEMU).parent}:{os.environ['PATH']}")
    root = Path(tempfile.mkdtemp(prefix="nmhd-libvirt-"))
    daemon = PrivateLibvirtd(root / "daemon", None, HOST, None)
    try:
        daemon.start(tmp_path / "capabilities", timeout=240)  # ~20 s: QEMU's capabilities
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def two_vf_pf(sriov_pf: str) -> str:
    set_numvfs(sriov_pf, 2)  # sriov_pf puts 0 back after
    return sriov_pf


def qemu_pid(daemon: PrivateLibvirtd) -> int:
    return int((daemon.root / f"run/libvirt/qemu/{DOMAIN}.pid").read_text().strip())


def open_files(pid: int) -> list[str]:
    out = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed since the listing
            out.append(os.readlink(fd))
    return out


def test_libvirt_hostdev_network_guest_and_netmap_share_a_pf(
        two_vf_pf, libvirtd, fleet, capsys, tmp_path) -> None:
    """A PF with 2 VFs. While libvirt's guest holds one: vfio-pci, QEMU's VFIO fds, its MAC
    and VLAN on the entry; discover, drift and check --live count it used; realize takes
    the other and refuses a second guest with the host unchanged. After destroy: igbvf,
    free, claimed by that guest. Started again, libvirt takes that VF from netmap (its
    pool counts only its own guests), drift says VF_CLAIM_TAKEN, and realize refuses to
    set the entry back under that guest."""
    pf = two_vf_pf
    ip("link", "set", pf, "up")  # a host in service: check --live then judges the pool
    wait_until(lambda: has_carrier(pf), f"{pf}'s carrier")
    before = vf_entries(pf)
    drivers = [pci_driver(pf, i) for i in range(2)]
    assert drivers == ["igbvf", "igbvf"]

    (tmp_path / "net.xml").write_text(network_xml(pf))
    libvirtd.virsh("net-define", str(tmp_path / "net.xml"))
    libvirtd.virsh("net-start", POOL)
    (tmp_path / "dom.xml").write_text(DOMAIN_XML)
    libvirtd.virsh("define", str(tmp_path / "dom.xml"))
    # paused: QEMU realizes its devices (vfio-pci opens the VF) before any vCPU runs
    libvirtd.virsh("start", "--paused", DOMAIN)
    assert libvirtd.virsh("domstate", DOMAIN).stdout.split() == ["paused"]

    taken = [i for i in range(2) if pci_driver(pf, i) == "vfio-pci"]
    assert len(taken) == 1, [pci_driver(pf, i) for i in range(2)]
    (vf,) = taken
    other = 1 - vf
    group = Path(f"/sys/class/net/{pf}/device/virtfn{vf}/iommu_group").resolve().name
    files = open_files(qemu_pid(libvirtd))
    assert f"/dev/vfio/{group}" in files, files  # QEMU holds the VF through VFIO
    assert "anon_inode:[vfio-device]" in files, files
    entry = next(e for e in vf_entries(pf) if e["vf"] == vf)
    assert (entry["mac"], entry["vlan"]) == (GUEST_MAC, GUEST_VLAN), vf_entries(pf)

    macs = {"g1": "52:54:00:5e:06:01", "g2": "52:54:00:5e:06:02"}
    guests = {name: guest(name, ("storage", mac)) for name, mac in macs.items()}
    # g2 comes from another host: the mapping admits it here (2 VFs, g1 planned), the live
    # host does not
    guests["g2"] = guests["g2"].replace(f'host = "{HOST}"', 'host = "nmvm-src"')
    root = fleet(NETWORKS, host_mapping(pf, total_vfs=2), guests)
    (root / "hosts" / "nmvm-src.toml").write_text(
        host_mapping(pf).replace(f'name = "{HOST}"', 'name = "nmvm-src"'))

    def discover_pool() -> dict:
        capsys.readouterr()
        assert main(["discover", "--json"]) == 0
        return {p["pf"]: p for p in json.loads(capsys.readouterr().out)["sriov"]}[pf]

    def findings(*argv: str) -> tuple[int, list[dict]]:
        capsys.readouterr()
        code = main([*argv, "--json"])
        return code, json.loads(capsys.readouterr().out)["findings"]

    pool = discover_pool()
    assert [vf_["used_by"] for vf_ in pool["vfs"]][vf] == "bound to vfio-pci", pool
    assert (pool["used_vfs"], pool["free_vfs"]) == (1, 1), pool
    code, found = findings("drift", HOST)
    low = [f for f in found if f["code"] == "VF_FREE_LOW"]
    assert code == 1, found
    assert len(low) == 1, found
    assert f"VF {vf} (bound to vfio-pci)" in low[0]["message"], low
    assert findings("check", "g2", "--to", HOST)[0] == 0
    code, found = findings("check", "g2", "--to", HOST, "--live")
    assert (code, [f["code"] for f in found if f["severity"] == "error"]) == (
        1, ["VF_FREE_LOW"]), found

    assert main(["realize", "g1", "--host", HOST]) == 0
    assert claimed(pf, macs["g1"])["vf"] == other
    full = (host_dump(), vf_entries(pf), [pci_driver(pf, i) for i in range(2)])
    capsys.readouterr()
    assert main(["realize", "g2", "--host", HOST]) == 3
    err = capsys.readouterr().err
    assert "no free VF" in err, err
    assert f"VF {vf}: bound to vfio-pci" in err, err
    assert (host_dump(), vf_entries(pf), [pci_driver(pf, i) for i in range(2)]) == full

    libvirtd.virsh("destroy", DOMAIN)
    wait_until(lambda: pci_driver(pf, vf) == "igbvf"
               and any(Path(f"/sys/class/net/{pf}/device/virtfn{vf}/net").glob("*")),
               f"VF {vf} back on igbvf with a netdev")
    # the new netdev is eth0 until udev renames it: let udev finish first
    subprocess.run(["udevadm", "settle", "--timeout=30"], check=True)
    entry = next(e for e in vf_entries(pf) if e["vf"] == vf)
    netdev = vf_netdev(pf, vf)
    own_mac = json.loads(ip("-j", "link", "show", netdev))[0]["address"]
    as_found = next(e for e in before if e["vf"] == vf)
    # the guest's MAC and VLAN are gone from the entry; what MAC it shows is igbvf's,
    # chosen for itself when it probed the VF again
    assert entry == {**as_found, "mac": own_mac}, (entry, as_found)

    pool = discover_pool()
    assert pool["vfs"][vf]["used_by"] is None, pool
    assert main(["realize", "g2", "--host", HOST]) == 0
    assert claimed(pf, macs["g2"])["vf"] == vf

    # The pool's count is libvirt's own: with both VFs netmap's, it takes its first again,
    # g2's, and drift reports netmap's claim taken
    libvirtd.virsh("start", "--paused", DOMAIN)
    assert (pci_driver(pf, vf), pci_driver(pf, other)) == ("vfio-pci", "igbvf")
    entry = next(e for e in vf_entries(pf) if e["vf"] == vf)
    assert (entry["mac"], entry["vlan"]) == (GUEST_MAC, GUEST_VLAN), vf_entries(pf)
    code, found = findings("drift", HOST)
    taken = [f for f in found if f["code"] == "VF_CLAIM_TAKEN"]
    assert code == 1, found
    assert len(taken) == 1, found
    assert f"VF {vf} of {pf}" in taken[0]["message"], taken
    assert "g2" in taken[0]["message"], taken
    assert GUEST_MAC in taken[0]["message"], taken
    # and realize does not take it back from under that running guest
    assert main(["realize", "g2", "--host", HOST]) == 3
    entry = next(e for e in vf_entries(pf) if e["vf"] == vf)
    assert (entry["mac"], entry["vlan"]) == (GUEST_MAC, GUEST_VLAN), vf_entries(pf)
    assert pci_driver(pf, vf) == "vfio-pci"
    libvirtd.virsh("destroy", DOMAIN)
    wait_until(lambda: pci_driver(pf, vf) == "igbvf", f"VF {vf} back on igbvf")
    for name in ("g1", "g2"):
        assert main(["release", name, "--host", HOST]) == 0
    ip("link", "set", pf, "down")
