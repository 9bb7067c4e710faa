"""netmap's exceptions, grouped by what the user must do; each carries its exit code.

0 ok / compatible, 1 incompatible or drift, 2 bad input or usage, 3 apply failed (rolled back),
4 a bug in netmap: any other exception, so that a script never reads a crash as a verdict
(netmap/cli.py says "this is a bug"; --debug shows the traceback). Output that cannot be
written (a full disk) is 2, like a bad destination on the command line; a reader that went
away (`| head`) changes no exit code (netmap/support/output.py).
"""

from __future__ import annotations

from pathlib import Path

EXIT_OK = 0
EXIT_INCOMPATIBLE = 1
EXIT_INPUT = 2
EXIT_APPLY = 3
EXIT_BUG = 4


class NetmapError(Exception):
    """Base of every error netmap reports to a user (never shown as a traceback)."""

    exit_code = EXIT_INPUT

    def __init__(self, problem: str, *, fix: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix

    def __str__(self) -> str:
        return self.problem if not self.fix else f"{self.problem}\n  fix: {self.fix}"

    def as_dict(self) -> dict[str, object]:
        return {"error": type(self).__name__, "problem": self.problem, "fix": self.fix}


class InputError(NetmapError):
    """A mapping, guest file, XML document or command line is wrong: exit 2.

    Names the file, the key (dotted, TOML style) and the line where known.
    """

    exit_code = EXIT_INPUT

    def __init__(
        self,
        problem: str,
        *,
        file: str | Path | None = None,
        key: str | None = None,
        line: int | None = None,
        fix: str | None = None,
    ) -> None:
        super().__init__(problem, fix=fix)
        self.file = str(file) if file is not None else None
        self.key = key
        self.line = line

    @property
    def where(self) -> str:
        place = self.file or ""
        if self.file and self.line:
            place += f":{self.line}"
        if self.key:
            place += f": {self.key}" if place else self.key
        return place

    def __str__(self) -> str:
        head = f"{self.where}: {self.problem}" if self.where else self.problem
        return head if not self.fix else f"{head}\n  fix: {self.fix}"

    def as_dict(self) -> dict[str, object]:
        return {**super().as_dict(), "file": self.file, "key": self.key, "line": self.line}


class ApplyError(NetmapError):
    """Changing the host failed; every step already done was undone: exit 3.

    `step` is the plan step realize refused or failed at (a netmap.plan.Step), None when
    the failure is not one step's (a plan that cannot be made, a lock, the state file):
    a check finding names the step it predicts, so a caller can tell which one it was."""

    exit_code = EXIT_APPLY

    def __init__(self, problem: str, *, fix: str | None = None,
                 step: object | None = None) -> None:
        super().__init__(problem, fix=fix)
        self.step = step

    def as_dict(self) -> dict[str, object]:
        out = super().as_dict()
        if self.step is not None:
            kind, describe = getattr(self.step, "kind", None), getattr(self.step, "describe", None)
            out["step"] = {"kind": kind, "do": describe() if describe else str(self.step)}
        return out


class PrivilegeError(NetmapError):
    """This process lacks a privilege the command needs (a capability, access to netmap's
    state directory); nothing was changed: exit 2, a usage error — run it as root."""

    exit_code = EXIT_INPUT
