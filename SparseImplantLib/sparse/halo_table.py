"""Neighbour look-up without search, for convolutions whose input and output voxels are one set.

The voxels are grouped into blocks of 8x8x8 grid steps (a grid step is the tensor stride). Each
occupied block gets a small dense table of row indices covering the block plus a halo ``reach`` steps
wide, filled from its 26 neighbouring blocks. The neighbour of every voxel at an offset is then one
``take`` at the voxel's table position plus a constant: no binary search per voxel, and the tables
grow with the occupied blocks (a skull's surface), not with its bounding box. On large surface-like
sets this builds a map much faster than searching sorted keys (``sparseimplant bench engine``).

Blocks and positions come straight from the packed keys (the axis offset of the packing is a multiple
of every block size used here), so building a table needs a few (N,) temporaries, not (N, 3) ones.
"""

from __future__ import annotations

from typing import Iterator, Optional, Tuple

import torch

from .keys import AXIS_SHIFTS, CoordinateSet, axis_low_bits, floor_keys, key_aligned, key_offset

BLOCK_SIDE = 8
HALO_TABLE_MIN_VOXELS = 2048  # below this a table's fixed cost (27 block copies) exceeds searching sorted keys


class HaloTable:
    """Row index (or -1) of every grid position within ``reach`` steps of each occupied block."""

    def __init__(self, voxels: CoordinateSet, unit: int, reach: int) -> None:
        keys, device = voxels.keys, voxels.keys.device
        unit_bits = unit.bit_length() - 1
        # A block is named by the key of its first corner.
        blocks, block_of_voxel = torch.unique(floor_keys(keys, BLOCK_SIDE * unit), sorted=True, return_inverse=True)
        directions = torch.stack(torch.meshgrid(*[torch.arange(-1, 2, device=device)] * 3, indexing="ij"), -1).reshape(-1, 3)
        neighbour_keys = blocks[:, None] + key_offset(directions * (BLOCK_SIDE * unit))[None, :]
        position = torch.searchsorted(blocks, neighbour_keys).clamp_(max=len(blocks) - 1)
        # Missing neighbours point at an extra block of -1 appended after the occupied ones.
        neighbours = torch.where(blocks[position] == neighbour_keys, position, len(blocks))
        del neighbour_keys, position

        self.side = BLOCK_SIDE + 2 * reach
        self._voxel_positions = block_of_voxel * self.side**3
        core_index = block_of_voxel * BLOCK_SIDE**3
        del block_of_voxel
        for shift, core_stride, table_stride in zip(AXIS_SHIFTS, (BLOCK_SIDE**2, BLOCK_SIDE, 1), (self.side**2, self.side, 1)):
            step = (keys >> (shift + unit_bits)) & (BLOCK_SIDE - 1)  # position in the block along this axis
            core_index += step * core_stride
            self._voxel_positions += (step + reach) * table_stride
        index_type = torch.int32 if len(voxels) < 2**31 else torch.int64
        core = torch.full(((len(blocks) + 1) * BLOCK_SIDE**3,), -1, dtype=index_type, device=device)
        core[core_index] = torch.arange(len(voxels), dtype=index_type, device=device)
        del core_index
        core = core.reshape(-1, BLOCK_SIDE, BLOCK_SIDE, BLOCK_SIDE)

        table = torch.empty((len(blocks), self.side, self.side, self.side), dtype=index_type, device=device)
        # Per direction: (slice of the halo table it fills, slice of the neighbouring block it copies).
        spans = {-1: (slice(0, reach), slice(BLOCK_SIDE - reach, BLOCK_SIDE)),
                 0: (slice(reach, reach + BLOCK_SIDE), slice(0, BLOCK_SIDE)),
                 1: (slice(reach + BLOCK_SIDE, self.side), slice(0, reach))}
        for column, direction in enumerate(directions.tolist()):
            (tx, sx), (ty, sy), (tz, sz) = (spans[d] for d in direction)
            table[:, tx, ty, tz] = core[:, sx, sy, sz][neighbours[:, column]]
        self._table = table.reshape(-1)
        self._position_strides = torch.tensor([self.side**2, self.side, 1], device=device)

    @staticmethod
    def fits(voxels: CoordinateSet, unit: int, reach: int) -> bool:
        """Whether the set is large enough to pay off, the grid step is a power of two, the voxels lie
        on its grid and ``reach`` stays within neighbouring blocks."""
        if len(voxels) < HALO_TABLE_MIN_VOXELS or reach > BLOCK_SIDE or not key_aligned(BLOCK_SIDE * unit):
            return False
        return unit == 1 or not bool((voxels.keys & axis_low_bits(unit.bit_length() - 1)).any())

    def pairs(self, steps: torch.Tensor) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """For each offset (K, 3) in grid steps: (input rows, output rows) of the voxels whose neighbour
        at that offset exists, output rows ascending."""
        for shift in (steps * self._position_strides).sum(1).tolist():
            rows = torch.take(self._table, self._voxel_positions + shift)
            out_rows = torch.nonzero(rows >= 0).reshape(-1)
            yield rows.index_select(0, out_rows).long(), out_rows


def halo_table_for(voxels: CoordinateSet, offsets: torch.Tensor, unit: int) -> Optional[HaloTable]:
    """A table for looking up ``offsets`` (K, 3, multiples of ``unit``) among ``voxels``, or None when
    it does not fit (``HaloTable.fits``)."""
    reach = int(offsets.abs().max()) // unit if offsets.numel() else 0
    if not HaloTable.fits(voxels, unit, reach):
        return None
    return HaloTable(voxels, unit, reach)
