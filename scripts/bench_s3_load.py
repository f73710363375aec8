"""Cold start from an s3:// artifact: weights downloaded whole and then loaded (what lmi-serve
did before) against weights loaded while they download (`lmi_runtime.artifact.stream`), with
the same artifact on local disk as the floor, all in one run against a real S3 server
(SeaweedFS on loopback, `tests/s3server.py`) and the real s5cmd.

  python3 scripts/bench_s3_load.py --tokenizer DIR [--shape 1b|tiny|llama2-7b | --model FOLDER] [--device cpu|cuda]
                                   [--tp N] [--rounds 2] [--out DIR]

The artifact is a random-weight Llama of `--shape` (fp16, made on `--device`), or the Hugging
Face folder `--model` (its files linked, not copied), split for `--tp` ranks (the compile
stage's torch target; one process per rank at load, gloo on CPU), published once. Each start is
its own process with an empty serve cache, timed from before the download to a loaded backend
whose weights are verified (what /ping waits for): 1. `whole`: `download_artifact` (s5cmd cp,
sha256 of the download), then load; 2. `streamed`: `open_location` (s5cmd cat into place,
hashed as it lands) with each rank's loader following its files; 3. `local`: the published
folder read in place (no download). `download` alone (s5cmd cp of the same files) is shown for
reference: streaming at its best approaches max(download, local). Best of `--rounds`;
prints the table and the ratio whole / streamed, writes bench_s3_load.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAPES = {
    "tiny": dict(vocab_size=32000, hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
                 num_attention_heads=8, num_key_value_heads=8),
    "1b": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=16,
               num_attention_heads=16, num_key_value_heads=16),
    "llama2-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32),
}
VARIANTS = ("whole", "streamed", "local")


def child(variant: str, source: str, device: str) -> None:
    """One start, timed from the download's beginning to verified weights on `device`."""
    sys.path[:0] = [str(REPO / "runtime")]
    from lmi_runtime.artifact.download import download_artifact
    from lmi_runtime.backends.loader import load_backend
    from lmi_runtime.engine.config import EngineConfig
    from lmi_runtime.locate import inspect_folder, open_location
    from lmi_runtime.storage.s3 import S3Options

    import torch

    if device == "cuda":
        torch.cuda.init()
    config = EngineConfig(device=device, dtype="float16", max_batch_size=8, max_model_len=512, enforce_eager=True)
    start = time.perf_counter()
    if variant == "whole":
        folder, arriving = Path(os.environ["LMI_SERVE_CACHE"]) / "whole", {}
        download_artifact(source, folder, s3_options=S3Options.from_env())  # every rank's files
    elif variant == "streamed":
        location = open_location(source)
        folder, arriving = location.path, location.arriving
    else:
        folder, arriving = Path(source), {}
    downloaded = time.perf_counter()
    files = inspect_folder(folder, arriving=arriving)
    backend = load_backend(files, config)
    files.wait_verified()
    if device == "cuda":
        torch.cuda.synchronize()
    assert backend.info.vocab_size
    end = time.perf_counter()
    if backend.tp is not None:
        backend.tp.close()
    print(json.dumps({"seconds": end - start, "before_load_s": downloaded - start}))


def run_child(variant: str, source: str, device: str, env: dict) -> dict:
    cache = tempfile.mkdtemp(prefix="bench-s3-cache-")
    out = subprocess.run([sys.executable, __file__, "--child", variant, "--source", source, "--device", device],
                         env=env | {"LMI_SERVE_CACHE": cache}, capture_output=True, text=True, timeout=1800)
    subprocess.run(["rm", "-rf", cache], check=False)
    if out.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def build_artifact(shape: str, model: Path | None, tokenizer: Path, root: Path, device: str, tp: int) -> Path:
    """A torch artifact: config and tokenizer at the root, weights under rank{N}/ (linked for
    one rank, split by the compile stage for more)."""
    sys.path[:0] = [str(REPO / "runtime")]
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmi_runtime.artifact.folder import build_manifest, write_manifest
    from lmi_runtime.artifact.manifest import ModelInfo, TargetInfo

    if model is None:
        torch.manual_seed(0)
        with torch.device(device):
            made = LlamaForCausalLM(LlamaConfig(**SHAPES[shape], max_position_embeddings=4096)).to(torch.float16)
        made.save_pretrained(root / "hf", safe_serialization=True)
        del made
        model = root / "hf"
    if tp > 1:
        return split_artifact(model, tokenizer, root, tp)
    (root / "art" / "rank0").mkdir(parents=True)
    for item in model.iterdir():
        weight = item.suffix == ".safetensors" or item.name.endswith(".index.json")
        if item.is_file() and (weight or not item.name.startswith(".")):
            os.link(item, root / "art" / ("rank0" if weight else "") / item.name)
    for item in tokenizer.iterdir():
        if (item.name.startswith(("tokenizer", "special_tokens")) or item.name == "chat_template.jinja") \
                and not (root / "art" / item.name).exists():
            (root / "art" / item.name).write_bytes(item.read_bytes())
    write_manifest(root / "art", build_manifest(root / "art", model=ModelInfo(source=str(model)),
                                                target=TargetInfo(backend="torch", dtype="float16")))
    return root / "art"


def split_artifact(model: Path, tokenizer: Path, root: Path, tp: int) -> Path:
    sys.path[:0] = [str(REPO / "compile")]
    from lmi_compile.targets import torch_target
    from lmi_runtime.artifact.folder import build_manifest, write_manifest
    from lmi_runtime.artifact.manifest import ModelInfo

    source = root / "hf-tok"
    source.mkdir()
    for item in model.iterdir():
        if item.is_file():
            os.link(item, source / item.name)
    for item in tokenizer.iterdir():
        if item.name.startswith(("tokenizer", "special_tokens")) and not (source / item.name).exists():
            (source / item.name).write_bytes(item.read_bytes())
    torch_target.build(source, root / "art", tp_degree=tp)
    write_manifest(root / "art", build_manifest(root / "art", model=ModelInfo(source=str(model)),
                                                target=torch_target.describe(tp, "float16")))
    return root / "art"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", type=Path)
    parser.add_argument("--shape", default="1b", choices=sorted(SHAPES))
    parser.add_argument("--model", type=Path, help="a Hugging Face folder to publish instead of random weights")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks the artifact is split for")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.source, args.device)
        return
    if args.tokenizer is None:
        parser.error("--tokenizer DIR is needed (a folder with tokenizer.json, e.g. the bundled model's)")
    sys.path[:0] = [str(REPO / "runtime"), str(REPO / "tests")]
    import s3server
    from lmi_runtime.artifact.transfer import push
    from lmi_runtime.artifact.folder import manifest_bytes, read_manifest
    from lmi_runtime.artifact.manifest import MANIFEST_NAME
    from lmi_runtime.storage import open_storage
    from lmi_runtime.storage.s3 import S3Options
    from lmi_runtime.storage.s5cmd import find_s5cmd

    work = Path(tempfile.mkdtemp(prefix="bench-s3-load-"))
    art = build_artifact(args.shape, args.model, args.tokenizer, work, args.device, args.tp)
    manifest = read_manifest(art)
    weights = sum(e.size for e in manifest.all_files() if e.path.endswith(".safetensors"))
    server = s3server.S3Server(work / "s3")
    server.start()
    try:
        env = dict(os.environ) | server.env()
        os.environ.update(server.env())
        uri = f"s3://{server.create_bucket('bench-load')}/art"
        push(art, manifest.all_files(), open_storage(uri, S3Options.from_env()), MANIFEST_NAME, manifest_bytes(manifest))
        figures: dict[str, list[float]] = {name: [] for name in (*VARIANTS, "download")}
        for _ in range(args.rounds):
            for variant in VARIANTS:
                figures[variant].append(run_child(variant, str(art) if variant == "local" else uri, args.device, env)["seconds"])
            dest = work / "dl"
            started = time.perf_counter()
            subprocess.run([find_s5cmd(), "--endpoint-url", server.endpoint, "cp", f"{uri}/*", f"{dest}/"],
                           env=env, check=True, capture_output=True)
            figures["download"].append(time.perf_counter() - started)
            subprocess.run(["rm", "-rf", str(dest)], check=False)
    finally:
        server.stop()
    best = {name: min(values) for name, values in figures.items()}
    print(f"{args.model or args.shape}, {weights / 1e9:.2f} GB of weights, TP={args.tp}, device {args.device}, "
          f"best of {args.rounds}")
    for name in (*VARIANTS, "download"):
        print(f"  {name:9s} {best[name]:7.2f} s   {weights / 1e9 / best[name]:6.2f} GB/s")
    ratio = best["whole"] / best["streamed"]
    floor = max(best["download"], best["local"])
    print(f"  whole / streamed: {ratio:.2f}x; streamed / max(download, local): {best['streamed'] / floor:.2f}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_s3_load.json").write_text(json.dumps(
        {"model": str(args.model or args.shape), "device": args.device, "tp": args.tp, "weight_bytes": weights, "seconds": figures, "best": best,
         "whole_over_streamed": ratio}, indent=2))
    subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
