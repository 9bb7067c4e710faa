"""The load's store (netmap/load/store.py): same answers and errors as a load without it,
and never stale.

Each test gets its own mappings copy and cache directory, and the store is used for
these few files too (STORE_MIN_FILES). The racy window (files changed more recently than
this are never stored, see netmap/load/store.py) is shortened from 2 s to 50 ms so that
tests can let files settle with a short sleep instead of seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import placement_oracle as oracle
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from netmap.errors import InputError
from netmap.load import fleet as loading
from netmap.load import load_fleet, parse, store
from netmap.model.fleet import (
    Fleet,
    Host,
    IndexedGuests,
    IndexedHosts,
    guest_hosts,
    host_mapping_file,
    hosts_binding,
    mac_users,
)
from netmap.query import placement
from netmap.query.graph import build_graph
from netmap.support import gcpause

WINDOW_NS = 50_000_000


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    target = tmp_path / "cache"
    monkeypatch.setenv("NETMAP_CACHE_DIR", str(target))
    monkeypatch.setattr(store, "RACY_WINDOW_NS", WINDOW_NS)
    monkeypatch.setattr(loading, "STORE_MIN_FILES", 0)
    return target


def uncached(root: Path | str) -> Fleet:
    """The fleet as the parsers give it, without the store."""
    base = parse.mappings_dir(root)
    return parse.assemble(base, parse.load_networks(base / "networks.toml"),
                          *parse.fleet_file_names(base))


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How often each host/guest file was really parsed (not answered from the cache)."""
    counts: Counter[str] = Counter()

    def counting(real):
        def parsed(path, *args):
            counts[Path(path).name] += 1
            return real(path, *args)
        return parsed

    monkeypatch.setattr(parse, "load_host", counting(parse.load_host))
    monkeypatch.setattr(parse, "load_guest", counting(parse.load_guest))
    return counts


def settle() -> None:
    """Let every file written so far age past the (shortened) racy window."""
    time.sleep(WINDOW_NS / 1e9 * 1.5)


def snapshot(fleet: Fleet) -> tuple:
    """What a caller sees; errors compared by their full message and location."""
    problems = [(type(p).__name__, str(p), p.file, p.key, p.line) for p in fleet.problems]
    sources = [(n.source.file, n.source.line) for h in fleet.hosts.values()
               for n in (*h.uplinks.values(), *h.bindings.values())]
    sources += [(nic.source.file, nic.source.line) for g in fleet.guests.values()
                for nic in g.nics]
    # what queries ask without reading the hosts (a warm load answers it from its index)
    index = {network: sorted(hosts_binding(fleet.hosts, network)) for network in fleet.networks}
    files = [host_mapping_file(fleet.hosts, name) for name in fleet.hosts]
    return (fleet.networks, fleet.hosts, fleet.guests, problems, sources, fleet.root,
            index, files)


def same_as_uncached(mappings: Path) -> Fleet:
    cached = load_fleet(mappings)
    assert snapshot(cached) == snapshot(uncached(mappings))
    return cached


def keep_size_and_mtime(path: Path, old: str, new: str) -> None:
    """Edit in place without changing the size or the mtime: only ctime can tell."""
    assert len(old.encode()) == len(new.encode())
    before = path.stat()
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


# --- hits -----------------------------------------------------------------------------------

def test_second_load_answers_from_cache(mappings: Path, cache_dir: Path,
                                        parses: Counter[str]) -> None:
    settle()
    same_as_uncached(mappings)
    assert parses["host-a.toml"] == 1
    assert parses["vm1.toml"] == 1
    assert len(list(cache_dir.iterdir())) == 1
    parses.clear()
    warm = same_as_uncached(mappings)
    assert not parses, f"files parsed again although unchanged: {dict(parses)}"
    # lines of cached objects are still found (they travel with the cache)
    source = warm.hosts["host-a"].bindings["prod"].source
    assert Path(source.file).read_text().splitlines()[source.line - 1] == "[networks.prod]"


def test_recent_files_are_never_cached(mappings: Path, cache_dir: Path, parses: Counter[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # with the real 2 s window, files written a moment ago could still change within one
    # timestamp tick without a visible change: they are parsed every time
    monkeypatch.setattr(store, "RACY_WINDOW_NS", 3_600 * 10**9)
    load_fleet(mappings)
    load_fleet(mappings)
    assert parses["host-a.toml"] == 2
    assert parses["vm4.toml"] == 2


def test_only_the_changed_file_is_parsed_again(mappings: Path, cache_dir: Path,
                                               parses: Counter[str]) -> None:
    settle()
    load_fleet(mappings)
    parses.clear()
    keep_size_and_mtime(mappings / "hosts" / "host-c.toml", "max_guests = 20",
                        "max_guests = 21")
    fleet = same_as_uncached(mappings)
    assert fleet.hosts["host-c"].max_guests == 21
    assert parses == Counter({"host-c.toml": 1})


# --- staleness ------------------------------------------------------------------------------

def test_edit_keeping_size_and_mtime_is_seen(mappings: Path, cache_dir: Path) -> None:
    settle()
    assert load_fleet(mappings).hosts["host-b"].uplinks["eno2"].mtu == 9000
    keep_size_and_mtime(mappings / "hosts" / "host-b.toml", "mtu = 9000", "mtu = 8000")
    assert same_as_uncached(mappings).hosts["host-b"].uplinks["eno2"].mtu == 8000
    settle()  # and again once the edit itself has settled and been cached
    keep_size_and_mtime(mappings / "hosts" / "host-b.toml", "mtu = 8000", "mtu = 7000")
    assert same_as_uncached(mappings).hosts["host-b"].uplinks["eno2"].mtu == 7000


def test_guest_edit_keeping_size_and_mtime_is_seen(mappings: Path, cache_dir: Path) -> None:
    settle()
    load_fleet(mappings)
    keep_size_and_mtime(mappings / "guests" / "vm1.toml", '"host-a"', '"host-b"')
    assert same_as_uncached(mappings).guests["vm1"].host == "host-b"


def test_stored_objects_keep_no_file_text(mappings: Path, cache_dir: Path) -> None:
    """A stored host or guest names its file and a digest of the text, not the text (it
    was half of a stored host's bytes); its lines are read back from the file."""
    settle()
    load_fleet(mappings)
    with sqlite3.connect(_the_cache_file(cache_dir)) as db:
        blobs = dict(db.execute("SELECT path, object FROM files"))
    host_a = next(blob for path, blob in blobs.items() if path.endswith("host-a.toml"))
    assert b"the underlay needs an address" not in host_a  # a comment of that file
    assert not any(b"[networks." in blob or b"[[nics]]" in blob for blob in blobs.values())
    warm = same_as_uncached(mappings)  # every source line of every host and guest too
    source = warm.hosts["host-a"].bindings["prod"].source
    assert Path(source.file).read_text().splitlines()[source.line - 1] == "[networks.prod]"


def test_line_read_back_from_a_changed_file_is_unknown_not_another_versions(
        mappings: Path, cache_dir: Path) -> None:
    """A stored host's line is read from its file when asked for. Changed since it was
    parsed (here after this load took the host from the store, size and mtime kept), the
    file's lines belong to another version: the line is unknown, never the new one."""
    settle()
    load_fleet(mappings)
    warm = load_fleet(mappings)
    host = warm.hosts["host-a"]  # from the store: parsed by the load before
    path = mappings / "hosts" / "host-a.toml"
    old_line = path.read_text().splitlines().index("[networks.prod]") + 1
    keep_size_and_mtime(path, "\n\n[networks.prod]\n", "\n[networks.prod]\n\n")
    assert path.read_text().splitlines()[old_line - 2] == "[networks.prod]"  # one line up
    assert host.bindings["prod"].source.line is None
    assert host.uplinks["eth0"].source.line is None  # the same file: unknown too
    fresh = load_fleet(mappings)  # the next load parses the file again: its lines are right
    assert fresh.hosts["host-a"].bindings["prod"].source.line == old_line - 1


def test_added_removed_and_renamed_files(mappings: Path, cache_dir: Path) -> None:
    settle()
    load_fleet(mappings)
    text = (mappings / "hosts" / "host-d.toml").read_text()
    (mappings / "hosts" / "host-e.toml").write_text(text.replace('"host-d"', '"host-e"'))
    assert "host-e" in same_as_uncached(mappings).hosts
    settle()
    load_fleet(mappings)
    (mappings / "hosts" / "host-e.toml").unlink()
    assert "host-e" not in same_as_uncached(mappings).hosts
    # a rename keeps inode, size, mtime: the path alone tells, and the Source must follow
    (mappings / "guests" / "vm4.toml").rename(mappings / "guests" / "vm4-renamed.toml")
    fleet = same_as_uncached(mappings)
    assert fleet.guests["vm4"].source.file.endswith("vm4-renamed.toml")
    # replacing a file by another one under the same name (editors do this)
    settle()
    load_fleet(mappings)
    (mappings / "hosts" / "host-c.toml").rename(mappings / "hosts" / "host-x.toml")
    shutil.copy2(mappings / "hosts" / "host-x.toml", mappings / "hosts" / "host-c.toml")
    (mappings / "hosts" / "host-x.toml").unlink()
    same_as_uncached(mappings)


def test_libvirt_xml_guest_is_cached_too(mappings: Path, cache_dir: Path,
                                         parses: Counter[str]) -> None:
    (mappings / "guests" / "vm9.xml").write_text(
        "<domain type='kvm'><name>vm9</name><devices>"
        "<interface type='direct'><mac address='52:54:00:99:00:01'/>"
        "<source dev='eth0' mode='vepa'/><model type='virtio'/></interface>"
        "</devices></domain>\n")
    settle()
    assert "vm9" in same_as_uncached(mappings).guests
    parses.clear()
    warm = same_as_uncached(mappings)
    assert not parses
    assert warm.guests["vm9"].nics[0].network == "prod"


def test_xml_guests_are_explained_by_the_fleets_hosts(mappings: Path, cache_dir: Path,
                                                      parses: Counter[str]) -> None:
    """Each domain-XML guest once parsed every host file again to explain its sources
    (1,250 XML guests on 10,000 hosts: 12.5 million parses); the fleet's hosts do it."""
    for n in range(3):
        (mappings / "guests" / f"vx{n}.xml").write_text(
            BRIDGED_XML.replace("<name>vx<", f"<name>vx{n}<").replace(":01'", f":1{n}'"))
    fleet = same_as_uncached(mappings)
    assert {fleet.guests[f"vx{n}"].nics[0].network for n in range(3)} == {"mgmt"}
    assert parses["host-a.toml"] == 1


def test_duplicate_made_by_a_new_file_is_reported(mappings: Path, cache_dir: Path) -> None:
    settle()
    load_fleet(mappings)
    shutil.copy(mappings / "hosts" / "host-a.toml", mappings / "hosts" / "host-a2.toml")
    fleet = same_as_uncached(mappings)
    assert any("already defined" in p.problem for p in fleet.problems)


def test_networks_change_invalidates_every_file(mappings: Path, cache_dir: Path,
                                                parses: Counter[str]) -> None:
    settle()
    load_fleet(mappings)
    parses.clear()
    path = mappings / "networks.toml"
    keep_size_and_mtime(path, "vlan = 200", "vlan = 201")
    fleet = same_as_uncached(mappings)
    assert fleet.networks["storage"].vlan == 201
    assert parses["host-a.toml"] == 1
    # a host bound to a network that is gone becomes a problem, exactly as uncached
    text = path.read_text()
    path.write_text(text[:text.index("[networks.tenant-blue]")])
    fleet = same_as_uncached(mappings)
    assert any("tenant-blue" in p.problem for p in fleet.problems)


def test_networks_changed_during_the_load(mappings: Path, cache_dir: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    settle()
    load_fleet(mappings)
    networks = mappings / "networks.toml"
    host_a = mappings / "hosts" / "host-a.toml"
    host_a.write_text(host_a.read_text())  # changed, so it is parsed during the next load
    edited = []

    def racing(path, nets):  # another writer edits networks.toml while hosts are read
        if not edited:
            edited.append(path)
            text = networks.read_text()
            networks.write_text(text[:text.index("[networks.tenant-blue]")])
        return real(path, nets)

    real = parse.load_host
    monkeypatch.setattr(parse, "load_host", racing)
    fleet = load_fleet(mappings)
    assert edited
    assert "tenant-blue" not in fleet.networks
    assert any("tenant-blue" in p.problem for p in fleet.problems)


# --- errors are the uncached ones -----------------------------------------------------------

def test_broken_files_give_the_same_problems_cold_and_warm(mappings: Path,
                                                            cache_dir: Path) -> None:
    (mappings / "hosts" / "host-d.toml").write_text("[host]\nname = 'host-d'\nbogus = 1\n")
    (mappings / "guests" / "vm4.toml").write_text("[guest\n")
    settle()
    first = same_as_uncached(mappings)
    second = same_as_uncached(mappings)
    assert len(first.problems) == len(second.problems) == 2
    assert second.problems[0].key == "host.bogus"
    assert second.problems[0].line == 3
    assert second.problems[1].line == 1


@pytest.mark.parametrize("networks_text", ["[networks.prod\n", "", "[networks.x]\nmtu = 1\n"])
def test_broken_networks_raise_the_same_error(mappings: Path, cache_dir: Path,
                                              networks_text: str) -> None:
    (mappings / "networks.toml").write_text(networks_text)
    settle()
    with pytest.raises(InputError) as plain:
        uncached(mappings)
    for _ in range(2):
        with pytest.raises(InputError) as cached:
            load_fleet(mappings)
        assert str(cached.value) == str(plain.value)
        assert (cached.value.file, cached.value.key, cached.value.line) == (
            plain.value.file, plain.value.key, plain.value.line)


def test_not_a_mappings_directory(tmp_path: Path, cache_dir: Path) -> None:
    with pytest.raises(InputError, match="not a mappings directory"):
        load_fleet(tmp_path / "nowhere")


# --- the second parsing process -------------------------------------------------------------

single_threaded = pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2 or threading.active_count() > 1,
    reason="the load starts a second parsing process only without threads and with a "
    "second CPU")


@pytest.fixture
def second_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """A second parsing process even for these 8 files: it reads the last SECOND_SHARE
    (on this machine however busy it is)."""
    monkeypatch.setattr(loading, "PARALLEL_MIN_FILES", 2)
    monkeypatch.setattr(loading, "idle_cpu", lambda: True)


@single_threaded
@pytest.mark.usefixtures("second_process")
def test_parallel_parse_gives_the_same_fleet(mappings: Path, cache_dir: Path,
                                             parses: Counter[str]) -> None:
    (mappings / "guests" / "vm3.toml").write_text("[guest]\nname = 'vm3'\nbogus = 1\n")
    settle()
    fleet = load_fleet(mappings)
    assert snapshot(fleet) == snapshot(uncached(mappings))
    # the worker parsed part of the files (its counts stay in it); the broken file in its
    # part was parsed here again, to report it as the parser does
    assert 0 < sum(parses.values()) < 8
    assert parses["vm3.toml"] == 1
    assert parses["host-a.toml"] == 1
    assert fleet.problems[0].key == "guest.bogus"
    parses.clear()
    same_as_uncached(mappings)  # and what the worker parsed went into the store
    assert set(parses) == {"vm3.toml"}


@single_threaded
@pytest.mark.parametrize("busy", [True, False])
def test_a_busy_machine_parses_in_one_process(mappings: Path, cache_dir: Path,
                                             parses: Counter[str],
                                             monkeypatch: pytest.MonkeyPatch,
                                             busy: bool) -> None:
    """The second parsing process only when the load average leaves a CPU idle: else it
    waits for a core and its fork and pickles only add time (the answer is the same)."""
    monkeypatch.setattr(loading, "PARALLEL_MIN_FILES", 2)
    cpus = len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "getloadavg", lambda: (cpus - 0.5 if busy else 0.2, 0.0, 0.0))
    settle()
    fleet = load_fleet(mappings)
    assert snapshot(fleet) == snapshot(uncached(mappings))
    parsed_here = sum(parses.values())  # the worker's parses are counted in the worker
    assert parsed_here == 8 if busy else 0 < parsed_here < 8


@single_threaded
@pytest.mark.usefixtures("second_process")
def test_no_process_outlives_the_load(mappings: Path, cache_dir: Path) -> None:
    """The store is written by the load itself, and the second parsing process is gone
    when load_fleet returns: nothing finishes work after the command."""
    import multiprocessing

    settle()
    load_fleet(mappings)
    assert multiprocessing.active_children() == []
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)  # no child at all, not even one to reap
    rows = sqlite3.connect(_the_cache_file(cache_dir)).execute(
        "SELECT count(*) FROM files").fetchone()[0]
    assert rows == 8


@single_threaded
@pytest.mark.usefixtures("second_process")
def test_second_process_failing_costs_a_parse_not_an_answer(
        mappings: Path, cache_dir: Path, parses: Counter[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    def fails(*args):
        raise RuntimeError("the worker fails")

    monkeypatch.setattr(loading, "_parse_share", fails)
    settle()
    assert snapshot(load_fleet(mappings)) == snapshot(uncached(mappings))
    assert sum(parses.values()) == 8  # every file parsed here


def _the_cache_file(cache_dir: Path) -> Path:
    (only,) = [p for p in cache_dir.iterdir() if not p.name.startswith(".")]
    return only


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "header"])
def test_corrupt_cache_is_a_miss(mappings: Path, cache_dir: Path, parses: Counter[str],
                                 damage: str) -> None:
    settle()
    load_fleet(mappings)
    target = _the_cache_file(cache_dir)
    blob = bytearray(target.read_bytes())
    if damage == "truncate":
        blob = blob[: len(blob) // 2]
    elif damage == "garbage":
        blob = bytearray(os.urandom(len(blob)))
    elif damage == "empty":
        blob = bytearray()
    else:
        blob[0] ^= 1
    target.write_bytes(bytes(blob))
    parses.clear()
    same_as_uncached(mappings)
    assert parses["host-a.toml"] == 1  # read again from the files...
    parses.clear()
    same_as_uncached(mappings)
    assert not parses  # ...and the store was written anew


def test_damaged_row_is_a_miss(mappings: Path, cache_dir: Path, parses: Counter[str]) -> None:
    """A row whose key matches but whose object does not unpickle: parsed again."""
    settle()
    load_fleet(mappings)
    with sqlite3.connect(_the_cache_file(cache_dir)) as db:
        db.execute("UPDATE files SET object = x'00' WHERE path LIKE '%host-a.toml'")
    parses.clear()
    same_as_uncached(mappings)
    assert parses == Counter({"host-a.toml": 1})


def test_cache_of_other_code_is_a_miss(mappings: Path, cache_dir: Path, parses: Counter[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    settle()
    load_fleet(mappings)
    monkeypatch.setattr(store, "code_fingerprint", lambda: "another netmap")
    # another netmap is in other files (else the store need not hash its sources)
    monkeypatch.setattr(store, "sources_identity", lambda package=None: "other files")
    parses.clear()
    same_as_uncached(mappings)
    assert parses["host-a.toml"] == 1


def test_rows_of_another_directory_are_not_loaded(mappings: Path, cache_dir: Path,
                                                  parses: Counter[str]) -> None:
    settle()
    load_fleet(mappings)
    with sqlite3.connect(_the_cache_file(cache_dir)) as db:
        db.execute("UPDATE meta SET root = '/elsewhere'")
    parses.clear()
    same_as_uncached(mappings)
    assert parses["host-a.toml"] == 1


def test_fingerprint_covers_the_loader_and_only_it() -> None:
    package = Path(store.__file__).resolve().parent.parent
    sources = {p.relative_to(package).as_posix() for p in store.loader_sources()}
    # what the load package imports, directly, lazily (guest XML) and transitively
    assert {"load/__init__.py", "load/parse.py", "load/fleet.py", "load/store.py",
            "model/fleet.py", "load/tomlcheck.py", "model/names.py", "errors.py",
            "modes/bridge.py", "modes/sriov.py", "libvirt/__init__.py",
            "libvirt/domain.py"} <= sources
    # code that only reads the model does not make every cache miss when it changes
    assert not sources & {"render.py", "cli.py", "commands/fleet.py",
                               "query/placement.py"}


def test_fingerprint_follows_every_form_of_import(tmp_path: Path) -> None:
    package = tmp_path / "netmap"
    (package / "sub").mkdir(parents=True)
    (package / "load").mkdir()
    (package / "load" / "__init__.py").write_text("")
    (package / "load" / "cache.py").write_text("import netmap.epsilon\n")
    (package / "load" / "parse.py").write_text(
        "from netmap import alpha, beta as b\n"
        "from netmap import (\n    gamma,\n)\n"
        "def later():\n    from netmap.sub.delta import thing\n"
        "from netmap.kinds import (\n    omega,\n    THING,\n)\n")
    for name in ("alpha", "beta", "gamma", "epsilon", "unrelated"):
        (package / f"{name}.py").write_text("")
    for sub, modules in (("sub", ("delta",)), ("kinds", ("omega", "unused"))):
        (package / sub).mkdir(exist_ok=True)
        (package / sub / "__init__.py").write_text("")
        for module in modules:
            (package / sub / f"{module}.py").write_text("")
    found = {p.relative_to(package).as_posix() for p in store.loader_sources(package)}
    # a package's module counts when named, its siblings do not (the loader's own aside)
    assert found == {"load/__init__.py", "load/parse.py", "load/cache.py", "alpha.py",
                     "beta.py", "gamma.py", "epsilon.py", "sub/__init__.py", "sub/delta.py",
                     "kinds/__init__.py", "kinds/omega.py"}


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_cache_file_of_another_user_is_ignored(mappings: Path, cache_dir: Path,
                                               parses: Counter[str]) -> None:
    settle()
    load_fleet(mappings)
    os.chown(_the_cache_file(cache_dir), 65534, 65534)
    parses.clear()
    same_as_uncached(mappings)
    assert parses["host-a.toml"] == 1


def test_group_writable_cache_file_is_ignored(mappings: Path, cache_dir: Path,
                                             parses: Counter[str]) -> None:
    settle()
    load_fleet(mappings)
    os.chmod(_the_cache_file(cache_dir), 0o664)
    parses.clear()
    same_as_uncached(mappings)
    assert parses["host-a.toml"] == 1


def test_unwritable_cache_dir_disables_the_cache(mappings: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 parses: Counter[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("NETMAP_CACHE_DIR", str(blocker / "cache"))
    monkeypatch.setattr(store, "RACY_WINDOW_NS", WINDOW_NS)
    monkeypatch.setattr(loading, "STORE_MIN_FILES", 0)
    settle()
    same_as_uncached(mappings)
    same_as_uncached(mappings)
    assert parses["host-a.toml"] == 2
    assert blocker.read_text() == "not a directory"


def test_cache_written_atomically_and_privately(mappings: Path, cache_dir: Path) -> None:
    settle()
    load_fleet(mappings)
    entries = list(cache_dir.iterdir())
    assert len(entries) == 1, "no temporary file left behind"
    assert entries[0].stat().st_mode & 0o077 == 0
    assert cache_dir.stat().st_mode & 0o077 == 0


def test_cache_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NETMAP_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert store.cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("NETMAP_CACHE_DIR")
    assert store.cache_dir() == tmp_path / "xdg" / "netmap"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # the XDG spec: ignore it
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert store.cache_dir() == tmp_path / "home" / ".cache" / "netmap"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert store.cache_dir() == tmp_path / "home" / ".cache" / "netmap"


def test_each_mappings_directory_has_its_own_cache(mappings: Path, tmp_path: Path,
                                                   cache_dir: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(mappings, other)
    (other / "hosts" / "host-d.toml").unlink()
    settle()
    assert "host-d" in same_as_uncached(mappings).hosts
    assert "host-d" not in same_as_uncached(other).hosts
    assert "host-d" in same_as_uncached(mappings).hosts
    assert len(list(cache_dir.iterdir())) == 2


def test_gc_pause_nests_and_restores(mappings: Path) -> None:
    import gc

    assert gc.isenabled()
    with gcpause.gc_paused():
        with gcpause.gc_paused():
            uncached(mappings)
        assert not gc.isenabled()  # only the outermost pause resumes
    assert gc.isenabled()
    frozen = gc.get_freeze_count()
    try:
        with gcpause.gc_paused(freeze=True):
            fleet = uncached(mappings)
        assert gc.isenabled()
        assert gc.get_freeze_count() > frozen
        assert fleet.hosts["host-a"].name == "host-a"  # frozen objects stay usable
    finally:
        gc.unfreeze()


# --- the speed edits elsewhere answer as the code they replaced -----------------------------

def test_lazy_source_lines_match_line_of(mappings: Path) -> None:
    from netmap.load.tomlcheck import line_of
    from netmap.model.fleet import Source

    fleet = uncached(mappings)
    sources = [n.source for n in fleet.networks.values()]
    sources += [x.source for h in fleet.hosts.values()
                for x in (*h.uplinks.values(), *h.bindings.values())]
    sources += [nic.source for g in fleet.guests.values() for nic in g.nics]
    assert len(sources) > 20
    for source in sources:
        text = Path(source.file).read_text()
        assert source.line == line_of(text, source._path) is not None
        plain = Source(source.file, source.line)
        assert source == plain
        assert plain == source
        assert hash(source) == hash(plain)
        assert str(source) == str(plain)
        assert repr(source) == repr(plain)


def naive_graph(fleet: Fleet):
    """The fleet graph as graph.py's docstring describes it, through networkx's own API."""
    import networkx as nx

    nodes, edges = [], []
    for net in fleet.networks.values():
        nodes += [(f"network:{net.name}", {"kind": "network", "obj": net}),
                  (f"segment:{net.segment_id}", {"kind": "segment"})]
        edges.append((f"network:{net.name}", f"segment:{net.segment_id}", {"rel": "lives-on"}))
    for host in fleet.hosts.values():
        hid = f"host:{host.name}"
        nodes.append((hid, {"kind": "host", "obj": host}))
        for up in host.uplinks.values():
            uid = f"uplink:{host.name}/{up.name}"
            nodes.append((uid, {"kind": "uplink", "obj": up, "host": host.name}))
            edges.append((hid, uid, {"rel": "has"}))
            for segment in up.segments:
                nodes.append((f"segment:{segment}", {"kind": "segment"}))
                edges.append((uid, f"segment:{segment}", {"rel": "reaches"}))
        for bind in host.bindings.values():
            bid = f"binding:{host.name}/{bind.network}"
            nodes.append((bid, {"kind": "binding", "obj": bind, "host": host.name}))
            edges += [(hid, bid, {"rel": "has"}),
                      (bid, f"network:{bind.network}", {"rel": "realizes"}),
                      (bid, f"uplink:{host.name}/{bind.uplink}", {"rel": "via"})]
    for guest in fleet.guests.values():
        gid = f"guest:{guest.name}"
        nodes.append((gid, {"kind": "guest", "obj": guest}))
        if guest.host is not None:
            edges.append((gid, f"host:{guest.host}", {"rel": "runs-on"}))
        for nic in guest.nics:
            nid = f"nic:{guest.name}/{nic.index}"
            nodes.append((nid, {"kind": "nic", "obj": nic, "guest": guest.name}))
            edges += [(gid, nid, {"rel": "has"}),
                      (nid, f"network:{nic.network}", {"rel": "attaches"})]
    graph = nx.DiGraph(fleet=fleet)
    graph.add_nodes_from(nodes)
    graph.add_edges_from(edges)
    return graph


def test_fleet_graph_as_networkx_matches_networkx(mappings: Path, tmp_path: Path) -> None:
    """FleetGraph.digraph(), the fleet graph for networkx's algorithms, is the graph the
    docstring describes, order included."""
    from netmap.query import graph as g

    generated = tmp_path / "generated"
    generate_fleet(generated, 60, 20)
    for fleet in (uncached(mappings), uncached(generated),
                  # a guest on a host that is not in the graph gets a bare node, as in networkx
                  Fleet(uncached(mappings).networks, {}, uncached(mappings).guests)):
        fast, slow = g.build_graph(fleet).digraph(), naive_graph(fleet)
        assert list(fast.nodes(data=True)) == list(slow.nodes(data=True))
        assert list(fast.edges(data=True)) == list(slow.edges(data=True))
        assert {n: list(p) for n, p in fast.pred.items()} == {
            n: list(p) for n, p in slow.pred.items()}
        assert fast.graph == slow.graph


def generate_fleet(root: Path, hosts: int, guests: int, seed: int = 7) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    import gen_fleet

    gen_fleet.generate(root, hosts, guests, seed=seed)


@pytest.mark.parametrize("shape", ["standard", "small", "huge", "xml"])
def test_every_benchmark_shape_loads_without_problems(tmp_path: Path, shape: str) -> None:
    """scripts/bench_fleet.py times each shape: a fleet with problems would time errors."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    import gen_fleet

    root = tmp_path / shape
    gen_fleet.generate_shape(root, shape, 200)
    fleet = load_fleet(root)
    assert fleet.problems == ()
    assert len(fleet.hosts) == (10 if shape == "huge" else 200)
    xml = [g for g in fleet.guests.values() if g.source.file.endswith(".xml")]
    assert len(xml) == (25 if shape == "xml" else 0)
    assert all(g.host is not None for g in xml)
    assert all(g.nics for g in xml)


def test_hosts_for_fleet_answers_as_hosts_for(mappings: Path, tmp_path: Path) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    import gen_fleet
    from placement_oracle import hosts_for

    from netmap.query.graph import build_graph
    from netmap.query.placement import hosts_for_fleet

    generated = tmp_path / "generated"
    gen_fleet.generate(generated, 120, 40, seed=7)
    for root in (mappings, generated):
        fleet = uncached(root)
        assert not fleet.problems
        graph = build_graph(fleet)
        for guest in fleet.guests:
            for strict in (False, True):
                full = hosts_for(graph, guest, strict=strict, include_current=strict)
                part = hosts_for_fleet(fleet, guest, strict=strict, include_current=strict)
                assert [c.as_dict() for c in part] == [c.as_dict() for c in full]


def test_fleet_from_the_store_answers_hosts_for_the_same(
        tmp_path: Path, cache_dir: Path, parses: Counter[str]) -> None:
    """The warm path of `netmap hosts-for`: an unchanged fleet from the store answers as
    the full graph of a load without it does."""
    from placement_oracle import hosts_for

    from netmap.query.placement import hosts_for_fleet

    root = tmp_path / "generated"
    generate_fleet(root, 300, 80, seed=11)
    settle()
    load_fleet(root)
    files = sum(parses.values())
    warm = load_fleet(root)
    assert sum(parses.values()) == files, "an unchanged fleet is not parsed again"
    assert isinstance(warm.hosts, IndexedHosts)
    plain = uncached(root)
    graph = build_graph(plain)
    for guest in list(plain.guests)[:25]:
        for strict in (False, True):
            want = [c.as_dict() for c in hosts_for(graph, guest, strict=strict)]
            assert [c.as_dict() for c in hosts_for_fleet(warm, guest, strict=strict)] == want
    assert snapshot(warm) == snapshot(plain)
    assert list(warm.hosts) == list(plain.hosts)


def test_unchanged_fleet_is_rechecked_file_by_file(mappings: Path, cache_dir: Path,
                                                   parses: Counter[str]) -> None:
    """Every file's key is checked on every load: an edit keeping size and mtime, an added
    and a removed file each give the fleet a load without the store gives."""
    vm1 = mappings / "guests" / "vm1.toml"
    for change in (lambda: keep_size_and_mtime(vm1, "52:54:00", "52:54:01"),
                   lambda: (mappings / "guests" / "copy.toml").write_text(
                       vm1.read_text().replace('"vm1"', '"vm9"').replace("52:54:01", "52:54:09")),
                   lambda: (mappings / "guests" / "copy.toml").unlink()):
        settle()
        load_fleet(mappings)  # stores what the last change made
        parses.clear()
        warm = load_fleet(mappings)
        assert sum(parses.values()) == 0
        change()
        changed = load_fleet(mappings)
        assert snapshot(changed) == snapshot(uncached(mappings))
        assert snapshot(warm) != snapshot(changed)


def test_hosts_for_split_with_a_child_answers_the_same(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """parallel=True: a worker process checks half of the candidates; when it fails, its
    half is checked here, and either way the answer is the one of the plain graph."""
    from netmap.query import placement
    from netmap.query.graph import build_graph

    root = tmp_path / "generated"
    generate_fleet(root, 200, 60, seed=5)
    fleet = uncached(root)
    graph = build_graph(fleet)
    monkeypatch.setattr(placement, "PARALLEL_MIN_CANDIDATES", 2)
    monkeypatch.setattr(placement, "idle_cpu", lambda: True)  # however busy this machine
    guests = list(fleet.guests)[:6]
    want = {(guest, strict): [c.as_dict() for c in oracle.hosts_for(
        graph, guest, strict=strict, include_current=strict)]
        for guest in guests for strict in (False, True)}

    def answers() -> dict:
        return {(guest, strict): [c.as_dict() for c in placement.hosts_for_fleet(
            fleet, guest, strict=strict, include_current=strict)]
            for guest in guests for strict in (False, True)}

    assert answers() == want
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)  # the worker is gone once its answer is read
    parent, real = os.getpid(), placement._checked

    def dies_in_the_child(*args):
        if os.getpid() != parent:
            raise RuntimeError("the child fails")
        return real(*args)

    monkeypatch.setattr(placement, "_checked", dies_in_the_child)
    assert answers() == want


@pytest.mark.parametrize("busy", [True, False])
def test_hosts_for_forks_a_checker_only_with_a_cpu_idle(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        busy: bool) -> None:
    """On a busy machine the second checking process waits for a core: its fork and its
    pickles only add CPU time. It is started only when the load average leaves a CPU idle
    (as the load's second parsing process); the answer is the same either way."""
    import concurrent.futures

    from netmap.query import placement

    root = tmp_path / "generated"
    generate_fleet(root, 60, 20, seed=7)
    fleet = uncached(root)
    guest = next(iter(fleet.guests))
    want = [c.as_dict() for c in placement.hosts_for_fleet(fleet, guest)]
    monkeypatch.setattr(placement, "PARALLEL_MIN_CANDIDATES", 2)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(os, "getloadavg", lambda: (1.5 if busy else 0.2, 0.0, 0.0))
    pools: list[object] = []
    real_pool = concurrent.futures.ProcessPoolExecutor

    def counted_pool(*args, **kwargs):
        pools.append(args)
        return real_pool(*args, **kwargs)

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", counted_pool)
    got = [c.as_dict() for c in placement.hosts_for_fleet(fleet, guest, parallel=True)]
    assert got == want
    assert len(pools) == (0 if busy else 1)


def test_fleet_file_names_list_what_glob_lists(mappings: Path) -> None:
    """The cache knows the directory unchanged by listing it as load_fleet reads it."""
    (mappings / "hosts" / ".hidden.toml").write_text("")
    (mappings / "hosts" / "dir.toml").mkdir()
    (mappings / "hosts" / "upper.TOML").write_text("")
    (mappings / "hosts" / "notes.txt").write_text("")
    (mappings / "guests" / "vm0.xml").write_text("")
    for base in (mappings, Path(os.path.relpath(mappings)), Path(f"{mappings}/")):
        globbed = (sorted(map(str, (base / "hosts").glob("*.toml"))),
                   sorted(map(str, (base / "guests").glob("*.toml")))
                   + sorted(map(str, (base / "guests").glob("*.xml"))))
        assert parse.fleet_file_names(base) == globbed
    assert parse.fleet_file_names(mappings / "nowhere") == ([], [])


# --- what a result depends on beyond its own file (issue 14, item 2) ------------------------

BRIDGED_XML = ("<domain type='kvm'><name>vx</name><devices>"
               "<interface type='bridge'><mac address='52:54:00:77:00:01'/>"
               "<source bridge='br-eth1'/><model type='virtio'/></interface>"
               "</devices></domain>\n")


@pytest.mark.parametrize("parallel", [False, True])
def test_xml_guest_follows_the_host_files_it_was_read_against(
        mappings: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch,
        parallel: bool) -> None:
    """A domain XML names a bridge; which network that is, the source host's mapping
    says. Changing that mapping changes the guest, with the XML file untouched."""
    if parallel:
        monkeypatch.setattr(loading, "PARALLEL_MIN_FILES", 2)
        monkeypatch.setattr(loading, "idle_cpu", lambda: True)
    (mappings / "guests" / "vx.xml").write_text(BRIDGED_XML)
    settle()
    fleet = load_fleet(mappings)
    assert fleet.guests["vx"].nics[0].network == "mgmt"
    assert same_as_uncached(mappings).guests["vx"].host == "host-a"
    host_a = mappings / "hosts" / "host-a.toml"
    host_a.write_text(host_a.read_text().replace(
        'mode = "bridge"\nuplink = "eth1"', 'mode = "bridge"\nuplink = "eth1"\nbridge = "brq"'))
    settle()
    changed = load_fleet(mappings)
    assert "vx" not in changed.guests, "the XML guest was answered from before the edit"
    assert snapshot(changed) == snapshot(uncached(mappings))
    # and back: a host file that explains the bridge again, added under a new name
    (mappings / "hosts" / "host-e.toml").write_text(
        host_a.read_text().replace('"host-a"', '"host-e"').replace('bridge = "brq"\n', ""))
    settle()
    again = load_fleet(mappings)
    assert again.guests["vx"].host == "host-e"
    assert snapshot(again) == snapshot(uncached(mappings))


def test_fresh_networks_file_with_a_second_process_gives_hosts(
        tmp_path: Path, cache_dir: Path) -> None:
    """A networks.toml too recent to key a store on (just touched, or a fleet just
    written) once gave the parsing child's stand-ins for hosts (AttributeError: 'tuple'
    object has no attribute 'values' in check, show, hosts-for)."""
    root = tmp_path / "generated"
    generate_fleet(root, 480, 120, seed=3)  # 600 files: the store is used
    for _ in range(2):
        fleet = load_fleet(root)
        assert all(isinstance(host, Host) for host in fleet.hosts.values())
        assert snapshot(fleet) == snapshot(uncached(root))
        guest = next(iter(fleet.guests))
        assert [c.as_dict() for c in placement.hosts_for_fleet(fleet, guest)] == [
            c.as_dict() for c in oracle.hosts_for(build_graph(uncached(root)), guest)]


# --- a cache may be slow; it may never be wrong ---------------------------------------------

@pytest.fixture(scope="module")
def fleet_with_xml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """600 generated files and a domain-XML guest whose bridge a host mapping explains."""
    root = tmp_path_factory.mktemp("property") / "fleet"
    generate_fleet(root, 480, 120, seed=13)
    first = sorted((root / "hosts").iterdir())[0]
    slow = parse.load_host(first, parse.load_networks(root / "networks.toml")).bindings
    bridge = next(b for b in slow.values() if b.mode == "bridge")
    (root / "guests" / "vx.xml").write_text(BRIDGED_XML.replace("br-eth1", f"br-{bridge.uplink}"))
    return root


def _mutations(root: Path) -> dict[str, Callable[[int], None]]:
    hosts = root / "hosts"
    guests = root / "guests"

    def pick(folder: Path, n: int, suffix: str = ".toml") -> Path | None:
        files = sorted(p for p in folder.iterdir() if p.name.endswith(suffix))
        return files[n % len(files)] if files else None

    def touch(path: Path | None) -> None:
        if path is not None:
            path.touch()

    def edit(path: Path | None, old: str, new: str) -> None:
        if path is not None and path.exists() and old in path.read_text():
            path.write_text(path.read_text().replace(old, new, 1))

    def xml_host(n: int) -> None:
        # the host that explains vx.xml now (the first that binds a bridge to that uplink)
        try:
            owner = uncached(root).guests.get("vx")
        except InputError:  # networks.toml broken by an earlier step
            owner = None
        target = hosts / f"{owner.host}.toml" if owner and owner.host else pick(hosts, n)
        edit(target, 'mode = "bridge"\n', 'mode = "bridge"\nbridge = "brq"\n')

    def unbind(path: Path | None) -> None:
        # the host's last binding goes: the store's index of who binds what must follow
        if path is not None and path.exists():
            text = path.read_text()
            cut = text.rfind("\n[networks.")
            if cut >= 0:
                path.write_text(text[:cut + 1])

    def add(n: int) -> None:
        source = pick(guests, n)
        if source is not None:
            text = source.read_text().replace('name = "vm', 'name = "vn').replace(
                "52:54:", "52:55:")
            (guests / f"added{n}.toml").write_text(text)

    return {
        "touch networks": lambda n: touch(root / "networks.toml"),
        "touch host": lambda n: touch(pick(hosts, n)),
        "edit host": lambda n: edit(pick(hosts, n), "mtu = 9000", "mtu = 8000"),
        "edit host, same size and mtime": lambda n: (
            (path := pick(hosts, n)) is not None and "mtu = 9000" in path.read_text()
            and keep_size_and_mtime(path, "mtu = 9000", "mtu = 8999")),
        "break host": lambda n: edit(pick(hosts, n), "[host]", "[host"),
        "unbind a network on a host": lambda n: unbind(pick(hosts, n)),
        "edit networks": lambda n: edit(root / "networks.toml", "mtu = 9000", "mtu = 1600"),
        "rename a network": lambda n: edit(root / "networks.toml", "[networks.tenant-red]",
                                           "[networks.tenant-pink]"),
        "edit the XML guest's host": xml_host,
        "delete host": lambda n: (p := pick(hosts, n)) is not None and p.unlink(),
        "delete guest": lambda n: (p := pick(guests, n)) is not None and p.unlink(),
        "add guest": add,
        "settle": lambda n: settle(),
    }


MUTATIONS = tuple(_mutations(Path("/nonexistent")))


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(steps=st.lists(st.tuples(st.sampled_from(MUTATIONS), st.integers(0, 10_000)),
                      min_size=1, max_size=6),
       parallel=st.booleans())
def test_cached_answer_is_always_the_cold_answer(
        fleet_with_xml: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        steps: list[tuple[str, int]], parallel: bool) -> None:
    """Over a 600-file fleet with an XML guest: after every mutation (settled or within the
    racy window), the cached load answers exactly as a load without a cache."""
    monkeypatch.setattr(store, "RACY_WINDOW_NS", WINDOW_NS)
    monkeypatch.setattr(loading, "PARALLEL_MIN_FILES", 100 if parallel else 10**9)
    monkeypatch.setattr(loading, "idle_cpu", lambda: True)
    run = tmp_path / uuid.uuid4().hex
    root = run / "fleet"
    shutil.copytree(fleet_with_xml, root)
    monkeypatch.setenv("NETMAP_CACHE_DIR", str(run / "cache"))
    mutate = _mutations(root)
    settle()
    assert snapshot(load_fleet(root)) == snapshot(
        uncached(root))
    for name, n in steps:
        event(name)
        mutate[name](n)
        for _ in range(2):  # the load that stores, then the one that reads what was stored
            try:
                cold: tuple | str = answers(uncached(root), n)
            except InputError as err:
                cold = str(err)
            try:
                warm: tuple | str = answers(load_fleet(root), n)
            except InputError as err:
                warm = str(err)
            assert warm == cold, f"after {name}"


def answers(fleet: Fleet, n: int) -> tuple:
    """What queries reading some hosts answer (a warm load reads no other host: one host,
    `show` of it and `diff` against the first, and hosts-for of the XML guest and of
    another), asked first; then the whole fleet."""
    from netmap.query import views

    names = list(fleet.hosts)
    one = fleet.hosts[names[n % len(names)]] if names else None
    shown = None if one is None else (views.show_data(fleet, [one.name]),
                                      views.diff_rows(fleet, fleet.hosts[names[0]], one))
    placed = [[c.as_dict() for c in placement.hosts_for_fleet(fleet, guest)]
              for guest in ("vx", "vm000001") if guest in fleet.guests]
    return one, shown, placed, snapshot(fleet)


@pytest.fixture
def store_reads(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How often each host's or guest's object was read from the store (a warm load's),
    as "hosts/NAME.toml" or "guests/NAME.toml", one by one or many at once."""
    counts: Counter[str] = Counter()
    real, real_at_once = store.Store.object, store.Store.objects

    def named(path: str) -> str:
        return f"{Path(path).parent.name}/{Path(path).name}"

    def counted(self: store.Store, path: str, key: str) -> object:
        counts[named(path)] += 1
        return real(self, path, key)

    def counted_at_once(self: store.Store, wanted: dict[str, str]) -> dict[str, bytes]:
        counts.update(named(path) for path in wanted)
        return real_at_once(self, wanted)

    monkeypatch.setattr(store.Store, "object", counted)
    monkeypatch.setattr(store.Store, "objects", counted_at_once)
    return counts


def cli_answer(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, object]:
    from netmap.cli import main

    code = main(list(argv))
    return code, json.loads(capsys.readouterr().out)


def test_warm_commands_read_only_their_hosts(
        tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], store_reads: Counter[str]) -> None:
    """`show HOST`, `check GUEST --to HOST` and `diff A B` from a warm store read those
    hosts alone, `hosts-for` only the hosts binding the guest's networks; of the guests,
    each reads the one it checks, those placed on the hosts it reads and the other users
    of their MACs (diff none); and each answers as a load without the store does."""
    root = tmp_path / "generated"
    generate_fleet(root, 300, 80, seed=5)
    settle()
    plain = uncached(root)
    guest = next(g for g in plain.guests.values() if g.host is not None and g.nics)
    a, b = [name for name in plain.hosts if name != guest.host][:2]
    binders = set(plain.hosts)
    for nic in guest.nics:
        binders &= {name for name, host in plain.hosts.items() if nic.network in host.bindings}
    commands = {
        ("show", a, "--json"): {a},
        ("check", guest.name, "--to", b, "--json"): {b, guest.host},
        ("diff", a, b, "--json"): {a, b},
        ("hosts-for", guest.name, "--json"): binders,
    }
    load_fleet(root)  # fills the store
    for argv, needed in commands.items():
        store_reads.clear()
        warm = cli_answer(capsys, "--mappings", str(root), *argv)
        read = {name.removesuffix(".toml") for name in store_reads if name.startswith("hosts/")}
        assert read <= {f"hosts/{Path(plain.hosts[name].source.file).stem}"
                        for name in needed}, argv
        guests = set() if argv[0] == "diff" else {
            other.name for other in plain.guests.values()
            if other.host in needed or (argv[0] != "show" and other.name == guest.name)}
        macs = {nic.mac for name in guests for nic in plain.guests[name].nics}
        guests |= {other.name for other in plain.guests.values()
                   if any(nic.mac in macs for nic in other.nics)}
        read = {name.removesuffix(".toml") for name in store_reads if name.startswith("guests/")}
        assert read <= {f"guests/{Path(plain.guests[name].source.file).stem}"
                        for name in guests}, argv
        assert len(guests) < len(plain.guests) // 2, "a query that needs most guests"
        assert len(needed) < len(plain.hosts) // 2, "a query that needs most hosts"
        monkeypatch.setenv("NETMAP_CACHE_DIR", str(tmp_path / f"empty-{argv[0]}"))
        monkeypatch.setattr(loading, "STORE_MIN_FILES", 10**9)
        assert warm == cli_answer(capsys, "--mappings", str(root), *argv), argv
        monkeypatch.setenv("NETMAP_CACHE_DIR", str(cache_dir))
        monkeypatch.setattr(loading, "STORE_MIN_FILES", 0)


def test_sources_identity_follows_every_change_of_the_package(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store trusts its fingerprint while the package's files keep their identities:
    an edit keeping size and mtime, and a new module, each give another identity; a file
    changed within the racy window gives none (the sources are hashed then)."""
    monkeypatch.setattr(store, "RACY_WINDOW_NS", WINDOW_NS)
    package = tmp_path / "netmap"
    (package / "load").mkdir(parents=True)
    module = package / "load" / "parse.py"
    module.write_text("A = 1\n")
    assert store.sources_identity(package) is None
    settle()
    before = store.sources_identity(package)
    assert before is not None
    assert store.sources_identity(package) == before
    keep_size_and_mtime(module, "A = 1", "A = 2")
    assert store.sources_identity(package) is None
    settle()
    edited = store.sources_identity(package)
    assert edited not in (None, before)
    (package / "other.py").write_text("")
    settle()
    assert store.sources_identity(package) not in (None, before, edited)


def test_store_of_the_same_code_in_changed_files_is_kept(
        mappings: Path, cache_dir: Path, parses: Counter[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Other identities of the package's files with the same loader code: the sources are
    hashed, found the same, and the store is used."""
    settle()
    load_fleet(mappings)
    monkeypatch.setattr(store, "sources_identity", lambda package=None: "touched files")
    parses.clear()
    same_as_uncached(mappings)
    assert not parses


def test_warm_load_reads_networks_toml_from_the_store(
        mappings: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """networks.toml is kept under its identity: a warm load does not parse it, and an
    edit keeping its size and mtime is seen (test_networks_change_invalidates_every_file
    for the hosts read against it)."""
    parsed: list[str] = []
    real = parse.load_networks

    def counted(path: Path) -> dict:
        parsed.append(str(path))
        return real(path)

    monkeypatch.setattr(parse, "load_networks", counted)
    settle()
    same_as_uncached(mappings)
    parsed.clear()
    warm = load_fleet(mappings)
    assert parsed == []
    assert snapshot(warm) == snapshot(uncached(mappings))
    keep_size_and_mtime(mappings / "networks.toml", "vlan = 200", "vlan = 201")
    assert same_as_uncached(mappings).networks["storage"].vlan == 201
    settle()
    load_fleet(mappings)
    parsed.clear()
    assert load_fleet(mappings).networks["storage"].vlan == 201
    assert parsed == []


WARM_PROBE = """
import contextlib, io, sys
from netmap.load import fleet, store
fleet.STORE_MIN_FILES = 0
store.RACY_WINDOW_NS = {window}
from netmap.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    code = main(sys.argv[1:])
print(code, *sorted(m for m in {modules} if m in sys.modules))
"""


@pytest.mark.parametrize("argv", [["show", "host-a"], ["diff", "host-a", "host-b"]])
def test_warm_json_answers_import_no_parser_graph_or_pool(
        mappings: Path, cache_dir: Path, argv: list[str]) -> None:
    """From a warm store, `show HOST --json` and `diff` parse no TOML (tomli, msgspec),
    build no graph (networkx), draw no table (rich) and start no process: each of those
    imports cost more than the answer."""
    import subprocess
    import sys

    modules = ("tomli", "msgspec", "networkx", "rich", "concurrent.futures",
               "multiprocessing")
    probe = WARM_PROBE.format(window=WINDOW_NS, modules=modules)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    command = [sys.executable, "-c", probe, "--mappings", str(mappings), *argv, "--json"]
    settle()
    subprocess.run(command, env=env, check=True, capture_output=True)  # fills the store
    done = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    assert done.stdout.split() == ["0"], done.stderr


def test_hosts_for_imports_no_graph_library(mappings: Path, cache_dir: Path) -> None:
    """`hosts-for --json` checks its candidates without networkx (it is imported only to
    search the L2 graph, when a finding needs it), cold and warm; warm, it parses no TOML."""
    import subprocess
    import sys

    probe = WARM_PROBE.format(window=WINDOW_NS, modules=("tomli", "networkx"))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    command = [sys.executable, "-c", probe, "--mappings", str(mappings), "hosts-for", "vm1",
               "--json"]
    settle()
    cold = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    assert cold.stdout.split() == ["0", "tomli"], cold.stderr
    warm = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    assert warm.stdout.split() == ["0"], warm.stderr


def test_walking_a_warm_fleet_reads_it_in_few_queries(
        tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A caller that walks every host or guest by name (`{**fleet.guests}`, as the libvirt
    hook does) gets them from a few queries, not one per file, and gets the cold answer."""
    from netmap.load.stored import ONE_BY_ONE

    root = tmp_path / "generated"
    generate_fleet(root, 300, 200, seed=4)
    settle()
    load_fleet(root)
    queries: Counter[str] = Counter()
    real_one, real_many = store.Store.object, store.Store.objects

    def one(self: store.Store, path: str, key: str) -> object:
        queries[Path(path).parent.name] += 1
        return real_one(self, path, key)

    def many(self: store.Store, wanted: dict[str, str]) -> dict[str, bytes]:
        queries[Path(next(iter(wanted))).parent.name if wanted else ""] += 1
        return real_many(self, wanted)

    monkeypatch.setattr(store.Store, "object", one)
    monkeypatch.setattr(store.Store, "objects", many)
    warm = load_fleet(root)
    plain = uncached(root)
    assert {**warm.guests} == {**plain.guests}
    assert {**warm.hosts} == {**plain.hosts}
    assert queries["guests"] <= ONE_BY_ONE + 1 < len(plain.guests)
    assert queries["hosts"] <= ONE_BY_ONE + 1 < len(plain.hosts)


def test_warm_answers_about_shared_macs_are_the_cold_ones(
        tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """MAC_IN_USE, MAC_DUPLICATE and show's mac_clash come from the store's MAC index on a
    warm load: the same as a load without the store, guests on the same host and elsewhere."""
    root = tmp_path / "generated"
    generate_fleet(root, 120, 60, seed=9)
    plain = uncached(root)
    guest = next(g for g in plain.guests.values() if g.host is not None and len(g.nics) > 1)
    text = Path(guest.source.file).read_text()
    other_host = next(name for name in plain.hosts if name != guest.host)
    (root / "guests" / "twin-here.toml").write_text(
        text.replace(f'name = "{guest.name}"', 'name = "twin-here"'))
    (root / "guests" / "twin-there.toml").write_text(
        text.replace(f'name = "{guest.name}"', 'name = "twin-there"').replace(
            f'host = "{guest.host}"', f'host = "{other_host}"'))
    settle()
    load_fleet(root)  # fills the store
    assert isinstance(load_fleet(root).guests, IndexedGuests)  # the warm path is taken
    commands = [("check", guest.name, "--to", other_host, "--json"),
                ("check", "twin-there", "--to", guest.host, "--json"),
                ("hosts-for", guest.name, "--json"),
                ("show", guest.host, other_host, "--json")]
    warm = [cli_answer(capsys, "--mappings", str(root), *argv) for argv in commands]
    codes = {finding["code"] for _, answer in warm[:2] for finding in answer["findings"]}
    assert {"MAC_IN_USE", "MAC_DUPLICATE"} <= codes
    monkeypatch.setattr(loading, "STORE_MIN_FILES", 10**9)
    assert warm == [cli_answer(capsys, "--mappings", str(root), *argv) for argv in commands]


def test_store_of_this_format_with_other_columns_is_made_anew(
        mappings: Path, cache_dir: Path, parses: Counter[str]) -> None:
    """A store file whose tables lack a column this code reads (a development build's, of
    the same format number) would make every load miss: it is replaced, and used again."""
    settle()
    load_fleet(mappings)
    with sqlite3.connect(_the_cache_file(cache_dir)) as db:
        db.execute("ALTER TABLE files DROP COLUMN key")
    host = mappings / "hosts" / "host-a.toml"
    host.write_text(host.read_text().replace("mtu = 9000", "mtu = 8000", 1))
    settle()
    load_fleet(mappings)  # stores the host again, in a store it can write
    parses.clear()
    same_as_uncached(mappings)
    assert not parses


@pytest.mark.parametrize("how", ["no store", "empty store", "one file changed"])
def test_a_load_that_parses_indexes_who_uses_each_mac(mappings: Path, cache_dir: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      how: str) -> None:
    """Every load answers "who uses this MAC" from an index, not by walking every guest
    per question (what made a cold `hosts-for` on 10k hosts check each candidate against
    all 2,500 guests), and the index answers as the walk does: every user, in order."""
    shared = (mappings / "guests" / "vm1.toml").read_text()
    mac = next(line.split('"')[1] for line in shared.splitlines() if line.startswith("mac"))
    (mappings / "guests" / "vm9.toml").write_text(
        f'[guest]\nname = "vm9"\n\n[[nics]]\nnetwork = "prod"\nmac = "{mac}"\n')
    if how == "no store":
        monkeypatch.setattr(loading, "STORE_MIN_FILES", 10**9)
    elif how == "one file changed":
        settle()
        load_fleet(mappings)
        (mappings / "guests" / "vm2.toml").write_text(
            (mappings / "guests" / "vm2.toml").read_text() + "\n")
    fleet = load_fleet(mappings)
    assert isinstance(fleet.guests, IndexedGuests)
    every = {guest.name: guest for guest in fleet.guests.values()}  # a plain dict: the walk
    macs = {nic.mac for guest in every.values() for nic in guest.nics} | {"02:00:00:00:00:99"}
    assert mac_users(fleet.guests, macs) == mac_users(every, macs)
    assert [name for name, _ in mac_users(fleet.guests, {mac})[mac]] == ["vm1", "vm9"]
    assert guest_hosts(fleet.guests) == {name: g.host for name, g in every.items()}
