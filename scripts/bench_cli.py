#!/usr/bin/env python3
"""Cold-start benchmark of the netmap command line, as ratios against baselines measured
in the same run (so the figures hold on any machine):

  netmap check vm1 --to host-b      vs  python -c "import networkx, rich.console, tomli"
                                         target <= 1.25x
  netmap --version, netmap --help,  vs  python -c pass                target <= 3x
  netmap-libvirt-hook GUEST started begin -   (libvirt runs it on every guest start/stop)

and asserts, with `python -X importtime`, that the fast paths (--version, --help, the hook's
pass-through) import none of networkx, rich, pyroute2.

    python scripts/bench_cli.py [--rounds 15] [--strict]

Every process is started the way the installed console script starts it (import the entry
point, call it), from this checkout, with the same interpreter as the baselines. Rounds
interleave baseline and command, and the median is taken, so a busy machine skews both
alike. Exit status: 1 when a fast path imports a heavy module (or, with --strict, when a
ratio misses its target), else 0.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("networkx", "rich", "pyroute2")
BARE_IMPORT = "import networkx, rich.console, tomli"


def entry(module: str, function: str = "main") -> str:
    """What a console script does: import the entry point, exit with its result."""
    return f"import sys; from {module} import {function}; sys.exit({function}())"


@dataclass
class Case:
    what: str
    argv: list[str]  # after the interpreter
    baseline: str  # python -c code of the baseline
    target: float
    fast_path: bool  # must import none of HEAVY
    want_exit: int = 0


def cases() -> list[Case]:
    mappings = str(REPO / "mappings")
    cli = entry("netmap.cli", "run")  # the console script
    out = [
        Case("netmap check vm1 --to host-b", ["-c", cli, "--mappings", mappings, "check", "vm1",
                                              "--to", "host-b"], BARE_IMPORT, 1.25, False),
        Case("netmap --version", ["-c", cli, "--version"], "pass", 3.0, True),
        Case("netmap --help", ["-c", cli, "--help"], "pass", 3.0, True),
    ]
    if (REPO / "netmap" / "libvirt" / "hook.py").is_file():
        out.append(Case("libvirt hook pass-through (started)",
                        ["-c", entry("netmap.libvirt.hook"), "vm1", "started", "begin", "-"],
                        "pass", 3.0, True))
    return out


def environment(cache: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NETMAP_", "PYTHON"))}
    env["PYTHONPATH"] = str(REPO)
    env["NETMAP_CACHE_DIR"] = cache  # never the user's cache, and a cold one
    return env


def run_once(argv: list[str], env: dict[str, str]) -> tuple[float, int]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *argv], env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start, done.returncode


def heavy_imports(argv: list[str], env: dict[str, str]) -> list[str]:
    """Top-level packages among HEAVY that the process imports (python -X importtime)."""
    done = subprocess.run([sys.executable, "-X", "importtime", *argv], env=env,
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, check=False)
    found = set()
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            module = line.rsplit("|", 1)[1].strip()
            top = module.split(".", 1)[0]
            if top in HEAVY:
                found.add(top)
    return sorted(found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 when a ratio misses its target")
    args = parser.parse_args(argv)
    failed = False
    rows = []
    with tempfile.TemporaryDirectory(prefix="nmF-bench-") as cache:
        env = environment(cache)
        for case in cases():
            _, code = run_once(case.argv, env)  # warm the page cache and .pyc files
            if code != case.want_exit:
                print(f"{case.what}: exit {code}, expected {case.want_exit}", file=sys.stderr)
                failed = True
            run_once(["-c", case.baseline], env)
            base, mine = [], []
            for _ in range(args.rounds):
                base.append(run_once(["-c", case.baseline], env)[0])
                mine.append(run_once(case.argv, env)[0])
            b, m = statistics.median(base), statistics.median(mine)
            ratio = m / b
            ok = ratio <= case.target
            heavy = heavy_imports(case.argv, env) if case.fast_path else []
            if heavy:
                print(f"FAIL {case.what}: imports {', '.join(heavy)} on a fast path",
                      file=sys.stderr)
                failed = True
            if args.strict and not ok:
                failed = True
            baseline = f'python -c "{case.baseline}"'
            rows.append((case.what, baseline, f"{b * 1000:.0f} ms", f"{m * 1000:.0f} ms",
                         f"{ratio:.2f}x", f"<= {case.target:g}x", "ok" if ok else "MISSED",
                         "none" if case.fast_path and not heavy else
                         (", ".join(heavy) if heavy else "-")))
    header = ("what", "baseline", "baseline t", "netmap t", "ratio", "target", "",
              "heavy imports")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = (str(cell).ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())
    print(f"(median of {args.rounds} interleaved runs each; python {sys.version.split()[0]}; "
          f"{os.cpu_count()} CPUs)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
