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

    ``cache_maps=False`` gives it a coordinate manager that keeps no kernel maps (see ``CoordinateManager``)."""
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
    generative network can grow beyond its input) are dropped."""
    coordinates = x.C[:, 1:].cpu().numpy()
    inside = np.all((coordinates >= 0) & (coordinates < np.asarray(shape)), axis=1)
    mask = np.zeros(tuple(shape), dtype=np.uint8)
    mask[tuple(coordinates[inside].T)] = 1
    return mask


def batch_coordinates(voxel_sets: Sequence[np.ndarray], device: Optional[Union[str, torch.device]] = None) -> torch.Tensor:
    """(N, 4) int64 [batch, x, y, z] coordinates of several (Ni, 3) voxel index arrays, batch b = list position."""
    parts = [np.concatenate([np.full((len(v), 1), b, np.int64), v.astype(np.int64)], axis=1) for b, v in enumerate(voxel_sets)]
    return torch.from_numpy(np.concatenate(parts) if parts else np.zeros((0, 4), np.int64)).to(device)


def to_dense(x: SparseTensor, shape: Optional[Tuple[int, int, int]] = None) -> torch.Tensor:
    """(B, C, X, Y, Z) with coordinates divided by the tensor stride; zeros where no voxel is."""
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
    """(N,) bool: which voxels of ``x`` contain a target voxel (targets given at stride 1)."""
    strided = target_coordinates.to(device=x.device, dtype=torch.long).clone()
    strided[:, 1:] = torch.div(strided[:, 1:], x.tensor_stride, rounding_mode="floor") * x.tensor_stride
    found, _ = CoordinateSet(strided).find(x.coordinate_set.keys)
    return found
