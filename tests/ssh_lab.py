"""Lab hosts reached over real SSH: each namespace runs its own sshd on its loopback, and
ssh enters it through `ProxyCommand ip netns exec NS socat - TCP:127.0.0.1:22`, so no
traffic leaves the namespaces a test made. Shared by the fleet tests (Ansible, remote
release)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SSHD = shutil.which("sshd") or shutil.which("sshd", path="/usr/sbin:/sbin")
MISSING = next((what for found, what in (
    (os.geteuid() == 0, "root (to enter namespaces and run sshd)"),
    (SSHD, "sshd (Debian: openssh-server)"), (shutil.which("ssh"), "ssh (openssh-client)"),
    (shutil.which("ssh-keygen"), "ssh-keygen"), (shutil.which("socat"), "socat"),
    (shutil.which("ansible"), "ansible (pip install ansible-core)")) if not found), None)

SSHD_CONFIG = """ListenAddress 127.0.0.1
Port 22
HostKey {key}
AuthorizedKeysFile {authorized}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile none
"""


@dataclass
class SshLab:
    hosts: dict[str, str]  # host -> namespace
    key: Path  # the client's private key
    inventory: Path  # Ansible's, one line per host with its ProxyCommand

    def proxy(self, host: str) -> str:
        return f"ip netns exec {self.hosts[host]} socat - TCP:127.0.0.1:22"

    def ssh_wrapper(self, path: Path, host: str) -> Path:
        """An ssh that reaches `host` (for libvirt's `command=` URI parameter)."""
        path.write_text(f"#!/bin/sh\nexec ssh -o UserKnownHostsFile=/dev/null "
                        f"-o 'ProxyCommand={self.proxy(host)}' \"$@\"\n")
        path.chmod(0o755)
        return path


@contextlib.contextmanager
def ssh_lab(hosts: dict[str, str], scratch: Path, *, silent: tuple[str, ...] = ()
            ) -> Iterator[SshLab]:
    """sshd in every namespace of `hosts` (host -> namespace) but those in `silent`."""
    key = scratch / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                    str(scratch / "hostkey")], check=True)
    (scratch / "authorized").write_text((scratch / "id.pub").read_text())
    config = scratch / "sshd_config"
    config.write_text(SSHD_CONFIG.format(key=scratch / "hostkey",
                                         authorized=scratch / "authorized"))
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    daemons = []
    lab = SshLab(dict(hosts), key, scratch / "inventory.ini")
    lines = ["[lab]"]
    try:
        for host, netns in hosts.items():
            subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
            if host not in silent:
                daemons.append(subprocess.Popen(
                    ["ip", "netns", "exec", netns, SSHD, "-D", "-e", "-f", str(config)],
                    stdout=subprocess.DEVNULL, stderr=(scratch / f"sshd-{host}.log").open("w")))
            lines.append(f"{host} ansible_ssh_common_args='-o ProxyCommand=\"{lab.proxy(host)}\"'")
        lines += ["[all:vars]", "ansible_user=root", f"ansible_ssh_private_key_file={key}",
                  f"ansible_python_interpreter={sys.executable}",
                  "ansible_ssh_extra_args='-o StrictHostKeyChecking=no "
                  "-o UserKnownHostsFile=/dev/null -o ConnectTimeout=10'"]
        lab.inventory.write_text("\n".join(lines) + "\n")
        for host, netns in hosts.items():
            if host not in silent:
                wait_for_sshd(netns)
        yield lab
    finally:
        for daemon in daemons:
            daemon.terminate()
            daemon.wait(10)


def wait_for_sshd(netns: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        listening = subprocess.run(["ip", "netns", "exec", netns, "ss", "-Htln",
                                    "sport", "= :22"], capture_output=True, text=True)
        if listening.stdout.strip():
            return
        time.sleep(0.05)
    raise AssertionError(f"sshd in {netns} did not listen")


def ansible_env(scratch: Path) -> dict[str, str]:
    """Ansible's control sockets and temporary files under the test's own directory."""
    return {"ANSIBLE_SSH_CONTROL_PATH_DIR": str(scratch / "cp"),
            "ANSIBLE_LOCAL_TEMP": str(scratch / "ansible-local")}
