"""Synthetic cranial defects cut into complete skulls, to multiply training data and to test
generalisation to unseen defect shapes.

Three families, all sized in millimetres and placed in the skull's own physical (LPS) frame, so oblique
scans and any spacing behave alike:

- ``skullfix``: a box through the top of the vault at the back, like the SkullFix defects.
- SkullBreak-style (``bilateral``, ``frontoorbital``, ``parietotemporal``, ``random``): a large sphere
  with satellite spheres on its surface, morphologically opened and elastically deformed (after Kodym et
  al., SkullBreak/SkullFix, Data in Brief 2021), centred on the vault in the named region.
- Saw cuts (``craniotomy``, ``wedge``): straight walls running radially through the bone, as a
  craniotome cuts. A craniotomy is a disc, ellipse or polygon from a 2 cm burr-hole-sized opening to a
  hemicraniectomy, centred anywhere from low on the side of the head to the vertex (crossing the midline
  too); a wedge removes a sector of the vault between two radial planes above a given height.

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
from ..pipeline.volume import Volume, find_foreground_box

SKULLFIX_BOX = "skullfix"
BILATERAL, FRONTOORBITAL, PARIETOTEMPORAL, RANDOM = "bilateral", "frontoorbital", "parietotemporal", "random"
CRANIOTOMY, WEDGE = "craniotomy", "wedge"
SPHERE_KINDS = (BILATERAL, FRONTOORBITAL, PARIETOTEMPORAL, RANDOM)
DEFECT_KINDS = (SKULLFIX_BOX, *SPHERE_KINDS, CRANIOTOMY, WEDGE)
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


@dataclass(frozen=True)
class CraniotomyDefect:
    """Saw-cut opening: an ellipse (``aspect`` = minor / major axis) or a polygon with ``corners``
    on that ellipse, ``diameter_mm`` along its major axis, centred where the direction at
    ``elevation_deg`` above the skull centre's horizontal plane (any azimuth) meets the bone."""

    diameter_mm: Range = (20.0, 140.0)
    aspect: Range = (0.6, 1.0)
    polygon_share: float = 0.5  # share of straight-edged (polygonal) outlines
    corners: Tuple[int, int] = (4, 7)  # inclusive range of the polygon's corner count
    elevation_deg: Range = (-15.0, 90.0)


@dataclass(frozen=True)
class WedgeDefect:
    """A sector of the vault: bone above ``lowest_elevation_deg`` (seen from the skull centre) whose
    azimuth lies within ``azimuth_width_deg`` of a random start."""

    azimuth_width_deg: Range = (60.0, 110.0)
    lowest_elevation_deg: Range = (0.0, 35.0)


# Saw-cut defects spare bone nearer the skull centre than this share of the cut's radius, so a cut
# through the vault never reaches the skull base or the far side.
SPARED_INNER_SHARE = 0.55


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

    @property
    def centre(self) -> np.ndarray:
        """Roughly the vault's centre of curvature: mid L and P, 40 % of the way up (the box holds
        the skull base below the vault)."""
        return self.at([0.5, 0.5, 0.4])


def _skull_voxels(complete: Volume) -> _Skull:
    mask = complete.array != 0
    box = find_foreground_box(mask)
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


def _tangent_basis(direction: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Two unit vectors perpendicular to ``direction`` and to each other, turned by a random angle."""
    helper = np.array([0.0, 0.0, 1.0]) if abs(direction[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    first = np.cross(direction, helper)
    first /= np.linalg.norm(first)
    second = np.cross(direction, first)
    angle = rng.uniform(0.0, 2 * np.pi)
    return np.cos(angle) * first + np.sin(angle) * second, -np.sin(angle) * first + np.cos(angle) * second


def _inside_outline(u: np.ndarray, v: np.ndarray, spec: CraniotomyDefect, rng: np.random.Generator) -> np.ndarray:
    """Which points (mm in the cut's tangent plane) lie inside a random ellipse or polygon."""
    major = _uniform(rng, spec.diameter_mm) / 2
    minor = major * _uniform(rng, spec.aspect)
    if rng.random() >= spec.polygon_share:
        return (u / major) ** 2 + (v / minor) ** 2 <= 1.0
    count = int(rng.integers(spec.corners[0], spec.corners[1] + 1))
    # Corners at sorted random angles on the ellipse: a convex polygon, so inside = left of every edge.
    angles = np.sort(rng.uniform(0.0, 2 * np.pi, size=count))
    corners = np.stack([major * np.cos(angles), minor * np.sin(angles)], axis=1)
    inside = np.ones(u.shape, dtype=bool)
    for start, end in zip(corners, np.roll(corners, -1, axis=0)):
        inside &= (end[0] - start[0]) * (v - start[1]) - (end[1] - start[1]) * (u - start[0]) >= 0
    return inside


def _craniotomy_cut(skull: _Skull, spec: CraniotomyDefect, rng: np.random.Generator) -> np.ndarray:
    """Which skull voxels fall inside a random saw-cut opening: the outline is drawn on the plane
    tangent to the skull at the cut's centre and projected through the bone along rays from the skull
    centre (a gnomonic projection), so the walls run radially, as a craniotome cuts."""
    elevation = np.arcsin(rng.uniform(*np.sin(np.deg2rad(spec.elevation_deg))))  # uniform over the sphere's area
    azimuth = rng.uniform(0.0, 2 * np.pi)
    direction = np.array([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)])
    relative = skull.points - skull.centre
    distance = np.linalg.norm(relative, axis=1)
    along = relative @ direction
    aligned = along > np.cos(np.deg2rad(6.0)) * distance
    if not aligned.any():
        return np.zeros(len(relative), dtype=bool)
    radius = float(distance[aligned].max())  # the outer surface where the cut is centred
    first, second = _tangent_basis(direction, rng)
    ahead = (along > 0) & (distance >= SPARED_INNER_SHARE * radius)
    scale = radius / along[ahead]
    cut = np.zeros(len(relative), dtype=bool)
    cut[ahead] = _inside_outline(relative[ahead] @ first * scale, relative[ahead] @ second * scale, spec, rng)
    return cut


def _wedge_cut(skull: _Skull, spec: WedgeDefect, rng: np.random.Generator) -> np.ndarray:
    """Which skull voxels fall inside a random sector of the vault (radial walls, seen from the centre)."""
    relative = skull.points - skull.centre
    distance = np.linalg.norm(relative, axis=1)
    elevation = np.degrees(np.arcsin(np.clip(relative[:, 2] / np.maximum(distance, 1e-9), -1.0, 1.0)))
    start = rng.uniform(0.0, 360.0)
    azimuth = (np.degrees(np.arctan2(relative[:, 1], relative[:, 0])) - start) % 360.0
    outer = np.percentile(distance[elevation > 0], 90) if np.any(elevation > 0) else distance.max()
    return ((azimuth <= _uniform(rng, spec.azimuth_width_deg)) & (elevation >= _uniform(rng, spec.lowest_elevation_deg))
            & (distance >= SPARED_INNER_SHARE * outer))


def cut_defect(
    complete: Volume,
    kind: str = RANDOM,
    seed: Union[int, np.random.Generator] = 0,
    box: BoxDefect = BoxDefect(),
    spheres: SphereDefect = SphereDefect(),
    craniotomy: CraniotomyDefect = CraniotomyDefect(),
    wedge: WedgeDefect = WedgeDefect(),
    min_implant_fraction: float = 0.002,
    max_attempts: int = 20,
) -> Tuple[Volume, Volume]:
    """Cut a random defect of ``kind`` (one of ``DEFECT_KINDS``) into a complete skull; the
    shape of each kind is drawn from its spec (``box``, ``spheres``, ``craniotomy``, ``wedge``).

    Returns (defective skull, implant) as uint8 masks on the complete skull's grid: they are disjoint
    and their union is the complete skull. Draws that remove less than ``min_implant_fraction`` of the
    skull are redrawn, so the implant is never trivial. Same seed, same defect.
    """
    if kind not in DEFECT_KINDS:
        raise SparseImplantError(f"unknown defect kind '{kind}': use one of {', '.join(DEFECT_KINDS)}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    skull = _skull_voxels(complete)
    for _ in range(max_attempts):
        if kind == SKULLFIX_BOX:
            cut = _box_cut(skull, box, rng)
        elif kind == CRANIOTOMY:
            cut = _craniotomy_cut(skull, craniotomy, rng)
        elif kind == WEDGE:
            cut = _wedge_cut(skull, wedge, rng)
        else:
            cut = _sphere_cut(skull, kind, spheres, rng)
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
