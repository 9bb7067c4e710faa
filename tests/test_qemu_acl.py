"""The QEMU helper's ACL: bridge.conf semantics over logical network names. Pure."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from netmap.errors import EXIT_INCOMPATIBLE, InputError
from netmap.qemu import network_name_problem
from netmap.qemu.acl import AccessDenied, acl_path, load_acl, parse_acl


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o644)
    return path


def test_default_deny() -> None:
    acl = parse_acl("# nothing allowed\n\n")
    assert acl.decide("prod") == (False, None)
    with pytest.raises(AccessDenied, match="does not allow network 'prod'") as info:
        acl.check("prod")
    assert "allow prod" in (info.value.fix or "")
    assert info.value.exit_code == EXIT_INCOMPATIBLE


def test_allow_by_name_only_that_name() -> None:
    acl = parse_acl("allow prod\n")
    assert acl.check("prod").line == 1
    assert acl.decide("prod2") == (False, None)
    assert acl.decide("pro") == (False, None)


def test_allow_all() -> None:
    acl = parse_acl("  allow all   # every network\n")
    assert acl.decide("anything")[0]
    assert acl.decide("mgmt")[0]


@pytest.mark.parametrize("text", [
    "allow prod\ndeny prod\n",
    "deny prod\nallow prod\n",
    "allow all\ndeny prod\n",
    "deny prod\nallow all\n",
    "deny all\nallow prod\n",
    "allow prod\ndeny all\n",
])
def test_deny_wins_whatever_the_order(text: str) -> None:
    acl = parse_acl(text, "acl.conf")
    allowed, rule = acl.decide("prod")
    assert not allowed
    assert rule is not None
    assert rule.action == "deny"
    with pytest.raises(AccessDenied, match=r"denies network 'prod' \(acl.conf:\d: deny"):
        acl.check("prod")


def test_deny_one_leaves_the_others_allowed() -> None:
    acl = parse_acl("allow all\ndeny storage\n")
    assert acl.decide("prod")[0]
    assert not acl.decide("storage")[0]


@pytest.mark.parametrize(("text", "message"), [
    ("permit prod\n", "unknown ACL command 'permit'"),
    ("allow\n", "takes exactly one argument, got 0"),
    ("deny a b\n", "takes exactly one argument, got 2"),
])
def test_syntax_errors_name_file_and_line(text: str, message: str, tmp_path: Path) -> None:
    path = write(tmp_path / "acl.conf", "# header\n" + text)
    with pytest.raises(InputError, match=message) as info:
        load_acl(path)
    assert info.value.file == str(path)
    assert info.value.line == 2
    assert info.value.fix


def test_include_relative_to_the_including_file(tmp_path: Path) -> None:
    sub = tmp_path / "acl.d"
    sub.mkdir()
    write(sub / "tenants.conf", "allow tenant-blue\ndeny mgmt\n")
    top = write(tmp_path / "acl.conf", "allow all\ninclude acl.d/tenants.conf\n")
    cwd = os.getcwd()
    os.chdir("/")  # QEMU would resolve against the working directory; we must not
    try:
        acl = load_acl(top)
    finally:
        os.chdir(cwd)
    assert acl.files == (str(top), str(sub / "tenants.conf"))
    assert acl.decide("tenant-blue")[0]
    allowed, rule = acl.decide("mgmt")
    assert not allowed
    assert rule is not None
    assert rule.file.endswith("tenants.conf")


def test_include_absolute(tmp_path: Path) -> None:
    other = write(tmp_path / "other.conf", "allow prod\n")
    top = write(tmp_path / "acl.conf", f"include {other}\n")
    assert load_acl(top).decide("prod")[0]


def test_include_loop_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "a.conf", "allow prod\ninclude b.conf\n")
    write(tmp_path / "b.conf", "include a.conf\n")
    with pytest.raises(InputError, match="include loop") as info:
        load_acl(tmp_path / "a.conf")
    assert info.value.file == str(tmp_path / "b.conf")
    assert info.value.line == 1


def test_self_include_is_a_loop(tmp_path: Path) -> None:
    write(tmp_path / "a.conf", "include ./a.conf\n")
    with pytest.raises(InputError, match="include loop"):
        load_acl(tmp_path / "a.conf")


def test_missing_include_names_the_including_line(tmp_path: Path) -> None:
    top = write(tmp_path / "acl.conf", "allow prod\n\ninclude nowhere.conf\n")
    with pytest.raises(InputError, match=r"nowhere\.conf does not exist") as info:
        load_acl(top)
    assert info.value.file == str(top)
    assert info.value.line == 3


def test_missing_top_file_says_how_to_create_it(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist") as info:
        load_acl(tmp_path / "absent.conf")
    assert "allow NETWORK" in (info.value.fix or "")


def test_unreadable_file(tmp_path: Path) -> None:
    top = write(tmp_path / "acl.conf", "include dir.conf\n")
    (tmp_path / "dir.conf").mkdir()
    with pytest.raises(InputError, match="not a regular file"):
        load_acl(top)


def test_permission_denied(tmp_path: Path) -> None:
    top = write(tmp_path / "acl.conf", "allow prod\n")
    top.chmod(0)
    if os.geteuid() != 0:
        with pytest.raises(InputError, match="not readable"):
            load_acl(top)
        return
    if shutil.which("setpriv") is None:
        pytest.skip("needs util-linux setpriv to drop root's CAP_DAC_OVERRIDE")
    # root, bound by file modes as the helper's users are (no DAC override or read search)
    probe = ("import sys\nfrom netmap.errors import InputError\nfrom netmap.qemu.acl import "
             "load_acl\ntry:\n    load_acl(sys.argv[1])\nexcept InputError as err:\n"
             "    print(err)\n    sys.exit(2)\n")
    done = subprocess.run(
        ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
         "--inh-caps=-dac_override,-dac_read_search", "--", sys.executable, "-c", probe,
         str(top)], capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert done.returncode == 2, done.stdout + done.stderr
    assert "not readable" in done.stdout
    assert str(top) in done.stdout


def test_world_writable_acl_is_not_trusted(tmp_path: Path) -> None:
    top = write(tmp_path / "acl.conf", "allow all\n")
    top.chmod(0o666)
    with pytest.raises(InputError, match="writable by everyone") as info:
        load_acl(top)
    assert info.value.fix == f"chmod go-w {top}"


def test_not_utf8(tmp_path: Path) -> None:
    top = tmp_path / "acl.conf"
    top.write_bytes(b"allow \xff\xfe\n")
    with pytest.raises(InputError, match="not UTF-8"):
        load_acl(top)


def test_acl_path_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NETMAP_QEMU_ACL", raising=False)
    assert acl_path() == Path("/etc/netmap/qemu-helper.conf")
    monkeypatch.setenv("NETMAP_QEMU_ACL", "/srv/acl.conf")
    assert acl_path() == Path("/srv/acl.conf")
    assert acl_path("/x.conf") == Path("/x.conf")


# --- whom the ACL trusts: root-owned files and directories nobody else can write ---------

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


@needs_root
@pytest.mark.parametrize(("uid", "mode", "message"), [
    (NOBODY, 0o664, "owned by uid 65534, not by root"),
    (NOBODY, 0o644, "owned by uid 65534, not by root"),
    (0, 0o664, "writable by its group"),
    (0, 0o646, "writable by everyone"),
])
def test_acl_file_someone_else_can_change_is_not_trusted(tmp_path: Path, uid: int, mode: int,
                                                        message: str) -> None:
    top = write(tmp_path / "acl.conf", "allow all\n")
    os.chown(top, uid, 0)
    top.chmod(mode)
    with pytest.raises(InputError, match=message) as info:
        load_acl(top)
    assert str(top) in info.value.problem
    assert info.value.fix


@needs_root
@pytest.mark.parametrize(("uid", "mode", "message"), [
    (0, 0o777, "writable by everyone"),
    (0, 0o775, "writable by its group"),
    (NOBODY, 0o755, "owned by uid 65534"),
])
def test_include_from_a_directory_others_control_is_not_trusted(
        tmp_path: Path, uid: int, mode: int, message: str) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    write(shared / "tenants.conf", "allow all\n")
    os.chown(shared, uid, 0)
    shared.chmod(mode)
    top = write(tmp_path / "acl.conf", "deny storage\ninclude shared/tenants.conf\n")
    with pytest.raises(InputError, match=message) as info:
        load_acl(top)
    assert f"directory {shared}, which holds ACL file" in info.value.problem
    assert (info.value.file, info.value.line) == (str(top), 2)


@needs_root
def test_a_loose_directory_higher_up_is_not_trusted_either(tmp_path: Path) -> None:
    loose = tmp_path / "loose"
    (loose / "etc").mkdir(parents=True)
    loose.chmod(0o777)
    top = write(loose / "etc" / "acl.conf", "allow all\n")
    with pytest.raises(InputError, match=f"directory {loose}, which holds"):
        load_acl(top)


@needs_root
def test_a_symlink_in_a_loose_directory_is_not_trusted(tmp_path: Path) -> None:
    real = write(tmp_path / "acl.conf", "allow all\n")
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    (loose / "acl.conf").symlink_to(real)
    with pytest.raises(InputError, match=f"directory {loose}, which holds"):
        load_acl(loose / "acl.conf")


def test_a_sticky_directory_like_tmp_is_trusted(tmp_path: Path) -> None:
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)  # others may add entries, but cannot swap this one
    top = write(sticky / "acl.conf", "allow prod\n")
    assert load_acl(top).decide("prod")[0]


def _load_in_child(path: Path) -> subprocess.CompletedProcess[str]:
    code = ("import sys; from netmap.qemu.acl import load_acl\n"
            "from netmap.errors import InputError\n"
            "try: load_acl(sys.argv[1])\n"
            "except InputError as err: print(err); sys.exit(2)\n")
    return subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                          text=True, timeout=30, check=False)


@pytest.mark.parametrize("as_include", [False, True])
def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path,
                                                       as_include: bool) -> None:
    fifo = tmp_path / "fifo.conf"
    os.mkfifo(fifo, 0o644)
    top = write(tmp_path / "acl.conf", "include fifo.conf\n") if as_include else fifo
    got = _load_in_child(top)  # a hang fails through the timeout
    assert got.returncode == 2
    assert f"ACL {fifo} is not a regular file" in got.stdout


def test_a_device_or_a_huge_file_is_not_read_whole(tmp_path: Path) -> None:
    zero = tmp_path / "zero.conf"
    zero.symlink_to("/dev/zero")
    assert "is not a regular file" in _load_in_child(zero).stdout
    huge = tmp_path / "huge.conf"
    with open(huge, "wb") as handle:
        handle.truncate(64 * 1024 * 1024)  # sparse: costs no disk
    got = _load_in_child(huge)
    assert got.returncode == 2
    assert "is larger than 1024 KiB" in got.stdout


@pytest.mark.parametrize("name", ["mgmt\n", "mgmt\r", "\nmgmt", "mg\nmt", "../mgmt", ".mgmt",
                                  "mgmt/x", "m" * 16, ""])
def test_network_name_check_takes_the_whole_name(name: str) -> None:
    assert network_name_problem(name)


@pytest.mark.parametrize("name", ["mgmt", "tenant-blue", "a.b_c", "m" * 15])
def test_network_names_that_pass(name: str) -> None:
    assert network_name_problem(name) is None
