"""Priors: the symmetry plane and the mean-skull fit are found despite an opening, and feed the network."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial.transform import Rotation

from SparseImplantLib.metrics import dice
from SparseImplantLib.models.completion import CompletionNet
from SparseImplantLib.pipeline.mirror import estimate_symmetry, mirrored_mask
from SparseImplantLib.pipeline.priors import (
    FITTED_SITE,
    Priors,
    build_shape_template,
    channel_input,
    estimate_priors,
    fit_points,
)
from SparseImplantLib.pipeline.superres import batch_input
from SparseImplantLib.sparse import from_mask, to_mask

SPACING = 2.0
SHAPE = (90, 100, 80)
CENTRE_MM = np.array(SHAPE) * SPACING / 2


def shell(semi_axes=(60.0, 75.0, 55.0), turn: np.ndarray = np.eye(3), shift=(0.0, 0.0, 0.0), thickness=5.0) -> np.ndarray:
    """An ellipsoidal shell (a skull's vault, roughly) on the test grid, turned and shifted (mm)."""
    points = np.indices(SHAPE).reshape(3, -1).T * SPACING - CENTRE_MM - np.asarray(shift)
    local = points @ turn  # the shell's own axes
    radius = np.sqrt(np.sum((local / np.asarray(semi_axes)) ** 2, axis=1)) * min(semi_axes)
    return ((radius <= min(semi_axes)) & (radius > min(semi_axes) - thickness)).reshape(SHAPE)


def opening(mask: np.ndarray, towards_mm, radius_mm: float) -> np.ndarray:
    """``mask`` without the bone within ``radius_mm`` of the point ``towards_mm`` (from the grid's centre)."""
    points = np.indices(SHAPE).reshape(3, -1).T * SPACING - CENTRE_MM
    near = np.linalg.norm(points - np.asarray(towards_mm), axis=1).reshape(SHAPE) < radius_mm
    return mask & ~near


def shells_template():
    """A mean skull made of three shells, 5 % smaller and larger than ``shell()``'s."""
    clouds = [np.argwhere(shell(semi_axes=(60.0 * s, 75.0 * s, 55.0 * s))) * SPACING for s in (0.95, 1.0, 1.05)]
    return build_shape_template(clouds, SPACING)


def yaw(degrees: float) -> np.ndarray:
    return Rotation.from_euler("z", degrees, degrees=True).as_matrix()


def test_symmetry_plane_ignores_a_lateral_opening_and_the_mirror_fills_it():
    turn = yaw(12.0)
    complete = shell(turn=turn, shift=(4.0, 0.0, 0.0))
    defective = opening(complete, turn @ np.array([58.0, 10.0, 20.0]) + [4.0, 0.0, 0.0], 35.0)
    plane = estimate_symmetry(defective, SPACING)
    true_normal = turn @ np.array([1.0, 0.0, 0.0])
    assert np.degrees(np.arccos(abs(plane.normal @ true_normal))) < 1.5
    true_offset = true_normal @ (CENTRE_MM + [4.0, 0.0, 0.0])
    assert abs(np.sign(plane.normal @ true_normal) * plane.offset_mm - true_offset) < 1.5
    assert plane.residual_mm < 1.0 and 12.0 - 2 < plane.tilt_deg < 12.0 + 2

    mirror = mirrored_mask(defective, SPACING, plane)
    missing = complete & ~defective
    assert dice(mirror & missing, missing) > 0.8  # the healthy side, mirrored, fills the opening
    baseline = Priors(mirror, np.zeros(SHAPE, np.float32), plane, None).completed(defective, "mirror", SPACING)
    assert dice(baseline & missing, missing) > 0.8 and dice(baseline, complete) > 0.9
    # A mirror image lying one voxel off an intact skull adds no bone.
    off = Priors(np.roll(complete, 1, axis=0), np.zeros(SHAPE, np.float32), plane, None)
    assert np.array_equal(off.completed(complete, "mirror", SPACING), complete)


def test_mean_shape_fit_recovers_scale_and_turn_despite_an_opening():
    template = shells_template()
    turn = Rotation.from_euler("xyz", [6.0, -4.0, 10.0], degrees=True).as_matrix()
    complete = shell(semi_axes=(66.0, 71.0, 55.0), turn=turn, shift=(6.0, -4.0, 3.0))
    defective = opening(complete, turn @ np.array([0.0, -30.0, 50.0]), 40.0)  # across the midline, on top
    fit = fit_points(np.argwhere(defective) * SPACING, template)
    assert fit.residual_mm < 1.0
    assert np.allclose(np.sort(fit.scales), np.sort([66 / 60, 71 / 75, 1.0]), atol=0.04)

    from SparseImplantLib.pipeline.priors import fitted_share

    fitted = fitted_share(SHAPE, SPACING, fit, template) >= FITTED_SITE
    missing = complete & ~defective
    assert dice(fitted & missing, missing) > 0.6  # the mean shape, laid on, covers the opening


def test_channel_input_is_the_union_of_skull_and_priors():
    skull = np.zeros((6, 6, 6), bool)
    skull[1, 1, 1] = True
    mirror = np.zeros_like(skull)
    mirror[4, 1, 1] = True
    fitted = np.zeros(skull.shape, np.float32)
    fitted[1, 1, 1], fitted[2, 2, 2] = 0.9, 0.6
    voxels, features = channel_input(skull, Priors(mirror, fitted, None, None))
    rows = {tuple(v): tuple(f) for v, f in zip(voxels, features)}
    assert rows == {(1, 1, 1): (1.0, 0.0, pytest.approx(0.9)), (2, 2, 2): (0.0, 0.0, pytest.approx(0.6)),
                    (4, 1, 1): (0.0, 1.0, 0.0)}
    voxels, features = channel_input(skull, None)
    assert voxels.tolist() == [[1, 1, 1]] and features.tolist() == [[1.0]]


@torch.no_grad()
def test_widened_network_starts_from_the_skull_channel_behaviour():
    from SparseImplantLib.train.loop import widen_input

    torch.manual_seed(3)
    network = CompletionNet([4, 4, 8, 8, 8, 8, 8]).eval()
    for module in network.modules():  # non-trivial batch-norm statistics, as after training
        if hasattr(module, "running_mean"):
            module.running_mean.uniform_(-0.2, 0.2)
    wider = widen_input(network, 3).eval()
    skull = shell()[20:50, 20:50, 20:50]
    rng = np.random.default_rng(0)
    priors = Priors(rng.random(skull.shape) < 0.3, rng.random(skull.shape).astype(np.float32), None, None)
    voxels, features = channel_input(skull, priors)
    on_skull = np.argwhere(skull)
    features = features[np.isin(np.ravel_multi_index(voxels.T, skull.shape), np.ravel_multi_index(on_skull.T, skull.shape))]
    # On the skull's own sites the prior channels, whatever their values, change nothing yet.
    widened = wider(batch_input([(on_skull, features)], torch.device("cpu"))).output
    original = network(from_mask(skull)).output
    assert np.array_equal(to_mask(widened, skull.shape), to_mask(original, skull.shape))


def egg(back_mm: float, thickness: float = 5.0) -> np.ndarray:
    """A shell longer behind (+P, ``back_mm``) than in front (75 mm): a shape no per-axis scaling of
    another egg gives."""
    points = np.indices(SHAPE).reshape(3, -1).T * SPACING - CENTRE_MM
    semi = np.stack([np.full(len(points), 60.0), np.where(points[:, 1] > 0, back_mm, 75.0), np.full(len(points), 55.0)], 1)
    radius = np.sqrt(np.sum((points / semi) ** 2, axis=1)) * 55.0
    return ((radius <= 55.0) & (radius > 55.0 - thickness)).reshape(SHAPE)


def test_the_shape_model_fills_an_opening_where_the_skull_differs_from_the_mean_in_shape():
    """Training eggs differ in how far they reach behind; the mean egg, scaled to a new egg's size,
    misses the back of it, the shape model fitted to the rest of the egg fills the opening there."""
    from SparseImplantLib.pipeline.priors import fitted_share
    from SparseImplantLib.pipeline.shape_model import ShapeModel, distance_in_mean_frame

    training = [egg(back) for back in (70.0, 76.0, 82.0, 88.0, 94.0)]
    clouds = [np.argwhere(mask) * SPACING for mask in training]
    template = build_shape_template(clouds, SPACING)
    offsets = (np.indices(template.fraction.shape).reshape(3, -1).T - template.centre) * SPACING
    fields = []
    for mask, cloud in zip(training, clouds):
        fit = fit_points(cloud, template)
        fields.append(distance_in_mean_frame(mask, SPACING, np.zeros(3), fit.matrix, fit.shift, offsets, 15.0)
                      .reshape(template.fraction.shape))
    model = ShapeModel.build(fields, template.centre, SPACING, 15.0)

    complete = egg(91.0)
    defective = opening(complete, [0.0, 85.0, 10.0], 35.0)  # at the back, where the eggs differ
    missing = complete & ~defective
    fit = fit_points(np.argwhere(defective) * SPACING, template)
    shaped = model.fit(defective, SPACING, fit.matrix, fit.shift, modes=4)
    assert shaped.residual_mm < 1.0
    by_model = shaped.bone(SHAPE, SPACING, fit.matrix, fit.shift)
    by_mean = fitted_share(SHAPE, SPACING, fit, template) >= FITTED_SITE
    model_dsc, mean_dsc = (dice(Priors(np.zeros(SHAPE, bool), bone.astype(np.float32), None, fit).added(defective, "fitted", SPACING),
                                missing) for bone in (by_model, by_mean))
    assert model_dsc > 0.75 and model_dsc > mean_dsc + 0.05, (model_dsc, mean_dsc)  # 0.78 and 0.70 here

    # The priors take the shape model's bone where it matches the egg around the bone it adds better.
    priors = estimate_priors(defective, SPACING, template=template, shape_model=model)
    assert priors.fitted_bone_report["from"] == "shape model"
    agreement = priors.fitted_bone_report["agreement_around"]
    assert agreement["shape model"] > agreement["mean skull"]
    assert dice(priors.added(defective, "fitted", SPACING), missing) > mean_dsc + 0.05


def test_a_fitting_prior_fills_the_opening_to_its_rim():
    """The opening that drops a prior's layers on the bone also shaves the pieces it keeps, where they
    meet the rim: they get that voxel back (0.978 -> 0.999 here), a plug touching its rim all round
    included."""
    from SparseImplantLib.pipeline.priors import filled_by

    complete = shell(thickness=6.0)
    defective = opening(complete, [0.0, -50.0, 40.0], 25.0)
    missing = complete & ~defective
    added = filled_by(complete, defective, SPACING) & ~defective
    assert not (added & ~missing).any() and dice(added, missing) > 0.995
    thick = shell(thickness=8.0)
    plug_hole = opening(thick, [0.0, -50.0, 40.0], 12.0)
    plug = filled_by(thick, plug_hole, SPACING) & ~plug_hole
    assert dice(plug, thick & ~plug_hole) > 0.95


def test_a_small_craniotomy_plug_is_kept_though_it_touches_bone_all_round():
    """A 16 mm hole in a 5 mm skull: the prior's plug has most of its surface next to the rim, as a
    layer on the bone has, but the skull's radius through it meets no bone, so it fills an opening
    (SkullFix 052's 2 cm craniotomy: grid DSC 0.00 -> 0.95). A layer on the skull still adds nothing."""
    from SparseImplantLib.pipeline.priors import filled_by

    complete = shell(thickness=5.0)
    defective = opening(complete, [0.0, -50.0, 40.0], 8.0)
    missing = complete & ~defective
    assert dice(filled_by(complete, defective, SPACING) & ~defective, missing) > 0.95  # 0.99 here; 0.00 before
    layer = shell(semi_axes=(62.0, 77.0, 57.0), thickness=5.0)
    assert not (filled_by(layer | complete, complete, SPACING) & ~complete).any()


def test_rim_match_lays_a_fitted_skull_that_lies_off_onto_the_rim():
    """A prior a little too large and shifted (as a mean skull fitted to the whole skull can lie at the
    opening) adds bone beside the true opening; laid onto the skull around the opening, it fills it."""
    from SparseImplantLib.pipeline.priors import filled_by
    from SparseImplantLib.pipeline.rim_match import REACH_VOXELS, rim_matched

    complete = shell()
    defective = opening(complete, [0.0, -50.0, 40.0], 30.0)  # front-top
    missing = complete & ~defective
    off = shell(semi_axes=(62.0, 78.0, 57.0), shift=(0.0, -2.0, 1.0))
    added = filled_by(off, defective, SPACING) & ~defective
    matched = rim_matched(off, added, defective, SPACING)
    after = filled_by(matched, defective, SPACING) & ~defective
    before_dsc, after_dsc = dice(added, missing), dice(after, missing)
    assert after_dsc > 0.85 and after_dsc > before_dsc + 0.2, (before_dsc, after_dsc)  # 0.93 and 0.14 here
    # Far from the opening the prior is left as it was; a prior that already fits stays put.
    far = ~ndimage.binary_dilation(added, iterations=REACH_VOXELS)
    assert np.array_equal(matched & far, off & far)
    fitting = filled_by(complete, defective, SPACING) & ~defective
    assert dice(filled_by(rim_matched(complete, fitting, defective, SPACING), defective, SPACING) & ~defective, missing) > 0.95


def test_the_shape_model_finds_no_opening_the_mean_skull_does_not_see():
    """On two complete SkullFix skulls (048, 054) the shape model's fit reaches past the bone and 'adds'
    5 and 23 ml where the mean skull adds none, which method auto would print as an implant. Where the
    mean skull sees no opening, the shape model's bone counts only if it lies in a hole of the skull:
    this one lies over the bone, though it meets the skull around it well (rim agreement 0.94)."""
    template = shells_template()
    complete = shell()
    points = np.indices(SHAPE).reshape(3, -1).T * SPACING - CENTRE_MM
    cap = (shell(semi_axes=(66.0, 81.0, 61.0)) & (points[:, 2] > 35.0).reshape(SHAPE)) & ~complete

    class ReachingFit:  # what ShapeModel.fit returns: a good residual, and bone beyond the skull's top
        residual_mm = 0.5

        def bone(self, shape, spacing, matrix, shift):
            return complete | cap

    class ReachingModel:
        def fit(self, mask, spacing, matrix, shift):
            return ReachingFit()

    priors = estimate_priors(complete, SPACING, template=template, shape_model=ReachingModel())
    assert priors.fitted_bone_report["from"] == "mean skull"
    assert not priors.added(complete, "fitted", SPACING).any()
    # Where the mean skull sees an opening, the shape model still competes for it.
    defective = opening(complete, [0.0, -50.0, 40.0], 30.0)
    assert estimate_priors(defective, SPACING, template=template, shape_model=ReachingModel()).added(defective, "fitted", SPACING).any()


def test_the_shape_model_fills_an_opening_the_mean_skull_misses_where_it_meets_the_rim():
    """A skull boxier than the mean skull, opened at the top: the mean skull lies inside the opening and
    sees none, while the shape model, which follows this skull, meets the bone around its plug (rim
    agreement 1.0 here; on SkullFix 040's small craniotomy 0.91, grid DSC 0.00 -> 0.90)."""
    points = np.indices(SHAPE).reshape(3, -1).T * SPACING - CENTRE_MM
    radius = (np.sum(np.abs(points / np.array([60.0, 75.0, 55.0])) ** 2.6, axis=1) ** (1 / 2.6) * 55.0).reshape(SHAPE)
    complete = (radius <= 55.0) & (radius > 50.0)

    class ExactShapeModel:  # the shape model's bone: this skull's own
        def fit(self, mask, spacing, matrix, shift):
            class Fitted:
                residual_mm = 0.5

                def bone(self, shape, spacing, matrix, shift):
                    return complete
            return Fitted()

    defective = opening(complete, [0.0, 0.0, 55.0], 12.0)
    priors = estimate_priors(defective, SPACING, template=shells_template(), shape_model=ExactShapeModel())
    assert priors.fitted_bone_report["agreement_around"]["mean skull"] is None
    assert priors.fitted_bone_report["from"] == "shape model"
    assert dice(priors.added(defective, "fitted", SPACING), complete & ~defective) > 0.95  # 0.98 here; 0.00 before


def test_a_lateral_opening_is_filled_by_the_mirror_image_where_it_meets_the_rim_better():
    """A skull boxier than the mean skull: the healthy side, mirrored, fills a lateral opening better
    than either fitted shape (0.93 here; the mean skull as fitted 0.27). An opening across the midline
    does not weigh the mirror image, which wins the rim agreement at the brow but is a poor guide there."""
    points = np.indices(SHAPE).reshape(3, -1).T * SPACING - CENTRE_MM
    semi_axes = np.array([60.0, 75.0, 55.0])
    radius = (np.sum(np.abs(points / semi_axes) ** 2.6, axis=1) ** (1 / 2.6) * 55.0).reshape(SHAPE)
    complete = (radius <= 55.0) & (radius > 50.0)

    class MeanShapeModel:  # the shape model's bone: the mean shell, as ShapeModel.fit gives it
        def fit(self, mask, spacing, matrix, shift):
            class Fitted:
                residual_mm = 0.5

                def bone(self, shape, spacing, matrix, shift):
                    return shell()
            return Fitted()

    template = shells_template()
    lateral = opening(complete, [55.0, 0.0, 10.0], 30.0)
    priors = estimate_priors(lateral, SPACING, template=template, shape_model=MeanShapeModel())
    report = priors.fitted_bone_report
    assert report["from"] == "mirror image"
    assert report["agreement_around"]["mirror image"] > max(report["agreement_around"]["mean skull"],
                                                           report["agreement_around"]["shape model"])
    by_mean = Priors(priors.mirror, priors.fitted, priors.plane, priors.fit).added(lateral, "fitted", SPACING)
    missing = complete & ~lateral
    assert dice(priors.added(lateral, "fitted", SPACING), missing) > max(0.9, dice(by_mean, missing) + 0.2)

    across = opening(complete, [0.0, -40.0, 40.0], 30.0)
    priors = estimate_priors(across, SPACING, template=template, shape_model=MeanShapeModel())
    assert "mirror image" not in priors.fitted_bone_report["agreement_around"]
