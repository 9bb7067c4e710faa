"""Pure parts of `locate` and the execution journal: the libvirt_uri key, conclusions drawn
from the daemons' answers, the guest-file writer. No root, no libvirt."""

from __future__ import annotations

from pathlib import Path

import pytest

from netmap.errors import InputError
from netmap.libvirt.journal import (
    FAILED,
    MIGRATING,
    RELEASED,
    Journal,
    JournalMove,
)
from netmap.load import load_fleet
from netmap.query.locate import (
    Asked,
    host_updates,
    locate,
    located_fleet,
    location_warnings,
    not_running_on,
    unmapped_guests,
    unplaced,
)
from tests.conftest import guest_toml, write_fleet

NETWORKS = '[networks.mgmt]\nsegment = "s1"\n'
HOST = ('[host]\nname = "{name}"\n{extra}\n[uplinks.eth0]\nsegments = ["s1"]\n\n'
        '[networks.mgmt]\nmode = "bridge"\nuplink = "eth0"\n')


def _fleet(tmp_path: Path, extra: str = 'libvirt_uri = "qemu+ssh://{name}/system"\n'):
    hosts = {name: HOST.format(name=name, extra=extra.format(name=name))
             for name in ("h1", "h2", "h3")}
    guests = {name: guest_toml(name, "h1", ("mgmt", f"52:54:00:00:00:0{i}"))
              for i, name in enumerate(("g1", "g2", "g3"), 1)}
    return load_fleet(write_fleet(tmp_path / "m", NETWORKS, hosts, guests))


def test_libvirt_uri_is_read_into_the_host(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path)
    assert fleet.problems == ()
    assert fleet.hosts["h2"].libvirt_uri == "qemu+ssh://h2/system"
    assert _fleet(tmp_path / "none", extra="").hosts["h1"].libvirt_uri is None


@pytest.mark.parametrize("uri", ["h2", "qemu+ssh//h2/system", "qemu://h 2/system", "QEMU:///x"])
def test_a_libvirt_uri_that_is_not_one_names_file_key_line_and_fix(tmp_path: Path,
                                                                    uri: str) -> None:
    fleet = _fleet(tmp_path, extra=f'libvirt_uri = "{uri}"\n')
    (problem, *_) = fleet.problems
    assert isinstance(problem, InputError)
    assert problem.file.endswith("hosts/h1.toml")
    assert problem.key == "host.libvirt_uri"
    assert problem.line == 3
    assert "is not a libvirt connection URI" in str(problem)
    assert "qemu+ssh://host-a/system" in str(problem)


def test_a_libvirt_uri_that_is_not_text_is_refused(tmp_path: Path) -> None:
    (problem, *_) = _fleet(tmp_path, extra="libvirt_uri = 3\n").problems
    assert problem.key == "host.libvirt_uri"


def test_locate_concludes_only_from_the_answers(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path)
    answers = [Asked("h1", frozenset({"g1", "stray"})), Asked("h2", frozenset({"g2", "g1"})),
               Asked("h3", problem="connection refused")]
    found = {loc.guest: (loc.status, loc.running_on, loc.unasked)
             for loc in locate(fleet, answers, ["g1", "g2", "g3"])}
    assert found == {"g1": ("several", ("h1", "h2"), ()),
                     "g2": ("moved", ("h2",), ()),
                     # h3 did not answer: g3 may run there
                     "g3": ("unknown", (), ("h3",))}
    assert unmapped_guests(answers, fleet) == [("stray", "h1")]
    # only a guest seen on exactly one host is written back
    assert host_updates(locate(fleet, answers, ["g1", "g2", "g3"])) == {"g2": "h2"}


def test_a_guest_nobody_runs_is_not_running_only_when_every_host_answered(
        tmp_path: Path) -> None:
    fleet = _fleet(tmp_path)
    answers = [Asked("h1", frozenset({"g1"})), Asked("h2"), Asked("h3")]
    found = {loc.guest: loc.status for loc in locate(fleet, answers, ["g1", "g3"])}
    assert found == {"g1": "agrees", "g3": "not-running"}


def test_located_fleet_moves_only_what_one_host_runs_and_warns_of_the_rest(
        tmp_path: Path) -> None:
    """--locate on show/check/drain: g2 runs on h2 (its file says h1) and is counted there;
    g1 on two hosts and g3 unseen with h3 silent stay where their files say, each named in
    a warning, as is h3 itself."""
    fleet = _fleet(tmp_path)
    answers = [Asked("h1", frozenset({"g1"})), Asked("h2", frozenset({"g1", "g2"})),
               Asked("h3", problem="connection refused")]
    locations = locate(fleet, answers, sorted(fleet.guests))
    moved = located_fleet(fleet, locations)
    assert {n: g.host for n, g in moved.guests.items()} == {"g1": "h1", "g2": "h2", "g3": "h1"}
    assert fleet.guests["g2"].host == "h1"  # the loaded fleet itself is left alone
    warnings = location_warnings(locations, answers)
    assert len(warnings) == 4, warnings
    assert "g1 runs on h1, h2" in warnings[0]
    assert "its file says, h1" in warnings[0]
    assert "g2 runs on h2, its file says h1: counted where it runs" in warnings[1]
    assert "h3 was not asked: connection refused" in warnings[2]
    assert "counted where their files say: g3" in warnings[3]
    # every host answered and none runs g3: said as such, not as unknown
    idle = location_warnings(locate(fleet, [Asked("h1", frozenset({"g1"})), Asked("h2"),
                                            Asked("h3")], ["g1", "g3"]), [])
    assert idle == ["not running on any host, counted where their files say: g3"]
    assert location_warnings(locate(fleet, [Asked("h1", frozenset(fleet.guests))],
                                    sorted(fleet.guests)), []) == []


def test_a_drain_moves_only_what_the_drained_hosts_libvirt_runs(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path)
    h1 = Asked("h1", frozenset({"g1"}))
    assert not_running_on(fleet, h1) == ["g2", "g3"]
    emptied = unplaced(fleet, ["g2", "g3"])
    assert {n: g.host for n, g in emptied.guests.items()} == {"g1": "h1", "g2": None,
                                                               "g3": None}


def test_set_guest_host_changes_that_line_only(tmp_path: Path) -> None:
    from netmap.load.guest_write import set_guest_host

    path = tmp_path / "g.toml"
    text = ('# kept\n[guest]\nname = "g"\nhost = "h1"   # planned\n\n[[nics]]\n'
            'network = "mgmt"\nmac = "52:54:00:00:00:01"\nhost = "not-this"\n')
    path.write_text(text)
    set_guest_host(path, "h2")
    assert path.read_text() == text.replace('host = "h1"', 'host = "h2"', 1)
    path.write_text('[guest]\nname = "g"\n\n[[nics]]\nnetwork = "mgmt"\n')
    set_guest_host(path, "h3")
    assert path.read_text() == '[guest]\nname = "g"\nhost = "h3"\n\n[[nics]]\nnetwork = "mgmt"\n'
    with pytest.raises(InputError, match="domain XML"):
        set_guest_host(tmp_path / "g.xml", "h2")


def test_the_journal_keeps_each_moves_status_across_a_restart(tmp_path: Path) -> None:
    path = Journal.path_for("drain", "host/a", str(tmp_path))
    assert path == tmp_path / "drain-host_a.json"
    journal = Journal(path, [JournalMove("g1", "a", "b"), JournalMove("g2", "a", "c")])
    journal.save()
    journal.update(journal.moves[0], MIGRATING)
    journal.update(journal.moves[1], FAILED, "refused")
    again = Journal.read(path)
    assert again is not None
    assert [(m.guest, m.status, m.message) for m in again.moves] == [
        ("g1", MIGRATING, ""), ("g2", FAILED, "refused")]
    assert [m.guest for m in again.unfinished] == ["g1"]
    again.update(again.moves[0], RELEASED)
    assert Journal.read(path).unfinished == []  # type: ignore[union-attr]
    assert Journal.read(tmp_path / "none.json") is None
    path.write_text("{")
    with pytest.raises(InputError, match="cannot read the journal"):
        Journal.read(path)


def test_without_the_fleet_extra_locate_and_fleet_say_what_to_install(tmp_path: Path) -> None:
    """`pip install .` leaves libvirt-python and ansible-core out (the 'fleet' extra): the
    commands that need them name the package and exit 2, no traceback."""
    import subprocess
    import sys

    from tests.conftest import REPO

    _fleet(tmp_path)
    inventory = tmp_path / "hosts.ini"
    inventory.write_text("host-a\n")
    # a process where neither can be found: libvirt blocked, no `ansible` on PATH
    prelude = ("import sys; sys.modules['libvirt'] = None; "
               "from netmap.cli import run; sys.argv[0] = 'netmap'; run()")
    env = {"PATH": "/nonexistent", "PYTHONPATH": str(REPO),
           "NETMAP_MAPPINGS": str(tmp_path / "m"), "HOME": str(tmp_path)}
    for argv, package in ((["locate"], "libvirt-python"),
                          (["fleet", "drift", "-i", str(inventory)], "ansible-core")):
        done = subprocess.run([sys.executable, "-c", prelude, *argv], env=env,
                              capture_output=True, text=True, check=False)
        assert done.returncode == 2, done.stderr
        assert package in done.stderr
        assert "Traceback" not in done.stderr


def test_a_remote_release_goes_over_the_ssh_libvirt_itself_would_use(tmp_path: Path) -> None:
    from netmap.libvirt.remote import ReleaseFailed, release_command, release_over_ssh, ssh_argv

    remote = release_command("env A=1 /opt/netmap", "g 1", "host-b")
    assert remote == ["env", "A=1", "/opt/netmap", "release", "g 1", "--host", "host-b",
                      "--json"]
    argv = ssh_argv("qemu+ssh://admin@host-b:2222/system?keyfile=/k&no_verify=1"
                    "&command=/bin/myssh", remote)
    assert argv == ["/bin/myssh", "-T", "-o", "BatchMode=yes", "-p", "2222", "-l", "admin",
                    "-i", "/k", "-o", "StrictHostKeyChecking=no", "--", "host-b",
                    "env A=1 /opt/netmap release 'g 1' --host host-b --json"]
    assert ssh_argv("qemu+ssh://host-b/system", remote)[:4] == ["ssh", "-T", "-o",
                                                                 "BatchMode=yes"]
    for uri in ("qemu+unix:///system?socket=/x", "qemu+tls://host-b/system", "qemu:///system"):
        assert ssh_argv(uri, remote) is None, uri
    fleet = _fleet(tmp_path, extra='libvirt_uri = "qemu+tls://{name}/system"\n')
    with pytest.raises(ReleaseFailed) as refused:
        release_over_ssh(fleet.hosts["h1"], "g1", "netmap")
    assert "has no ssh transport" in str(refused.value)
    assert "--inventory" in (refused.value.fix or "")
    assert "netmap release g1 --host h1 --json" in (refused.value.fix or "")
