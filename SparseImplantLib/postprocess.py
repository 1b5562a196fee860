"""Implant = completed skull minus defective skull, cleaned up the way strong AutoImplant entries do.

The raw difference holds the implant plus a thin rim wherever the completed surface does not line up
voxel-for-voxel with the defective one. An opening separates the implant from rims thinner than the
structuring element, connected components that do not touch the defect border are dropped, the kept
pieces get back the edge voxels the opening shaved off, and holes are filled, so the result is one
solid piece that reaches the defect border.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from .volume import foreground_box


def ball(radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    """Ellipsoidal structuring element of a physical radius on an anisotropic grid (at least 3 voxels wide)."""
    radii = np.maximum(1, np.round(radius_mm / np.asarray(spacing, dtype=float))).astype(int)
    grid = np.ogrid[tuple(slice(-r, r + 1) for r in radii)]
    return sum((g / r) ** 2 for g, r in zip(grid, radii)) <= 1.0


def extract_implant(
    completed: np.ndarray,
    defective: np.ndarray,
    spacing: Sequence[float],
    opening_radius_mm: float = 1.0,
    min_fraction_of_largest: float = 0.1,
) -> np.ndarray:
    """Boolean implant mask on the input grid.

    Components of the opened difference are kept when they touch the defective skull (grown by one
    voxel) and hold at least ``min_fraction_of_largest`` of the largest such component's voxels.
    """
    completed = completed.astype(bool)
    defective = defective.astype(bool)
    difference = completed & ~defective
    if not difference.any():
        return np.zeros_like(difference)
    structure = ball(opening_radius_mm, spacing)
    margin = max(structure.shape) + 2
    box = foreground_box(difference, margin)
    opened = ndimage.binary_opening(difference[box], structure=structure)
    if not opened.any():
        return np.zeros_like(difference)
    labels, count = ndimage.label(opened, structure=np.ones((3, 3, 3), bool))
    border = ndimage.binary_dilation(defective[box], structure=np.ones((3, 3, 3), bool)) & opened
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    touching = np.unique(labels[border])
    touching = touching[touching > 0]
    if touching.size == 0:
        return np.zeros_like(difference)
    largest = sizes[touching].max()
    keep = touching[sizes[touching] >= min_fraction_of_largest * largest]
    # Give the kept pieces back what the opening shaved off their edges (where they meet the defect
    # border), but nothing of the rims further away.
    steps = max(structure.shape) // 2 + 1
    restored = ndimage.binary_dilation(np.isin(labels, keep), iterations=steps, mask=difference[box])
    implant_box = ndimage.binary_fill_holes(restored)
    implant = np.zeros_like(difference)
    implant[box] = implant_box & ~defective[box]
    return implant
