"""Priors: what the patient's own skull says about the missing bone, on the network's grid.

Surgeons design a unilateral implant from the healthy side, mirrored; across the midline they fall
back on a typical skull. Both are given to the network as extra input channels (``ChannelInput``),
and each is also a baseline on its own (``bench generalization``):

- **mirror**: the skull reflected about its mid-sagittal plane. The plane is the one whose mirror
  image of the skull lands on the skull; each mirrored voxel's distance to bone is capped at
  ``CAP_MM``, so voxels mirrored into the opening (or into asymmetric bone) all cost the same and
  cannot pull the plane.
- **fitted**: the mean training skull (``Resources/Models/shape-template.npz``, made by
  ``Utilities/make_shape_template.py``) laid onto the skull by a rotation, a scale per axis and a
  shift. The fit brings the skull's voxels near the mean skull's bone (capped distances, as for the
  mirror); the opening has no voxels, so it cannot pull the fit.

Everything works on a grid with isotropic spacing and orthonormal axes (the model grid), in its own
frame: a point is ``index * spacing`` mm.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
from scipy import ndimage, optimize
from scipy.spatial.transform import Rotation

from ..errors import SparseImplantError
from ..models.registry import default_model_dir
from .pose import occupancy_share, spread_sample
from .postprocess import without_bone_layers

SHAPE_TEMPLATE_FILE = "shape-template.npz"
CAP_MM = 6.0  # a mirrored voxel this far from bone or further costs the same, wherever it lands
AGREE_MM = 2.5  # a mirrored voxel within this of bone agrees with the skull (about one model voxel)
MIRROR_SEARCH_DEG = 35.0  # the plane's normal is sought within this of the grid's left-right axis
MIRROR_OFFSET_MM = 15.0  # ... and its offset within this of the skull's middle
FIT_SEARCH_DEG = 30.0  # the mean skull's turn is sought within this about each axis: beyond pose.TRAINING_TURN_DEG
# The skull's centroid sits higher or lower in it with the scan's bottom cut: the fit starts from each
# of these heights too. From the centroid alone, a complete skull cut low (SkullFix 056) was fitted
# turned 132° (residual 2.66 mm; the mean skull's bone as a 127 ml thick layer); from 8-16 mm lower,
# 0.31 mm (results/notes/experiments.md, "Fitted mean skull").
FIT_HEIGHT_STARTS_MM = (-16.0, -8.0, 0.0, 8.0, 16.0)
FIT_SCALE_LIMIT = 0.2  # per-axis scale within exp(+-this): 0.82-1.22, wider than adult skulls differ
FITTED_SITE = 0.5  # grid voxels where the fitted mean skull has at least this share of skulls hold a site
SAMPLE_POINTS = 4000  # skull voxels the fits look at (a fixed, evenly spread subset)
FIELD_MARGIN = 5  # grid voxels above the skull's lowest slice where missing bone is not looked for
# A fit is poor when its residual (median distance of the skull's voxels to the other surface) exceeds
# these: the mirrored skull on the skull, the skull on the fitted mean skull's bone. POOR_FIT_MM lies above
# the training skulls' residuals (Utilities/make_shape_template.py prints them; results/notes/experiments.md).
POOR_MIRROR_MM = 2.0
POOR_FIT_MM = 3.0


@dataclass(frozen=True)
class SymmetryPlane:
    """The mid-sagittal plane ``normal . q = offset_mm`` (q: grid-frame mm); ``residual_mm`` is the median
    distance of the mirrored skull's voxels to bone, ``agreement`` the share within ``AGREE_MM``."""

    normal: np.ndarray
    offset_mm: float
    residual_mm: float
    agreement: float

    def reflection(self) -> Tuple[np.ndarray, np.ndarray]:
        """(matrix, shift): the reflection q -> matrix @ q + shift."""
        normal = self.normal / np.linalg.norm(self.normal)
        return np.eye(3) - 2 * np.outer(normal, normal), 2 * self.offset_mm * normal

    @property
    def tilt_deg(self) -> float:
        """Angle between the plane's normal and the grid's left-right axis."""
        return float(np.degrees(np.arccos(min(1.0, abs(self.normal[0]) / np.linalg.norm(self.normal)))))


@dataclass(frozen=True)
class ShapeFit:
    """The mean skull laid onto the skull: template offset u (mm from its centre) of a grid-frame point
    q is ``matrix @ q + shift``. ``residual_mm``: median distance of the skull's voxels to the mean
    skull's bone; ``match``: mean template share at them."""

    matrix: np.ndarray
    shift: np.ndarray
    residual_mm: float
    match: float

    @property
    def scales(self) -> np.ndarray:
        """The mean skull's size along its own axes as laid on this skull (1: the training skulls' mean)."""
        return 1.0 / np.linalg.svd(self.matrix, compute_uv=False)[::-1]

    @property
    def at_scale_limit(self) -> bool:
        """Whether the fit stretched or shrank the mean skull as far as it may (``FIT_SCALE_LIMIT``): the
        skull is no adult skull's size (SkullFix 050-059 fit within 0.87-1.04), and no fit of the mean
        skull can stand for it, whatever its residual."""
        return bool(np.abs(np.log(self.scales)).max() >= 0.95 * FIT_SCALE_LIMIT)


@dataclass(frozen=True)
class ShapeTemplate:
    """Mean training skull: share of aligned skulls with bone per voxel, on a grid of ``spacing`` with
    axes L, P, S, voxel ``i`` at ``(i - centre) * spacing`` mm from the mean centre; ``distance`` is each
    voxel's distance (mm) to the mean skull's bone (share >= ``FITTED_SITE``)."""

    fraction: np.ndarray
    spacing: float
    centre: np.ndarray

    @property
    def distance(self) -> np.ndarray:
        return _template_distance(self)

    def sample(self, offsets_mm: np.ndarray, values: Optional[np.ndarray] = None, outside: float = 0.0) -> np.ndarray:
        index = offsets_mm / self.spacing + self.centre
        return ndimage.map_coordinates(self.fraction if values is None else values, index.T, order=1,
                                       mode="constant", cval=outside)

    def save(self, path: Path) -> None:
        np.savez_compressed(path, fraction=np.rint(self.fraction * 255).astype(np.uint8), spacing=self.spacing,
                            centre=self.centre)


_DISTANCES: dict = {}


def _template_distance(template: ShapeTemplate) -> np.ndarray:
    key = id(template.fraction)
    if key not in _DISTANCES:
        _DISTANCES[key] = ndimage.distance_transform_edt(template.fraction < FITTED_SITE,
                                                         sampling=template.spacing).astype(np.float32)
    return _DISTANCES[key]


@lru_cache(maxsize=2)
def load_shape_template(path: Optional[Path] = None) -> ShapeTemplate:
    path = Path(path) if path else default_model_dir() / SHAPE_TEMPLATE_FILE
    if not path.is_file():
        raise SparseImplantError(f"the mean-skull template {path} is missing: reinstall the extension")
    with np.load(path) as stored:
        return ShapeTemplate(stored["fraction"].astype(np.float32) / 255, float(stored["spacing"]),
                             np.asarray(stored["centre"], dtype=np.float64))


# --- mirror -------------------------------------------------------------------------------------

def _capped_distance(mask: np.ndarray, spacing: float) -> np.ndarray:
    """Distance (mm) of each voxel to the nearest bone voxel, capped at ``CAP_MM``."""
    return np.minimum(ndimage.distance_transform_edt(~mask, sampling=spacing), CAP_MM).astype(np.float32)


def _look_up(distance: np.ndarray, points_mm: np.ndarray, spacing: float) -> np.ndarray:
    return ndimage.map_coordinates(distance, (points_mm / spacing).T, order=1, mode="constant", cval=CAP_MM)


def _normal(angles_deg: np.ndarray) -> np.ndarray:
    """The left-right axis turned by ``angles_deg`` (about the vertical, then about front-back)."""
    return Rotation.from_euler("zy", angles_deg, degrees=True).apply([1.0, 0.0, 0.0])


def estimate_symmetry(mask: np.ndarray, spacing: float) -> Optional[SymmetryPlane]:
    """The skull's mid-sagittal plane on an isotropic grid (``mask``: bone); None for an empty mask.

    A coarse search over normals within ``MIRROR_SEARCH_DEG`` of the grid's left-right axis and offsets
    around the skull's middle, then a local refinement; cost: the mean capped distance to bone of the
    mirrored voxels."""
    mask = np.asarray(mask) != 0
    points = np.argwhere(mask) * spacing
    if len(points) < 10:
        return None
    distance = _capped_distance(mask, spacing)
    coarse_points, fine_points = spread_sample(points, 1000), spread_sample(points, SAMPLE_POINTS)

    def cost(parameters: np.ndarray, sample: np.ndarray) -> float:
        normal = _normal(parameters[:2])
        mirrored = sample - 2 * (sample @ normal - parameters[2])[:, None] * normal
        return float(_look_up(distance, mirrored, spacing).mean())

    steps = np.arange(-MIRROR_SEARCH_DEG, MIRROR_SEARCH_DEG + 1e-9, 5.0)
    candidates = []
    for yaw, roll in itertools.product(steps, steps):
        middle = float(np.median(points @ _normal(np.array([yaw, roll]))))
        for offset in np.arange(-MIRROR_OFFSET_MM, MIRROR_OFFSET_MM + 1e-9, 2.5):
            candidates.append(np.array([yaw, roll, middle + offset]))
    start = min(candidates, key=lambda parameters: cost(parameters, coarse_points))
    refined = optimize.minimize(cost, start, args=(fine_points,), method="Powell",
                                options={"xtol": 0.05, "ftol": 1e-4, "maxfev": 600})
    normal, offset = _normal(refined.x[:2]), float(refined.x[2])
    mirrored = fine_points - 2 * (fine_points @ normal - offset)[:, None] * normal
    distances = _look_up(distance, mirrored, spacing)
    return SymmetryPlane(normal, offset, float(np.median(distances)), float(np.mean(distances <= AGREE_MM)))


def mirrored_mask(mask: np.ndarray, spacing: float, plane: SymmetryPlane) -> np.ndarray:
    """``mask`` reflected about ``plane`` (bool, same grid)."""
    matrix, shift = plane.reflection()
    # The reflection is its own inverse: voxel i of the result samples the mask at matrix @ i + shift / spacing.
    values = ndimage.affine_transform((np.asarray(mask) != 0).astype(np.float32), matrix, shift / spacing,
                                      order=1, mode="constant", cval=0.0)
    return values >= 0.5


# --- fitted mean skull --------------------------------------------------------------------------

def _fit_matrix(parameters: np.ndarray) -> np.ndarray:
    """Template offset u = diag(1 / scales) @ R^T @ (q - centre - shift): the linear part."""
    rotation = Rotation.from_rotvec(parameters[:3]).as_matrix()
    return np.diag(np.exp(-parameters[3:6])) @ rotation.T


def fit_shape(mask: np.ndarray, spacing: float, template: Optional[ShapeTemplate] = None,
              rotation: Optional[np.ndarray] = None) -> Optional[ShapeFit]:
    """Lay the mean skull onto the skull (``mask`` on an isotropic grid); see ``fit_points``. None for
    an (almost) empty mask."""
    points = np.argwhere(np.asarray(mask) != 0) * spacing
    return fit_points(points, template or load_shape_template(), rotation) if len(points) >= 10 else None


def fit_points(points: np.ndarray, template: ShapeTemplate, rotation: Optional[np.ndarray] = None) -> ShapeFit:
    """The turn, per-axis scale and shift that put the skull's voxels (``points``, mm) nearest the mean
    skull's bone (distances capped at ``CAP_MM``, so bone the mean skull lacks cannot pull the fit).
    ``rotation`` (columns: the skull's own axes in the points' frame, e.g. ``pose.Pose.rotation``)
    starts the search; without it, turns up to ``FIT_SEARCH_DEG`` about each axis are tried, each
    from the heights ``FIT_HEIGHT_STARTS_MM``, and the best of them refined."""
    centre = points.mean(axis=0)
    sample, coarse = spread_sample(points - centre, SAMPLE_POINTS), spread_sample(points - centre, 800)

    capped = np.minimum(template.distance, CAP_MM)

    def mismatch(parameters: np.ndarray, offsets: np.ndarray) -> float:
        u = (offsets - parameters[6:]) @ _fit_matrix(parameters).T
        penalty = np.sum(np.maximum(np.abs(parameters[3:6]) - FIT_SCALE_LIMIT, 0.0) ** 2) * 100.0
        return float(template.sample(u, capped, outside=CAP_MM).mean()) + penalty

    if rotation is not None:
        turns = [Rotation.from_matrix(rotation).as_rotvec()]
    else:
        steps = np.deg2rad(np.arange(-FIT_SEARCH_DEG, FIT_SEARCH_DEG + 1e-9, 10.0))
        turns = [Rotation.from_euler("xyz", angles).as_rotvec() for angles in itertools.product(steps, repeat=3)]
    starts = (np.concatenate([rotvec, np.zeros(5), [height]]) for rotvec in turns for height in FIT_HEIGHT_STARTS_MM)
    start = min(starts, key=lambda p: mismatch(p, coarse))
    refined = optimize.minimize(mismatch, start, args=(sample,), method="Powell",
                                options={"xtol": 1e-3, "ftol": 1e-5, "maxfev": 3000})
    matrix = _fit_matrix(refined.x)
    shift = -matrix @ (centre + refined.x[6:])
    u = spread_sample(points, SAMPLE_POINTS) @ matrix.T + shift
    residual = float(np.median(template.sample(u, template.distance, outside=CAP_MM * 5)))
    return ShapeFit(matrix, shift, residual, float(template.sample(u).mean()))


def fitted_share(shape: Tuple[int, int, int], spacing: float, fit: ShapeFit,
                 template: Optional[ShapeTemplate] = None) -> np.ndarray:
    """The fitted mean skull on a grid of ``shape`` (float32 share of training skulls with bone)."""
    template = template or load_shape_template()
    # template index = (matrix @ (i * spacing) + shift) / template spacing + centre
    matrix = fit.matrix * (spacing / template.spacing)
    offset = fit.shift / template.spacing + template.centre
    return ndimage.affine_transform(template.fraction, matrix, offset, output_shape=tuple(shape), order=1,
                                    mode="constant", cval=0.0).astype(np.float32)


# --- both, as the network's input ---------------------------------------------------------------

@dataclass
class Priors:
    """Both priors on one grid: the mirrored skull (bool) and the fitted mean skull (share, float32),
    with the fits that made them (None where the skull gave too little to fit)."""

    mirror: np.ndarray
    fitted: np.ndarray
    plane: Optional[SymmetryPlane]
    fit: Optional[ShapeFit]

    def report(self, axes: Optional[np.ndarray] = None) -> dict:
        """For ``report.json``: the plane (normal in LPS when ``axes``, the grid's axes, are given) and
        each fit's residual."""
        axes = np.eye(3) if axes is None else axes
        plane = None
        if self.plane is not None:
            plane = {"normal_lps": [round(float(v), 4) for v in axes @ self.plane.normal],
                     "tilt_deg": round(self.plane.tilt_deg, 1), "residual_mm": round(self.plane.residual_mm, 2),
                     "agreement": round(self.plane.agreement, 3)}
        fit = None
        if self.fit is not None:
            fit = {"residual_mm": round(self.fit.residual_mm, 2), "match": round(self.fit.match, 3),
                   "scales": [round(float(s), 3) for s in self.fit.scales]}
        return {"mirror_plane": plane, "fitted_skull": fit}

    def completed(self, defective: np.ndarray, which: str) -> np.ndarray:
        """The skull completed by one prior alone (``which``: mirror or fitted), the baselines the network
        is measured against: the defective skull with the prior's bone that fills an opening. A layer one
        voxel thick along the skull is the prior lying a little off (no skull is quite symmetric, nor the
        mean), not missing bone: the added bone is opened by one voxel, only its pieces of at least a
        tenth of the largest are kept, and of those the ones that fill an opening rather than lie on
        the bone, as ``postprocess.extract_implant`` keeps an implant's; none below the skull's lowest
        slice (``_within_field``)."""
        skull = np.asarray(defective) != 0
        prior = self.mirror if which == "mirror" else self.fitted >= FITTED_SITE
        added = ndimage.binary_opening(_within_field(prior & ~skull, skull),
                                       structure=ndimage.generate_binary_structure(3, 1))
        labels, count = ndimage.label(added, structure=np.ones((3, 3, 3)))
        if count == 0:
            return skull
        sizes = np.bincount(labels.ravel())[1:]
        kept = np.isin(labels, np.flatnonzero(sizes >= 0.1 * sizes.max()) + 1)
        return skull | without_bone_layers(kept, skull)

    def added(self, defective: np.ndarray, which: str) -> np.ndarray:
        """The bone one prior alone adds to the skull (``completed`` less the skull)."""
        skull = np.asarray(defective) != 0
        return self.completed(skull, which) & ~skull


def _within_field(added: np.ndarray, skull: np.ndarray) -> np.ndarray:
    """``added`` between the skull's lowest slice (plus ``FIELD_MARGIN`` voxels) and its top: below, a
    scan's field of view may end anywhere, which no prior can tell from missing bone (a mean skull
    reaching below a scan cut high would add its whole lower part). Changed in place."""
    levels = np.flatnonzero(skull.any(axis=(0, 1)))
    if levels.size == 0:
        return added
    added[:, :, :levels[0] + FIELD_MARGIN] = False
    added[:, :, levels[-1] + 1:] = False
    return added


def estimate_priors(defective: np.ndarray, spacing: float, rotation: Optional[np.ndarray] = None,
                    template: Optional[ShapeTemplate] = None) -> Priors:
    """Both priors for a skull on an isotropic grid (see the module docstring)."""
    mask = np.asarray(defective) != 0
    plane = estimate_symmetry(mask, spacing)
    fit = fit_shape(mask, spacing, template, rotation)
    mirror = mirrored_mask(mask, spacing, plane) if plane is not None else np.zeros_like(mask)
    fitted = fitted_share(mask.shape, spacing, fit, template) if fit is not None else np.zeros(mask.shape, np.float32)
    return Priors(mirror, fitted, plane, fit)


def channel_input(defective: np.ndarray, priors: Optional[Priors]) -> Tuple[np.ndarray, np.ndarray]:
    """The network's input: (N, 3) voxel indices and (N, C) float32 features. Without priors, the skull's
    voxels with feature 1; with them, the union of the skull, the mirrored skull and the fitted mean
    skull's bone, with channels (skull, mirrored skull, fitted share)."""
    skull = np.asarray(defective) != 0
    if priors is None:
        voxels = np.argwhere(skull)
        return voxels, np.ones((len(voxels), 1), np.float32)
    voxels = np.argwhere(skull | priors.mirror | (priors.fitted >= FITTED_SITE))
    index = tuple(voxels.T)
    features = np.stack([skull[index], priors.mirror[index], priors.fitted[index]], axis=1).astype(np.float32)
    return voxels, features


def build_shape_template(clouds: List[np.ndarray], spacing: float, fits: Optional[List[ShapeFit]] = None) -> ShapeTemplate:
    """Mean of complete skulls given as voxel positions (mm): each laid into the template frame by its
    fit (without fits: centred on its centroid), the fits' mean turn, scale and shift taken out so the
    mean keeps the training skulls' own size and pose; share of skulls per voxel, blurred by half a voxel."""
    if fits is None:
        laid = [cloud - cloud.mean(axis=0) for cloud in clouds]
    else:
        mean_matrix = np.mean([fit.matrix for fit in fits], axis=0)
        mean_shift = np.mean([fit.shift for fit in fits], axis=0)
        undo = np.linalg.inv(mean_matrix)
        laid = [(cloud @ fit.matrix.T + fit.shift - mean_shift) @ undo.T for cloud, fit in zip(clouds, fits)]
        middle = np.mean([cloud.mean(axis=0) for cloud in laid], axis=0)  # offsets from the mean skull's centre
        laid = [cloud - middle for cloud in laid]
    share, centre = occupancy_share(laid, spacing, margin_voxels=4)
    fraction = ndimage.gaussian_filter(share, sigma=0.5)
    box = tuple(slice(max(s.start - 3, 0), s.stop + 3) for s in ndimage.find_objects((fraction > 0.02).astype(int))[0])
    return ShapeTemplate(fraction[box], spacing, centre - np.array([s.start for s in box]))
