"""Private work folders for `lmi-compile run`, and cleaning up after runs that were killed.

A run's work folder (`$TMPDIR/lmi-run-*`, the fetched model and stage outputs: hundreds of MB)
is removed when the run ends, but a `kill -9` or a power cut skips that. Each folder records
its owner (pid and the process's start time, so a reused pid is not mistaken for it); the
next run removes every folder whose owner is gone.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

PREFIX = "lmi-run-"
OWNER = ".lmi-owner"


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), or '' where unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _alive(owner: str) -> bool:
    pid_text, _, started = owner.partition(":")
    try:
        pid = int(pid_text)
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (ValueError, PermissionError):
        return True  # unreadable, or someone else's live process: leave it
    return not started or _start_time(pid) in ("", started)


def clean_stale(parent: Path | None = None) -> list[Path]:
    """Remove the work folders of runs whose process no longer exists; return them."""
    parent = Path(parent or tempfile.gettempdir())
    removed = []
    for folder in parent.glob(f"{PREFIX}*"):
        marker = folder / OWNER
        try:
            owner = marker.read_text().strip()
        except OSError:
            continue  # not ours (or not readable): never remove what we did not mark
        if not _alive(owner):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def new_work_folder() -> Path:
    """A fresh work folder marked with this process as its owner (stale ones removed first)."""
    clean_stale()
    work = Path(tempfile.mkdtemp(prefix=PREFIX))
    (work / OWNER).write_text(f"{os.getpid()}:{_start_time(os.getpid())}")
    return work
