"""Synthetic defects: exact partition of the skull, reproducibility, sizes in mm and anatomical placement."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import oblique_direction, require_skullfix, shell_skull
from SparseImplantLib.data.defects import DEFECT_KINDS, BoxDefect, CraniotomyDefect, SphereDefect, WedgeDefect, cut_defect
from SparseImplantLib.errors import SparseImplantError
from SparseImplantLib.pipeline.io import read_mask
from SparseImplantLib.pipeline.volume import Volume


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
    assert 0.002 <= fraction < 0.5


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
    defective, implant = cut_defect(complete, "frontoorbital", seed=0)
    assert not np.any(defective.array & implant.array)
    assert np.array_equal(defective.array | implant.array, complete.array > 0)
    centroid = _relative_centroid(complete, implant)
    assert centroid[1] < 0.25  # anterior
    assert np.count_nonzero(implant.array) > 0.02 * np.count_nonzero(complete.array)


def _directions(volume: Volume, implant: Volume) -> np.ndarray:
    """Unit vectors from the skull centre (as the generator defines it) to the implant's voxels."""
    skull = lps_points(volume, volume.array > 0)
    low, high = skull.min(axis=0), skull.max(axis=0)
    relative = lps_points(volume, implant.array > 0) - (low + np.array([0.5, 0.5, 0.4]) * (high - low))
    return relative / np.linalg.norm(relative, axis=1, keepdims=True)


def test_craniotomy_is_a_disc_of_the_requested_diameter_with_radial_walls(head):
    disc = CraniotomyDefect(diameter_mm=(50.0, 50.0), aspect=(1.0, 1.0), polygon_share=0.0, elevation_deg=(30.0, 30.0))
    _, implant = cut_defect(head, "craniotomy", seed=2, craniotomy=disc)
    directions = _directions(head, implant)
    axis = directions.mean(axis=0) / np.linalg.norm(directions.mean(axis=0))
    # Radial walls: every voxel lies within the cone the outline spans seen from the centre, inner bone
    # and outer bone alike; the cone's half angle is atan(25 mm / distance to the outer surface).
    outer = np.linalg.norm(lps_points(head, implant.array > 0) - lps_points(head, implant.array > 0).mean(axis=0), axis=1).max()
    half_angles = np.degrees(np.arccos(np.clip(directions @ axis, -1, 1)))
    assert half_angles.max() < 35.0 and outer < 35.0
    assert np.ptp(lps_points(head, implant.array > 0), axis=0).max() == pytest.approx(50.0, abs=10.0)


def test_craniotomies_reach_every_side_of_the_vault_and_every_size(head):
    centres = np.array([_directions(head, cut_defect(head, "craniotomy", seed)[1]).mean(axis=0) for seed in range(40)])
    assert centres[:, 0].min() < -0.5 and centres[:, 0].max() > 0.5  # both sides
    assert centres[:, 1].min() < -0.5 and centres[:, 1].max() > 0.5  # front and back
    assert centres[:, 2].min() < 0.2 and centres[:, 2].max() > 0.8  # low on the side to the vertex
    small = CraniotomyDefect(diameter_mm=(20.0, 20.0), elevation_deg=(60.0, 60.0))
    large = CraniotomyDefect(diameter_mm=(140.0, 140.0), elevation_deg=(60.0, 60.0))
    small_share = np.count_nonzero(cut_defect(head, "craniotomy", 3, craniotomy=small)[1].array) / np.count_nonzero(head.array)
    large_share = np.count_nonzero(cut_defect(head, "craniotomy", 3, craniotomy=large)[1].array) / np.count_nonzero(head.array)
    assert small_share < 0.01 and large_share > 0.08  # a burr-hole-sized opening and a hemicraniectomy


def test_wedge_is_a_sector_of_the_vault(head):
    wedge = WedgeDefect(azimuth_width_deg=(90.0, 90.0), lowest_elevation_deg=(20.0, 20.0))
    _, implant = cut_defect(head, "wedge", seed=4, wedge=wedge)
    directions = _directions(head, implant)
    azimuths = np.degrees(np.arctan2(directions[:, 1], directions[:, 0]))
    spread = min(np.ptp(azimuths), np.ptp(azimuths % 360.0))
    assert 80.0 < spread <= 90.5
    assert np.degrees(np.arcsin(directions[:, 2])).min() >= 19.5
