"""Synthetic cranial defects cut into complete skulls, to multiply training data and to test
generalisation to unseen defect shapes.

Two families, both sized in millimetres and placed in the skull's own physical (LPS) frame, so oblique
scans and any spacing behave alike:

- ``skullfix``: a box through the top of the vault at the back, like the SkullFix defects.
- SkullBreak-style (``bilateral``, ``frontoorbital``, ``parietotemporal``, ``random``): a large sphere
  with satellite spheres on its surface, morphologically opened and elastically deformed (after Kodym et
  al., SkullBreak/SkullFix, Data in Brief 2021), centred on the vault in the named region.

Regions come from the LPS bounding box of the skull's voxels (L = +x, P = +y, S = +z): e.g. the
frontoorbital defect sits on the bone nearest to the middle of the box's anterior face. The sphere shape
is built on a coarse isotropic grid and only sampled at skull voxels, so a 512x512x240 case takes well
under a second besides finding its voxels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple, Union

import numpy as np
from scipy import ndimage

from ..errors import SparseImplantError
from ..metrics import joint_box
from ..volume import Volume

SKULLFIX_BOX = "skullfix"
BILATERAL, FRONTOORBITAL, PARIETOTEMPORAL, RANDOM = "bilateral", "frontoorbital", "parietotemporal", "random"
DEFECT_KINDS = (SKULLFIX_BOX, BILATERAL, FRONTOORBITAL, PARIETOTEMPORAL, RANDOM)
Range = Tuple[float, float]


@dataclass(frozen=True)
class BoxDefect:
    """SkullFix-style box: ``width`` left-right, ``depth`` anterior-posterior, reaching ``height`` down
    from the top of the skull; tilted by up to ``tilt_deg`` about the L and S axes."""

    width_mm: Range = (60.0, 100.0)
    depth_mm: Range = (45.0, 80.0)
    height_mm: Range = (35.0, 60.0)
    centre_posterior: Range = (0.55, 0.8)  # box centre as a fraction of the skull's A->P extent
    midline_jitter_mm: float = 10.0
    tilt_deg: float = 10.0


@dataclass(frozen=True)
class SphereDefect:
    """SkullBreak-style shape: primary sphere + satellites, opened, elastically deformed."""

    radius_mm: Range = (22.0, 38.0)
    satellite_radius_mm: Range = (8.0, 18.0)
    satellites: Tuple[int, int] = (0, 6)  # inclusive range of the satellite count
    opening_mm: float = 3.0
    deformation_mm: float = 6.0  # largest displacement per axis of the elastic deformation
    smoothness_mm: float = 15.0  # length scale of the deformation
    centre_jitter_mm: float = 5.0
    grid_mm: float = 1.5  # resolution at which the shape is built

    @property
    def deformation_grid_mm(self) -> float:
        """Spacing of the random noise that is blurred into the displacement field."""
        return self.smoothness_mm / 3.0


@dataclass
class _Skull:
    """Skull voxels with their LPS positions and the LPS bounding box."""

    indices: np.ndarray  # (N, 3) voxel indices
    points: np.ndarray  # (N, 3) LPS mm
    low: np.ndarray
    high: np.ndarray

    def at(self, fractions: np.ndarray) -> np.ndarray:
        """LPS point at ``fractions`` (0..1 per L, P, S) of the bounding box."""
        return self.low + np.asarray(fractions, dtype=np.float64) * (self.high - self.low)


def _skull_voxels(complete: Volume) -> _Skull:
    mask = complete.array != 0
    box = joint_box([mask], (0, 0, 0))  # argwhere over the whole 512x512xZ grid would be the slow part
    if box is None:
        raise SparseImplantError("the complete skull is empty: a defect needs a skull mask to cut into")
    indices = np.argwhere(mask[box]) + np.array([s.start for s in box])
    matrix = complete.index_to_lps()
    points = _times_rows(indices, matrix[:3, :3].T) + matrix[:3, 3]
    return _Skull(indices, points, points.min(axis=0), points.max(axis=0))


def _times_rows(rows: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``rows @ matrix`` for millions of 3-vectors; numpy's matmul is several times slower here."""
    return rows[:, 0:1] * matrix[0] + rows[:, 1:2] * matrix[1] + rows[:, 2:3] * matrix[2]


def _uniform(rng: np.random.Generator, bounds: Range) -> float:
    low, high = bounds
    if high < low:
        raise SparseImplantError(f"size range {bounds} runs backwards: give (smallest, largest)")
    return float(rng.uniform(low, high))


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """Small random rotation about the L (pitch) and S (yaw) axes."""
    pitch, yaw = np.deg2rad(rng.uniform(-max_deg, max_deg, size=2))
    about_l = np.array([[1, 0, 0], [0, np.cos(pitch), -np.sin(pitch)], [0, np.sin(pitch), np.cos(pitch)]])
    about_s = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
    return about_s @ about_l


def _box_cut(skull: _Skull, spec: BoxDefect, rng: np.random.Generator) -> np.ndarray:
    """Which skull voxels fall inside a random SkullFix-style box (open towards the top)."""
    half = np.array([_uniform(rng, spec.width_mm), _uniform(rng, spec.depth_mm)]) / 2
    height = _uniform(rng, spec.height_mm)
    centre = skull.at([0.5, _uniform(rng, spec.centre_posterior), 1.0])
    centre[0] += rng.uniform(-spec.midline_jitter_mm, spec.midline_jitter_mm)
    # Box frame coordinates of every skull point; the box top lies on the skull's top plane.
    local = _times_rows(skull.points - centre, _rotation(rng, spec.tilt_deg))
    return (np.abs(local[:, 0]) <= half[0]) & (np.abs(local[:, 1]) <= half[1]) & (local[:, 2] >= -height)


def _anchor(kind: str, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Point on the skull's bounding box (fractions of L, P, S) whose nearest bone is the defect centre,
    and the stretch of the primary sphere along L, P, S."""
    if kind == FRONTOORBITAL:
        return np.array([rng.uniform(0.35, 0.65), 0.0, rng.uniform(0.45, 0.6)]), np.array([1.2, 1.0, 1.0])
    if kind == PARIETOTEMPORAL:
        side = float(rng.integers(0, 2))
        return np.array([side, rng.uniform(0.35, 0.65), rng.uniform(0.45, 0.7)]), np.array([1.0, 1.2, 1.0])
    if kind == BILATERAL:
        return np.array([rng.uniform(0.45, 0.55), rng.uniform(0.3, 0.65), 1.0]), np.array([1.6, 1.0, 1.0])
    # random: a direction from the box centre through the upper part of the skull
    direction = rng.normal(size=3)
    direction[2] = abs(direction[2]) + 0.3
    direction /= np.abs(direction).max()
    return 0.5 + 0.5 * direction, np.ones(3)


def _sphere_shape(
    spec: SphereDefect, stretch: np.ndarray, rng: np.random.Generator
) -> Tuple[np.ndarray, np.ndarray, float]:
    """The undeformed defect on an isotropic grid centred on the defect, its displacement field (3
    components on a coarser grid, in mm) and the half extent (mm) both grids cover."""
    radii = _uniform(rng, spec.radius_mm) * stretch
    count = int(rng.integers(spec.satellites[0], spec.satellites[1] + 1))
    satellite_radii = [_uniform(rng, spec.satellite_radius_mm) for _ in range(count)]
    half_extent = float(radii.max() + max(satellite_radii, default=0.0) + 2 * spec.grid_mm)
    axis = np.arange(-half_extent, half_extent + 1e-9, spec.grid_mm)
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij", sparse=True)
    shape = (x / radii[0]) ** 2 + (y / radii[1]) ** 2 + (z / radii[2]) ** 2 <= 1.0
    for radius in satellite_radii:
        direction = rng.normal(size=3)
        on_surface = direction / np.sqrt(np.sum((direction / radii) ** 2))  # a point of the ellipsoid
        shape |= (x - on_surface[0]) ** 2 + (y - on_surface[1]) ** 2 + (z - on_surface[2]) ** 2 <= radius**2
    ball_radius = max(1, int(round(spec.opening_mm / spec.grid_mm)))
    offsets = np.indices((2 * ball_radius + 1,) * 3) - ball_radius
    ball = np.sum(offsets**2, axis=0) <= ball_radius**2
    shape = ndimage.binary_opening(shape, structure=ball)
    # Smooth random displacement: noise on a grid at a third of the length scale, blurred by three of
    # its steps, scaled so the largest displacement per axis is ``deformation_mm``.
    coarse = int(np.ceil(2 * half_extent / spec.deformation_grid_mm)) + 1
    noise = ndimage.gaussian_filter(rng.uniform(-1.0, 1.0, size=(3, coarse, coarse, coarse)), sigma=(0, 3, 3, 3))
    noise *= spec.deformation_mm / np.maximum(np.abs(noise).reshape(3, -1).max(axis=1), 1e-12)[:, None, None, None]
    return shape.astype(np.float32), noise, half_extent


def _sphere_cut(skull: _Skull, kind: str, spec: SphereDefect, rng: np.random.Generator) -> np.ndarray:
    """Which skull voxels fall inside a random SkullBreak-style defect in the region of ``kind``."""
    fractions, stretch = _anchor(kind, rng)
    anchor = skull.at(fractions)
    centre = skull.points[np.argmin(np.sum((skull.points - anchor) ** 2, axis=1))]
    centre = centre + rng.normal(scale=spec.centre_jitter_mm / np.sqrt(3), size=3)
    shape, displacement, half_extent = _sphere_shape(spec, stretch, rng)
    reach = half_extent + np.sqrt(3) * spec.deformation_mm
    candidates = np.flatnonzero(np.all(np.abs(skull.points - centre) <= reach, axis=1))
    relative = (skull.points[candidates] - centre).T  # (3, n) mm
    coarse_coordinates = (relative + half_extent) / spec.deformation_grid_mm
    moved = relative + np.stack(
        [ndimage.map_coordinates(field, coarse_coordinates, order=1, mode="nearest") for field in displacement]
    )
    inside = ndimage.map_coordinates(shape, (moved + half_extent) / spec.grid_mm, order=1, cval=0.0) >= 0.5
    cut = np.zeros(len(skull.points), dtype=bool)
    cut[candidates[inside]] = True
    return cut


def cut_defect(
    complete: Volume,
    kind: str = RANDOM,
    seed: Union[int, np.random.Generator] = 0,
    box: BoxDefect = BoxDefect(),
    spheres: SphereDefect = SphereDefect(),
    min_implant_fraction: float = 0.02,
    max_attempts: int = 20,
) -> Tuple[Volume, Volume]:
    """Cut a random defect of ``kind`` (one of ``DEFECT_KINDS``) into a complete skull.

    Returns (defective skull, implant) as uint8 masks on the complete skull's grid: they are disjoint
    and their union is the complete skull. Draws that remove less than ``min_implant_fraction`` of the
    skull are redrawn, so the implant is never trivial. Same seed, same defect.
    """
    if kind not in DEFECT_KINDS:
        raise SparseImplantError(f"unknown defect kind '{kind}': use one of {', '.join(DEFECT_KINDS)}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    skull = _skull_voxels(complete)
    for _ in range(max_attempts):
        cut = _box_cut(skull, box, rng) if kind == SKULLFIX_BOX else _sphere_cut(skull, kind, spheres, rng)
        if np.count_nonzero(cut) >= min_implant_fraction * len(cut):
            removed = tuple(skull.indices[cut].T)
            implant = np.zeros(complete.shape, dtype=np.uint8)
            implant[removed] = 1
            defective = (complete.array != 0).astype(np.uint8)
            defective[removed] = 0
            return complete.with_array(defective), complete.with_array(implant)
    raise SparseImplantError(
        f"no {kind} defect removing at least {min_implant_fraction:.0%} of the skull in {max_attempts} attempts:"
        " check that the mask is a complete skull, or use smaller min_implant_fraction / larger defect sizes"
    )
