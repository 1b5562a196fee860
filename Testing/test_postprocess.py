"""Implant extraction: rims, stray blobs and holes are cleaned, the defect is filled."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from conftest import shell_skull
from SparseImplantLib.metrics import dice
from SparseImplantLib.postprocess import ball, extract_implant


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
