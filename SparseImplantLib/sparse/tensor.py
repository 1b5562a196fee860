"""Sparse tensors: per-voxel features on a ``CoordinateSet`` at one tensor stride, with the coordinate
manager (kernel-map cache) they share; adding two of them sums over the union of their voxels.
"""

from __future__ import annotations

from typing import Optional

import torch

from .kernel_map import CoordinateManager
from .keys import CoordinateSet


class SparseTensor:
    """Features (N, C) on voxels (N, 4) ``[batch, x, y, z]`` at one tensor stride.

    As in MinkowskiEngine, coordinates stay in stride-1 voxel units at every stride: a tensor at
    stride s made by the layers has coordinates that are multiples of s.

    Args:
        features (torch.Tensor): (N, C) features, row i belonging to voxel i.
        coordinates (torch.Tensor, optional): (N, 4) integer ``[batch, x, y, z]``, moved to the
            features' device as int64 and packed into a new ``CoordinateSet``. Ignored when
            ``coordinate_set`` is given. Rows should be distinct (not checked, not merged).
        tensor_stride (int): the grid step of the voxels. Default 1.
        coordinate_manager (CoordinateManager, optional): the kernel-map cache to share with the
            tensors derived from this one; default a new ``CoordinateManager()`` (maps cached).
        coordinate_set (CoordinateSet, optional): the voxels, used as they are (no copy), so that
            tensors on one set share its kernel maps.

    Attributes:
        features, coordinate_set, tensor_stride, coordinate_manager: as given (or made).
        F (torch.Tensor): the features; ``C`` and ``coordinates``: the (N, 4) int64 coordinates.

    Raises:
        ValueError: neither ``coordinates`` nor ``coordinate_set`` is given; ``features`` is not
            (N, C) with N the number of voxels; ``pack`` refuses the coordinates.
    """

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
        """Same voxels, stride and manager; new features.

        Args:
            features (torch.Tensor): (N, C') features, any C'.

        Returns:
            SparseTensor: on the same ``CoordinateSet`` object, so kernel maps stay shared.
        """
        return SparseTensor(features, tensor_stride=self.tensor_stride, coordinate_manager=self.coordinate_manager,
                            coordinate_set=self.coordinate_set)

    def __add__(self, other: "SparseTensor") -> "SparseTensor":
        return union_add(self, other)


def union_add(a: SparseTensor, b: SparseTensor) -> SparseTensor:
    """Sum over the union of both voxel sets (a voxel missing on one side counts as zero there).

    Also ``a + b``; MinkowskiEngine's sparse-tensor addition.

    Args:
        a (SparseTensor): (N_a, C) features.
        b (SparseTensor): (N_b, C) features at the same tensor stride.

    Returns:
        SparseTensor: at that stride with ``a``'s coordinate manager. When both share one
        ``CoordinateSet`` object, ``a.F + b.F`` on that set; otherwise a new set of the distinct voxels
        of both, keys ascending (batch, then x, y, z), with features in ``a.F``'s dtype.

    Raises:
        ValueError: the tensor strides differ.
    """
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
