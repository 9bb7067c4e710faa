"""Private libvirt daemons inside lab host namespaces, with netmap's qemu hook installed.

Each daemon is Debian's libvirtd, run as root through
`ip netns exec NS unshare --mount --uts --propagation private`: it gets the lab host's
network namespace, its own hostname (libvirt refuses to migrate to a host with its own
name or host UUID) and, bind-mounted over /etc/libvirt, /var, /run, /etc/passwd and
/etc/group inside that mount namespace only, files of a private tree. So it reads its own
libvirtd.conf and qemu.conf, finds netmap's hook as /etc/libvirt/hooks/qemu.d/netmap (a
wrapper that logs its argv and execs the hook with NETMAP_MAPPINGS and NETMAP_HOST, since
libvirt gives hooks an almost empty environment), and the machine's own files are never
touched. virsh reaches a daemon through the socket in its tree (`.uri`).

Used by tests/test_libvirt_real.py and tests/test_fleet_libvirt.py; by hand (README's
walkthrough, which tests/test_fleet_walkthrough.py runs as written):

    python3 scripts/libvirt_lab.py up --mappings DIR --prefix P [--guest G@HOST] [--ssh] HOST...

with DIR a copy of the mappings, builds the lab for those hosts (scripts/lab: a host's
namespace is P-HOST) and writes each host's `netns` and `libvirt_uri` into DIR; gives each
host's mgmt bridge an address of 10.251.0.0/24, which its daemon names as migration_host,
so live migrations between the daemons work; starts one daemon per host and the smallest
guest for each --guest (its guest file written into DIR); with --ssh, also an sshd in each
host's namespace (scripts/ssh_lab.py), with the ssh config and Ansible inventory that reach
them in DIR/ssh; prints the virsh URIs and, on Ctrl-C, destroys the guests, stops the
daemons and removes the lab.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ssh_lab import SshLab

_REPO = Path(__file__).resolve().parent.parent
LIBVIRTD = shutil.which("libvirtd") or shutil.which("libvirtd", path="/usr/sbin:/sbin")
VIRSH = shutil.which("virsh")
QEMU = shutil.which("qemu-system-x86_64")
UNSHARE = shutil.which("unshare")
# libvirtd starts without its QEMU driver (Debian: libvirt-daemon-driver-qemu) and then
# answers every qemu:/// connection with "no connection driver available"
QEMU_DRIVER = any(glob.glob(pattern) for pattern in (
    "/usr/lib/*/libvirt/connection-driver/libvirt_driver_qemu.so",
    "/usr/lib*/libvirt/connection-driver/libvirt_driver_qemu.so"))


def domain_xml(name: str, interfaces: str) -> str:
    """The smallest guest a lab daemon runs: 32 MiB, one vCPU under TCG, these interfaces."""
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid.uuid4()}</uuid>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <emulator>{QEMU}</emulator>
{interfaces}    <memballoon model='none'/>
  </devices>
</domain>
"""


def interface_xml(kind: str, mac: str, source: str) -> str:
    """One virtio NIC: `source` is the attributes of its <source> (bridge='…', dev='…' …)."""
    return f"""    <interface type='{kind}'>
      <mac address='{mac}'/>
      <source {source}/>
      <model type='virtio'/>
      <rom enabled='no'/>
    </interface>
"""

def python_binding_missing() -> str | None:
    """Why netmap's libvirt commands (locate, migrate, drain --execute) cannot run here, or
    None."""
    try:
        import libvirt  # noqa: F401
    except ImportError:
        return "libvirt-python is not installed (pip install libvirt-python)"
    return None


def missing() -> str | None:
    """Why private daemons cannot run here, or None."""
    if os.geteuid() != 0:
        return ("a private libvirtd must run as root (it makes taps and mounts its own "
                "/etc/libvirt in a mount namespace)")
    for found, what in ((LIBVIRTD, "libvirtd (Debian: libvirt-daemon)"),
                        (QEMU_DRIVER, "libvirt's QEMU driver (Debian: "
                         "libvirt-daemon-driver-qemu)"),
                        (VIRSH, "virsh (Debian: libvirt-clients)"),
                        (QEMU, "qemu-system-x86_64 (Debian: qemu-system-x86)"),
                        (UNSHARE and shutil.which("hostname"), "unshare and hostname"),
                        (Path("/dev/net/tun").exists(), "/dev/net/tun")):
        if not found:
            return f"{what} is not installed"
    return None


def isolation_problem() -> str | None:
    """Can a daemon get a private mount and UTS namespace here? (A container may forbid
    both even to root.) None when it can."""
    with tempfile.TemporaryDirectory(prefix="nmK-probe-") as scratch:
        probe = subprocess.run(
            [UNSHARE, "--mount", "--uts", "--propagation", "private", "sh", "-c",
             'mount --bind "$1" "$1" && hostname nmK-probe', "probe", scratch],
            capture_output=True, text=True, timeout=30, check=False)
    if probe.returncode != 0:
        return ("cannot give libvirtd a private mount and UTS namespace (unshare --mount "
                f"--uts, mount --bind): {probe.stderr.strip()}")
    return None


LIBVIRTD_CONF = """# private test daemon: local socket only, no authentication, its own host UUID
auth_unix_ro = "none"
auth_unix_rw = "none"
unix_sock_rw_perms = "0700"
host_uuid = "{host_uuid}"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
"""

# no libvirt-qemu user, no security driver, no cgroups or /dev namespace, no virtlogd:
# nothing of the machine beyond the binaries
QEMU_CONF = """user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
"""

HOOK_WRAPPER = """#!/bin/sh
# libvirt runs every executable in /etc/libvirt/hooks/qemu.d/ as `GUEST OP SUBOP EXTRA`
echo "$*" >> {log}
NETMAP_MAPPINGS={mappings} NETMAP_HOST={host} PYTHONPATH={repo} \\
  exec {python} -c 'from netmap.libvirt.hook import main; raise SystemExit(main())' "$@"
"""

# inside `ip netns exec NS unshare --mount --uts --propagation private`: our own hostname and
# libvirt directories, visible to this daemon and the QEMUs it starts, nobody else
LAUNCH = """set -e
hostname "$1"
mount --bind "$2/etc" /etc/libvirt
mount --bind "$2/var" /var
mount --bind "$2/run" /run
mount --bind "$2/passwd" /etc/passwd
mount --bind "$2/group" /etc/group
exec "$3" --pid-file /run/libvirtd.pid
"""


class PrivateLibvirtd:
    """One libvirtd for one lab host namespace, with netmap's hook installed."""

    def __init__(self, root: Path, netns: str | None, host: str, mappings: Path | None,
                 migration_host: str | None = None) -> None:
        """Lay out the daemon's private tree under `root` (created if missing).
        `netns` None: the daemon runs in the caller's network namespace (a PF's VFs are
        only in the namespace that holds the PF). `mappings` None: no netmap hook (each
        call of it starts an interpreter: seconds under the VM lab's TCG).
        `migration_host`: the address a source's QEMU streams to when this daemon is the
        destination of a peer-to-peer migration (libvirt's default, its host name, means
        nothing in a lab namespace)."""
        self.root, self.netns, self.host = root, netns, host
        self.hook_log = root / "hook.log"
        for sub in ("etc/hooks/qemu.d", "etc/qemu", "var/lib/libvirt", "var/cache/libvirt",
                    "var/log/libvirt", "var/tmp", "run/libvirt"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "var/run").symlink_to("/run")
        (root / "etc/libvirtd.conf").write_text(LIBVIRTD_CONF.format(host_uuid=uuid.uuid4()))
        (root / "etc/qemu.conf").write_text(
            QEMU_CONF + (f'migration_host = "{migration_host}"\n' if migration_host else ""))
        # libvirtd resolves its built-in QEMU user before it reads qemu.conf; Debian's
        # libvirt-daemon-system would create it, so this namespace alone gets one
        for name, line in (("passwd", "libvirt-qemu:x:64055:64055::/var/lib/libvirt:/bin/false"),
                           ("group", "libvirt-qemu:x:64055:")):
            text = Path(f"/etc/{name}").read_text()
            (root / name).write_text(text if "\nlibvirt-qemu:" in "\n" + text
                                     else text.rstrip("\n") + "\n" + line + "\n")
        if mappings is not None:
            hook = root / "etc/hooks/qemu.d/netmap"
            hook.write_text(HOOK_WRAPPER.format(**{
                key: shlex.quote(str(value)) for key, value in (
                    ("log", self.hook_log), ("mappings", mappings), ("host", host),
                    ("repo", _REPO), ("python", sys.executable))}))
            hook.chmod(0o755)
        self.socket = root / "run/libvirt/libvirt-sock"
        self.uri = f"qemu+unix:///system?socket={self.socket}"
        self.process: subprocess.Popen | None = None

    def start(self, capabilities: Path, timeout: float = 30.0) -> None:
        """Start and wait for the socket. `capabilities` holds the QEMU capabilities that
        libvirt probes at start (seconds per binary): shared so that only the first daemon
        of a session probes; libvirt itself checks the copies against binaries and kernel."""
        cache = self.root / "var/cache/libvirt/qemu/capabilities"
        capabilities.mkdir(parents=True, exist_ok=True)
        shutil.copytree(capabilities, cache, dirs_exist_ok=True)
        self.process = subprocess.Popen(
            [*self._in_netns(), UNSHARE, "--mount", "--uts",
             "--propagation", "private", "sh", "-c", LAUNCH, "launch", self.host,
             str(self.root), LIBVIRTD],
            stdout=subprocess.DEVNULL, stderr=(self.root / "libvirtd.stderr").open("wb"))
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"libvirtd in {self.netns} exited: {self.log_tail()}")
            if self.socket.exists() and self.virsh("version", check=False).returncode == 0:
                shutil.copytree(cache, capabilities, dirs_exist_ok=True)
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"libvirtd in {self.netns} did not answer: {self.log_tail()}")
            time.sleep(0.1)

    def _in_netns(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns] if self.netns else []

    def virsh(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        try:
            done = subprocess.run([VIRSH, "-q", "-c", self.uri, *args], capture_output=True,
                                  text=True, timeout=60, check=False)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"virsh {' '.join(args)} on {self.host}: no answer in 60 s\n"
                                 f"{self.state()}") from None
        if check and done.returncode != 0:
            raise AssertionError(f"virsh {' '.join(args)} on {self.host}: {done.stderr}\n"
                                 f"{self.log_tail()}")
        return done

    def state(self) -> str:
        """What a hung call may be waiting on: this namespace's TCP sockets (a migration
        stream that never connected, or stopped moving), each QEMU's state and kernel wait
        channel, and the daemon's log."""
        sockets = subprocess.run([*self._in_netns(), "ss", "-tinp"],
                                 capture_output=True, text=True, check=False).stdout
        # which MAC each peer's address was learnt at, and the reverse-path filter that
        # drops what arrives on another interface than the route back
        neighbours = subprocess.run(["ip", *(["-n", self.netns] if self.netns else []),
                                     "neigh", "show"],
                                    capture_output=True, text=True, check=False).stdout
        filters = subprocess.run([*self._in_netns(), "sh", "-c",
                                  "grep -H . /proc/sys/net/ipv4/conf/*/rp_filter "
                                  "/proc/sys/net/ipv4/conf/all/arp_*"],
                                 capture_output=True, text=True, check=False).stdout
        qemus = []
        for pidfile in (self.root / "run/libvirt/qemu").glob("*.pid"):
            pid = pidfile.read_text().strip()
            for name in ("status", "wchan"):
                try:
                    text = Path(f"/proc/{pid}/{name}").read_text()
                except OSError as err:
                    text = str(err)
                if name == "status":
                    text = " ".join(line for line in text.splitlines()
                                    if line.startswith(("State", "Threads")))
                qemus.append(f"{pidfile.name} {name}: {text}")
        return (f"sockets in {self.netns}:\n{sockets}\nneighbours:\n{neighbours}\n"
                f"{filters}\n" + "\n".join(qemus)
                + f"\n{self.log_tail(40)}")

    def hook_calls(self) -> list[str]:
        return self.hook_log.read_text().splitlines() if self.hook_log.exists() else []

    def log_tail(self, lines: int = 15) -> str:
        texts = []
        for path in (self.root / "libvirtd.stderr", self.root / "var/log/libvirt/libvirtd.log"):
            if path.exists():
                texts += path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(texts)

    def stop(self) -> None:
        """Kill the QEMUs this daemon started (by its private pid files), then the daemon.
        libvirt leaves QEMU running when the daemon exits, by design."""
        if self.process is not None and self.process.poll() is None:
            # the polite way first: libvirtd destroys, reaps and unplugs its own guests
            running = self.virsh("list", "--name", check=False).stdout.split()
            for name in running:
                self.virsh("destroy", name, check=False)
        for pidfile in (self.root / "run/libvirt/qemu").glob("*.pid"):
            if pidfile.name != "driver.pid":  # that one is libvirtd's own lock
                _kill(pidfile)
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)  # prompt once its guests are gone; nothing to save
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def _kill(pidfile: Path) -> None:
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, signal.SIGKILL)
    except (OSError, ValueError):
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    """Running, not a zombie (a dead QEMU whose daemon is gone may wait long to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def ip_json(netns: str, *args: str) -> list[dict]:
    done = subprocess.run(["ip", "-j", "-n", netns, *args], capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout or "[]")


MIGRATION_NET = "10.251.0"  # the lab's migration addresses, .1 up, on each mgmt bridge


def set_host_key(path: Path, key: str, value: str) -> None:
    """Set `key = "value"` in a host mapping's [host] table, replacing the line if any."""
    import re

    text = path.read_text()
    line = f'{key} = "{value}"'
    if re.search(rf"^{key} = .*$", text, flags=re.M):
        text = re.sub(rf"^{key} = .*$", lambda _: line, text, count=1, flags=re.M)
    else:
        text = text.replace("[host]\n", f"[host]\n{line}\n", 1)
    path.write_text(text)


def give_migration_address(netns: str, uplink: str, bridge: str, address: str) -> None:
    """The bridge a bridge-mode binding uses (as `netmap realize` leaves it) with the
    address QEMU's migration stream goes to: libvirt's default, the host name, means
    nothing inside a lab namespace. The bridge gets its uplink's MAC as its own: one nobody
    set follows the lowest MAC of its ports, and would become an incoming guest's tap MAC
    (fe:54:...), which the source has as its own tap's, so the source would keep the
    migration stream to itself."""
    (link,) = ip_json(netns, "link", "show", "dev", uplink)
    batch = [f"link add {bridge} address {link['address']} type bridge",
             f"link set {uplink} master {bridge}",
             f"link set {bridge} up", f"addr add {address}/24 dev {bridge}"]
    subprocess.run(["ip", "-n", netns, "-batch", "-"], check=True,
                   input="\n".join(batch) + "\n", text=True, capture_output=True)


def lab_guest(name: str, mac: str, host: str, network: str) -> str:
    return f'[guest]\nname = "{name}"\nhost = "{host}"\n\n[[nics]]\nnetwork = "{network}"\n' \
           f'mac = "{mac}"\n'


def ssh_missing() -> str | None:
    from ssh_lab import MISSING

    return f"--ssh needs {MISSING}" if MISSING else None


@contextlib.contextmanager
def serve_ssh(hosts: dict[str, str], directory: Path, root: Path) -> Iterator[SshLab]:
    """sshd in each lab host's namespace, its keys, ssh config and inventory in `directory`;
    a session there finds `netmap` as this checkout's (as the hook runs it), keeping its
    state under `root`, the lab's own directory."""
    from ssh_lab import lab_python, ssh_lab

    if directory.exists():  # left by a lab that was killed: its keys are worthless now
        shutil.rmtree(directory)
    python = lab_python(directory / "bin", _REPO, state_dir=root / "state")
    with ssh_lab(hosts, directory, interpreter=python) as reached:
        yield reached


def main(argv: list[str] | None = None) -> int:
    import argparse

    sys.path.insert(0, str(_REPO))
    from netmap.lab import build_lab, teardown_lab
    from netmap.load import load_fleet
    from netmap.model.names import bridge_name

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up"])
    parser.add_argument("hosts", nargs="+")
    parser.add_argument("--mappings", required=True,
                        help="a copy of the mappings: up writes each host's netns and "
                        "libvirt_uri into it, and the --guest files")
    parser.add_argument("--prefix", default="nm-virt")
    parser.add_argument("--network", default="mgmt",
                        help="the bridge-mode network whose bridge carries the migration "
                        "addresses and the guests (default mgmt)")
    parser.add_argument("--guest", action="append", default=[], metavar="NAME@HOST",
                        help="start the smallest guest NAME on HOST, on --network, and "
                        "write its guest file (repeat)")
    parser.add_argument("--ssh", action="store_true",
                        help="also run an sshd in each host's namespace and write an ssh "
                        "config and an Ansible inventory for them into MAPPINGS/ssh")
    args = parser.parse_args(argv)
    mappings = Path(args.mappings).resolve()
    if mappings == (_REPO / "mappings").resolve():
        print("libvirt_lab: up writes into the mappings; copy them first: "
              "cp -r mappings /tmp/fleet && rm /tmp/fleet/guests/*", file=sys.stderr)
        return 2
    problem = missing() or isolation_problem() or (ssh_missing() if args.ssh else None)
    if problem:
        print(f"libvirt_lab: {problem}", file=sys.stderr)
        return 2
    fleet = load_fleet(mappings)
    guests = [item.partition("@") for item in args.guest]
    for host in args.hosts + [host for _, _, host in guests]:
        binding = fleet.hosts[host].bindings.get(args.network) if host in fleet.hosts else None
        if binding is None or binding.mode != "bridge":
            print(f"libvirt_lab: {host} has no bridge-mode binding of {args.network} in "
                  f"{mappings}/hosts", file=sys.stderr)
            return 2
    root = Path(tempfile.mkdtemp(prefix=f"{args.prefix}-libvirt-"))
    daemons: dict[str, PrivateLibvirtd] = {}
    for index, host in enumerate(args.hosts, 1):
        netns = f"{args.prefix}-{host}"
        daemons[host] = PrivateLibvirtd(root / host, netns, host, mappings,
                                        migration_host=f"{MIGRATION_NET}.{index}")
        path = mappings / "hosts" / f"{host}.toml"
        set_host_key(path, "netns", netns)
        set_host_key(path, "libvirt_uri", daemons[host].uri)
    from netmap.errors import InputError

    lab = None
    bridges = {}
    sshd = contextlib.ExitStack()
    try:
        try:
            lab = build_lab(load_fleet(mappings), args.prefix, args.hosts)
        except InputError as err:
            print(f"libvirt_lab: {err}", file=sys.stderr)
            return 2
        for index, host in enumerate(args.hosts, 1):
            binding = fleet.hosts[host].bindings[args.network]
            bridges[host] = bridge_name(binding.uplink, binding.bridge)
            give_migration_address(lab.hosts[host], binding.uplink, bridges[host],
                                   f"{MIGRATION_NET}.{index}")
        for daemon in daemons.values():
            daemon.start(root / "capabilities")
        for number, (name, _, host) in enumerate(guests, 1):
            mac = f"52:54:00:1a:b0:{number:02x}"
            (mappings / "guests" / f"{name}.toml").write_text(
                lab_guest(name, mac, host, args.network))
            xml = root / f"{name}.xml"
            xml.write_text(domain_xml(name, interface_xml("bridge", mac,
                                                          f"bridge='{bridges[host]}'")))
            daemons[host].virsh("define", str(xml))
            daemons[host].virsh("start", name)
            print(f"guest {name} runs on {host} (file {mappings}/guests/{name}.toml)")
        for host, daemon in daemons.items():
            print(f"{host}: virsh -c '{daemon.uri}'   (hook log {daemon.hook_log})")
        print(f"{mappings}/hosts: netns and libvirt_uri set for {', '.join(args.hosts)}")
        if args.ssh:
            reached = sshd.enter_context(serve_ssh(lab.hosts, mappings / "ssh", root))
            print(f"ssh: an sshd in each host's namespace; ssh -F {reached.ssh_config} "
                  f"{args.hosts[0]}")
            print(f"Ansible inventory: {reached.inventory}")
        print("Ctrl-C stops the daemons and removes the lab", flush=True)
        # also when started in the background, which leaves SIGINT ignored
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        sshd.close()
        shutil.rmtree(mappings / "ssh", ignore_errors=True)
        for daemon in daemons.values():
            daemon.stop()
        if lab is not None:
            teardown_lab(lab)
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
