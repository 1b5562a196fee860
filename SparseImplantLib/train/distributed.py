"""Data-parallel training: one process per GPU (NCCL) or per CPU worker (Gloo), launched by torchrun."""

from __future__ import annotations

import os
from typing import List, Optional

import torch
import torch.distributed as dist


class Distributed:
    """Rank/world of this process; initialises torch.distributed when launched by torchrun."""

    def __init__(self) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            self.device = torch.device("cuda", local_rank)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        if self.world_size > 1:
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def gather_strings(self, value: str) -> List[str]:
        if self.world_size == 1:
            return [value]
        values: List[Optional[str]] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return [str(v) for v in values]

    def share_buffers(self, network: torch.nn.Module) -> None:
        """Give every rank rank 0's batch-norm statistics (DDP syncs gradients, not running stats)."""
        if self.world_size > 1:
            for buffer in network.buffers():
                dist.broadcast(buffer, src=0)

    def close(self) -> None:
        if self.world_size > 1:
            dist.barrier()
            dist.destroy_process_group()
