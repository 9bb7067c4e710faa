"""Shared fixtures. Tests that touch the kernel build throw-away network namespaces and
always delete them; each test module uses its own namespace name prefix."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fleet_files import write_fleet  # noqa: F401  (tests import it from here)

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_MAPPINGS = REPO / "mappings"
CORPUS = REPO.parent / "shared" / "corpus" / "libvirt"
CAP_NET_ADMIN = 12


def has_net_admin() -> bool:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return False
    match = re.search(r"^CapEff:\s*([0-9a-f]+)$", status, re.M)
    return bool(match and int(match.group(1), 16) & (1 << CAP_NET_ADMIN)) and bool(
        shutil.which("ip"))


needs_netns = pytest.mark.skipif(
    not has_net_admin(), reason="needs CAP_NET_ADMIN and iproute2 to build network namespaces")
# realize and release check the capability before anything else they are asked to do
needs_net_admin = pytest.mark.skipif(
    not has_net_admin(), reason="realize and release refuse to start without CAP_NET_ADMIN")

# Every namespace a test builds comes from one of these (directly or through a fixture that
# asks for one), so `-m netns` / `-m "not netns"` split the suite without a marker per test.
NAMESPACE_FIXTURES = frozenset({"netns_factory", "lab_factory"})  # and all built on them


def builds_namespaces(item: pytest.Item) -> bool:
    """Asks for a namespace fixture, or is marked by hand (a test that builds a lab itself)."""
    if NAMESPACE_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    return item.get_closest_marker("netns") is not None or any(
        mark == needs_netns.mark for mark in item.iter_markers("skipif"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The VM tier is one long test that leaves a core to the rest: started first, it runs
    # beside the others under `-n auto` instead of after them.
    items.sort(key=lambda item: item.path.name != "test_vmlab.py")
    for item in items:
        if builds_namespaces(item):
            # the marker selects; the skip says why a run without the capability passed it by
            item.add_marker(pytest.mark.netns)
            item.add_marker(needs_netns)


@pytest.fixture(scope="module")
def one_libvirt_lab_at_a_time() -> Iterator[None]:
    """Held for a module that runs private libvirtd labs: with two such modules in two
    pytest-xdist workers at once, live migrations timed out under load (the source's
    connection to the destination's migration address stuck in SYN-SENT; cause not found),
    so the modules take turns, whichever worker they run in."""
    with open("/tmp/netmap-tests-libvirt.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@pytest.fixture
def mappings(tmp_path: Path) -> Path:
    """A private copy of the example mappings that a test may change."""
    target = tmp_path / "mappings"
    shutil.copytree(EXAMPLE_MAPPINGS, target)
    return target


@pytest.fixture
def netns_factory() -> Iterator[Callable[[str], str]]:
    """make(prefix) -> a new, uniquely named network namespace, deleted after the test."""
    made: list[str] = []

    def make(prefix: str) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        made.append(name)
        return name

    yield make
    for name in made:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def lab_mappings(mappings: Path, prefix: str) -> Path:
    """Point every host of a mappings copy at namespaces named `prefix`-HOST."""
    for path in (mappings / "hosts").glob("*.toml"):
        text = path.read_text()
        host = path.stem
        text = re.sub(r'^netns = ".*?"', f'netns = "{prefix}-{host}"', text, flags=re.M)
        if "netns =" not in text:
            text = text.replace("[host]\n", f'[host]\nnetns = "{prefix}-{host}"\n', 1)
        path.write_text(text)
    return mappings


@pytest.fixture
def lab_factory(mappings: Path) -> Iterator[Callable[..., object]]:
    """make(prefix, hosts=None) -> (Lab, mappings dir): the example fleet as namespaces."""
    from netmap.lab import build_lab, teardown_lab
    from netmap.load import load_fleet

    labs = []

    def make(prefix: str, hosts: list[str] | None = None):
        unique = f"{prefix}{os.getpid() % 10000}"
        lab_mappings(mappings, unique)
        lab = build_lab(load_fleet(mappings), unique, hosts)
        labs.append(lab)
        return lab, mappings

    yield make
    for lab in labs:
        teardown_lab(lab)


@pytest.fixture
def cli_lab_factory(lab_factory: Callable[..., object], mappings: Path, tmp_path: Path,
                    monkeypatch: pytest.MonkeyPatch) -> Callable[..., object]:
    """make(prefix, hosts, guests={}) -> (Lab, mappings): lab_factory with the guests' files
    (name -> TOML) added first, and NETMAP_MAPPINGS / NETMAP_STATE_DIR set as the command
    line reads them, the state kept in tmp_path."""

    def make(prefix: str, hosts: list[str], guests: dict[str, str] | None = None):
        for name, text in (guests or {}).items():
            (mappings / "guests" / f"{name}.toml").write_text(text)
        built, root = lab_factory(prefix, hosts)
        monkeypatch.setenv("NETMAP_STATE_DIR", str(tmp_path / "state"))
        monkeypatch.setenv("NETMAP_MAPPINGS", str(root))
        return built, root

    return make


# --- shared builders and readers (one of each, so tests say the same thing the same way) ----

def lab_namespaces(prefix: str) -> list[str]:
    """The namespaces of the lab built with `prefix` (PREFIX-HOST, PREFIX-fabric)."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in listed.splitlines() if line.startswith(f"{prefix}-")]


def wait_until_up(up: subprocess.Popen) -> str:
    """What a lab script's `up` printed until it said the lab runs ("Ctrl-C ...")."""
    assert up.stdout is not None
    said = []
    for line in up.stdout:
        said.append(line)
        if line.startswith("Ctrl-C"):
            return "".join(said)
    raise AssertionError("up ended early: " + "".join(said)
                         + (up.stderr.read() if up.stderr else ""))


def interrupt(up: subprocess.Popen, timeout: float = 120) -> None:
    """Ctrl-C to a lab script's `up`, as a user stops it; killed if it does not end."""
    up.send_signal(signal.SIGINT)
    try:
        up.wait(timeout)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()


def guest_toml(name: str, host: str, *nics: tuple[str, str]) -> str:
    """A guest file placed on `host`, one [[nics]] table per (network, mac)."""
    return f'[guest]\nname = "{name}"\nhost = "{host}"\n' + "".join(
        f'\n[[nics]]\nnetwork = "{network}"\nmac = "{mac}"\n' for network, mac in nics)


def ip_links(netns: str, name: str | None = None) -> list[dict]:
    """`ip -d -j link show [name]` in the namespace, as iproute2 reports it."""
    out = subprocess.run(["ip", "-n", netns, "-d", "-j", "link", "show",
                          *([name] if name else [])],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def links_by_name(netns: str) -> dict[str, dict]:
    return {link["ifname"]: link for link in ip_links(netns)}


def fake_sriov_pf(root: Path, pf: str, vf_netdevs: list[str | None], *, total: int = 8,
                  bus: str = "0000:03") -> Path:
    """A fake sysfs tree as the kernel lays it out: class/net/PF/device -> the PF's PCI
    device with sriov_totalvfs, sriov_numvfs and virtfnN -> BUS:10.N; a VF whose netdev is
    None is bound to vfio (no net/ directory)."""
    pci = root / "devices" / "pci"
    device = pci / f"{bus}:00.0"
    device.mkdir(parents=True)
    (root / "class" / "net" / pf).mkdir(parents=True)
    (root / "class" / "net" / pf / "device").symlink_to(device)
    (device / "sriov_totalvfs").write_text(f"{total}\n")
    (device / "sriov_numvfs").write_text(f"{len(vf_netdevs)}\n")
    for index, netdev in enumerate(vf_netdevs):
        vf = pci / f"{bus}:10.{index}"
        vf.mkdir()
        if netdev:
            (vf / "net" / netdev).mkdir(parents=True)
        (device / f"virtfn{index}").symlink_to(vf)
    return root
