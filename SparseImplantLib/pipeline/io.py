"""Reading masks and CT volumes, writing results atomically.

Every reading problem becomes a ``SparseImplantError`` whose one line names the file, the problem and
the fix. Writers never leave a half-written file behind: they write to a temporary name in the
target folder and rename it into place (``outputs`` moves whole result sets the same way).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import SparseImplantError
from ..outputs import PathLike, atomic_write
from .refusals import check_header, check_skull_mask
from .volume import Volume, from_sitk, to_sitk

MASK_SUFFIXES = (".seg.nrrd", ".nrrd", ".nhdr", ".nii.gz", ".nii", ".mha", ".mhd")
DEFAULT_BONE_THRESHOLD_HU = 300.0


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in MASK_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def read_volume(path: PathLike) -> Volume:
    """Read any 3D scalar image with its geometry; the values are returned unchanged.

    The header is checked first (``refusals.check_header``), so a file claiming billions of voxels or
    metres of extent is refused before its pixels are allocated."""
    import SimpleITK as sitk

    path = Path(path)
    _check_readable(path)
    if _suffix(path) not in MASK_SUFFIXES:
        raise SparseImplantError(
            f"'{path.name}' has an unsupported file type: use NRRD (.nrrd, .seg.nrrd) or NIfTI (.nii, .nii.gz)"
        )
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        if reader.GetDimension() != 3:
            raise SparseImplantError(f"'{path.name}' is a {reader.GetDimension()}D image: a 3D skull volume is needed")
        if reader.GetNumberOfComponents() != 1:
            raise SparseImplantError(
                f"'{path.name}' has {reader.GetNumberOfComponents()} values per voxel (4D or multi-layer):"
                " export a single 3D labelmap"
            )
        check_header(path.name, reader.GetSize(), reader.GetSpacing(), reader.GetOrigin())
        image = reader.Execute()
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown reason"
        raise SparseImplantError(
            f"cannot read '{path.name}': the file is unreadable or truncated ({reason}); re-export it"
        ) from None
    volume = from_sitk(image)
    if min(volume.shape) < 2:
        raise SparseImplantError(f"'{path.name}' has shape {volume.shape}: a 3D skull volume is needed")
    if np.issubdtype(volume.array.dtype, np.floating) and not np.isfinite(volume.array).all():
        raise SparseImplantError(f"'{path.name}' contains NaN or infinite values: fix or re-export the file")
    return volume


def _check_readable(path: Path) -> None:
    """A missing file, a folder and a file one may not read are three problems with three fixes."""
    try:
        if path.is_dir():
            raise SparseImplantError(f"input '{path}' is a folder, not a file: give the mask or CT file inside it")
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        raise SparseImplantError(f"input file '{path}' does not exist: check the path") from None
    except PermissionError:
        raise SparseImplantError(f"input file '{path}' may not be read (permission denied): check its permissions") from None
    except OSError as error:
        raise SparseImplantError(f"cannot open input file '{path}' ({error.strerror or error}): check the path") from None


def mask_from_labels(volume: Volume, name: str, label: Optional[int] = None, remedy: Optional[str] = None) -> Volume:
    """Binary mask from a labelmap: the one foreground value, or ``label`` for multi-label maps.

    ``remedy`` is what the user should do with a file that is not binary; by default the options of
    ``generate`` (--label, --threshold), which other commands lack, so they pass their own."""
    values = _distinct_values(volume.array)
    if label is not None:
        if label == 0:
            raise SparseImplantError(
                f"label 0 is the background of '{name}', not a skull: choose the skull's label (values present: {_list(values)})"
            )
        if label not in values:
            raise SparseImplantError(
                f"label {label} does not occur in '{name}' (values present: {_list(values)}): choose one of them"
            )
        mask = volume.array == label
    else:
        foreground = values[values != 0]
        if foreground.size > 1:
            intensities = _looks_like_intensities(values)
            found = f"values from {values[0]:g} to {values[-1]:g}, like a CT" if intensities else f"values {_list(values)}"
            default = "a CT volume needs --threshold HU (bone: e.g. 300)" if intensities else "choose the skull label with --label N"
            raise SparseImplantError(f"'{name}' is not binary ({found}): {remedy or default}")
        mask = volume.array != 0
    return volume.with_array(mask.astype(np.uint8))


def _looks_like_intensities(values: np.ndarray) -> bool:
    """Negative, fractional or hundreds of distinct values: an image of intensities, not of labels."""
    return bool(values[0] < 0 or values.size > 255 or not np.array_equal(values, np.round(values)))


def _distinct_values(array: np.ndarray) -> np.ndarray:
    """Sorted distinct values; an integer array spanning at most two neighbouring values (a 0/1 mask,
    the usual input) is told by its range, without sorting every voxel of a 512x512xZ volume."""
    low, high = array.min(), array.max()
    if np.issubdtype(array.dtype, np.integer) and int(high) - int(low) <= 1:
        return np.unique(np.array([low, high], dtype=array.dtype))
    return np.unique(array)


def mask_from_ct(volume: Volume, threshold_hu: float = DEFAULT_BONE_THRESHOLD_HU) -> Volume:
    """Bone mask from a CT volume: voxels at or above ``threshold_hu``."""
    return volume.with_array((volume.array >= threshold_hu).astype(np.uint8))


def read_mask(path: PathLike, label: Optional[int] = None, threshold_hu: Optional[float] = None,
              remedy: Optional[str] = None) -> Volume:
    """Read a skull mask: a binary/label file, or a CT volume thresholded at ``threshold_hu``
    (``remedy``: as in ``mask_from_labels``). A label and a threshold together are refused: the
    threshold would win silently, and a label value as a threshold in HU leaves an empty mask."""
    if label is not None and threshold_hu is not None:
        raise SparseImplantError(
            f"--label {label} and --threshold {threshold_hu:g} exclude each other: --label picks the skull in a label file,"
            " --threshold makes the bone mask of a CT; give only the one that fits the input"
        )
    volume = read_volume(path)
    name = Path(path).name
    mask = mask_from_ct(volume, threshold_hu) if threshold_hu is not None else mask_from_labels(volume, name, label, remedy)
    check_skull_mask(mask, name)
    return mask


def _list(values: np.ndarray, limit: int = 8) -> str:
    shown = ", ".join(str(v) for v in values[:limit].tolist())
    return shown + (", ..." if values.size > limit else "")


def write_volume(path: PathLike, volume: Volume) -> Path:
    """Write a volume (format from the extension, compressed) atomically."""
    import SimpleITK as sitk

    image = to_sitk(volume)
    return atomic_write(path, lambda tmp: sitk.WriteImage(image, str(tmp), True))
