"""Kernel maps (which input voxel feeds which output voxel through which kernel offset) and their cache.

A kernel map is a list over kernel offsets of ``(input rows, output rows)`` index pairs (int64: int32
would halve the maps' memory but made the network slower on CPU, where PyTorch's index kernels prefer
int64; README, Benchmarks). Pairs are found with a halo table when input and output voxels are one set (stride-1
convolutions) and by searching sorted keys otherwise. Maps and down-sampled coordinate sets are cached
per coordinate-set id, kernel size and stride, as MinkowskiEngine's coordinate manager does, so layers
working on the same voxels share them.
"""

from __future__ import annotations

from typing import Dict, Iterator, List, Tuple

import torch

from .halo_table import halo_table_for
from .keys import CoordinateSet, floor_keys, key_aligned, key_offset, pack

KernelMap = List[Tuple[torch.Tensor, torch.Tensor]]


def kernel_offsets(kernel_size: int, tensor_stride: int, device: torch.device) -> torch.Tensor:
    """(K, 3) offsets in MinkowskiEngine order (x fastest): centred for odd kernels, ``[0, k)`` for even,
    scaled by the tensor stride the kernel works at.

    Args:
        kernel_size (int): k, the same along x, y and z.
        tensor_stride (int): the grid step the offsets are counted in (a convolution's input stride,
            a generative transposed convolution's output stride).
        device (torch.device): where the offsets are made.

    Returns:
        torch.Tensor: (k**3, 3) int64 ``[dx, dy, dz]``; row ``x + k*y + k*k*z`` for step indices x, y, z
        in ``[0, k)``, each step being ``index - k // 2`` (odd k) or ``index`` (even k), times
        ``tensor_stride``. Row k of a kernel's weight ``(k**3, in, out)`` belongs to offset row k.
    """
    if kernel_size % 2:
        steps = torch.arange(kernel_size, device=device) - kernel_size // 2
    else:
        steps = torch.arange(kernel_size, device=device)
    z, y, x = torch.meshgrid(steps, steps, steps, indexing="ij")
    return torch.stack([x.reshape(-1), y.reshape(-1), z.reshape(-1)], dim=1) * tensor_stride


class CoordinateManager:
    """Per-network-input cache of strided coordinate sets and kernel maps.

    ``cache_maps=False`` keeps no kernel map: a convolution under ``torch.no_grad`` then builds its map
    one kernel offset at a time and drops each offset's pairs once used, and a generative transposed
    convolution's map is dropped with its output, so inference never holds a whole map. That suits
    networks that use every map once, like the completion network, whose full-resolution map is
    otherwise its largest allocation.

    Strided coordinate sets are cached whatever ``cache_maps`` says. Caches are keyed by
    ``CoordinateSet.id``, so only tensors sharing a set object (not an equal set) share maps.

    Args:
        cache_maps (bool): keep convolution and generative kernel maps for reuse by later layers on
            the same voxels, as MinkowskiEngine does. Default True.
    """

    def __init__(self, cache_maps: bool = True) -> None:
        self.cache_maps = cache_maps
        self._strided: Dict[Tuple[int, int], CoordinateSet] = {}
        self._maps: Dict[tuple, KernelMap] = {}
        self._generated: Dict[tuple, Tuple[CoordinateSet, KernelMap]] = {}

    def strided(self, coordinates: CoordinateSet, out_stride: int) -> CoordinateSet:
        """Voxels at ``floor(c / out_stride) * out_stride`` (sorted, unique).

        Args:
            coordinates (CoordinateSet): the input voxels.
            out_stride (int): the output tensor stride (input stride times the layer's stride);
                flooring rounds towards minus infinity, the batch index is kept.

        Returns:
            CoordinateSet: the distinct floored voxels, keys ascending (``is_sorted``), cached per
            (set id, ``out_stride``).
        """
        cache_key = (coordinates.id, out_stride)
        if cache_key not in self._strided:
            if key_aligned(out_stride):
                floored = floor_keys(coordinates.keys, out_stride)
            else:
                strided = coordinates.coordinates.clone()
                strided[:, 1:] = torch.div(strided[:, 1:], out_stride, rounding_mode="floor") * out_stride
                floored = pack(strided)
            self._strided[cache_key] = CoordinateSet.from_keys(torch.unique(floored, sorted=True), is_sorted=True)
        return self._strided[cache_key]

    def convolution_map(self, inputs: CoordinateSet, outputs: CoordinateSet, kernel_size: int, in_stride: int) -> KernelMap:
        """For each offset o: pairs (i, j) with input voxel i at output voxel j + o.

        Args:
            inputs (CoordinateSet): the input voxels (N_in).
            outputs (CoordinateSet): the output voxels (N_out); ``inputs`` itself for a stride-1
                convolution, which lets a halo table find the pairs.
            kernel_size (int): k; the offsets are ``kernel_offsets(k, in_stride)``.
            in_stride (int): the input tensor stride.

        Returns:
            list[tuple[torch.Tensor, torch.Tensor]]: k**3 entries in offset order, each
            ``(input rows, output rows)``, int64 of equal length, output rows ascending. Cached per
            (input id, output id, k, ``in_stride``) when ``cache_maps``.

        Raises:
            ValueError: an output voxel plus an offset leaves the packable range.
        """
        cache_key = (inputs.id, outputs.id, kernel_size, in_stride)
        kernel_map = self._maps.get(cache_key)
        if kernel_map is None:
            kernel_map = list(self.convolution_pairs(inputs, outputs, kernel_size, in_stride))
            if self.cache_maps:
                self._maps[cache_key] = kernel_map
        return kernel_map

    def convolution_pairs(self, inputs: CoordinateSet, outputs: CoordinateSet, kernel_size: int, in_stride: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """The map of ``convolution_map`` one offset at a time, each built only when it is asked for.

        Args and raises as ``convolution_map``; yields its entries in offset order (a cached map if
        there is one) and caches nothing.
        """
        cached = self._maps.get((inputs.id, outputs.id, kernel_size, in_stride))
        if cached is not None:
            yield from cached
            return
        offsets = kernel_offsets(kernel_size, in_stride, outputs.keys.device)
        outputs.check_reach(offsets)
        table = halo_table_for(inputs, offsets, in_stride) if inputs is outputs else None
        if table is not None:
            yield from table.pairs(offsets // in_stride)
            return
        for delta in key_offset(offsets).tolist():
            found, rows = inputs.find(outputs.keys + delta)
            out_rows = torch.nonzero(found).reshape(-1)
            yield rows[out_rows], out_rows

    def generative_transposed(self, inputs: CoordinateSet, kernel_size: int, out_stride: int) -> Tuple[CoordinateSet, KernelMap]:
        """New voxels ``input + offset`` for every offset, and the map input -> generated voxel.

        Args:
            inputs (CoordinateSet): the input voxels (N_in).
            kernel_size (int): k; the offsets are ``kernel_offsets(k, out_stride)``.
            out_stride (int): the output tensor stride (input stride divided by the layer's stride).

        Returns:
            tuple[CoordinateSet, list]: the generated voxels (distinct, keys ascending) and, for each
            of the k**3 offsets in order, ``(arange(N_in), row of input + offset)``. Cached per
            (input id, k, ``out_stride``) when ``cache_maps``.

        Raises:
            ValueError: an input voxel plus an offset leaves the packable range.
        """
        cache_key = (inputs.id, kernel_size, out_stride)
        cached = self._generated.get(cache_key)
        if cached is not None:
            return cached
        offsets = kernel_offsets(kernel_size, out_stride, inputs.keys.device)
        inputs.check_reach(offsets)
        deltas = key_offset(offsets)
        generated = (inputs.keys[None, :] + deltas[:, None]).reshape(-1)
        keys = torch.unique(generated, sorted=True)
        del generated
        outputs = CoordinateSet.from_keys(keys, is_sorted=True)
        rows = torch.arange(len(inputs), device=inputs.keys.device)
        kernel_map = [(rows, torch.searchsorted(keys, inputs.keys + delta)) for delta in deltas.tolist()]
        if self.cache_maps:
            self._generated[cache_key] = (outputs, kernel_map)
        return outputs, kernel_map
