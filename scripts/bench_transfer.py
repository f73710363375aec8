"""Transfer benchmark (project issue 3): s5cmd vs boto3 against a real S3 server (SeaweedFS on
loopback), with a plain local copy of the same folder as the ceiling, all in one run.

    python3 scripts/bench_transfer.py                 # ~2 GiB artifact-shaped folder
    python3 scripts/bench_transfer.py --size-mb 256 --repeat 3 --plot transfer.png

The folder looks like an artifact: a few large weight shards (90% of the bytes) and many
small files. Every download is checked by sha256 (outside the timed part). Figures are
medians over --repeat runs; ratios compare tools measured in this same run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "runtime"), str(REPO / "tests")]

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import s3server  # noqa: E402
from lmi_runtime.checksums import hash_files  # noqa: E402
from lmi_runtime.storage import Transfer, parse_uri  # noqa: E402
from lmi_runtime.storage.s3 import S3Options, S3Storage  # noqa: E402

console = Console()


def make_folder(root: Path, size_mb: int, large: int, small: int) -> list[Transfer]:
    """`large` shards holding 90% of the bytes under rank{N}/, `small` files sharing the rest."""
    rng = np.random.default_rng(0)
    total = size_mb << 20
    sizes = [("rank%d/model-%05d.safetensors" % (i % 2, i), int(total * 0.9) // large) for i in range(large)]
    sizes += [(f"shared/file-{i:04d}.json", max(1, int(total * 0.1) // small)) for i in range(small)]
    transfers = []
    for rel, size in sizes:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            left = size
            while left:
                chunk = min(left, 64 << 20)
                handle.write(rng.bytes(chunk))
                left -= chunk
        transfers.append(Transfer(path, rel, size))
    digests = hash_files([t.local for t in transfers])
    return [Transfer(t.local, t.key, t.size, digests[t.local]) for t in transfers]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def verify(transfers: list[Transfer], root: Path) -> None:
    got = hash_files([root / t.key for t in transfers], "verifying")
    bad = [t.key for t in transfers if got[root / t.key] != t.sha256]
    if bad:
        raise SystemExit(f"download corrupt: {bad[:5]}")


def bench(args) -> dict[str, dict[str, float]]:
    work = Path(tempfile.mkdtemp(prefix="lmi-bench-", dir=args.workdir))
    server = s3server.S3Server(work / "s3data")
    try:
        console.print(f"creating a {args.size_mb} MiB folder ({args.large} large + {args.small} small files) in {work}")
        transfers = make_folder(work / "src", args.size_mb, args.large, args.small)
        total_mb = sum(t.size for t in transfers) / 1e6
        server.start()
        for name, value in server.env().items():
            os.environ[name] = value
        bucket = server.create_bucket("bench")
        tools = {
            "s5cmd": S3Options(endpoint_url=server.endpoint, retry_count=1, tool="s5cmd"),
            "boto3": S3Options(endpoint_url=server.endpoint, retry_count=1, tool="boto3", part_concurrency=10),
        }
        results: dict[str, dict[str, list[float]]] = {name: {"upload": [], "download": []} for name in [*tools, "local copy"]}
        for run in range(args.repeat):
            for name, options in tools.items():
                storage = S3Storage(parse_uri(f"s3://{bucket}/{name}-{run}"), options)
                up = timed(lambda: storage.upload(transfers))
                dest = work / f"dl-{name}"
                down = timed(lambda: storage.download([Transfer(dest / t.key, t.key, t.size) for t in transfers]))
                verify(transfers, dest)
                shutil.rmtree(dest)
                results[name]["upload"].append(total_mb / up)
                results[name]["download"].append(total_mb / down)
                console.print(f"run {run + 1}: {name:6s} up {total_mb / up:7.1f} MB/s   down {total_mb / down:7.1f} MB/s")
            copy = timed(lambda: shutil.copytree(work / "src", work / "copy"))
            shutil.rmtree(work / "copy")
            results["local copy"]["upload"].append(total_mb / copy)
            results["local copy"]["download"].append(total_mb / copy)
            console.print(f"run {run + 1}: local copy {total_mb / copy:7.1f} MB/s")
        return {name: {k: statistics.median(v) for k, v in r.items()} for name, r in results.items()}
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def report(medians: dict[str, dict[str, float]], args) -> None:
    table = Table(title=f"Transfer of a {args.size_mb} MiB artifact-shaped folder (median of {args.repeat}, MB/s)")
    table.add_column("tool")
    table.add_column("upload MB/s", justify="right")
    table.add_column("download MB/s", justify="right")
    for name, m in medians.items():
        table.add_row(name, f"{m['upload']:.1f}", f"{m['download']:.1f}")
    s5, boto, local = medians["s5cmd"], medians["boto3"], medians["local copy"]
    for label, a, b in (("s5cmd / local copy", s5, local), ("s5cmd / boto3", s5, boto)):
        table.add_row(f"[bold]{label}[/]", f"{a['upload'] / b['upload']:.2f}×", f"{a['download'] / b['download']:.2f}×")
    console.print(table)


def plot(medians: dict[str, dict[str, float]], path: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(medians)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7, 4))
    for offset, kind in ((-0.2, "upload"), (0.2, "download")):
        bars = ax.bar(x + offset, [medians[n][kind] for n in names], 0.4, label=kind)
        ax.bar_label(bars, fmt="%.0f")
    ax.set_xticks(x, names)
    ax.set_ylabel("MB/s")
    ax.set_title(f"{args.size_mb} MiB artifact-shaped folder, loopback SeaweedFS")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    console.print(f"plot written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=2048)
    parser.add_argument("--large", type=int, default=8, help="large files (90%% of the bytes)")
    parser.add_argument("--small", type=int, default=200, help="small files (10%% of the bytes)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None, help="where to put the data (default: the temp dir)")
    parser.add_argument("--plot", type=Path, default=None, help="write a bar chart PNG here")
    args = parser.parse_args()
    medians = bench(args)
    report(medians, args)
    if args.plot:
        plot(medians, args.plot, args)


if __name__ == "__main__":
    main()
