"""Data-parallel learning under `torchrun`: process group, DDP wrapping, decisions made once and shared.

The engine is torch's own: `torchrun --nproc_per_node N -m mobilereid.cli train|compress|quant-finetune ...`
starts the ranks and sets RANK / WORLD_SIZE / LOCAL_RANK; this module only reads them. NCCL is the backend on
GPUs and gloo on CPUs (torch's recommendation). Every rank runs its share of the PK batches (`PKBatches` with
rank and world); gradients are averaged by DistributedDataParallel; rank 0 writes checkpoints and reports.
Choices that must be identical on every rank (which heads or tokens to prune, whether a guard restores
weights) are made on rank 0 and broadcast (`decide_once`), since statistics computed on different GPUs can
differ in the last bit and a different pruning choice per rank would give ranks of different shapes.
A rank that fails raises; torchrun then stops the others (its default `--max-restarts 0`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import torch

from .compute import Compute

T = TypeVar("T")


def rank_and_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def active() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def start(compute: Compute) -> tuple[int, int]:
    """Join the process group when started by torchrun with more than one rank; (rank, world) either way."""
    rank, world = rank_and_world()
    if world > 1 and not active():
        import torch.distributed as dist

        dist.init_process_group("nccl" if compute.cuda else "gloo", device_id=compute.device if compute.cuda else None)
    return rank, world


def stop() -> None:
    if active():
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, compute: Compute) -> torch.nn.Module:
    """``model`` in DistributedDataParallel when ranks are running, else itself (its parameters stay shared)."""
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [compute.device.index] if compute.cuda else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=False)


def decide_once(choose: Callable[[], T]) -> T:
    """``choose()`` run on rank 0 only, its (picklable) result given to every rank; just ``choose()`` alone."""
    if not active():
        return choose()
    import torch.distributed as dist

    box = [choose() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if active():
        import torch.distributed as dist

        dist.barrier()
