"""Mapping files and folders that are not what they should be (issue 14, items 6, 7, 10):
each is an error that names the file and what is wrong, never a hang or a traceback.

Whatever could hang (a FIFO, /dev/zero) runs in a child process with a timeout, so a
regression fails the test instead of hanging the suite.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from netmap.errors import InputError
from netmap.load import fleet as loading
from netmap.load import load_fleet, mappings_dir, store
from netmap.load.parse import load_host, load_networks
from netmap.support import regular_file

REPO = Path(__file__).resolve().parent.parent


def netmap(*args: str, env: dict[str, str] | None = None,
           timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The command line in a child, which a hang (timeout) or reading /dev/zero (2 GiB of
    address space at most) cannot take the suite down with."""
    return subprocess.run([sys.executable, "-m", "netmap", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, preexec_fn=_bounded,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def _bounded() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


# --- item 6: only regular files, of bounded size --------------------------------------------

@pytest.mark.parametrize("where", ["hosts/x.toml", "guests/x.toml", "guests/x.xml"])
def test_fifo_as_mapping_file_is_named_not_waited_on(mappings: Path, where: str) -> None:
    os.mkfifo(mappings / where)
    done = netmap("--mappings", str(mappings), "show", "--json", timeout=30)
    assert done.returncode == 2, done.stderr
    problems = json.loads(done.stdout)["problems"]
    assert [(p["file"], p["problem"].split(";")[0]) for p in problems] == [
        (str(mappings / where), "is a FIFO (named pipe), not a regular file")]


def test_link_to_dev_zero_is_refused_at_once(mappings: Path) -> None:
    (mappings / "hosts" / "z.toml").symlink_to("/dev/zero")
    done = netmap("--mappings", str(mappings), "show", "--json", timeout=30)
    assert [(p["file"], p["problem"].split(";")[0]) for p in json.loads(done.stdout)["problems"]
            ] == [(str(mappings / "hosts" / "z.toml"), "is a character device, not a regular file")]
    assert "host-a" in load_fleet(mappings).hosts  # the rest loads


def test_character_device_is_refused(mappings: Path) -> None:
    (mappings / "hosts" / "n.toml").symlink_to("/dev/null")  # empty, not endless: in-process
    fleet = load_fleet(mappings)
    problem = next(p for p in fleet.problems if p.file.endswith("n.toml"))
    assert problem.problem.startswith("is a character device, not a regular file")


def test_directory_as_mapping_file(mappings: Path) -> None:
    (mappings / "guests" / "d.toml").mkdir()
    fleet = load_fleet(mappings)
    problem = next(p for p in fleet.problems if p.file.endswith("d.toml"))
    assert problem.problem.startswith("is a directory, not a regular file")


def test_symlink_to_a_regular_file_is_read(mappings: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "host-a.toml"
    (mappings / "hosts" / "host-a.toml").rename(elsewhere)
    (mappings / "hosts" / "host-a.toml").symlink_to(elsewhere)
    assert "host-a" in load_fleet(mappings).hosts


def test_file_over_the_size_limit(mappings: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = mappings / "hosts" / "big.toml"
    big.write_text("# padding\n" * (regular_file.MAX_MAPPING_BYTES // 10 + 1))
    networks = load_networks(mappings / "networks.toml")
    with pytest.raises(InputError) as err:
        load_host(big, networks)
    assert err.value.file == str(big)
    assert err.value.problem.startswith("is larger than 8 MiB")
    # the limit holds for what is read, not only what fstat said (a file still growing)
    small = mappings / "hosts" / "host-a.toml"
    monkeypatch.setattr(regular_file.os, "fstat", lambda fd: os.stat(small))
    with pytest.raises(InputError, match="larger than 8 MiB"):
        regular_file.read_regular(big)


def test_fifo_as_cache_file_is_a_miss_then_replaced(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    sys.path.insert(0, str(REPO / "scripts"))
    import gen_fleet

    root = tmp_path / "generated"
    gen_fleet.generate(root, 480, 120, seed=2)  # 600 files: the load uses its store
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    monkeypatch.setenv("NETMAP_CACHE_DIR", str(cache_dir))
    target = store.cache_file(root)
    os.mkfifo(target)
    done = netmap("--mappings", str(root), "hosts-for", "vm000001", "--json", timeout=60)
    assert done.returncode in (0, 1), done.stderr
    assert json.loads(done.stdout)["guest"] == "vm000001"
    monkeypatch.setattr(store, "RACY_WINDOW_NS", -10**12)  # every file counts as settled
    load_fleet(root)
    assert target.is_file()
    opened = store.Store.open(root)
    assert opened is not None
    assert len(opened.rows(os.path.realpath(root)) or ()) == 600


# --- item 7 (parser): nesting the parser cannot follow ---------------------------------------

@pytest.mark.parametrize("text, line", [
    ("[host]\nname = 'q'\nx = " + "[" * 500 + "]" * 500 + "\n", 3),
    ("[host]\nname = 'q'\nx = " + "{a=" * 500 + "1" + "}" * 500 + "\n", 3),
    ("[host]\nname = 'q'\n" + ".".join(["k"] * 3000) + " = 1\n", 3),
    ("[networks." + ".".join(["k"] * 1000) + "]\n", 1),
], ids=["arrays", "inline tables", "dotted key", "dotted header"])
def test_deep_nesting_is_an_input_error_with_its_line(mappings: Path, text: str,
                                                      line: int) -> None:
    path = mappings / "hosts" / "deep.toml"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        load_host(path, load_networks(mappings / "networks.toml"))
    assert (err.value.file, err.value.line) == (str(path), line)
    assert "too deeply" in err.value.problem
    done = netmap("--mappings", str(mappings), "show", "--json")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert [(p["file"], p["line"], p["problem"]) for p in json.loads(done.stdout)["problems"]
            ] == [(str(path), line, "nests tables, arrays or dotted keys too deeply to read")]


# --- item 10: the real cause ----------------------------------------------------------------

def test_guest_on_a_host_whose_file_is_broken_names_that_file(mappings: Path) -> None:
    host_a = mappings / "hosts" / "host-a.toml"
    host_a.write_text(host_a.read_text() + "[host\n")
    done = netmap("--mappings", str(mappings), "check", "vm1", "--to", "host-b")
    assert done.returncode == 2
    assert "no mapping" not in done.stderr
    assert "add hosts/host-a.toml" not in done.stderr
    assert f"names host 'host-a', but its mapping cannot be loaded: {host_a}:" in done.stderr
    assert "is not valid TOML" in done.stderr


def test_guest_on_an_unknown_host_with_some_broken_host_file(mappings: Path) -> None:
    vm1 = mappings / "guests" / "vm1.toml"
    vm1.write_text(vm1.read_text().replace('host = "host-a"', 'host = "host-q"'))
    (mappings / "hosts" / "other.toml").write_text("[host\n")
    problem = next(p for p in load_fleet(mappings).problems if p.file == str(vm1))
    assert "no readable mapping defines" in problem.problem
    assert "other.toml" in problem.problem
    (mappings / "hosts" / "other.toml").unlink()
    problem = next(p for p in load_fleet(mappings).problems if p.file == str(vm1))
    assert problem.problem == "names host 'host-q', which has no mapping"


def test_hosts_for_lists_a_broken_host(mappings: Path) -> None:
    host_c = mappings / "hosts" / "host-c.toml"
    host_c.write_text(host_c.read_text() + "[host\n")
    done = netmap("--mappings", str(mappings), "hosts-for", "vm1", "--json")
    answer = json.loads(done.stdout)
    assert [p["file"] for p in answer["unreadable"]] == [str(host_c)]
    assert answer["unreadable"][0]["problem"].startswith("is not valid TOML")
    human = netmap("--mappings", str(mappings), "hosts-for", "vm1",
                   env={"COLUMNS": "200"})
    assert "not considered: 1 host file(s) cannot be read" in human.stdout
    assert str(host_c) in human.stdout
    # at 80 columns the problem and its fix wrap under their own start, as findings do
    narrow = netmap("--mappings", str(mappings), "hosts-for", "vm1", env={"COLUMNS": "80"})
    block = narrow.stdout[narrow.stdout.index("not considered"):].splitlines()[1:]
    fix_at = next(n for n, line in enumerate(block) if line.startswith("    fix: "))
    assert block[0].startswith(("✗ ", "x "))
    assert str(host_c) in "".join("".join(block[:fix_at]).split())  # folded, never cut
    assert all(line.startswith("  ") and line[2] != " " for line in block[1:fix_at]), block
    assert all(line.startswith(" " * 9) for line in block[fix_at + 1:]), block
    assert all(line == line.rstrip() and len(line) <= 80 for line in block), block
    whole = json.loads(netmap("--mappings", str(mappings), "hosts-for", "vm3",
                              "--json").stdout)
    assert whole["unreadable"] == [p for p in answer["unreadable"]]


@pytest.mark.parametrize("folder", ["hosts", "guests"])
@pytest.mark.parametrize("make, says", [
    (lambda p: p.write_text(""), "it is a file, not a directory"),
    (lambda p: p.symlink_to(p), "it is a symlink loop"),
    (lambda p: os.mkfifo(p), "it is a FIFO (named pipe), not a directory"),
    (lambda p: p.symlink_to(p.parent / "gone"), "it is a symlink to nothing"),
], ids=["file", "loop", "fifo", "dangling"])
def test_folder_that_cannot_be_listed_is_an_error(mappings: Path, folder: str, make,
                                                  says: str) -> None:
    path = mappings / folder
    for child in path.iterdir():
        child.unlink()
    path.rmdir()
    make(path)
    with pytest.raises(InputError) as err:
        load_fleet(mappings)
    assert err.value.file == str(path)
    assert err.value.problem == f"cannot list the folder: {says}"


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and util-linux setpriv to drop CAP_DAC_READ_SEARCH")
@pytest.mark.parametrize("folder", ["hosts", "guests"])
def test_unreadable_folder_is_an_error(mappings: Path, folder: str) -> None:
    """Root without the capabilities that bypass file modes, as a user would be bound."""
    (mappings / folder).chmod(0)
    try:
        done = subprocess.run(
            ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
             "--inh-caps=-dac_override,-dac_read_search", "--", sys.executable, "-m", "netmap",
             "--mappings", str(mappings), "show"], capture_output=True, text=True, timeout=60,
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    finally:
        (mappings / folder).chmod(0o755)
    assert done.returncode == 2, done.stderr
    assert f"{mappings / folder}" in done.stderr
    assert "cannot list the folder: Permission denied" in done.stderr
    assert "Traceback" not in done.stderr


def test_missing_guests_folder_is_still_an_empty_fleet(mappings: Path) -> None:
    for child in (mappings / "guests").iterdir():
        child.unlink()
    (mappings / "guests").rmdir()
    assert load_fleet(mappings).guests == {}


@pytest.mark.parametrize("make, says", [
    (lambda p: p.mkdir(), "is a directory, not a regular file"),
    (lambda p: os.mkfifo(p), "is a FIFO (named pipe), not a regular file"),
])
def test_networks_file_that_is_no_file(mappings: Path, make, says: str,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    networks = mappings / "networks.toml"
    networks.unlink()
    make(networks)
    with pytest.raises(InputError) as err:
        mappings_dir(mappings)
    assert (err.value.file, err.value.problem.split(";")[0]) == (str(networks), says)
    monkeypatch.chdir(mappings.parent)  # ./mappings, the default
    monkeypatch.delenv("NETMAP_MAPPINGS", raising=False)
    with pytest.raises(InputError, match="not a regular file"):
        mappings_dir(None)
    done = netmap("--mappings", str(mappings), "show", timeout=30)
    assert done.returncode == 2
    assert says in done.stderr


def test_cached_load_reports_what_a_plain_load_does(mappings: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NETMAP_CACHE_DIR", str(tmp_path / "cache"))
    (mappings / "hosts" / "x.toml").mkdir()
    (mappings / "hosts" / "z.toml").symlink_to("/dev/null")
    plain = [str(p) for p in load_fleet(mappings).problems]
    monkeypatch.setattr(loading, "STORE_MIN_FILES", 0)
    assert [str(p) for p in load_fleet(mappings).problems] == plain
    assert len(plain) == 2
