"""The libvirt qemu hook, driven as libvirt drives it: a subprocess with argv, the domain
XML on stdin, the environment naming mappings and host; stdout is the XML libvirt uses."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from conftest import EXAMPLE_MAPPINGS, REPO

from netmap.cli import main as cli_main

# vm1 as `virsh dumpxml vm1` shows it on host-a: prod as a macvtap in vepa mode on eth0,
# storage as a VF from host-a's pool network. Plenty of guest-visible detail that libvirt's
# ABI check compares and the hook must not touch.
VM1_ON_HOST_A = b"""<domain type='kvm' id='7'>
  <name>vm1</name>
  <uuid>3e3fce45-4f53-4fa7-bb32-11f34168b82b</uuid>
  <description>front end &amp; storage leg &#x2014; "vm1"</description>
  <metadata>
    <netmap:guest xmlns:netmap="https://netmap.dev/xmlns/1">
      <netmap:nic mac="52:54:00:12:34:56" network="prod" vhost="required"/>
    </netmap:guest>
  </metadata>
  <memory unit='KiB'>1048576</memory>
  <vcpu placement='static'>2</vcpu>
  <os>
    <type arch='x86_64' machine='pc-q35-8.2'>hvm</type>
    <boot dev='hd'/>
  </os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <!-- libvirt does not write comments, but a hook chained before us might -->
    <interface type='direct'>
      <mac address='52:54:00:12:34:56'/>
      <source dev='eth0'   mode="vepa"/>
      <target dev='macvtap3'/>
      <model type='virtio'/>
      <driver name='vhost' queues='4' rx_queue_size='1024' tx_queue_size='256'>
        <host csum='off' tso4='off'/>
      </driver>
      <mtu size='9000'/>
      <alias name='net0'/>
      <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>
    </interface>
    <interface type='network'>
      <mac address='52:54:00:12:34:57'/>
      <source network='netmap-vf-eno1' portgroup='storage'/>
      <model type='virtio'/>
      <driver queues='2'/>
      <alias name='net1'/>
      <address type='pci' domain='0x0000' bus='0x02' slot='0x00' function='0x0'/>
    </interface>
    <interface type='user'>
      <mac address='52:54:00:12:34:58'/>
      <model type='e1000e'/>
      <address type='pci' domain='0x0000' bus='0x03' slot='0x00' function='0x0'/>
    </interface>
    <memballoon model='virtio'>
      <address type='pci' domain='0x0000' bus='0x04' slot='0x00' function='0x0'/>
    </memballoon>
  </devices>
</domain>
"""

# host-side attributes the hook may rewrite: (element, attribute) inside an <interface>
HOST_SIDE = {("interface", "type"), ("source", "dev"), ("source", "mode"),
             ("source", "bridge"), ("source", "network"), ("source", "portgroup")}
_SOURCE_TAG = re.compile(rb"<source\b[^>]*>")
_PLACEMENT = re.compile(rb"""(\s(?:dev|mode|bridge|network|portgroup)\s*=\s*)(['"])[^'"]*\2""")


def _mask_sources(xml: bytes) -> bytes:
    return _SOURCE_TAG.sub(lambda tag: _PLACEMENT.sub(rb"\1\2MASKED\2", tag.group(0)), xml)


def hook_command() -> list[str]:
    installed = shutil.which("netmap-libvirt-hook")
    if installed:
        return [installed]
    # the console script's entry point, exactly as the generated wrapper calls it
    return [sys.executable, "-c",
            "import sys; from netmap.libvirt.hook import main; sys.exit(main())"]


def run_hook(args: list[str], stdin: bytes, mappings: Path = EXAMPLE_MAPPINGS,
             host: str = "host-b", **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "NETMAP_MAPPINGS": str(mappings), "NETMAP_HOST": host,
                   "PYTHONPATH": str(REPO), **env}
    return subprocess.run([*hook_command(), *args], input=stdin, capture_output=True,
                          env=environment, timeout=60, check=False)


def masked_canonical(xml: bytes) -> str:
    """C14N of the document with the host-side attributes of interfaces taken out."""
    root = ET.fromstring(xml)
    for interface in root.iter("interface"):
        for element in [interface, *interface.iter("source")]:
            for key in list(element.attrib):
                if (element.tag, key) in HOST_SIDE:
                    del element.attrib[key]
    return ET.canonicalize(ET.tostring(root, encoding="unicode"))


def source_attrs(xml: bytes) -> list[tuple[str, dict[str, str]]]:
    root = ET.fromstring(xml)
    out = []
    for interface in root.iter("interface"):
        source = interface.find("source")
        out.append((interface.get("type", ""), dict(source.attrib) if source is not None
                    else {}))
    return out


def assert_only_sources_differ(before: bytes, after: bytes) -> None:
    # 1. as XML: equal once the host-side attributes are masked (what libvirt parses)
    assert masked_canonical(before) == masked_canonical(after)
    # 2. as bytes: everything outside <source>'s placement attributes is identical
    assert _mask_sources(before) == _mask_sources(after)


def test_migrate_begin_rewrites_only_host_side_sources() -> None:
    result = run_hook(["vm1", "migrate", "begin", "-"], VM1_ON_HOST_A)
    assert result.returncode == 0, result.stderr.decode()
    out = result.stdout
    assert out != VM1_ON_HOST_A
    assert_only_sources_differ(VM1_ON_HOST_A, out)
    assert source_attrs(out) == [
        ("direct", {"dev": "eno2", "mode": "vepa"}),
        ("network", {"network": "netmap-vf-ens1f0", "portgroup": "storage"}),
        ("user", {}),
    ]
    # the original quoting and spacing of the rewritten tag survive
    assert b"<source dev='eno2'   mode=\"vepa\"/>" in out
    for guest_visible in (b"<mac address='52:54:00:12:34:56'/>",
                          b"<driver name='vhost' queues='4' rx_queue_size='1024'",
                          b"bus='0x01' slot='0x00'", b"&amp; storage leg &#x2014;",
                          b"<target dev='macvtap3'/>", b"<!-- libvirt does not write"):
        assert out.count(guest_visible) == VM1_ON_HOST_A.count(guest_visible) == 1


def test_cli_command_gives_the_same_output(capfdbinary, monkeypatch) -> None:
    expected = run_hook(["vm1", "migrate", "begin", "-"], VM1_ON_HOST_A).stdout
    monkeypatch.setattr(sys, "stdin", _BinaryStdin(VM1_ON_HOST_A))
    code = cli_main(["--mappings", str(EXAMPLE_MAPPINGS), "libvirt-hook", "--host", "host-b",
                     "vm1", "migrate", "begin", "-"])
    assert code == 0
    assert capfdbinary.readouterr().out == expected


class _BinaryStdin:
    def __init__(self, data: bytes) -> None:
        import io

        self.buffer = io.BytesIO(data)


@pytest.mark.skipif(not (shutil.which("virt-xml-validate") and shutil.which("xmllint")),
                    reason="virt-xml-validate (libvirt-clients) and xmllint (libxml2-utils) "
                    "are not installed")
def test_rewritten_domain_is_still_valid_libvirt_xml(tmp_path: Path) -> None:
    result = run_hook(["vm1", "migrate", "begin", "-"], VM1_ON_HOST_A)
    path = tmp_path / "vm1.xml"
    path.write_bytes(result.stdout)
    check = subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True,
                           text=True, check=False)
    assert check.returncode == 0, check.stderr + check.stdout


def test_incompatible_destination_refuses_with_findings_on_stderr() -> None:
    result = run_hook(["vm1", "migrate", "begin", "-"], VM1_ON_HOST_A, host="host-c")
    assert result.returncode == 1
    assert result.stdout == b""
    err = result.stderr.decode()
    assert "refusing to migrate vm1 to host-c" in err
    assert "[NETWORK_UNBOUND]" in err
    assert "network storage" in err
    assert "fix:" in err
    assert "Traceback" not in err


def test_mode_change_between_macvtap_modes_and_bridges(mappings: Path) -> None:
    # vm2: prod (vepa on eth0) and mgmt (bridge br-eth1) on host-a; host-c has prod as
    # macvtap-bridge on ens1f0 and mgmt on br-ens1f1: a warning-only migration.
    vm2 = VM1_ON_HOST_A.replace(b"vm1", b"vm2").replace(b"52:54:00:12:34:56",
                                                        b"52:54:00:ab:00:01")
    vm2 = vm2.replace(b"<source network='netmap-vf-eno1' portgroup='storage'/>",
                      b"<source bridge='br-eth1'/>").replace(
        b"<interface type='network'>", b"<interface type='bridge'>").replace(
        b"52:54:00:12:34:57", b"52:54:00:ab:00:02")
    result = run_hook(["vm2", "migrate", "begin", "-"], vm2, mappings=mappings, host="host-c")
    assert result.returncode == 0, result.stderr.decode()
    assert source_attrs(result.stdout)[:2] == [("direct", {"dev": "ens1f0", "mode": "bridge"}),
                                               ("bridge", {"bridge": "br-ens1f1"})]
    assert_only_sources_differ(vm2, result.stdout)
    assert b"forwarding changes from external-hairpin to local-switching" in result.stderr
    strict = run_hook(["vm2", "migrate", "begin", "-"], vm2, mappings=mappings,
                      host="host-c", NETMAP_STRICT="1")
    assert strict.returncode == 1
    assert b"[SEMANTIC_CHANGED]" in strict.stderr


def test_family_change_rewrites_type_and_source_together(mappings: Path) -> None:
    host_b = mappings / "hosts" / "host-b.toml"
    # eno2 is also the overlay's underlay, which a bridge port cannot be: vm1 needs no overlay
    text = host_b.read_text().split("[networks.tenant-blue]")[0]
    host_b.write_text(text.replace(
        '[networks.prod]\nmode = "macvtap-vepa"', '[networks.prod]\nmode = "bridge"'))
    result = run_hook(["vm1", "migrate", "begin", "-"], VM1_ON_HOST_A, mappings=mappings)
    assert result.returncode == 0, result.stderr.decode()
    assert source_attrs(result.stdout)[0] == ("bridge", {"bridge": "br-eno2"})
    assert b"<interface type='bridge'>" in result.stdout
    assert b"<source bridge='br-eno2'/>" in result.stdout
    assert masked_canonical(VM1_ON_HOST_A) == masked_canonical(result.stdout)


def test_vf_cannot_become_a_virtio_nic(mappings: Path) -> None:
    host_b = mappings / "hosts" / "host-b.toml"
    host_b.write_text(host_b.read_text().replace(
        '[networks.storage]\nmode = "sriov-vf"\nuplink = "ens1f0"',
        '[networks.storage]\nmode = "macvtap-vepa"\nuplink = "ens1f0"'))
    result = run_hook(["vm1", "migrate", "begin", "-"], VM1_ON_HOST_A, mappings=mappings)
    assert result.returncode == 1
    assert result.stdout == b""
    assert b"[CANNOT_REWRITE]" in result.stderr
    assert b"another device" in result.stderr


@pytest.mark.parametrize(("xml", "words"), [
    (b"<domain><name>vm1</name><devices><interface type='direct'></devices></domain>",
     b"not well-formed XML: mismatched tag"),
    (b'<!DOCTYPE d [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]>'
     b"<domain><name>&b;</name></domain>", b"has a DOCTYPE"),
    (b"", b"is empty"),
    (VM1_ON_HOST_A.replace(b"<interface type='user'>", b"<interface type='warp'>"),
     b"[UNKNOWN_INTERFACE_TYPE]"),
    (VM1_ON_HOST_A.replace(b"<mac address='52:54:00:12:34:57'/>", b""), b"[MAC_MISSING]"),
    (VM1_ON_HOST_A.replace(b"netmap-vf-eno1", b"netmap-vf-eno9"), b"[INTERFACE_UNMAPPED]"),
])
def test_bad_input_refuses_the_migration(xml: bytes, words: bytes) -> None:
    result = run_hook(["vm1", "migrate", "begin", "-"], xml)
    assert result.returncode != 0
    assert result.stdout == b""
    assert words in result.stderr
    assert b"refusing to migrate vm1" in result.stderr
    assert b"Traceback" not in result.stderr


def test_missing_mappings_refuse_rather_than_guess(tmp_path: Path) -> None:
    result = run_hook(["vm1", "migrate", "begin", "-"], VM1_ON_HOST_A, mappings=tmp_path)
    assert result.returncode == 2
    assert b"is not a mappings directory" in result.stderr


def test_unknown_this_host_refuses() -> None:
    result = run_hook(["vm1", "migrate", "begin", "-"], VM1_ON_HOST_A, host="host-z")
    assert result.returncode == 2
    assert b"unknown host 'host-z'" in result.stderr


def test_guest_netmap_does_not_manage_passes_through_byte_identical() -> None:
    foreign = (b"<domain type='kvm'><name>other</name><devices><interface type='bridge'>"
               b"<mac address='52:54:00:99:00:01'/><source bridge='virbr7'/></interface>"
               b"</devices></domain>\n")
    result = run_hook(["other", "migrate", "begin", "-"], foreign)
    assert result.returncode == 0
    assert result.stdout == foreign
    assert result.stderr == b""


@pytest.mark.parametrize("operation", [["prepare", "begin", "-"], ["start", "begin", "-"],
                                       ["started", "begin", "-"], ["stopped", "end", "-"],
                                       ["release", "end", "-"], ["reconnect", "begin", "-"],
                                       ["migrate", "end", "-"]])
def test_other_operations_do_nothing(operation: list[str]) -> None:
    # garbage on stdin: proof that it is not even parsed
    result = run_hook(["vm1", *operation], b"<not xml", mappings=Path("/nonexistent"))
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")


def test_restore_begin_hands_its_input_on() -> None:
    result = run_hook(["vm1", "restore", "begin", "-"], VM1_ON_HOST_A)
    assert result.returncode == 0
    assert result.stdout == VM1_ON_HOST_A


def test_pass_through_imports_nothing_heavy() -> None:
    probe = ("import sys; from netmap.libvirt.hook import main; code = main(); "
             "heavy = sorted({m.split('.')[0] for m in sys.modules} & "
             "{'networkx', 'rich', 'pyroute2', 'netmap.rules.check', 'tomli'}); "
             "print(code, heavy)")
    result = subprocess.run([sys.executable, "-c", probe, "vm1", "started", "begin", "-"],
                            capture_output=True, text=True, timeout=60, check=False,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.stdout.strip() == "0 []", result.stderr


def test_usage_error_exits_2() -> None:
    result = run_hook(["vm1"], b"")
    assert result.returncode == 2
    assert b"usage: netmap-libvirt-hook" in result.stderr


@pytest.mark.parametrize(("old", "new"), [
    (b"queues='4'", b"queues='2'"), (b"bus='0x01'", b"bus='0x05'"),
    (b"52:54:00:12:34:56'/>", b"52:54:00:12:34:99'/>"), (b"mode=\"vepa\"/>", b"mode='vepa'/>"),
])
def test_the_comparison_itself_catches_guest_visible_or_byte_changes(old: bytes,
                                                                     new: bytes) -> None:
    changed = VM1_ON_HOST_A.replace(old, new, 1)
    assert changed != VM1_ON_HOST_A
    with pytest.raises(AssertionError):
        assert_only_sources_differ(VM1_ON_HOST_A, changed)


def test_domain_that_differs_from_the_guest_file_is_checked_as_it_runs() -> None:
    # vm1.toml lists two NICs; the running domain lost its storage leg: prod alone is
    # checked (and host-c, which lacks storage, becomes possible), with a warning.
    start = VM1_ON_HOST_A.index(b"    <interface type='network'>")
    end = VM1_ON_HOST_A.index(b"    <interface type='user'>")
    one_nic = VM1_ON_HOST_A[:start] + VM1_ON_HOST_A[end:]
    result = run_hook(["vm1", "migrate", "begin", "-"], one_nic, host="host-c")
    assert result.returncode == 0, result.stderr.decode()
    assert b"differ from" in result.stderr
    assert b"52:54:00:12:34:57 on storage" in result.stderr
    assert source_attrs(result.stdout)[0] == ("direct", {"dev": "ens1f0", "mode": "bridge"})


def test_logical_network_name_becomes_the_destination_pool() -> None:
    # <source network='storage'/> names the logical network; host-b serves it from its
    # PF's VF pool, so the tag gains the pool's name and a portgroup, in the same quotes.
    xml = VM1_ON_HOST_A.replace(b"<source network='netmap-vf-eno1' portgroup='storage'/>",
                                b"<source network='storage'/>")
    result = run_hook(["vm1", "migrate", "begin", "-"], xml)
    assert result.returncode == 0, result.stderr.decode()
    assert b"<source network='netmap-vf-ens1f0' portgroup='storage'/>" in result.stdout
    assert masked_canonical(xml) == masked_canonical(result.stdout)
    assert xml.replace(b"<source network='storage'/>", b"").replace(b"eth0", b"eno2") == (
        result.stdout.replace(b"<source network='netmap-vf-ens1f0' portgroup='storage'/>", b""))


def test_vf_by_pci_address_cannot_follow_the_guest() -> None:
    xml = VM1_ON_HOST_A.replace(
        b"<interface type='network'>", b"<interface type='hostdev' managed='yes'>").replace(
        b"<source network='netmap-vf-eno1' portgroup='storage'/>",
        b"<source><address type='pci' domain='0x0000' bus='0x06' slot='0x10' function='0x2'/>"
        b"</source><vlan><tag id='200'/></vlan>")
    result = run_hook(["vm1", "migrate", "begin", "-"], xml)
    assert result.returncode == 1
    assert result.stdout == b""
    assert b"[CANNOT_REWRITE]" in result.stderr
    assert b"PCI address" in result.stderr


# --- size: never a cut document ---------------------------------------------------------

def _padded(size: int) -> bytes:
    """VM1_ON_HOST_A grown to `size` bytes with a long <description>."""
    head, tail = VM1_ON_HOST_A.split(b"</description>")
    return head + b"x" * (size - len(VM1_ON_HOST_A)) + b"</description>" + tail


@pytest.mark.parametrize("operation", ["restore", "migrate"])
def test_domain_larger_than_netmap_reads_is_refused_never_cut(operation: str) -> None:
    result = run_hook(["vm1", operation, "begin", "-"], _padded(9 * 1024 * 1024))
    assert result.returncode == 2
    assert result.stdout == b""
    assert b"larger than 8 MiB" in result.stderr
    assert b"fix:" in result.stderr


def test_restore_of_a_domain_at_the_limit_is_handed_on_whole() -> None:
    at_limit = _padded(8 * 1024 * 1024)
    result = run_hook(["vm1", "restore", "begin", "-"], at_limit)
    assert result.returncode == 0
    assert result.stdout == at_limit


# --- one parser, one verdict: the hook refuses what import refuses ------------------------

# vm88: in no guest file; netmap knows it only from the domain
VM88 = b"""<domain type='kvm'>
  <name>vm88</name>
  <metadata>
    <netmap:guest xmlns:netmap="https://netmap.dev/xmlns/1">
      <netmap:nic mac="52:54:00:88:00:01" network="mgmt"/>
    </netmap:guest>
  </metadata>
  <devices>
    <interface type='bridge'>
      <mac address='52:54:00:88:00:01'/>
      <source bridge='br-eth1'/>
      <model type='virtio'/>
    </interface>
  </devices>
</domain>
"""


def _import_exit(xml: bytes, tmp_path: Path) -> int:
    domain = tmp_path / "domain.xml"
    domain.write_bytes(xml)
    return cli_main(["--mappings", str(EXAMPLE_MAPPINGS), "import", str(domain)])


@pytest.mark.parametrize(("change", "code"), [
    ((b"<mac address='52:54:00:88:00:01'/>", b""), b"[MAC_MISSING]"),
    ((b"<mac address='52:54:00:88:00:01'/>", b"<mac address='52:54:00:88:00'/>"),
     b"[MAC_INVALID]"),
    ((b"<mac address='52:54:00:88:00:01'/>", b"<mac address='01:54:00:88:00:01'/>"),
     b"[MAC_INVALID]"),
    ((b'network="mgmt"', b'network="nowhere"'), b"[METADATA_INVALID]"),
])
def test_guest_with_netmap_metadata_and_a_bad_nic_is_refused_as_import_refuses_it(
        change: tuple[bytes, bytes], code: bytes, tmp_path: Path, capsys) -> None:
    xml = VM88.replace(*change)
    assert _import_exit(xml, tmp_path) == 2
    capsys.readouterr()
    result = run_hook(["vm88", "migrate", "begin", "-"], xml)
    assert result.returncode == 2
    assert result.stdout == b""
    assert code in result.stderr
    assert b"refusing to migrate vm88 to host-b" in result.stderr


def test_guest_with_netmap_metadata_migrates_when_it_is_sound(tmp_path: Path) -> None:
    assert _import_exit(VM88, tmp_path) == 0
    result = run_hook(["vm88", "migrate", "begin", "-"], VM88)
    assert result.returncode == 0, result.stderr
    assert result.stdout == VM88.replace(b"br-eth1", b"br-eno3")


# --- a guest netmap has no file or metadata for ---------------------------------------------

# vm77 as it runs on host-a: prod as a macvtap on host-a's VLAN device; no netmap metadata,
# no guests/vm77.toml. host-a's mapping explains the interface, so netmap knows its network.
VM77 = b"""<domain type='kvm'>
  <name>vm77</name>
  <devices>
    <interface type='direct'>
      <mac address='52:54:00:77:00:01'/>
      <source dev='eth0.100' mode='vepa'/>
      <model type='virtio'/>
    </interface>
  </devices>
</domain>
"""


def test_unknown_guest_whose_interfaces_a_mapping_explains_is_checked_and_rewritten() -> None:
    result = run_hook(["vm77", "migrate", "begin", "-"], VM77)
    assert result.returncode == 0, result.stderr
    assert result.stdout == VM77.replace(b"eth0.100", b"eno2.100")
    # and refused where the check fails: host-c's prod is another forwarding class, strict
    strict = run_hook(["vm77", "migrate", "begin", "-"], VM77, host="host-c",
                      NETMAP_STRICT="1")
    assert strict.returncode == 1
    assert b"[SEMANTIC_CHANGED]" in strict.stderr


def test_unknown_guest_with_an_explained_interface_but_no_mac_is_refused(tmp_path: Path,
                                                                      capsys) -> None:
    xml = VM77.replace(b"<mac address='52:54:00:77:00:01'/>", b"")
    assert _import_exit(xml, tmp_path) == 2
    capsys.readouterr()
    result = run_hook(["vm77", "migrate", "begin", "-"], xml)
    assert result.returncode == 2
    assert b"[MAC_MISSING]" in result.stderr


def test_unknown_guest_without_a_mac_on_an_unknown_bridge_passes_through() -> None:
    foreign = (b"<domain><name>other</name><devices><interface type='bridge'>"
               b"<source bridge='virbr7'/></interface></devices></domain>\n")
    result = run_hook(["other", "migrate", "begin", "-"], foreign)
    assert result.returncode == 0
    assert result.stdout == foreign
    assert result.stderr == b""


def test_a_bug_refuses_the_migration_with_the_bug_exit_code(monkeypatch) -> None:
    """Not 3 (a kernel refusal elsewhere) nor 1 (incompatible): 4, as the command line."""
    from netmap.errors import EXIT_BUG
    from netmap.libvirt import hook

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("unexpected")

    monkeypatch.setattr(hook, "_migrate_begin", broken)
    result = hook.migrate_begin("vm1", b"<domain/>", mappings=str(EXAMPLE_MAPPINGS),
                                host="host-b")
    assert result.exit_code == EXIT_BUG == 4
    assert result.output == b""
    assert "this is a bug in netmap" in result.messages[0]
