"""Data-parallel training over ``torchrun``: one process per GPU (or CPU worker), DDP.

Under ``torchrun --nproc_per_node N dfstream train ...`` every process trains the same model on
its slice of each global batch (``--batch-size`` is the global batch; rank r takes rows r, r+N,
...). DDP averages the trainable gradients across processes in backward, so the models stay
identical step for step; each process validates on the whole val split (same model, same
numbers) and only rank 0 writes the checkpoint, the bundle and the summary. The uniformity and
alignment losses are computed over the pairs of each process's slice, not of the global batch:
with N processes their weight per pair differs from a single-process run of the same batch.

Backends: NCCL on CUDA devices (rank r uses ``cuda:LOCAL_RANK``), gloo on the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class Workers:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, batch: np.ndarray) -> np.ndarray:
        """This process's rows of a global batch."""
        return batch[self.rank :: self.world]


def join(device: str) -> tuple[Workers, str]:
    """The process group torchrun describes (WORLD_SIZE > 1), joined, and this process's
    device; a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Workers(), device
    on_gpu = torch.device(device).type == "cuda"
    if on_gpu:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if on_gpu else "gloo")
    return Workers(dist.get_rank(), dist.get_world_size()), device


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def current() -> Workers:
    if dist.is_available() and dist.is_initialized():
        return Workers(dist.get_rank(), dist.get_world_size())
    return Workers()


def parallel(module: nn.Module, workers: Workers, device: str) -> nn.Module:
    """``module`` under DDP when there are several processes (gradients averaged in backward)."""
    if workers.world <= 1:
        return module
    ids = [torch.device(device).index] if torch.device(device).type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)
