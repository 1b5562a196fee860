"""Training cases, prepared once: each skull as a soft mask on a 1 mm grid in the canonical frame.

A draw (``augment``) turns, scales and mirrors a case and samples it onto the model grid, so the case is
kept finer than that grid and before any thresholding: each mask is blurred as inference blurs an input
for the model grid, interpolated onto a grid with axes along L, P and S, and stored as 0-255. Cached
per case, keyed by what decides the values.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np

from ..outputs import atomic_write
from ..pipeline.volume import Volume, canonical_grid, corners_lps, find_foreground_box, resample_fraction

SOURCE_SPACING_MM = 1.0  # never coarser than the model grid
SOURCE_MARGIN_MM = 4.0
SMOOTHING = 0.4  # as volume.resample_mask: blur sigma = SMOOTHING x the coarser spacing
SCALE = 255.0


@dataclass
class CaseSource:
    """One case on its source grid (identity direction): soft masks as uint8 (255 = bone).

    ``predicted`` is a completion model's skull for the case's own defect (super-resolution training
    with ``--coarse-model``), on the same grid."""

    case: str
    complete: np.ndarray
    defective: np.ndarray
    spacing: float
    origin: np.ndarray
    predicted: Optional[np.ndarray] = None

    @property
    def has_own_defect(self) -> bool:
        return bool(self.defective.any()) and not np.array_equal(self.defective, self.complete)

    def grid(self) -> Volume:
        """The source grid (its array holds the complete skull)."""
        return Volume(self.complete, [self.spacing] * 3, self.origin, np.eye(3))

    def skull_corners(self) -> np.ndarray:
        """(8, 3) LPS corners of the complete skull's box."""
        box = find_foreground_box(self.complete >= SCALE / 2)
        return corners_lps(self.grid(), box)


def source_points(source: CaseSource, soft: np.ndarray, spacing: float) -> np.ndarray:
    """LPS mm of the bone voxels (soft mask >= 0.5) of one of ``source``'s masks, on every
    ``spacing / source.spacing``-th voxel: a cloud with about ``spacing`` between points."""
    step = max(1, int(round(spacing / source.spacing)))
    return np.argwhere(soft[::step, ::step, ::step] >= SCALE / 2) * (step * source.spacing) + source.origin


def source_spacing(model_spacing: Sequence[float]) -> float:
    return min(SOURCE_SPACING_MM, float(min(model_spacing)))


def make_source(case: str, defective: Volume, complete: Volume, model_spacing: Sequence[float]) -> CaseSource:
    """Both masks blurred for the model grid (as inference blurs its input) and interpolated onto a
    canonical grid at ``source_spacing``, cropped to the complete skull."""
    spacing = source_spacing(model_spacing)
    grid = canonical_grid(complete, [spacing] * 3, SOURCE_MARGIN_MM)
    arrays = []
    for mask in (complete, defective):
        sigma = SMOOTHING * np.maximum(mask.spacing, max(model_spacing))
        arrays.append(np.rint(resample_fraction(mask, grid, sigma, binary=True) * SCALE).astype(np.uint8))
    return CaseSource(case, arrays[0], arrays[1], spacing, grid.origin)


def soft_on_grid(fraction: Volume, source: CaseSource, model_spacing: Sequence[float]) -> np.ndarray:
    """A soft mask (values in [0, 1], e.g. a network's averaged passes) on ``source``'s grid, as uint8."""
    sigma = SMOOTHING * np.maximum(fraction.spacing, max(model_spacing))
    return np.rint(resample_fraction(fraction, source.grid(), sigma) * SCALE).astype(np.uint8)


def _cache_name(key: str, model_spacing: Sequence[float]) -> str:
    return f"{key.replace('/', '_')}_canonical_{source_spacing(model_spacing):g}mm_blur{max(model_spacing):g}.npz"


def load_sources(data_root: Path, cases: Sequence[str], model_spacing: Sequence[float], cache_dir: Path,
                 announce: Callable[[str], None] = lambda message: None) -> List[CaseSource]:
    """The cases of a SkullFix/SkullBreak folder as ``CaseSource``s, from the cache when it holds them
    (``announce`` hears of each case prepared: several seconds each). A case without a complete skull
    file gets defective | implant."""
    from ..data.datasets import list_cases

    cache_dir.mkdir(parents=True, exist_ok=True)
    sources = []
    for files in list_cases(data_root, cases=cases):
        cached = cache_dir / _cache_name(files.key, model_spacing)
        if not cached.is_file():
            announce(f"preparing case {files.key} for training (once; cached in {cache_dir})")
            case = files.load()
            complete = case.complete or case.defective.with_array(case.defective.array | case.implant.array)
            source = make_source(files.key, case.defective, complete, model_spacing)
            atomic_write(cached, lambda tmp: np.savez_compressed(
                tmp, complete=source.complete, defective=source.defective, spacing=source.spacing, origin=source.origin))
        with np.load(cached) as data:
            sources.append(CaseSource(files.key, data["complete"], data["defective"], float(data["spacing"]),
                                      data["origin"]))
    return sources

