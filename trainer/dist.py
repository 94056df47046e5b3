"""Who am I among the training processes, and how do we meet.

Three ways to be started, checked in this order:

* torchrun (or a test) sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT;
* srun sets SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, and ft's sbatch script exports
  MASTER_ADDR/MASTER_PORT (without them: the first node of SLURM's node list and the port
  ``ftcore.rendezvous`` derives from the job id);
* neither: one process.

A process group exists only when there is more than one process: nccl on GPUs, gloo on CPU.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.distributed as dist

from ftcore import rendezvous
from ftcore.errors import UserError

# Rank 0 may write a large consolidated checkpoint while the others wait in a barrier.
_TIMEOUT = datetime.timedelta(minutes=30)


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    launcher: str = "single"  # "torchrun" | "slurm" | "single"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def detect(environ: Mapping[str, str] | None = None) -> DistEnv:
    """Read rank and rendezvous from the environment; torchrun's variables win over SLURM's."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env.get("LOCAL_RANK", 0)),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(env.get("MASTER_PORT", 29500)),
            launcher="torchrun",
        )
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        return _from_slurm(env)
    return DistEnv()


def _from_slurm(env: Mapping[str, str]) -> DistEnv:
    """srun's variables; the rendezvous from ft's script, else from SLURM's own node list
    (a workshop's script runs `ft train` under srun and exports nothing)."""
    if env.get("MASTER_ADDR"):
        master_addr = env["MASTER_ADDR"]
    else:
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or ""
        try:
            hosts = rendezvous.expand_hostlist(nodelist)
        except ValueError as err:
            raise UserError(f"cannot find the first node of this job: {err}") from None
        master_addr = hosts[0] if hosts else "127.0.0.1"
    job_id = int(env.get("SLURM_JOB_ID", "0") or 0)
    return DistEnv(
        rank=int(env["SLURM_PROCID"]),
        world_size=int(env["SLURM_NTASKS"]),
        local_rank=int(env.get("SLURM_LOCALID", 0)),
        master_addr=master_addr,
        master_port=int(env.get("MASTER_PORT") or rendezvous.master_port(job_id)),
        launcher="slurm",
    )


def init(env: DistEnv, device: torch.device, alone_too: bool = False) -> None:
    """Join the process group when there is more than one process.

    `alone_too`: FSDP2 needs a group even for a single process; that one is in-process
    (a HashStore), with no port to collide with anything.
    """
    if dist.is_initialized() or not (env.distributed or alone_too):
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not env.distributed:
        dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
        return
    dist.init_process_group(
        backend=backend,
        init_method=f"tcp://{env.master_addr}:{env.master_port}",
        rank=env.rank,
        world_size=env.world_size,
        timeout=_TIMEOUT,
        device_id=device if device.type == "cuda" else None,
    )


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over all processes in place (a no-op alone)."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj):
    """Rank 0's `obj` on every rank (a no-op alone)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_grads(params: list[torch.nn.Parameter], bucket_bytes: int = 64 << 20) -> None:
    """Sum the gradients of replicated parameters over all processes (data parallel).

    Flattened into a few large buckets: one collective per bucket instead of one per tensor
    (LoRA has hundreds of small ones). Runs once per optimizer step, after the last
    micro-batch, so accumulation needs no `no_sync`.
    """
    if not dist.is_initialized():
        return
    for p in params:
        if p.grad is None:  # every rank must contribute the same buffers, in the same order
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    bucket: list[torch.Tensor] = []
    size = 0
    for grad in grads + [None]:
        if grad is not None and (not bucket or (grad.dtype == bucket[0].dtype and size < bucket_bytes)):
            bucket.append(grad)
            size += grad.numel() * grad.element_size()
            continue
        if bucket:
            flat = torch.cat([g.reshape(-1) for g in bucket])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            offset = 0
            for g in bucket:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()
        bucket, size = ([grad], grad.numel() * grad.element_size()) if grad is not None else ([], 0)
