"""Surfaces from masks: the closed, manifold triangle surface of a mask's voxels in physical LPS (or
RAS) millimetres, as 3D printing needs (VTK only, no Qt).

Surfaces are built in voxel-index space by marching cubes on the lightly blurred mask, smoothed with a
windowed-sinc filter, then mapped to millimetres with the volume's full index-to-LPS matrix (oblique
volumes too). Everything downstream starts here: the implant mesh as printed, the whole skulls (shown
as ``display_meshes``), and the reference surfaces of ``distances``; ``meshes`` holds the mesh
operations and files they share.
"""

from __future__ import annotations

import math
import os
from typing import Optional, Tuple

import numpy as np
from scipy.spatial import cKDTree
from vtkmodules.util.numpy_support import numpy_to_vtk, vtk_to_numpy
from vtkmodules.vtkCommonCore import vtkPoints, vtkSMPTools
from vtkmodules.vtkCommonDataModel import vtkBox, vtkPolyData
from vtkmodules.vtkFiltersCore import (
    vtkFlyingEdges3D,
    vtkPolyDataConnectivityFilter,
    vtkPolyDataNormals,
    vtkQuadricDecimation,
    vtkWindowedSincPolyDataFilter,
)
from vtkmodules.vtkFiltersExtraction import vtkExtractPolyDataGeometry
from vtkmodules.vtkImagingGeneral import vtkImageGaussianSmooth

from ..pipeline.volume import LPS_TO_RAS, Volume, foreground_box
from .meshes import COORDINATE_SYSTEMS, image_data, transform_polydata

PAD = 3  # zero voxels around the cropped mask: room for the blur, so the surface stays closed
SMOOTHING_ITERATIONS = 20
PASS_BAND = 0.01  # Slicer's smoothing factor 0.5
BLUR_SIGMA_VOXELS = 0.6
# The implant's mask comes from a smooth field cut at one half, so its voxel steps are regular: where
# the surface runs nearly parallel to a grid plane they shade as rings (the steps of a contour map).
# The printed implant's faces are smoothed harder than the skulls' (IMPLANT_*), which takes the rings
# away; near the skull (within BORDER_KEEP_MM, blending in up to BORDER_BLEND_MM) it keeps the lightly
# smoothed surface, so its fit to the defect border is that of its mask, as the lab report measures it
# (results/notes/experiments.md, "Ripples").
IMPLANT_SMOOTHING_ITERATIONS = 60
IMPLANT_PASS_BAND = 0.001
BORDER_KEEP_MM = 2.5
BORDER_BLEND_MM = 4.0
_POINT_IDS = "SparseImplantPointIds"

# VTK's wheels start with the sequential SMP backend; threads make surface extraction and smoothing
# faster with identical output (README, Benchmarks). A backend chosen by the host (Slicer's TBB, or the
# VTK_SMP_BACKEND_IN_USE variable) is left alone.
if vtkSMPTools.GetBackend() == "Sequential" and "VTK_SMP_BACKEND_IN_USE" not in os.environ:
    vtkSMPTools.SetBackend("STDThread")


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


def printable_implant_surface(implant: Volume, skull_surface: vtkPolyData) -> vtkPolyData:
    """The implant's mesh as printed, without specks: its faces smoothed free of voxel rings, its rim
    where it meets ``skull_surface`` (the defective skull's surface in LPS mm) as lightly smoothed as
    the skulls', so the border fit stays that of the mask (``smoothed_away_from``)."""
    return smoothed_away_from(without_specks(surface_from_mask(implant)), skull_surface)


def completed_skull_surface(completed: Volume, skull_surface: vtkPolyData, implant_surface: Optional[vtkPolyData],
                            extracted: Optional[vtkPolyData] = None) -> vtkPolyData:
    """The completed skull's surface, its added bone smoothed as the printed ``implant_surface`` is, in
    the implant's region (its bounds plus ``BORDER_BLEND_MM``), so the views show the implant as printed.
    ``extracted``: ``surface_from_mask(completed)`` when it is already made (it needs no implant surface,
    so it can start before that is ready)."""
    surface = surface_from_mask(completed) if extracted is None else extracted
    if implant_surface is None or implant_surface.GetNumberOfPoints() == 0:
        return surface
    bounds = np.array(implant_surface.GetBounds()).reshape(3, 2)
    return smoothed_away_from(surface, skull_surface, (bounds[:, 0] - BORDER_BLEND_MM, bounds[:, 1] + BORDER_BLEND_MM))


def smoothed_away_from(surface: vtkPolyData, skull_surface: vtkPolyData,
                       region: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> vtkPolyData:
    """``surface`` smoothed as the printed implant (``IMPLANT_*``) where it lies more than
    ``BORDER_BLEND_MM`` from ``skull_surface``, blending to unchanged within ``BORDER_KEEP_MM``: the
    implant's faces, or the added bone of a completed skull. ``region`` (low and high LPS corners, mm)
    limits the work to the triangles with a vertex inside it, whose outer vertices stay where they are
    (a completed skull is smoothed around its implant only)."""
    if surface.GetNumberOfPoints() == 0:
        return surface
    points = vtk_to_numpy(surface.GetPoints().GetData()).astype(np.float64)
    part, ids = surface, slice(None)
    if region is not None:
        numbered = vtkPolyData()
        numbered.ShallowCopy(surface)
        numbers = numpy_to_vtk(np.arange(len(points), dtype=np.int64), deep=True)
        numbers.SetName(_POINT_IDS)
        numbered.GetPointData().AddArray(numbers)
        box = vtkBox()
        box.SetBounds(*np.ravel(np.column_stack(region)))
        extract = vtkExtractPolyDataGeometry()
        extract.SetInputData(numbered)
        extract.SetImplicitFunction(box)
        extract.ExtractInsideOn()
        extract.ExtractBoundaryCellsOn()
        extract.Update()
        part = extract.GetOutput()
        if part.GetNumberOfPoints() == 0:
            return surface
        ids = vtk_to_numpy(part.GetPointData().GetArray(_POINT_IDS)).astype(np.int64)
    smoothed = vtk_to_numpy(_windowed_sinc(part, IMPLANT_SMOOTHING_ITERATIONS, IMPLANT_PASS_BAND)
                            .GetPoints().GetData()).astype(np.float64)
    before = points[ids]
    to_skull = distance_to_vertices(before, skull_surface, BORDER_BLEND_MM)
    weight = np.clip((to_skull - BORDER_KEEP_MM) / (BORDER_BLEND_MM - BORDER_KEEP_MM), 0.0, 1.0)[:, None]
    moved = points.copy()
    moved[ids] = before + weight * (smoothed - before)
    moved_points = vtkPoints()
    moved_points.SetData(numpy_to_vtk(moved, deep=True))
    result = vtkPolyData()
    result.ShallowCopy(surface)  # the same triangles, new points
    result.SetPoints(moved_points)
    return with_normals(result)


def distance_to_vertices(points: np.ndarray, surface: vtkPolyData, reach_mm: float) -> np.ndarray:
    """Distance (mm) from each of ``points`` to the nearest vertex of ``surface``, capped at ``reach_mm``:
    only the surface's vertices within reach of the points' box are looked at."""
    if surface.GetNumberOfPoints() == 0:
        return np.full(len(points), reach_mm)
    vertices = vtk_to_numpy(surface.GetPoints().GetData())
    low, high = points.min(axis=0) - reach_mm, points.max(axis=0) + reach_mm
    near = vertices[np.all((vertices >= low) & (vertices <= high), axis=1)]
    if len(near) == 0:
        return np.full(len(points), reach_mm)
    distances, _ = cKDTree(near).query(points, distance_upper_bound=reach_mm)
    return np.minimum(distances, reach_mm)


def surface_from_mask(mask: Volume, smoothing_iterations: int = SMOOTHING_ITERATIONS, decimate: float = 0.0,
                      coordinates: str = "LPS", smoothing_sigma_voxels: float = BLUR_SIGMA_VOXELS,
                      pass_band: float = PASS_BAND) -> vtkPolyData:
    """Closed triangle surface of the non-zero voxels, in LPS (default) or RAS millimetres.

    The 0.5 iso-surface of the mask blurred by ``smoothing_sigma_voxels``, then windowed-sinc smoothed
    (``smoothing_iterations``, 0 = none, with ``pass_band``: lower is smoother); ``decimate`` is the
    fraction of triangles to remove.
    """
    if coordinates not in COORDINATE_SYSTEMS:
        raise ValueError(f"coordinates must be one of {COORDINATE_SYSTEMS}")
    if not np.any(mask.array):
        return vtkPolyData()
    box = foreground_box(mask.array != 0, margin=1)
    cropped = np.pad((mask.array[box] != 0).astype(np.uint8), PAD)  # a zero border closes the surface
    start = np.array([s.start for s in box], dtype=float) - PAD

    image = image_data(cropped.astype(np.float32))

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
        surface = _windowed_sinc(surface, smoothing_iterations, pass_band)

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


def _windowed_sinc(surface: vtkPolyData, iterations: int, pass_band: float) -> vtkPolyData:
    """VTK's windowed-sinc smoothing (Slicer's surface smoothing): moves vertices only, so a closed,
    manifold surface stays so; a lower ``pass_band`` smooths more."""
    smoother = vtkWindowedSincPolyDataFilter()
    smoother.SetInputData(surface)
    smoother.SetNumberOfIterations(iterations)
    smoother.SetPassBand(pass_band)
    smoother.BoundarySmoothingOff()
    smoother.FeatureEdgeSmoothingOff()
    smoother.NonManifoldSmoothingOn()
    smoother.NormalizeCoordinatesOn()
    smoother.Update()
    return smoother.GetOutput()


def with_normals(surface: vtkPolyData) -> vtkPolyData:
    """Point normals for shading and for signed distances, from the triangles' own order.

    Marching cubes orders every triangle so that its normal points out of the mask, inner cavities
    and separate islands included, and ``transform_polydata`` keeps that order under mirroring; a
    consistency pass with auto-orientation would cost more than the surface itself and turns the
    walls of cavities inside out. Normals the surface already has are replaced: VTK's filter would
    keep them, and a surface whose vertices moved (``printable_implant_surface``) would be shaded as
    before it moved."""
    bare = vtkPolyData()
    bare.ShallowCopy(surface)
    bare.GetPointData().SetNormals(None)
    normals = vtkPolyDataNormals()
    normals.SetInputData(bare)
    normals.ComputePointNormalsOn()
    normals.ComputeCellNormalsOff()
    normals.SplittingOff()
    normals.ConsistencyOff()
    normals.AutoOrientNormalsOff()
    normals.Update()
    return normals.GetOutput()


def surface_reach_mm(mask: Volume, smoothing_iterations: int = SMOOTHING_ITERATIONS,
                     smoothing_sigma_voxels: float = BLUR_SIGMA_VOXELS) -> float:
    """How far a voxel can move the surface ``surface_from_mask`` builds: the blur's radius and one
    voxel edge to the iso-surface vertex, then one voxel diagonal per smoothing iteration (each mixes
    neighbouring vertices). Where two masks agree within this distance, their surfaces coincide."""
    voxels = math.ceil(3 * smoothing_sigma_voxels) + 1 + smoothing_iterations * math.sqrt(3)
    return float(voxels * mask.spacing.max())
