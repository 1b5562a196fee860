"""Bundled sparse convolution engine in pure PyTorch, numerically matching MinkowskiEngine 0.5.4.

It installs wherever PyTorch does (no compiler, CPU or CUDA) and loads MinkowskiEngine state dicts.
"""

from .dense import batch_coordinates, from_mask, target_mask, to_dense, to_mask
from .kernel_map import CoordinateManager, kernel_offsets
from .ops import ELU, BatchNorm, Conv3d, GenerativeConvTranspose3d, ReLU, Sigmoid, prune, union_add
from .tensor import CoordinateSet, SparseTensor, pack, unpack

__all__ = [
    "BatchNorm", "Conv3d", "CoordinateManager", "CoordinateSet", "ELU", "GenerativeConvTranspose3d", "ReLU",
    "Sigmoid", "SparseTensor", "batch_coordinates", "from_mask", "kernel_offsets", "pack", "prune", "target_mask",
    "to_dense", "to_mask", "union_add", "unpack",
]
