"""netmap's OVSDB client (netmap/netlink/ovsdb.py) against a real ovsdb-server: a
transaction written against rows that changed since they were read is refused whole, a
connection waits for ovs-vswitchd more than once, a server gone mid-way is an ApplyError.
Private ovsdb-server (and ovs-vswitchd) in namespaces of this file's prefix, nmof; OVSDB
is read back with ovs-vsctl."""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ovs_lab import OvsInstance, missing, start_ovs

from netmap.errors import ApplyError
from netmap.netlink import ovsdb

pytestmark = [pytest.mark.netns,
              pytest.mark.skipif(missing() is not None, reason=str(missing()))]
IDS = (("netmap-owner", "g1"),)


@pytest.fixture
def server(netns_factory) -> Iterator[OvsInstance]:
    """ovsdb-server alone (ovs-vswitchd started by the test that needs it), bridge br0."""
    directory = Path(tempfile.mkdtemp(prefix="nmof", dir="/tmp"))  # a short socket path
    ovs = start_ovs(netns_factory("nmof"), directory, vswitchd=False)
    try:
        ovs.vsctl("--no-wait", "add-br", "br0")
        yield ovs
    finally:
        ovs.stop()
        shutil.rmtree(directory, ignore_errors=True)


def _ports(ovs: OvsInstance, bridge: str) -> list[str]:
    return ovs.vsctl("list-ports", bridge).split()


def test_a_bridge_made_again_since_the_read_refuses_the_whole_transaction(server) -> None:
    """The ports would go into a bridge row that no longer exists (OVSDB would drop them
    unreferenced) while the rest of the transaction took effect: refused, nothing made."""
    with ovsdb.connected(server.remote, ports={"p1"}) as db:
        server.vsctl("--no-wait", "del-br", "br0", "--", "add-br", "br0")
        with pytest.raises(ApplyError, match="refused the transaction"):
            db.apply([ovsdb.AddBridge("br1"), ovsdb.SetPort("p1", "br0", 10, IDS)],
                     wait_vswitchd=False)
    assert server.vsctl("list-br").split() == ["br0"]
    assert _ports(server, "br0") == []


def test_a_repair_of_a_port_taken_out_since_the_read_is_refused(server) -> None:
    server.vsctl("--no-wait", "add-port", "br0", "p1", "tag=10")
    with ovsdb.connected(server.remote, ports={"p1"}) as db:
        assert db.port_status("br0", "p1") == ovsdb.PortStatus(10, (("p1", None, None),))
        server.vsctl("--no-wait", "del-port", "br0", "p1", "--", "add-br", "br2")
        with pytest.raises(ApplyError, match="refused the transaction"):
            db.apply([ovsdb.SetPort("p1", "br0", 20, IDS), ovsdb.AddBridge("br1")],
                     wait_vswitchd=False)
    assert sorted(server.vsctl("list-br").split()) == ["br0", "br2"]
    assert server.vsctl("find", "Port", "name=p1") == ""


def test_a_port_set_and_taken_out_again_on_one_connection(server) -> None:
    """Each apply reads what the last one made: the undo of a new port finds it."""
    with ovsdb.connected(server.remote, ports={"p1"}) as db:
        db.apply([ovsdb.SetPort("p1", "br0", 10, IDS)], wait_vswitchd=False)
        assert _ports(server, "br0") == ["p1"]
        assert server.vsctl("get", "Interface", "p1", "external_ids:netmap-owner") == "g1"
        assert db.port_status("br0", "p1") == ovsdb.PortStatus(10, (("p1", None, None),))
        db.apply([ovsdb.DeletePort("p1", "br0")], wait_vswitchd=False)
        assert _ports(server, "br0") == []
        assert db.port_status("br0", "p1") is None


def test_one_connection_waits_for_vswitchd_twice(server) -> None:
    """ovs-vswitchd's cur_cfg is watched once per connection (a second watch of the same
    name is an error of the server's) and followed for every later transaction."""
    server.start_vswitchd()
    with ovsdb.connected(server.remote) as db:
        db.apply([ovsdb.AddBridge("br1", "netdev")])
        first = db.cur_cfg
        db.apply([ovsdb.AddBridge("br2", "netdev")])
        assert first is not None
        assert db.cur_cfg is not None
        assert db.cur_cfg > first
        assert db.cur_cfg == int(server.vsctl("get", "Open_vSwitch", ".", "cur_cfg"))
        assert db.vswitchd_running()
    assert sorted(server.vsctl("list-br").split()) == ["br0", "br1", "br2"]


def test_vswitchd_not_running_is_read_from_its_lock(server) -> None:
    with ovsdb.connected(server.remote) as db:
        assert not db.vswitchd_running()


def test_a_server_gone_midway_is_an_apply_error(server) -> None:
    with ovsdb.connected(server.remote, ports={"p1"}, timeout=2.0) as db:
        server.server.terminate()
        server.server.wait(timeout=10)
        with pytest.raises(ApplyError, match=f"OVSDB at {server.remote}"):
            db.apply([ovsdb.SetPort("p1", "br0", 10, IDS)], wait_vswitchd=False)


@pytest.mark.parametrize("asked", [2, 100])  # a select per name; one of every port
def test_a_partial_connection_reads_the_ports_asked_for_and_no_other(server, asked) -> None:
    server.vsctl("--no-wait", "add-port", "br0", "p0", "tag=10", "--", "add-port", "br0",
                 "p1", "--", "add-port", "br0", "other")
    names = {f"p{i}" for i in range(asked)}
    with ovsdb.connected(server.remote, ports=names) as db:
        ports = db.bridges()["br0"].ports
        assert sorted(ports) == ["p0", "p1"]
        assert ports["p0"].tag == 10
        assert ports["p1"].tag is None
        assert [i.name for i in ports["p0"].interfaces] == ["p0"]
        db.all_ports()
        assert sorted(db.bridges()["br0"].ports) == ["br0", "other", "p0", "p1"]


def test_a_server_that_never_answers_is_an_apply_error(tmp_path: Path) -> None:
    """Connected, but no reply to the first read: an ApplyError once the timeout is over,
    not a wait without end."""
    path = tmp_path / "db.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(1)
        started = time.monotonic()
        with pytest.raises(ApplyError, match=r"could not read the database within 0\.3s"):
            ovsdb.Ovsdb(f"unix:{path}", timeout=0.3)
        assert time.monotonic() - started < 5
