"""Conversions between sparse tensors and dense masks/volumes, and per-scale training targets."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .kernel_map import CoordinateManager
from .keys import CoordinateSet
from .tensor import SparseTensor

MaskLike = Union[np.ndarray, torch.Tensor]


def from_mask(masks: Union[MaskLike, Sequence[MaskLike]], device: Optional[Union[str, torch.device]] = None,
              cache_maps: bool = True) -> SparseTensor:
    """Sparse tensor with feature 1 on every non-zero voxel; a list of (X, Y, Z) masks makes a batch.

    ``cache_maps=False`` gives it a coordinate manager that keeps no kernel maps (see ``CoordinateManager``).

    Args:
        masks (np.ndarray or torch.Tensor, or a non-empty sequence of them): (X, Y, Z) masks of any
            dtype; non-zero voxels are kept. Mask b of a sequence gets batch index b.
        device (str or torch.device, optional): where the tensor is made; default the CPU.
        cache_maps (bool): passed to the new ``CoordinateManager``. Default True.

    Returns:
        SparseTensor: (N, 1) ones (default float dtype) at tensor stride 1 on coordinates
        ``[b, i, j, k]`` (array indices), batch by batch in C order.

    Raises:
        ValueError: a mask is not 3D.
    """
    if isinstance(masks, (np.ndarray, torch.Tensor)):
        masks = [masks]
    parts = []
    for batch, mask in enumerate(masks):
        mask = torch.as_tensor(np.asarray(mask) if isinstance(mask, np.ndarray) else mask)
        if mask.dim() != 3:
            raise ValueError(f"masks must be 3D (X, Y, Z); got shape {tuple(mask.shape)}")
        voxels = torch.nonzero(mask != 0)
        parts.append(torch.cat([torch.full((len(voxels), 1), batch, dtype=torch.long), voxels], dim=1))
    coordinates = torch.cat(parts).to(device)
    return SparseTensor(torch.ones(len(coordinates), 1, device=coordinates.device), coordinates,
                        coordinate_manager=CoordinateManager(cache_maps=cache_maps))


def to_mask(x: SparseTensor, shape: Sequence[int]) -> np.ndarray:
    """The voxels of a single-batch tensor as a uint8 mask of ``shape``; voxels outside the array (a
    generative network can grow beyond its input) are dropped.

    Args:
        x (SparseTensor): its coordinates ``[batch, x, y, z]`` are used as array indices as they are
            (not divided by the tensor stride); the batch index is ignored, so every batch item lands
            in the one mask.
        shape (Sequence[int]): (X, Y, Z) of the mask.

    Returns:
        np.ndarray: uint8 (X, Y, Z), 1 at the voxels inside ``[0, shape)``, 0 elsewhere.
    """
    coordinates = x.C[:, 1:].cpu().numpy()
    inside = np.all((coordinates >= 0) & (coordinates < np.asarray(shape)), axis=1)
    mask = np.zeros(tuple(shape), dtype=np.uint8)
    mask[tuple(coordinates[inside].T)] = 1
    return mask


def batch_coordinates(voxel_sets: Sequence[np.ndarray], device: Optional[Union[str, torch.device]] = None) -> torch.Tensor:
    """(N, 4) int64 [batch, x, y, z] coordinates of several (Ni, 3) voxel index arrays, batch b = list position.

    Args:
        voxel_sets (Sequence[np.ndarray]): (Ni, 3) integer voxel indices, one array per batch item.
        device (str or torch.device, optional): where the result is made; default the CPU.

    Returns:
        torch.Tensor: (sum Ni, 4) int64, the sets concatenated in order; (0, 4) for no sets.
    """
    parts = [np.concatenate([np.full((len(v), 1), b, np.int64), v.astype(np.int64)], axis=1) for b, v in enumerate(voxel_sets)]
    return torch.from_numpy(np.concatenate(parts) if parts else np.zeros((0, 4), np.int64)).to(device)


def to_dense(x: SparseTensor, shape: Optional[Tuple[int, int, int]] = None) -> torch.Tensor:
    """(B, C, X, Y, Z) with coordinates divided by the tensor stride; zeros where no voxel is.

    Args:
        x (SparseTensor): (N, C) features at tensor stride ts; voxel ``[b, x, y, z]`` goes to
            ``[b, :, x // ts, y // ts, z // ts]``.
        shape (tuple[int, int, int], optional): (X, Y, Z) in grid steps; default the largest index
            plus one on each axis ((0, 0, 0) for an empty tensor). Indices beyond a given shape fail
            in ``index_put``.

    Returns:
        torch.Tensor: (B, C, X, Y, Z) in ``x.F``'s dtype and device, B the largest batch index plus
        one (1 for an empty tensor).

    Raises:
        ValueError: a coordinate is negative.
    """
    voxels = x.C[:, 1:] // x.tensor_stride
    if len(x) and int(voxels.min()) < 0:
        raise ValueError("negative coordinates cannot be written into a dense volume")
    batches = int(x.C[:, 0].max()) + 1 if len(x) else 1
    if shape is None:
        shape = tuple(int(v) + 1 for v in voxels.max(dim=0).values) if len(x) else (0, 0, 0)
    dense = x.F.new_zeros(batches, *shape, x.F.shape[1])
    dense = dense.index_put((x.C[:, 0], voxels[:, 0], voxels[:, 1], voxels[:, 2]), x.F)
    return dense.permute(0, 4, 1, 2, 3)


def target_mask(x: SparseTensor, target_coordinates: torch.Tensor) -> torch.Tensor:
    """(N,) bool: which voxels of ``x`` contain a target voxel (targets given at stride 1).

    Args:
        x (SparseTensor): N voxels at tensor stride ts.
        target_coordinates (torch.Tensor): (M, 4) integer ``[batch, x, y, z]`` at stride 1, floored to
            ``floor(c / ts) * ts`` before matching.

    Returns:
        torch.Tensor: (N,) bool on ``x``'s device, True where a floored target equals the voxel: the
        per-scale classification target of a generative completion network.

    Raises:
        ValueError: ``pack`` refuses the floored targets.
    """
    strided = target_coordinates.to(device=x.device, dtype=torch.long).clone()
    strided[:, 1:] = torch.div(strided[:, 1:], x.tensor_stride, rounding_mode="floor") * x.tensor_stride
    found, _ = CoordinateSet(strided).find(x.coordinate_set.keys)
    return found
