"""Join the training processes of one job: torch.distributed on top of ftcore.rendezvous.

Who each process is (torchrun's variables, srun's, or one process alone) is read by
``ftcore.rendezvous.detect``, torch-free, so `ft train` checks the same answer before it
hands over to the trainer.

A process group exists only when there is more than one process (or FSDP2 asks for one): on
GPUs nccl for CUDA tensors *and* gloo for CPU tensors (`backend`), as torchtitan and torchtune
create it, because some collectives meet CPU tensors: the gradient norm of FSDP2 shards kept
in host memory (model.cpu_offload), the object collectives of checkpointing. On CPU, gloo.
"""

from __future__ import annotations

import datetime
import os
from typing import Mapping

import torch
import torch.distributed as dist

from ftcore import rendezvous
from ftcore.rendezvous import DistEnv

# Rank 0 may write a large consolidated checkpoint while the others wait in a barrier.
_TIMEOUT = datetime.timedelta(minutes=30)


def detect(environ: Mapping[str, str] | None = None) -> DistEnv:
    """Read rank and rendezvous from the environment (this process's, unless given)."""
    return rendezvous.detect(os.environ if environ is None else environ)


def backend(device: torch.device) -> str:
    """The process group's backend per device type: each tensor's collectives go to the
    backend of the device it lives on."""
    return "cuda:nccl,cpu:gloo" if device.type == "cuda" else "cpu:gloo"


def init(env: DistEnv, device: torch.device, alone_too: bool = False) -> None:
    """Join the process group when there is more than one process.

    `alone_too`: FSDP2 needs a group even for a single process; that one is in-process
    (a HashStore), with no port to collide with anything.
    """
    if dist.is_initialized() or not (env.distributed or alone_too):
        return
    if not env.distributed:
        dist.init_process_group(backend=backend(device), store=dist.HashStore(), rank=0, world_size=1)
        return
    dist.init_process_group(
        backend=backend(device),
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
