"""What verify-before-load costs at lmi-serve start-up: the artifact's files checked against its
manifest cold (every sha256 computed), cached (digests reused by file identity, as on a restart)
and skipped (--skip-verify: presence, sizes and extras only), against the same run's baseline of
reading the weights once (what loading costs anyway).

    python scripts/verify_cost.py artifacts/smollm2-int8 [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "runtime"), str(REPO / "compile")]

from lmi_runtime.locate import inspect_folder  # noqa: E402


def timed(fn, repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def read_all(paths: list[Path]) -> None:
    for path in paths:
        with open(path, "rb", buffering=0) as handle:
            while handle.read(8 << 20):
                pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    weights = inspect_folder(args.artifact, verify=False).weights
    size = sum(w.stat().st_size for w in weights)
    read_all(weights)  # warm the page cache: every figure below reads from memory

    def cold() -> None:
        with tempfile.TemporaryDirectory() as cache:  # an empty digest cache: hash everything
            os.environ["LMI_SERVE_CACHE"] = cache
            inspect_folder(args.artifact).wait_verified()

    with tempfile.TemporaryDirectory() as cache:
        os.environ["LMI_SERVE_CACHE"] = cache
        inspect_folder(args.artifact).wait_verified()  # fill the digest cache once
        cached = timed(lambda: inspect_folder(args.artifact).wait_verified(), args.repeat)
    baseline = timed(lambda: read_all(weights), args.repeat)
    cold_s = timed(cold, args.repeat)
    skipped = timed(lambda: inspect_folder(args.artifact, verify=False), args.repeat)
    print(f"artifact {args.artifact}: {size / 2**20:.0f} MiB of weights, {os.cpu_count()} CPUs, median of {args.repeat}")
    print(f"  baseline: read the weights once      {baseline:7.3f} s  (1.00x)")
    print(f"  verify cold (sha256 of every file)   {cold_s:7.3f} s  ({cold_s / baseline:.2f}x)")
    print(f"  verify cached (restart, unchanged)   {cached:7.3f} s  ({cached / baseline:.2f}x)")
    print(f"  --skip-verify (sizes, extras only)   {skipped:7.3f} s  ({skipped / baseline:.2f}x)")
    print("  (the weights' sha256 runs in a thread while the backend loads them: the cold figure is an upper bound)")


if __name__ == "__main__":
    main()
