"""netmap's state directory, its lock and its state files, and host names (which name those
files): every way they can be unusable is a clear error, never a traceback, and a damaged
state file is refused whole (issue 14, item 7). Namespaces named here (nmhp-*) never exist:
nothing in these tests reaches a network stack.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, has_net_admin

from netmap.cli import main
from netmap.errors import ApplyError, InputError
from netmap.load import load_fleet
from netmap.state import HostState, host_lock

ABSENT = "nmhp-absent-9"
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not has_net_admin(),
    reason="needs root with CAP_NET_ADMIN, as realize and release do")
needs_setpriv = pytest.mark.skipif(
    os.geteuid() != 0 or not has_net_admin() or shutil.which("setpriv") is None,
    reason="needs root with CAP_NET_ADMIN and util-linux setpriv to drop CAP_DAC_OVERRIDE")
GOOD = {"version": 1, "host": "h", "resources": {
    "link:nm0": {"step": {"kind": "tap", "name": "nm0"}, "created": True, "guests": ["vm1"],
                 "info": {}}},
    "guests": {"vm1": {"status": "realized", "resources": ["link:nm0"], "nics": []}}}


@pytest.fixture
def fleet(mappings: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The example mappings with host-a in a namespace that does not exist: whatever gets
    past the state directory stops at "cannot reach host", never at a real interface."""
    path = mappings / "hosts" / "host-a.toml"
    path.write_text(re.sub(r'^netns = ".*?"', f'netns = "{ABSENT}"', path.read_text(),
                           flags=re.M))
    (mappings / "guests" / "vmd.toml").write_text(
        '[guest]\nname = "vmd"\nhost = "host-d"\n\n[[nics]]\nnetwork = "prod"\n'
        'mac = "52:54:00:dd:00:01"\n')
    monkeypatch.setenv("NETMAP_MAPPINGS", str(mappings))
    return mappings


def commands() -> list[list[str]]:
    """realize, release and the dry run of host-a; host-d's dry run needs no privilege
    (no namespace to enter) and only reads this machine's links (--force: check refuses
    vmd on host-d, whose fabric is not prod's)."""
    runs = [["realize", "vmd", "--host", "host-d", "--as-host", "--dry-run", "--force"]]
    if has_net_admin():
        runs += [["realize", "vm2", "--host", "host-a"], ["release", "vm2", "--host", "host-a"],
                 ["realize", "vm2", "--host", "host-a", "--dry-run"]]
    return runs


# --- the state directory ---------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["file", "under a file"])
def test_state_dir_that_is_no_directory(fleet: Path, tmp_path: Path, monkeypatch, capsys,
                                        layout: str) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("not a directory\n")
    chosen = blocker if layout == "file" else blocker / "sub"
    monkeypatch.setenv("NETMAP_STATE_DIR", str(chosen))
    for argv in commands():
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"{chosen}: $NETMAP_STATE_DIR: netmap's state directory is not a directory" in err
        assert f"{blocker} is a regular file" in err
        assert "set $NETMAP_STATE_DIR" in err
        assert "aside" not in err  # a path the user chose is never to be moved
    assert blocker.read_text() == "not a directory\n"


def test_state_dir_under_proc(fleet: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("NETMAP_STATE_DIR", "/proc/nmhp-state")
    for argv in commands():
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert ("/proc/nmhp-state: $NETMAP_STATE_DIR: netmap's state directory cannot be made"
                in err)
        assert "as /proc and /sys do" in err


def test_explicit_state_dir_is_named_as_the_option(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(InputError) as caught, host_lock("h", tmp_path / "f"):
        pass
    assert caught.value.key == "--state-dir"
    assert caught.value.file == str(tmp_path / "f")


def test_a_file_in_the_default_state_dirs_way_is_moved_aside(tmp_path: Path,
                                                            monkeypatch) -> None:
    import netmap.state

    monkeypatch.delenv("NETMAP_STATE_DIR", raising=False)
    monkeypatch.setattr(netmap.state, "DEFAULT_STATE_DIR", str(tmp_path / "run-netmap"))
    (tmp_path / "run-netmap").write_text("")
    with pytest.raises(InputError) as caught, host_lock("h"):
        pass
    assert caught.value.key is None
    assert f"move {tmp_path / 'run-netmap'} aside" in (caught.value.fix or "")


@needs_root
def test_state_dir_on_a_read_only_file_system(fleet: Path, tmp_path: Path) -> None:
    """A tmpfs mounted read-only in a private mount namespace (gone with the process)."""
    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux unshare")
    readonly = tmp_path / "ro"
    readonly.mkdir()
    script = (f'mount -t tmpfs -o ro,size=1m nmhp "{readonly}" && exec "{sys.executable}" '
              '-m netmap "$@"')
    for argv in (["realize", "vm2", "--host", "host-a"],
                 ["release", "vm2", "--host", "host-a"]):
        got = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
             *argv], capture_output=True, text=True, check=False, timeout=120,
            env={**os.environ, "PYTHONPATH": str(REPO), "NETMAP_STATE_DIR": str(readonly)})
        assert got.returncode == 2, got.stderr
        assert "netmap's state directory is on a read-only file system" in got.stderr
        assert "Traceback" not in got.stderr


def netmap_without_dac_override(*argv: str, state: Path) -> subprocess.CompletedProcess[str]:
    """Root that file permissions bind (no CAP_DAC_OVERRIDE): as a user is bound by
    /run/netmap, which root owns. setpriv, so that it still has CAP_NET_ADMIN and
    CAP_SYS_ADMIN and gets past realize's capability check to the state directory."""
    return subprocess.run(
        ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
         "--inh-caps=-dac_override,-dac_read_search", "--", sys.executable, "-m", "netmap",
         *argv], capture_output=True, text=True, check=False, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO), "NETMAP_STATE_DIR": str(state)})


@needs_setpriv
def test_state_dir_this_user_may_not_write(fleet: Path, tmp_path: Path) -> None:
    """realize and release: the directory and the privilege are named, exit 2. A dry run
    only reads: it goes on without the lock, as no writer can hold it either."""
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    os.chown(state, 65534, 65534)  # another user's, as /run/netmap is root's
    for argv in (["realize", "vm2", "--host", "host-a"],
                 ["release", "vm2", "--host", "host-a"]):
        got = netmap_without_dac_override(*argv, state=state)
        assert got.returncode == 2, got.stderr
        assert (f"netmap may not write its state directory {state}: Permission denied"
                in got.stderr)
        assert "run netmap as root" in got.stderr
        assert "Traceback" not in got.stderr
    got = netmap_without_dac_override("realize", "vm2", "--host", "host-a", "--dry-run",
                                      state=state)
    assert "Traceback" not in got.stderr
    assert "Permission" not in got.stderr
    assert ABSENT in got.stdout + got.stderr  # it got as far as the (absent) namespace
    # a lock that exists, writable, in a directory that is not: the state could not be
    # saved after the kernel was changed, so realize stops before
    lock = state / "host-a.lock"
    lock.touch()
    lock.chmod(0o666)
    got = netmap_without_dac_override("realize", "vm2", "--host", "host-a", state=state)
    assert got.returncode == 2, got.stderr
    assert f"may not write its state directory {state}" in got.stderr
    assert sorted(os.listdir(state)) == ["host-a.lock"]


def test_a_dry_run_shares_the_lock_with_other_readers(tmp_path: Path) -> None:
    with host_lock("h", tmp_path, write=False), \
            host_lock("h", tmp_path, write=False, timeout=0.2), \
            pytest.raises(ApplyError, match="another netmap run holds the lock"), \
            host_lock("h", tmp_path, timeout=0.2):
        pass


# --- host names: they name the state and lock files -----------------------------------------
@pytest.mark.parametrize(("name", "words"), [
    ("h" * 300, "has 300 characters; a host name has at most 253"),
    ("a" * 64 + ".example", "a part of 64 characters"),
    ("host_a", "is not a host name"), ("-host", "is not a host name"),
    ("host-a.", "is not a host name"), ("", "is empty")])
def test_host_names_follow_the_rules_of_host_names(mappings: Path, name: str,
                                                   words: str) -> None:
    path = mappings / "hosts" / "host-c.toml"
    path.write_text(path.read_text().replace('name = "host-c"', f"name = {json.dumps(name)}"))
    fleet = load_fleet(mappings)
    [err] = [e for e in fleet.problems if e.file == str(path)]
    assert err.key == "host.name"
    assert words in err.problem
    assert path.read_text().splitlines()[(err.line or 0) - 1].startswith("name =")


def test_a_fully_qualified_host_name_passes(mappings: Path) -> None:
    path = mappings / "hosts" / "host-c.toml"
    name = "node-1." + "a" * 63 + ".example"
    path.write_text(path.read_text().replace('name = "host-c"', f'name = "{name}"'))
    assert name in load_fleet(mappings).hosts


def test_a_300_character_host_name_never_reaches_the_file_system(mappings: Path,
                                                                 tmp_path: Path,
                                                                 monkeypatch, capsys) -> None:
    """It used to: ENAMETOOLONG from the lock file, a traceback."""
    long = "h" * 300
    path = mappings / "hosts" / "host-a.toml"
    text = path.read_text().replace('name = "host-a"', f'name = "{long}"')
    path.write_text(re.sub(r'^netns = ".*?"', f'netns = "{ABSENT}"', text, flags=re.M))
    guest = mappings / "guests" / "vm2.toml"
    guest.write_text(guest.read_text().replace('host = "host-a"', f'host = "{long}"'))
    monkeypatch.setenv("NETMAP_STATE_DIR", str(tmp_path / "state"))
    assert main(["--mappings", str(mappings), "realize", "vm2", "--host", long,
                 "--dry-run"]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "state").exists()


# --- state files ---------------------------------------------------------------------------
def damaged(*changes: tuple[tuple[str, ...], object]) -> dict:
    """GOOD with each (path, value) set."""
    doc = json.loads(json.dumps(GOOD))
    for (*parents, last), value in changes:
        node = doc
        for part in parents:
            node = node[part]
        node[last] = value
    return doc


NM0 = ("resources", "link:nm0")
VM1 = ("guests", "vm1")


@pytest.mark.parametrize(("doc", "key", "words"), [
    ([], None, "the file is [], not a JSON object"),
    (None, None, "the file is null, not a JSON object"),
    ("state", None, 'the file is "state", not a JSON object'),
    (damaged((("guests",), [])), "guests", "guests is [], not an object keyed by name"),
    (damaged((("resources",), None)), "resources", "resources is null"),
    ({"version": 1, "host": "h", "guests": {}}, "resources", "resources is missing"),
    (damaged((("host",), "other")), "host", "these are the records of another host"),
    (damaged((VM1, [])), "guests.vm1", "guests.vm1 is [], not an object"),
    (damaged(((*VM1, "status"), 3)), "guests.vm1.status", "is 3, not 'pending' or"),
    (damaged(((*VM1, "resources"), "link:nm0")), "guests.vm1.resources",
     'is "link:nm0", not a list of resource keys'),
    (damaged(((*VM1, "nics"), {})), "guests.vm1.nics", "is {}, not a list of objects"),
    (damaged(((*NM0, "guests"), "vm1")), 'resources["link:nm0"].guests',
     'is "vm1", not a list of guest names'),
    (damaged(((*NM0, "created"), "yes")), 'resources["link:nm0"].created',
     'is "yes", not true or false'),
    (damaged(((*NM0, "step"), [])), 'resources["link:nm0"].step', "is [], not an"),
    (damaged(((*NM0, "info"), 7)), 'resources["link:nm0"].info', "is 7, not an"),
])
def test_state_file_of_the_wrong_shape_is_refused_whole(tmp_path: Path, doc: object,
                                                        key: str | None, words: str) -> None:
    path = tmp_path / "h.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError) as caught:
        HostState.load("h", tmp_path)
    err = caught.value
    assert (err.file, err.key, err.exit_code) == (str(path), key, 2)
    assert "netmap's state file is damaged" in err.problem
    assert words in err.problem
    assert f"mv {path} {path}.damaged" in (err.fix or "")


def test_state_file_not_json_or_not_utf8(tmp_path: Path) -> None:
    for raw in (b"{half", b"\xff\xfe{}"):
        (tmp_path / "h.json").write_bytes(raw)
        with pytest.raises(InputError, match="damaged: the file is not JSON"):
            HostState.load("h", tmp_path)


def test_state_from_another_version_names_the_key(tmp_path: Path) -> None:
    (tmp_path / "h.json").write_text('{"version": 99}')
    with pytest.raises(InputError) as caught:
        HostState.load("h", tmp_path)
    assert caught.value.key == "version"
    assert "has version 99" in caught.value.problem


def test_a_fifo_as_state_file_is_refused_not_waited_on(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "h.json")
    got = subprocess.run(
        [sys.executable, "-c", "import sys\nfrom netmap.state import HostState\n"
         "try:\n    HostState.load('h', sys.argv[1])\n"
         "except Exception as err:\n    print(type(err).__name__, err)", str(tmp_path)],
        capture_output=True, text=True, timeout=20, check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert got.stdout.startswith("InputError")
    assert "cannot be read: a special file, not a regular file" in got.stdout


def test_fields_netmap_does_not_know_are_kept(tmp_path: Path) -> None:
    """Only what the code relies on is checked: a newer record's extra fields survive."""
    doc = damaged(((*NM0, "identity"), {"ifindex": 7}), ((*VM1, "extra"), [1]))
    (tmp_path / "h.json").write_text(json.dumps(doc))
    state = HostState.load("h", tmp_path)
    state.save()
    assert json.loads((tmp_path / "h.json").read_text()) == doc


@needs_root
def test_release_with_a_damaged_state_changes_nothing(fleet: Path, tmp_path: Path,
                                                      monkeypatch, capsys) -> None:
    """Another guest's records are never dropped: the file stays byte for byte."""
    state = tmp_path / "state"
    state.mkdir()
    doc = damaged((("host",), "host-a"))
    doc["guests"]["vm9"] = {"status": "realized", "resources": "link:nm0"}
    raw = json.dumps(doc).encode()
    (state / "host-a.json").write_bytes(raw)
    monkeypatch.setenv("NETMAP_STATE_DIR", str(state))
    for argv in (["release", "vm2", "--host", "host-a"],
                 ["realize", "vm2", "--host", "host-a"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert (f"{state / 'host-a.json'}: guests.vm9.resources: netmap's state file is "
                "damaged") in err
        assert "Traceback" not in err
    assert (state / "host-a.json").read_bytes() == raw
