"""Signed distances between surfaces: the distance map of the completed skull against the defective
one (or a reference implant), and its summary (no Qt).

Distances are signed: positive outside the reference surface, negative inside. A search costs time
per vertex, and a completed skull differs from the defective one only around the defect, so
``NearChanges`` finds where a search can give anything but 0 (README, Benchmarks).
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Union

import numpy as np
from scipy import ndimage
from vtkmodules.util.numpy_support import numpy_to_vtk, vtk_to_numpy
from vtkmodules.vtkCommonDataModel import vtkPolyData
from vtkmodules.vtkFiltersCore import vtkImplicitPolyDataDistance

from ..contract import DISTANCE_ARRAY
from ..errors import SparseImplantError
from ..pipeline.volume import LPS_TO_RAS, Volume, foreground_box, in_blocks
from .from_masks import surface_reach_mm
from .meshes import without_zero_area_triangles


class DistanceTo:
    """Signed distance (mm) to a reference surface: positive outside it, negative inside. Its search
    structure is built once, here (a few tenths of a second for a whole skull), so it can be built
    ahead, beside other work, and asked many times.

    Points are asked one at a time (VTK's array call would spread them over threads that share the
    search's state; a crash was seen once in CI that way, and switching VTK's global threading off
    around it would stop filters running beside it), against the reference without its zero-area
    triangles (a triangle with no normal gives VTK's sign test nothing to work with)."""

    def __init__(self, reference: vtkPolyData):
        self._implicit: Optional[vtkImplicitPolyDataDistance] = None
        if reference.GetNumberOfPoints() > 0:
            self._implicit = vtkImplicitPolyDataDistance()
            self._implicit.SetInput(without_zero_area_triangles(reference))

    def at(self, points: np.ndarray) -> np.ndarray:
        """Signed distances of ``points`` ((N, 3), mm)."""
        if len(points) == 0:
            return np.zeros(0)
        if self._implicit is None:
            raise SparseImplantError("the reference surface is empty: there is nothing to measure distances to")
        evaluate = self._implicit.EvaluateFunction
        return np.array([evaluate(point) for point in np.asarray(points, dtype=np.float64).tolist()])


def signed_distance(surface: vtkPolyData, reference: Union[vtkPolyData, DistanceTo],
                    where: Optional[np.ndarray] = None) -> np.ndarray:
    """Distance (mm) from each vertex of ``surface`` to ``reference`` (a surface, or its ``DistanceTo``):
    positive outside it, negative inside. ``where`` (bool per vertex) limits the search to those
    vertices; the others get 0."""
    distances = np.zeros(surface.GetNumberOfPoints())
    if surface.GetNumberOfPoints() == 0:
        return distances
    distance_to = reference if isinstance(reference, DistanceTo) else DistanceTo(reference)
    searched = slice(None) if where is None else where
    distances[searched] = distance_to.at(vtk_to_numpy(surface.GetPoints().GetData())[searched])
    return distances


class NearChanges:
    """Where a surface built from ``mask`` may lie within ``surface_reach_mm`` of a voxel where ``mask`` and
    ``other`` differ: elsewhere the two masks' surfaces coincide and their distance is 0, so a distance map
    needs searching only there (a small part of a skull: README, Benchmarks). Made from the masks alone,
    so it can be made while the surface is still being built; asked per surface (``at``). Every vertex
    counts as near when the masks' grids differ.

    Distances are measured between blocks of ``block``^3 voxels (a block is changed when any voxel in it
    is), a ``block``^3-th of the voxels to transform; one block diagonal and one voxel diagonal of slack
    keep the answer conservative: no vertex within the reach is missed."""

    def __init__(self, mask: Volume, other: Volume, coordinates: str = "LPS", block: int = 3):
        self._everywhere = not mask.same_geometry(other)
        self._distance: Optional[np.ndarray] = None  # mm between block centres, in the changed voxels' box
        if self._everywhere:
            return
        changed = (mask.array != 0) != (other.array != 0)
        if not changed.any():
            return
        self._reach = surface_reach_mm(mask)
        self._box = foreground_box(changed, margin=math.ceil(self._reach / mask.spacing.min()) + block + 1)
        self._block = block
        coarse = in_blocks(changed[self._box], block).any(axis=(1, 3, 5))
        # Outside the box the distance exceeds the reach.
        self._distance = ndimage.distance_transform_edt(~coarse, sampling=mask.spacing * block)
        self._to_index = np.linalg.inv(mask.index_to_lps() if coordinates == "LPS" else LPS_TO_RAS @ mask.index_to_lps())
        self._slack = float(np.linalg.norm(mask.spacing)) * (block + 1)

    def at(self, surface: vtkPolyData) -> np.ndarray:
        """For each vertex of ``surface`` (built from the mask): whether it may lie within the reach."""
        count = surface.GetNumberOfPoints()
        if self._everywhere:
            return np.ones(count, dtype=bool)
        near = np.zeros(count, dtype=bool)
        if count == 0 or self._distance is None:
            return near
        points = vtk_to_numpy(surface.GetPoints().GetData()).astype(np.float64)
        index = (np.rint(points @ self._to_index[:3, :3].T + self._to_index[:3, 3]).astype(np.int64)
                 - [b.start for b in self._box])
        inside = np.all((index >= 0) & (index < [b.stop - b.start for b in self._box]), axis=1)
        near[inside] = self._distance[tuple(index[inside].T // self._block)] <= self._reach + self._slack
        return near


def add_signed_distance(surface: vtkPolyData, reference: Union[vtkPolyData, DistanceTo], name: str = DISTANCE_ARRAY,
                        where: Optional[np.ndarray] = None) -> vtkPolyData:
    """Copy of ``surface`` with the signed distance to ``reference`` as its active point scalars
    (searched only at the vertices ``where`` is true, when given; 0 elsewhere)."""
    result = vtkPolyData()
    result.DeepCopy(surface)
    array = numpy_to_vtk(signed_distance(surface, reference, where).astype(np.float32), deep=True)
    array.SetName(name)
    result.GetPointData().AddArray(array)
    result.GetPointData().SetActiveScalars(name)
    return result


def distance_statistics(distances: np.ndarray) -> Dict[str, float]:
    """Summary of a signed distance map in mm."""
    if distances.size == 0:
        return {"mean_abs": 0.0, "mean_signed": 0.0, "max_abs": 0.0, "p95_abs": 0.0}
    magnitude = np.abs(distances)
    return {
        "mean_abs": round(float(magnitude.mean()), 4),
        "mean_signed": round(float(distances.mean()), 4),
        "max_abs": round(float(magnitude.max()), 4),
        "p95_abs": round(float(np.percentile(magnitude, 95)), 4),
    }
