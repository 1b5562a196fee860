"""Refusals: inputs the tool turns away with a one-line error, checked before memory is committed to
them (``doubts`` is the other side: results it delivers but questions).

A file's header can claim any size and a mask can hold anything. These checks turn inputs that would
exhaust memory into one-line errors before the voxels are read or meshed: a header that lies or
belongs to a decompression bomb, a skull whose spacing makes it span metres, speckle noise whose
surface would mesh into billions of triangles, a case range of billions of ids.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..errors import SparseImplantError
from .volume import Volume

# A head at 0.25 mm isotropic is about 1e9 voxels; beyond this bound a float CT alone needs over 6 GB.
MAX_VOXELS = 1_500_000_000
# A head is about 200 mm across; a larger extent along an index axis is a wrong spacing or a body scan.
MAX_EXTENT_MM = 500.0
# Scanners place a patient within a metre or two of their origin; far beyond that, millimetre steps
# are lost in the rounding of the coordinates and resampling silently yields nothing.
MAX_ORIGIN_MM = 1e5
# A skull is a shell of bone: it fills a small share of its bounding box. Solid objects (a head or
# brain mask, a CT thresholded below bone) and dense noise fill half of it or more. The bound leaves
# room for the small synthetic shells of the tests, whose walls are thick for their size.
MAX_BOX_FILL = 0.55
# A plate k voxels thick has about 2/k exposed voxel faces per voxel; random speckle of density p has
# 6(1 - p). More than this means the structures are thinner than a voxel on average: noise, not bone
# (whose surface then meshes into several triangles per voxel).
MAX_FACES_PER_VOXEL = 2.5
# The data sets number their cases in the hundreds; a range beyond this is a typo, not a selection.
MAX_CASES = 100_000


def check_header(name: str, size: Sequence[int], spacing: Sequence[float], origin: Sequence[float]) -> None:
    """Refuse a 3D image whose header alone shows it cannot be a skull scan this tool can hold."""
    if any(not math.isfinite(s) or s <= 0 for s in spacing):
        raise SparseImplantError(
            f"'{name}' has voxel spacing {_numbers(spacing)} mm: spacings must be positive; fix the file's header"
        )
    voxels = math.prod(int(n) for n in size)
    if voxels > MAX_VOXELS:
        raise SparseImplantError(
            f"'{name}' has {voxels:,} voxels ({'x'.join(str(int(n)) for n in size)}), more than the {MAX_VOXELS:,}"
            " this tool reads: crop it to the head or resample it coarser"
        )
    for axis, (count, step) in enumerate(zip(size, spacing)):
        extent = int(count) * float(step)
        if extent > MAX_EXTENT_MM:
            raise SparseImplantError(
                f"'{name}' spans {extent:,.0f} mm along axis {axis} ({int(count)} voxels of {step:g} mm), more than"
                f" the {MAX_EXTENT_MM:.0f} mm any head needs: check the spacing in its header, or crop it to the head"
            )
    if any(not math.isfinite(o) or abs(o) > MAX_ORIGIN_MM for o in origin):
        raise SparseImplantError(
            f"'{name}' places its first voxel at {_numbers(origin)} mm, beyond {MAX_ORIGIN_MM:g} mm from the"
            " scanner's origin: fix the origin in the file's header"
        )


def check_skull_shape(mask: np.ndarray, name: str) -> None:
    """Refuse a non-empty mask that is clearly not a skull (solid, or speckle), before it is meshed."""
    box = tuple(_extent(mask, axis) for axis in range(3))
    foreground = mask[box] != 0
    count = int(np.count_nonzero(foreground))
    fill = count / foreground.size
    if fill > MAX_BOX_FILL:
        raise SparseImplantError(
            f"'{name}' fills {fill:.0%} of its bounding box, but a skull is a shell of bone that fills far less:"
            " give the skull's bone only (a solid head or brain mask, or a CT threshold below bone, is not a skull)"
        )
    faces = sum(int(np.count_nonzero(np.diff(foreground, axis=axis))) for axis in range(3))
    faces += sum(int(np.count_nonzero(np.take(foreground, [0, -1], axis=axis))) for axis in range(3))
    if faces > MAX_FACES_PER_VOXEL * count:
        raise SparseImplantError(
            f"'{name}' is speckle, not bone: its {count:,} voxels have {faces / count:.1f} exposed faces each (solid"
            " bone has well under one): give a skull segmentation, not noise or a thresholded soft-tissue image"
        )


def check_case_count(text: str, count: int) -> None:
    """Refuse a case list that selects more cases than any data set has, before the ids are built."""
    if count > MAX_CASES:
        raise SparseImplantError(
            f"case list '{text}' selects {count:,} cases, more than the {MAX_CASES:,} any data set has: check --cases"
        )


def _extent(mask: np.ndarray, axis: int) -> slice:
    """Index range of the non-zero voxels along ``axis`` (the mask is known not to be empty)."""
    present = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(3) if a != axis)))
    return slice(int(present[0]), int(present[-1]) + 1)


def _numbers(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in values) + ")"


def check_skull_mask(mask: Volume, name: str) -> None:
    """Reject masks no skull can come from: empty, all foreground, solid or speckle (``check_skull_shape``)."""
    count = int(np.count_nonzero(mask.array))
    if count == 0:
        raise SparseImplantError(f"'{name}' has no skull voxels (empty mask): select the skull segment or lower the threshold")
    if count == mask.array.size:
        raise SparseImplantError(
            f"'{name}' is foreground everywhere: it is not a skull mask (a CT volume needs --threshold)"
        )
    check_skull_shape(mask.array, name)
