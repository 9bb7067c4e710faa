"""README's walkthrough of the fleet, run line by line as README.rst writes it: the block
is parsed from README, so the two cannot drift apart. Only the directories (/tmp/fleet ...)
and the namespace prefix (nmw, here nmsw...) are the test's own; `netmap` and `python3` are
this checkout's. Each line's comment is checked where it names an exit code, and what the
README's prose says of the fleet steps is asserted. Then Ctrl-C: nothing of the lab is
left (namespaces, sshd, libvirtd, QEMU)."""

from __future__ import annotations

import os
import pwd
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, interrupt, lab_namespaces, wait_until_up
from tests.libvirt_marks import LIBVIRT_LAB, NEEDS_LIBVIRT_PYTHON

sys.path.insert(0, str(REPO / "scripts"))
import libvirt_lab  # scripts/ is not a package
import ssh_lab


def walkthrough() -> list[str]:
    """The README block that starts the lab: its command lines, continuations joined,
    comment-only and blank lines dropped, each with its comment."""
    text = (REPO / "README.rst").read_text()
    start = text.index("    cp -r mappings /tmp/fleet")
    lines = []
    for line in text[start:].splitlines():
        if line and not line.startswith("    "):
            break  # the block ends at the next unindented paragraph
        lines.append(line.strip())
    joined = "\n".join(lines).replace("\\\n", " ")
    return [" ".join(line.split()) for line in joined.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def split(line: str) -> tuple[str, str]:
    """(command, comment)."""
    command, _, comment = line.partition(" # ")
    return command.strip(), comment.strip()


def expected_exit(comment: str) -> int:
    found = re.search(r"\(exit (\d)\)", comment)
    return int(found.group(1)) if found else 0


def test_the_walkthrough_covers_all_three_parts() -> None:
    commands = [split(line)[0] for line in walkthrough()]
    (up,) = [c for c in commands if "libvirt_lab.py up" in c]
    assert "--ssh" in shlex.split(up)
    assert "--prefix" in shlex.split(up)
    assert "netmap drain host-a --execute" in commands
    assert "netmap locate" in commands
    assert "netmap locate --write" in commands
    assert any(c.startswith("netmap fleet discover -i ") for c in commands)
    drifts = [n for n, c in enumerate(commands) if c.startswith("netmap fleet drift -i ")]
    assert len(drifts) == 3
    # the drift made on purpose, and the host made unreachable, each before a drift run
    mtu = commands.index("ip -n nmw-host-b link set eno2 mtu 1400")
    down = commands.index("ip -n nmw-host-c link set lo down")
    assert drifts[0] < mtu < drifts[1] < down < drifts[2]


def lab_test(test):
    """The marks of a test that runs the lab: root, libvirt, QEMU, sshd and Ansible."""
    for mark in reversed([
            *LIBVIRT_LAB, NEEDS_LIBVIRT_PYTHON,
            pytest.mark.skipif(ssh_lab.MISSING is not None, reason=f"needs {ssh_lab.MISSING}")]):
        test = mark(test)
    return test


def _processes_in(namespaces: list[str]) -> dict[tuple[str, str], str]:
    """(pid, start time) -> name of every process in these namespaces: a pid reused
    meanwhile is not the same process."""
    found = {}
    for netns in namespaces:
        pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True,
                              text=True, check=False).stdout.split()
        for pid in pids:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            name, _, rest = stat.partition(" (")[2].rpartition(") ")
            found[(pid, rest.split()[19])] = name
    return found


def _alive(process: tuple[str, str]) -> bool:
    pid, started = process
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return stat[19] == started and stat[0] != "Z"


@lab_test
def test_readme_walkthrough_as_written(tmp_path: Path) -> None:
    problem = libvirt_lab.isolation_problem()
    if problem:
        pytest.skip(problem)
    prefix = f"nmsw{os.getpid() % 1000}"

    def ours(line: str) -> str:
        line = re.sub(r"/tmp/(fleet|drafts)", lambda m: f"{tmp_path}/{m.group(1)}", line)
        return re.sub(r"\bnmw\b", prefix, line)

    # `netmap` and `python3` as README's user has them: this checkout's
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "netmap").write_text(f"#!/bin/sh\nPYTHONPATH={shlex.quote(str(REPO))} "
                                    f"exec {shlex.quote(sys.executable)} -m netmap \"$@\"\n")
    (bin_dir / "netmap").chmod(0o755)
    (bin_dir / "python3").symlink_to(sys.executable)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "COLUMNS": "200",
           **ssh_lab.ansible_env(tmp_path)}
    env.pop("PYTHONPATH", None)

    dot_ssh = Path(pwd.getpwuid(os.geteuid()).pw_dir) / ".ssh"
    ssh_files_before = _files(dot_ssh)
    up = None
    seen: dict[tuple[str, str], str] = {}
    changed = {"mtu": False, "down": False}
    try:
        for line in walkthrough():
            command, comment = split(line)
            command = ours(command)
            if "libvirt_lab.py up" in command:
                up = subprocess.Popen(shlex.split(command), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
                wait_until_up(up)
                seen = _processes_in(lab_namespaces(prefix))
                for host in ("host-a", "host-b", "host-c"):  # on its loopback only
                    netns = f"{prefix}-{host}"
                    listening = subprocess.run(
                        ["ip", "netns", "exec", netns, "ss", "-Htln", "sport", "= :22"],
                        capture_output=True, text=True, check=True).stdout.split("\n")
                    assert [row.split()[3] for row in listening if row] == [
                        "127.0.0.1:22"], (netns, listening)
                continue
            if command.startswith("export "):
                env.update(item.split("=", 1) for item in shlex.split(command)[1:])
                continue
            done = subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                                  cwd=REPO, env=env, timeout=300, check=False)
            said = done.stdout + done.stderr
            assert done.returncode == expected_exit(comment), f"{command}\n{said}"
            _check_step(command, done.stdout, changed, tmp_path)
        # what `netmap fleet` ran on the hosts: the lab's netmap, first on the PATH of
        # Ansible's modules there, whatever root's shell rc files put first
        found = subprocess.run(
            ["ansible", "host-b", "-i", f"{tmp_path}/fleet/ssh/inventory.ini", "-m",
             "ansible.builtin.command", "-a", "sh -c 'command -v netmap'", "--one-line"],
            capture_output=True, text=True, env=env, timeout=120, check=False)
        assert f"{tmp_path}/fleet/ssh/bin/netmap" in found.stdout, found.stdout + found.stderr
    finally:
        if up is not None:
            seen.update(_processes_in(lab_namespaces(prefix)))
            interrupt(up)
    assert up is not None, up.stderr.read() if up and up.stderr else ""
    assert up.returncode == 0, up.stderr.read() if up and up.stderr else ""
    assert changed == {"mtu": True, "down": True}
    assert lab_namespaces(prefix) == []
    # sshd (the listener and each connection's), socat, libvirtd and QEMU ran there
    assert {"sshd", "libvirtd", "qemu-system-x86"} <= set(seen.values()), seen
    assert {p: name for p, name in seen.items() if _alive(p)} == {}
    assert not (tmp_path / "fleet/ssh").exists()
    # this machine's ssh files: nothing written (known_hosts included)
    assert _files(dot_ssh) == ssh_files_before


def _files(directory: Path) -> dict[str, tuple[int, int]]:
    if not directory.is_dir():
        return {}
    return {path.name: (path.stat().st_size, path.stat().st_mtime_ns)
            for path in directory.iterdir()}


def _check_step(command: str, stdout: str, changed: dict[str, bool], tmp_path: Path) -> None:
    """What README's prose says of the fleet steps."""
    if command.startswith("ip -n") and "mtu 1400" in command:
        changed["mtu"] = True
    elif command.startswith("ip -n") and "lo down" in command:
        changed["down"] = True
    elif command.startswith("ssh -F"):
        links = {line.split()[0].split("@")[0] for line in stdout.splitlines()}
        assert {"eno2", "eno3", "ens1f0"} <= links, stdout
        assert "eth0" not in links, stdout
    elif command.startswith("netmap fleet discover"):
        rows = _rows(stdout)
        assert {host: row.split()[0] for host, row in rows.items()} == {
            "host-a": "ok", "host-b": "ok", "host-c": "ok"}, stdout
        assert sorted(p.name for p in (tmp_path / "drafts").iterdir()) == [
            "host-a.toml", "host-b.toml", "host-c.toml"]
    elif command.startswith("netmap fleet drift"):
        rows = _rows(stdout)
        assert set(rows) == {"host-a", "host-b", "host-c"}, stdout
        for host in ("host-a", "host-b"):
            assert rows[host].split()[0] == "drift", stdout
            assert "[SRIOV_MISSING]" in rows[host]
            assert "[FEATURE_MISSING]" in rows[host]
        mtu = "[UPLINK_MTU_LOW] uplink eno2 has MTU 1400, the mapping declares 9000"
        assert (mtu in rows["host-b"]) == changed["mtu"], stdout
        if changed["down"]:
            assert rows["host-c"].split()[0] == "unreachable", stdout
        else:
            assert rows["host-c"].split()[0] == "drift", stdout
            assert "[FEATURE_MISSING]" in rows["host-c"]


def _rows(table: str) -> dict[str, str]:
    """host -> its status and findings, from the table's lines (a row's cell may take
    several lines; the host's name is on its first)."""
    rows: dict[str, str] = {}
    host = None
    for line in table.splitlines():
        # rich draws with ASCII where stdout cannot take UTF-8
        cells = [cell.strip() for cell in re.split("[│|]", line)[1:-1]]
        if len(cells) != 3:
            continue
        if cells[0].startswith("host-"):
            host = cells[0]
            rows[host] = ""
        if host is not None:
            rows[host] += " ".join(cells[1:]) + " "
    return rows
