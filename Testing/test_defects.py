"""Synthetic defects: exact partition of the skull, reproducibility, sizes in mm and anatomical placement."""

from __future__ import annotations

import time

import numpy as np
import pytest

from conftest import oblique_direction, require_skullfix, shell_skull
from SparseImplantLib.data.defects import DEFECT_KINDS, BoxDefect, SphereDefect, cut_defect
from SparseImplantLib.errors import SparseImplantError
from SparseImplantLib.io import read_mask
from SparseImplantLib.volume import Volume


@pytest.fixture(scope="module")
def head() -> Volume:
    """A head-sized oblique shell (about 110 x 130 x 115 mm, 4-5 mm thick), open at the bottom."""
    complete, _ = shell_skull(shape=(96, 96, 80), radius=40.0, thickness=3.0, defect=False)
    return Volume(complete, spacing=(1.4, 1.6, 1.8), origin=(-60.0, -80.0, 30.0), direction=oblique_direction(15.0))


def lps_points(volume: Volume, mask: np.ndarray) -> np.ndarray:
    matrix = volume.index_to_lps()
    return np.argwhere(mask) @ matrix[:3, :3].T + matrix[:3, 3]


@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_defect_partitions_the_skull(head, kind):
    defective, implant = cut_defect(head, kind, seed=1)
    assert defective.same_geometry(head) and implant.same_geometry(head)
    assert defective.array.dtype == np.uint8 and implant.array.dtype == np.uint8
    assert not np.any(defective.array & implant.array)
    assert np.array_equal(defective.array | implant.array, head.array > 0)
    fraction = np.count_nonzero(implant.array) / np.count_nonzero(head.array)
    assert 0.02 <= fraction < 0.5


def test_same_seed_same_defect(head):
    first = cut_defect(head, "random", seed=7)[1].array
    assert np.array_equal(first, cut_defect(head, "random", seed=7)[1].array)
    assert np.array_equal(first, cut_defect(head, "random", seed=np.random.default_rng(7))[1].array)
    assert not np.array_equal(first, cut_defect(head, "random", seed=8)[1].array)


def test_box_defect_has_the_requested_size_in_mm(head):
    box = BoxDefect(width_mm=(50.0, 50.0), depth_mm=(40.0, 40.0), height_mm=(30.0, 30.0), tilt_deg=0.0)
    _, implant = cut_defect(head, "skullfix", seed=3, box=box)
    extent = np.ptp(lps_points(head, implant.array), axis=0)
    voxel = float(head.spacing.max())
    assert extent[0] == pytest.approx(50.0, abs=2 * voxel)  # left-right
    assert extent[1] == pytest.approx(40.0, abs=2 * voxel)  # anterior-posterior
    assert 15.0 < extent[2] <= 30.0  # reaches at most 30 mm down from the top


def test_sphere_defect_has_the_requested_size_in_mm(head):
    plain = SphereDefect(radius_mm=(20.0, 20.0), satellites=(0, 0), deformation_mm=0.0, centre_jitter_mm=0.0)
    _, implant = cut_defect(head, "random", seed=5, spheres=plain)
    extent = np.ptp(lps_points(head, implant.array), axis=0)
    assert extent.max() <= 40.0 + 2 * plain.grid_mm
    assert extent.max() >= 30.0  # a cap of the vault almost 40 mm across
    wild = SphereDefect(radius_mm=(20.0, 20.0), satellite_radius_mm=(8.0, 8.0), satellites=(4, 4), deformation_mm=4.0)
    _, implant = cut_defect(head, "random", seed=5, spheres=wild)
    reach = 20.0 + 8.0 + np.sqrt(3) * 4.0 + wild.grid_mm
    assert np.ptp(lps_points(head, implant.array), axis=0).max() <= 2 * reach


def _relative_centroid(volume: Volume, implant: Volume) -> np.ndarray:
    """Implant centroid as fractions (0..1) of the skull's LPS bounding box along L, P, S."""
    skull = lps_points(volume, volume.array > 0)
    low, high = skull.min(axis=0), skull.max(axis=0)
    return (lps_points(volume, implant.array > 0).mean(axis=0) - low) / (high - low)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_defects_lie_in_their_regions(head, seed):
    front = _relative_centroid(head, cut_defect(head, "frontoorbital", seed)[1])
    assert front[1] < 0.25 and 0.3 < front[0] < 0.7  # anterior, near the midline
    side = _relative_centroid(head, cut_defect(head, "parietotemporal", seed)[1])
    assert min(side[0], 1 - side[0]) < 0.2 and 0.25 < side[1] < 0.75  # lateral, mid A-P
    top = _relative_centroid(head, cut_defect(head, "bilateral", seed)[1])
    assert top[2] > 0.75 and 0.4 < top[0] < 0.6  # on top, across the midline
    back = _relative_centroid(head, cut_defect(head, "skullfix", seed)[1])
    assert back[1] > 0.5 and back[2] > 0.75  # posterior part of the vault


def test_bilateral_defect_crosses_the_midline(head):
    _, implant = cut_defect(head, "bilateral", seed=4)
    skull_l = lps_points(head, head.array > 0)[:, 0]
    midline = (skull_l.min() + skull_l.max()) / 2
    implant_l = lps_points(head, implant.array > 0)[:, 0]
    assert implant_l.min() < midline - 15.0 and implant_l.max() > midline + 15.0


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(kind="occipital"), "unknown defect kind"),
        (dict(kind="skullfix", min_implant_fraction=0.9, max_attempts=3), "no skullfix defect removing at least 90%"),
        (dict(kind="random", spheres=SphereDefect(radius_mm=(30.0, 20.0))), "runs backwards"),
    ],
)
def test_bad_requests(head, arguments, message):
    with pytest.raises(SparseImplantError, match=message):
        cut_defect(head, seed=0, **arguments)


def test_empty_skull_is_rejected(head):
    with pytest.raises(SparseImplantError, match="complete skull is empty"):
        cut_defect(head.with_array(np.zeros(head.shape, np.uint8)), "random")


@pytest.mark.slow
def test_real_skull_frontoorbital_defect():
    complete = read_mask(require_skullfix() / "complete_skull" / "050.nrrd")
    started = time.perf_counter()
    defective, implant = cut_defect(complete, "frontoorbital", seed=0)
    elapsed = time.perf_counter() - started
    assert elapsed < 15.0  # about 1-2 s on one core; a generous bound against slow regressions
    assert not np.any(defective.array & implant.array)
    assert np.array_equal(defective.array | implant.array, complete.array > 0)
    centroid = _relative_centroid(complete, implant)
    assert centroid[1] < 0.25  # anterior
    assert np.count_nonzero(implant.array) > 0.02 * np.count_nonzero(complete.array)
