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
        self._store: Optional[dist.Store] = None
        if self.world_size > 1:
            # torchrun's rendezvous store, kept for the closing handshake (``close``).
            self._store, _, _ = next(dist.rendezvous("env://", self.rank, self.world_size))
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo", store=self._store,
                                    rank=self.rank, world_size=self.world_size)

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
        """Wait for every rank, then take the process group down. The wait goes through the rendezvous
        store, not a collective: a Gloo context torn down right after a Gloo barrier can abort a peer
        whose last messages are still under way (pytorch/gloo#155; a CI run lost rank 1 to SIGABRT here)."""
        if self._store is not None:  # set exactly when there are several ranks
            self._store.set(f"closing/{self.rank}", "1")
            self._store.wait([f"closing/{rank}" for rank in range(self.world_size)])
            dist.destroy_process_group()
