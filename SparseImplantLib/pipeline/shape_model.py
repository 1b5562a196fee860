"""The shape model: how the training skulls vary about the mean skull, fitted to a patient's skull.

The fitted mean skull (``priors``) is one typical skull, stretched per axis: wherever this patient's
skull differs from it in shape, the bone it fills in differs too. The shape model is a principal
component model of the training skulls' signed distance fields (negative in bone, truncated at
``trunc`` mm), each laid into the mean skull's frame by ``priors.fit_points``, on a coarse grid
(``Resources/Models/shape-model.npz``, made by ``Utilities/make_shape_model.py`` from cases 000-044).

Fitting it needs no search: with the mean skull's fit fixed, the skull's own surface (the voxels
within ``band_mm`` of it, whose signed distance is observed) fixes the modes' weights by ridge
regression, each mode held to its spread in the training skulls. The opening's rim is surface that
the complete skull lacks; the points the model misses most (beyond the ``TRIM`` quantile) are left
out and the weights fitted again, so the rim cannot pull the shape. The model's bone where the skull
has none is the shape model's guess of the missing bone.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from ..errors import SparseImplantError
from ..models.registry import default_model_dir
from .pose import spread_sample

SHAPE_MODEL_FILE = "shape-model.npz"
MODES = 20  # modes fitted (of the 44 of 45 training skulls); chosen on validation cases 045-049
RIDGE = 1.0  # weight of the modes' training spread against the surface's evidence
BAND_MM = 3.0  # the skull's voxels within this of its surface (either side) are the observations
TRIM = 0.85  # refits keep the observations the model explains best, this share of them
ROUNDS = 3
FIT_POINTS = 30000  # observations used (an evenly spread subset)


@dataclass(frozen=True)
class ShapeModel:
    """Mean and modes of the training skulls' truncated signed distance (mm) on a grid of ``spacing``
    in the mean skull's frame: voxel ``i`` lies at ``(i - centre) * spacing`` mm from its centre, as
    ``priors.ShapeTemplate``'s. ``spread``: each mode's standard deviation over the training skulls."""

    mean: np.ndarray
    modes: np.ndarray  # (K, *mean.shape), unit norm over the grid
    spread: np.ndarray
    centre: np.ndarray
    spacing: float
    trunc: float

    def sample(self, field: np.ndarray, offsets_mm: np.ndarray, outside: float) -> np.ndarray:
        index = offsets_mm / self.spacing + self.centre
        return ndimage.map_coordinates(field, index.T, order=1, mode="constant", cval=outside)

    def fit(self, skull: np.ndarray, spacing: float, matrix: np.ndarray, shift: np.ndarray,
            modes: int = MODES) -> "ShapeFitResult":
        """The model laid on ``skull`` (bool, isotropic grid of ``spacing``; a point is ``index *
        spacing`` mm) where the mean skull's fit puts it (template offset ``u = matrix @ q + shift``)."""
        modes = min(modes, len(self.modes))
        observed = signed_distance_mm(skull, spacing)
        band = np.argwhere(np.abs(observed) <= BAND_MM)
        band = spread_sample(band, FIT_POINTS)
        offsets = (band * spacing) @ matrix.T + shift
        target = observed[tuple(band.T)] - self.sample(self.mean, offsets, self.trunc)
        design = np.stack([self.sample(self.modes[k], offsets, 0.0) for k in range(modes)], axis=1)
        weights, miss = trimmed_ridge_solve(design, target, np.diag(RIDGE / self.spread[:modes] ** 2), ROUNDS)
        field = self.mean + np.tensordot(weights, self.modes[:modes], axes=1)
        return ShapeFitResult(field, weights / self.spread[:modes], float(np.median(miss)), self)

    @classmethod
    def build(cls, fields: Sequence[np.ndarray], centre: np.ndarray, spacing: float, trunc: float) -> "ShapeModel":
        """From the training skulls' truncated signed distance fields on one grid (the mean skull's frame)."""
        stacked = np.stack([np.asarray(f, dtype=np.float32).ravel() for f in fields])
        mean = stacked.mean(axis=0)
        _, singular, modes = np.linalg.svd(stacked - mean, full_matrices=False)
        spread = singular / np.sqrt(max(len(stacked) - 1, 1))
        shape = np.asarray(fields[0]).shape
        useful = spread > spread[0] * 1e-6 if len(spread) else spread.astype(bool)
        return cls(mean.reshape(shape), modes[useful].reshape(-1, *shape).astype(np.float32), spread[useful],
                   np.asarray(centre, dtype=np.float64), float(spacing), float(trunc))

    def save(self, path: Path, modes: int) -> None:
        np.savez_compressed(path, mean=self.mean.astype(np.float16), modes=self.modes[:modes].astype(np.float16),
                            spread=self.spread[:modes], centre=self.centre, spacing=self.spacing, trunc=self.trunc)


@dataclass(frozen=True)
class ShapeFitResult:
    """The shape model fitted to one skull: its signed distance on the model's grid (``field``), the
    modes' weights in training spreads, and the median miss (mm) at the observations it kept."""

    field: np.ndarray
    weights: np.ndarray
    residual_mm: float
    model: ShapeModel

    def bone(self, shape: Tuple[int, int, int], spacing: float, matrix: np.ndarray, shift: np.ndarray) -> np.ndarray:
        """The fitted model's bone (bool) on a grid of ``shape`` and ``spacing`` laid as in ``fit``
        (beyond the model's grid: outside)."""
        model = self.model
        # template index = (matrix @ (i * spacing) + shift) / model spacing + centre
        scaled = matrix * (spacing / model.spacing)
        offset = shift / model.spacing + model.centre
        values = ndimage.affine_transform(self.field, scaled, offset, output_shape=tuple(shape), order=1,
                                          mode="constant", cval=model.trunc)
        return values <= 0.0


def trimmed_ridge_solve(design: np.ndarray, target: np.ndarray, ridge: np.ndarray, rounds: int,
                        usable: Optional[np.ndarray] = None, keep: float = TRIM) -> Tuple[np.ndarray, np.ndarray]:
    """(weights, miss): ridge least squares of ``design @ weights = target`` (``ridge`` per thousand
    rows used), solved ``rounds`` times, each time on the ``keep`` share of the ``usable`` rows (all by
    default) that the previous solve missed least, so that the rows no fit can explain (an opening's
    rim, bone that differs) stop pulling it; ``miss`` is every row's absolute miss by the last solve."""
    usable = np.ones(len(target), dtype=bool) if usable is None else usable
    kept = usable
    for _ in range(rounds):
        weights = np.linalg.solve(design[kept].T @ design[kept] + ridge * kept.sum() / 1000.0, design[kept].T @ target[kept])
        miss = np.abs(design @ weights - target)
        kept = usable & (miss <= np.quantile(miss[usable], keep))
    return weights, miss


def signed_distance_mm(bone: np.ndarray, spacing: float) -> np.ndarray:
    """Each voxel's distance (mm) to the bone's surface: positive outside the bone, negative in it."""
    return (ndimage.distance_transform_edt(~bone, sampling=spacing)
            - ndimage.distance_transform_edt(bone, sampling=spacing))


def distance_in_mean_frame(bone: np.ndarray, spacing: float, origin: np.ndarray, matrix: np.ndarray,
                           shift: np.ndarray, offsets_mm: np.ndarray, trunc: float) -> np.ndarray:
    """A training skull's signed distance (``bone`` on a grid of ``spacing`` whose voxel 0 lies at
    ``origin`` mm), truncated at ``trunc``, at the mean skull's ``offsets_mm`` ((N, 3)), the skull laid
    on the mean by its fit (template offset ``u = matrix @ q + shift``): one field of ``ShapeModel.build``."""
    skull_frame = (offsets_mm - shift) @ np.linalg.inv(matrix).T
    index = (skull_frame - origin) / spacing
    distance = np.clip(signed_distance_mm(bone, spacing), -trunc, trunc).astype(np.float32)
    return ndimage.map_coordinates(distance, index.T, order=1, mode="constant", cval=trunc)


@lru_cache(maxsize=2)
def load_shape_model(path: Optional[Path] = None) -> Optional[ShapeModel]:
    """The bundled shape model; None when it is absent (the fitted mean skull then stands alone)."""
    path = Path(path) if path else default_model_dir() / SHAPE_MODEL_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path) as stored:
            return ShapeModel(stored["mean"].astype(np.float32), stored["modes"].astype(np.float32),
                              np.asarray(stored["spread"], dtype=np.float64), np.asarray(stored["centre"], dtype=np.float64),
                              float(stored["spacing"]), float(stored["trunc"]))
    except (OSError, KeyError, ValueError) as error:
        raise SparseImplantError(f"the shape model {path} cannot be read ({error}): reinstall the extension") from error
