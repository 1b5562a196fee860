"""Sparse tensors: per-voxel features on a ``CoordinateSet`` at one tensor stride, with the coordinate
manager (kernel-map cache) they share; adding two of them sums over the union of their voxels.
"""

from __future__ import annotations

from typing import Optional

import torch

from .kernel_map import CoordinateManager
from .keys import CoordinateSet


class SparseTensor:
    """Features (N, C) on voxels (N, 4) ``[batch, x, y, z]`` at one tensor stride."""

    def __init__(
        self,
        features: torch.Tensor,
        coordinates: Optional[torch.Tensor] = None,
        tensor_stride: int = 1,
        coordinate_manager: Optional[CoordinateManager] = None,
        coordinate_set: Optional[CoordinateSet] = None,
    ) -> None:
        if coordinate_set is None:
            if coordinates is None:
                raise ValueError("give coordinates or a coordinate set")
            coordinate_set = CoordinateSet(coordinates.to(device=features.device, dtype=torch.long))
        if features.dim() != 2 or features.shape[0] != len(coordinate_set):
            raise ValueError(f"features must be (N, C) with N = {len(coordinate_set)}; got {tuple(features.shape)}")
        self.features = features
        self.coordinate_set = coordinate_set
        self.tensor_stride = int(tensor_stride)
        self.coordinate_manager = coordinate_manager if coordinate_manager is not None else CoordinateManager()

    @property
    def F(self) -> torch.Tensor:
        return self.features

    @property
    def C(self) -> torch.Tensor:
        return self.coordinate_set.coordinates

    @property
    def coordinates(self) -> torch.Tensor:
        return self.coordinate_set.coordinates

    @property
    def device(self) -> torch.device:
        return self.features.device

    def __len__(self) -> int:
        return len(self.coordinate_set)

    def __repr__(self) -> str:
        return f"SparseTensor(voxels={len(self)}, channels={self.features.shape[1]}, tensor_stride={self.tensor_stride})"

    def replace_features(self, features: torch.Tensor) -> "SparseTensor":
        """Same voxels, stride and manager; new features."""
        return SparseTensor(features, tensor_stride=self.tensor_stride, coordinate_manager=self.coordinate_manager,
                            coordinate_set=self.coordinate_set)

    def __add__(self, other: "SparseTensor") -> "SparseTensor":
        return union_add(self, other)


def union_add(a: SparseTensor, b: SparseTensor) -> SparseTensor:
    """Sum over the union of both voxel sets (a voxel missing on one side counts as zero there)."""
    if a.tensor_stride != b.tensor_stride:
        raise ValueError(f"cannot add tensors at strides {a.tensor_stride} and {b.tensor_stride}")
    if a.coordinate_set is b.coordinate_set:
        return a.replace_features(a.F + b.F)
    keys = torch.unique(torch.cat([a.coordinate_set.keys, b.coordinate_set.keys]), sorted=True)
    union = CoordinateSet.from_keys(keys, is_sorted=True)
    features = a.F.new_zeros(len(keys), a.F.shape[1])
    features.index_add_(0, torch.searchsorted(keys, a.coordinate_set.keys), a.F)
    features.index_add_(0, torch.searchsorted(keys, b.coordinate_set.keys), b.F)
    return SparseTensor(features, tensor_stride=a.tensor_stride, coordinate_manager=a.coordinate_manager, coordinate_set=union)
