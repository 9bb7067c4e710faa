"""SR-IOV on a real PF: QEMU's emulated Intel 82576 (igb driver, igbvf VFs), 4 VFs enabled.

Every VF entry is read back through iproute2 (`ip -j link show PF`, IFLA_VFINFO_LIST), not
through netmap's own code.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from vmhost import HOST, guest, host_dump, ip, vf_entries, wait_until

from netmap.cli import main
from netmap.netlink import rtmsg, rtnl

pytestmark = pytest.mark.vm
NETWORKS = """[networks.storage]
segment = "lab-storage"
vlan = 200
mtu = 1500
"""


def host_mapping(pf: str, total_vfs: int = 4, **binding: str) -> str:
    extra = "".join(f"{key} = {value}\n" for key, value in binding.items())
    return f"""[host]
name = "{HOST}"
features = ["tun", "macvtap", "bridge", "sriov", "vhost-net"]

[uplinks.{pf}]
segments = ["lab-storage"]
mtu = 1500
sriov = {{ total_vfs = {total_vfs} }}

[networks.storage]
mode = "sriov-vf"
uplink = "{pf}"
{extra}"""


def vf_netdev(pf: str, index: int) -> str:
    names = [p.name for p in Path(f"/sys/class/net/{pf}/device/virtfn{index}/net").iterdir()]
    assert len(names) == 1, names
    return names[0]


def claimed(pf: str, mac: str) -> dict:
    entries = [e for e in vf_entries(pf) if e["mac"] == mac]
    assert len(entries) == 1, f"{mac} on {len(entries)} VF entries of {pf}: {vf_entries(pf)}"
    return entries[0]


def pci_driver(pf: str, index: int) -> str | None:
    link = Path(f"/sys/class/net/{pf}/device/virtfn{index}/driver")
    return link.resolve().name if link.is_symlink() else None


def bind_to_vfio(pf: str, index: int) -> None:
    """What libvirt does for a managed hostdev (a VF of a <forward mode='hostdev'> pool, or
    an <interface type='hostdev'>) while its guest runs: the VF leaves igbvf for vfio-pci."""
    subprocess.run(["modprobe", "vfio-pci"], check=True)
    vf = Path(f"/sys/class/net/{pf}/device/virtfn{index}").resolve()
    (vf / "driver_override").write_text("vfio-pci")
    (vf / "driver" / "unbind").write_text(vf.name)
    Path("/sys/bus/pci/drivers_probe").write_text(vf.name)
    assert pci_driver(pf, index) == "vfio-pci"
    group = (vf / "iommu_group").resolve().name  # the VM's emulated VT-d gives it one
    assert Path(f"/dev/vfio/{group}").exists()  # what QEMU would open: a real vfio binding


def test_realize_sets_the_vf_entry_and_release_restores_it(sriov_pf, fleet) -> None:
    mac = "52:54:00:5e:00:01"
    fleet(NETWORKS, host_mapping(sriov_pf, spoofchk="false"), {"g1": guest("g1", ("storage", mac))})
    before = vf_entries(sriov_pf)
    assert all(e["spoofchk"] and not e["trust"] and e["vlan"] == 0 for e in before)

    assert main(["realize", "g1", "--host", HOST]) == 0
    entry = claimed(sriov_pf, mac)
    assert (entry["vlan"], entry["spoofchk"]) == (200, False)
    others = [e for e in vf_entries(sriov_pf) if e["vf"] != entry["vf"]]
    assert others == [e for e in before if e["vf"] != entry["vf"]]

    dump = host_dump()
    assert main(["realize", "g1", "--host", HOST]) == 0  # idempotent: the same VF, untouched
    assert claimed(sriov_pf, mac) == entry
    assert host_dump() == dump

    assert main(["release", "g1", "--host", HOST]) == 0
    assert vf_entries(sriov_pf) == before  # MAC, VLAN, spoof-check and trust as found


def test_no_free_vf_on_the_live_pf_refuses_and_changes_nothing(sriov_pf, fleet, capsys) -> None:
    # The mapping promises 8 VFs, the PF has 4 enabled: check passes, realize must read the
    # live pool and refuse the fifth guest before changing anything.
    guests = {f"g{i}": guest(f"g{i}", ("storage", f"52:54:00:5e:01:0{i}")) for i in range(1, 6)}
    fleet(NETWORKS, host_mapping(sriov_pf, total_vfs=8), guests)
    before = vf_entries(sriov_pf)
    for name in ("g1", "g2", "g3", "g4"):
        assert main(["realize", name, "--host", HOST]) == 0
    assert sorted(claimed(sriov_pf, f"52:54:00:5e:01:0{i}")["vf"] for i in range(1, 5)) == [
        0, 1, 2, 3]  # four guests, four different VFs
    full = (host_dump(), vf_entries(sriov_pf))
    capsys.readouterr()

    assert main(["realize", "g5", "--host", HOST]) == 3
    err = capsys.readouterr().err
    assert "no free VF" in err
    assert sriov_pf in err
    assert (host_dump(), vf_entries(sriov_pf)) == full

    for name in ("g1", "g2", "g3", "g4"):
        assert main(["release", name, "--host", HOST]) == 0
    assert vf_entries(sriov_pf) == before


def test_vf_attach_macvtap_is_a_passthru_macvtap_on_the_vf(sriov_pf, fleet, capsys) -> None:
    mac = "52:54:00:5e:02:01"
    fleet(NETWORKS, host_mapping(sriov_pf, vf_attach='"macvtap"'),
          {"g1": guest("g1", ("storage", mac))})
    before = (host_dump(), vf_entries(sriov_pf))

    assert main(["realize", "g1", "--host", HOST]) == 0
    entry = claimed(sriov_pf, mac)
    assert (entry["vlan"], entry["spoofchk"]) == (200, True)
    macvtaps = json.loads(ip("-d", "-j", "link", "show", "type", "macvtap"))
    assert len(macvtaps) == 1
    tap = macvtaps[0]
    assert tap["link"] == vf_netdev(sriov_pf, entry["vf"])  # on the claimed VF's netdev
    assert tap["linkinfo"]["info_data"]["mode"] == "passthru"
    assert tap["address"] == mac
    assert "UP" in tap["flags"]
    lower = json.loads(ip("-j", "link", "show", "dev", tap["link"]))[0]
    assert "UP" in lower["flags"]  # a passthru macvtap sends nothing through a down VF

    capsys.readouterr()
    assert main(["discover", "--json"]) == 0
    pools = {pool["pf"]: pool for pool in json.loads(capsys.readouterr().out)["sriov"]}
    pool = pools[sriov_pf]
    assert (pool["total_vfs"], pool["num_vfs"], pool["used_vfs"], pool["free_vfs"]) == (
        7, 4, 1, 3)
    used = [vf for vf in pool["vfs"] if vf["used_by"]]
    assert [vf["index"] for vf in used] == [entry["vf"]]

    assert main(["release", "g1", "--host", HOST]) == 0
    assert (host_dump(), vf_entries(sriov_pf)) == before


def test_discover_reports_both_pfs_pools(sriov_pf, capsys) -> None:
    assert main(["discover", "--json"]) == 0
    pools = {pool["pf"]: pool for pool in json.loads(capsys.readouterr().out)["sriov"]}
    assert (pools[sriov_pf]["total_vfs"], pools[sriov_pf]["num_vfs"],
            pools[sriov_pf]["used_vfs"], pools[sriov_pf]["free_vfs"]) == (7, 4, 0, 4)
    assert [vf["netdev"] for vf in pools[sriov_pf]["vfs"]] == [
        vf_netdev(sriov_pf, i) for i in range(4)]
    assert len(pools) == 2
    assert all(p["total_vfs"] == 7 for p in pools.values())


def test_failure_before_every_step_leaves_pf_and_host_as_before(sriov_pf, fleet) -> None:
    """The rollback test for VFs handed over as passthru macvtaps: two NICs, so a failure
    before the second claim must give the first VF's entry back as found."""
    from netmap.errors import ApplyError
    from netmap.load import load_fleet
    from netmap.netlink.apply import realize_plan
    from netmap.plan.planner import build_plan
    from netmap.query.graph import build_graph

    root = fleet(NETWORKS, host_mapping(sriov_pf, vf_attach='"macvtap"', spoofchk="false"),
                 {"g1": guest("g1", ("storage", "52:54:00:5e:03:01"),
                              ("storage", "52:54:00:5e:03:02"))})
    loaded = load_fleet(root)
    plan = build_plan(build_graph(loaded), loaded.guests["g1"], loaded.hosts[HOST])
    before = (host_dump(), vf_entries(sriov_pf))
    assert sum(type(step).__name__ == "ClaimVf" for _, step in plan.steps) == 2
    for failing in range(len(plan.steps)):
        for error in (RuntimeError("injected"), KeyboardInterrupt()):
            def hook(position: int, _step, failing=failing, error=error) -> None:
                if position == failing:
                    raise error

            with pytest.raises(ApplyError, match="every change was undone"):
                realize_plan(plan, on_step=hook)
            assert (host_dump(), vf_entries(sriov_pf)) == before, f"step {failing}: {error!r}"
    assert realize_plan(plan).changed  # and afterwards it still works
    assert main(["release", "g1", "--host", HOST]) == 0
    assert (host_dump(), vf_entries(sriov_pf)) == before


def test_vfs_used_outside_netmap_are_never_claimed_and_discover_counts_them(
        sriov_pf, fleet, capsys) -> None:
    """What makes a VF free (netmap/netlink/vf_pool.py), on the real PF: VF 0 without a
    driver (unbound from igbvf; bound to vfio-pci: the next test), VF 1 with a MAC set on its
    PF entry by someone else, VF 2's netdev down but with an address. realize claims VF 3
    (the entry shows the MAC igbvf chose for itself, which is no claim), refuses a second
    guest, and discover counts what realize skipped as used."""
    device = Path(f"/sys/class/net/{sriov_pf}/device")
    vf0 = (device / "virtfn0").resolve()
    (vf0 / "driver" / "unbind").write_text(vf0.name)
    ip("link", "set", sriov_pf, "vf", "1", "mac", "52:54:00:77:00:01")
    ip("addr", "add", "10.77.0.1/24", "dev", vf_netdev(sriov_pf, 2))
    macs = {"g1": "52:54:00:5e:04:01", "g2": "52:54:00:5e:04:02"}
    fleet(NETWORKS, host_mapping(sriov_pf),
          {name: guest(name, ("storage", mac)) for name, mac in macs.items()})

    assert main(["discover", "--json"]) == 0
    pool = {p["pf"]: p for p in json.loads(capsys.readouterr().out)["sriov"]}[sriov_pf]
    assert [vf["used_by"] for vf in pool["vfs"]] == [
        "bound to no network driver (vfio or none)",
        "MAC 52:54:00:77:00:01 set on the PF's VF entry",
        f"{vf_netdev(sriov_pf, 2)} has address 10.77.0.1/24", None]
    assert (pool["used_vfs"], pool["free_vfs"]) == (3, 1)

    assert main(["realize", "g1", "--host", HOST]) == 0
    assert claimed(sriov_pf, macs["g1"])["vf"] == 3
    full = (host_dump(), vf_entries(sriov_pf))
    capsys.readouterr()
    assert main(["realize", "g2", "--host", HOST]) == 3
    err = capsys.readouterr().err
    assert "no free VF" in err
    assert "VF 1: MAC 52:54:00:77:00:01 set on the PF's VF entry" in err
    assert (host_dump(), vf_entries(sriov_pf)) == full
    assert main(["discover", "--json"]) == 0  # netmap's claim counts too (its entry's MAC)
    pool = {p["pf"]: p for p in json.loads(capsys.readouterr().out)["sriov"]}[sriov_pf]
    assert (pool["used_vfs"], pool["free_vfs"]) == (4, 0)
    assert main(["release", "g1", "--host", HOST]) == 0
    ip("addr", "flush", "dev", vf_netdev(sriov_pf, 2))  # the VFs go with sriov_pf's teardown


def has_carrier(link: str) -> bool:
    try:
        return Path(f"/sys/class/net/{link}/carrier").read_text().strip() == "1"
    except OSError:  # EINVAL while the link is down
        return False


def test_a_vf_bound_to_vfio_pci_is_never_claimed_and_all_commands_agree(
        sriov_pf, fleet, capsys) -> None:
    """VFs 0 and 2 bound to vfio-pci for real (the VM's emulated IOMMU gives them a group),
    as libvirt binds a hostdev VF while its guest runs. The mapping promises 4 VFs: discover
    counts 2 used, drift and `check --live` say only 2 are free (VF_FREE_LOW), realize claims
    VFs 1 and 3 and refuses a third guest with the host unchanged. With total_vfs = 2 (drift's
    fix) drift is quiet and check, from the mappings alone, refuses that guest too."""
    bind_to_vfio(sriov_pf, 0)
    bind_to_vfio(sriov_pf, 2)
    ip("link", "set", sriov_pf, "up")  # as on a host in service: drift and check --live
    # then have nothing but the pool to say (UPLINK_DOWN otherwise); igb's watchdog raises
    # the carrier seconds after the up (the CI dry run's check --live ran before it did)
    wait_until(lambda: has_carrier(sriov_pf), f"{sriov_pf}'s carrier")
    macs = {f"g{i}": f"52:54:00:5e:05:0{i}" for i in (1, 2, 3)}
    guests = {name: guest(name, ("storage", mac)) for name, mac in macs.items()}
    # g3 comes from another host: check --to judges it as a migration here
    guests["g3"] = guests["g3"].replace(f'host = "{HOST}"', 'host = "nmvm-src"')
    root = fleet(NETWORKS, host_mapping(sriov_pf, total_vfs=4), guests)
    (root / "hosts" / "nmvm-src.toml").write_text(
        host_mapping(sriov_pf).replace(f'name = "{HOST}"', 'name = "nmvm-src"'))

    def findings(*argv: str) -> tuple[int, list[dict]]:
        capsys.readouterr()
        code = main([*argv, "--json"])
        return code, json.loads(capsys.readouterr().out)["findings"]

    def errors(found: list[dict]) -> list[str]:
        return [f["code"] for f in found if f["severity"] == "error"]

    capsys.readouterr()
    assert main(["discover", "--json"]) == 0
    pool = {p["pf"]: p for p in json.loads(capsys.readouterr().out)["sriov"]}[sriov_pf]
    assert [(vf["netdev"] is None, vf["used_by"]) for vf in pool["vfs"]] == [
        (True, "bound to vfio-pci"), (False, None), (True, "bound to vfio-pci"), (False, None)]
    assert (pool["used_vfs"], pool["free_vfs"]) == (2, 2)
    code, found = findings("drift", HOST)
    low = [f for f in found if f["code"] == "VF_FREE_LOW"]
    assert code == 1, found
    assert len(low) == 1, found
    assert "VF 0 (bound to vfio-pci), VF 2 (bound to vfio-pci)" in low[0]["message"], low
    assert "total_vfs = 2" in low[0]["hint"], low
    assert findings("check", "g3", "--to", HOST)[0] == 0  # the mapping admits three
    code, found = findings("check", "g3", "--to", HOST, "--live")
    assert (code, errors(found)) == (1, ["VF_FREE_LOW"]), found  # the live host does not

    assert main(["realize", "g1", "--host", HOST]) == 0
    assert main(["realize", "g2", "--host", HOST]) == 0
    assert sorted(claimed(sriov_pf, macs[g])["vf"] for g in ("g1", "g2")) == [1, 3]
    full = (host_dump(), vf_entries(sriov_pf), [pci_driver(sriov_pf, i) for i in range(4)])
    assert full[2] == ["vfio-pci", "igbvf", "vfio-pci", "igbvf"]
    capsys.readouterr()
    assert main(["realize", "g3", "--host", HOST]) == 3
    err = capsys.readouterr().err
    assert "no free VF" in err
    assert "VF 0: bound to vfio-pci; VF 2: bound to vfio-pci" in err
    assert full == (host_dump(), vf_entries(sriov_pf),
                    [pci_driver(sriov_pf, i) for i in range(4)])
    assert main(["discover", "--json"]) == 0
    pool = {p["pf"]: p for p in json.loads(capsys.readouterr().out)["sriov"]}[sriov_pf]
    assert (pool["used_vfs"], pool["free_vfs"]) == (4, 0)

    fleet(NETWORKS, host_mapping(sriov_pf, total_vfs=2), guests)  # as drift's hint says
    assert "VF_FREE_LOW" not in [f["code"] for f in findings("drift", HOST)[1]]
    code, found = findings("check", "g3", "--to", HOST)
    assert (code, errors(found)) == (1, ["NO_FREE_VF"]), found
    for name in ("g1", "g2"):
        assert main(["release", name, "--host", HOST]) == 0
    assert [pci_driver(sriov_pf, i) for i in range(4)] == full[2]  # release left them alone
    ip("link", "set", sriov_pf, "down")


def refuse_first_link_change(patch: pytest.MonkeyPatch, code: int) -> list[bytes]:
    """Every rtnetlink socket realize opens refuses its first link change (RTM_SETLINK or
    RTM_NEWLINK) with `code`, as a driver that says no would; what was refused."""
    plain, refused = rtnl.Rtnl, []

    class Refusing(plain):  # type: ignore[misc, valid-type]
        def __init__(self, netns: str | None = None) -> None:
            super().__init__(netns)
            sock = self.sock

            class Socket:
                def send(self, data: bytes) -> int:
                    kind = int.from_bytes(data[4:6], sys.byteorder)
                    if not refused and kind in (rtmsg.RTM_SETLINK, rtmsg.RTM_NEWLINK):
                        refused.append(data)
                        raise rtnl.NetlinkError(code, "injected")
                    return sock.send(data)

                def __getattr__(self, name: str):
                    return getattr(sock, name)

            self.sock = Socket()

    patch.setattr(rtnl, "Rtnl", Refusing)
    return refused


def open_like_qemu(name: str) -> int:
    """The macvtap's /dev/tapN opened as libvirt opens it for QEMU (-netdev tap,fd=N)."""
    ifindex = int(Path(f"/sys/class/net/{name}/ifindex").read_text())
    return os.open(f"/dev/tap{ifindex}", os.O_RDWR | os.O_CLOEXEC)


def test_a_held_vf_macvtap_that_drifted_is_repaired_in_place(sriov_pf, fleet, capsys) -> None:
    """A running guest's passthru macvtap (its /dev/tapN held open here, as QEMU holds it)
    whose VF netdev MTU, own link state and VF entry VLAN were changed: the next realize
    sets each back in place (the same ifindex; the open fd still on that macvtap), where it
    used to delete the macvtap and claim the VF again. Then a repair the kernel refuses is
    reported through the step (which VF of which PF, the fix) and leaves the host as it
    was; release still gives back the host as found."""
    from netmap.netlink.tapfd import tap_info

    mac = "52:54:00:5e:06:01"
    fleet(NETWORKS, host_mapping(sriov_pf, vf_attach='"macvtap"'),
          {"g1": guest("g1", ("storage", mac))})
    before = (host_dump(), vf_entries(sriov_pf))
    assert main(["realize", "g1", "--host", HOST]) == 0
    entry = claimed(sriov_pf, mac)
    netdev = vf_netdev(sriov_pf, entry["vf"])
    (tap,) = json.loads(ip("-d", "-j", "link", "show", "type", "macvtap"))
    name, ifindex = tap["ifname"], tap["ifindex"]
    realized = (host_dump(), vf_entries(sriov_pf))
    fd = open_like_qemu(name)
    try:
        ip("link", "set", netdev, "mtu", "1400")  # the macvtap's MTU follows it down
        ip("link", "set", name, "down")
        ip("link", "set", sriov_pf, "vf", str(entry["vf"]), "vlan", "999")
        assert json.loads(ip("-j", "link", "show", name))[0]["mtu"] == 1400
        assert main(["realize", "g1", "--host", HOST]) == 0
        assert json.loads(ip("-j", "link", "show", name))[0]["ifindex"] == ifindex
        assert (host_dump(), vf_entries(sriov_pf)) == realized
        assert tap_info(fd)[0] == name  # the guest's fd still reaches its macvtap

        ip("link", "set", name, "mtu", "1300")
        ip("link", "set", sriov_pf, "vf", str(entry["vf"]), "vlan", "998")
        drifted = (host_dump(), vf_entries(sriov_pf))
        capsys.readouterr()
        with pytest.MonkeyPatch.context() as patch:
            refused = refuse_first_link_change(patch, errno.EINVAL)
            assert main(["realize", "g1", "--host", HOST]) == 3
        err = capsys.readouterr().err
        assert refused
        assert (f"repair the claim of VF {entry['vf']} of {sriov_pf} (MAC {mac}) in place"
                in err), err
        assert f"{name} has MTU 1300, want 1500" in err
        assert "every change was undone" in err
        assert f"ip link set {sriov_pf} vf {entry['vf']}" in err  # the fix
        assert (host_dump(), vf_entries(sriov_pf)) == drifted  # the VLAN back at 998 too
        assert tap_info(fd)[0] == name
    finally:
        os.close(fd)
    assert main(["release", "g1", "--host", HOST]) == 0
    assert (host_dump(), vf_entries(sriov_pf)) == before
