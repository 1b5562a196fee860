"""A mask or image together with its geometry, and the resampling/cropping the pipeline needs.

Arrays are indexed ``[i, j, k]`` (the file's index order: i fastest on disk), so sparse-tensor
coordinates ``[x, y, z]`` are plain voxel indices. Physical coordinates are LPS millimetres, as in
ITK and NRRD files; ``index_to_ras`` gives Slicer's RAS convention. Volumes read from or resampled by
ITK keep ITK's memory order (i fastest: a Fortran-ordered array), so handing a full-resolution mask
between numpy, ITK and VTK costs no transposed copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
Box = Tuple[slice, slice, slice]


@dataclass
class Volume:
    """``array[i, j, k]`` with spacing (mm per index step), origin (LPS mm of voxel 0's centre) and
    direction (3x3, column n is the unit LPS vector of index axis n)."""

    array: np.ndarray
    spacing: np.ndarray
    origin: np.ndarray
    direction: np.ndarray

    def __post_init__(self) -> None:
        self.spacing = np.asarray(self.spacing, dtype=np.float64).reshape(3)
        self.origin = np.asarray(self.origin, dtype=np.float64).reshape(3)
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def shape(self) -> Tuple[int, int, int]:
        return tuple(int(n) for n in self.array.shape[:3])  # type: ignore[return-value]

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))

    @property
    def nonzero_ml(self) -> float:
        """Millilitres of the non-zero voxels (a mask's volume)."""
        return float(np.count_nonzero(self.array)) * self.voxel_volume_mm3 / 1000.0

    def index_to_lps(self) -> np.ndarray:
        """4x4 matrix mapping homogeneous voxel indices to LPS millimetres."""
        matrix = np.eye(4)
        matrix[:3, :3] = self.direction * self.spacing[np.newaxis, :]
        matrix[:3, 3] = self.origin
        return matrix

    def index_to_ras(self) -> np.ndarray:
        return LPS_TO_RAS @ self.index_to_lps()

    def with_array(self, array: np.ndarray) -> "Volume":
        """Same geometry, new voxels (shape must match)."""
        if tuple(array.shape[:3]) != self.shape:
            raise ValueError(f"array shape {array.shape} does not match volume shape {self.shape}")
        return Volume(array, self.spacing.copy(), self.origin.copy(), self.direction.copy())

    def same_geometry(self, other: "Volume", tolerance: float = 1e-4) -> bool:
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=tolerance)
            and np.allclose(self.origin, other.origin, atol=tolerance)
            and np.allclose(self.direction, other.direction, atol=tolerance)
        )


def reorient(volume: Volume, order: Sequence[int], flips: Sequence[bool] = (False, False, False)) -> Volume:
    """The same physical volume stored another way: index axes permuted (new axis k is old axis
    ``order[k]``), then reversed where ``flips``; geometry adjusted so every voxel keeps its LPS position."""
    array = np.transpose(volume.array, tuple(order))
    spacing, direction, origin = volume.spacing[list(order)], volume.direction[:, list(order)].copy(), volume.origin.copy()
    for axis, flip in enumerate(flips):
        if flip:
            array = np.flip(array, axis)
            origin = origin + direction[:, axis] * spacing[axis] * (array.shape[axis] - 1)
            direction[:, axis] *= -1
    return Volume(np.ascontiguousarray(array), spacing, origin, direction)


def undo_reorient(array: np.ndarray, order: Sequence[int], flips: Sequence[bool] = (False, False, False)) -> np.ndarray:
    """An array of a ``reorient``-ed volume (or a result on its grid) back in the original index order."""
    for axis, flip in enumerate(flips):
        if flip:
            array = np.flip(array, axis)
    return np.transpose(array, np.argsort(order))


def to_sitk(volume: Volume):
    """SimpleITK image of the volume (SimpleITK arrays are [k, j, i]: an i-fastest array goes in
    without a transposed copy)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(volume.array, (2, 1, 0))))
    image.SetSpacing([float(s) for s in volume.spacing])
    image.SetOrigin([float(o) for o in volume.origin])
    image.SetDirection([float(d) for d in volume.direction.reshape(-1)])
    return image


def from_sitk(image) -> Volume:
    """The image as a volume whose array keeps ITK's memory order (i fastest), without a copy."""
    import SimpleITK as sitk

    return Volume(
        np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0)),
        np.array(image.GetSpacing()),
        np.array(image.GetOrigin()),
        np.array(image.GetDirection()).reshape(3, 3),
    )


def index_box_of_region(volume: Volume, corners_lps: np.ndarray, margin_voxels: Sequence[int]) -> Optional[Box]:
    """Index box of ``volume`` holding every voxel within the LPS points' bounding box (grown by
    ``margin_voxels``), clipped to the array; None when the region misses the array."""
    to_index = np.linalg.inv(volume.index_to_lps())
    indices = corners_lps @ to_index[:3, :3].T + to_index[:3, 3]
    low = np.floor(indices.min(axis=0)).astype(int) - np.asarray(margin_voxels)
    high = np.ceil(indices.max(axis=0)).astype(int) + np.asarray(margin_voxels) + 1
    low, high = np.maximum(low, 0), np.minimum(high, volume.shape)
    if np.any(high <= low):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high))  # type: ignore[return-value]


def corners_lps(volume: Volume, box: Optional[Box] = None) -> np.ndarray:
    """(8, 3) LPS positions of the outer voxel corners of ``box`` (default: the whole array)."""
    box = box or tuple(slice(0, n) for n in volume.shape)
    bounds = [(s.start - 0.5, s.stop - 0.5) for s in box]
    corners = np.array(np.meshgrid(*bounds, indexing="ij")).reshape(3, -1).T
    matrix = volume.index_to_lps()
    return corners @ matrix[:3, :3].T + matrix[:3, 3]


def resample_fraction(volume: Volume, reference: Volume, sigma_mm: Sequence[float], binary: bool = False) -> np.ndarray:
    """Smooth (anti-alias) a float mask (``binary``: a mask whose non-zero voxels count as 1) and
    interpolate it linearly onto ``reference``'s grid.

    Only the part of each grid that can matter is touched: the source is cropped to its non-zero
    voxels plus the blur's reach (4 sigma) and to the reference's extent, and only the reference voxels
    inside that crop are interpolated (the rest are 0), so a skull resampled onto another grid costs
    what its bounding box costs, not its field of view. The recursive blur sees the same zeros before
    the crop's edge as the whole volume has, so the values inside are the same."""
    values = np.zeros(reference.shape, np.float32, order="F")
    part = _resampled_part(volume, reference, sigma_mm, binary)
    if part is not None:
        values[part[0]] = part[1]
    return values


def resample_above(volume: Volume, reference: Volume, sigma_mm: Sequence[float], binary: bool = False,
                   level: float = 0.5) -> np.ndarray:
    """``resample_fraction(...) >= level`` as uint8, compared inside the resampled box only: a CT-sized
    reference never holds a float copy."""
    above = np.zeros(reference.shape, np.uint8, order="F")  # the layout of volumes read through SimpleITK
    part = _resampled_part(volume, reference, sigma_mm, binary)
    if part is not None:
        above[part[0]] = part[1] >= level
    return above


def _resampled_part(volume: Volume, reference: Volume, sigma_mm: Sequence[float],
                    binary: bool) -> Optional[Tuple[Box, np.ndarray]]:
    """``resample_fraction``'s non-zero part: the reference's index box and its values; None when empty."""
    import SimpleITK as sitk

    reach = [int(np.ceil(4 * s / d)) + 2 for s, d in zip(sigma_mm, volume.spacing)]
    content = find_foreground_box(volume.array, reach)
    region = index_box_of_region(volume, corners_lps(reference), reach)
    source_box = _intersection(content, region) if content is not None and region is not None else None
    if source_box is None:
        return None
    target_box = index_box_of_region(reference, corners_lps(volume, source_box), (1, 1, 1))
    if target_box is None:
        return None
    source = volume.array[source_box]
    source = (source != 0) if binary else source
    cropped, sigma_mm = block_mean(crop(volume, source_box, source), sigma_mm)
    image = to_sitk(cropped)
    if max(sigma_mm) > 0:
        image = sitk.SmoothingRecursiveGaussian(image, [float(s) for s in sigma_mm])
    target_start = np.array([b.start for b in target_box], dtype=np.float64)
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize([int(b.stop - b.start) for b in target_box])
    resampler.SetOutputSpacing([float(s) for s in reference.spacing])
    resampler.SetOutputOrigin([float(o) for o in reference.origin + reference.direction @ (target_start * reference.spacing)])
    resampler.SetOutputDirection([float(d) for d in reference.direction.reshape(-1)])
    resampler.SetInterpolator(sitk.sitkLinear)
    resampler.SetDefaultPixelValue(0.0)
    resampler.SetOutputPixelType(sitk.sitkFloat32)
    return target_box, from_sitk(resampler.Execute(image)).array


def block_mean(volume: Volume, sigma_mm: Sequence[float],
               largest_block_mm: Optional[Sequence[float]] = None) -> Tuple[Volume, List[float]]:
    """(``volume`` averaged over blocks of voxels, the blur left to do) for a blur of ``sigma_mm``: a
    block of k voxels along an axis where sigma spans 2k voxels or more. The block mean is a box filter
    of variance (k² - 1) s² / 12, which the returned sigma leaves out, so blurring the smaller volume by
    it gives nearly the same smooth field as blurring the whole one, on the product of the k's fewer
    voxels, and linear interpolation between block centres at most half a sigma apart shaves little
    off its peaks (thin bone): on the pose's 4 mm grid of a 512 x 512 x Z mask, 22 of 6,516 voxels differ on the sample. A
    float32 volume (values in [0, 1] stay so) with each block's centre as its voxel.
    ``largest_block_mm``: blocks up to this size instead, where a coarser result may differ more."""
    spacing = np.asarray(volume.spacing, dtype=float)
    largest = np.asarray(sigma_mm, dtype=float) / 2 if largest_block_mm is None else np.asarray(largest_block_mm, dtype=float)
    factors = np.maximum(1, np.floor(largest / spacing)).astype(int)
    if np.all(factors == 1):
        return volume.with_array(volume.array.astype(np.float32, copy=False)), [float(s) for s in sigma_mm]
    means = in_blocks(volume.array, factors, np.float32).mean(axis=(1, 3, 5))
    origin = volume.origin + volume.direction @ ((factors - 1) / 2 * spacing)
    left = [float(np.sqrt(max(s ** 2 - (k ** 2 - 1) * d ** 2 / 12, 0.0))) for s, k, d in zip(sigma_mm, factors, spacing)]
    return Volume(means, spacing * factors, origin, volume.direction.copy()), left


def in_blocks(array: np.ndarray, factors: Sequence[int], dtype=None) -> np.ndarray:
    """``array`` (3D) zero-padded to whole blocks of ``factors`` voxels and reshaped to 6D, so that axes
    1, 3 and 5 run within a block: reduce over them (sum, any, mean) for one value per block."""
    factors = np.broadcast_to(np.asarray(factors, dtype=int), (3,))
    blocks = -(-np.asarray(array.shape[:3]) // factors)
    padded = np.zeros(tuple(blocks * factors), dtype=dtype or array.dtype)
    padded[tuple(slice(0, n) for n in array.shape[:3])] = array
    return padded.reshape(blocks[0], factors[0], blocks[1], factors[1], blocks[2], factors[2])


def _intersection(first: Box, second: Box) -> Optional[Box]:
    """The voxels two index boxes share; None when they share none."""
    box = tuple(slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(first, second))
    return None if any(s.stop <= s.start for s in box) else box  # type: ignore[return-value]


def grid_with_spacing(volume: Volume, spacing: Sequence[float]) -> Volume:
    """An empty grid in the same frame and physical extent as ``volume`` with a new spacing."""
    spacing = np.asarray(spacing, dtype=np.float64)
    extent = np.asarray(volume.shape) * volume.spacing
    shape = np.maximum(1, np.ceil(extent / spacing - 1e-6)).astype(int)
    # Keep the outer voxel corner (origin - spacing / 2) where it was.
    origin = volume.origin + volume.direction @ ((spacing - volume.spacing) / 2.0)
    return Volume(np.zeros(tuple(shape), np.uint8), spacing, origin, volume.direction.copy())


def canonical_grid(mask: Volume, spacing: Sequence[float], margin_mm: float, axes: Optional[np.ndarray] = None) -> Volume:
    """An empty grid with axes along L, P and S (identity direction) and ``spacing``, covering the
    mask's foreground plus ``margin_mm``: the frame the network sees, whatever the file's axis order,
    flips or obliquity. The same physical skull stored another way gets the same grid. ``axes``
    (a rotation; columns in LPS) turns the grid with the head (``pose``)."""
    axes = np.eye(3) if axes is None else np.asarray(axes, dtype=np.float64)
    box = foreground_box(mask.array != 0, 0)
    corners = corners_lps(mask, box) @ axes  # positions along the grid's axes
    spacing = np.asarray(spacing, dtype=np.float64)
    low = corners.min(axis=0) - margin_mm
    shape = np.maximum(1, np.ceil((corners.max(axis=0) + margin_mm - low) / spacing - 1e-6)).astype(int)
    return Volume(np.zeros(tuple(shape), np.uint8), spacing, axes @ (low + spacing / 2), axes)


def resample_mask(mask: Volume, reference: Volume, smoothing: float = 0.4) -> Volume:
    """Resample a binary mask onto ``reference``'s geometry.

    The mask is blurred by a Gaussian of ``smoothing`` times the coarser of the two spacings before
    linear interpolation and re-thresholded at 0.5, which keeps plate-like bone where it is instead
    of the staircase (or lost thin bone) of nearest-neighbour resampling.
    """
    sigma = smoothing * np.maximum(mask.spacing, reference.spacing)
    return reference.with_array(resample_above(mask, reference, sigma, binary=True))


def resample_soft_mask(fractions: Volume, reference: Volume, smoothing: float = 0.4) -> Volume:
    """``resample_mask`` for a mask with values in [0, 1] (e.g. the share of predictions keeping a voxel)."""
    sigma = smoothing * np.maximum(fractions.spacing, reference.spacing)
    return reference.with_array(resample_above(fractions, reference, sigma))


def resample_mask_to_spacing(mask: Volume, spacing: Sequence[float]) -> Volume:
    return resample_mask(mask, grid_with_spacing(mask, spacing))


def find_foreground_box(mask: np.ndarray, margin: Union[int, Sequence[int]] = 0) -> Optional[Box]:
    """Index box around the non-zero voxels, grown by ``margin`` (voxels, one or per axis) and clipped
    to the array; None when the mask is empty. Axis projections, not ``argwhere``: on a 512x512xZ
    grid that is many times faster."""
    margins = np.broadcast_to(np.asarray(margin, dtype=int), (3,))
    box = []
    for axis in range(3):
        present = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(3) if a != axis)))
        if present.size == 0:
            return None
        low = max(int(present[0]) - int(margins[axis]), 0)
        high = min(int(present[-1]) + int(margins[axis]) + 1, mask.shape[axis])
        box.append(slice(low, high))
    return tuple(box)  # type: ignore[return-value]


def foreground_box(mask: np.ndarray, margin: Union[int, Sequence[int]] = 0) -> Box:
    """``find_foreground_box`` for a mask that must not be empty."""
    box = find_foreground_box(mask, margin)
    if box is None:
        raise ValueError("mask is empty")
    return box


def crop(volume: Volume, box: Box, array: Optional[np.ndarray] = None) -> Volume:
    """Sub-volume with its origin moved to the box's first voxel; ``array`` (of the box's shape), when
    given, replaces the copied voxels."""
    start = np.array([s.start for s in box], dtype=np.float64)
    origin = volume.origin + volume.direction @ (start * volume.spacing)
    voxels = volume.array[box].copy() if array is None else array
    return Volume(voxels, volume.spacing.copy(), origin, volume.direction.copy())


def paste(cropped: np.ndarray, box: Tuple[slice, slice, slice], shape: Sequence[int]) -> np.ndarray:
    """Inverse of ``crop`` for arrays: place ``cropped`` into zeros of ``shape``."""
    full = np.zeros(tuple(shape), dtype=cropped.dtype)
    full[box] = cropped
    return full
