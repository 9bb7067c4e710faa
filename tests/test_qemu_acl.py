"""The QEMU helper's ACL: bridge.conf semantics over logical network names. Pure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from netmap.errors import EXIT_INCOMPATIBLE, InputError
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
    assert rule is not None and rule.action == "deny"
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
    assert not allowed and rule is not None and rule.file.endswith("tenants.conf")


def test_include_absolute(tmp_path: Path) -> None:
    other = write(tmp_path / "other.conf", "allow prod\n")
    top = write(tmp_path / "acl.conf", f"include {other}\n")
    assert load_acl(top).decide("prod")[0]


def test_include_loop_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "a.conf", "allow prod\ninclude b.conf\n")
    write(tmp_path / "b.conf", "include a.conf\n")
    with pytest.raises(InputError, match="include loop") as info:
        load_acl(tmp_path / "a.conf")
    assert info.value.file == str(tmp_path / "b.conf") and info.value.line == 1


def test_self_include_is_a_loop(tmp_path: Path) -> None:
    write(tmp_path / "a.conf", "include ./a.conf\n")
    with pytest.raises(InputError, match="include loop"):
        load_acl(tmp_path / "a.conf")


def test_missing_include_names_the_including_line(tmp_path: Path) -> None:
    top = write(tmp_path / "acl.conf", "allow prod\n\ninclude nowhere.conf\n")
    with pytest.raises(InputError, match=r"nowhere\.conf does not exist") as info:
        load_acl(top)
    assert info.value.file == str(top) and info.value.line == 3


def test_missing_top_file_says_how_to_create_it(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist") as info:
        load_acl(tmp_path / "absent.conf")
    assert "allow NETWORK" in (info.value.fix or "")


def test_unreadable_file(tmp_path: Path) -> None:
    top = write(tmp_path / "acl.conf", "include dir.conf\n")
    (tmp_path / "dir.conf").mkdir()
    with pytest.raises(InputError, match="not a regular file"):
        load_acl(top)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_permission_denied(tmp_path: Path) -> None:
    top = write(tmp_path / "acl.conf", "allow prod\n")
    top.chmod(0)
    with pytest.raises(InputError, match="not readable"):
        load_acl(top)


def test_world_writable_acl_is_not_trusted(tmp_path: Path) -> None:
    top = write(tmp_path / "acl.conf", "allow all\n")
    top.chmod(0o666)
    with pytest.raises(InputError, match="writable by everyone") as info:
        load_acl(top)
    assert info.value.fix == f"chmod o-w {top}"


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
