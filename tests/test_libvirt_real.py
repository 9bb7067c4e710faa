"""netmap's qemu hook under a real libvirt daemon (Debian's libvirtd + qemu-system-x86).

Each lab host namespace (prefix nmK) gets a private libvirtd: it runs as root inside
`ip netns exec NS unshare --mount --uts`, with a private hostname and, bind-mounted over
/etc/libvirt, /var and /run inside that mount namespace only, directories of a temporary
tree. So it reads its own libvirtd.conf/qemu.conf and its own hooks dir
(/etc/libvirt/hooks/qemu.d/netmap, a wrapper that logs its argv and execs
netmap-libvirt-hook with NETMAP_MAPPINGS/NETMAP_HOST), and the machine's /etc, /var and /run
are never touched. virsh reaches each daemon through its socket in the temporary tree.

Guests are TCG `pc` machines with 32 MiB, no disk and no option ROM: SeaBIOS finds nothing to
boot and idles, which is all a live migration needs. Daemons, the QEMUs they started (found by
the pid files in the private run dir), namespaces and the tree are removed even on failure.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from tests.conftest import REPO, needs_netns

LIBVIRTD = shutil.which("libvirtd") or shutil.which("libvirtd", path="/usr/sbin:/sbin")
VIRSH = shutil.which("virsh")
QEMU = shutil.which("qemu-system-x86_64")
UNSHARE = shutil.which("unshare")
HAS_TUN = Path("/dev/net/tun").exists()
# libvirtd starts without its QEMU driver (Debian: libvirt-daemon-driver-qemu) and then
# answers every qemu:/// connection with "no connection driver available"
QEMU_DRIVER = any(glob.glob(pattern) for pattern in (
    "/usr/lib/*/libvirt/connection-driver/libvirt_driver_qemu.so",
    "/usr/lib*/libvirt/connection-driver/libvirt_driver_qemu.so"))

pytestmark = [
    pytest.mark.netns,
    pytest.mark.qemu,
    needs_netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="a private libvirtd must run as root (it "
                       "creates taps and bind-mounts its own /etc/libvirt in a mount namespace)"),
    pytest.mark.skipif(LIBVIRTD is None, reason="libvirtd is not installed (Debian: apt-get "
                       "install libvirt-daemon libvirt-daemon-driver-qemu)"),
    pytest.mark.skipif(VIRSH is None, reason="virsh is not installed (Debian: apt-get install "
                       "libvirt-clients)"),
    pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed (Debian: "
                       "apt-get install qemu-system-x86)"),
    pytest.mark.skipif(not QEMU_DRIVER, reason="libvirt's QEMU driver is not installed "
                       "(Debian: apt-get install libvirt-daemon-driver-qemu)"),
    pytest.mark.skipif(UNSHARE is None or shutil.which("hostname") is None,
                       reason="unshare (util-linux) or hostname is not installed"),
    pytest.mark.skipif(not HAS_TUN, reason="/dev/net/tun is missing: libvirt cannot make taps"),
]

VM2_MGMT_MAC = "52:54:00:ab:00:02"  # vm2's NICs in mappings/guests/vm2.toml
VM2_PROD_MAC = "52:54:00:ab:00:01"
MIGRATION_PORT = 49152

# The domain as an operator would define it on host-a: mgmt is a bridge-mode network on eth1,
# so libvirt plugs a tap into br-eth1. Nothing in it names host-b.
DOMAIN_XML = f"""<domain type='qemu'>
  <name>vm2</name>
  <uuid>{{uuid}}</uuid>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <emulator>{QEMU}</emulator>
{{interfaces}}    <memballoon model='none'/>
  </devices>
</domain>
"""

INTERFACE_XML = """    <interface type='{kind}'>
      <mac address='{mac}'/>
      <source {source}/>
      <model type='virtio'/>
      <rom enabled='no'/>
    </interface>
"""
MGMT_ON_BR_ETH1 = INTERFACE_XML.format(kind="bridge", mac=VM2_MGMT_MAC, source="bridge='br-eth1'")

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
NETMAP_MAPPINGS={mappings} NETMAP_HOST=$(cat {host_file}) PYTHONPATH={repo} \\
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

    def __init__(self, root: Path, netns: str, host: str, mappings: Path) -> None:
        self.root, self.netns, self.host = root, netns, host
        self.hook_log = root / "hook.log"
        self.host_file = root / "netmap-host"
        for sub in ("etc/hooks/qemu.d", "etc/qemu", "var/lib/libvirt", "var/cache/libvirt",
                    "var/log/libvirt", "var/tmp", "run/libvirt"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "var/run").symlink_to("/run")
        (root / "etc/libvirtd.conf").write_text(LIBVIRTD_CONF.format(host_uuid=uuid.uuid4()))
        (root / "etc/qemu.conf").write_text(QEMU_CONF)
        self.host_file.write_text(host + "\n")
        # libvirtd resolves its built-in QEMU user before it reads qemu.conf; Debian's
        # libvirt-daemon-system would create it, so this namespace alone gets one
        for name, line in (("passwd", "libvirt-qemu:x:64055:64055::/var/lib/libvirt:/bin/false"),
                           ("group", "libvirt-qemu:x:64055:")):
            text = Path(f"/etc/{name}").read_text()
            (root / name).write_text(text if "\nlibvirt-qemu:" in "\n" + text
                                     else text.rstrip("\n") + "\n" + line + "\n")
        hook = root / "etc/hooks/qemu.d/netmap"
        hook.write_text(HOOK_WRAPPER.format(log=self.hook_log, mappings=mappings,
                                            host_file=self.host_file, repo=REPO,
                                            python=sys.executable))
        hook.chmod(0o755)
        self.socket = root / "run/libvirt/libvirt-sock"
        self.uri = f"qemu+unix:///system?socket={self.socket}"
        self.process: subprocess.Popen | None = None

    def start(self, capabilities: Path, timeout: float = 30.0) -> None:
        """Start and wait for the socket. `capabilities` holds the QEMU capabilities that
        libvirt probes at start (seconds per binary): shared so that only the first daemon
        of the module probes; libvirt itself checks the copies against binaries and kernel."""
        cache = self.root / "var/cache/libvirt/qemu/capabilities"
        shutil.copytree(capabilities, cache, dirs_exist_ok=True)
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, UNSHARE, "--mount", "--uts",
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

    def virsh(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([VIRSH, "-q", "-c", self.uri, *args], capture_output=True,
                              text=True, timeout=60, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"virsh {' '.join(args)} on {self.host}: {done.stderr}\n"
                                 f"{self.log_tail()}")
        return done

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
                # libvirtd 9.0 can sit out a 10 s shutdown timeout; it holds nothing to save
                self.process.wait(2)
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
    import json

    done = subprocess.run(["ip", "-j", "-n", netns, *args], capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout or "[]")


@pytest.fixture(scope="module")
def capabilities() -> Iterator[Path]:
    """The shared QEMU capabilities cache; first checks that a daemon can get a private
    mount and UTS namespace here (a container may forbid both even to root)."""
    cache = Path(tempfile.mkdtemp(prefix="nmK-qemucaps-"))
    try:
        probe = subprocess.run(
            [UNSHARE, "--mount", "--uts", "--propagation", "private", "sh", "-c",
             'mount --bind "$1" "$1" && hostname nmK-probe', "probe", str(cache)],
            capture_output=True, text=True, timeout=30, check=False)
        if probe.returncode != 0:
            pytest.skip("cannot give libvirtd a private mount and UTS namespace (unshare "
                        f"--mount --uts, mount --bind): {probe.stderr.strip()}")
        yield cache
    finally:
        shutil.rmtree(cache, ignore_errors=True)


@pytest.fixture
def libvirt_pair(lab_factory, capabilities: Path) -> Iterator[dict]:
    """host-a and host-b as lab namespaces, each with the mgmt bridge (what `netmap realize`
    would leave there for a bridge-mode network) carrying a lab address for the migration
    stream, and each with a private libvirtd; everything is torn down afterwards."""
    lab, mappings = lab_factory("nmK", ["host-a", "host-b"])
    root = Path(tempfile.mkdtemp(prefix="nmK-libvirt-"))
    daemons: dict[str, PrivateLibvirtd] = {}
    try:
        for index, (host, uplink) in enumerate((("host-a", "eth1"), ("host-b", "eno3")), 1):
            netns, bridge = lab.hosts[host], f"br-{uplink}"
            batch = [f"link add {bridge} type bridge", f"link set {uplink} master {bridge}",
                     f"link set {bridge} up", f"addr add 10.251.0.{index}/24 dev {bridge}"]
            subprocess.run(["ip", "-n", netns, "-batch", "-"], input="\n".join(batch) + "\n",
                           text=True, check=True, capture_output=True)
            daemons[host] = PrivateLibvirtd(root / host, netns, host, mappings)
        for daemon in daemons.values():
            daemon.start(capabilities)
        yield {"lab": lab, "mappings": mappings, "daemons": daemons, "root": root,
               "defined": {}}
    finally:
        for daemon in daemons.values():
            daemon.stop()
        shutil.rmtree(root, ignore_errors=True)


def _define_and_start(daemon: PrivateLibvirtd, pair: dict,
                      interfaces: str = MGMT_ON_BR_ETH1) -> None:
    xml = pair["root"] / "vm2.xml"
    xml.write_text(DOMAIN_XML.replace("{uuid}", str(uuid.uuid4())).replace(
        "{interfaces}", interfaces))
    daemon.virsh("define", str(xml))
    pair["defined"]["vm2"] = daemon.virsh("dumpxml", "--inactive", "vm2").stdout
    daemon.virsh("start", "vm2")


def _interface(daemon: PrivateLibvirtd, mac: str = VM2_MGMT_MAC) -> ET.Element:
    domain = ET.fromstring(daemon.virsh("dumpxml", "vm2").stdout)
    (interface,) = [nic for nic in domain.findall("devices/interface")
                    if nic.find("mac").get("address") == mac]
    return interface


def _tap_of(interface: ET.Element) -> str:
    target = interface.find("target")
    assert target is not None, ET.tostring(interface).decode()
    return target.get("dev")


def test_hook_runs_for_every_lifecycle_step_and_the_tap_sits_on_the_mapped_bridge(
        libvirt_pair) -> None:
    source: PrivateLibvirtd = libvirt_pair["daemons"]["host-a"]
    _define_and_start(source, libvirt_pair)

    # libvirt found the hook in the private hooks dir and ran it, in order, for every step
    assert source.hook_calls() == ["vm2 prepare begin -", "vm2 start begin -",
                                   "vm2 started begin -"]
    # pass-through: the running domain is the one defined, on the bridge it named
    assert (source.virsh("dumpxml", "--inactive", "vm2").stdout
            == libvirt_pair["defined"]["vm2"]), "starting changed the definition"
    interface = _interface(source)
    assert interface.get("type") == "bridge"
    assert interface.find("source").get("bridge") == "br-eth1"
    assert interface.find("mac").get("address") == VM2_MGMT_MAC
    # the tap sits where host-a's mapping puts mgmt: on eth1's bridge, next to eth1
    tap = _tap_of(interface)
    (link,) = ip_json(source.netns, "link", "show", "dev", tap)
    assert link.get("master") == "br-eth1"
    assert link["address"] == "fe" + VM2_MGMT_MAC[2:]  # libvirt's host-side tap MAC
    ports = {port["ifname"] for port in ip_json(source.netns, "link", "show",
                                                "master", "br-eth1")}
    assert ports == {"eth1", tap}

    source.virsh("destroy", "vm2")
    assert source.hook_calls()[3:] == ["vm2 stopped end -", "vm2 release end -"]
    assert tap not in {link["ifname"] for link in ip_json(source.netns, "link", "show")}


def _migrate(source: PrivateLibvirtd, target: PrivateLibvirtd,
             *extra: str) -> subprocess.CompletedProcess:
    """virsh drives both daemons (their sockets); QEMU streams over the lab's mgmt segment."""
    return source.virsh("migrate", "--live", "--persistent", "--undefinesource", *extra,
                        "vm2", target.uri, f"tcp://10.251.0.2:{MIGRATION_PORT}", check=False)


def test_live_migration_rewrites_the_bridge_on_the_destination(libvirt_pair) -> None:
    source: PrivateLibvirtd = libvirt_pair["daemons"]["host-a"]
    target: PrivateLibvirtd = libvirt_pair["daemons"]["host-b"]
    _define_and_start(source, libvirt_pair)
    before = source.virsh("dumpxml", "--migratable", "vm2").stdout
    assert before.count("br-eth1") == 1

    done = _migrate(source, target)
    assert done.returncode == 0, done.stderr + target.log_tail()

    # the destination ran the hook on the incoming XML before preparing the guest
    assert target.hook_calls() == ["vm2 migrate begin -", "vm2 prepare begin -",
                                   "vm2 start begin -", "vm2 started begin -"]
    assert source.hook_calls()[3:] == ["vm2 stopped end -", "vm2 release end -"]
    # host-b's domain differs from host-a's in the bridge alone (ABI check passed)
    after = target.virsh("dumpxml", "--migratable", "vm2").stdout
    assert after == before.replace("br-eth1", "br-eno3")
    # and it was persisted that way
    # libvirt's behaviour, not netmap's: the hook filters the live definition only; with
    # --persistent the destination stores the source's own inactive definition as it was
    # (see test_persistent_definition_rewritten_by_the_hook_survives_a_restart for the fix)
    persisted = target.virsh("dumpxml", "--inactive", "vm2").stdout
    assert "<source bridge='br-eth1'/>" in persisted
    tap = _tap_of(_interface(target))
    (link,) = ip_json(target.netns, "link", "show", "dev", tap)
    assert link.get("master") == "br-eno3"
    assert target.virsh("domstate", "vm2").stdout.strip() == "running"
    assert source.virsh("domstate", "vm2", check=False).returncode != 0  # gone from host-a
    assert not ip_json(source.netns, "link", "show", "master", "br-eth1")[1:]  # eth1 only


def test_a_migration_the_check_refuses_is_cancelled_with_the_hooks_message(
        libvirt_pair) -> None:
    source: PrivateLibvirtd = libvirt_pair["daemons"]["host-a"]
    target: PrivateLibvirtd = libvirt_pair["daemons"]["host-b"]
    # host-b's mapping loses mgmt (an operator removed it): the check must refuse
    host_b = libvirt_pair["mappings"] / "hosts/host-b.toml"
    host_b.write_text(re.sub(r"\[networks\.mgmt\]\n[^\[]*", "", host_b.read_text()))
    assert "[networks.mgmt]" not in host_b.read_text()
    _define_and_start(source, libvirt_pair)
    tap = _tap_of(_interface(source))

    done = _migrate(source, target)
    assert done.returncode != 0
    # libvirt cancels and relays the hook's stderr to the caller
    assert "Hook script execution failed" in done.stderr, done.stderr
    assert "netmap: refusing to migrate vm2 to host-b" in done.stderr, done.stderr
    assert "[NETWORK_UNBOUND]" in done.stderr, done.stderr
    assert target.hook_calls() == ["vm2 migrate begin -"]  # nothing prepared on host-b
    assert target.virsh("domstate", "vm2", check=False).returncode != 0
    # the guest keeps running on host-a, its tap still on the bridge
    assert source.virsh("domstate", "vm2").stdout.strip() == "running"
    (link,) = ip_json(source.netns, "link", "show", "dev", tap)
    assert link.get("master") == "br-eth1"


def test_persistent_definition_rewritten_by_the_hook_survives_a_restart(libvirt_pair) -> None:
    """The operator's recipe: pass the inactive definition through netmap for the
    destination and give it to `virsh migrate --persistent-xml`, so that the guest still
    boots on host-b's bridge after it is shut down there."""
    source: PrivateLibvirtd = libvirt_pair["daemons"]["host-a"]
    target: PrivateLibvirtd = libvirt_pair["daemons"]["host-b"]
    _define_and_start(source, libvirt_pair)
    inactive = source.virsh("dumpxml", "--inactive", "--migratable", "vm2").stdout
    filtered = subprocess.run(
        [sys.executable, "-m", "netmap", "libvirt-hook", "vm2", "migrate", "begin", "-"],
        input=inactive, capture_output=True, text=True, check=False, cwd=REPO,
        env={**os.environ, "NETMAP_MAPPINGS": str(libvirt_pair["mappings"]),
             "NETMAP_HOST": "host-b"})
    assert filtered.returncode == 0, filtered.stderr
    assert filtered.stdout == inactive.replace("br-eth1", "br-eno3")
    persistent_xml = libvirt_pair["root"] / "vm2-host-b.xml"
    persistent_xml.write_text(filtered.stdout)

    done = _migrate(source, target, "--persistent-xml", str(persistent_xml))
    assert done.returncode == 0, done.stderr + target.log_tail()
    assert "<source bridge='br-eno3'/>" in target.virsh("dumpxml", "--inactive", "vm2").stdout

    target.virsh("destroy", "vm2")
    target.virsh("start", "vm2")  # from the persistent definition, on host-b's bridge
    tap = _tap_of(_interface(target))
    (link,) = ip_json(target.netns, "link", "show", "dev", tap)
    assert link.get("master") == "br-eno3"


def test_libvirt_networks_from_netmap_carry_a_guest_across_unchanged(libvirt_pair) -> None:
    """`netmap libvirt-networks --host H` on each host, loaded with net-define: a guest on
    <source network='mgmt'/> lands on each host's own bridge and migrates without any
    rewrite, because the network's name means the same on both hosts."""
    source: PrivateLibvirtd = libvirt_pair["daemons"]["host-a"]
    target: PrivateLibvirtd = libvirt_pair["daemons"]["host-b"]
    for daemon in (source, target):
        out = libvirt_pair["root"] / f"networks-{daemon.host}"
        made = subprocess.run(
            [sys.executable, "-m", "netmap", "libvirt-networks", "--host", daemon.host,
             "--mappings", str(libvirt_pair["mappings"]), "--out", str(out)],
            capture_output=True, text=True, check=False, cwd=REPO)
        assert made.returncode == 0, made.stderr
        defined = sorted(path.stem for path in out.glob("*.xml"))
        assert "mgmt" in defined and "prod" in defined
        for name in defined:  # the real parser accepts every definition, VF pools included
            daemon.virsh("net-define", str(out / f"{name}.xml"))
        # only mgmt can start in the lab: prod needs eth0.100 (no 802.1q in this kernel),
        # the VF pools need SR-IOV, tenant-blue needs `netmap realize` to build its vxlan
        daemon.virsh("net-start", "mgmt")
        assert set(daemon.virsh("net-list", "--all", "--name").stdout.split()) == set(defined)
    _define_and_start(source, libvirt_pair, INTERFACE_XML.format(
        kind="network", mac=VM2_MGMT_MAC, source="network='mgmt'"))
    assert ip_json(source.netns, "link", "show", "dev", _tap_of(_interface(source)))[0][
        "master"] == "br-eth1"
    before = source.virsh("dumpxml", "--migratable", "vm2").stdout

    done = _migrate(source, target)
    assert done.returncode == 0, done.stderr + target.log_tail()

    assert target.hook_calls()[0] == "vm2 migrate begin -"
    assert target.virsh("dumpxml", "--migratable", "vm2").stdout == before  # nothing to rewrite
    interface = _interface(target)
    assert interface.find("source").get("network") == "mgmt"
    (link,) = ip_json(target.netns, "link", "show", "dev", _tap_of(interface))
    assert link.get("master") == "br-eno3"


def test_macvtap_and_bridge_nics_both_follow_the_mapping(libvirt_pair) -> None:
    """vm2 as its guest file says: prod as a vepa macvtap on eth0, mgmt on br-eth1. This
    kernel has no 802.1q, so prod loses its VLAN in this test's copy of the fleet; then host-b
    realizes prod on eno2, and the hook must move the macvtap there."""
    source: PrivateLibvirtd = libvirt_pair["daemons"]["host-a"]
    target: PrivateLibvirtd = libvirt_pair["daemons"]["host-b"]
    networks = libvirt_pair["mappings"] / "networks.toml"
    networks.write_text(networks.read_text().replace("vlan = 100\n", "", 1))
    prod = INTERFACE_XML.format(kind="direct", mac=VM2_PROD_MAC,
                                source="dev='eth0' mode='vepa'")
    _define_and_start(source, libvirt_pair, prod + MGMT_ON_BR_ETH1)
    (macvtap,) = ip_json(source.netns, "-d", "link", "show", "dev",
                         _tap_of(_interface(source, VM2_PROD_MAC)))
    assert macvtap["link"] == "eth0"
    assert macvtap["linkinfo"]["info_kind"] == "macvtap"
    assert macvtap["linkinfo"]["info_data"]["mode"] == "vepa"
    assert macvtap["address"] == VM2_PROD_MAC  # a macvtap carries the guest's own MAC
    before = source.virsh("dumpxml", "--migratable", "vm2").stdout

    done = _migrate(source, target)
    assert done.returncode == 0, done.stderr + target.log_tail()

    after = target.virsh("dumpxml", "--migratable", "vm2").stdout
    assert after == before.replace("br-eth1", "br-eno3").replace("dev='eth0'", "dev='eno2'")
    (macvtap,) = ip_json(target.netns, "-d", "link", "show", "dev",
                         _tap_of(_interface(target, VM2_PROD_MAC)))
    assert macvtap["link"] == "eno2"
    assert macvtap["linkinfo"]["info_data"]["mode"] == "vepa"
    (tap,) = ip_json(target.netns, "link", "show", "dev", _tap_of(_interface(target)))
    assert tap.get("master") == "br-eno3"
    # and nothing of vm2 is left on host-a
    assert not [link for link in ip_json(source.netns, "-d", "link", "show")
                if link.get("linkinfo", {}).get("info_kind") == "macvtap"]


def test_restore_passes_the_saved_definition_through_untouched(libvirt_pair) -> None:
    """`restore begin` is the other hook call whose stdout libvirt reads as the domain XML:
    netmap must hand it on byte for byte (no check, no rewrite) so the restore proceeds."""
    source: PrivateLibvirtd = libvirt_pair["daemons"]["host-a"]
    _define_and_start(source, libvirt_pair)
    before = source.virsh("dumpxml", "--migratable", "vm2").stdout
    image = libvirt_pair["root"] / "vm2.save"
    source.virsh("save", "vm2", str(image))
    assert source.virsh("domstate", "vm2").stdout.strip() == "shut off"

    source.virsh("restore", str(image))

    assert source.hook_calls()[-4:] == ["vm2 restore begin -", "vm2 prepare begin -",
                                        "vm2 start begin -", "vm2 started begin -"]
    assert source.virsh("domstate", "vm2").stdout.strip() == "running"
    assert source.virsh("dumpxml", "--migratable", "vm2").stdout == before
    (link,) = ip_json(source.netns, "link", "show", "dev", _tap_of(_interface(source)))
    assert link.get("master") == "br-eth1"
