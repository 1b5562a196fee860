"""The AutoImplant challenge metrics: Dice (DSC), border Dice (bDSC) and the 95th percentile Hausdorff
distance (HD95), all in physical millimetres.

Definitions follow the challenge's evaluation code (MedPy's ``dc``/``hd95`` plus the AutoImplant 2021
``bdc``):

- DSC = 2|A∩B| / (|A|+|B|).
- bDSC is the DSC of the two implants after removing every voxel farther than 10 mm (Euclidean, with the
  voxel spacing) from the defective skull, i.e. it scores how well the implant fits the defect's rim.
- HD95 takes the surface voxels of each mask (the mask minus its 6-connected erosion), the distance of
  every surface voxel of A to the nearest surface voxel of B and vice versa, and returns the 95th
  percentile of the union of both distance sets (not the maximum of two directed percentiles).

Masks are ``[i, j, k]`` arrays and ``spacing`` the mm per index step; the direction matrix does not
change distances, so it is not needed. Everything is computed inside the joint bounding box of the
masks (plus the margin each metric needs), which gives the same numbers as the full 512x512xZ grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from .pipeline.volume import find_foreground_box

Box = Tuple[slice, slice, slice]

BORDER_DISTANCE_MM = 10.0
_SIX_CONNECTED = ndimage.generate_binary_structure(3, 1)


@dataclass(frozen=True)
class Metric:
    """How one score of ``evaluate.evaluate_case`` is named and shown, wherever it is shown."""

    key: str  # in report.json and evaluation.json
    column: str  # evaluation.md's column title
    label: str  # the Slicer module's results table
    unit: str
    number_format: str


METRICS = (
    Metric("dsc", "DSC", "Dice (implant)", "", "{:.4f}"),
    Metric("bdsc", "bDSC", "Border Dice (10 mm)", "", "{:.4f}"),
    Metric("hd95_mm", "HD95 (mm)", "HD95", "mm", "{:.3f}"),
    Metric("skull_dsc", "skull DSC", "Dice (completed skull)", "", "{:.4f}"),
)


def _binary(mask: np.ndarray) -> np.ndarray:
    return np.asarray(mask) != 0


def _check_same_shape(*masks: np.ndarray) -> None:
    shapes = {tuple(mask.shape) for mask in masks}
    if len(shapes) != 1:
        raise ValueError(f"masks must have the same shape, got {sorted(shapes)}")


def _check_spacing(spacing: Sequence[float]) -> np.ndarray:
    spacing = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if spacing.size != 3 or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ValueError(f"spacing must be three positive numbers (mm), got {spacing.tolist()}")
    return spacing


def joint_box(masks: Sequence[np.ndarray], margins: Sequence[int]) -> Optional[Box]:
    """Index box around the foreground of all ``masks``, grown by ``margins`` voxels per axis and clipped
    to the array; None when every mask is empty."""
    union = masks[0]
    for mask in masks[1:]:
        union = union | mask
    return find_foreground_box(union, margins)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice similarity coefficient of two binary masks (non-zero = foreground).

    Two empty masks agree perfectly, so their DSC is defined as 1.0 (MedPy/the challenge return 0.0
    there, which would punish correctly predicting "no implant").
    """
    a, b = _binary(a), _binary(b)
    _check_same_shape(a, b)
    size_a, size_b = int(np.count_nonzero(a)), int(np.count_nonzero(b))
    if size_a + size_b == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(a & b)) / (size_a + size_b)


def border_region(defective: np.ndarray, spacing: Sequence[float], distance_mm: float = BORDER_DISTANCE_MM) -> np.ndarray:
    """Voxels within ``distance_mm`` (Euclidean, physical) of the defective skull."""
    spacing = _check_spacing(spacing)
    bone = _binary(defective)
    if not bone.any():
        return np.zeros(bone.shape, dtype=bool)
    return ndimage.distance_transform_edt(~bone, sampling=spacing) <= distance_mm


def border_dice(
    prediction: np.ndarray,
    truth: np.ndarray,
    defective: np.ndarray,
    spacing: Sequence[float],
    distance_mm: float = BORDER_DISTANCE_MM,
) -> float:
    """Border DSC: the DSC of the implants restricted to voxels within ``distance_mm`` of the defective
    skull (empty in both, e.g. nothing near the rim, counts as 1.0 like ``dice``)."""
    prediction, truth, defective = _binary(prediction), _binary(truth), _binary(defective)
    _check_same_shape(prediction, truth, defective)
    spacing = _check_spacing(spacing)
    # Any bone voxel within distance_mm of an implant voxel lies inside the implants' box grown by
    # distance_mm, so the distance transform of that box is exact where it matters (<= distance_mm).
    margins = [int(math.ceil(distance_mm / s)) + 1 for s in spacing]
    box = joint_box([prediction, truth], margins)
    if box is None:
        return 1.0
    near = border_region(defective[box], spacing, distance_mm)
    return dice(prediction[box] & near, truth[box] & near)


def _surface(mask: np.ndarray) -> np.ndarray:
    """Foreground voxels with a 6-neighbour outside the mask (voxels on the array edge count too)."""
    return mask & ~ndimage.binary_erosion(mask, structure=_SIX_CONNECTED, border_value=0)


def surface_distances(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> Tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of ``a`` to the nearest surface voxel of ``b`` and back.

    Both masks must be non-empty.
    """
    a, b = _binary(a), _binary(b)
    _check_same_shape(a, b)
    spacing = _check_spacing(spacing)
    # Nearest surface voxels are always inside the joint box; one voxel of margin keeps the erosion
    # identical to the full grid's.
    box = joint_box([a, b], (1, 1, 1))
    if box is None or not a.any() or not b.any():
        raise ValueError("surface distances need two non-empty masks")
    surface_a, surface_b = _surface(a[box]), _surface(b[box])
    to_b = ndimage.distance_transform_edt(~surface_b, sampling=spacing)[surface_a]
    to_a = ndimage.distance_transform_edt(~surface_a, sampling=spacing)[surface_b]
    return to_b, to_a


def hd95(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> float:
    """95th percentile symmetric surface distance in mm (MedPy/challenge convention, see module doc).

    Both empty: 0.0 (identical). Exactly one empty: ``math.inf`` (there is no surface to measure to).
    """
    a, b = _binary(a), _binary(b)
    _check_same_shape(a, b)
    has_a, has_b = bool(a.any()), bool(b.any())
    if not has_a and not has_b:
        return 0.0
    if has_a != has_b:
        return math.inf
    to_b, to_a = surface_distances(a, b, spacing)
    return float(np.percentile(np.concatenate([to_b, to_a]), 95))


def completed_skull_dice(prediction: np.ndarray, defective: np.ndarray, true_implant: np.ndarray) -> float:
    """DSC of a completed skull against the true complete skull (defective skull + true implant)."""
    return dice(prediction, _binary(defective) | _binary(true_implant))
