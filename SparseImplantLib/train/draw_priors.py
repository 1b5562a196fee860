"""The priors of a training draw, without fitting them per draw.

``priors.estimate_priors`` takes about a second; a training iteration may take less. So each case's
symmetry plane and mean-skull fit are found once, on its complete skull in the case's own LPS frame
(cached beside the prepared case), and every draw carries them through its pose onto its grid. A small
random error is added to each, so the network learns not to trust a prior more than inference can
(the plane found on a defective skull differs from the complete skull's by a fraction of a degree and
of a millimetre; the fit by more when a large opening is missing).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from ..outputs import atomic_write
from ..pipeline.mirror import estimate_symmetry
from ..pipeline.priors import Priors, ShapeTemplate, fit_points
from .augment import Draw
from .samples import SCALE, CaseSource, source_points

FIT_SPACING_MM = 2.0  # the case's fits are made on this grid, as inference makes them on the model grid
# Random error per draw (standard deviations): the plane's normal (degrees) and offset (mm); the fit's
# turn (degrees), scale (share) and shift (mm).
PLANE_ERROR = (0.5, 0.5)
FIT_ERROR = (1.5, 0.015, 1.0)


@dataclass(frozen=True)
class CasePriors:
    """A case's mid-sagittal plane ``normal . x = offset`` and mean-skull fit ``u = matrix @ x + shift``
    (template offset u of an LPS point x), both in the case's LPS frame."""

    normal: np.ndarray
    offset: float
    matrix: np.ndarray
    shift: np.ndarray


def case_priors(source: CaseSource, template: ShapeTemplate, cache_dir: Path) -> CasePriors:
    """The case's plane and fit, cached in ``cache_dir`` (keyed by the template's content)."""
    key = hashlib.sha256(template.fraction.tobytes()).hexdigest()[:12]
    cached = cache_dir / f"{source.case.replace('/', '_')}_priors-{key}.npz"
    if not cached.is_file():
        step = int(round(FIT_SPACING_MM / source.spacing))
        mask = source.complete[::step, ::step, ::step] >= SCALE / 2
        plane = estimate_symmetry(mask, FIT_SPACING_MM)
        fit = fit_points(source_points(source, source.complete, FIT_SPACING_MM), template)
        # The plane was found in grid mm q = x - origin: normal . x = offset + normal . origin.
        offset = plane.offset_mm + float(plane.normal @ source.origin)
        atomic_write(cached, lambda tmp: np.savez(tmp, normal=plane.normal, offset=offset, matrix=fit.matrix,
                                                  shift=fit.shift))
    with np.load(cached) as stored:
        return CasePriors(stored["normal"], float(stored["offset"]), stored["matrix"], stored["shift"])


def _index_to_case(pair: Draw) -> Tuple[np.ndarray, np.ndarray]:
    """(A, a): the case LPS point x = A @ i + a of the draw's voxel i."""
    inverse = np.linalg.inv(pair.pose.matrix)
    return inverse * pair.spacing, pair.pose.centre + inverse @ (pair.origin - pair.pose.centre)


def _small_turn(rng: np.random.Generator, degrees: float) -> np.ndarray:
    return Rotation.from_rotvec(rng.normal(0.0, np.deg2rad(degrees), size=3)).as_matrix()


def draw_priors(pair: Draw, priors: CasePriors, template: ShapeTemplate, rng: np.random.Generator) -> Priors:
    """The draw's mirrored skull and fitted mean skull on its grid, from the case's plane and fit
    carried through the draw's pose, each with a random error (``PLANE_ERROR``, ``FIT_ERROR``)."""
    to_case, case_origin = _index_to_case(pair)
    # The plane turns about its point nearest the skull's centre, and moves along its normal.
    centre = pair.pose.centre - (priors.normal @ pair.pose.centre - priors.offset) * priors.normal
    normal = _small_turn(rng, PLANE_ERROR[0]) @ priors.normal
    offset = float(normal @ centre) + rng.normal(0.0, PLANE_ERROR[1])
    reflection = np.eye(3) - 2 * np.outer(normal, normal)
    # voxel i -> case x -> mirrored x' = R x + 2 offset n -> voxel i' = A^-1 (x' - a)
    from_case = np.linalg.inv(to_case)
    matrix = from_case @ reflection @ to_case
    shift = from_case @ (reflection @ case_origin + 2 * offset * normal - case_origin)
    mirror = ndimage.affine_transform(pair.defective.astype(np.float32), matrix, shift, order=1, mode="constant") >= 0.5

    turn, scale = _small_turn(rng, FIT_ERROR[0]), np.exp(rng.normal(0.0, FIT_ERROR[1]))
    fit_matrix = scale * turn @ priors.matrix
    fit_shift = scale * turn @ priors.shift + rng.normal(0.0, FIT_ERROR[2], size=3)
    # template index t = (M (A i + a) + s) / template spacing + centre
    fitted = ndimage.affine_transform(template.fraction, fit_matrix @ to_case / template.spacing,
                                      (fit_matrix @ case_origin + fit_shift) / template.spacing + template.centre,
                                      output_shape=pair.defective.shape, order=1, mode="constant").astype(np.float32)
    return Priors(mirror, fitted, None, None)  # plane and fit are in the case's frame, not the grid's
