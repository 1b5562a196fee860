"""Signed distances between surfaces: the distance map of the completed skull against the defective
one (or a reference implant), and its summary (no Qt).

Distances are signed: positive outside the reference surface, negative inside. A search costs time
per vertex, and a completed skull differs from the defective one only around the defect, so
``vertices_near_changes`` finds where a search can give anything but 0 (README, Benchmarks).
"""

from __future__ import annotations

import math
from typing import Dict, Optional

import numpy as np
from scipy import ndimage
from vtkmodules.util.numpy_support import numpy_to_vtk, vtk_to_numpy
from vtkmodules.vtkCommonCore import vtkDoubleArray, vtkSMPTools
from vtkmodules.vtkCommonDataModel import vtkPolyData
from vtkmodules.vtkFiltersCore import vtkImplicitPolyDataDistance

from ..contract import DISTANCE_ARRAY
from ..errors import SparseImplantError
from ..pipeline.volume import LPS_TO_RAS, Volume, foreground_box, in_blocks
from .from_masks import surface_reach_mm
from .meshes import without_zero_area_triangles


def signed_distance(surface: vtkPolyData, reference: vtkPolyData, where: Optional[np.ndarray] = None) -> np.ndarray:
    """Distance (mm) from each vertex of ``surface`` to ``reference``: positive outside it, negative inside.

    ``where`` (bool per vertex) limits the search to those vertices; the others get 0.

    The search runs on VTK's sequential backend (it is serial either way) and against the reference
    without its zero-area triangles (a triangle with no normal gives VTK's sign test nothing to work
    with); both guard against a crash seen once in CI and never reproduced here.
    """
    distances = np.zeros(surface.GetNumberOfPoints())
    if surface.GetNumberOfPoints() == 0:
        return distances
    if reference.GetNumberOfPoints() == 0:
        raise SparseImplantError("the reference surface is empty: there is nothing to measure distances to")
    searched = slice(None) if where is None else where
    points = vtk_to_numpy(surface.GetPoints().GetData())[searched]
    backend = vtkSMPTools.GetBackend()
    vtkSMPTools.SetBackend("Sequential")
    try:
        implicit = vtkImplicitPolyDataDistance()
        implicit.SetInput(without_zero_area_triangles(reference))
        values = vtkDoubleArray()
        values.SetNumberOfTuples(len(points))
        implicit.FunctionValue(numpy_to_vtk(np.ascontiguousarray(points, dtype=np.float64), deep=True), values)
    finally:
        vtkSMPTools.SetBackend(backend)
    distances[searched] = vtk_to_numpy(values)
    return distances


def vertices_near_changes(surface: vtkPolyData, mask: Volume, other: Volume, coordinates: str = "LPS",
                          block: int = 3) -> np.ndarray:
    """For each vertex of ``surface`` (built from ``mask``): whether it may lie within
    ``surface_reach_mm`` of a voxel where ``mask`` and ``other`` differ. Elsewhere the two masks'
    surfaces coincide and their distance is 0, so a distance map needs searching only here (a small
    part of a skull: README, Benchmarks). Every vertex counts as near when the masks' grids differ.

    Distances are measured between blocks of ``block``^3 voxels (a block is changed when any voxel
    in it is), a ``block``^3-th of the voxels to transform; one block diagonal and one voxel diagonal
    of slack keep the answer conservative: no vertex within the reach is missed."""
    count = surface.GetNumberOfPoints()
    if not mask.same_geometry(other):
        return np.ones(count, dtype=bool)
    changed = (mask.array != 0) != (other.array != 0)
    if count == 0 or not changed.any():
        return np.zeros(count, dtype=bool)
    reach = surface_reach_mm(mask)
    box = foreground_box(changed, margin=math.ceil(reach / mask.spacing.min()) + block + 1)
    shape = np.array([b.stop - b.start for b in box])
    coarse = in_blocks(changed[box], block).any(axis=(1, 3, 5))
    # Distance (mm) between block centres; outside the box it exceeds the reach.
    distance = ndimage.distance_transform_edt(~coarse, sampling=mask.spacing * block)
    to_index = np.linalg.inv(mask.index_to_lps() if coordinates == "LPS" else LPS_TO_RAS @ mask.index_to_lps())
    points = vtk_to_numpy(surface.GetPoints().GetData()).astype(np.float64)
    index = np.rint(points @ to_index[:3, :3].T + to_index[:3, 3]).astype(np.int64) - [b.start for b in box]
    inside = np.all((index >= 0) & (index < shape), axis=1)
    near = np.zeros(count, dtype=bool)
    slack = float(np.linalg.norm(mask.spacing)) * (block + 1)
    near[inside] = distance[tuple(index[inside].T // block)] <= reach + slack
    return near


def add_signed_distance(surface: vtkPolyData, reference: vtkPolyData, name: str = DISTANCE_ARRAY,
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
