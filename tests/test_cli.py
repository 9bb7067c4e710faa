"""The fleet commands as a user runs them: output, --json, exit codes, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EXAMPLE_MAPPINGS, REPO, needs_net_admin, needs_netns

from netmap.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["--mappings", str(EXAMPLE_MAPPINGS), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_check_compatible(capsys):
    code, out, _ = run(capsys, "check", "vm1", "--to", "host-b")
    assert code == 0
    assert "eth0" in out
    assert "eno2" in out
    assert "compatible" in out


def test_check_json_is_the_report(capsys):
    code, out, _ = run(capsys, "check", "vm1", "--to", "host-c", "--json")
    data = json.loads(out)
    assert code == 1
    assert data["compatible"] is False
    assert {f["code"] for f in data["findings"]} >= {"NETWORK_UNBOUND"}
    assert data["nics"][0]["source"]["uplink"] == "eth0"
    assert data["nics"][0]["destination"]["uplink"] == "ens1f0"


def test_check_warning_only_and_strict(capsys):
    assert run(capsys, "check", "vm2", "--to", "host-c")[0] == 0
    assert run(capsys, "check", "vm2", "--to", "host-c", "--strict")[0] == 1


def test_check_from_overrides_source(capsys):
    code, out, _ = run(capsys, "check", "vm2", "--from", "host-c", "--to", "host-b", "--json")
    data = json.loads(out)
    assert data["source"] == "host-c"
    assert code == 0


@pytest.mark.parametrize("argv, needle", [
    (["check", "vm9", "--to", "host-b"], "unknown guest 'vm9'"),
    (["check", "vm1", "--to", "host-q"], "unknown host 'host-q'"),
    (["diff", "host-a", "hostb"], "did you mean 'host-b'"),
])
def test_unknown_names_exit_2_without_traceback(capsys, argv, needle):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert needle in err
    assert "Traceback" not in err


def test_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["check", "vm1"])
    assert caught.value.code == 2
    assert "--to" in capsys.readouterr().err


def test_show_tree_and_json(capsys):
    code, out, _ = run(capsys, "show")
    assert code == 0
    assert "host-b" in out
    assert "eno2" in out
    assert "VFs 1/8" in out
    code, out, _ = run(capsys, "show", "host-a", "--json")
    data = json.loads(out)
    assert [h["host"] for h in data["hosts"]] == ["host-a"]
    eno1 = next(u for u in data["hosts"][0]["uplinks"] if u["uplink"] == "eno1")
    assert eno1["sriov"] == {"total_vfs": 8, "used_vfs": 1}


def test_show_marks_a_mac_clash_and_a_broken_file(capsys, mappings: Path):
    vm4 = mappings / "guests" / "vm4.toml"
    vm4.write_text(vm4.read_text().replace("52:54:00:ef:00:01", "52:54:00:ab:00:02"))
    (mappings / "guests" / "vm9.toml").write_text("[guest]\nname = 'vm9'\n[[nics]]\n")
    code = main(["--mappings", str(mappings), "show", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 2
    assert data["problems"][0]["file"].endswith("vm9.toml")
    guests = [g for h in data["hosts"] for u in h["uplinks"] for n in u["networks"]
              for g in n["guests"]]
    assert {g["guest"] for g in guests if g["mac_clash"]} == {"vm2", "vm4"}
    code = main(["--mappings", str(mappings), "check", "vm2", "--to", "host-c"])
    assert code == 1
    assert "MAC_IN_USE" in capsys.readouterr().out


def test_hosts_for(capsys):
    code, out, _ = run(capsys, "hosts-for", "vm1", "--json")
    data = json.loads(out)
    assert code == 0
    assert data["hosts"][0]["host"] == "host-b"
    assert all(h["blocking"] for h in data["hosts"][1:])


def test_hosts_for_table_lists_each_refusal_or_groups_many(capsys, monkeypatch):
    code, out, _ = run(capsys, "hosts-for", "vm1")
    assert code == 0
    assert "host-c" in out
    assert "host-d" in out
    assert "SEGMENT_UNREACHABLE" not in out
    from netmap import render

    monkeypatch.setattr(render, "REFUSALS_LISTED", 1)  # host-c and host-d: grouped
    code, out, _ = run(capsys, "hosts-for", "vm1")
    assert code == 0
    assert "host-b" in out
    assert "NETWORK_UNBOUND" in out
    assert "2 hosts" in out
    assert "(host-d, host-c)" in out  # in the order ranked


def test_diff_highlights_differences(capsys):
    code, out, _ = run(capsys, "diff", "host-a", "host-c", "--json")
    rows = {r["network"]: r for r in json.loads(out)["networks"]}
    assert code == 0
    assert rows["prod"]["host-a"]["uplink"] == "eth0"
    assert rows["prod"]["host-c"]["uplink"] == "ens1f0"
    assert rows["prod"]["differs"] == ["mode", "semantic"]
    assert rows["storage"]["host-c"] is None
    assert rows["mgmt"]["differs"] == []


def test_mappings_from_environment(capsys, monkeypatch):
    monkeypatch.setenv("NETMAP_MAPPINGS", str(EXAMPLE_MAPPINGS))
    assert main(["check", "vm1", "--to", "host-b"]) == 0


def test_fast_paths_import_nothing_heavy():
    code = ("import sys; from netmap.cli import main\n"
            "try:\n    main(['--version'])\nexcept SystemExit: pass\n"
            "heavy = [m for m in ('networkx', 'rich', 'pyroute2') if m in sys.modules]\n"
            "print('HEAVY=' + ','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, check=True).stdout
    assert "netmap 0.1.0" in out
    assert out.strip().splitlines()[-1] == "HEAVY="


def test_check_live_refuses_another_machine(capsys, monkeypatch):
    monkeypatch.setenv("NETMAP_HOST", "host-a")
    code, _, err = run(capsys, "check", "vm1", "--to", "host-d", "--live")
    assert code == 2
    assert "--live reads the live host" in err


@needs_netns
def test_check_live_folds_in_the_destinations_drift(capsys, lab_factory):
    import subprocess

    lab, mappings = lab_factory("nmL", ["host-b"])
    argv = ["--mappings", str(mappings), "check", "vm2", "--to", "host-b", "--live", "--json"]
    assert main(argv) == 0, capsys.readouterr()
    capsys.readouterr()
    subprocess.run(["ip", "-n", lab.hosts["host-b"], "link", "set", "eno3", "down"], check=True)
    assert main(argv) == 1
    findings = json.loads(capsys.readouterr().out)["findings"]
    down = [f for f in findings if f["code"] == "UPLINK_DOWN"]
    assert down
    assert "eno3" in down[0]["message"]
    assert down[0]["severity"] == "error"


def test_macs_are_printed_as_they_are(capsys):
    # ':cd:' in a MAC is an emoji code to rich; hints hold [networks.x], which is markup
    code, out, _ = run(capsys, "hosts-for", "vm3")
    assert code == 0
    assert "52:54:00:cd:00:01" in out
    code, out, _ = run(capsys, "check", "vm3", "--to", "host-c")
    assert code == 1
    assert "52:54:00:cd:00:01" in out
    assert "[networks.tenant-blue]" in out


def test_console_script_prints_everything_and_keeps_the_exit_code(tmp_path):
    """The console script ends with os._exit (netmap/support/finish.py): its output must still be
    complete through a pipe, and its exit code main()'s."""
    code = "from netmap.cli import run\nrun()\n"
    args = ["--mappings", str(EXAMPLE_MAPPINGS), "check", "vm1", "--to", "host-c", "--json"]
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          cwd=REPO, check=False)
    assert done.returncode == 1  # vm1 -> host-c is not compatible
    assert json.loads(done.stdout)["compatible"] is False



def test_release_of_an_unknown_guest_is_an_error_with_did_you_mean(capsys, mappings: Path,
                                                                   tmp_path: Path, monkeypatch):
    monkeypatch.setenv("NETMAP_STATE_DIR", str(tmp_path / "state"))
    common = ["--mappings", str(mappings), "release"]
    assert main([*common, "vm11", "--host", "host-a"]) == 2
    err = capsys.readouterr().err
    assert "unknown guest 'vm11'" in err
    assert "did you mean 'vm1'?" in err


@needs_net_admin
def test_release_of_a_guest_with_nothing_on_the_host_is_fine(capsys, mappings: Path,
                                                            tmp_path: Path, monkeypatch):
    monkeypatch.setenv("NETMAP_STATE_DIR", str(tmp_path / "state"))
    assert main(["--mappings", str(mappings), "release", "vm3", "--host", "host-a"]) == 0
    assert "nothing to release" in capsys.readouterr().out


@needs_netns
def test_release_by_the_name_in_state_after_the_guest_file_is_gone(capsys, lab_factory,
                                                                   tmp_path: Path, monkeypatch):
    """What an operator expects: the guest file deleted first, release still removes what
    netmap built for the guest, by the name netmap's state knows it under."""
    monkeypatch.setenv("NETMAP_STATE_DIR", str(tmp_path / "state"))
    lab, mappings = lab_factory("nmhc", ["host-c"])
    common = ["--mappings", str(mappings)]
    assert main([*common, "realize", "vm4", "--host", "host-c"]) == 0, capsys.readouterr()
    capsys.readouterr()
    (mappings / "guests" / "vm4.toml").unlink()
    assert main([*common, "release", "vm44", "--host", "host-c"]) == 2  # a typo of it
    assert "did you mean 'vm4'?" in capsys.readouterr().err
    assert main([*common, "release", "vm4", "--host", "host-c"]) == 0
    out = capsys.readouterr().out
    assert "released vm4 on host-c" in out
    assert "br-ens1f1" in out
    links = subprocess.run(["ip", "-n", lab.hosts["host-c"], "-o", "link"], check=True,
                           capture_output=True, text=True).stdout
    assert "br-ens1f1" not in links
