"""The mirror prior: the skull reflected about its mid-sagittal plane, on the network's grid.

Surgeons design a unilateral implant from the healthy side, mirrored. The plane is the one whose
mirror image of the skull lands on the skull; each mirrored voxel's distance to bone is capped at
``CAP_MM``, so voxels mirrored into the opening (or into asymmetric bone) all cost the same and cannot
pull the plane. A point of the (isotropic, orthonormal) grid is ``index * spacing`` mm (``priors``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
from scipy import ndimage, optimize
from scipy.spatial.transform import Rotation

from .pose import spread_sample

CAP_MM = 6.0  # a mirrored voxel this far from bone or further costs the same, wherever it lands (the mean skull's fit too)
AGREE_MM = 2.5  # a mirrored voxel within this of bone agrees with the skull (about one model voxel)
MIRROR_SEARCH_DEG = 35.0  # the plane's normal is sought within this of the grid's left-right axis
MIRROR_OFFSET_MM = 15.0  # ... and its offset within this of the skull's middle
SAMPLE_POINTS = 4000  # skull voxels the plane's refinement looks at (a fixed, evenly spread subset)


@dataclass(frozen=True)
class SymmetryPlane:
    """The mid-sagittal plane ``normal . q = offset_mm`` (q: grid-frame mm); ``residual_mm`` is the median
    distance of the mirrored skull's voxels to bone, ``agreement`` the share within ``AGREE_MM``."""

    normal: np.ndarray
    offset_mm: float
    residual_mm: float
    agreement: float

    def reflection(self) -> Tuple[np.ndarray, np.ndarray]:
        """(matrix, shift): the reflection q -> matrix @ q + shift."""
        normal = self.normal / np.linalg.norm(self.normal)
        return np.eye(3) - 2 * np.outer(normal, normal), 2 * self.offset_mm * normal

    @property
    def tilt_deg(self) -> float:
        """Angle between the plane's normal and the grid's left-right axis."""
        return float(np.degrees(np.arccos(min(1.0, abs(self.normal[0]) / np.linalg.norm(self.normal)))))


def _capped_distance(mask: np.ndarray, spacing: float) -> np.ndarray:
    """Distance (mm) of each voxel to the nearest bone voxel, capped at ``CAP_MM``."""
    return np.minimum(ndimage.distance_transform_edt(~mask, sampling=spacing), CAP_MM).astype(np.float32)


def _look_up(distance: np.ndarray, points_mm: np.ndarray, spacing: float) -> np.ndarray:
    return ndimage.map_coordinates(distance, (points_mm / spacing).T, order=1, mode="constant", cval=CAP_MM)


def _normal(angles_deg: np.ndarray) -> np.ndarray:
    """The left-right axis turned by ``angles_deg`` (about the vertical, then about front-back)."""
    return Rotation.from_euler("zy", angles_deg, degrees=True).apply([1.0, 0.0, 0.0])


def estimate_symmetry(mask: np.ndarray, spacing: float) -> Optional[SymmetryPlane]:
    """The skull's mid-sagittal plane on an isotropic grid (``mask``: bone); None for an empty mask.

    A coarse search over normals within ``MIRROR_SEARCH_DEG`` of the grid's left-right axis and offsets
    around the skull's middle, then a local refinement; cost: the mean capped distance to bone of the
    mirrored voxels."""
    mask = np.asarray(mask) != 0
    points = np.argwhere(mask) * spacing
    if len(points) < 10:
        return None
    distance = _capped_distance(mask, spacing)
    coarse_points, fine_points = spread_sample(points, 1000), spread_sample(points, SAMPLE_POINTS)

    def cost(parameters: np.ndarray, sample: np.ndarray) -> float:
        normal = _normal(parameters[:2])
        mirrored = sample - 2 * (sample @ normal - parameters[2])[:, None] * normal
        return float(_look_up(distance, mirrored, spacing).mean())

    steps = np.arange(-MIRROR_SEARCH_DEG, MIRROR_SEARCH_DEG + 1e-9, 5.0)
    candidates, normals, offsets = [], [], []
    for yaw, roll in itertools.product(steps, steps):
        normal = _normal(np.array([yaw, roll]))
        middle = float(np.median(points @ normal))
        for offset in np.arange(-MIRROR_OFFSET_MM, MIRROR_OFFSET_MM + 1e-9, 2.5):
            candidates.append(np.array([yaw, roll, middle + offset]))
            normals.append(normal)
            offsets.append(middle + offset)
    costs = _mean_mirrored_distances(np.array(normals), np.array(offsets), coarse_points, distance, spacing)
    start = candidates[int(np.argmin(costs))]
    refined = optimize.minimize(cost, start, args=(fine_points,), method="Powell",
                                options={"xtol": 0.05, "ftol": 1e-4, "maxfev": 600})
    normal, offset = _normal(refined.x[:2]), float(refined.x[2])
    mirrored = fine_points - 2 * (fine_points @ normal - offset)[:, None] * normal
    distances = _look_up(distance, mirrored, spacing)
    return SymmetryPlane(normal, offset, float(np.median(distances)), float(np.mean(distances <= AGREE_MM)))


def _mean_mirrored_distances(normals: np.ndarray, offsets: np.ndarray, sample: np.ndarray, distance: np.ndarray,
                             spacing: float, batch: int = 256) -> np.ndarray:
    """``estimate_symmetry``'s cost for each plane ``normals[k] . q = offsets[k]``: the same values as
    its one-plane cost, with one interpolation call per ``batch`` planes instead of one per plane (the
    coarse search tries 2,925), each plane's mean taken over its own row as the one-plane cost takes it."""
    costs = []
    for first in range(0, len(normals), batch):
        group, shifts = normals[first:first + batch], offsets[first:first + batch]
        along = sample @ group.T - shifts  # (N, B)
        mirrored = sample[None, :, :] - 2 * along.T[:, :, None] * group[:, None, :]  # (B, N, 3)
        looked_up = _look_up(distance, mirrored.reshape(-1, 3), spacing).reshape(len(group), len(sample))
        costs.extend(float(row.mean()) for row in looked_up)
    return np.array(costs)


def mirrored_mask(mask: np.ndarray, spacing: float, plane: SymmetryPlane) -> np.ndarray:
    """``mask`` reflected about ``plane`` (bool, same grid)."""
    matrix, shift = plane.reflection()
    # The reflection is its own inverse: voxel i of the result samples the mask at matrix @ i + shift / spacing.
    values = ndimage.affine_transform((np.asarray(mask) != 0).astype(np.float32), matrix, shift / spacing,
                                      order=1, mode="constant", cval=0.0)
    return values >= 0.5

