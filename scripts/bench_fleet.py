#!/usr/bin/env python3
"""Fleet-scale benchmark: netmap's queries over generated fleets of several shapes.

For each shape (scripts/gen_fleet.py SHAPES: standard, many small hosts, few huge hosts,
half the guests domain XML), in the same run:
  bare  python parsing every file of the fleet with tomli (XML: ElementTree), nothing else
  cold  netmap hosts-for GUEST --json, with an empty cache       target <= 1.3x bare
  warm  the same again, files unchanged, through the fleet cache  target <= 0.25x bare
  show, check, diff  warm `show HOST`, `check GUEST --to HOST`, `diff A B` (--json), each
        reading two hosts at most                                target <= 0.1x bare
and, as floors under those figures: `python -c pass`; a python that lists and stats
every file of the fleet (a load that can never be stale does at least that); and, under
the cold figure, netmap's own parser reading and checking every file split over two
processes, keeping nothing (a cold answer reports a broken file anywhere, so it does at
least that).

Then, on a copy of each shape, never stale: it edits a host (the same size and mtime, so
only the inode's change time tells), a guest, networks.toml and, where there are domain
XML guests, an XML guest's source host (whose bridge names the guest's network), and after
each edit compares every answer above (and hosts-for and check of an XML guest) through
the warm cache, at once and again once the edit has settled (2 s), with the same command
run with no cache at all. Each edit must change at least one answer, or it proves nothing.
Exits 1 on any difference.

    python scripts/bench_fleet.py [--shapes standard,small,huge,xml] [--scale 10000]
                                  [--rounds 3] [--table] [--keep DIR] [--no-stale-check]

--scale is the host count of the standard shape (the huge shape has a twentieth of it).
Every figure is the median of interleaved rounds of fresh processes started with
this interpreter from this checkout, in wall time (what the targets are about) and in CPU
time (user + system: on a loaded machine the steadier of the two). --table times the rich
table instead of --json.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import gen_fleet  # noqa: E402  (a sibling script, not a package)

GUEST = "vm000000"
BARE_PARSE = """
import os, sys, tomli
root = sys.argv[1]
paths = [os.path.join(root, "networks.toml")]
for sub in ("hosts", "guests"):
    folder = os.path.join(root, sub)
    paths += sorted(os.path.join(folder, n) for n in os.listdir(folder)
                    if n.endswith((".toml", ".xml")))
for path in paths:
    with open(path, "rb") as handle:
        if path.endswith(".xml"):
            import xml.etree.ElementTree as ET
            ET.parse(handle)
        else:
            tomli.load(handle)
"""
CLI = "from netmap.cli import run; run()"  # what the console script does
# The floors under the warm figures: an interpreter that does nothing, and one that also
# lists and stats every file of the fleet (what a load must do to never be stale).
NOTHING = "pass"
STAT_ALL = """
import os, sys
root = sys.argv[1]
os.stat(os.path.join(root, "networks.toml"))
for sub in ("hosts", "guests"):
    folder = os.path.join(root, sub)
    for name in sorted(os.listdir(folder)):
        os.stat(os.path.join(folder, name))
"""

# The floor under the cold figure: every file read, parsed and checked by netmap's own
# parser (what a cold answer must do: a broken file anywhere is reported), split over two
# processes, nothing kept, stored or answered. Domain-XML guests only parsed, as in the
# bare parse: their reader needs every host, which neither process has.
CHECK_ALL_2CPU = """
import os, sys
import xml.etree.ElementTree as ET
from pathlib import Path
from netmap.load import parse
root = Path(sys.argv[1])
networks = parse.load_networks(root / "networks.toml")
host_files, guest_files = parse.fleet_file_names(root)
child = os.fork()
mine = slice(0, None, 2) if child else slice(1, None, 2)
hosts = {}
for path in host_files[mine]:
    host = parse.load_host(path, networks)
    hosts[host.name] = host
for path in guest_files[mine]:
    if path.endswith(".xml"):  # its reader needs every host: the bare parse's part only
        ET.parse(path)
    else:
        parse.load_guest(path, networks, hosts)
if child:
    os.waitpid(child, 0)
os._exit(0)
"""


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NETMAP_", "PYTHON"))}
    env["PYTHONPATH"] = str(REPO)
    return env


def answer(argv: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of one netmap command."""
    done = subprocess.run([sys.executable, "-c", CLI, *argv], env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          check=False)
    return done.returncode, done.stdout, done.stderr


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system, the process and what it waited for)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *argv], env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode not in (0, 1):  # 1: no host can take the guest, a valid answer
        raise SystemExit(f"{' '.join(argv[2:])}: exit {done.returncode}\n"
                         f"{done.stderr.decode(errors='replace')}")
    return elapsed, cpu


def measure(root: Path, rounds: int, table: bool, env: dict[str, str], work: Path,
            ) -> dict[str, dict[str, float]]:
    command = ["-c", CLI, "--mappings", str(root), "hosts-for", GUEST]
    if not table:
        command.append("--json")
    first, last = (names := sorted(p.stem for p in (root / "hosts").glob("*.toml")))[0], \
        names[-1]
    others = {"show": ["show", first], "check": ["check", GUEST, "--to", last],
              "diff": ["diff", first, last]}
    warm_cache = work / f"cache-warm-{root.name}"
    warm_env = {**env, "NETMAP_CACHE_DIR": str(warm_cache)}
    timed(command, warm_env)  # fills the store, and the page cache for everyone
    times: dict[str, list[tuple[float, float]]] = {
        kind: [] for kind in ("bare", "python", "stat", "check2", "cold", "warm", *others)}
    for index in range(rounds):
        times["bare"].append(timed(["-c", BARE_PARSE, str(root)], env))
        times["python"].append(timed(["-c", NOTHING], env))
        times["stat"].append(timed(["-c", STAT_ALL, str(root)], env))
        times["check2"].append(timed(["-c", CHECK_ALL_2CPU, str(root)], env))
        cold_cache = work / f"cache-cold-{root.name}-{index}"
        times["cold"].append(timed(command, {**env, "NETMAP_CACHE_DIR": str(cold_cache)}))
        shutil.rmtree(cold_cache, ignore_errors=True)
        times["warm"].append(timed(command, warm_env))
        for kind, argv in others.items():
            times[kind].append(timed(["-c", CLI, "--mappings", str(root), *argv, "--json"],
                                     warm_env))
    return {clock: {kind: statistics.median(pair[column] for pair in values)
                    for kind, values in times.items()}
            for column, clock in enumerate(("wall", "cpu"))}


SETTLE = 2.2  # files younger than the store's racy window (2 s) are never stored


def queries(root: Path) -> dict[str, list[str]]:
    """Every answer the benchmark times, and hosts-for and check of an XML guest."""
    names = sorted(p.stem for p in (root / "hosts").glob("*.toml"))
    first, last = names[0], names[-1]
    asked = {"hosts-for": ["hosts-for", GUEST], "show": ["show", first],
             "check": ["check", GUEST, "--to", last], "diff": ["diff", first, last]}
    xml = sorted((root / "guests").glob("*.xml"))
    if xml:
        asked |= {"hosts-for xml": ["hosts-for", xml[0].stem],
                  "check xml": ["check", xml[0].stem, "--to", last]}
    return {label: ["--mappings", str(root), *argv, "--json"]
            for label, argv in asked.items()}


def edits(root: Path) -> list[tuple[str, Callable[[], None]]]:
    """The edits the never-stale check makes, each a change some answer must show."""
    names = sorted(p.stem for p in (root / "hosts").glob("*.toml"))
    guest = root / "guests" / f"{GUEST}.toml"
    first_network = guest.read_text().split('network = "', 1)[1].split('"', 1)[0]

    def host_same_size_and_mtime() -> None:
        # the destination of `check`: its jumbo uplink is no longer jumbo
        path = root / "hosts" / f"{names[-1]}.toml"
        before = path.stat()
        path.write_text(path.read_text().replace("mtu = 9000", "mtu = 8000", 1))
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))

    def guest_moves() -> None:
        text = guest.read_text()
        old = text.split('host = "', 1)[1].split('"', 1)[0]
        guest.write_text(text.replace(f'host = "{old}"', f'host = "{names[0]}"', 1))

    def network_mtu() -> None:
        # above every uplink's MTU: no host can carry the guest's first network any more
        path = root / "networks.toml"
        header = f"[networks.{first_network}]\n"
        head, rest = path.read_text().split(header, 1)
        section, _, tail = rest.partition("\n[")
        section = re.sub(r"^mtu = \d+$", "mtu = 9200", section, flags=re.MULTILINE)
        if "mtu = 9200" not in section:
            section = f"mtu = 9200\n{section}"
        path.write_text(f"{head}{header}{section}" + (f"\n[{tail}" if tail else ""))

    made = [("a host, same size and mtime", host_same_size_and_mtime),
            ("a guest moved to another host", guest_moves),
            (f"networks.toml: {first_network}'s MTU", network_mtu)]
    xml = sorted((root / "guests").glob("*.xml"))
    if xml:
        source = xml[0].read_text().split("host='", 1)[1].split("'", 1)[0]
        bridge = xml[0].read_text().split("<source bridge='br-", 1)[1].split("'", 1)[0]

        def xml_source_host() -> None:
            # the bridge of the XML guest's NIC now carries no network on its host
            path = root / "hosts" / f"{source}.toml"
            text = path.read_text()
            other = next(name for name in text.split("[uplinks.")[1:]
                         if not name.startswith(f"{bridge}]")).split("]", 1)[0]
            path.write_text(text.replace(f'mode = "bridge"\nuplink = "{bridge}"',
                                         f'mode = "bridge"\nuplink = "{other}"', 1))

        made.append(("an XML guest's source host", xml_source_host))
    return made


def stale_answers(root: Path, env: dict[str, str], work: Path) -> list[str]:
    """Edit a copy of the fleet as `edits` says; after each edit, every warm answer must be
    the answer of a run with no cache at all. What differed, as lines."""
    copy = work / f"stale-{root.name}"
    shutil.copytree(root, copy)
    asked = queries(copy)
    warm = {**env, "NETMAP_CACHE_DIR": str(work / f"cache-stale-{root.name}")}
    none = {**env, "NETMAP_CACHE_DIR": "/proc/netmap-bench-no-cache"}  # never writable
    problems = []
    time.sleep(SETTLE)
    before = {label: answer(argv, warm) for label, argv in asked.items()}
    for what, edit in edits(copy):
        edit()
        truth = {label: answer(argv, none) for label, argv in asked.items()}
        if truth == before:
            problems.append(f"{root.name}: editing {what} changed no answer")
        for when in ("at once", "settled"):
            if when == "settled":
                time.sleep(SETTLE)
                for argv in asked.values():
                    answer(argv, warm)  # stores what changed
            for label, argv in asked.items():
                if answer(argv, warm) != truth[label]:
                    problems.append(f"{root.name}: after editing {what}, {label} {when} "
                                    "differs from a run with no cache")
        before = truth
    shutil.rmtree(copy, ignore_errors=True)
    return problems


TARGETS = {"cold": 1.3, "warm": 0.25, "show": 0.1, "check": 0.1, "diff": 0.1}


def table(shapes: list[str], results: dict[str, dict[str, float]]) -> str:
    """Every figure of every shape side by side, as a ratio to that shape's bare parse,
    with the floors under them: `python -c pass`, and that plus a stat of every file."""
    lines = ["ratio to the bare parse (seconds in brackets); targets: " +
             ", ".join(f"{kind} <= {target}x" for kind, target in TARGETS.items()),
             "floors: python = `python -c pass`, stat = python listing and stating every file,",
             "        check2 = netmap parsing and checking every file on 2 CPUs, keeping nothing"]
    header = ("shape", "bare parse", "python", "stat", "check2", *TARGETS)
    rows = [header]
    for shape in shapes:
        r = results[shape]
        floors = [f"{r[kind] / r['bare']:.2f}x" for kind in ("python", "stat", "check2")]
        cells = [f"{r[kind] / r['bare']:.2f}x ({r[kind]:.2f}) "
                 f"{'ok' if r[kind] / r['bare'] <= target else 'MISSED'}"
                 for kind, target in TARGETS.items()]
        rows.append((shape, f"{r['bare']:.2f} s", *floors, *cells))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
              for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=",".join(gen_fleet.SHAPES),
                        help="fleet shapes (scripts/gen_fleet.py SHAPES)")
    parser.add_argument("--scale", type=int, default=10_000,
                        help="hosts of the standard shape; the others scale with it")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--table", action="store_true", help="time the rich table, not --json")
    parser.add_argument("--keep", type=Path, help="generate the fleets here and keep them")
    parser.add_argument("--no-stale-check", action="store_true",
                        help="skip the never-stale check after the timings")
    args = parser.parse_args(argv)
    shapes = args.shapes.split(",")
    env = environment()
    with tempfile.TemporaryDirectory(prefix="nmF-fleet-") as scratch:
        work = Path(scratch)
        where = args.keep or work
        roots = {}
        for shape in shapes:
            roots[shape] = where / f"fleet-{shape}"
            gen_fleet.generate_shape(roots[shape], shape, args.scale)
        # Files younger than the cache's racy window (2 s) are, rightly, never cached.
        time.sleep(2.2)
        results = {shape: measure(roots[shape], args.rounds, args.table, env, work)
                   for shape in shapes}
        problems = [] if args.no_stale_check else [
            problem for shape in shapes for problem in stale_answers(roots[shape], env, work)]
    output = "rich table" if args.table else "--json"
    print(f"netmap hosts-for {GUEST} {output}; median of {args.rounds} rounds; "
          f"python {sys.version.split()[0]}; {os.cpu_count()} CPUs; scale {args.scale}")
    for clock in ("wall", "cpu"):
        print(f"\n{clock} time" + (" (user + system; the cold run's second process "
                                    "counts too)" if clock == "cpu" else ""))
        print(table(shapes, {shape: results[shape][clock] for shape in shapes}))
    if not args.no_stale_check:
        print("\nnever stale: a host (same size and mtime), a guest, networks.toml and an "
              "XML guest's source host edited; every warm answer, at once and settled, "
              "against a run with no cache: " + ("ok" if not problems else "DIFFERS"))
        for problem in problems:
            print(f"  {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
