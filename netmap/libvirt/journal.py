"""The journal of a drain (or one migration) being carried out, under the state directory.

Written atomically before and after every step of every move, so that after Ctrl-C or a
crash `--resume` knows which guests moved, which may be moving, and which never started,
and `--abort` knows what to tidy. A move's status only goes forward:

    pending -> migrating -> moved -> released
                        \\-> failed (the guest stays on its source)
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from netmap.errors import InputError
from netmap.state import state_dir

PENDING, MIGRATING, MOVED, RELEASED, FAILED = (
    "pending", "migrating", "moved", "released", "failed")
FINISHED = (RELEASED, FAILED)


@dataclass
class JournalMove:
    guest: str
    source: str
    dest: str
    status: str = PENDING
    message: str = ""


class Journal:
    """One file per drained host (or migrated guest): drain-HOST.json / migrate-GUEST.json."""

    def __init__(self, path: Path, moves: list[JournalMove]) -> None:
        self.path, self.moves = path, moves
        self._lock = threading.Lock()

    @staticmethod
    def path_for(kind: str, name: str, directory: str | None = None) -> Path:
        return state_dir(directory) / f"{kind}-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.json"

    @classmethod
    def read(cls, path: Path) -> Journal | None:
        try:
            data = json.loads(path.read_text())
            return cls(path, [JournalMove(**move) for move in data["moves"]])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise InputError(f"cannot read the journal: {err}", file=path,
                             fix="inspect it; remove it once every guest it names runs where "
                             "`netmap locate` says it should") from err

    def update(self, move: JournalMove, status: str, message: str = "") -> None:
        with self._lock:
            move.status, move.message = status, message
            self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        with os.fdopen(fd, "w") as out:
            json.dump({"moves": [asdict(move) for move in self.moves]}, out, indent=1)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    @property
    def unfinished(self) -> list[JournalMove]:
        return [move for move in self.moves if move.status not in FINISHED]
