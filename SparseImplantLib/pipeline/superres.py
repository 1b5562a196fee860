"""Shape super-resolution: the completed skull's implant region redrawn on a finer grid.

The completion network works on a coarse grid, so the implant's rim meets the defect edge to within a
coarse voxel. A second network of the same architecture (the paper's shape super-resolution,
model kind ``super_resolution``) takes the coarse completed skull upsampled to a finer grid and
returns the skull on that grid. Unlike the paper's, its input has a second channel, the defective
skull on the fine grid: at implant time that bone is known exactly, and the rim should meet it.
Only a box around the bone the coarse network added (plus ``REFINE_MARGIN_MM``) is refined; the
same box is what training crops, so both see the same kind of input. Whether it pays off is a
measurement, kept with the models trained here: README, "Shape super-resolution".
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from ..sparse import CoordinateManager, SparseTensor, batch_coordinates, to_mask
from .volume import Box, Volume, canonical_grid, foreground_box, resample_mask, resample_soft_mask

REFINE_MARGIN_MM = 12.0
MIN_COMPONENT_SHARE = 0.2
INPUT_CHANNELS = 2  # [coarse completed skull, defective skull], both on the fine grid


def upsample_coarse(coarse_fraction: Volume, fine_grid: Volume, smoothing: float) -> np.ndarray:
    """The coarse skull (values in [0, 1]) as a binary uint8 mask on ``fine_grid``; training and
    inference both go through here so the network sees the same interpolation."""
    return resample_soft_mask(coarse_fraction, fine_grid, smoothing=smoothing).array


def added_bone(coarse: np.ndarray, defective: np.ndarray) -> np.ndarray:
    """Where the coarse skull adds bone to the defective one: the difference, opened (the two masks'
    surfaces differ by a voxel all over the skull) and cut to its components of at least
    ``MIN_COMPONENT_SHARE`` of the largest (a bilateral defect has two)."""
    from scipy import ndimage

    cube = np.ones((3, 3, 3), bool)
    opened = ndimage.binary_opening((coarse > 0) & (defective == 0), structure=cube)
    labels, count = ndimage.label(opened, structure=cube)
    if count == 0:
        return opened
    sizes = np.bincount(labels.ravel())[1:]
    return np.isin(labels, 1 + np.flatnonzero(sizes >= MIN_COMPONENT_SHARE * sizes.max()))


def refine_box(coarse: np.ndarray, defective: np.ndarray, spacing: Sequence[float]) -> Optional[Box]:
    """Box around ``added_bone`` grown by ``REFINE_MARGIN_MM``; None when the coarse skull adds none."""
    added = added_bone(coarse, defective)
    if not added.any():
        return None
    return foreground_box(added, int(np.ceil(REFINE_MARGIN_MM / min(spacing))))


def input_voxels(coarse: np.ndarray, defective: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(N, 3) voxel indices of the union of both masks and their (N, 2) float32 channel values."""
    voxels = np.argwhere((coarse > 0) | (defective > 0))
    index = tuple(voxels.T)
    features = np.stack([coarse[index] > 0, defective[index] > 0], axis=1).astype(np.float32)
    return voxels, features


def batch_input(examples: Sequence[Tuple[np.ndarray, np.ndarray]], device: torch.device,
                cache_maps: bool = True) -> SparseTensor:
    """A batch of ``input_voxels`` results as one sparse tensor ([batch, x, y, z] coordinates)."""
    features = np.concatenate([f for _, f in examples]) if examples else np.zeros((0, INPUT_CHANNELS), np.float32)
    return SparseTensor(torch.from_numpy(features).to(device), batch_coordinates([v for v, _ in examples], device),
                        coordinate_manager=CoordinateManager(cache_maps=cache_maps))


@torch.no_grad()
def refine_mask(network: torch.nn.Module, coarse: np.ndarray, defective: np.ndarray, device: torch.device) -> np.ndarray:
    """The network's skull on the grid of ``coarse``/``defective`` (one box); generated voxels outside
    the array are dropped. Kernel maps are not cached (each is used once)."""
    result = network(batch_input([input_voxels(coarse, defective)], device, cache_maps=False))
    return to_mask(result.output, coarse.shape)


def refine_skull(coarse_fraction: Volume, defective: Volume, network: torch.nn.Module, spacing: Sequence[float],
                 device: torch.device, smoothing: float, margin_mm: float) -> Volume:
    """The completed skull on a canonical ``spacing`` grid over the skull plus ``margin_mm``: the
    upsampled coarse skull, redrawn by the network inside ``refine_box``; always contains the defective skull."""
    fine_grid = canonical_grid(defective, spacing, margin_mm)
    coarse = upsample_coarse(coarse_fraction, fine_grid, smoothing)
    defective_fine = resample_mask(defective, fine_grid).array
    completed = coarse | defective_fine
    box = refine_box(coarse, defective_fine, spacing)
    if box is not None:
        completed[box] = refine_mask(network, coarse[box], defective_fine[box], device) | defective_fine[box]
    return fine_grid.with_array(completed)
