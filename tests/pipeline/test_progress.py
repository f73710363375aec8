"""Progress as a log reader sees it (plain lines, no escape codes, throttled where fine-grained),
and llm-compressor's own tqdm bars passed on to it."""

from __future__ import annotations

import io

import tqdm
from rich.console import Console

from lmi_runtime import progress as progress_module
from lmi_runtime.progress import progress
from lmi_compile.quantize.library import quiet


def _plain() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=False), out


def test_plain_lines_one_per_step_with_count_elapsed_and_eta():
    console, out = _plain()
    with progress(console=console) as shown:
        task = shown.task("quantize awq", total=4)
        for i in range(4):
            task.update(completed=i + 1, note=f"layer {i + 1}/4")
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and "\x1b" not in out.getvalue()
    assert lines[0].startswith("quantize awq: 1/4 (25%), layer 1/4, 0:00 elapsed, ETA ")
    assert lines[-1].startswith("quantize awq: 4/4 (100%)") and "ETA" not in lines[-1]


def test_byte_progress_is_throttled_but_always_ends_with_a_line(monkeypatch):
    monkeypatch.setattr(progress_module, "PLAIN_EVERY_S", 3600)
    console, out = _plain()
    with progress(console=console) as shown:
        task = shown.task("uploading 3 objects", total=3_000_000, unit="bytes")
        for _ in range(3):
            task.advance(1_000_000)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("uploading 3 objects: 3.0 MB/3.0 MB (100%), ") and "/s" in lines[0]


def test_disabled_progress_prints_nothing():
    console, out = _plain()
    with progress(enabled=False, console=console) as shown:
        shown.task("x", total=2).done()
    assert out.getvalue() == ""


def test_silenced_tqdm_bars_report_each_item_after_its_work():
    seen = []
    with quiet(on_step=lambda desc, done, total: seen.append((desc, done, total))):
        for _ in tqdm.tqdm(range(3), desc="(2/31): Calibrating"):
            seen.append("work")
    assert seen == ["work", ("(2/31): Calibrating", 1, 3), "work", ("(2/31): Calibrating", 2, 3),
                    "work", ("(2/31): Calibrating", 3, 3)]
    assert list(tqdm.tqdm(range(2))) == [0, 1]  # restored afterwards


def test_a_terminal_gets_rich_bars_with_the_byte_rate():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    with progress(console=console) as shown:
        task = shown.task("downloading 2 objects", total=2_000_000, unit="bytes")
        task.advance(2_000_000)
    text = out.getvalue()
    assert "\x1b[" in text and "downloading 2 objects" in text and "2.0 MB/2.0 MB" in text and "/s" in text
