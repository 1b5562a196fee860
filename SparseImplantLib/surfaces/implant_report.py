"""What a lab checks before printing an implant: its volume and area, how thick it is, how it meets the
defect's border (gap or overlap with the skull) and whether its mesh is watertight.

Volume, area and the watertight check are taken on the implant mesh that is written (full resolution);
the thickness on the implant mask with its spacing; the border on the two surfaces (the implant mesh and
the defective skull's), in millimetres throughout. ``implant_report`` costs a fraction of a second on a
SkullFix implant (README, Implant report).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree
from vtkmodules.util.numpy_support import vtk_to_numpy
from vtkmodules.vtkCommonDataModel import vtkPolyData
from vtkmodules.vtkFiltersCore import vtkMassProperties, vtkTriangleFilter

from ..pipeline.volume import Volume, find_foreground_box
from .distances import signed_distance
from .from_masks import with_normals
from .meshes import open_edge_counts

BORDER_REACH_MM = 5.0  # skull vertices this close to the implant (either side of its surface) can be its border
FACING_COSINE = -float(np.cos(np.radians(30.0)))  # skull faces implant: normals within 30 degrees of opposite
RIDGE_VOXELS = 0.25  # ridge voxels: within this share of a voxel of the largest distance around them
WALL_COSINE = float(np.cos(np.radians(45.0)))  # two faces within 45 degrees of parallel are the sides of one wall
BORDER_PERCENTILE = 95.0


@dataclass
class ImplantReport:
    """The numbers of ``implant_report`` (mm, ml, cm²); ``to_json`` rounds them for report.json."""

    volume_ml: float
    area_cm2: float
    thickness_min_mm: Optional[float]
    thickness_median_mm: Optional[float]
    thickness_max_mm: Optional[float]
    gap_mm: Optional[float]  # None: no skull within BORDER_REACH_MM of the implant
    overlap_mm: Optional[float]
    border_vertices: int  # the skull vertices the gap and overlap were measured at
    watertight: bool
    boundary_edges: int
    non_manifold_edges: int
    seconds: float = 0.0

    def to_json(self) -> Dict[str, object]:
        def rounded(value: Optional[float], digits: int = 2) -> Optional[float]:
            return None if value is None else round(float(value), digits)

        return {
            "volume_ml": rounded(self.volume_ml, 3),
            "area_cm2": rounded(self.area_cm2),
            "thickness_mm": {"min": rounded(self.thickness_min_mm), "median": rounded(self.thickness_median_mm),
                             "max": rounded(self.thickness_max_mm)},
            "gap_mm": rounded(self.gap_mm),
            "overlap_mm": rounded(self.overlap_mm),
            "border_vertices": int(self.border_vertices),
            "watertight": bool(self.watertight),
            "boundary_edges": int(self.boundary_edges),
            "non_manifold_edges": int(self.non_manifold_edges),
            "seconds": rounded(self.seconds, 3),
        }


def implant_report(implant_surface: vtkPolyData, implant: Volume, skull_surface: vtkPolyData,
                   reach_mm: float = BORDER_REACH_MM) -> ImplantReport:
    """The report for an implant: ``implant_surface`` (the mesh to print, LPS mm), ``implant`` (its mask)
    and ``skull_surface`` (the defective skull's surface, LPS mm, with point normals as
    ``from_masks.surface_from_mask`` gives)."""
    start = time.perf_counter()
    volume_mm3, area_mm2 = mass_properties(implant_surface)
    thinnest, median, thickest = thickness_mm(implant, implant_surface)
    gap, overlap, border = border_fit_mm(implant_surface, skull_surface, reach_mm)
    edges = open_edge_counts(implant_surface)
    return ImplantReport(volume_ml=volume_mm3 / 1000.0, area_cm2=area_mm2 / 100.0, thickness_min_mm=thinnest,
                         thickness_median_mm=median, thickness_max_mm=thickest, gap_mm=gap, overlap_mm=overlap,
                         border_vertices=border, watertight=edges["boundary"] == 0 and edges["non_manifold"] == 0,
                         boundary_edges=edges["boundary"], non_manifold_edges=edges["non_manifold"],
                         seconds=time.perf_counter() - start)


def mass_properties(surface: vtkPolyData) -> Tuple[float, float]:
    """(enclosed volume in mm³, surface area in mm²) of a triangle mesh (vtkMassProperties; the volume
    is only meaningful for a closed mesh)."""
    if surface.GetNumberOfPolys() == 0:
        return 0.0, 0.0
    triangles = vtkTriangleFilter()
    triangles.SetInputData(surface)
    properties = vtkMassProperties()
    properties.SetInputConnection(triangles.GetOutputPort())
    properties.Update()
    return float(properties.GetVolume()), float(properties.GetSurfaceArea())


def local_thickness_mm(mask: Volume, surface: vtkPolyData) -> np.ndarray:
    """The wall thickness (mm) of the implant ``surface`` (the mesh to print, LPS mm, as
    ``from_masks.surface_from_mask`` builds it from ``mask``), measured across the wall where its medial
    surface passes: one value per pair of voxels found on either side of that surface.

    Why this definition: the thickness a lab means is the distance between the two faces of the wall,
    measured across it, i.e. twice the distance from the medial surface (the ridge of the distance
    transform) to the faces. "2 × the voxel distance transform at ridge voxels" is off by up to a voxel
    either way whatever constant correction is taken: the ridge falls on a voxel or between two, and
    the nearest background voxel centre lies from 0 to 1 voxel beyond a face depending on how the wall
    is tilted against the grid. So the mask says *where* the medial surface is, and the mesh that is
    printed says how far away the faces are:

    - ridge voxels: those whose Euclidean distance transform (``scipy.ndimage``, with the spacing) is
      within a quarter voxel of the largest in their 3×3×3 neighbourhood;
    - at each ridge voxel ``p`` inside the mesh: its signed distance ``φ(p)`` to the mesh (to the
      tangent plane of the nearest mesh vertex; negative inside) and that vertex's inward normal
      ``n``; ``q`` is ``p``'s neighbour (of 26) best aligned with ``n`` and ``h = (q - p)·n`` how far
      that step goes across the wall;
    - when ``q``'s nearest vertex lies on the other face (its outward normal within 45 degrees of
      ``n``: the two faces look away from each other), ``p`` and ``q`` straddle the medial surface
      (``q`` may even be outside the mesh, for a wall thinner than a step): one face is ``-φ(p)``
      behind ``p``, the other ``h - φ(q)`` ahead of it, and the thickness is ``h - φ(p) - φ(q)``,
      exact for a flat wall wherever the voxels fall (the median on axis-aligned, tilted and curved
      plates: within a quarter voxel of their thickness, Testing/test_implant_report.py).

    The 45-degree test leaves out the medial branches that run into the corners of a cut edge (faces
    meeting at 90 degrees, where the "thickness" would shrink to nothing at every square edge) and
    counts wedges sharper than 45 degrees as walls; mask voxels that the smoothed mesh leaves out
    (staircase corners, specks) are not measured."""
    box = find_foreground_box(mask.array != 0)
    if box is None or surface.GetNumberOfPoints() == 0:
        return np.zeros(0)
    if surface.GetPointData().GetNormals() is None:
        surface = with_normals(surface)
    solid = np.pad(mask.array[box] != 0, 1)  # background all round, even where the mask meets the grid's edge
    distance = ndimage.distance_transform_edt(solid, sampling=mask.spacing)
    ridge = solid & (distance >= ndimage.maximum_filter(distance, size=3) - RIDGE_VOXELS * mask.spacing.min())
    index = np.argwhere(ridge) + (np.array([b.start for b in box]) - 1)
    to_lps = mask.index_to_lps()
    vertices = vtk_to_numpy(surface.GetPoints().GetData()).astype(np.float64)
    normals = vtk_to_numpy(surface.GetPointData().GetNormals()).astype(np.float64)
    tree = cKDTree(vertices)

    def measured(voxels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(signed distance to the mesh, its nearest vertex's outward normal) at voxel indices: the
        distance to the nearest vertex's tangent plane, which stays right however close to the mesh."""
        points = voxels @ to_lps[:3, :3].T + to_lps[:3, 3]
        nearest = tree.query(points)[1]
        return np.einsum("ij,ij->i", points - vertices[nearest], normals[nearest]), normals[nearest]

    signed, normal = measured(index)
    inside = signed < 0
    index, signed, inward = index[inside], signed[inside], -normal[inside]
    step_index = inward @ np.linalg.inv(to_lps[:3, :3]).T  # the inward normal in index steps
    step = np.rint(step_index / np.abs(step_index).max(axis=1, keepdims=True))
    ahead = np.einsum("ij,ij->i", step @ to_lps[:3, :3].T, inward)
    signed_beyond, normal_beyond = measured(index + step)
    medial = np.einsum("ij,ij->i", inward, normal_beyond) > WALL_COSINE  # q's nearest face is across the wall
    return (ahead - signed - signed_beyond)[medial]


def thickness_mm(mask: Volume, surface: vtkPolyData) -> Tuple[Optional[float], Optional[float], Optional[float]]:
    """(minimum, median, maximum) of ``local_thickness_mm``; Nones for an empty mask."""
    values = local_thickness_mm(mask, surface)
    if values.size == 0:
        return None, None, None
    return float(values.min()), float(np.median(values)), float(values.max())


def border_fit_mm(implant_surface: vtkPolyData, skull_surface: vtkPolyData,
                  reach_mm: float = BORDER_REACH_MM) -> Tuple[Optional[float], Optional[float], int]:
    """(gap, overlap, border vertices): how the implant meets the defect's border, in mm.

    The border is the skull's surface where it faces the implant: the skull vertices within
    ``reach_mm`` of the implant surface whose normal is within 30 degrees of opposite to the normal of
    the nearest implant vertex (the skull's cut face and the implant's edge face look at each other; the
    skull's outer and inner tables beside the defect, parallel to the implant's faces, and the groove
    where the two parts' rounded edges meet, are not border).
    At each border vertex the signed distance to the implant surface (``distances.signed_distance``,
    vtkImplicitPolyDataDistance: positive outside the implant) is the local gap when positive and the
    local overlap (how deep the bone lies inside the implant) when negative. ``gap`` and ``overlap``
    are the 95th percentiles of max(d, 0) and max(-d, 0) over the border: the widest gap and the
    deepest overlap along the border, short of the odd vertex. A flush implant gives about 0 for both;
    an implant that leaves a gap of g mm all round gives g. Gaps and overlaps beyond ``reach_mm`` are not
    seen; (None, None, 0) when no skull vertex faces the implant within that reach.

    Only skull vertices in the implant's bounding box (plus the reach) are looked at, and only those
    facing it within reach of an implant vertex are measured exactly: a small part of a skull."""
    if implant_surface.GetNumberOfPoints() == 0 or skull_surface.GetNumberOfPoints() == 0:
        return None, None, 0
    if skull_surface.GetPointData().GetNormals() is None:
        skull_surface = with_normals(skull_surface)
    if implant_surface.GetPointData().GetNormals() is None:
        implant_surface = with_normals(implant_surface)
    implant_points = vtk_to_numpy(implant_surface.GetPoints().GetData()).astype(np.float64)
    implant_normals = vtk_to_numpy(implant_surface.GetPointData().GetNormals())
    skull_points = vtk_to_numpy(skull_surface.GetPoints().GetData())
    bounds = np.array(implant_surface.GetBounds()).reshape(3, 2)
    slack = reach_mm + _longest_edge_mm(implant_surface)  # a point within reach of a triangle is this near a vertex
    candidates = np.arange(len(skull_points))
    for axis in range(3):  # axis by axis: each test on the few that passed the last
        values = skull_points[candidates, axis] if axis else skull_points[:, 0]
        candidates = candidates[(values >= bounds[axis, 0] - slack) & (values <= bounds[axis, 1] + slack)]
    if candidates.size == 0:
        return None, None, 0
    near, closest = cKDTree(implant_points).query(skull_points[candidates], distance_upper_bound=slack)
    found = np.isfinite(near)
    candidates, closest = candidates[found], closest[found]
    skull_normals = vtk_to_numpy(skull_surface.GetPointData().GetNormals())[candidates]
    facing = np.einsum("ij,ij->i", skull_normals, implant_normals[closest]) < FACING_COSINE
    candidates = candidates[facing]
    if candidates.size == 0:
        return None, None, 0
    where = np.zeros(skull_surface.GetNumberOfPoints(), dtype=bool)
    where[candidates] = True
    distances = signed_distance(skull_surface, implant_surface, where)[candidates]
    border = distances[np.abs(distances) <= reach_mm]
    if border.size == 0:
        return None, None, 0
    gap = float(np.percentile(np.maximum(border, 0.0), BORDER_PERCENTILE))
    overlap = float(np.percentile(np.maximum(-border, 0.0), BORDER_PERCENTILE))
    return gap, overlap, int(border.size)


def _longest_edge_mm(surface: vtkPolyData) -> float:
    """The longest triangle edge of a triangle surface (0 for one without triangles)."""
    if surface.GetNumberOfPolys() == 0:
        return 0.0
    points = vtk_to_numpy(surface.GetPoints().GetData())
    offsets = vtk_to_numpy(surface.GetPolys().GetOffsetsArray())
    connectivity = vtk_to_numpy(surface.GetPolys().GetConnectivityArray())
    if not (np.diff(offsets) == 3).all():
        return float(np.linalg.norm(np.ptp(points, axis=0)))  # not triangles: every vertex may be needed
    triangles = points[connectivity.reshape(-1, 3)]
    edges = triangles - np.roll(triangles, 1, axis=1)
    return float(np.sqrt(np.einsum("ijk,ijk->ij", edges, edges).max()))
