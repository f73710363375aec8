"""Progress for every long stage: fetch, quantize, evaluation, compile, publish.

On a terminal, rich bars with counts (or bytes and rate) and an estimate of the time left. When
stderr is not a terminal (a log file, CloudWatch), plain lines without escape codes, one per
step, at most one every `PLAIN_EVERY_S` seconds for fine-grained tasks (bytes, samples), plus
the final one. One module so that every stage reports the same way.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress as RichProgress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

PLAIN_EVERY_S = 5.0
Unit = Literal["steps", "bytes"]


def human_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def human_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


@dataclass
class Task:
    """One long step. `advance`/`update` move it; `note` adds detail (e.g. calibration samples)."""

    label: str
    total: float | None
    unit: Unit
    coarse: bool  # each step is worth a plain line (layers, windows); else throttled (bytes)
    _sink: "_Sink" = field(repr=False)
    completed: float = 0
    note: str = ""
    started: float = field(default_factory=time.monotonic)
    _id: TaskID | None = None
    _last_line: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def advance(self, n: float = 1, note: str | None = None) -> None:
        with self._lock:  # hashing threads advance one task together
            self.update(completed=self.completed + n, note=note)

    def update(self, completed: float | None = None, total: float | None = None, note: str | None = None) -> None:
        if total is not None:
            self.total = total
        if note is not None:
            self.note = note
        step = completed is not None and completed != self.completed
        if completed is not None:
            self.completed = completed
        self._sink.changed(self, step)

    def done(self) -> None:
        if self.total is None:
            self.total = max(self.completed, 1)
        self.update(completed=self.total)

    def eta_s(self) -> float | None:
        """Seconds left at the average rate so far; None until there is a rate."""
        elapsed = time.monotonic() - self.started
        if not self.total or self.completed <= 0 or elapsed <= 0:
            return None
        return max(0.0, (self.total - self.completed) * elapsed / self.completed)

    def line(self) -> str:
        """The plain-text form: `label: 3/30 (10%), note, 0:45 elapsed, ETA 6:30`."""
        elapsed = time.monotonic() - self.started
        count = self._count()
        if self.total:
            count += f" ({self.completed / self.total:.0%})"
        parts = [f"{self.label}: {count}"]
        if self.unit == "bytes" and elapsed > 0:
            parts.append(f"{human_bytes(self.completed / elapsed)}/s")
        if self.note:
            parts.append(self.note)
        parts.append(f"{human_seconds(elapsed)} elapsed")
        eta = self.eta_s()
        if eta is not None and self.completed < (self.total or 0):
            parts.append(f"ETA {human_seconds(eta)}")
        return ", ".join(parts)

    def _count(self) -> str:
        show = human_bytes if self.unit == "bytes" else (lambda v: f"{v:.0f}")
        return f"{show(self.completed)}/{show(self.total)}" if self.total else show(self.completed)


class _Sink:
    """Where a task's changes go: rich bars, plain lines, or nowhere."""

    def changed(self, task: Task, step: bool) -> None: ...
    def added(self, task: Task) -> None: ...


class _RichSink(_Sink):
    def __init__(self, bars: RichProgress):
        self.bars = bars

    def added(self, task: Task) -> None:
        task._id = self.bars.add_task(task.label, total=task.total, detail="")

    def changed(self, task: Task, step: bool) -> None:
        detail = task._count() + (f"  {task.note}" if task.note else "")
        if task.unit == "bytes":
            elapsed = time.monotonic() - task.started
            detail += f"  {human_bytes(task.completed / elapsed)}/s" if elapsed > 0 else ""
        self.bars.update(task._id, completed=task.completed, total=task.total, detail=detail)


class _PlainSink(_Sink):
    def __init__(self, stream: TextIO):
        self.stream = stream

    def added(self, task: Task) -> None:
        task._last_line = task.started  # a throttled task's first line comes after PLAIN_EVERY_S

    def changed(self, task: Task, step: bool) -> None:
        now = time.monotonic()
        finished = task.total is not None and task.completed >= task.total
        due = task.coarse or now - task._last_line >= PLAIN_EVERY_S
        if (step and due) or finished:
            if finished and task._last_line < 0:
                return  # the final line was printed already
            task._last_line = -1.0 if finished else now
            print(task.line(), file=self.stream, flush=True)


class _NoSink(_Sink):
    pass


class Progress:
    """Hands out tasks; made by `progress()`."""

    def __init__(self, sink: _Sink):
        self._sink = sink

    def task(self, label: str, total: float | None = None, unit: Unit = "steps", coarse: bool = True) -> Task:
        task = Task(label=label, total=total, unit=unit, coarse=coarse and unit == "steps", _sink=self._sink)
        self._sink.added(task)
        return task


@contextmanager
def progress(enabled: bool = True, console: Console | None = None, transient: bool = False) -> Iterator[Progress]:
    """rich bars on a terminal, plain lines otherwise (both on stderr), nothing when disabled."""
    console = console or Console(stderr=True)
    if not enabled:
        yield Progress(_NoSink())
    elif not console.is_terminal:
        yield Progress(_PlainSink(console.file if console.file is not None else sys.stderr))
    else:
        columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[detail]}"),
                   TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
        with RichProgress(*columns, console=console, transient=transient) as bars:
            yield Progress(_RichSink(bars))
