"""Priors: what the patient's own skull says about the missing bone, on the network's grid.

Surgeons design a unilateral implant from the healthy side, mirrored; across the midline they fall
back on a typical skull. Both are given to the network as extra input channels (``ChannelInput``),
and each is also a baseline on its own (``bench generalization``):

- **mirror**: the skull reflected about its mid-sagittal plane (``mirror``).
- **fitted**: the mean training skull (``Resources/Models/shape-template.npz``, made by
  ``Utilities/make_shape_template.py``) laid onto the skull by a rotation, a scale per axis and a
  shift. The fit brings the skull's voxels near the mean skull's bone (capped distances, as for the
  mirror); the opening has no voxels, so it cannot pull the fit. The shape model (``shape_model``),
  laid on by that fit and fitted to the skull's own surface, is the other candidate; each is laid
  onto the skull around the bone it adds (``rim_match``), and whichever then matches the skull there
  better fills the opening. An opening on one side of the mirror plane also weighs the mirror image,
  laid on the same way, so the fitted prior's bone may be the patient's healthy side.

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
from ..metrics import dice
from ..models.registry import default_model_dir
from .mirror import CAP_MM, SAMPLE_POINTS, SymmetryPlane, estimate_symmetry, mirrored_mask
from .pose import occupancy_share, spread_sample
from .postprocess import plugs_a_hole, without_bone_layers
from .rim_match import rim_matched
from .shape_model import ShapeModel, load_shape_model
from .volume import find_foreground_box

SHAPE_TEMPLATE_FILE = "shape-template.npz"
FIT_SEARCH_DEG = 30.0  # the mean skull's turn is sought within this about each axis: beyond pose.TRAINING_TURN_DEG
# The skull's centroid sits higher or lower in it with the scan's bottom cut: the fit starts from each
# of these heights too. From the centroid alone, a complete skull cut low (SkullFix 056) was fitted
# turned 132° (residual 2.66 mm; the mean skull's bone as a 127 ml thick layer); from 8-16 mm lower,
# 0.31 mm (results/notes/experiments.md, "Fitted mean skull").
FIT_HEIGHT_STARTS_MM = (-16.0, -8.0, 0.0, 8.0, 16.0)
FIT_SCALE_LIMIT = 0.2  # per-axis scale within exp(+-this): 0.82-1.22, wider than adult skulls differ
FITTED_SITE = 0.5  # grid voxels where the fitted mean skull has at least this share of skulls hold a site
MIRROR_ONE_SIDE = 0.9  # _on_one_side: this share of an opening's added bone on one side of the mirror plane
SHAPE_MODEL_ALONE_AGREEMENT = 0.85  # _fitted_bone: the shape model fills an opening the mean skull misses from this
RING_VOXELS = 8  # agreement_around: the ring around a prior's added bone where it must match the skull
_CROSS = ndimage.generate_binary_structure(3, 1)
FIELD_MARGIN = 5  # grid voxels above the skull's lowest slice where missing bone is not looked for
# A fit is poor when its residual (median distance of the skull's voxels to the other surface) exceeds
# these: the mirrored skull on the skull, the skull on the fitted mean skull's bone. POOR_FIT_MM lies above
# the training skulls' residuals (Utilities/make_shape_template.py prints them; results/notes/experiments.md).
POOR_MIRROR_MM = 2.0
POOR_FIT_MM = 3.0



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
    with the fits that made them (None where the skull gave too little to fit). ``fitted_bone``: the
    bone the fitted prior fills an opening with (the mean skull's, the shape model's or, for an opening
    on one side, the mirror image's, laid onto the skull around the opening; ``_fitted_bone``), and
    ``fitted_bone_report`` says which and why."""

    mirror: np.ndarray
    fitted: np.ndarray
    plane: Optional[SymmetryPlane]
    fit: Optional[ShapeFit]
    fitted_bone: Optional[np.ndarray] = None
    fitted_bone_report: Optional[dict] = None

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
        return {"mirror_plane": plane, "fitted_skull": fit, "fitted_bone": self.fitted_bone_report}

    def completed(self, defective: np.ndarray, which: str, spacing: float) -> np.ndarray:
        """The skull completed by one prior alone (``which``: mirror or fitted), the baselines the network
        is measured against: the defective skull with the prior's bone that fills an opening (the priors'
        grid has ``spacing`` mm). A layer one voxel thick along the skull is the prior lying a little off
        (no skull is quite symmetric, nor the mean), not missing bone: the added bone is opened by one
        voxel, only its pieces of at least a tenth of the largest are kept, and of those the ones that
        fill an opening rather than lie on the bone (small craniotomies' plugs included), as
        ``postprocess.extract_implant`` keeps an implant's, each given back the voxel the opening shaved
        off its edges unless that makes it a layer on the bone (on 045-049 the fitted shape's implant
        DSC 0.761 -> 0.783; results/notes/experiments.md); none below the skull's lowest slice
        (``_within_field``)."""
        skull = np.asarray(defective) != 0
        if which == "mirror":
            return filled_by(self.mirror, skull, spacing)
        return filled_by(self.fitted_bone if self.fitted_bone is not None else self.fitted >= FITTED_SITE, skull, spacing)

    def added(self, defective: np.ndarray, which: str, spacing: float) -> np.ndarray:
        """The bone one prior alone adds to the skull (``completed`` less the skull)."""
        skull = np.asarray(defective) != 0
        return self.completed(skull, which, spacing) & ~skull


def filled_by(prior: np.ndarray, skull: np.ndarray, spacing: float) -> np.ndarray:
    """The skull (bool) completed by a prior's bone (bool), as ``Priors.completed`` describes."""
    added = _within_field(prior & ~skull, skull)
    labels, count = ndimage.label(ndimage.binary_opening(added, structure=_CROSS), structure=np.ones((3, 3, 3)))
    if count == 0:
        return skull
    sizes = np.bincount(labels.ravel())[1:]
    kept = without_bone_layers(np.isin(labels, np.flatnonzero(sizes >= 0.1 * sizes.max()) + 1), skull, (spacing,) * 3)
    # The opening also shaved the kept pieces' edges, where they meet the opening's rim, and their thin
    # parts (temporal bone two voxels thick): give them back the voxel it took, within the prior's bone,
    # unless a piece then lies on the bone.
    restored = ndimage.binary_dilation(kept, structure=_CROSS, mask=added)
    return skull | without_bone_layers(restored, skull, (spacing,) * 3) | kept


def agreement_around(prior: np.ndarray, added: np.ndarray, skull: np.ndarray) -> Optional[float]:
    """How well a prior's bone reproduces the skull's own bone around the bone it adds (``added``, as
    ``filled_by`` adds it): their DSC in the ring ``RING_VOXELS`` deep around that bone (not in it).
    None when it adds none."""
    box = find_foreground_box(added, RING_VOXELS + 1)
    if box is None:
        return None
    added, prior, skull = added[box], prior[box], skull[box]
    ring = ndimage.binary_dilation(added, iterations=RING_VOXELS) & ~ndimage.binary_dilation(added)
    return dice(prior & ring, skull & ring)


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
                    template: Optional[ShapeTemplate] = None, shape_model: Optional[ShapeModel] = None) -> Priors:
    """Both priors for a skull on an isotropic grid (see the module docstring)."""
    mask = np.asarray(defective) != 0
    plane = estimate_symmetry(mask, spacing)
    fit = fit_shape(mask, spacing, template, rotation)
    mirror = mirrored_mask(mask, spacing, plane) if plane is not None else np.zeros_like(mask)
    fitted = fitted_share(mask.shape, spacing, fit, template) if fit is not None else np.zeros(mask.shape, np.float32)
    bone, bone_report = _fitted_bone(mask, spacing, fit, fitted, shape_model, mirror, plane)
    return Priors(mirror, fitted, plane, fit, bone, bone_report)


def _fitted_bone(mask: np.ndarray, spacing: float, fit: Optional[ShapeFit], fitted: np.ndarray,
                 shape_model: Optional[ShapeModel], mirror: np.ndarray,
                 plane: Optional[SymmetryPlane]) -> Tuple[Optional[np.ndarray], Optional[dict]]:
    """The bone the fitted prior fills the opening with, and its report: the mean skull's or the shape
    model's (fitted to the skull), each first laid onto the skull around the bone it adds
    (``rim_match``), whichever then reproduces the skull's bone around that bone better
    (``agreement_around``; on validation cases 045-049 that choice beat either alone,
    results/notes/experiments.md); where the mean skull adds none, the shape model's only where it lies
    in a hole and meets the rim well (``_shape_model_alone``), else none. An opening on one side of the
    mirror plane (``_on_one_side``) also weighs the mirror image, laid on the same way: there the
    patient's healthy side is what surgeons use. (None, None) without a fit."""
    if fit is None:
        return None, None
    candidates = {"mean skull": fitted >= FITTED_SITE}
    report: dict = {}
    shape_model = shape_model or load_shape_model()
    if shape_model is not None and not fit.at_scale_limit:
        result = shape_model.fit(mask, spacing, fit.matrix, fit.shift)
        candidates["shape model"] = result.bone(mask.shape, spacing, fit.matrix, fit.shift)
        report["shape_model_residual_mm"] = round(result.residual_mm, 2)
    added, agreements = {}, {}
    for name, bone in candidates.items():
        candidates[name], added[name] = _laid_onto_rim(bone, mask, spacing)
        agreements[name] = agreement_around(candidates[name], added[name], mask)
    if agreements["mean skull"] is None and not (
            "shape model" in added and _shape_model_alone(agreements["shape model"], added["shape model"], mask, spacing)):
        return candidates["mean skull"], {**report, "from": "mean skull", "agreement_around": _rounded(agreements)}
    chosen = max(candidates, key=lambda name: -1.0 if agreements[name] is None else agreements[name])
    if plane is not None and _on_one_side(added[chosen], spacing, plane):
        candidates["mirror image"], added["mirror image"] = _laid_onto_rim(mirror, mask, spacing)
        agreements["mirror image"] = agreement_around(candidates["mirror image"], added["mirror image"], mask)
        if (agreements["mirror image"] or -1.0) > agreements[chosen]:
            chosen = "mirror image"
    return candidates[chosen], {**report, "from": chosen, "agreement_around": _rounded(agreements)}


def _shape_model_alone(agreement: Optional[float], added: np.ndarray, mask: np.ndarray, spacing: float) -> bool:
    """Where the mean skull sees no opening, whether the shape model's does (``agreement``: its rim
    agreement; ``added``: the bone it adds): only where that bone lies in a hole of the skull
    (``postprocess.plugs_a_hole``) and meets the rim well (``SHAPE_MODEL_ALONE_AGREEMENT``). On the
    complete skulls 048 and 054 its fit reaches past the bone (a share 0.19 and 0.50 of it in a hole,
    rim agreement 0.62 and 0.55); 040's small craniotomy, which the mean skull misses, 0.90 and 0.91."""
    return (agreement is not None and agreement >= SHAPE_MODEL_ALONE_AGREEMENT
            and plugs_a_hole(np.argwhere(added), mask, (spacing,) * 3))


def _laid_onto_rim(bone: np.ndarray, mask: np.ndarray, spacing: float) -> Tuple[np.ndarray, np.ndarray]:
    """A candidate's bone laid onto the skull around the bone it adds (``rim_match``), and the bone it
    then adds (``filled_by``), which its rim agreement and the one-side check judge."""
    matched = rim_matched(bone, filled_by(bone, mask, spacing) & ~mask, mask, spacing)
    return matched, filled_by(matched, mask, spacing) & ~mask


def _on_one_side(added: np.ndarray, spacing: float, plane: SymmetryPlane) -> bool:
    """Whether bone added to an opening lies on one side of the mirror plane (``MIRROR_ONE_SIDE`` of it):
    a lateral opening, which the mirror image may fill. At the brow and across the midline the mirror
    wins the rim agreement but is a poor guide (on 045-049 fronto-orbital 0.717 -> 0.441 when it could
    win everywhere; results/notes/experiments.md)."""
    if not added.any():
        return False
    signed_mm = np.argwhere(added) * spacing @ plane.normal - plane.offset_mm
    return max(float((signed_mm > 0).mean()), float((signed_mm < 0).mean())) >= MIRROR_ONE_SIDE


def _rounded(agreements: dict) -> dict:
    """The candidates' rim agreements as ``report.json`` gives them."""
    return {name: None if value is None else round(value, 3) for name, value in agreements.items()}


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
