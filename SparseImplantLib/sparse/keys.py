"""Coordinate keys, the engine's ground floor: voxels ``[batch, x, y, z]`` packed into one int64 each.

A key holds 9 bits of batch and 18 bits per axis (axes offset so negative coordinates pack too). Sorted
keys plus ``torch.searchsorted`` give neighbour look-ups without a hash table, on any device; a
``CoordinateSet`` is a set of voxels held as its keys. Everything above (halo tables, kernel maps,
sparse tensors, layers) builds on this module, which imports none of them.
"""

from __future__ import annotations

import itertools
from typing import Optional

import torch

AXIS_BITS = 18
BATCH_BITS = 63 - 3 * AXIS_BITS  # 9
AXIS_OFFSET = 1 << (AXIS_BITS - 1)
AXIS_MIN, AXIS_MAX = -AXIS_OFFSET, AXIS_OFFSET - 1
BATCH_MAX = (1 << BATCH_BITS) - 1
_SHIFTS = (3 * AXIS_BITS, 2 * AXIS_BITS, AXIS_BITS, 0)
AXIS_SHIFTS = _SHIFTS[1:]  # of the x, y and z fields in a key
_ids = itertools.count()


def check_packable(coordinates: torch.Tensor) -> None:
    """Raise if any spatial coordinate of (N, 4) falls outside the packable range."""
    if not coordinates.numel():
        return
    spatial = coordinates[:, 1:]
    _check_range(int(spatial.min()), int(spatial.max()))


def _check_range(low: int, high: int) -> None:
    if low < AXIS_MIN or high > AXIS_MAX:
        raise ValueError(f"coordinates must lie in [{AXIS_MIN}, {AXIS_MAX}] to be packed; got [{low}, {high}]")


def pack(coordinates: torch.Tensor) -> torch.Tensor:
    """int64 keys of (N, 4) coordinates; raises instead of wrapping when a value does not fit.

    Args:
        coordinates (torch.Tensor): (N, 4) int64 ``[batch, x, y, z]`` (int64: the batch field is
            shifted by 54 bits). Spatial values must lie in ``[AXIS_MIN, AXIS_MAX]`` =
            ``[-131072, 131071]``, batch indices in ``[0, BATCH_MAX]`` = ``[0, 511]``.

    Returns:
        torch.Tensor: (N,) int64 keys on the coordinates' device: batch in bits 54-62, then x, y and z
        in 18-bit fields, each offset by ``AXIS_OFFSET`` (2**17). Keys therefore sort as the
        coordinates do lexicographically (batch, then x, y, z).

    Raises:
        ValueError: a spatial coordinate or a batch index is outside its range.
    """
    if coordinates.numel():
        check_packable(coordinates)
        batch = coordinates[:, 0]
        if int(batch.min()) < 0 or int(batch.max()) > BATCH_MAX:
            raise ValueError(f"batch indices must lie in [0, {BATCH_MAX}]; got [{int(batch.min())}, {int(batch.max())}]")
    return (
        (coordinates[:, 0] << _SHIFTS[0])
        | ((coordinates[:, 1] + AXIS_OFFSET) << _SHIFTS[1])
        | ((coordinates[:, 2] + AXIS_OFFSET) << _SHIFTS[2])
        | (coordinates[:, 3] + AXIS_OFFSET)
    )


def unpack(keys: torch.Tensor) -> torch.Tensor:
    """(N, 4) coordinates of packed keys: the inverse of ``pack``.

    Args:
        keys (torch.Tensor): (N,) int64 keys made by ``pack`` (or derived from them by the engine).

    Returns:
        torch.Tensor: (N, 4) int64 ``[batch, x, y, z]`` on the keys' device.
    """
    mask = (1 << AXIS_BITS) - 1
    return torch.stack(
        [
            keys >> _SHIFTS[0],
            ((keys >> _SHIFTS[1]) & mask) - AXIS_OFFSET,
            ((keys >> _SHIFTS[2]) & mask) - AXIS_OFFSET,
            (keys & mask) - AXIS_OFFSET,
        ],
        dim=1,
    )


def axis_low_bits(bits: int) -> int:
    """A key mask selecting the same low ``bits`` bits of every axis field (batch excluded)."""
    field = (1 << bits) - 1
    return sum(field << shift for shift in AXIS_SHIFTS)


def key_aligned(step: int) -> bool:
    """Whether keys can be floored to multiples of ``step``: a power of two dividing the axis offset,
    so that the low bits of each axis field are those of the coordinate."""
    return step > 0 and step & (step - 1) == 0 and AXIS_OFFSET % step == 0


def floor_keys(keys: torch.Tensor, step: int) -> torch.Tensor:
    """Keys of ``floor(c / step) * step`` for a ``key_aligned`` step: each axis field's low bits cleared."""
    return keys & ~axis_low_bits(step.bit_length() - 1)


def key_offset(offset: torch.Tensor) -> torch.Tensor:
    """Key difference of spatial offsets (K, 3): key(c + o) == key(c) + key_offset(o) while c + o packs."""
    return (offset[:, 0] << _SHIFTS[1]) + (offset[:, 1] << _SHIFTS[2]) + offset[:, 2]


class CoordinateSet:
    """An immutable set of voxels; ``id`` identifies it in kernel-map caches.

    The packed keys are the set; the (N, 4) coordinates (four times the keys' memory) are unpacked
    only when asked for, so the sets the engine derives from keys (strided, generated, pruned,
    unions) cost 8 bytes per voxel.

    Args:
        coordinates (torch.Tensor, optional): (N, 4) int64 ``[batch, x, y, z]``, packed with ``pack``
            when ``keys`` is not given, and kept as the unpacked coordinates. Rows should be distinct:
            duplicates are neither checked nor merged (MinkowskiEngine would merge them).
        keys (torch.Tensor, optional): (N,) int64 packed keys; when given they are the set and
            ``coordinates``, if also given, is taken as their unpacking without a check.
        is_sorted (bool): the keys ascend, so ``find`` searches them directly instead of sorting a
            copy first. Default False.

    Attributes:
        keys (torch.Tensor): (N,) int64 packed keys, in the set's row order.
        id (int): process-wide unique number, the set's name in ``CoordinateManager`` caches.
        is_sorted (bool): as given.

    Raises:
        ValueError: neither ``coordinates`` nor ``keys`` is given, or ``pack`` refuses the coordinates.
    """

    def __init__(self, coordinates: Optional[torch.Tensor] = None, keys: Optional[torch.Tensor] = None,
                 is_sorted: bool = False) -> None:
        if keys is None:
            if coordinates is None:
                raise ValueError("give coordinates or keys")
            keys = pack(coordinates)
        self.keys = keys
        self._coordinates = coordinates
        self.id = next(_ids)
        self.is_sorted = is_sorted
        self._sorted: Optional[tuple[torch.Tensor, torch.Tensor]] = None
        self._bounds: Optional[tuple[int, int]] = None

    @staticmethod
    def from_keys(keys: torch.Tensor, is_sorted: bool = False) -> "CoordinateSet":
        """The set of (N,) int64 ``keys`` (``is_sorted``: they ascend); coordinates unpacked on demand."""
        return CoordinateSet(keys=keys, is_sorted=is_sorted)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def coordinates(self) -> torch.Tensor:
        """(N, 4) ``[batch, x, y, z]``, unpacked on first use."""
        if self._coordinates is None:
            self._coordinates = unpack(self.keys)
        return self._coordinates

    def check_reach(self, offsets: torch.Tensor) -> None:
        """Raise if any voxel moved by any of ``offsets`` (K, 3) leaves the packable range.

        Args:
            offsets (torch.Tensor): (K, 3) integer spatial offsets ``[dx, dy, dz]``.

        Raises:
            ValueError: the set's smallest axis value plus the smallest offset, or its largest plus
                the largest offset, falls outside ``[AXIS_MIN, AXIS_MAX]`` (a per-set bound over all
                three axes, so it may refuse a little more than strictly needed).
        """
        if not len(self) or not offsets.numel():
            return
        if self._bounds is None:  # from the keys' axis fields, one axis at a time
            mask = (1 << AXIS_BITS) - 1
            fields = [(self.keys >> shift) & mask for shift in AXIS_SHIFTS]
            self._bounds = (min(int(f.min()) for f in fields) - AXIS_OFFSET, max(int(f.max()) for f in fields) - AXIS_OFFSET)
        _check_range(self._bounds[0] + int(offsets.min()), self._bounds[1] + int(offsets.max()))

    def subset(self, keep: torch.Tensor) -> "CoordinateSet":
        """The voxels where ``keep`` (N,) is true, in their order (coordinates carried if unpacked).

        Args:
            keep (torch.Tensor): (N,) bool mask on the set's device.

        Returns:
            CoordinateSet: a new set (new ``id``) with the same ``is_sorted`` flag.
        """
        coordinates = self._coordinates[keep] if self._coordinates is not None else None
        return CoordinateSet(coordinates, self.keys[keep], is_sorted=self.is_sorted)

    def find(self, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For each query key: (found mask, row index in this set, valid where found).

        Args:
            query (torch.Tensor): (M,) int64 packed keys on the set's device.

        Returns:
            tuple[torch.Tensor, torch.Tensor]: ``found`` (M,) bool and ``rows`` (M,) int64, the row of
            the matching voxel in this set where ``found``, an arbitrary row elsewhere.
        """
        if not len(self):
            empty = torch.zeros_like(query, dtype=torch.bool)
            return empty, torch.zeros_like(query)
        if self.is_sorted:
            sorted_keys, order = self.keys, None
        else:
            if self._sorted is None:
                self._sorted = torch.sort(self.keys)
            sorted_keys, order = self._sorted
        position = torch.searchsorted(sorted_keys, query).clamp_(max=len(sorted_keys) - 1)
        found = sorted_keys[position] == query
        return found, position if order is None else order[position]
