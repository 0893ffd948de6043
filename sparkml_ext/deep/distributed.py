"""The process group and the few collectives training needs, read from the environment.

torchrun and TorchDistributor set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT; without them the same code runs as a single process with no group, so
every helper here also works (trivially) for one rank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    distributed: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(backend: str | None = None, device: str = "auto") -> Context:
    """Join the process group described by the environment (nccl on GPUs, else gloo).

    `device` "auto" trains on this rank's GPU (LOCAL_RANK) when CUDA is available, else
    on the CPU; "cpu" and "cuda" force one.
    """
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cuda and not local_rank < torch.cuda.device_count():
        raise RuntimeError(
            f"rank with LOCAL_RANK={local_rank} has no GPU of its own: "
            f"{torch.cuda.device_count()} visible; run one process per GPU or set device: cpu"
        )
    target = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(target)
    if "WORLD_SIZE" not in os.environ:
        return Context(0, 1, 0, target, distributed=False)
    dist.init_process_group(backend or ("nccl" if cuda else "gloo"))
    return Context(dist.get_rank(), dist.get_world_size(), local_rank, target, distributed=True)


def shutdown(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def backend(ctx: Context) -> str | None:
    """The process group's backend (nccl, gloo), or None for a single process."""
    return dist.get_backend() if ctx.distributed else None


def all_sum(ctx: Context, values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks (float64, so sums of many batch losses stay exact)."""
    total = values.detach().to(ctx.device, torch.float64).clone()
    if ctx.distributed:
        dist.all_reduce(total)
    return total


def all_gather_rows(ctx: Context, values: torch.Tensor) -> torch.Tensor:
    """Concatenate each rank's rows (a tensor's first dimension), in rank order; the row
    counts may differ by rank, the shape of a row may not."""
    if not ctx.distributed:
        return values
    values = values.to(ctx.device)
    sizes = [torch.zeros(1, dtype=torch.int64, device=ctx.device) for _ in range(ctx.world_size)]
    dist.all_gather(sizes, torch.tensor([len(values)], device=ctx.device))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *values.shape[1:]), dtype=values.dtype, device=ctx.device)
    padded[: len(values)] = values
    parts = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes, strict=True)])


def broadcast(ctx: Context, obj: Any) -> Any:
    """Rank 0's (small, picklable) `obj` on every rank."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=ctx.device if ctx.device.type == "cuda" else None)
    return box[0]
