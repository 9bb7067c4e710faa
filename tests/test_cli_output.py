"""What the command line prints, and how it ends, where the output goes somewhere awkward:
a closed pipe, a full disk, a closed stdout, an ASCII-only locale, an 80-column terminal,
NO_COLOR; and the exit codes of a bug, a mistyped command and --help."""

from __future__ import annotations

import argparse
import io
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import EXAMPLE_MAPPINGS, REPO

from netmap.cli import COMMANDS, command_parser, main

# (argv, exit code when the output reaches its reader)
COMMAND_LINES = [
    (["show"], 0),
    (["check", "vm1", "--to", "host-c"], 1),
    (["check", "vm2", "--to", "host-c"], 0),
    (["hosts-for", "vm1"], 0),
    (["hosts-for", "vm1", "--json"], 0),
    (["diff", "host-a", "host-c"], 0),
    (["plan", "vm2", "--host", "host-b"], 0),
    (["drain", "host-a"], 0),
    (["drain", "host-a", "--emit-commands"], 0),
    (["libvirt-networks", "--host", "host-a"], 0),
]
IDS = [" ".join(argv) for argv, _ in COMMAND_LINES]


def netmap_process(argv: list[str]) -> list[str]:
    """`python -m netmap`: the console script's own path (cli.run, finish.exit_now)."""
    return [sys.executable, "-m", "netmap", "--mappings", str(EXAMPLE_MAPPINGS), *argv]


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONIOENCODING", "NO_COLOR", "FORCE_COLOR", "COLUMNS")}
    return {**env, "PYTHONPATH": str(REPO), **extra}


# --- where stdout goes -------------------------------------------------------------------------
@pytest.mark.parametrize(("argv", "code"), COMMAND_LINES, ids=IDS)
def test_a_closed_pipe_is_quiet_and_keeps_the_exit_code(argv: list[str], code: int) -> None:
    """`netmap ... | head` with the reader gone before the first byte: no word on stderr,
    and the exit code the command would have had (a script with pipefail keeps the verdict)."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write gets EPIPE
    try:
        done = subprocess.run(netmap_process(argv), stdout=write_end, stderr=subprocess.PIPE,
                              env=child_env(), cwd=REPO, text=True, timeout=60, check=False)
    finally:
        os.close(write_end)
    assert done.stderr == ""
    assert done.returncode == code


@pytest.mark.parametrize("how", ["full", "closed"])
@pytest.mark.parametrize(("argv", "code"), [COMMAND_LINES[0], COMMAND_LINES[1], COMMAND_LINES[4]],
                         ids=[IDS[0], IDS[1], IDS[4]])
def test_output_that_cannot_be_written_is_an_error(argv: list[str], code: int, how: str) -> None:
    """`>/dev/full` and `>&-`: a sentence on stderr and exit 2, never a traceback."""
    command = " ".join(f"'{a}'" for a in netmap_process(argv))
    redirect = ">/dev/full" if how == "full" else ">&-"
    done = subprocess.run(["sh", "-c", f"exec {command} {redirect}"], capture_output=True,
                          env=child_env(), cwd=REPO, text=True, timeout=60, check=False)
    assert "Traceback" not in done.stderr
    assert done.returncode == 2
    assert "netmap: error: cannot write the output" in done.stderr
    assert f"ended with exit code {code}" in done.stderr
    reason = "No space left on device" if how == "full" else "standard output is closed"
    assert reason in done.stderr


@pytest.mark.parametrize("locale_env", [{"LC_ALL": "C", "PYTHONUTF8": "0"},
                                        {"PYTHONIOENCODING": "ascii"}],
                         ids=["LC_ALL=C", "PYTHONIOENCODING=ascii"])
@pytest.mark.parametrize(("argv", "code"), COMMAND_LINES, ids=IDS)
def test_an_ascii_only_stream_gets_ascii(argv: list[str], code: int,
                                         locale_env: dict[str, str]) -> None:
    done = subprocess.run(netmap_process(argv), capture_output=True,
                          env=child_env(COLUMNS="100", **locale_env), cwd=REPO,
                          timeout=60, check=False)
    assert b"Traceback" not in done.stderr
    assert done.returncode == code, done.stderr.decode()
    assert done.stdout.isascii()
    out = done.stdout.decode()
    if argv[0] == "check":  # netmap's arrows and rich's boxes, each of the same width
        assert "prod > macvtap-vepa > eth0 >" in out
        assert "| NIC |" in out
        assert "\n+--" in out
    if argv[:2] == ["check", "vm1"]:
        assert "\nx NETWORK_UNBOUND NIC 1" in out
    if argv[0] == "diff":  # the marker column, in ASCII
        assert re.search(r"^\| ! +\| prod ", out, re.M)
        assert re.search(r"^\| {2,}\| mgmt ", out, re.M)


# --- exit codes -------------------------------------------------------------------------------
def test_a_bug_exits_4_and_says_so(capsys, monkeypatch) -> None:
    from netmap.query import views

    def broken(*_args, **_kwargs):
        raise TypeError("an unexpected None")

    monkeypatch.setattr(views, "show_data", broken)
    code = main(["--mappings", str(EXAMPLE_MAPPINGS), "show"])
    err = capsys.readouterr().err
    assert code == 4
    assert "internal error: TypeError: an unexpected None" in err
    assert "this is a bug" in err
    assert "--debug" in err
    with pytest.raises(TypeError):  # --debug shows the traceback
        main(["--mappings", str(EXAMPLE_MAPPINGS), "--debug", "show"])


def test_exit_codes_are_documented_alike() -> None:
    """errors.py, the help epilog and README name the same codes, the bug's among them."""
    from netmap import errors
    from netmap.cli import EXIT_CODES

    assert errors.EXIT_BUG == 4
    assert "4 a bug in netmap" in " ".join(EXIT_CODES.split())
    readme = " ".join((REPO / "README.rst").read_text().split())
    assert "3 apply failed (and was rolled back), 4 a bug in netmap" in readme


def test_bare_netmap_shows_usage_and_the_commands(capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        main([])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: netmap")
    assert "the following arguments are required" not in err
    assert all(re.search(rf"^  {re.escape(name)} ", err, re.M) for name in COMMANDS)
    assert "name a COMMAND" in err


@pytest.mark.parametrize(("typed", "meant"), [("chek", "check"), ("relase", "release"),
                                              ("hostsfor", "hosts-for")])
def test_a_mistyped_command_gets_a_did_you_mean(capsys, typed: str, meant: str) -> None:
    with pytest.raises(SystemExit) as caught:
        main([typed, "vm1"])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert f"unknown command {typed!r}; did you mean {meant!r}?" in err


def test_help_is_exit_0_even_through_a_closed_pipe() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(netmap_process(["--help"]), stdout=write_end,
                              stderr=subprocess.PIPE, env=child_env(), text=True, timeout=60,
                              check=False)
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (0, "")


# --- help -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(COMMANDS))
def test_help_names_only_options_the_command_has_and_explains_each(name: str) -> None:
    parser, _ = command_parser(name)
    text = parser.format_help()
    offered = {option for action in parser._actions for option in action.option_strings
               if action.help != argparse.SUPPRESS}  # what --help shows
    mentioned = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", text))
    assert mentioned <= offered, f"netmap {name} --help names {mentioned - offered}"
    unexplained = [action.option_strings for action in parser._actions
                   if action.option_strings and not action.help]
    assert not unexplained, f"netmap {name}: no help for {unexplained}"


def test_libvirt_hook_help_exits_0_and_names_the_readme_path() -> None:
    code = "import sys; from netmap.libvirt.hook import main; sys.exit(main(sys.argv[1:]))"
    for flag in ("--help", "-h"):
        done = subprocess.run([sys.executable, "-c", code, flag], capture_output=True,
                              text=True, env=child_env(), timeout=60, check=False)
        assert done.returncode == 0
        assert done.stderr == ""
        path = re.search(r"/etc/libvirt/hooks/qemu\.d/\S+", done.stdout)
        assert path, done.stdout
        assert f"cat > {path.group(0)} <<" in (REPO / "README.rst").read_text()
    done = subprocess.run([sys.executable, "-c", code, "vm1"], capture_output=True, text=True,
                          env=child_env(), timeout=60, check=False)
    assert done.returncode == 2
    assert "50-netmap" in done.stderr


def test_readme_documents_every_option() -> None:
    readme = (REPO / "README.rst").read_text()
    for name in COMMANDS:
        parser, _ = command_parser(name)
        for action in parser._actions:
            for option in action.option_strings:
                if option.startswith("--") and option not in ("--help", "--debug",
                                                              "--mappings", "--json"):
                    assert option in readme, f"README does not mention netmap {name} {option}"


# --- layout -----------------------------------------------------------------------------------
def rendered(capsys, monkeypatch, argv: list[str], **env: str) -> tuple[int, str]:
    for key in ("NO_COLOR", "FORCE_COLOR"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("COLUMNS", "80")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code = main(["--mappings", str(EXAMPLE_MAPPINGS), *argv])
    return code, capsys.readouterr().out


@pytest.mark.parametrize(("argv", "code"), [
    *COMMAND_LINES, (["check", "vm3", "--to", "host-d"], 1),
    (["check", "vm2", "--to", "host-d"], 1)],
    ids=[*IDS, "check vm3 --to host-d", "check vm2 --to host-d"])
def test_80_columns_no_trailing_spaces_nothing_wider(capsys, monkeypatch, argv: list[str],
                                                      code: int) -> None:
    got, out = rendered(capsys, monkeypatch, argv)
    assert got == code
    from rich.cells import cell_len

    for line in out.splitlines():
        assert line == line.rstrip(), f"trailing spaces: {line!r}"
        # shell commands, JSON, XML and plan steps are printed whole, to be copied
        if argv[0] in ("show", "check", "diff") or argv in (["drain", "host-a"],
                                                             ["hosts-for", "vm1"]):
            assert cell_len(line) <= 80, line


def findings_of(argv: list[str]):
    from netmap.load import load_fleet
    from netmap.query.graph import build_graph
    from netmap.rules.check import check_migration

    fleet = load_fleet(EXAMPLE_MAPPINGS)
    return check_migration(build_graph(fleet), argv[0], argv[1]).findings


@pytest.mark.parametrize("pair", [("vm1", "host-c"), ("vm2", "host-d"), ("vm2", "host-c")])
@pytest.mark.parametrize("width", [80, 50])
def test_findings_wrap_with_a_hanging_indent_and_nothing_cut(pair: tuple[str, str],
                                                             width: int) -> None:
    from rich.console import Console

    from netmap.render import MARK, findings_list

    findings = findings_of(list(pair))
    assert findings
    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(findings_list(findings))
    blocks = re.split(rf"^(?=[{''.join(MARK.values())}] )", out.getvalue(), flags=re.M)[1:]
    assert len(blocks) == len(findings)
    for finding, block in zip(findings, blocks, strict=True):
        lines = block.splitlines()
        fix_at = next(n for n, line in enumerate(lines) if line.startswith("    fix: "))
        assert all(line.startswith("  ") and not line.startswith("   ")
                   for line in lines[1:fix_at]), block  # the message, under its first word
        assert all(line.startswith(" " * 9) and line[9] != " " for line in lines[fix_at + 1:])
        assert all(line == line.rstrip() and len(line) <= width for line in lines)
        # every character, in order (a word longer than a line is folded, not cut)
        assert "".join("".join(lines[:fix_at])[2:].split()) == "".join(
            f"{finding.code} {finding.message}".split())
        assert "".join("".join(lines[fix_at:]).split()) == "".join(
            f"fix: {finding.hint}".split())


def test_segment_unreachable_fix_is_a_whole_sentence() -> None:
    (finding,) = [f for f in findings_of(["vm2", "host-d"]) if f.code == "SEGMENT_UNREACHABLE"]
    assert not finding.hint.endswith(("that is", " is"))
    assert finding.hint.endswith("reaches dc1-fabric")


@pytest.mark.parametrize(("argv", "code"), COMMAND_LINES, ids=IDS)
def test_no_color_means_no_escape_at_all_even_when_forced(capsys, monkeypatch, argv: list[str],
                                                         code: int) -> None:
    got, out = rendered(capsys, monkeypatch, argv, FORCE_COLOR="1", NO_COLOR="1")
    assert got == code
    assert "\x1b" not in out


def test_forced_colour_without_no_color_is_styled(capsys, monkeypatch) -> None:
    """The other side of the NO_COLOR test: it would see styles if there were any."""
    _, out = rendered(capsys, monkeypatch, ["check", "vm1", "--to", "host-c"], FORCE_COLOR="1")
    assert "\x1b[" in out


def test_diff_marks_differing_rows_without_colour(capsys, monkeypatch) -> None:
    code, out = rendered(capsys, monkeypatch, ["diff", "host-a", "host-c"], NO_COLOR="1")
    assert code == 0
    marked = {m.group(2) for m in re.finditer(r"^│ (≠| ) │ (\S+) ", out, re.M) if m.group(1) != " "}
    plain = {m.group(2) for m in re.finditer(r"^│ (≠| ) │ (\S+) ", out, re.M) if m.group(1) == " "}
    assert marked == {"prod", "storage", "tenant-blue"}
    assert plain == {"mgmt"}


def test_readme_check_example_is_what_check_prints(capsys, monkeypatch) -> None:
    readme = (REPO / "README.rst").read_text()
    block = re.search(r"\n( +)\$ netmap check vm2 --to host-c\n(.*?)\n\n", readme, re.S)
    assert block
    shown = textwrap.dedent(block.group(1) + "$\n" + block.group(2)).split("\n", 1)[1]
    code, out = rendered(capsys, monkeypatch, ["check", "vm2", "--to", "host-c"], NO_COLOR="1")
    assert code == 0
    assert out.rstrip("\n") == shown.rstrip("\n")


def test_closed_stdout_path_of_exit_now(tmp_path: Path) -> None:
    """finish.exit_now with stdout None (a process started with fd 1 closed)."""
    code = ("import sys; sys.stdout = None\n"
            "from netmap.support.finish import exit_now\nexit_now(5)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=child_env(), timeout=60, check=False)
    assert done.returncode == 5
    assert done.stderr == ""
