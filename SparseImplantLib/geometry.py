"""Surfaces from masks, signed distances between surfaces, and mesh export (VTK only, no Qt).

Surfaces are built in voxel-index space by marching cubes on the lightly blurred mask (closed and
manifold, as 3D printing needs), smoothed with a windowed-sinc filter, then mapped to physical LPS millimetres with the volume's full index-to-LPS matrix (oblique volumes
too). Distances are signed: positive outside the reference surface, negative inside.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Dict, Optional

import numpy as np
from scipy import ndimage
from vtkmodules.util.numpy_support import numpy_to_vtk, numpy_to_vtkIdTypeArray, vtk_to_numpy
from vtkmodules.vtkCommonCore import vtkDoubleArray, vtkPoints, vtkSMPTools
from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkImageData, vtkPolyData
from vtkmodules.vtkCommonMath import vtkMatrix4x4
from vtkmodules.vtkCommonTransforms import vtkTransform
from vtkmodules.vtkFiltersCore import (
    vtkFeatureEdges,
    vtkFlyingEdges3D,
    vtkImplicitPolyDataDistance,
    vtkMassProperties,
    vtkPolyDataConnectivityFilter,
    vtkPolyDataNormals,
    vtkQuadricDecimation,
    vtkReverseSense,
    vtkTriangleFilter,
    vtkWindowedSincPolyDataFilter,
)
from vtkmodules.vtkFiltersGeneral import vtkTransformPolyDataFilter
from vtkmodules.vtkIOCore import vtkWriter
from vtkmodules.vtkIOGeometry import vtkOBJReader, vtkOBJWriter, vtkSTLReader, vtkSTLWriter
from vtkmodules.vtkIOLegacy import vtkPolyDataReader, vtkPolyDataWriter
from vtkmodules.vtkIOPLY import vtkPLYReader, vtkPLYWriter
from vtkmodules.vtkIOXML import vtkXMLPolyDataReader, vtkXMLPolyDataWriter
from vtkmodules.vtkImagingGeneral import vtkImageGaussianSmooth

from .contract import DISTANCE_ARRAY
from .errors import SparseImplantError
from .io import PathLike, atomic_write
from .volume import LPS_TO_RAS, Volume, foreground_box

COORDINATE_SYSTEMS = ("LPS", "RAS")
PAD = 3  # zero voxels around the cropped mask: room for the blur, so the surface stays closed
SMOOTHING_ITERATIONS = 20
BLUR_SIGMA_VOXELS = 0.6
DISPLAY_CELL_MM = 1.2  # clustering cell of the whole-skull display meshes (display_mesh)
DISPLAY_TOLERANCE_MM = 0.8  # the stated bound between a display mesh and its full-resolution surface

# VTK's wheels start with the sequential SMP backend; threads make surface extraction and smoothing
# faster with identical output (README, Benchmarks). A backend chosen by the host (Slicer's TBB, or the
# VTK_SMP_BACKEND_IN_USE variable) is left alone.
if vtkSMPTools.GetBackend() == "Sequential" and "VTK_SMP_BACKEND_IN_USE" not in os.environ:
    vtkSMPTools.SetBackend("STDThread")


def vtk_matrix(values: np.ndarray) -> vtkMatrix4x4:
    """A 4x4 numpy matrix as VTK's."""
    matrix = vtkMatrix4x4()
    for row in range(4):
        for column in range(4):
            matrix.SetElement(row, column, float(values[row, column]))
    return matrix


def transform_polydata(surface: vtkPolyData, matrix: np.ndarray) -> vtkPolyData:
    """Apply a 4x4 matrix to the points; cell order is reversed for mirroring matrices so that
    normals keep pointing outwards."""
    transform = vtkTransform()
    transform.SetMatrix(vtk_matrix(matrix))
    mapper = vtkTransformPolyDataFilter()
    mapper.SetTransform(transform)
    mapper.SetInputData(surface)
    mapper.Update()
    output = mapper.GetOutput()
    if np.linalg.det(matrix[:3, :3]) < 0:
        reverse = vtkReverseSense()
        reverse.SetInputData(output)
        reverse.ReverseCellsOn()
        reverse.ReverseNormalsOn()
        reverse.Update()
        output = reverse.GetOutput()
    result = vtkPolyData()
    result.DeepCopy(output)
    return result


def without_specks(surface: vtkPolyData, least_share: float = 0.1) -> vtkPolyData:
    """``surface`` without its pieces of fewer than ``least_share`` of the largest piece's triangles: the
    contour of a blurred mask leaves tiny closed blobs where voxels meet at a corner, which a lab sees
    as a second shell in the file. Separate large pieces (two openings, two implants) stay."""
    pieces = vtkPolyDataConnectivityFilter()
    pieces.SetInputData(surface)
    pieces.SetExtractionModeToAllRegions()
    pieces.Update()
    sizes = vtk_to_numpy(pieces.GetRegionSizes())
    if len(sizes) <= 1:
        return surface
    pieces.SetExtractionModeToSpecifiedRegions()
    for region in np.flatnonzero(sizes >= least_share * sizes.max()):
        pieces.AddSpecifiedRegion(int(region))
    pieces.Update()
    kept = vtkPolyData()
    kept.DeepCopy(pieces.GetOutput())
    return kept


def surface_from_mask(mask: Volume, smoothing_iterations: int = SMOOTHING_ITERATIONS, decimate: float = 0.0,
                      coordinates: str = "LPS", smoothing_sigma_voxels: float = BLUR_SIGMA_VOXELS) -> vtkPolyData:
    """Closed triangle surface of the non-zero voxels, in LPS (default) or RAS millimetres.

    The 0.5 iso-surface of the mask blurred by ``smoothing_sigma_voxels``, then windowed-sinc smoothed
    (``smoothing_iterations``, 0 = none); ``decimate`` is the fraction of triangles to remove.
    """
    if coordinates not in COORDINATE_SYSTEMS:
        raise ValueError(f"coordinates must be one of {COORDINATE_SYSTEMS}")
    if not np.any(mask.array):
        return vtkPolyData()
    box = foreground_box(mask.array != 0, margin=1)
    cropped = np.pad((mask.array[box] != 0).astype(np.uint8), PAD)  # a zero border closes the surface
    start = np.array([s.start for s in box], dtype=float) - PAD

    image = vtkImageData()
    image.SetDimensions(*cropped.shape)
    scalars = numpy_to_vtk(np.ascontiguousarray(cropped.transpose(2, 1, 0), dtype=np.float32).reshape(-1), deep=True)
    image.GetPointData().SetScalars(scalars)

    # Marching cubes on the lightly blurred mask: always closed and manifold (surface nets and discrete
    # marching cubes leave non-manifold edges where voxels touch only along an edge).
    blur = vtkImageGaussianSmooth()
    blur.SetInputData(image)
    blur.SetDimensionality(3)
    blur.SetStandardDeviations(*(3 * [smoothing_sigma_voxels]))
    blur.SetRadiusFactors(3, 3, 3)
    contour = vtkFlyingEdges3D()
    contour.SetInputConnection(blur.GetOutputPort())
    contour.SetValue(0, 0.5)
    contour.ComputeNormalsOff()
    contour.ComputeGradientsOff()
    contour.ComputeScalarsOff()
    contour.Update()
    surface = contour.GetOutput()
    if smoothing_iterations > 0:
        smoother = vtkWindowedSincPolyDataFilter()
        smoother.SetInputData(surface)
        smoother.SetNumberOfIterations(smoothing_iterations)
        smoother.SetPassBand(0.01)  # Slicer's smoothing factor 0.5
        smoother.BoundarySmoothingOff()
        smoother.FeatureEdgeSmoothingOff()
        smoother.NonManifoldSmoothingOn()
        smoother.NormalizeCoordinatesOn()
        smoother.Update()
        surface = smoother.GetOutput()

    if decimate > 0:
        decimator = vtkQuadricDecimation()
        decimator.SetInputData(surface)
        decimator.SetTargetReduction(float(decimate))
        decimator.VolumePreservationOn()
        decimator.Update()
        surface = decimator.GetOutput()

    shift = np.eye(4)
    shift[:3, 3] = start
    matrix = mask.index_to_lps() @ shift
    if coordinates == "RAS":
        matrix = LPS_TO_RAS @ matrix
    surface = transform_polydata(surface, matrix)
    return with_normals(surface)


def with_normals(surface: vtkPolyData) -> vtkPolyData:
    """Point normals for shading and for signed distances, from the triangles' own order.

    Marching cubes orders every triangle so that its normal points out of the mask, inner cavities
    and separate islands included, and ``transform_polydata`` keeps that order under mirroring; a
    consistency pass with auto-orientation would cost more than the surface itself and turns the
    walls of cavities inside out."""
    normals = vtkPolyDataNormals()
    normals.SetInputData(surface)
    normals.ComputePointNormalsOn()
    normals.ComputeCellNormalsOff()
    normals.SplittingOff()
    normals.ConsistencyOff()
    normals.AutoOrientNormalsOff()
    normals.Update()
    result = vtkPolyData()
    result.DeepCopy(normals.GetOutput())
    return result


def display_mesh(surface: vtkPolyData, cell_mm: float = DISPLAY_CELL_MM) -> vtkPolyData:
    """A lighter copy of a full-resolution surface for looking at: a whole skull in the views, the
    preview and the distance map (the implant, which is printed, stays at full resolution).

    Vertices are clustered per ``cell_mm`` cube and per normal direction (the axis and sign the
    normal points along most), so the two sides of thin bone never merge; each cluster becomes its
    vertex nearest the cluster's mean, with that vertex's point data (normal, signed distance), and
    triangles left with three distinct clusters are kept once. The copy lies within
    ``DISPLAY_TOLERANCE_MM`` of the surface both ways (tested on the sample skull); it is for display,
    not printing (clusters can meet along non-manifold edges)."""
    if surface.GetNumberOfPoints() == 0:
        return vtkPolyData()
    points = vtk_to_numpy(surface.GetPoints().GetData())
    normals = vtk_to_numpy(surface.GetPointData().GetNormals())
    triangles = vtk_to_numpy(surface.GetPolys().GetConnectivityArray()).reshape(-1, 3)
    cells = ((points - points.min(axis=0)) * (1.0 / cell_mm)).astype(np.int64)  # non-negative: truncation floors
    extent = cells.max(axis=0) + 1
    axis = np.abs(normals).argmax(axis=1)
    positive = normals[np.arange(len(normals)), axis] > 0
    keys = ((cells[:, 0] * extent[1] + cells[:, 1]) * extent[2] + cells[:, 2]) * 6 + axis * 2 + positive
    order = np.argsort(keys, kind="stable")
    starts = np.flatnonzero(np.r_[True, keys[order][1:] != keys[order][:-1]])
    count = len(starts)
    cluster = np.empty(len(keys), dtype=np.int64)
    cluster[order] = np.repeat(np.arange(count), np.diff(np.r_[starts, len(keys)]))
    members = np.bincount(cluster, minlength=count)
    mean = np.stack([np.bincount(cluster, points[:, k], count) for k in range(3)], axis=1) / members[:, None]
    offset = ((points - mean[cluster]) ** 2).sum(axis=1)
    nearest = np.empty(count, dtype=np.int64)
    closest = offset == np.minimum.reduceat(offset[order], starts)[cluster]
    nearest[cluster[closest]] = np.flatnonzero(closest)  # on a tie, the last such vertex
    # Surfaces can touch themselves: clusters whose vertices sit at one position become one vertex,
    # so no zero-area triangle stands in for the surface there.
    _, first_at, same_place = np.unique(points[nearest], axis=0, return_index=True, return_inverse=True)
    nearest, cluster = nearest[first_at], same_place.reshape(-1)[cluster]
    count = len(nearest)
    merged = cluster[triangles]
    merged = merged[(merged[:, 0] != merged[:, 1]) & (merged[:, 1] != merged[:, 2]) & (merged[:, 0] != merged[:, 2])]
    ordered = np.sort(merged, axis=1)
    _, first = np.unique((ordered[:, 0] * count + ordered[:, 1]) * count + ordered[:, 2], return_index=True)
    merged = merged[np.sort(first)]
    merged = merged[_has_area(points[nearest], merged)]  # clusters on one line leave no surface
    used, faces = np.unique(merged, return_inverse=True)
    kept = nearest[used]

    result = vtkPolyData()
    result_points = vtkPoints()
    result_points.SetData(numpy_to_vtk(points[kept], deep=True))
    result.SetPoints(result_points)
    result.SetPolys(_triangle_cells(faces.reshape(-1, 3)))
    source = surface.GetPointData()
    for index in range(source.GetNumberOfArrays()):
        array = numpy_to_vtk(vtk_to_numpy(source.GetArray(index))[kept], deep=True)
        array.SetName(source.GetArray(index).GetName())
        result.GetPointData().AddArray(array)
    if source.GetNormals() is not None:
        result.GetPointData().SetActiveNormals(source.GetNormals().GetName())
    if source.GetScalars() is not None:
        result.GetPointData().SetActiveScalars(source.GetScalars().GetName())
    return result


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


def _has_area(points: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Per triangle: whether its corners span an area (sine of its widest angle above 1e-6; float32
    resolves that with room to spare, at half the memory of float64 on a skull's millions)."""
    points = points.astype(np.float32, copy=False)
    first = points[triangles[:, 1]] - points[triangles[:, 0]]
    second = points[triangles[:, 2]] - points[triangles[:, 0]]
    third = second - first
    cross = np.cross(first, second)
    longest = np.maximum.reduce([np.einsum("ij,ij->i", edge, edge) for edge in (first, second, third)])
    return np.einsum("ij,ij->i", cross, cross) > (1e-6 * longest) ** 2


def without_zero_area_triangles(surface: vtkPolyData) -> vtkPolyData:
    """``surface`` as triangles only, without those whose corners lie on one line (they cover no area:
    their edges are their neighbours' edges, so distances to the surface do not change). A surface of
    triangles with none such (the usual case) is returned as it is."""
    offsets = vtk_to_numpy(surface.GetPolys().GetOffsetsArray()) if surface.GetNumberOfPolys() else np.zeros(1)
    only_triangles = (surface.GetNumberOfCells() == surface.GetNumberOfPolys() and len(offsets) > 1
                      and bool((np.diff(offsets) == 3).all()))
    if not only_triangles:
        triangulate = vtkTriangleFilter()
        triangulate.SetInputData(surface)
        triangulate.PassVertsOff()
        triangulate.PassLinesOff()
        triangulate.Update()
        surface = triangulate.GetOutput()
    if surface.GetNumberOfCells() == 0:
        return surface
    triangles = vtk_to_numpy(surface.GetPolys().GetConnectivityArray()).reshape(-1, 3)
    keep = _has_area(vtk_to_numpy(surface.GetPoints().GetData()), triangles)
    if keep.all():
        return surface
    result = vtkPolyData()
    result.SetPoints(surface.GetPoints())
    result.GetPointData().ShallowCopy(surface.GetPointData())
    result.SetPolys(_triangle_cells(triangles[keep]))
    return result


def _triangle_cells(triangles: np.ndarray) -> vtkCellArray:
    polys = vtkCellArray()
    polys.SetData(numpy_to_vtkIdTypeArray(np.arange(0, 3 * len(triangles) + 1, 3, dtype=np.int64), deep=True),
                  numpy_to_vtkIdTypeArray(np.ascontiguousarray(triangles, dtype=np.int64).reshape(-1), deep=True))
    return polys


def surface_reach_mm(mask: Volume, smoothing_iterations: int = SMOOTHING_ITERATIONS,
                     smoothing_sigma_voxels: float = BLUR_SIGMA_VOXELS) -> float:
    """How far a voxel can move the surface ``surface_from_mask`` builds: the blur's radius and one
    voxel edge to the iso-surface vertex, then one voxel diagonal per smoothing iteration (each mixes
    neighbouring vertices). Where two masks agree within this distance, their surfaces coincide."""
    voxels = math.ceil(3 * smoothing_sigma_voxels) + 1 + smoothing_iterations * math.sqrt(3)
    return float(voxels * mask.spacing.max())


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
    blocks = -(-shape // block)
    padded = np.zeros(tuple(blocks * block), dtype=bool)
    padded[tuple(slice(0, n) for n in shape)] = changed[box]
    coarse = padded.reshape(blocks[0], block, blocks[1], block, blocks[2], block).any(axis=(1, 3, 5))
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


def _writer(suffix: str) -> vtkWriter:
    if suffix == ".stl":
        writer = vtkSTLWriter()
        writer.SetFileTypeToBinary()
    elif suffix == ".obj":
        writer = vtkOBJWriter()
    elif suffix == ".ply":
        writer = vtkPLYWriter()
        writer.SetFileTypeToBinary()
    elif suffix == ".vtk":
        writer = vtkPolyDataWriter()
        writer.SetFileTypeToBinary()
    elif suffix == ".vtp":  # VTK's XML format, zlib-compressed: point arrays at a fraction of legacy .vtk's size
        writer = vtkXMLPolyDataWriter()
        writer.SetDataModeToAppended()
        writer.EncodeAppendedDataOff()
        writer.SetCompressorTypeToZLib()
        writer.SetIdTypeToInt32()
    else:
        raise SparseImplantError(f"cannot export meshes as '{suffix}': use .stl, .obj, .ply, .vtk or .vtp")
    return writer


def export_mesh(surface: vtkPolyData, path: PathLike, coordinates: str = "LPS") -> Path:
    """Write an LPS surface as STL/OBJ/PLY/VTK/VTP (by extension) in LPS or RAS millimetres, atomically.

    Only .vtk and .vtp keep point arrays such as the signed distance."""
    if coordinates not in COORDINATE_SYSTEMS:
        raise SparseImplantError(f"unknown coordinate system '{coordinates}': use LPS or RAS")
    path = Path(path)
    writer = _writer(path.suffix.lower())
    output = transform_polydata(surface, LPS_TO_RAS) if coordinates == "RAS" else surface
    if path.suffix.lower() == ".stl":
        triangles = vtkTriangleFilter()
        triangles.SetInputData(output)
        triangles.Update()
        output = triangles.GetOutput()

    def write(temporary: Path) -> None:
        writer.SetFileName(str(temporary))
        writer.SetInputData(output)
        if not writer.Write():
            raise SparseImplantError(f"could not write '{path}': check free disk space and permissions")

    return atomic_write(path, write)


def read_mesh(path: PathLike) -> vtkPolyData:
    """Read a mesh written by ``export_mesh`` (for tests and round trips)."""
    readers = {".stl": vtkSTLReader, ".obj": vtkOBJReader, ".ply": vtkPLYReader, ".vtk": vtkPolyDataReader,
               ".vtp": vtkXMLPolyDataReader}
    suffix = Path(path).suffix.lower()
    if suffix not in readers:
        raise SparseImplantError(f"cannot read meshes of type '{suffix}'")
    reader = readers[suffix]()
    reader.SetFileName(str(path))
    reader.Update()
    return reader.GetOutput()


def enclosed_volume_mm3(surface: vtkPolyData) -> float:
    triangles = vtkTriangleFilter()
    triangles.SetInputData(surface)
    properties = vtkMassProperties()
    properties.SetInputConnection(triangles.GetOutputPort())
    properties.Update()
    return float(properties.GetVolume())


def open_edge_counts(surface: vtkPolyData) -> Dict[str, int]:
    """Boundary and non-manifold edges: both 0 for a closed, manifold (printable) surface."""
    counts = {}
    for name in ("boundary", "non_manifold"):
        edges = vtkFeatureEdges()
        edges.SetInputData(surface)
        edges.FeatureEdgesOff()
        edges.ManifoldEdgesOff()
        edges.SetBoundaryEdges(name == "boundary")
        edges.SetNonManifoldEdges(name == "non_manifold")
        edges.Update()
        counts[name] = edges.GetOutput().GetNumberOfCells()
    return counts
