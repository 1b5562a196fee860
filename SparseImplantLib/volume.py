"""A mask or image together with its geometry, and the resampling/cropping the pipeline needs.

Arrays are indexed ``[i, j, k]`` (the file's index order: i fastest on disk), so sparse-tensor
coordinates ``[x, y, z]`` are plain voxel indices. Physical coordinates are LPS millimetres, as in
ITK and NRRD files; ``index_to_ras`` gives Slicer's RAS convention.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


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


def to_sitk(volume: Volume):
    """SimpleITK image of the volume (SimpleITK arrays are [k, j, i])."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(volume.array, (2, 1, 0))))
    image.SetSpacing([float(s) for s in volume.spacing])
    image.SetOrigin([float(o) for o in volume.origin])
    image.SetDirection([float(d) for d in volume.direction.reshape(-1)])
    return image


def from_sitk(image) -> Volume:
    import SimpleITK as sitk

    array = np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0))
    return Volume(
        np.ascontiguousarray(array),
        np.array(image.GetSpacing()),
        np.array(image.GetOrigin()),
        np.array(image.GetDirection()).reshape(3, 3),
    )


def _resample_float(volume: Volume, reference: Volume, sigma_mm: Sequence[float]):
    """Smooth (anti-alias) a float mask and interpolate it linearly onto ``reference``'s grid."""
    import SimpleITK as sitk

    image = to_sitk(volume.with_array(volume.array.astype(np.float32, copy=False)))  # no copy when already float32
    if max(sigma_mm) > 0:
        image = sitk.SmoothingRecursiveGaussian(image, [float(s) for s in sigma_mm])
    resampler = sitk.ResampleImageFilter()
    resampler.SetReferenceImage(to_sitk(reference.with_array(np.zeros(reference.shape, np.uint8))))
    resampler.SetInterpolator(sitk.sitkLinear)
    resampler.SetDefaultPixelValue(0.0)
    resampler.SetOutputPixelType(sitk.sitkFloat32)
    return from_sitk(resampler.Execute(image)).array


def grid_with_spacing(volume: Volume, spacing: Sequence[float]) -> Volume:
    """An empty grid in the same frame and physical extent as ``volume`` with a new spacing."""
    spacing = np.asarray(spacing, dtype=np.float64)
    extent = np.asarray(volume.shape) * volume.spacing
    shape = np.maximum(1, np.ceil(extent / spacing - 1e-6)).astype(int)
    # Keep the outer voxel corner (origin - spacing / 2) where it was.
    origin = volume.origin + volume.direction @ ((spacing - volume.spacing) / 2.0)
    return Volume(np.zeros(tuple(shape), np.uint8), spacing, origin, volume.direction.copy())


def resample_mask(mask: Volume, reference: Volume, smoothing: float = 0.4) -> Volume:
    """Resample a binary mask onto ``reference``'s geometry.

    The mask is blurred by a Gaussian of ``smoothing`` times the coarser of the two spacings before
    linear interpolation and re-thresholded at 0.5, which keeps plate-like bone where it is instead
    of the staircase (or lost thin bone) of nearest-neighbour resampling.
    """
    return resample_soft_mask(mask.with_array((mask.array > 0).astype(np.float32)), reference, smoothing)


def resample_soft_mask(fractions: Volume, reference: Volume, smoothing: float = 0.4) -> Volume:
    """``resample_mask`` for a mask with values in [0, 1] (e.g. the share of predictions keeping a voxel)."""
    sigma = smoothing * np.maximum(fractions.spacing, reference.spacing)
    values = _resample_float(fractions, reference, sigma)
    return reference.with_array((values >= 0.5).astype(np.uint8))


def resample_mask_to_spacing(mask: Volume, spacing: Sequence[float]) -> Volume:
    return resample_mask(mask, grid_with_spacing(mask, spacing))


def foreground_box(mask: np.ndarray, margin: int) -> Tuple[slice, slice, slice]:
    """Index box around the non-zero voxels, grown by ``margin`` and clipped to the array."""
    nonzero = np.argwhere(mask)
    if nonzero.size == 0:
        raise ValueError("mask is empty")
    low = np.maximum(nonzero.min(axis=0) - margin, 0)
    high = np.minimum(nonzero.max(axis=0) + margin + 1, mask.shape[:3])
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high))  # type: ignore[return-value]


def crop(volume: Volume, box: Tuple[slice, slice, slice]) -> Volume:
    """Sub-volume with its origin moved to the box's first voxel."""
    start = np.array([s.start for s in box], dtype=np.float64)
    origin = volume.origin + volume.direction @ (start * volume.spacing)
    return Volume(volume.array[box].copy(), volume.spacing.copy(), origin, volume.direction.copy())


def paste(cropped: np.ndarray, box: Tuple[slice, slice, slice], shape: Sequence[int]) -> np.ndarray:
    """Inverse of ``crop`` for arrays: place ``cropped`` into zeros of ``shape``."""
    full = np.zeros(tuple(shape), dtype=cropped.dtype)
    full[box] = cropped
    return full
