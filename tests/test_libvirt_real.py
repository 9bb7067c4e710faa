"""netmap's qemu hook under a real libvirt daemon (Debian's libvirtd + qemu-system-x86).

host-a's and host-b's lab namespaces (prefix nmK) each get a private libvirtd from
scripts/libvirt_lab.py: its own mount and UTS namespace, its own /etc/libvirt with netmap's
hook as qemu.d/netmap, nothing of the machine's /etc, /var or /run touched. The mgmt bridge
(br-eth1, br-eno3: what `netmap realize` builds for a bridge-mode network) carries a lab
address on each side for QEMU's migration stream; virsh drives both daemons by their sockets.

Guests are TCG `pc` machines with 32 MiB, no disk and no option ROM: SeaBIOS finds nothing to
boot and idles, which is all a live migration needs. Daemons, the QEMUs they started (found by
the pid files in the private run dir), namespaces and the tree are removed even on failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from tests.conftest import REPO
from tests.libvirt_marks import LIBVIRT_LAB

sys.path.insert(0, str(REPO / "scripts"))
import libvirt_lab  # scripts/ is not a package
from libvirt_lab import PrivateLibvirtd, give_migration_address, ip_json

pytestmark = [*LIBVIRT_LAB]

VM2_MGMT_MAC = "52:54:00:ab:00:02"  # vm2's NICs in mappings/guests/vm2.toml
VM2_PROD_MAC = "52:54:00:ab:00:01"
MIGRATION_PORT = 49152

# vm2 as an operator would define it on host-a: mgmt is a bridge-mode network on eth1,
# so libvirt plugs a tap into br-eth1. Nothing in it names host-b.
MGMT_ON_BR_ETH1 = libvirt_lab.interface_xml("bridge", VM2_MGMT_MAC, "bridge='br-eth1'")

@pytest.fixture(scope="module")
def capabilities() -> Iterator[Path]:
    """The QEMU capabilities cache all daemons of this module share (libvirt probes each
    QEMU binary for seconds at start), after checking that daemons can be isolated here."""
    problem = libvirt_lab.isolation_problem()
    if problem:
        pytest.skip(problem)
    cache = Path(tempfile.mkdtemp(prefix="nmK-qemucaps-"))
    yield cache
    shutil.rmtree(cache, ignore_errors=True)


@pytest.fixture
def libvirt_pair(lab_factory, capabilities: Path) -> Iterator[dict]:
    """host-a and host-b as lab namespaces, each with the mgmt bridge (what `netmap realize`
    would leave there for a bridge-mode network) carrying a lab address for the migration
    stream, and each with a private libvirtd; everything is torn down afterwards."""
    lab, mappings = lab_factory("nmK", ["host-a", "host-b"])
    root = Path(tempfile.mkdtemp(prefix="nmK-libvirt-"))
    daemons: dict[str, PrivateLibvirtd] = {}
    try:
        for index, (host, uplink) in enumerate((("host-a", "eth1"), ("host-b", "eno3")), 1):
            netns = lab.hosts[host]
            give_migration_address(netns, uplink, f"br-{uplink}", f"10.251.0.{index}")
            daemons[host] = PrivateLibvirtd(root / host, netns, host, mappings)
        for daemon in daemons.values():
            daemon.start(capabilities)
        yield {"lab": lab, "mappings": mappings, "daemons": daemons, "root": root,
               "defined": {}}
    finally:
        for daemon in daemons.values():
            daemon.stop()
        shutil.rmtree(root, ignore_errors=True)


def _define_and_start(daemon: PrivateLibvirtd, pair: dict,
                      interfaces: str = MGMT_ON_BR_ETH1) -> None:
    xml = pair["root"] / "vm2.xml"
    xml.write_text(libvirt_lab.domain_xml("vm2", interfaces))
    daemon.virsh("define", str(xml))
    pair["defined"]["vm2"] = daemon.virsh("dumpxml", "--inactive", "vm2").stdout
    daemon.virsh("start", "vm2")


def _interface(daemon: PrivateLibvirtd, mac: str = VM2_MGMT_MAC) -> ET.Element:
    domain = ET.fromstring(daemon.virsh("dumpxml", "vm2").stdout)
    (interface,) = [nic for nic in domain.findall("devices/interface")
                    if nic.find("mac").get("address") == mac]
    return interface


def _tap_of(interface: ET.Element) -> str:
    target = interface.find("target")
    assert target is not None, ET.tostring(interface).decode()
    return target.get("dev")


def test_hook_runs_for_every_lifecycle_step_and_the_tap_sits_on_the_mapped_bridge(
        libvirt_pair) -> None:
    source: PrivateLibvirtd = libvirt_pair["daemons"]["host-a"]
    _define_and_start(source, libvirt_pair)

    # libvirt found the hook in the private hooks dir and ran it, in order, for every step
    assert source.hook_calls() == ["vm2 prepare begin -", "vm2 start begin -",
                                   "vm2 started begin -"]
    # pass-through: the running domain is the one defined, on the bridge it named
    assert (source.virsh("dumpxml", "--inactive", "vm2").stdout
            == libvirt_pair["defined"]["vm2"]), "starting changed the definition"
    interface = _interface(source)
    assert interface.get("type") == "bridge"
    assert interface.find("source").get("bridge") == "br-eth1"
    assert interface.find("mac").get("address") == VM2_MGMT_MAC
    # the tap sits where host-a's mapping puts mgmt: on eth1's bridge, next to eth1
    tap = _tap_of(interface)
    (link,) = ip_json(source.netns, "link", "show", "dev", tap)
    assert link.get("master") == "br-eth1"
    assert link["address"] == "fe" + VM2_MGMT_MAC[2:]  # libvirt's host-side tap MAC
    ports = {port["ifname"] for port in ip_json(source.netns, "link", "show",
                                                "master", "br-eth1")}
    assert ports == {"eth1", tap}

    source.virsh("destroy", "vm2")
    assert source.hook_calls()[3:] == ["vm2 stopped end -", "vm2 release end -"]
    assert tap not in {link["ifname"] for link in ip_json(source.netns, "link", "show")}


def _migrate(source: PrivateLibvirtd, target: PrivateLibvirtd,
             *extra: str) -> subprocess.CompletedProcess:
    """virsh drives both daemons (their sockets); QEMU streams over the lab's mgmt segment."""
    try:
        return source.virsh("migrate", "--live", "--persistent", "--undefinesource", *extra,
                            "vm2", target.uri, f"tcp://10.251.0.2:{MIGRATION_PORT}",
                            check=False)
    except AssertionError as hung:  # no answer: say what the destination was doing too
        raise AssertionError(f"{hung}\n--- {target.host}:\n{target.state()}") from None


def test_live_migration_rewrites_the_bridge_on_the_destination(libvirt_pair) -> None:
    source: PrivateLibvirtd = libvirt_pair["daemons"]["host-a"]
    target: PrivateLibvirtd = libvirt_pair["daemons"]["host-b"]
    _define_and_start(source, libvirt_pair)
    before = source.virsh("dumpxml", "--migratable", "vm2").stdout
    assert before.count("br-eth1") == 1

    done = _migrate(source, target)
    assert done.returncode == 0, done.stderr + target.log_tail()

    # the destination ran the hook on the incoming XML before preparing the guest
    assert target.hook_calls() == ["vm2 migrate begin -", "vm2 prepare begin -",
                                   "vm2 start begin -", "vm2 started begin -"]
    assert source.hook_calls()[3:] == ["vm2 stopped end -", "vm2 release end -"]
    # host-b's domain differs from host-a's in the bridge alone (ABI check passed)
    after = target.virsh("dumpxml", "--migratable", "vm2").stdout
    assert after == before.replace("br-eth1", "br-eno3")
    # and it was persisted that way
    # libvirt's behaviour, not netmap's: the hook filters the live definition only; with
    # --persistent the destination stores the source's own inactive definition as it was
    # (see test_persistent_definition_rewritten_by_the_hook_survives_a_restart for the fix)
    persisted = target.virsh("dumpxml", "--inactive", "vm2").stdout
    assert "<source bridge='br-eth1'/>" in persisted
    tap = _tap_of(_interface(target))
    (link,) = ip_json(target.netns, "link", "show", "dev", tap)
    assert link.get("master") == "br-eno3"
    assert target.virsh("domstate", "vm2").stdout.strip() == "running"
    assert source.virsh("domstate", "vm2", check=False).returncode != 0  # gone from host-a
    assert not ip_json(source.netns, "link", "show", "master", "br-eth1")[1:]  # eth1 only


def test_a_migration_the_check_refuses_is_cancelled_with_the_hooks_message(
        libvirt_pair) -> None:
    source: PrivateLibvirtd = libvirt_pair["daemons"]["host-a"]
    target: PrivateLibvirtd = libvirt_pair["daemons"]["host-b"]
    # host-b's mapping loses mgmt (an operator removed it): the check must refuse
    host_b = libvirt_pair["mappings"] / "hosts/host-b.toml"
    host_b.write_text(re.sub(r"\[networks\.mgmt\]\n[^\[]*", "", host_b.read_text()))
    assert "[networks.mgmt]" not in host_b.read_text()
    _define_and_start(source, libvirt_pair)
    tap = _tap_of(_interface(source))

    done = _migrate(source, target)
    assert done.returncode != 0
    # libvirt cancels and relays the hook's stderr to the caller
    assert "Hook script execution failed" in done.stderr, done.stderr
    assert "netmap: refusing to migrate vm2 to host-b" in done.stderr, done.stderr
    assert "[NETWORK_UNBOUND]" in done.stderr, done.stderr
    assert target.hook_calls() == ["vm2 migrate begin -"]  # nothing prepared on host-b
    assert target.virsh("domstate", "vm2", check=False).returncode != 0
    # the guest keeps running on host-a, its tap still on the bridge
    assert source.virsh("domstate", "vm2").stdout.strip() == "running"
    (link,) = ip_json(source.netns, "link", "show", "dev", tap)
    assert link.get("master") == "br-eth1"


def test_persistent_definition_rewritten_by_the_hook_survives_a_restart(libvirt_pair) -> None:
    """The operator's recipe: pass the inactive definition through netmap for the
    destination and give it to `virsh migrate --persistent-xml`, so that the guest still
    boots on host-b's bridge after it is shut down there."""
    source: PrivateLibvirtd = libvirt_pair["daemons"]["host-a"]
    target: PrivateLibvirtd = libvirt_pair["daemons"]["host-b"]
    _define_and_start(source, libvirt_pair)
    inactive = source.virsh("dumpxml", "--inactive", "--migratable", "vm2").stdout
    filtered = subprocess.run(
        [sys.executable, "-m", "netmap", "libvirt-hook", "vm2", "migrate", "begin", "-"],
        input=inactive, capture_output=True, text=True, check=False, cwd=REPO,
        env={**os.environ, "NETMAP_MAPPINGS": str(libvirt_pair["mappings"]),
             "NETMAP_HOST": "host-b"})
    assert filtered.returncode == 0, filtered.stderr
    assert filtered.stdout == inactive.replace("br-eth1", "br-eno3")
    persistent_xml = libvirt_pair["root"] / "vm2-host-b.xml"
    persistent_xml.write_text(filtered.stdout)

    done = _migrate(source, target, "--persistent-xml", str(persistent_xml))
    assert done.returncode == 0, done.stderr + target.log_tail()
    assert "<source bridge='br-eno3'/>" in target.virsh("dumpxml", "--inactive", "vm2").stdout

    target.virsh("destroy", "vm2")
    target.virsh("start", "vm2")  # from the persistent definition, on host-b's bridge
    tap = _tap_of(_interface(target))
    (link,) = ip_json(target.netns, "link", "show", "dev", tap)
    assert link.get("master") == "br-eno3"


def test_libvirt_networks_from_netmap_carry_a_guest_across_unchanged(libvirt_pair) -> None:
    """`netmap libvirt-networks --host H` on each host, loaded with net-define: a guest on
    <source network='mgmt'/> lands on each host's own bridge and migrates without any
    rewrite, because the network's name means the same on both hosts."""
    source: PrivateLibvirtd = libvirt_pair["daemons"]["host-a"]
    target: PrivateLibvirtd = libvirt_pair["daemons"]["host-b"]
    for daemon in (source, target):
        out = libvirt_pair["root"] / f"networks-{daemon.host}"
        made = subprocess.run(
            [sys.executable, "-m", "netmap", "libvirt-networks", "--host", daemon.host,
             "--mappings", str(libvirt_pair["mappings"]), "--out", str(out)],
            capture_output=True, text=True, check=False, cwd=REPO)
        assert made.returncode == 0, made.stderr
        defined = sorted(path.stem for path in out.glob("*.xml"))
        assert "mgmt" in defined
        assert "prod" in defined
        for name in defined:  # the real parser accepts every definition, VF pools included
            daemon.virsh("net-define", str(out / f"{name}.xml"))
        # only mgmt can start in the lab: prod needs eth0.100 (no 802.1q in this kernel),
        # the VF pools need SR-IOV, tenant-blue needs `netmap realize` to build its vxlan
        daemon.virsh("net-start", "mgmt")
        assert set(daemon.virsh("net-list", "--all", "--name").stdout.split()) == set(defined)
    _define_and_start(source, libvirt_pair, libvirt_lab.interface_xml(
        "network", VM2_MGMT_MAC, "network='mgmt'"))
    assert ip_json(source.netns, "link", "show", "dev", _tap_of(_interface(source)))[0][
        "master"] == "br-eth1"
    before = source.virsh("dumpxml", "--migratable", "vm2").stdout

    done = _migrate(source, target)
    assert done.returncode == 0, done.stderr + target.log_tail()

    assert target.hook_calls()[0] == "vm2 migrate begin -"
    assert target.virsh("dumpxml", "--migratable", "vm2").stdout == before  # nothing to rewrite
    interface = _interface(target)
    assert interface.find("source").get("network") == "mgmt"
    (link,) = ip_json(target.netns, "link", "show", "dev", _tap_of(interface))
    assert link.get("master") == "br-eno3"


def test_macvtap_and_bridge_nics_both_follow_the_mapping(libvirt_pair) -> None:
    """vm2 as its guest file says: prod as a vepa macvtap on eth0, mgmt on br-eth1. This
    kernel has no 802.1q, so prod loses its VLAN in this test's copy of the fleet; then host-b
    realizes prod on eno2, and the hook must move the macvtap there."""
    source: PrivateLibvirtd = libvirt_pair["daemons"]["host-a"]
    target: PrivateLibvirtd = libvirt_pair["daemons"]["host-b"]
    networks = libvirt_pair["mappings"] / "networks.toml"
    networks.write_text(networks.read_text().replace("vlan = 100\n", "", 1))
    prod = libvirt_lab.interface_xml("direct", VM2_PROD_MAC, "dev='eth0' mode='vepa'")
    _define_and_start(source, libvirt_pair, prod + MGMT_ON_BR_ETH1)
    (macvtap,) = ip_json(source.netns, "-d", "link", "show", "dev",
                         _tap_of(_interface(source, VM2_PROD_MAC)))
    assert macvtap["link"] == "eth0"
    assert macvtap["linkinfo"]["info_kind"] == "macvtap"
    assert macvtap["linkinfo"]["info_data"]["mode"] == "vepa"
    assert macvtap["address"] == VM2_PROD_MAC  # a macvtap carries the guest's own MAC
    before = source.virsh("dumpxml", "--migratable", "vm2").stdout

    done = _migrate(source, target)
    assert done.returncode == 0, done.stderr + target.log_tail()

    after = target.virsh("dumpxml", "--migratable", "vm2").stdout
    assert after == before.replace("br-eth1", "br-eno3").replace("dev='eth0'", "dev='eno2'")
    (macvtap,) = ip_json(target.netns, "-d", "link", "show", "dev",
                         _tap_of(_interface(target, VM2_PROD_MAC)))
    assert macvtap["link"] == "eno2"
    assert macvtap["linkinfo"]["info_data"]["mode"] == "vepa"
    (tap,) = ip_json(target.netns, "link", "show", "dev", _tap_of(_interface(target)))
    assert tap.get("master") == "br-eno3"
    # and nothing of vm2 is left on host-a
    assert not [link for link in ip_json(source.netns, "-d", "link", "show")
                if link.get("linkinfo", {}).get("info_kind") == "macvtap"]


def test_restore_passes_the_saved_definition_through_untouched(libvirt_pair) -> None:
    """`restore begin` is the other hook call whose stdout libvirt reads as the domain XML:
    netmap must hand it on byte for byte (no check, no rewrite) so the restore proceeds."""
    source: PrivateLibvirtd = libvirt_pair["daemons"]["host-a"]
    _define_and_start(source, libvirt_pair)
    before = source.virsh("dumpxml", "--migratable", "vm2").stdout
    image = libvirt_pair["root"] / "vm2.save"
    source.virsh("save", "vm2", str(image))
    assert source.virsh("domstate", "vm2").stdout.strip() == "shut off"

    source.virsh("restore", str(image))

    assert source.hook_calls()[-4:] == ["vm2 restore begin -", "vm2 prepare begin -",
                                        "vm2 start begin -", "vm2 started begin -"]
    assert source.virsh("domstate", "vm2").stdout.strip() == "running"
    assert source.virsh("dumpxml", "--migratable", "vm2").stdout == before
    (link,) = ip_json(source.netns, "link", "show", "dev", _tap_of(_interface(source)))
    assert link.get("master") == "br-eth1"


CHAIN_FIRST = """#!/bin/sh
# an operator's hook that runs before netmap: for migrate begin it adds a comment
if [ "$2 $3" = "migrate begin" ]; then
  sed 's|<devices>|<devices><!-- checked by 00-first -->|'
fi
"""
CHAIN_LAST = """#!/bin/sh
# and one after netmap: records what it was handed, passes it on
if [ "$2 $3" = "migrate begin" ]; then
  tee {record}
fi
"""


def test_netmap_filters_its_part_of_a_qemu_d_chain(libvirt_pair) -> None:
    """libvirt (>= 6.5) pipes the migrate XML through every qemu.d script in name order:
    netmap must take the previous script's output and hand the next one its rewrite."""
    source: PrivateLibvirtd = libvirt_pair["daemons"]["host-a"]
    target: PrivateLibvirtd = libvirt_pair["daemons"]["host-b"]
    record = libvirt_pair["root"] / "seen-by-zz-last.xml"
    hooks = target.root / "etc/hooks/qemu.d"
    for name, text in (("00-first", CHAIN_FIRST), ("zz-last", CHAIN_LAST)):
        (hooks / name).write_text(text.format(record=record))
        (hooks / name).chmod(0o755)
    _define_and_start(source, libvirt_pair)

    done = _migrate(source, target)
    assert done.returncode == 0, done.stderr + target.log_tail()

    seen = record.read_text()
    assert "<devices><!-- checked by 00-first -->" in seen  # netmap kept the first's edit
    assert "<source bridge='br-eno3'/>" in seen
    assert "br-eth1" not in seen
    (link,) = ip_json(target.netns, "link", "show", "dev", _tap_of(_interface(target)))
    assert link.get("master") == "br-eno3"
