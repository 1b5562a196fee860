"""Implant = completed skull minus defective skull, cleaned up the way strong AutoImplant entries do.

The raw difference holds the implant plus a thin rim wherever the completed surface does not line up
voxel-for-voxel with the defective one. An opening separates the implant from rims thinner than the
structuring element, connected components that do not touch the defect border are dropped, the kept
pieces get back the edge voxels the opening shaved off, and holes are filled, so the result is one
solid piece that reaches the defect border. Last, pieces that lie on the skull instead of filling an
opening in it go (``without_bone_layers``): a network that fills little of an opening still thickens
the bone here and there, and those layers are no implant.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from .volume import Box, find_foreground_box, in_blocks

BLOCK = 8  # voxels per block edge when grouping the opened difference into separately labelled regions
# A piece that fills an opening meets the skull along its rim only; a layer on the bone touches it over
# a whole face. A piece with more than this share of its surface voxels next to bone is a layer: true
# implants have 0.09-0.16 (SkullFix, 11 cases of 000-059), 0.09-0.23 (synthetic defects of every kind),
# small craniotomies (2-4 ml) 0.39-0.45,
# the network's layers on complete skulls 0.74-1.0 (results/notes/experiments.md, "Stray bone").
ON_BONE_SHARE = 0.6
# A small plug touches its rim all round, so its share can pass ON_BONE_SHARE on a coarse grid (a 2 cm
# craniotomy's on the 2 mm model grid 0.72; the one-voxel restore of the edges passes it on a CT grid).
# What tells it from a layer: the line from the skull's centre through a plug meets no bone within a
# skull's thickness either way (it fills a hole), through a layer it meets the bone the layer lies on.
# A piece with PLUG_CLEAR_SHARE of its voxels so is a plug. On the model grid, the mean skull's pieces
# with a share on bone over ON_BONE_SHARE: 052's plug 0.85 (053's 0.52, 041's 0.36, partly beside the
# opening); the other pieces in small craniotomies of 040-059 at most 0.52; its layers on 20 complete
# skulls at most 0.48, but for one piece of 0.3 ml (0.76) that the size rule drops
# (results/notes/experiments.md, "Plugs").
PLUG_CLEAR_SHARE = 0.7
PLUG_REACH_MM = 8.0
PLUG_SAMPLE = 4000  # a piece's voxels judged, an even subset
CUBE = np.ones((3, 3, 3), dtype=bool)


def ball(radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    """Ellipsoidal structuring element of a physical radius on an anisotropic grid (at least 3 voxels wide)."""
    radii = np.maximum(1, np.round(radius_mm / np.asarray(spacing, dtype=float))).astype(int)
    grid = np.ogrid[tuple(slice(-r, r + 1) for r in radii)]
    return sum((g / r) ** 2 for g, r in zip(grid, radii)) <= 1.0


def extract_implant(
    completed: np.ndarray,
    defective: np.ndarray,
    spacing: Sequence[float],
    opening_radius_mm: float = 1.0,
    min_fraction_of_largest: float = 0.1,
) -> np.ndarray:
    """Boolean implant mask on the input grid.

    Components of the opened difference are kept when they touch the defective skull (grown by one
    voxel) and hold at least ``min_fraction_of_largest`` of the largest such component's voxels.

    The result is that of the opening, labelling, restoring and hole filling over the difference's
    whole bounding box, but only the region around the added bone is worked at full cost: the
    opening dilates from the few eroded voxels, components are labelled one group of occupied
    blocks at a time (largest first, stopping once no remaining group can reach the size bound), and
    the restoring and hole filling run in the box of the kept pieces.
    """
    completed = np.asarray(completed) != 0
    if completed.flags.f_contiguous and not completed.flags.c_contiguous:
        # ITK's volumes are i-fastest: the transposed view is C-ordered, which scipy walks fastest.
        return extract_implant(completed.T, np.asarray(defective).T, tuple(spacing)[::-1],
                               opening_radius_mm, min_fraction_of_largest).T
    defective = np.asarray(defective) != 0
    difference = completed & ~defective
    implant = np.zeros_like(difference)
    structure = ball(opening_radius_mm, spacing)
    margin = max(structure.shape) + 2
    box = find_foreground_box(difference, margin)
    if box is None:
        return implant
    added, bone = difference[box], defective[box]
    opened = _opening(added, structure)
    seeds = _kept_components(opened, bone, min_fraction_of_largest)
    if seeds is None:
        return implant
    # Give the kept pieces back what the opening shaved off their edges (where they meet the defect
    # border), but nothing of the rims further away.
    steps = max(structure.shape) // 2 + 1
    around = find_foreground_box(seeds, steps)
    restored = ndimage.binary_dilation(seeds[around], iterations=steps, mask=added[around])
    # Holes are background not connected to the outside, and fill_holes counts everything beyond
    # the array as outside: so everything beyond the restored pieces' box, as it is.
    pieces = find_foreground_box(restored)
    filled = ndimage.binary_fill_holes(restored[pieces])
    region = _within(box, _within(around, pieces))
    implant[region] = filled & ~defective[region]
    return without_bone_layers(implant, defective, spacing)


def without_bone_layers(implant: np.ndarray, defective: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """``implant`` without its 26-connected pieces that lie on the skull (more than ``ON_BONE_SHARE`` of
    their surface voxels next to ``defective`` bone) unless they plug a hole in it (``plugs_a_hole``):
    they thicken the bone, they fill no opening, so a complete skull gets no implant. Both boolean, same
    shape, on a grid of ``spacing`` (mm per axis); ``implant`` is changed in place."""
    box = find_foreground_box(implant, 2)
    if box is None:
        return implant
    pieces = implant[box]
    labels, count = ndimage.label(pieces, structure=CUBE)
    surface = pieces & ~ndimage.binary_erosion(pieces, structure=CUBE)
    near_bone = ndimage.binary_dilation(defective[box], structure=CUBE)
    surface_voxels = np.bincount(labels[surface], minlength=count + 1)
    on_bone = np.bincount(labels[surface & near_bone], minlength=count + 1)
    layers = np.flatnonzero(on_bone > ON_BONE_SHARE * surface_voxels)
    layers = layers[layers > 0]
    if layers.size:
        centre_mm = _skull_centre_mm(defective, spacing)
        offset = np.array([s.start for s in box])
        extents = ndimage.find_objects(labels)

        def voxels(label: int) -> np.ndarray:
            extent = extents[label - 1]
            return np.argwhere(labels[extent] == label) + offset + [s.start for s in extent]

        layers = [label for label in layers if _clear_share(voxels(label), defective, spacing, centre_mm) < PLUG_CLEAR_SHARE]
        pieces[np.isin(labels, layers)] = False
    return implant


def plugs_a_hole(voxels: np.ndarray, defective: np.ndarray, spacing: Sequence[float]) -> bool:
    """Whether bone at ``voxels`` (N, 3 indices) lies in a hole of the skull ``defective``, not on or under
    its bone: ``PLUG_CLEAR_SHARE`` of it meets no bone along the line from the skull's centre through it,
    within ``PLUG_REACH_MM`` either way."""
    return len(voxels) > 0 and _clear_share(voxels, defective, spacing, _skull_centre_mm(defective, spacing)) >= PLUG_CLEAR_SHARE


def _skull_centre_mm(defective: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """The centre of the skull's bounding box (mm from voxel 0), whichever way its axes run."""
    box = find_foreground_box(defective)
    if box is None:
        return np.array(defective.shape) / 2 * np.asarray(spacing, dtype=float)
    return np.array([(s.start + s.stop - 1) / 2 for s in box]) * np.asarray(spacing, dtype=float)


def _clear_share(voxels: np.ndarray, defective: np.ndarray, spacing: Sequence[float], centre_mm: np.ndarray) -> float:
    """Share of ``voxels`` (an even subset of ``PLUG_SAMPLE``) whose line from ``centre_mm`` meets no bone
    within ``PLUG_REACH_MM`` either way."""
    spacing = np.asarray(spacing, dtype=float)
    voxels = voxels[np.unique(np.linspace(0, len(voxels) - 1, min(len(voxels), PLUG_SAMPLE)).astype(int))]
    points_mm = voxels * spacing
    radial = points_mm - centre_mm
    radial /= np.maximum(np.linalg.norm(radial, axis=1, keepdims=True), 1e-6)
    steps = np.arange(-PLUG_REACH_MM, PLUG_REACH_MM + 1e-9, spacing.min() / 2)
    along = np.rint((points_mm[:, None, :] + radial[:, None, :] * steps[None, :, None]) / spacing).astype(int)
    along = np.clip(along, 0, np.array(defective.shape) - 1)
    meets_bone = defective[tuple(along.reshape(-1, 3).T)].reshape(along.shape[:2]).any(axis=1)
    return float((~meets_bone).mean())


def _within(outer: Box, inner: Box) -> Box:
    """``inner`` (relative to ``outer``'s start) as a box of the array ``outer`` indexes."""
    return tuple(slice(o.start + i.start, o.start + i.stop) for o, i in zip(outer, inner))  # type: ignore[return-value]


def _opening(mask: np.ndarray, structure: np.ndarray) -> np.ndarray:
    """``ndimage.binary_opening``, with the dilation done from the eroded voxels only: the structure
    is symmetric and eroded voxels lie at least its radius inside the array, so every write is in bounds."""
    eroded = np.flatnonzero(ndimage.binary_erosion(mask, structure=structure))
    opened = np.zeros(mask.shape, dtype=bool)
    offsets = np.argwhere(structure) - np.array(structure.shape) // 2
    strides = np.array(opened.strides) // opened.itemsize
    flat = opened.reshape(-1)
    for step in offsets @ strides:
        flat[eroded + step] = True
    return opened


def _kept_components(opened: np.ndarray, bone: np.ndarray, min_fraction_of_largest: float,
                     block: int = BLOCK) -> Optional[np.ndarray]:
    """The 26-connected components of ``opened`` that touch ``bone`` and hold at least
    ``min_fraction_of_largest`` of the largest touching one's voxels, as one mask; None when none touches.

    Touching voxels lie in touching blocks of ``block``^3, so each component lies within one group
    of connected occupied blocks and is labelled there. Groups go largest first: once a group holds
    fewer voxels than the bound set by the largest touching component so far, neither it nor any
    group after it holds a component to keep."""
    counts = in_blocks(opened, block).sum(axis=(1, 3, 5), dtype=np.int32)
    groups, group_count = ndimage.label(counts > 0, structure=CUBE)
    totals = ndimage.sum_labels(counts, groups, np.arange(1, group_count + 1))
    extents = ndimage.find_objects(groups)
    pieces = []  # (region, labels, touching labels, their sizes) per group that has touching components
    largest = 0
    for group in np.argsort(totals, kind="stable")[::-1]:
        if totals[group] < min_fraction_of_largest * largest:
            break
        region = tuple(slice(e.start * block, min(e.stop * block, n)) for e, n in zip(extents[group], opened.shape))
        member = _expand(groups[extents[group]] == group + 1, block)
        piece = opened[region] & member[tuple(slice(0, r.stop - r.start) for r in region)]
        labels, count = ndimage.label(piece, structure=CUBE)
        grown = tuple(slice(max(r.start - 1, 0), min(r.stop + 1, n)) for r, n in zip(region, opened.shape))
        near_bone = ndimage.binary_dilation(bone[grown], structure=CUBE)
        near_bone = near_bone[tuple(slice(r.start - g.start, r.stop - g.start) for r, g in zip(region, grown))]
        touching = np.unique(labels[near_bone & piece])
        touching = touching[touching > 0]
        if touching.size:
            sizes = np.bincount(labels.ravel(), minlength=count + 1)[touching]
            pieces.append((region, labels, touching, sizes))
            largest = max(largest, int(sizes.max()))
    if not pieces:
        return None
    seeds = np.zeros(opened.shape, dtype=bool)
    for region, labels, touching, sizes in pieces:
        keep = touching[sizes >= min_fraction_of_largest * largest]
        if keep.size:
            seeds[region] |= np.isin(labels, keep)
    return seeds


def _expand(coarse: np.ndarray, block: int) -> np.ndarray:
    """Each element of a 3D array repeated as a ``block``^3 cube."""
    shape = coarse.shape
    cubes = np.broadcast_to(coarse[:, None, :, None, :, None], (shape[0], block, shape[1], block, shape[2], block))
    return cubes.reshape(shape[0] * block, shape[1] * block, shape[2] * block)
