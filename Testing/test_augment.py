"""Training draws: a case becomes a new patient on the model grid (pose, defect, bone), and what a
different skull source changes reaches the target while what a poor scan adds reaches only the input."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from conftest import oblique_direction, shell_skull
from SparseImplantLib.data.defects import DEFECT_KINDS
from SparseImplantLib.pipeline.volume import Volume
from SparseImplantLib.train.augment import OWN_DEFECT, Augmentation, Pose, draw, posed_grid, rotation_matrix, sample_posed
from SparseImplantLib.train.samples import make_source

STEADY = Augmentation.preset("none")


@pytest.fixture(scope="module")
def source():
    """A head-sized shell (about 110 mm across) with a cap missing, stored obliquely at 1.5 mm."""
    defective, implant = shell_skull(shape=(80, 80, 70), radius=36.0, thickness=4.0)
    geometry = dict(spacing=(1.5, 1.5, 1.5), origin=(-60.0, -60.0, 0.0), direction=oblique_direction(10.0))
    return make_source("000", Volume(defective, **geometry), Volume(defective | implant, **geometry), [2.0] * 3)


def test_the_own_defect_unaugmented_is_the_case_on_the_model_grid(source):
    pair = draw(source, 2.0, 10.0, np.random.default_rng(0), STEADY)
    assert pair.kind == OWN_DEFECT and pair.defective.shape == pair.complete.shape
    assert not np.any(pair.defective & ~pair.complete)
    implant = np.count_nonzero(pair.complete & ~pair.defective) * 8.0 / 1000  # ml at 2 mm
    assert 10.0 < implant < 40.0  # the cap: a sixth of a 4 mm shell of radius 54 mm


@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_every_defect_kind_can_be_drawn(source, kind):
    pair = draw(source, 2.0, 10.0, np.random.default_rng(1), Augmentation(), kind)
    assert pair.kind == kind and (pair.complete & ~pair.defective).any()


def test_a_turn_moves_the_skull_as_asked(source):
    """Yaw by 90 degrees about S turns the posterior (+P) into the right (-L)."""
    pose = Pose(rotation_matrix(0.0, 0.0, 90.0), np.zeros(3))
    marker = source.complete.copy()
    marker[:, : marker.shape[1] // 2] = 0  # keep only the posterior half of the skull
    moved = source.__class__(source.case, marker, marker, source.spacing, source.origin)
    grid = posed_grid(source, pose, 2.0, 10.0)
    values = sample_posed(moved.complete, moved, pose, grid)
    points = np.argwhere(values >= 0.5) * 2.0 + grid.origin
    skull = np.argwhere(sample_posed(source.complete, source, pose, grid) >= 0.5) * 2.0 + grid.origin
    offset = points.mean(axis=0) - skull.mean(axis=0)
    assert offset[0] < -10.0 and abs(offset[1]) < 5.0


def test_thicker_and_thinner_bone(source):
    counts = {}
    for threshold in (0.3, 0.5, 0.7):
        fixed = replace(STEADY, thickness=1.0, threshold=(threshold, threshold))
        counts[threshold] = np.count_nonzero(draw(source, 2.0, 10.0, np.random.default_rng(0), fixed).complete)
    assert counts[0.3] > 1.1 * counts[0.5] and counts[0.7] < 0.9 * counts[0.5]


def test_source_changes_reach_the_target_and_scan_noise_only_the_input(source):
    margin = 30.0  # the cap above the defective skull lies inside the crop
    plain = draw(source, 2.0, margin, np.random.default_rng(5), STEADY)
    cut = draw(source, 2.0, margin, np.random.default_rng(5), replace(STEADY, field_of_view=1.0))
    assert np.count_nonzero(cut.complete) < np.count_nonzero(plain.complete)
    assert not np.any(cut.defective & ~cut.complete)
    for noisy in (replace(STEADY, speckle=1.0), replace(STEADY, thick_slices=1.0)):
        pair = draw(source, 2.0, margin, np.random.default_rng(5), noisy)
        assert np.count_nonzero(pair.complete) == np.count_nonzero(plain.complete)  # the whole skull is in the crop
        assert np.count_nonzero(pair.defective) != np.count_nonzero(plain.defective)
