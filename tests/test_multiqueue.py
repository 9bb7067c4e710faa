"""Multi-queue guest NICs (`queues = N`): loaded, imported from libvirt, planned, realized
as an IFF_MULTI_QUEUE tap on the real kernel (namespaces, prefix nmmq), compared and made
again on a second realize, reported by drift, and refused by the QEMU helper."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from conftest import ip_links, needs_netns

from netmap.errors import ApplyError, InputError
from netmap.libvirt.attach import interface_xml
from netmap.load import load_fleet
from netmap.load.parse import load_guest, load_networks
from netmap.plan import CreateTap
from netmap.plan.planner import build_plan
from netmap.qemu.netdev import netdev_option
from netmap.query.graph import build_graph

PREFIX = "nmmq"
TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI, IFF_MULTI_QUEUE, IFF_VNET_HDR = 0x0002, 0x1000, 0x0100, 0x4000
MAC = "52:54:00:4d:51:01"


def guest_file(queues: int | None, *, model: str | None = None) -> str:
    lines = ["[guest]", 'name = "vmq"', 'host = "host-a"', "", "[[nics]]",
             'network = "mgmt"', f'mac = "{MAC}"']
    if model is not None:
        lines.append(f'model = "{model}"')
    if queues is not None:
        lines.append(f"queues = {queues}")
    return "\n".join(lines) + "\n"


# --- loading, import, plan (pure) -------------------------------------------------------------

def test_queues_default_to_one_and_are_read(mappings: Path) -> None:
    networks = load_networks(mappings / "networks.toml")
    path = mappings / "guests" / "vmq.toml"
    path.write_text(guest_file(None))
    assert load_guest(path, networks).nics[0].queues == 1
    path.write_text(guest_file(4))
    assert load_guest(path, networks).nics[0].queues == 4


@pytest.mark.parametrize(("queues", "model", "wanted"), [
    (0, None, "0 is out of range"), (257, None, "257 is out of range"),
    ('"4"', None, "a whole number"), (4, "e1000", "only virtio-net has several queues")])
def test_bad_queues_name_file_key_and_fix(mappings: Path, queues: object, model: str | None,
                                          wanted: str) -> None:
    path = mappings / "guests" / "vmq.toml"
    path.write_text(guest_file(queues, model=model))  # type: ignore[arg-type]
    with pytest.raises(InputError) as caught:
        load_guest(path, load_networks(mappings / "networks.toml"))
    text = str(caught.value)
    assert "vmq.toml" in text
    assert "nics[0].queues" in text
    assert wanted in text
    assert caught.value.fix


def domain_xml(driver: str, model: str = "virtio") -> str:
    return f"""<domain type='kvm'><name>vmq</name><devices>
  <interface type='bridge'>
    <mac address='{MAC}'/><source bridge='br-eth1'/>
    <model type='{model}'/>{driver}
  </interface></devices></domain>"""


@pytest.mark.parametrize(("driver", "queues"), [
    ("", 1), ("<driver queues='1'/>", 1), ("<driver queues='0'/>", 1),
    ("<driver name='vhost' queues='4'/>", 4), ("<driver queues='256'/>", 256)])
def test_import_reads_driver_queues(mappings: Path, driver: str, queues: int) -> None:
    from netmap.libvirt.domain import import_domain
    from netmap.libvirt.xmlsafe import parse_untrusted

    fleet = load_fleet(mappings)
    result = import_domain(parse_untrusted(domain_xml(driver).encode(), "vmq.xml"),
                           fleet.networks, fleet.hosts, host="host-a")
    assert not result.errors
    assert result.guest.nics[0].queues == queues
    assert result.as_dict()["nics"][0]["queues"] == queues  # type: ignore[index]


@pytest.mark.parametrize(("driver", "model", "wanted"), [
    ("<driver queues='x'/>", "virtio", "is not a number of queues"),
    ("<driver queues='²'/>", "virtio", "is not a number of queues"),
    ("<driver queues='257'/>", "virtio", "is not a number of queues"),
    ("<driver queues='4'/>", "e1000", "multiqueue needs virtio")])
def test_import_refuses_bad_queues(mappings: Path, driver: str, model: str,
                                   wanted: str) -> None:
    from netmap.libvirt.domain import import_domain
    from netmap.libvirt.xmlsafe import parse_untrusted

    fleet = load_fleet(mappings)
    result = import_domain(parse_untrusted(domain_xml(driver, model).encode(), "vmq.xml"),
                           fleet.networks, fleet.hosts, host="host-a")
    assert [f.code for f in result.errors] == ["INTERFACE_INVALID"]
    assert wanted in result.errors[0].message


def test_import_write_keeps_queues(mappings: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    from netmap.cli import main

    xml = tmp_path / "vmq.xml"
    xml.write_text(domain_xml("<driver queues='4'/>"))
    assert main(["--mappings", str(mappings), "import", str(xml), "--host", "host-a",
                 "--write"]) == 0
    written = mappings / "guests" / "vmq.toml"
    assert "queues = 4" in written.read_text()
    assert load_fleet(mappings).guests["vmq"].nics[0].queues == 4


def test_hook_parser_reads_queues(mappings: Path) -> None:
    """The libvirt hook reads a migrating domain through the same parser: its guest has the
    queues the XML asks for (what the destination must offer)."""
    from netmap.libvirt.domain import import_domain
    from netmap.libvirt.xmlsafe import parse_untrusted

    fleet = load_fleet(mappings)
    result = import_domain(parse_untrusted(domain_xml("<driver queues='8'/>").encode(),
                                           "<stdin>"), fleet.networks, fleet.hosts,
                           avoid_host="host-b")
    assert result.guest.nics[0].queues == 8


def test_plan_asks_for_a_multi_queue_tap_exactly_when_queues_exceed_one(mappings: Path,
                                                                        ) -> None:
    path = mappings / "guests" / "vmq.toml"
    for queues, multi in ((1, False), (2, True), (4, True)):
        path.write_text(guest_file(queues))
        fleet = load_fleet(mappings)
        plan = build_plan(build_graph(fleet), fleet.guests["vmq"], fleet.hosts["host-a"])
        taps = [s for _, s in plan.steps if isinstance(s, CreateTap)]
        assert [t.multi_queue for t in taps] == [multi]
        assert plan.nics[0].queues == queues
        assert ("multi-queue" in taps[0].describe()) == multi


# --- the real kernel ----------------------------------------------------------------------------

def open_queue(netns: str, name: str, flags: int) -> int:
    """TUNSETIFF on an existing tap, as QEMU and libvirt attach one queue."""
    from netmap.netlink.rtnl import entered_netns

    with entered_netns(netns):
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), flags))
    except BaseException:
        os.close(fd)
        raise
    return fd


def tun_info(netns: str, name: str) -> dict:
    return ip_links(netns, name)[0]["linkinfo"]["info_data"]


@pytest.fixture
def mq_lab(cli_lab_factory):
    return cli_lab_factory(PREFIX, ["host-a"], {"vmq": guest_file(4)})


def realize(root: Path, **options: object):
    from netmap.netlink.apply import realize_plan

    fleet = load_fleet(root)
    plan = build_plan(build_graph(fleet), fleet.guests["vmq"], fleet.hosts["host-a"])
    return plan, realize_plan(plan, **options)  # type: ignore[arg-type]


def set_queues(root: Path, queues: int) -> None:
    (root / "guests" / "vmq.toml").write_text(guest_file(queues))


FLAGS = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR


@needs_netns
def test_realize_makes_a_tap_that_opens_once_per_queue(mq_lab) -> None:
    built, root = mq_lab
    plan, result = realize(root)
    netns = built.hosts["host-a"]
    tap = str(plan.nics[0].device)
    info = tun_info(netns, tap)
    assert info["multi_queue"] is True
    assert info["vnet_hdr"] is True
    assert info["persist"] is True
    fds = [open_queue(netns, tap, FLAGS | IFF_MULTI_QUEUE) for _ in range(4)]
    try:
        assert tun_info(netns, tap)["numqueues"] == 4
        with pytest.raises(OSError) as caught:  # the tap's mode is fixed: EINVAL without it
            open_queue(netns, tap, FLAGS)
        assert caught.value.errno == errno.EINVAL
    finally:
        for fd in fds:
            os.close(fd)
    assert "<driver queues='4'/>" in interface_xml(result.nics[0])
    assert ",queues=4" in str(netdev_option(result.nics[0]))


@needs_netns
def test_single_queue_tap_opens_once(mq_lab) -> None:
    built, root = mq_lab
    set_queues(root, 1)
    plan, result = realize(root)
    netns = built.hosts["host-a"]
    tap = str(plan.nics[0].device)
    assert tun_info(netns, tap)["multi_queue"] is False
    fd = open_queue(netns, tap, FLAGS)
    try:
        with pytest.raises(OSError) as caught:  # one queue, held: the second open is busy
            open_queue(netns, tap, FLAGS)
        assert caught.value.errno == errno.EBUSY
        with pytest.raises(OSError) as caught:
            open_queue(netns, tap, FLAGS | IFF_MULTI_QUEUE)
        assert caught.value.errno == errno.EINVAL
    finally:
        os.close(fd)
    assert "<driver" not in interface_xml(result.nics[0])


def ifindex(netns: str, name: str) -> int:
    return int(ip_links(netns, name)[0]["ifindex"])


@needs_netns
@pytest.mark.parametrize(("before", "after"), [(1, 4), (4, 1)])
def test_second_realize_makes_a_free_tap_again_in_the_new_mode(mq_lab, before: int,
                                                              after: int) -> None:
    built, root = mq_lab
    netns = built.hosts["host-a"]
    set_queues(root, before)
    plan, _ = realize(root)
    tap = str(plan.nics[0].device)
    old = ifindex(netns, tap)
    set_queues(root, after)
    from netmap.netlink.apply import preview_plan

    fleet = load_fleet(root)  # the dry run says so and changes nothing
    preview = preview_plan(build_plan(build_graph(fleet), fleet.guests["vmq"],
                                      fleet.hosts["host-a"]))
    assert [v for _, s, v in preview if isinstance(s, CreateTap)] == ["recreate"]
    assert ifindex(netns, tap) == old
    _, result = realize(root)
    assert [v for _, s, v in result.outcomes if isinstance(s, CreateTap)] == ["recreate"]
    assert tun_info(netns, tap)["multi_queue"] is (after > 1)
    assert ifindex(netns, tap) != old
    link = ip_links(netns, tap)[0]
    assert link["master"] == plan.nics[0].bridge
    assert "UP" in link["flags"]
    # state knows the new device: a third realize leaves it alone
    _, again = realize(root)
    assert not again.changed


@needs_netns
def test_second_realize_refuses_while_a_guest_holds_the_tap(mq_lab) -> None:
    built, root = mq_lab
    netns = built.hosts["host-a"]
    set_queues(root, 1)
    plan, _ = realize(root)
    tap = str(plan.nics[0].device)
    old = ifindex(netns, tap)
    fd = open_queue(netns, tap, FLAGS)  # the running guest's queue
    try:
        set_queues(root, 4)
        with pytest.raises(ApplyError) as caught:
            realize(root)
        text = str(caught.value)
        assert "single-queue" in text
        assert "4 queue(s)" in text
        assert "holds" in text
        assert "shut vmq down" in str(caught.value.fix)
        assert ifindex(netns, tap) == old
        assert tun_info(netns, tap)["multi_queue"] is False
    finally:
        os.close(fd)


@needs_netns
def test_failure_after_recreate_puts_the_old_tap_back(mq_lab,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """All or nothing: a later step fails, so the tap is made again as it was (queue mode,
    bridge, MAC, MTU), and state knows that device (a realize after it changes nothing)."""
    built, root = mq_lab
    netns = built.hosts["host-a"]
    set_queues(root, 1)
    plan, _ = realize(root)
    tap = str(plan.nics[0].device)
    before = ip_links(netns, tap)[0]
    set_queues(root, 4)
    from netmap.netlink import ensure

    real = ensure.Transaction.verify

    def broken_verify(self: ensure.Transaction) -> list[str]:
        real(self)
        return ["injected after the tap was made again"]

    with monkeypatch.context() as patched, pytest.raises(ApplyError) as caught:
        patched.setattr(ensure.Transaction, "verify", broken_verify)
        realize(root)
    assert "every change was undone" in str(caught.value)
    after = ip_links(netns, tap)[0]
    assert tun_info(netns, tap)["multi_queue"] is False
    for key in ("master", "address", "mtu"):
        assert after[key] == before[key]
    assert ("UP" in after["flags"]) == ("UP" in before["flags"])
    set_queues(root, 1)
    _, again = realize(root)
    assert not again.changed


# --- the QEMU helper ------------------------------------------------------------------------------

@needs_netns
@pytest.mark.parametrize("how", ["--guest=vmq", f"--mac={MAC}"])
def test_qemu_helper_refuses_several_queues(mq_lab, tmp_path: Path, how: str) -> None:
    """One descriptor is one queue: a NIC with queues = 4 is refused before anything is
    made (exit 2), with a fix that points at realize."""
    import test_qemu_helper as qh

    built, root = mq_lab
    netns = built.hosts["host-a"]
    acl = tmp_path / "qemu-helper.conf"
    acl.write_text("allow all\n")
    before = qh.links(netns)
    got = qh.call_helper(["--use-vnet", "--br=mgmt", how], qh.helper_env(root, acl))
    assert got.fd is None
    assert got.code == 2, got.stderr
    assert "queues = 4" in got.stderr
    assert "one file descriptor" in got.stderr
    assert "vmq.toml" in got.stderr
    assert "nics[0].queues" in got.stderr
    assert "netmap realize vmq --host host-a" in got.stderr
    assert "Traceback" not in got.stderr
    assert qh.links(netns).keys() == before.keys()
    set_queues(root, 1)  # the same NIC with one queue is served
    served = qh.call_helper(["--use-vnet", "--br=mgmt", how], qh.helper_env(root, acl))
    try:
        assert served.code == 0, served.stderr
        assert served.fd is not None
    finally:
        served.close()


OPEN_MACVTAP_QUEUES = """
import fcntl, os, stat, struct, sys
name, index, count, scratch = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
# the netns's own sysfs (ip netns exec mounts it): the char device's number
major, minor = map(int, open(f"/sys/class/net/{name}/macvtap/tap{index}/dev").read().split(":"))
node = os.path.join(scratch, name)
os.mknod(node, 0o600 | stat.S_IFCHR, os.makedev(major, minor))
fds = [os.open(node, os.O_RDWR) for _ in range(count)]  # libvirt: one open per queue
names = {struct.unpack("16sH22x", fcntl.ioctl(fd, 0x800454D2, bytes(40)))[0].rstrip(b"\\0")
         for fd in fds}
print(len(fds), b",".join(names).decode())
"""


@needs_netns
def test_macvtap_for_several_queues_opens_once_per_queue(mq_lab, tmp_path: Path) -> None:
    """A macvtap takes one queue per open of its char device; realize's <interface> asks
    libvirt for the NIC's queues."""
    import sys

    built, root = mq_lab
    netns = built.hosts["host-a"]
    host_file = root / "hosts" / "host-a.toml"
    host_file.write_text(host_file.read_text().replace(
        '[networks.mgmt]\nmode = "bridge"', '[networks.mgmt]\nmode = "macvtap-bridge"'))
    plan, result = realize(root)
    name = str(plan.nics[0].device)
    assert "<driver queues='4'/>" in interface_xml(result.nics[0])
    assert "opened read-write 4 times" in str(netdev_option(result.nics[0]))
    index = ifindex(netns, name)
    done = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c",
                           OPEN_MACVTAP_QUEUES, name, str(index), "4", str(tmp_path)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["4", name]


# --- drift ----------------------------------------------------------------------------------------

@needs_netns
def test_drift_reports_a_tap_in_the_other_queue_mode(mq_lab,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from netmap.cli import main

    _built, root = mq_lab
    set_queues(root, 1)
    plan, _ = realize(root)
    tap = str(plan.nics[0].device)
    capsys.readouterr()
    main(["drift", "host-a", "--json"])
    codes = [f["code"] for f in json.loads(capsys.readouterr().out)["findings"]]
    assert "ENDPOINT_QUEUE_MODE" not in codes
    set_queues(root, 4)  # the guest's mapping changed after realize
    assert main(["drift", "host-a", "--json"]) == 1
    findings = json.loads(capsys.readouterr().out)["findings"]
    found = [f for f in findings if f["code"] == "ENDPOINT_QUEUE_MODE"]
    assert len(found) == 1
    assert found[0]["severity"] == "error"
    assert tap in found[0]["message"]
    assert "single-queue" in found[0]["message"]
    assert "4 queue(s)" in found[0]["message"]
    assert "vmq.toml" in found[0]["message"]
    assert "realize vmq again" in found[0]["hint"]
    realize(root)  # made anew (no guest holds it): no drift left
    main(["drift", "host-a", "--json"])
    codes = [f["code"] for f in json.loads(capsys.readouterr().out)["findings"]]
    assert "ENDPOINT_QUEUE_MODE" not in codes


# --- real QEMU on the realized tap ----------------------------------------------------------------

QEMU = shutil.which("qemu-system-x86_64")
needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed "
                                "(Debian: apt-get install qemu-system-x86)")


def start_qemu_on_tap(netns: str, tap: str, queues: int, workdir: Path):
    """QEMU as libvirt would start it on realize's tap (`ifname=`, no scripts), with a
    multi-queue virtio-net-pci device; -S: the CPUs never run, no guest image needed."""
    from tests.test_qemu_real import Qmp

    qmp_path, log = workdir / "qmp.sock", workdir / "qemu.log"
    argv = ["ip", "netns", "exec", netns, str(QEMU), "-nodefaults", "-display", "none",
            "-machine", "q35,accel=tcg", "-S", "-m", "64",
            "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no,queues={queues},"
            "vhost=off",
            "-device", f"virtio-net-pci,netdev=n0,mac={MAC},mq=on,vectors={2 * queues + 2}",
            "-qmp", f"unix:{qmp_path},server=on,wait=off"]
    with log.open("w") as stderr:
        qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=stderr)
    return qemu, (lambda: Qmp(qmp_path)), log


@pytest.mark.qemu
@needs_netns
@needs_qemu
def test_qemu_opens_the_realized_tap_once_per_queue(mq_lab, tmp_path: Path) -> None:
    from tests.qemu_fds import fds_of
    from tests.test_qemu_real import quit_qemu

    built, root = mq_lab
    netns = built.hosts["host-a"]
    plan, _ = realize(root)
    tap = str(plan.nics[0].device)
    qemu, connect, log = start_qemu_on_tap(netns, tap, 4, tmp_path)
    try:
        qmp = connect()
        info = qmp.command("human-monitor-command", **{"command-line": "info network"})
        assert f"ifname={tap}" in str(info)
        assert MAC in str(info)
        assert fds_of(qemu.pid).count(f"/dev/net/tun {tap}") == 4
        # all four attached; QEMU keeps all but the first disabled until the guest's driver
        # turns multiqueue on (TUNSETQUEUE), and CPUs that never run never do
        queues = tun_info(netns, tap)
        assert queues["numqueues"] + queues["numdisabled"] == 4, queues
        quit_qemu(qemu, qmp)
    finally:
        if qemu.poll() is None:
            qemu.kill()
            qemu.wait()
    # realize's tap is persistent: QEMU gone, it stays, with no queue open
    assert tun_info(netns, tap)["numqueues"] == 0, log.read_text()


@pytest.mark.qemu
@needs_netns
@needs_qemu
def test_qemu_cannot_open_a_single_queue_tap_with_four_queues(mq_lab, tmp_path: Path) -> None:
    """Why realize must make the tap multi-queue: QEMU refuses the other one."""
    built, root = mq_lab
    netns = built.hosts["host-a"]
    set_queues(root, 1)
    plan, _ = realize(root)
    tap = str(plan.nics[0].device)
    qemu, _connect, log = start_qemu_on_tap(netns, tap, 4, tmp_path)
    assert qemu.wait(timeout=60) != 0
    assert "could not configure /dev/net/tun" in log.read_text()


# --- real libvirt on the realized tap -------------------------------------------------------------

def libvirt_problem() -> str | None:
    import sys as _sys

    from tests.conftest import REPO

    _sys.path.insert(0, str(REPO / "scripts"))
    import libvirt_lab  # scripts/ is not a package

    return libvirt_lab.missing() or libvirt_lab.isolation_problem()


DOMAIN = """<domain type='qemu'>
  <name>vmq</name>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>{qemu}</emulator>
{interface}
    <memballoon model='none'/>
  </devices>
</domain>
"""


@pytest.mark.qemu
@pytest.mark.usefixtures("one_libvirt_lab_at_a_time")
@needs_netns
@needs_qemu
def test_libvirt_starts_a_guest_with_four_queues_on_the_realized_tap(
        mq_lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """realize prints the <interface>; a private libvirtd (scripts/libvirt_lab.py) in the lab
    host's namespace defines a guest with it as it is, starts it (QEMU opens the tap once
    per queue), and leaves realize's tap in place when the guest is destroyed."""
    problem = libvirt_problem()
    if problem:
        pytest.skip(problem)
    from libvirt_lab import PrivateLibvirtd

    from netmap.cli import main
    from tests.qemu_fds import fds_of

    built, root = mq_lab
    netns = built.hosts["host-a"]
    capsys.readouterr()
    assert main(["realize", "vmq", "--host", "host-a", "--json"]) == 0
    (nic,) = json.loads(capsys.readouterr().out)["nics"]
    tap, interface = str(nic["device"]), str(nic["libvirt_xml"])
    # libvirt takes an existing target dev for a macvtap when /dev/tap<its ifindex> exists
    # (virNetDevMacVLanIsMacvtap), and devtmpfs holds the macvtaps of every namespace: with
    # other labs' macvtaps around, the tap's ifindex must not be one of theirs, or libvirt
    # would open a stranger's macvtap. A tap made again gets the namespace's next ifindex.
    for _ in range(50):
        if not Path(f"/dev/tap{ifindex(netns, tap)}").exists():
            break
        assert main(["release", "vmq", "--host", "host-a"]) == 0
        assert main(["realize", "vmq", "--host", "host-a"]) == 0
        capsys.readouterr()
    else:
        pytest.skip("every ifindex the tap got has a /dev/tapN node of another namespace")
    assert "<driver queues='4'/>" in interface
    assert f'<target dev="{tap}"' in interface
    # no option ROM file is needed (the lab's QEMU may have no ipxe ROMs)
    interface = interface.replace("</interface>", "  <rom enabled='no'/>\n</interface>")
    daemon = PrivateLibvirtd(tmp_path / "libvirt", netns, "host-a", root)
    caps = tmp_path / "qemucaps"
    caps.mkdir()
    try:
        daemon.start(caps)
        xml = tmp_path / "vmq.xml"
        xml.write_text(DOMAIN.format(qemu=QEMU, interface=interface))
        daemon.virsh("define", str(xml))
        started = daemon.virsh("start", "vmq", check=False)
        assert started.returncode == 0, started.stderr + daemon.log_tail()
        live = daemon.virsh("dumpxml", "vmq").stdout
        assert "queues='4'" in live
        assert f"dev='{tap}'" in live
        (pidfile,) = [p for p in (tmp_path / "libvirt" / "run/libvirt/qemu").glob("*.pid")
                      if p.name != "driver.pid"]
        pid = int(pidfile.read_text().strip())
        assert fds_of(pid).count(f"/dev/net/tun {tap}") == 4, "\n".join(fds_of(pid))
        queues = tun_info(netns, tap)
        assert queues["numqueues"] + queues["numdisabled"] == 4, queues
        daemon.virsh("destroy", "vmq")
        # managed='no': the tap is realize's, libvirt leaves it, with no queue open
        assert tun_info(netns, tap)["numqueues"] == 0
    finally:
        daemon.stop()
