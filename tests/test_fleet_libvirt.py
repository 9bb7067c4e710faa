"""`netmap locate` and `netmap drain --execute` / `migrate` against real libvirt daemons.

host-a, host-b and host-c are lab namespaces (prefix fl), each with a private libvirtd
(scripts/libvirt_lab.py) whose socket is its mapping's libvirt_uri, and netmap's hook
installed. host-d's libvirt_uri names a socket no daemon listens on: an unreachable host.
Migrations are peer to peer: the source daemon dials the destination's socket itself and
QEMU streams over the lab's mgmt segment, to the address the destination's qemu.conf names
as its migration_host. Guests are TCG machines of 32 MiB with nothing to boot.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from tests.conftest import EXAMPLE_MAPPINGS, REPO, lab_mappings
from tests.libvirt_marks import LIBVIRT_LAB, NEEDS_LIBVIRT_PYTHON

sys.path.insert(0, str(REPO / "scripts"))
import libvirt_lab  # scripts/ is not a package
from libvirt_lab import PrivateLibvirtd, ip_json

pytestmark = [*LIBVIRT_LAB, NEEDS_LIBVIRT_PYTHON]

HOSTS = {"host-a": ("eth1", "eth0", 1), "host-b": ("eno3", "eno2", 2),
         "host-c": ("ens1f1", "ens1f0", 3)}  # mgmt uplink, prod uplink, lab address
GUESTS = {  # name -> (mgmt MAC, prod MAC or None)
    "flg1": ("52:54:00:f1:00:01", None),
    "flg2": ("52:54:00:f1:00:02", None),
    "flg3": ("52:54:00:f1:00:03", "52:54:00:f1:01:03"),
}
# an operator's own hook on the destinations that refuses one guest: libvirt cancels that
# migration after netmap's check passed, as it would for any refusal on the destination
REFUSE_FLG2 = """#!/bin/sh
if [ "$1 $2 $3" = "flg2 migrate begin" ]; then
  echo "site policy: flg2 may not move today" >&2
  exit 1
fi
cat
"""

# a destination whose part of one migration hangs (a hook that takes its time): what
# --timeout is for
SLOW_FLG1 = """#!/bin/sh
if [ "$1 $2 $3" = "flg1 migrate begin" ]; then
  sleep 10
fi
cat
"""


def _guest_file(name: str) -> str:
    mgmt, prod = GUESTS[name]
    text = f'[guest]\nname = "{name}"\nhost = "host-a"  # as planned\n'
    if prod:
        text += f'\n[[nics]]\nnetwork = "prod"\nmac = "{prod}"\n'
    return text + f'\n[[nics]]\nnetwork = "mgmt"\nmac = "{mgmt}"\n'


@pytest.fixture(scope="module")
def fleet_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    problem = libvirt_lab.isolation_problem()
    if problem:
        pytest.skip(problem)
    from netmap.lab import build_lab, teardown_lab
    from netmap.load import load_fleet

    mappings = tmp_path_factory.mktemp("fl") / "mappings"
    shutil.copytree(EXAMPLE_MAPPINGS, mappings)
    for old in (mappings / "guests").iterdir():
        old.unlink()
    networks = mappings / "networks.toml"  # no 802.1q in this kernel: prod loses its VLAN
    networks.write_text(networks.read_text().replace("vlan = 100\n", "", 1))
    prefix = f"fl{os.getpid() % 10000}"
    lab_mappings(mappings, prefix)
    root = Path(tempfile.mkdtemp(prefix="fl-libvirt-"))
    daemons: dict[str, PrivateLibvirtd] = {}
    for host, (_, _, index) in HOSTS.items():
        daemons[host] = PrivateLibvirtd(root / host, f"{prefix}-{host}", host, mappings,
                                        migration_host=f"10.251.0.{index}")
    uris = {host: daemon.uri for host, daemon in daemons.items()}
    uris["host-d"] = f"qemu+unix:///system?socket={root}/host-d/no-daemon-here"
    for host, uri in uris.items():
        libvirt_lab.set_host_key(mappings / "hosts" / f"{host}.toml", "libvirt_uri", uri)
    lab = build_lab(load_fleet(mappings), prefix, list(HOSTS))
    try:
        for host, (uplink, _, index) in HOSTS.items():
            libvirt_lab.give_migration_address(lab.hosts[host], uplink, f"br-{uplink}",
                                               f"10.251.0.{index}")
            if host != "host-a":
                refuse = daemons[host].root / "etc/hooks/qemu.d/00-site-policy"
                refuse.write_text(REFUSE_FLG2)
                refuse.chmod(0o755)
        for daemon in daemons.values():
            daemon.start(root / "capabilities")
        yield {"mappings": mappings, "daemons": daemons, "root": root, "lab": lab}
    finally:
        for daemon in daemons.values():
            daemon.stop()
        teardown_lab(lab)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def fleet(fleet_lab: dict, tmp_path: Path) -> Iterator[dict]:
    """The module's daemons with fresh guest files and state; every guest removed after."""
    for name in GUESTS:
        (fleet_lab["mappings"] / "guests" / f"{name}.toml").write_text(_guest_file(name))
    yield {**fleet_lab, "state": tmp_path / "state"}
    for daemon in fleet_lab["daemons"].values():
        for name in daemon.virsh("list", "--all", "--name", check=False).stdout.split():
            daemon.virsh("destroy", name, check=False)
            daemon.virsh("undefine", name, check=False)


def _start(fleet: dict, host: str, name: str) -> None:
    mgmt_uplink, prod_uplink, _ = HOSTS[host]
    mgmt, prod = GUESTS[name]
    interfaces = libvirt_lab.interface_xml("bridge", mgmt, f"bridge='br-{mgmt_uplink}'")
    if prod:
        interfaces = libvirt_lab.interface_xml(
            "direct", prod, f"dev='{prod_uplink}' mode='vepa'") + interfaces
    xml = fleet["root"] / f"{name}.xml"
    xml.write_text(libvirt_lab.domain_xml(name, interfaces))
    daemon = fleet["daemons"][host]
    daemon.virsh("define", str(xml))
    daemon.virsh("start", name)


def _netmap(fleet: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "netmap", *args], capture_output=True,
                          text=True, check=False, cwd=REPO, timeout=240,
                          env={**os.environ, "PYTHONPATH": str(REPO),
                               "NETMAP_MAPPINGS": str(fleet["mappings"]),
                               "NETMAP_STATE_DIR": str(fleet["state"])})


def _running(fleet: dict, host: str) -> set[str]:
    return set(fleet["daemons"][host].virsh("list", "--name").stdout.split())


def _mgmt_bridge_of(fleet: dict, host: str, name: str) -> str:
    daemon = fleet["daemons"][host]
    domain = ET.fromstring(daemon.virsh("dumpxml", name).stdout)
    (nic,) = [n for n in domain.findall("devices/interface") if n.get("type") == "bridge"]
    (link,) = ip_json(daemon.netns, "link", "show", "dev", nic.find("target").get("dev"))
    return link["master"]


def test_locate_asks_every_daemon_reports_the_unreachable_and_writes_what_moved(
        fleet: dict) -> None:
    _start(fleet, "host-a", "flg1")
    _start(fleet, "host-b", "flg3")  # its file still says host-a
    guest_file = fleet["mappings"] / "guests/flg3.toml"
    before = guest_file.read_text()

    done = _netmap(fleet, "locate", "--json")
    assert done.returncode == 1, done.stderr  # a file disagrees with libvirt
    answer = json.loads(done.stdout)
    status = {g["guest"]: (g["status"], g["running_on"]) for g in answer["guests"]}
    assert status == {"flg1": ("agrees", ["host-a"]), "flg3": ("moved", ["host-b"]),
                      # not seen, and host-d did not answer: unknown, never "not running"
                      "flg2": ("unknown", [])}
    hosts = {h["host"]: h for h in answer["hosts"]}
    assert not hosts["host-d"]["answered"]
    assert "no-daemon-here" in hosts["host-d"]["problem"]
    assert [h for h, v in hosts.items() if v["answered"]] == ["host-a", "host-b", "host-c"]
    assert guest_file.read_text() == before  # nothing written without --write

    text = _netmap(fleet, "locate", "flg3")
    assert text.returncode == 1
    assert "flg3 runs on host-b, its file says host-a" in text.stderr
    assert "unreachable: host-d" in text.stdout

    written = _netmap(fleet, "locate", "--write", "--json")
    assert written.returncode == 0, written.stderr
    assert json.loads(written.stdout)["written"] == ["flg3"]
    # that one value changed; the comment and every other line stayed
    assert guest_file.read_text() == before.replace('host = "host-a"', 'host = "host-b"')
    again = json.loads(_netmap(fleet, "locate", "flg3", "--json").stdout)
    assert again["guests"][0]["status"] == "agrees"


def test_locate_on_show_check_and_drain_counts_guests_where_libvirt_runs_them(
        fleet: dict) -> None:
    """flg1 runs on host-a, flg3 on host-b though its file says host-a, flg2 nowhere that
    answered (host-d does not): --locate puts flg3 on host-b, warns of it and of host-d,
    and never places flg2 by a guess."""
    _start(fleet, "host-a", "flg1")
    _start(fleet, "host-b", "flg3")

    by_file = {h["host"]: h["guests"]
               for h in json.loads(_netmap(fleet, "show", "--json").stdout)["hosts"]}
    assert by_file["host-a"] == ["flg1", "flg2", "flg3"]
    assert by_file["host-b"] == []
    shown = _netmap(fleet, "show", "--locate", "--json")
    assert shown.returncode == 0, shown.stderr
    answer = json.loads(shown.stdout)
    hosts = {h["host"]: h["guests"] for h in answer["hosts"]}
    assert hosts["host-a"] == ["flg1", "flg2"]
    assert hosts["host-b"] == ["flg3"]
    assert list(answer["located"]["unreachable"]) == ["host-d"]
    assert "flg3 runs on host-b, its file says host-a" in shown.stderr
    assert "host-d was not asked" in shown.stderr
    assert "counted where their files say: flg2" in shown.stderr
    text = _netmap(fleet, "show", "host-b", "--locate")
    assert text.returncode == 0
    assert "flg3" in text.stdout

    checked = _netmap(fleet, "check", "flg3", "--to", "host-c", "--locate", "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    report = json.loads(checked.stdout)
    assert report["source"] == "host-b"
    assert report["located"]["guests"][0]["status"] == "moved"
    assert {n["source"]["host"] for n in report["nics"]} == {"host-b"}
    unknown = _netmap(fleet, "check", "flg2", "--to", "host-c", "--locate")
    assert unknown.returncode == 2
    assert "libvirt cannot say where flg2 runs" in unknown.stderr
    assert "host-d did not answer" in unknown.stderr
    assert "--from" in unknown.stderr

    planned = _netmap(fleet, "drain", "host-a", "--locate", "--exclude", "host-d", "--json")
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert [m["guest"] for m in json.loads(planned.stdout)["moves"]] == ["flg1"]
    assert "libvirt on host-a does not run flg2: not moved" in planned.stderr
    assert [m["guest"] for m in json.loads(_netmap(
        fleet, "drain", "host-b", "--locate", "--exclude", "host-d", "--json").stdout
    )["moves"]] == ["flg3"]
    silent = _netmap(fleet, "drain", "host-d", "--locate")
    assert silent.returncode == 2
    assert "host-d was not asked" in silent.stderr
    assert "drop --locate" in silent.stderr


def test_drain_execute_moves_through_libvirt_and_a_refused_guest_stays_home(
        fleet: dict) -> None:
    for name in GUESTS:
        _start(fleet, "host-a", name)
    taps_before = {name: _mgmt_bridge_of(fleet, "host-a", name) for name in GUESTS}
    assert set(taps_before.values()) == {"br-eth1"}

    done = _netmap(fleet, "drain", "host-a", "--execute", "--exclude", "host-d",
                   "--parallel", "2", "--json")

    assert done.returncode == 3, done.stdout + done.stderr  # one move failed
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    summary = lines[-1]
    assert summary["event"] == "summary"
    outcomes = {o["guest"]: o for o in summary["outcomes"]}
    assert {g: o["status"] for g, o in outcomes.items()} == {
        "flg1": "released", "flg2": "failed", "flg3": "released"}
    for name in ("flg1", "flg3"):  # libvirt's part of each move, timed on its own
        assert 0 < outcomes[name]["migration_seconds"] <= outcomes[name]["seconds"]
    print("per guest: seconds, of which in libvirt:",
          {g: (o["seconds"], o["migration_seconds"]) for g, o in outcomes.items()})
    assert "site policy: flg2 may not move today" in outcomes["flg2"]["message"]
    assert "still runs on host-a" in outcomes["flg2"]["message"]
    events = [(e["guest"], e["event"]) for e in lines[:-1]]
    for name in ("flg1", "flg3"):
        assert [e for g, e in events if g == name] == ["start", "checked", "migrating", "done"]
    # where libvirt says they run, and on which bridge the destination plugged them
    for name in ("flg1", "flg3"):
        dest = outcomes[name]["dest"]
        assert name in _running(fleet, dest)
        assert _mgmt_bridge_of(fleet, dest, name) == f"br-{HOSTS[dest][0]}"
        # the kept definition boots on the destination's devices too (rewritten by netmap)
        inactive = fleet["daemons"][dest].virsh("dumpxml", "--inactive", name).stdout
        assert f"bridge='br-{HOSTS[dest][0]}'" in inactive
        assert "br-eth1" not in inactive
    assert _running(fleet, "host-a") == {"flg2"}
    assert _mgmt_bridge_of(fleet, "host-a", "flg2") == "br-eth1"  # its endpoint still there
    for dest in ("host-b", "host-c"):
        assert "flg2" not in fleet["daemons"][dest].virsh(
            "list", "--all", "--name").stdout.split()  # nothing left on a destination
    if outcomes["flg3"]["dest"]:
        (macvtap,) = [link for link in ip_json(fleet["daemons"][outcomes["flg3"]["dest"]].netns,
                                               "-d", "link", "show")
                      if link.get("linkinfo", {}).get("info_kind") == "macvtap"]
        assert macvtap["link"] == HOSTS[outcomes["flg3"]["dest"]][1]
    assert not list(fleet["state"].glob("drain-*.json"))  # every move finished


def test_an_interrupted_run_is_refused_then_resumed_from_its_journal(fleet: dict) -> None:
    """A run that stopped while flg1 was migrating (it got there) with flg3 not begun:
    a new run is refused, --resume settles flg1 by asking both daemons and moves flg3."""
    for name in ("flg1", "flg3"):
        _start(fleet, "host-a", name)
    daemons = fleet["daemons"]
    daemons["host-a"].virsh("migrate", "--live", "--p2p", "flg1", daemons["host-b"].uri)
    journal = fleet["state"] / "drain-host-a.json"
    journal.parent.mkdir(parents=True)
    journal.write_text(json.dumps({"moves": [
        {"guest": "flg1", "source": "host-a", "dest": "host-b", "status": "migrating",
         "message": ""},
        {"guest": "flg3", "source": "host-a", "dest": "host-b", "status": "pending",
         "message": ""}]}))

    refused = _netmap(fleet, "drain", "host-a", "--execute", "--exclude", "host-d")
    assert refused.returncode == 2
    assert "was interrupted" in refused.stderr
    assert "--resume" in refused.stderr

    done = _netmap(fleet, "drain", "host-a", "--execute", "--resume", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(done.stdout.splitlines()[-1])
    assert {o["guest"]: o["status"] for o in summary["outcomes"]} == {
        "flg1": "released", "flg3": "released"}
    assert _running(fleet, "host-b") == {"flg1", "flg3"}
    assert _running(fleet, "host-a") == set()
    assert not journal.exists()


def test_a_migration_past_its_timeout_is_aborted_and_the_guest_stays_home(
        fleet: dict) -> None:
    _start(fleet, "host-a", "flg1")
    slow = fleet["daemons"]["host-b"].root / "etc/hooks/qemu.d/01-slow"
    slow.write_text(SLOW_FLG1)
    slow.chmod(0o755)
    try:
        done = _netmap(fleet, "migrate", "flg1", "--to", "host-b", "--timeout", "3", "--json")
    finally:
        slow.unlink()
    assert done.returncode == 3, done.stdout + done.stderr
    (outcome,) = json.loads(done.stdout.splitlines()[-1])["outcomes"]
    print("aborted migration:", outcome)
    assert outcome["status"] == "failed"
    assert "aborted after --timeout 3 s" in outcome["message"]
    assert "still runs on host-a" in outcome["message"]  # both daemons were asked
    assert outcome["migration_seconds"] >= 3
    # the guest runs on its source, on its bridge; nothing of it is left on the destination
    assert _running(fleet, "host-a") == {"flg1"}
    assert _mgmt_bridge_of(fleet, "host-a", "flg1") == "br-eth1"
    assert "flg1" not in fleet["daemons"]["host-b"].virsh("list", "--all", "--name").stdout
    assert [link["ifname"] for link in ip_json(fleet["daemons"]["host-b"].netns, "-d", "link",
                                               "show")
            if link.get("linkinfo", {}).get("info_kind") == "tun"] == []
    assert not (fleet["state"] / "migrate-flg1.json").exists()  # settled: nothing to resume


def test_migrate_one_guest_and_refuse_a_host_without_a_uri(fleet: dict) -> None:
    _start(fleet, "host-a", "flg1")
    host_c = fleet["mappings"] / "hosts/host-c.toml"
    text = host_c.read_text()
    host_c.write_text(re.sub(r"^libvirt_uri = .*\n", "", text, flags=re.M))
    try:
        refused = _netmap(fleet, "migrate", "flg1", "--to", "host-c")
    finally:
        host_c.write_text(text)
    assert refused.returncode == 2
    assert "host-c name(s) no libvirt_uri" in refused.stderr
    assert "host-c.toml" in refused.stderr

    done = _netmap(fleet, "migrate", "flg1", "--to", "host-c")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "moved 1 of 1 guest(s)" in done.stdout
    assert _running(fleet, "host-c") == {"flg1"}
    assert _mgmt_bridge_of(fleet, "host-c", "flg1") == "br-ens1f1"


def test_stop_on_error_leaves_the_rest_for_abort(fleet: dict) -> None:
    """flg2 (refused by the destination's site hook) first, flg1 after it, one at a time:
    with --stop-on-error flg1 never starts and stays pending in the journal; --abort then
    forgets it, and both guests still run on host-a."""
    for name in ("flg1", "flg2"):
        _start(fleet, "host-a", name)
    journal = fleet["state"] / "drain-host-a.json"
    journal.parent.mkdir(parents=True)
    journal.write_text(json.dumps({"moves": [
        {"guest": guest, "source": "host-a", "dest": "host-b", "status": "pending",
         "message": ""} for guest in ("flg2", "flg1")]}))

    done = _netmap(fleet, "drain", "host-a", "--execute", "--resume", "--stop-on-error",
                   "--json")
    assert done.returncode == 3, done.stdout + done.stderr
    summary = json.loads(done.stdout.splitlines()[-1])
    assert {o["guest"]: o["status"] for o in summary["outcomes"]} == {
        "flg2": "failed", "flg1": "skipped"}
    assert [m["status"] for m in json.loads(journal.read_text())["moves"]] == [
        "failed", "pending"]

    aborted = _netmap(fleet, "drain", "host-a", "--execute", "--abort", "--json")
    assert aborted.returncode == 0, aborted.stdout + aborted.stderr
    assert not journal.exists()
    assert _running(fleet, "host-a") == {"flg1", "flg2"}
    assert _running(fleet, "host-b") == set()


def test_ctrl_c_lets_the_migration_under_way_finish_and_starts_no_other(fleet: dict) -> None:
    (fleet["mappings"] / "guests/flg2.toml").unlink()  # two guests: one moves, one waits
    for name in ("flg1", "flg3"):
        _start(fleet, "host-a", name)
    drain = subprocess.Popen(
        [sys.executable, "-m", "netmap", "drain", "host-a", "--execute", "--exclude", "host-d",
         "--parallel", "1", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO),
                                  "NETMAP_MAPPINGS": str(fleet["mappings"]),
                                  "NETMAP_STATE_DIR": str(fleet["state"])})
    try:
        assert drain.stdout is not None
        for line in drain.stdout:  # the plan's moves, one at a time
            event = json.loads(line)
            if event["event"] == "migrating":
                first = event["guest"]
                drain.send_signal(signal.SIGINT)
                break
        out, err = drain.communicate(timeout=120)
    finally:
        if drain.poll() is None:
            drain.kill()
    assert drain.returncode == 130, out + err
    assert "interrupted" in err
    other = ({"flg1", "flg3"} - {first}).pop()
    moves = {m["guest"]: m for m in json.loads(
        (fleet["state"] / "drain-host-a.json").read_text())["moves"]}
    assert moves[first]["status"] == "released"  # it went on to its end
    assert moves[other]["status"] == "pending"  # never started
    assert first in _running(fleet, moves[first]["dest"])
    assert other in _running(fleet, "host-a")

    done = _netmap(fleet, "drain", "host-a", "--execute", "--resume", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert _running(fleet, "host-a") == set()
    assert other in _running(fleet, moves[other]["dest"])
