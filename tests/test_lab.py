"""scripts/lab: it builds namespaces under its prefix, marks them, and tears down only what it
marked; and the README's lab and install examples say what the files do."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import EXAMPLE_MAPPINGS, REPO, ip_links, lab_mappings, needs_netns

from netmap.cli import main as netmap_main
from netmap.lab import DEFAULT_PREFIX, lab_for, lab_mark, main, namespaces
from netmap.load import load_fleet

_COUNTER = itertools.count()


@pytest.fixture
def prefix() -> Iterator[Callable[[], str]]:
    """make() -> a fresh lab prefix nmhi...; every namespace under any of them is deleted
    afterwards, whoever made it (the test made them all)."""
    base = f"nmhi{os.getpid() % 10000}x"
    yield lambda: f"{base}{next(_COUNTER)}"
    for netns in namespaces():
        if netns.startswith(base):
            subprocess.run(["ip", "netns", "del", netns], check=False, capture_output=True)


def _add_foreign(name: str) -> None:
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)


def _ours(start: str) -> set[str]:
    return {n for n in namespaces() if n.startswith(start)}


@needs_netns
def test_up_marks_its_namespaces_and_down_removes_only_those(mappings: Path, prefix,
                                                             capsys) -> None:
    mine = prefix()
    lab_mappings(mappings, mine)
    assert main(["up", "--mappings", str(mappings), "--prefix", mine]) == 0
    built = {f"{mine}-fabric"} | {f"{mine}-{h}" for h in load_fleet(mappings).hosts}
    assert _ours(mine) == built
    assert all(lab_mark(netns) == mine for netns in built)
    # a namespace someone else made with a lab-like name, and one of another lab whose
    # prefix starts like ours
    _add_foreign(f"{mine}-host-z")
    _add_foreign(f"{mine}-fabric2")
    lab_mappings(mappings, f"{mine}-o")
    assert main(["up", "--mappings", str(mappings), "--prefix", f"{mine}-o", "host-a"]) == 0
    capsys.readouterr()
    assert main(["down", "--prefix", mine]) == 0
    out, err = capsys.readouterr()
    assert _ours(mine) == {f"{mine}-host-z", f"{mine}-fabric2", f"{mine}-o-fabric",
                           f"{mine}-o-host-a"}
    assert f"removed netns {mine}-host-a" in out
    assert f"left netns {mine}-host-z alone: not made by scripts/lab" in err
    assert f"left netns {mine}-o-host-a alone: made by the lab with --prefix {mine}-o" in err
    assert main(["down", "--prefix", f"{mine}-o"]) == 0
    assert _ours(mine) == {f"{mine}-host-z", f"{mine}-fabric2"}


@needs_netns
def test_up_refuses_a_taken_name_and_leaves_the_other_namespace_alone(mappings: Path, prefix,
                                                                      capsys) -> None:
    mine = prefix()
    lab_mappings(mappings, mine)
    _add_foreign(f"{mine}-fabric")
    assert main(["up", "--mappings", str(mappings), "--prefix", mine]) == 2
    err = capsys.readouterr().err
    assert f"network namespace(s) {mine}-fabric exist already" in err
    assert "fix:" in err
    assert _ours(mine) == {f"{mine}-fabric"}  # still there, and nothing else was made
    assert lab_mark(f"{mine}-fabric") is None


@needs_netns
def test_prefix_applies_to_every_host_or_the_lab_says_why_not(mappings: Path, prefix,
                                                              capsys) -> None:
    named, asked = prefix(), prefix()
    lab_mappings(mappings, named)  # the mappings say netns = "NAMED-host-x"
    assert main(["up", "--mappings", str(mappings), "--prefix", asked]) == 2
    err = capsys.readouterr().err
    assert (f"hosts/host-a.toml: host.netns: host host-a names namespace '{named}-host-a', "
            f"but the lab with prefix '{asked}' builds '{asked}-host-a'") in err
    assert f'set netns = "{asked}-host-a" in it, or build the lab with --prefix {named}' in err
    assert not _ours(named)
    assert not _ours(asked)
    # a host whose mapping names no namespace gets PREFIX-HOST too
    host_d = mappings / "hosts" / "host-d.toml"
    host_d.write_text(re.sub(r'^netns = ".*"\n', "", host_d.read_text(), flags=re.M))
    assert main(["up", "--mappings", str(mappings), "--prefix", asked, "host-d"]) == 0
    assert _ours(asked) == {f"{asked}-fabric", f"{asked}-host-d"}
    assert main(["down", "--prefix", asked]) == 0
    assert not _ours(asked)


@needs_netns
def test_discover_write_creates_the_missing_directory_and_says_so(lab_factory, tmp_path: Path,
                                                                  monkeypatch, capsys) -> None:
    lab, _ = lab_factory("nmhi", ["host-a"])
    work = tmp_path / "fresh"
    work.mkdir()
    monkeypatch.chdir(work)
    code = netmap_main(["discover", "--netns", lab.hosts["host-a"], "--host", "host-a",
                        "--write", "hosts/host-a.toml"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "created directory hosts for the draft" in err
    assert "[uplinks.eth0]" in (work / "hosts" / "host-a.toml").read_text()


# An ARP request for 10.251.0.2, sent on br-eth1 of host-a; prints each reply's sender MAC.
_ASK_ARP = """
import json, socket, sys, time
mine = bytes.fromhex(sys.argv[2].replace(":", ""))
ask = (b"\\xff" * 6 + mine + b"\\x08\\x06" + bytes.fromhex("0001080006040001") + mine
       + socket.inet_aton("10.251.0.1") + b"\\x00" * 6 + socket.inet_aton("10.251.0.2"))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
s.bind((sys.argv[1], 0))
s.settimeout(0.2)
s.send(ask)
senders, end = [], time.monotonic() + 1.5
while time.monotonic() < end:
    try:
        frame = s.recv(64)
    except TimeoutError:
        continue
    if frame[20:22] == b"\\x00\\x02" and frame[28:32] == socket.inet_aton("10.251.0.2"):
        senders.append(frame[22:28].hex(":"))
print(json.dumps(senders))
"""


@needs_netns
def test_a_host_answers_arp_only_on_the_interface_that_holds_the_address(lab_factory) -> None:
    """host-b has two uplinks on dc1-fabric: eno2 with its vxlan underlay address and eno3
    under a bridge with the address the libvirt lab migrates to. Only the bridge answers for
    that address; were eno2 to answer too, host-a could learn eno2's MAC, and a host with
    strict reverse-path filtering would drop host-a's packets (a migration that timed out)."""
    lab, _ = lab_factory("nmarp", ["host-a", "host-b"])
    for host, uplink, address in (("host-a", "eth1", "10.251.0.1"),
                                  ("host-b", "eno3", "10.251.0.2")):
        batch = f"link add br-{uplink} type bridge\nlink set {uplink} master br-{uplink}\n" \
                f"link set br-{uplink} up\naddr add {address}/24 dev br-{uplink}\n"
        subprocess.run(["ip", "-n", lab.hosts[host], "-batch", "-"], input=batch, text=True,
                       check=True, capture_output=True)
    assert lab.underlay[("host-b", "eno2")]  # the second addressed uplink on the segment

    def mac(host: str, link: str) -> str:
        return ip_links(lab.hosts[host], link)[0]["address"]

    asked = subprocess.run(["ip", "netns", "exec", lab.hosts["host-a"], sys.executable, "-c",
                            _ASK_ARP, "br-eth1", mac("host-a", "br-eth1")],
                           capture_output=True, text=True, check=True)
    assert json.loads(asked.stdout) == [mac("host-b", "br-eno3")]


@needs_netns
def test_a_guest_tap_joining_a_migration_destination_leaves_its_bridge_reachable(
        lab_factory) -> None:
    """A live migration as the libvirt lab makes one: g1's tap (fe:54:..., as libvirt names
    it) is on host-a's br-eth1, and the destination's QEMU puts a tap with the same MAC on
    host-b's br-eno3 before the stream starts. host-b's bridge keeps its uplink's MAC (the
    lab's uplinks have 02: MACs, as a NIC's vendor prefix is below fe:), so host-a still
    reaches 10.251.0.2; had the bridge taken the tap's MAC, host-a's own bridge would keep
    every packet for it, as its own port's."""
    from netmap.lab import uplink_mac

    lab, _ = lab_factory("nmmac", ["host-a", "host-b"])
    for host, uplink, address in (("host-a", "eth1", "10.251.0.1"),
                                  ("host-b", "eno3", "10.251.0.2")):
        batch = (f"link add br-{uplink} type bridge\nlink set {uplink} master br-{uplink}\n"
                 f"link set br-{uplink} up\naddr add {address}/24 dev br-{uplink}\n"
                 f"tuntap add g1tap mode tap\nlink set g1tap address fe:54:00:00:00:01\n"
                 f"link set g1tap master br-{uplink}\nlink set g1tap up\n")
        subprocess.run(["ip", "-n", lab.hosts[host], "-batch", "-"], input=batch, text=True,
                       check=True, capture_output=True)

    def mac(host: str, link: str) -> str:
        return ip_links(lab.hosts[host], link)[0]["address"]

    for host, uplink in (("host-a", "eth1"), ("host-b", "eno3")):
        assert mac(host, uplink) == uplink_mac(lab.hosts[host], uplink)
        assert mac(host, uplink).startswith("02:")
        assert mac(host, f"br-{uplink}") == mac(host, uplink)
    listen = ("import socket\ns = socket.create_server(('10.251.0.2', 49152))\n"
              "s.settimeout(10)\nprint(s.accept()[1][0], flush=True)\n")
    server = subprocess.Popen(["ip", "netns", "exec", lab.hosts["host-b"], sys.executable,
                               "-c", listen], stdout=subprocess.PIPE, text=True)
    connect = ("import socket, time\nend = time.monotonic() + 8\n"
               "while True:\n"
               "    try:\n"
               "        socket.create_connection(('10.251.0.2', 49152), timeout=3).close()\n"
               "        break\n"
               "    except ConnectionRefusedError:\n"
               "        if time.monotonic() > end: raise\n"
               "        time.sleep(0.1)\n")
    try:
        subprocess.run(["ip", "netns", "exec", lab.hosts["host-a"], sys.executable, "-c",
                        connect], check=True, capture_output=True, text=True, timeout=30)
        assert server.communicate(timeout=15)[0].strip() == "10.251.0.1"
    finally:
        server.kill()
        server.wait()


# --- the README says what the files do ------------------------------------------------------

README = (REPO / "README.rst").read_text()


def test_readme_netns_examples_name_namespaces_the_lab_makes() -> None:
    fleet = load_fleet(EXAMPLE_MAPPINGS)
    default_lab = lab_for(fleet, DEFAULT_PREFIX).namespaces()
    named = re.findall(r"^\s*netmap .*--netns (\S+)", README, re.M)  # the example command lines
    assert named
    for netns in named:
        assert netns in default_lab, f"README's --netns {netns}: scripts/lab up makes no such"
    # and the shipped mappings act in the namespaces the default lab builds
    for host in fleet.hosts.values():
        assert host.netns in (None, lab_for(fleet, DEFAULT_PREFIX).hosts[host.name])


def test_readme_describes_ci_run() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    readme = " ".join(README.split())  # a sentence may wrap anywhere
    command = re.search(r"^ +(pip install '\.\[test[^\]]*\]') && (python3 -m pytest .*)$",
                        README, re.M)
    assert command, "README shows no test command"
    install, tests = command.groups()
    # which CI runs with the type check between its install and the tests, as README says
    assert f"{install} && python3 -m mypy && {tests}\n" in ci
    assert "(``python3 -m mypy``, configured in ``pyproject.toml``) between its install and " \
        "the tests" in readme
    for package in ("iproute2", "qemu-system-x86", "libvirt-clients"):
        assert package in ci
    assert "ruff check" in ci
    assert "runs ``ruff``" in readme
