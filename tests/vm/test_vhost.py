"""vhost-net on Debian's kernel: `check --live` on the destination believes /dev/vhost-net,
and notices when it is gone (the CI kernel has none, so only the second half runs there)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from vmhost import HOST, guest, ip, wait_until

from netmap.cli import main

pytestmark = pytest.mark.vm
NETWORKS = '[networks.lan]\nsegment = "lab"\n'
BINDING = '[uplinks.nmvmup0]\nsegments = ["lab"]\n\n[networks.lan]\nmode = "macvtap-bridge"\n' \
          'uplink = "nmvmup0"\n'
DEST = f'[host]\nname = "{HOST}"\nfeatures = ["tun", "macvtap", "vhost-net"]\n\n{BINDING}'
SOURCE = '[host]\nname = "nmvm-src"\nfeatures = ["tun", "macvtap", "vhost-net"]\n\n' + BINDING
VHOST = Path("/dev/vhost-net")


@pytest.fixture
def lab(fleet):
    ip("link", "add", "nmvmup0", "type", "dummy")
    ip("link", "set", "nmvmup0", "up")
    root = fleet(NETWORKS, DEST, {"g1": guest("g1", ("lan", "52:54:00:7e:00:01")).replace(
        f'host = "{HOST}"', 'host = "nmvm-src"') + 'vhost = "required"\n'})
    (root / "hosts" / "nmvm-src.toml").write_text(SOURCE)
    yield root
    ip("link", "del", "nmvmup0", check=False)
    subprocess.run(["modprobe", "vhost_net"], check=False)


def live_codes(capsys) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = main(["check", "g1", "--to", HOST, "--live", "--json"])
    report = json.loads(capsys.readouterr().out)
    return code, [f"{f['code']}: {f['message']}" for f in report["findings"]]


def test_check_live_sees_vhost_net(lab, capsys) -> None:
    assert VHOST.exists()
    code, findings = live_codes(capsys)
    assert code == 0 and not [f for f in findings if "vhost" in f.lower()], findings

    subprocess.run(["modprobe", "-r", "vhost_net"], check=True)
    wait_until(lambda: not VHOST.exists(), "/dev/vhost-net to go with its module")
    code, findings = live_codes(capsys)
    assert code == 1
    assert any(f.startswith("FEATURE_MISSING") and "vhost-net" in f for f in findings), findings
