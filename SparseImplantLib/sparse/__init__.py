"""Bundled sparse convolution engine in pure PyTorch, numerically matching MinkowskiEngine 0.5.4.

It installs wherever PyTorch does (no compiler, CPU or CUDA) and loads MinkowskiEngine state dicts.
Its modules stack without a cycle, each importing only those before it: ``keys`` (packed coordinates,
``CoordinateSet``) -> ``halo_table`` -> ``kernel_map`` -> ``tensor`` -> ``ops`` (layers) and ``dense``
(masks in and out).
"""

from .dense import batch_coordinates, from_mask, target_mask, to_dense, to_mask
from .kernel_map import CoordinateManager, kernel_offsets
from .keys import CoordinateSet, pack, unpack
from .ops import BatchNorm, Conv3d, GenerativeConvTranspose3d, ReLU, prune
from .tensor import SparseTensor, union_add

__all__ = [
    "BatchNorm", "Conv3d", "CoordinateManager", "CoordinateSet", "GenerativeConvTranspose3d", "ReLU", "SparseTensor",
    "batch_coordinates", "from_mask", "kernel_offsets", "pack", "prune", "target_mask", "to_dense", "to_mask",
    "union_add", "unpack",
]
