"""Implant extraction: rims, stray blobs and holes are cleaned, the defect is filled."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from conftest import shell_skull
from SparseImplantLib.metrics import dice
from SparseImplantLib.pipeline.postprocess import ball, extract_implant, without_bone_layers


def test_ball_is_anisotropic():
    element = ball(2.0, (1.0, 1.0, 2.0))
    assert element.shape == (5, 5, 3)
    assert element[2, 2, 1] and not element[0, 0, 0]


def test_implant_is_cleaned_defect():
    defective, implant = shell_skull(shape=(56, 56, 48), radius=20.0, thickness=4.0)
    completed = (defective | implant).astype(bool)
    # A one-voxel rim all around the outside of the skull: what misaligned resampling leaves behind.
    grown = np.zeros_like(completed)
    grown[1:-1, 1:-1, 1:-1] = completed[:-2, 1:-1, 1:-1] | completed[2:, 1:-1, 1:-1]
    noisy = completed | grown
    noisy[2:6, 2:6, 2:6] = True  # a stray blob far from the defect
    interior = np.argwhere(ndimage.binary_erosion(implant, np.ones((3, 3, 3), bool)))
    hole = tuple(interior[len(interior) // 2])
    noisy[hole] = False  # a hole inside the implant
    result = extract_implant(noisy, defective, spacing=(1.0, 1.0, 1.0))
    assert not result[2:6, 2:6, 2:6].any()
    assert result[hole]
    assert not (result & defective.astype(bool)).any()
    assert dice(result, implant) > 0.9


def test_nothing_added_gives_empty_implant():
    defective, _ = shell_skull(defect=False)
    assert not extract_implant(defective, defective, (1.0, 1.0, 1.0)).any()


def bone_layer(defective, azimuth_deg, thickness=2, half_width=10):
    """A patch ``thickness`` voxels thick lying on the outside of ``shell_skull``'s side around
    ``azimuth_deg``: bone added on bone, as a network thickens a skull."""
    shape = np.asarray(defective.shape)
    grid = np.indices(defective.shape).astype(float)
    centre = (shape - 1) / 2
    offset = grid - centre[:, None, None, None]
    distance = np.sqrt((offset ** 2).sum(axis=0))
    radius = distance[defective.astype(bool)].max()
    direction = np.array([np.cos(np.radians(azimuth_deg)), np.sin(np.radians(azimuth_deg)), 0.0])
    along = np.tensordot(direction, offset, axes=1)
    across = np.sqrt(np.maximum(distance ** 2 - along ** 2, 0))
    return (distance > radius) & (distance <= radius + thickness) & (along > 0) & (across <= half_width)


def test_layers_on_the_bone_are_no_implant():
    """Bone added onto a complete skull fills no opening: no implant. Beside an opening, the plug
    that fills it stays and the layers elsewhere go."""
    complete, _ = shell_skull(shape=(56, 56, 48), radius=20.0, thickness=4.0, defect=False)
    layers = bone_layer(complete, 0, thickness=1, half_width=8) | bone_layer(complete, 120, half_width=10) | bone_layer(complete, 240, half_width=9)
    assert not extract_implant(complete.astype(bool) | layers, complete, (1.0, 1.0, 1.0)).any()
    defective, implant = shell_skull(shape=(56, 56, 48), radius=20.0, thickness=4.0)
    result = extract_implant((defective | implant).astype(bool) | layers, defective, (1.0, 1.0, 1.0))
    assert not (result & layers).any()
    assert dice(result, implant) > 0.95


@pytest.mark.parametrize("radius", [7.0, 3.0])
def test_a_small_plug_fills_its_opening(radius):
    """A small opening's plug meets the skull over a larger share of its surface than a large one's
    (radius 7: 0.44, as a 2 ml craniotomy's on a CT grid; radius 3: 0.77, as a 2 cm craniotomy's on
    the 2 mm model grid, or its edges restored on a CT grid), and still counts as filling it: the line
    from the skull's centre through it meets no bone (0.86 of its voxels here)."""
    complete, _ = shell_skull(shape=(56, 56, 48), radius=20.0, thickness=4.0, defect=False)
    grid = np.indices(complete.shape).astype(float)
    plug = complete.astype(bool) & (grid[0] > 27.5) & (np.hypot(grid[1] - 27.5, grid[2] - 23.5) <= radius)
    kept = without_bone_layers(plug.copy(), complete.astype(bool) & ~plug, (1.0, 1.0, 1.0))
    assert np.array_equal(kept, plug)


def whole_box_implant(completed, defective, spacing, opening_radius_mm=1.0, min_fraction_of_largest=0.1):
    """The clean-up done plainly over the difference's whole bounding box: what extract_implant must equal."""
    from SparseImplantLib.pipeline.volume import foreground_box

    difference = completed.astype(bool) & ~defective.astype(bool)
    structure = ball(opening_radius_mm, spacing)
    box = foreground_box(difference, max(structure.shape) + 2)
    opened = ndimage.binary_opening(difference[box], structure=structure)
    labels, count = ndimage.label(opened, structure=np.ones((3, 3, 3), bool))
    border = ndimage.binary_dilation(defective[box].astype(bool), structure=np.ones((3, 3, 3), bool)) & opened
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    touching = np.unique(labels[border])
    touching = touching[touching > 0]
    implant = np.zeros_like(difference)
    if touching.size == 0:
        return implant
    keep = touching[sizes[touching] >= min_fraction_of_largest * sizes[touching].max()]
    restored = ndimage.binary_dilation(np.isin(labels, keep), iterations=max(structure.shape) // 2 + 1,
                                       mask=difference[box])
    implant[box] = ndimage.binary_fill_holes(restored) & ~defective[box].astype(bool)
    return without_bone_layers(implant, defective.astype(bool), spacing)


def with_blobs(defective, blobs):
    """``shell_skull``'s bone with cubes (edge in voxels, azimuth in degrees, gap in voxels, spike in
    voxels) on the outside of its side: touching the bone at gap 0; a spike is a one-voxel line out of
    the cube's outer face, thinner than the opening, so only the restoring brings part of it back."""
    added = np.zeros(defective.shape, dtype=bool)
    centre = (np.asarray(defective.shape) - 1) / 2
    for edge, azimuth, gap, spike in blobs:
        direction = np.array([np.cos(np.radians(azimuth)), np.sin(np.radians(azimuth)), -0.2])
        direction /= np.linalg.norm(direction)
        corner = np.rint(centre + direction * (24.0 + edge / 2 + gap) - edge / 2).astype(int)
        assert np.all(corner >= 0) and np.all(corner + edge <= defective.shape)
        added[tuple(slice(c, c + edge) for c in corner)] = True
        axis = int(np.argmax(np.abs(direction)))
        outwards = int(np.sign(direction[axis]))
        start = corner + edge // 2
        start[axis] = corner[axis] + (edge if outwards > 0 else -1)
        for step in range(spike):
            point = start.copy()
            point[axis] += outwards * step
            added[tuple(point)] = True
    return added & ~defective.astype(bool)


@pytest.mark.parametrize("fraction, spacing", [(0.02, (1.0, 1.0, 1.0)), (0.06, (1.0, 1.0, 1.0)),
                                               (0.5, (1.0, 1.0, 1.0)), (0.02, (0.5, 0.45, 1.1))])
def test_restricted_clean_up_equals_whole_box(fraction, spacing):
    """The restricted clean-up gives exactly the whole-box result: a one-voxel rim all round, pieces
    touching the bone on either side of the size bound, one apart from it, a hole; C- and
    Fortran-ordered, cubic and anisotropic voxels."""
    defective, implant = shell_skull(shape=(70, 64, 52), radius=24.0, thickness=4.0)
    completed = (defective | implant).astype(bool)
    rim = np.zeros_like(completed)
    rim[1:-1, 1:-1, 1:-1] = completed[:-2, 1:-1, 1:-1] | completed[2:, 1:-1, 1:-1]
    completed |= rim | with_blobs(defective, [(4, 0, 0, 0), (6, 90, 0, 3), (8, 180, 0, 0), (6, 300, 3, 0)])
    interior = np.argwhere(ndimage.binary_erosion(implant, np.ones((3, 3, 3), bool)))
    completed[tuple(interior[len(interior) // 2])] = False  # a hole
    expected = whole_box_implant(completed, defective, spacing, min_fraction_of_largest=fraction)
    for order in ("C", "F"):
        result = extract_implant(np.asarray(completed, order=order), np.asarray(defective, order=order), spacing,
                                 min_fraction_of_largest=fraction)
        assert np.array_equal(result, expected)
