"""Tensor parallelism for the torch backend: one process per rank over `torch.distributed`
(NCCL on CUDA, gloo on CPU), each rank holding its shard of the weights (`tp_sharding.py`)
and a KV cache of its own KV heads.

Only rank 0 runs the engine, scheduler, sampler and HTTP. It starts ranks 1..N-1 as
`worker_main` subprocesses; each loads only the shared
files and its own `rank{r}/` shard. Before each forward rank 0 broadcasts the step's inputs
(token ids, positions, cache slots, block tables: the block bookkeeping stays on rank 0, so
every rank writes the same slots of its own cache); the workers run the same forward (its
all-reduces pair with rank 0's) and drop their logits. With CUDA graphs rank 0 broadcasts the
graphs' static input buffers and every rank replays its own graph, the NCCL all-reduces
captured inside it.

A worker blocks on a line from its stdin (a pipe from rank 0) before each message, not in a
collective, so an idle server never hits the process group's timeout, and a rank 0 that dies
closes the pipe and ends the workers. A worker that dies makes rank 0's next step fail with a
message naming it (its exit code is checked before each step; a collective with a dead peer
fails or times out after `LMI_TP_TIMEOUT_S`).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING

import torch
import torch.distributed as dist

from lmi_runtime.backends.llama_model import StepInputs
from lmi_runtime.errors import ConfigError
from lmi_runtime.kernels.paged_attention import AttnBatch

if TYPE_CHECKING:
    from lmi_runtime.backends.decode_graphs import DecodeGraphs
    from lmi_runtime.backends.torch_llama import TorchLlamaBackend
    from lmi_runtime.engine.config import EngineConfig
    from lmi_runtime.locate import ModelFiles

log = logging.getLogger("lmi_runtime.tp")
# NVLink multicast stays off in every process (the device machines require it).
NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
STOP, FORWARD, REPLAY, FORK = range(4)
HEADER = 2 + 4 * 16  # kind, count, then (dtype, ndim, dim0, dim1) per tensor
DTYPES = [torch.int64, torch.int32]


def artifact_degree(files: "ModelFiles") -> int:
    return files.manifest.target.tp_degree if files.manifest is not None else 1


@dataclass
class RankGroup:
    """This process's place in the tensor-parallel group."""

    rank: int
    world: int
    device: torch.device
    threads: int = 1  # CPU threads before joining, given back on close
    workers: list[subprocess.Popen] = field(default_factory=list)  # rank 0 only

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(tensor)
        return tensor

    def agree_blocks(self, num_blocks: int) -> int:
        """The KV-cache block count every rank uses: the smallest any rank can hold."""
        count = torch.tensor([num_blocks], dtype=torch.int64, device=self.device)
        dist.all_reduce(count, op=dist.ReduceOp.MIN)
        return int(count.item())


def join(files: "ModelFiles", config: "EngineConfig", rank: int, device: torch.device) -> RankGroup | None:
    """Rank 0: start the workers; every rank: join the process group. None for one rank."""
    world = artifact_degree(files)
    wanted = config.tensor_parallel_degree
    if wanted is not None and wanted != world:
        raise ConfigError(
            f"tensor parallel degree {wanted} was asked for, but the artifact is split for {world}",
            hint="unset TENSOR_PARALLEL_DEGREE / --tensor-parallel-degree, or compile the artifact "
            f"with tensor_parallel_degree {wanted}",
        )
    if world == 1:
        return None
    if config.backend == "transformers":
        raise ConfigError("the transformers backend runs one rank; this artifact is split for "
                          f"tensor parallel degree {world}", hint="use --backend torch (or auto)")
    os.environ.update(NO_MULTICAST)
    if device.type == "cuda":
        if torch.cuda.device_count() < world:
            raise ConfigError(f"the artifact is split for {world} GPUs; this machine has {torch.cuda.device_count()}",
                              hint="serve it on a machine with as many GPUs, or compile for fewer")
        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
    group = RankGroup(rank, world, device, threads=torch.get_num_threads())
    if device.type == "cpu":  # the ranks share the host's cores: oversubscribed threads stalled each step 7x
        torch.set_num_threads(max(1, group.threads // world))
    timeout = timedelta(seconds=float(os.environ.get("LMI_TP_TIMEOUT_S", "600")))
    if rank == 0:
        store = dist.TCPStore("127.0.0.1", 0, is_master=True, timeout=timeout, wait_for_workers=False)
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(store.port))
        group.workers = [_start_worker(files.artifact or files.root, config, r, verify=files.verification is not None,
                                       arriving=_arriving_for(files, r)) for r in range(1, world)]
        atexit.register(close, group)
        _wait_for_workers(store, group)
    else:
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                              timeout=timeout)
        store.set(f"up{rank}", "1")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, rank=rank,
                            world_size=world, timeout=timeout)
    log.info("rank %d of %d joined the process group (%s)", rank, world, dist.get_backend())
    return group


def _arriving_for(files: "ModelFiles", rank: int) -> dict[str, int]:
    """A rank's weights still downloading (rank 0's downloads): manifest path -> size."""
    own = {entry.path for entry in files.manifest.group_for_rank(rank)} if files.arriving else set()
    return {name: arrival.size for name, arrival in files.arriving.items() if name in own}


def _start_worker(root: Path, config: "EngineConfig", rank: int, verify: bool, arriving: dict[str, int]) -> subprocess.Popen:
    """The worker runs this same lmi_runtime (a source checkout too), with rank 0's settings
    (checking its own shard against the manifest unless rank 0 was told to skip that; the files
    still `arriving` it follows as rank 0 downloads and checks them)."""
    here = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, **NO_MULTICAST, "LMI_TP_RANK": str(rank), "LMI_TP_ROOT": str(root),
           "LMI_TP_CONFIG": json.dumps(asdict(config)), "LMI_TP_VERIFY": "1" if verify else "0",
           "LMI_TP_ARRIVING": json.dumps(arriving),
           "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))}
    code = "from lmi_runtime.backends.tensor_parallel import worker_main; worker_main()"
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdin=subprocess.PIPE)


def _wait_for_workers(store: dist.TCPStore, group: RankGroup) -> None:
    """Until every worker has reached the store; a worker that exits first fails the start now."""
    for rank, proc in enumerate(group.workers, start=1):
        while not store.check([f"up{rank}"]):
            if proc.poll() is not None:
                close(group)
                raise RuntimeError(f"tensor-parallel rank {rank} exited while starting (code {proc.returncode}); "
                                   "its log is above")
            time.sleep(0.1)


def close(group: RankGroup, kill: bool = False) -> None:
    """Rank 0: tell the workers to stop and wait for them (they also stop when the pipe closes);
    `kill`: a failed start, whose workers may be anywhere in their load, not reading the pipe."""
    for proc in group.workers:
        if kill:
            proc.kill()
        elif proc.poll() is None:
            try:
                proc.stdin.write(f"{STOP}\n".encode())
                proc.stdin.close()
            except OSError:
                pass
    for proc in group.workers:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    group.workers = []
    if dist.is_initialized():
        dist.destroy_process_group()
    torch.set_num_threads(group.threads)


class Leader:
    """Rank 0's side: announces each message to the workers, then broadcasts its tensors."""

    def __init__(self, group: RankGroup):
        self.group = group

    def close(self) -> None:
        close(self.group)

    def forward(self, step: StepInputs) -> None:
        self._announce(FORWARD)
        _broadcast(_step_tensors(step), self.group.device)

    def replay(self, graphs: "DecodeGraphs", size: int) -> None:
        self._announce(REPLAY)
        _broadcast([torch.tensor([size])], self.group.device)
        _broadcast_graph_inputs(graphs)

    def fork(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        self._announce(FORK)
        _broadcast([src, dst], self.group.device)

    def _announce(self, kind: int) -> None:
        for rank, proc in enumerate(self.group.workers, start=1):
            code = proc.poll()
            try:
                if code is None:
                    proc.stdin.write(f"{kind}\n".encode())
                    proc.stdin.flush()
            except OSError:
                code = proc.wait(timeout=5)
            if code is not None:
                raise RuntimeError(f"tensor-parallel rank {rank} has exited (code {code}); restart the server")


def _step_tensors(step: StepInputs) -> list[torch.Tensor]:
    a = step.attn
    ints = torch.tensor([a.block_q, a.max_q_len, a.max_ctx_len])
    return [step.input_ids, step.positions, step.write_slots, step.logits_rows, a.block_tables, a.ctx_lens,
            a.q_starts, a.q_lens, a.tile_seq, a.tile_start, ints]


def _step_from(tensors: list[torch.Tensor]) -> StepInputs:
    ids, positions, slots, rows, tables, ctx, starts, lens, tile_seq, tile_start, ints = tensors
    block_q, max_q, max_ctx = ints.tolist()
    return StepInputs(ids, positions, slots, AttnBatch(tables, ctx, starts, lens, tile_seq, tile_start,
                                                       block_q, max_q, max_ctx), rows)


def _broadcast(tensors: list[torch.Tensor] | None, device: torch.device) -> list[torch.Tensor]:
    """Rank 0 sends `tensors` (1-D or 2-D, int64/int32); the others receive them."""
    header = torch.zeros(HEADER, dtype=torch.int64)
    if tensors is not None:
        header[1] = len(tensors)
        for i, t in enumerate(tensors):
            shape = list(t.shape) + [0] * (2 - t.dim())
            header[2 + 4 * i: 6 + 4 * i] = torch.tensor([DTYPES.index(t.dtype), t.dim(), *shape])
    header = header.to(device)
    dist.broadcast(header, src=0)
    meta = header.tolist()
    out = []
    for i in range(meta[1]):
        dtype, ndim, *dims = meta[2 + 4 * i: 6 + 4 * i]
        t = tensors[i].to(device) if tensors is not None else torch.empty(dims[:ndim], dtype=DTYPES[dtype], device=device)
        dist.broadcast(t, src=0)
        out.append(t)
    return out


def _broadcast_graph_inputs(graphs: "DecodeGraphs") -> None:
    """Rank 0's static decode-graph inputs (padding rows included) into every rank's own."""
    for buffer in (graphs.tokens, graphs.tables, graphs.ctx_lens):
        dist.broadcast(buffer, src=0)


def serve_worker(backend: "TorchLlamaBackend", rank: int, commands: IO[bytes]) -> None:
    """A worker's loop: one message per line from rank 0 until STOP or the pipe closes."""
    model, kv, device = backend.model, backend.kv, backend.device
    for line in commands:
        kind = int(line)
        if kind == STOP:
            break
        if kind == FORWARD:
            model(_step_from(_broadcast(None, device)), kv.pool, kv.block_size)
        elif kind == REPLAY:
            (size,) = _broadcast(None, device)
            _broadcast_graph_inputs(backend.graphs)
            backend.graphs.graphs[int(size.item())][0].replay()
        elif kind == FORK:
            src, dst = _broadcast(None, device)
            kv.pool[:, :, dst] = kv.pool[:, :, src]
    log.info("rank %d stopping", rank)


def _told_to_stop() -> bool:
    """Rank 0 writes to a worker's pipe before it serves only to stop it (or closes it, exiting)."""
    return bool(select.select([sys.stdin], [], [], 0)[0])


def worker_main() -> None:
    """Entry of ranks 1..N-1 (started by rank 0 with its settings in the environment)."""
    from lmi_runtime.artifact.stream import Follower
    from lmi_runtime.backends.loader import load_backend
    from lmi_runtime.engine.config import EngineConfig
    from lmi_runtime.locate import inspect_folder

    rank = int(os.environ["LMI_TP_RANK"])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches rank 0, which stops the workers
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s rank{rank} %(name)s: %(message)s")
    config = EngineConfig(**json.loads(os.environ["LMI_TP_CONFIG"]))
    root = Path(os.environ["LMI_TP_ROOT"])
    arriving = {name: Follower(root / name, name, size, _told_to_stop)
                for name, size in json.loads(os.environ.get("LMI_TP_ARRIVING", "{}")).items()}
    files = inspect_folder(root, verify=os.environ.get("LMI_TP_VERIFY") == "1", rank=rank, arriving=arriving)
    backend = load_backend(files, config, rank=rank)
    files.wait_verified()  # never serve a shard that does not match the manifest
    try:
        serve_worker(backend, rank, sys.stdin.buffer)
    finally:
        dist.destroy_process_group()

