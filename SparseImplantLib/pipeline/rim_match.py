"""Laying a fitted skull's bone onto the patient's skull around the opening, so the bone it adds meets the rim.

A fitted skull (the mean skull or the shape model, ``priors``) is fitted to the whole skull: around the
opening it can lie a few millimetres off, or curve a little more or less than this skull, and the bone
it adds then meets the rim with a step or leaves a gap. ``rim_matched`` moves it locally by the affine
map that best lays its surface onto the skull's surface within ``REACH_VOXELS`` of the bone it adds:
Gauss-Newton on the signed distances (the prior's signed distance, displaced by ``u``, should equal the
skull's), the opening itself left out, the worst-explained observations trimmed as in ``shape_model``.
On validation cases 045-049 this raised the fitted skull's implant DSC on the model grid from 0.775 to
0.803 (failures 6 to 2), and on 050-052 from 0.760 to 0.780 (results/notes/experiments.md, "Rim match").
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .shape_model import signed_distance_mm, trimmed_ridge_solve
from .volume import find_foreground_box

REACH_VOXELS = 20  # the skull around the added bone, this deep, is what the prior is laid onto
RIM_GAP_VOXELS = 2  # next to the added bone the skull's surface is the opening's cut face: left out
BAND_MM = 3.0  # observations: the voxels within this of the skull's surface
NEAR_PRIOR_MM = 6.0  # ... and of the prior's surface, where its distance still moves linearly with it
TRIM = 0.85  # each solve keeps the observations the previous one explained best, this share
ROUNDS = 3  # Gauss-Newton steps
RIDGE = 1.0  # damping of each step, per thousand observations
LEVER_MM = 10.0  # the linear part's columns are scaled to this distance so that the damping weighs both alike


def rim_matched(prior: np.ndarray, added: np.ndarray, skull: np.ndarray, spacing: float) -> np.ndarray:
    """``prior`` (bool bone on an isotropic grid of ``spacing`` mm) with its bone within ``REACH_VOXELS``
    of ``added`` (the bone it adds to ``skull``) moved by the local affine map that lays it best onto the
    skull there. ``prior`` itself where it adds nothing or too little of the skull lies around."""
    box = find_foreground_box(added, REACH_VOXELS + 3)
    if box is None:
        return prior
    near_added = ndimage.binary_dilation(added[box], iterations=REACH_VOXELS)
    skull_distance = signed_distance_mm(skull[box], spacing)
    observed = (near_added & (np.abs(skull_distance) <= BAND_MM)
                & ~ndimage.binary_dilation(added[box], iterations=RIM_GAP_VOXELS))
    points = np.argwhere(observed)
    if len(points) < 50:
        return prior
    prior_distance = signed_distance_mm(prior[box], spacing).astype(np.float32)
    gradient = np.stack(np.gradient(prior_distance, spacing), axis=0)
    centre = np.argwhere(added[box]).mean(axis=0)
    target = skull_distance[tuple(points.T)]
    affine = np.zeros(12)  # displacement u(x) = t + L (x - centre): t (mm), then L row by row (per LEVER_MM)
    for _ in range(ROUNDS):
        moved_back = points - _displacement(affine, points, centre, spacing) / spacing
        distance = ndimage.map_coordinates(prior_distance, moved_back.T, order=1, mode="nearest")
        slope = np.stack([ndimage.map_coordinates(g, moved_back.T, order=1, mode="nearest") for g in gradient], axis=1)
        lever = (points - centre) * spacing / LEVER_MM
        design = -np.concatenate([slope, (slope[:, :, None] * lever[:, None, :]).reshape(len(points), 9)], axis=1)
        usable = np.abs(distance) <= NEAR_PRIOR_MM
        if not usable.any():
            return prior
        step, _ = trimmed_ridge_solve(design, target - distance, np.eye(12) * RIDGE, 2, usable, TRIM)
        affine += step
    region = np.argwhere(near_added)
    moved_back = region - _displacement(affine, region, centre, spacing) / spacing
    matched = prior.copy()
    inside = matched[box]
    inside[tuple(region.T)] = ndimage.map_coordinates(prior_distance, moved_back.T, order=1, mode="nearest") <= 0
    return matched


def _displacement(affine: np.ndarray, points: np.ndarray, centre: np.ndarray, spacing: float) -> np.ndarray:
    """u (mm) at grid ``points`` for the 12 parameters of ``rim_matched``."""
    lever = (points - centre) * spacing / LEVER_MM
    return affine[:3] + lever @ affine[3:].reshape(3, 3).T
