"""Training draws: one case turned into a new patient on the model grid.

A clinic's skulls differ from SkullFix's in pose, defect and bone, so every draw varies all three:

- **pose**: the head is turned (pitch, roll, yaw), scaled a little and mirrored left-right about its
  centre, then sampled onto a grid with axes along L, P and S, as inference samples an input;
- **defect**: the case's own, or one cut by ``data.defects`` (every kind, anywhere on the vault, from
  burr-hole size to a hemicraniectomy, rounded or saw-cut), placed in the skull's anatomical frame;
- **bone**: thicker or thinner (the soft mask thresholded off 0.5, about one CT voxel either way), thin
  bone missing in patches, speckle and islands in the segmentation, a field of view that cuts the top
  or the bottom off, and thick slices.

What a different skull source changes (thickness, missing thin bone, field of view) changes the target
too; what a poor segmentation or scan adds (speckle, islands, thick slices) changes only the input.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from ..data.defects import DEFECT_KINDS, cut_defect
from ..errors import SparseImplantError
from ..pipeline.volume import Volume, find_foreground_box
from .samples import SCALE, CaseSource

OWN_DEFECT = "own"
Range = Tuple[float, float]
_CROSS = ndimage.generate_binary_structure(3, 1)


@dataclass(frozen=True)
class Augmentation:
    """How often (share of draws) and how much each variation is applied."""

    own_defect: float = 0.2  # the case's own defect; otherwise one of ``defect_kinds``
    defect_kinds: Tuple[str, ...] = DEFECT_KINDS
    rotation: float = 0.75
    max_rotation_deg: float = 30.0  # per axis: pitch, roll and yaw
    scale: Range = (0.92, 1.08)
    flip: float = 0.5
    thickness: float = 0.5
    threshold: Range = (0.3, 0.7)  # of the soft mask; 0.5 keeps the bone as it is
    thin_bone_missing: float = 0.15
    speckle: float = 0.15
    field_of_view: float = 0.15
    thick_slices: float = 0.15
    slice_mm: Range = (2.5, 3.5)
    shift_voxels: int = 16  # random shift of the voxels against the network's stride-64 cells

    @staticmethod
    def preset(name: str) -> "Augmentation":
        """``full``; ``defects`` (every defect kind, the skull as it is); ``none`` (own defects only)."""
        if name == "full":
            return Augmentation()
        steady = Augmentation(rotation=0.0, scale=(1.0, 1.0), thickness=0.0, thin_bone_missing=0.0, speckle=0.0,
                              field_of_view=0.0, thick_slices=0.0)
        if name == "defects":
            return steady
        if name == "none":
            return replace(steady, own_defect=1.0, flip=0.0, shift_voxels=0)
        raise SparseImplantError(f"unknown augmentation '{name}': use full, defects or none")


AUGMENTATION_PRESETS = ("full", "defects", "none")


@dataclass
class Draw:
    """One training pair on a model grid (identity direction, ``spacing``), cropped as inference crops:
    the input and target masks, and (when asked for and the case's own defect was drawn) a completion
    model's skull for it."""

    defective: np.ndarray
    complete: np.ndarray
    kind: str
    spacing: float
    predicted: Optional[np.ndarray] = None
    pose: Optional["Pose"] = None  # how the case was turned onto the grid
    origin: Optional[np.ndarray] = None  # LPS mm of the arrays' first voxel


@dataclass(frozen=True)
class Pose:
    """x_grid = centre + matrix @ (x_case - centre), in LPS mm; ``matrix`` = scale x rotation x mirror."""

    matrix: np.ndarray
    centre: np.ndarray

    @property
    def scale(self) -> float:
        return float(abs(np.linalg.det(self.matrix)) ** (1 / 3))


def rotation_matrix(pitch_deg: float, roll_deg: float, yaw_deg: float) -> np.ndarray:
    """Rotation about L (pitch), then P (roll), then S (yaw)."""
    pitch, roll, yaw = np.deg2rad([pitch_deg, roll_deg, yaw_deg])
    about_l = np.array([[1, 0, 0], [0, np.cos(pitch), -np.sin(pitch)], [0, np.sin(pitch), np.cos(pitch)]])
    about_p = np.array([[np.cos(roll), 0, np.sin(roll)], [0, 1, 0], [-np.sin(roll), 0, np.cos(roll)]])
    about_s = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
    return about_s @ about_p @ about_l


def random_pose(source: CaseSource, rng: np.random.Generator, augmentation: Augmentation) -> Pose:
    corners = source.skull_corners()
    matrix = np.eye(3)
    if rng.random() < augmentation.flip:
        matrix = np.diag([-1.0, 1.0, 1.0])
    if rng.random() < augmentation.rotation:
        limit = augmentation.max_rotation_deg
        matrix = rotation_matrix(*rng.uniform(-limit, limit, size=3)) @ matrix
    matrix = rng.uniform(*augmentation.scale) * matrix
    return Pose(matrix, (corners.min(axis=0) + corners.max(axis=0)) / 2)


def posed_grid(source: CaseSource, pose: Pose, spacing: float, margin_mm: float) -> Volume:
    """The canonical model grid over the posed skull's box plus ``margin_mm`` (an empty uint8 array)."""
    moved = (source.skull_corners() - pose.centre) @ pose.matrix.T + pose.centre
    low = moved.min(axis=0) - margin_mm
    shape = np.maximum(1, np.ceil((moved.max(axis=0) + margin_mm - low) / spacing - 1e-6)).astype(int)
    return Volume(np.zeros(tuple(shape), np.uint8), [spacing] * 3, low + spacing / 2, np.eye(3))


def sample_posed(soft: np.ndarray, source: CaseSource, pose: Pose, grid: Volume) -> np.ndarray:
    """A soft mask of ``source`` (uint8) at the posed grid's voxels, as float32 in [0, 1] (linear)."""
    inverse = np.linalg.inv(pose.matrix)
    # grid index i -> LPS y = origin + spacing * i -> case LPS x = centre + inverse @ (y - centre) -> source index
    matrix = inverse * (grid.spacing[0] / source.spacing)
    offset = (pose.centre + inverse @ (grid.origin - pose.centre) - source.origin) / source.spacing
    values = ndimage.affine_transform(soft, matrix, offset, output_shape=grid.shape, output=np.float32, order=1,
                                      mode="constant", cval=0.0)
    return values / SCALE


def anatomical_volume(mask: np.ndarray, grid: Volume, pose: Pose) -> Volume:
    """``mask`` on the posed grid, with the geometry that maps its voxels back to the case's own
    (anatomical) LPS positions, so defects are placed by anatomy whatever the pose."""
    inverse = np.linalg.inv(pose.matrix)
    scale = pose.scale
    origin = pose.centre + inverse @ (grid.origin - pose.centre)
    return Volume(mask, grid.spacing / scale, origin, inverse * scale)


def thin_bone_patches(bone: np.ndarray, spacing: float, rng: np.random.Generator) -> np.ndarray:
    """Patches of thin bone (plates an opening by one voxel removes, such as the temporal squama or the
    orbital roof) around one to three random thin voxels, 8-20 mm across."""
    thin = bone & ~ndimage.binary_opening(bone, structure=_CROSS)
    candidates = np.argwhere(thin)
    removed = np.zeros_like(bone)
    if len(candidates) == 0:
        return removed
    grid = np.indices(bone.shape, sparse=True)
    for centre in candidates[rng.integers(0, len(candidates), size=int(rng.integers(1, 4)))]:
        radius = rng.uniform(8.0, 20.0) / 2 / spacing
        removed |= sum((axis - c) ** 2 for axis, c in zip(grid, centre)) <= radius**2
    return removed & thin


def speckled(bone: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A noisy segmentation of ``bone``: pinholes in it and small islands near it."""
    noisy = bone & (rng.random(bone.shape) >= rng.uniform(0.002, 0.02))
    near = ndimage.binary_dilation(bone, structure=_CROSS, iterations=4) & ~bone
    places = np.argwhere(near)
    if len(places):
        islands = np.zeros_like(bone)
        islands[tuple(places[rng.integers(0, len(places), size=int(rng.integers(5, 60)))].T)] = True
        noisy |= ndimage.binary_dilation(islands, structure=_CROSS) if rng.random() < 0.5 else islands
    return noisy


def field_of_view_cut(shape: Sequence[int], bone: np.ndarray, spacing: float, rng: np.random.Generator) -> np.ndarray:
    """Which voxels a field of view that ends a little below the vertex, or some way above the skull
    base, leaves out (along S, the scanner's table axis in the posed frame)."""
    present = np.flatnonzero(bone.any(axis=(0, 1)))
    outside = np.zeros(tuple(shape), dtype=bool)
    if present.size == 0:
        return outside
    if rng.random() < 0.5:
        top = present[-1] - int(rng.uniform(3.0, 20.0) / spacing)
        outside[:, :, top + 1:] = True
    else:
        bottom = present[0] + int(rng.uniform(10.0, 60.0) / spacing)
        outside[:, :, :bottom] = True
    return outside


def thick_slice_view(mask: np.ndarray, spacing: float, slice_mm: float, rng: np.random.Generator) -> np.ndarray:
    """``mask`` as a segmentation from slices ``slice_mm`` apart along S would look after inference's
    resampling: one plane per slice, blurred along S (0.4 slice) and interpolated back."""
    step = slice_mm / spacing
    positions = np.arange(rng.uniform(0.0, step), mask.shape[2] - 1e-6, step)
    if len(positions) < 2:
        return mask
    slices = mask[:, :, np.rint(positions).astype(int).clip(0, mask.shape[2] - 1)].astype(np.float32)
    slices = ndimage.gaussian_filter1d(slices, 0.4, axis=2, mode="nearest")
    where = np.clip((np.arange(mask.shape[2]) - positions[0]) / step, 0, len(positions) - 1)
    below = np.floor(where).astype(int)
    above = np.minimum(below + 1, len(positions) - 1)
    weight = (where - below).astype(np.float32)
    return (slices[:, :, below] * (1 - weight) + slices[:, :, above] * weight) >= 0.5


def draw(source: CaseSource, spacing: float, margin_mm: float, rng: np.random.Generator,
         augmentation: Augmentation, kind: Optional[str] = None, with_predicted: bool = False,
         attempts: int = 10) -> Draw:
    """A random new patient from ``source`` on a ``spacing`` grid (see the module docstring); ``kind``
    forces the defect (``OWN_DEFECT`` or one of ``DEFECT_KINDS``). Draws whose defect leaves too
    little or removes nothing are redrawn."""
    for _ in range(attempts):
        result = _draw_once(source, spacing, margin_mm, rng, augmentation, kind, with_predicted)
        if result is not None:
            return result
    raise SparseImplantError(f"case {source.case}: no usable training draw in {attempts} attempts: check that it is a skull")


MIN_KEPT_FRACTION = 0.5  # a draw's input keeps at least this share of its target


def _draw_once(source: CaseSource, spacing: float, margin_mm: float, rng: np.random.Generator,
               augmentation: Augmentation, kind: Optional[str], with_predicted: bool) -> Optional[Draw]:
    if kind is None:
        own = source.has_own_defect and rng.random() < augmentation.own_defect
        kind = OWN_DEFECT if own else str(rng.choice(augmentation.defect_kinds))
    pose = random_pose(source, rng, augmentation)
    grid = posed_grid(source, pose, spacing, margin_mm)
    threshold = rng.uniform(*augmentation.threshold) if rng.random() < augmentation.thickness else 0.5
    complete = sample_posed(source.complete, source, pose, grid) >= threshold
    if kind == OWN_DEFECT:
        defective = (sample_posed(source.defective, source, pose, grid) >= threshold) & complete
    else:
        defective = cut_defect(anatomical_volume(complete, grid, pose), kind, rng)[0].array.astype(bool)
    if rng.random() < augmentation.thin_bone_missing:
        missing = thin_bone_patches(complete, spacing, rng)
        complete, defective = complete & ~missing, defective & ~missing
    if rng.random() < augmentation.field_of_view:
        outside = field_of_view_cut(grid.shape, complete, spacing, rng)
        complete, defective = complete & ~outside, defective & ~outside
    if rng.random() < augmentation.speckle:
        defective = speckled(defective, rng)
    if rng.random() < augmentation.thick_slices:
        defective = thick_slice_view(defective, spacing, rng.uniform(*augmentation.slice_mm), rng)
    box = find_foreground_box(defective, int(np.ceil(margin_mm / spacing)))
    kept = np.count_nonzero(defective & complete)
    if box is None or kept < MIN_KEPT_FRACTION * np.count_nonzero(complete) or kept == np.count_nonzero(complete):
        return None
    predicted = None
    if with_predicted and kind == OWN_DEFECT and source.predicted is not None:
        predicted = (sample_posed(source.predicted, source, pose, grid) >= 0.5)[box].astype(np.uint8)
    origin = grid.origin + spacing * np.array([s.start for s in box])
    return Draw(defective[box].astype(np.uint8), complete[box].astype(np.uint8), kind, spacing, predicted, pose, origin)
