"""The implant report a lab checks before printing: thickness, border gap and overlap, volume, area and
watertightness, on small synthetic implants of known size (each test a fraction of a second)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from vtkmodules.util.numpy_support import numpy_to_vtk, numpy_to_vtkIdTypeArray, vtk_to_numpy
from vtkmodules.vtkCommonCore import vtkPoints
from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkPolyData
from vtkmodules.vtkFiltersGeneral import vtkCurvatures

from conftest import oblique_direction
from SparseImplantLib.pipeline.volume import Volume
from SparseImplantLib.surfaces.from_masks import distance_to_vertices, printable_implant_surface, surface_from_mask, without_specks
from SparseImplantLib.surfaces.implant_report import border_fit_mm, implant_report, local_thickness_mm, mass_properties

CT_SPACING = (0.48, 0.48, 0.63)  # a head CT's grid (SkullFix: 0.48 x 0.48 x 0.63 mm)


def grid_points(spacing, extent_mm, low_mm=(0.0, 0.0, 0.0)):
    """(shape, the voxel centres in mm as an (n, 3) array) of a box ``extent_mm`` wide from ``low_mm``."""
    spacing = np.asarray(spacing, float)
    shape = tuple(int(n) for n in np.ceil(np.asarray(extent_mm) / spacing))
    return shape, np.indices(shape).reshape(3, -1).T * spacing + low_mm


def tilted_plate(thickness, spacing, normal, size=24.0, direction=np.eye(3)) -> Volume:
    """A round plate ``thickness`` mm thick across ``normal`` (in index axes times spacing), 0.8 ×
    ``size`` mm wide."""
    shape, points = grid_points(spacing, (size, size, size), -np.full(3, size / 2))
    normal = np.asarray(normal, float) / np.linalg.norm(normal)
    across = points @ normal
    lateral = np.linalg.norm(points - np.outer(across, normal), axis=1)
    mask = (np.abs(across) < thickness / 2) & (lateral < 0.4 * size)
    return Volume(mask.reshape(shape).astype(np.uint8), spacing, (5.0, -3.0, 2.0), direction)


def skull_with_hole(implant_radius, spacing=(0.5, 0.5, 0.5), thickness=5.0, radius=40.0, hole=12.0):
    """(defective, implant): a skull-like spherical shell ``thickness`` mm thick, with a cylindrical hole of
    radius ``hole`` mm at its top, and an implant: the shell within ``implant_radius`` of the axis. A
    smaller radius leaves a gap of ``hole - implant_radius`` mm all round, a larger one overlaps the bone."""
    low = np.sqrt((radius - thickness / 2) ** 2 - 2 * 18.0 ** 2) - 1
    shape, points = grid_points(spacing, (36.0, 36.0, radius + thickness / 2 + 1 - low), (-18.0, -18.0, low))
    from_centre = np.linalg.norm(points, axis=1)
    from_axis = np.hypot(points[:, 0], points[:, 1])
    bone = (np.abs(from_centre - radius) < thickness / 2) & (from_axis < 17.0)
    geometry = dict(spacing=spacing, origin=(-30.0, 12.0, 40.0), direction=oblique_direction())
    defective = Volume((bone & (from_axis >= hole)).reshape(shape).astype(np.uint8), **geometry)
    implant = Volume((bone & (from_axis < implant_radius)).reshape(shape).astype(np.uint8), **geometry)
    return defective, implant


def surfaces(defective: Volume, implant: Volume):
    skull_surface = surface_from_mask(defective)
    return skull_surface, printable_implant_surface(implant, skull_surface)


@pytest.mark.parametrize("voxels", [7, 8])
def test_thickness_of_a_flat_plate_is_its_voxels_across(voxels):
    """Odd and even counts of voxels across (2 × the distance transform at the ridge would be a voxel
    off for one of them), along the CT grid's coarse axis."""
    spacing = np.array(CT_SPACING)
    mask = np.zeros((46, 44, 20), np.uint8)
    mask[3:43, 4:40, 5:5 + voxels] = 1
    plate = Volume(mask, spacing, (0.0, 0.0, 0.0), oblique_direction())
    values = local_thickness_mm(plate, surface_from_mask(plate))
    expected = voxels * spacing[2]
    half_voxel = spacing.min() / 2
    assert values.size > 100
    assert np.median(values) == pytest.approx(expected, abs=half_voxel)
    assert values.min() > expected - half_voxel and values.max() < expected + half_voxel


@pytest.mark.parametrize("thickness", [3.0, 5.0])
def test_thickness_of_a_tilted_plate(thickness):
    plate = tilted_plate(thickness, CT_SPACING, (0.3, -0.2, 1.0), direction=oblique_direction(20.0))
    values = local_thickness_mm(plate, surface_from_mask(plate))
    half_voxel = min(CT_SPACING) / 2
    assert np.median(values) == pytest.approx(thickness, abs=half_voxel)
    assert np.percentile(values, 1) > thickness - 2 * half_voxel  # no corner of the cut edge counts as thin


def test_report_of_a_curved_implant_flush_with_the_skull():
    defective, implant = skull_with_hole(12.0, spacing=CT_SPACING)
    skull_surface, implant_surface = surfaces(defective, implant)
    report = implant_report(implant_surface, implant, skull_surface)
    voxel = min(CT_SPACING)
    assert report.thickness_median_mm == pytest.approx(5.0, abs=voxel / 2)
    assert 5.0 - 2 * voxel < report.thickness_min_mm <= report.thickness_median_mm
    assert report.thickness_median_mm <= report.thickness_max_mm < 5.0 + 2 * voxel
    assert report.gap_mm < voxel / 2 and report.overlap_mm < voxel / 2 and report.border_vertices > 100
    voxels_ml = implant.array.sum() * implant.voxel_volume_mm3 / 1000.0
    assert report.volume_ml == pytest.approx(voxels_ml, rel=0.03)
    # Two spherical caps (radius 40 ± 2.5 mm) over a 12 mm circle, and the cylinder of the cut between them.
    heights = {r: np.sqrt(r ** 2 - 12.0 ** 2) for r in (37.5, 42.5)}
    caps = sum(2 * np.pi * r * (r - height) for r, height in heights.items())
    edge = 2 * np.pi * 12.0 * (heights[42.5] - heights[37.5])
    assert report.area_cm2 == pytest.approx((caps + edge) / 100.0, rel=0.05)
    assert report.watertight and report.boundary_edges == report.non_manifold_edges == 0
    numbers = report.to_json()
    assert json.loads(json.dumps(numbers)) == numbers
    assert set(numbers["thickness_mm"]) == {"min", "median", "max"} and numbers["watertight"] is True
    assert numbers["gap_mm"] == round(report.gap_mm, 2) and numbers["volume_ml"] == round(report.volume_ml, 3)


@pytest.mark.parametrize("gap", [1.0, 2.0])
def test_an_implant_short_of_the_border_by_a_gap(gap):
    """A uniform gap: its 95th percentile along the border is the gap within half a voxel, and nothing
    overlaps."""
    defective, implant = skull_with_hole(12.0 - gap)
    result_gap, overlap, border = border_fit_mm(*reversed(surfaces(defective, implant)))
    assert result_gap == pytest.approx(gap, abs=0.25) and overlap < 0.25 and border > 100


@pytest.mark.parametrize("depth", [1.0, 1.5])
def test_an_implant_overlapping_the_bone(depth):
    defective, implant = skull_with_hole(12.0 + depth)
    gap, overlap, border = border_fit_mm(*reversed(surfaces(defective, implant)))
    assert overlap == pytest.approx(depth, abs=0.25) and gap < 0.25 and border > 100


def test_no_border_when_the_skull_is_out_of_reach():
    defective, implant = skull_with_hole(5.0)  # 7 mm from the hole's rim
    assert border_fit_mm(*reversed(surfaces(defective, implant)), reach_mm=5.0) == (None, None, 0)


def _polydata(points: np.ndarray, triangles: np.ndarray) -> vtkPolyData:
    surface = vtkPolyData()
    vertices = vtkPoints()
    vertices.SetData(numpy_to_vtk(np.ascontiguousarray(points, dtype=np.float64), deep=True))
    surface.SetPoints(vertices)
    cells = vtkCellArray()
    cells.SetData(numpy_to_vtkIdTypeArray(np.arange(0, 3 * len(triangles) + 1, 3, dtype=np.int64), deep=True),
                  numpy_to_vtkIdTypeArray(np.ascontiguousarray(triangles, dtype=np.int64).reshape(-1), deep=True))
    surface.SetPolys(cells)
    return surface


def test_open_and_non_manifold_meshes_are_not_watertight():
    defective, implant = skull_with_hole(12.0)
    skull_surface, closed = surfaces(defective, implant)
    points = vtk_to_numpy(closed.GetPoints().GetData())
    triangles = vtk_to_numpy(closed.GetPolys().GetConnectivityArray()).reshape(-1, 3)
    holed = _polydata(points, triangles[10:])  # ten triangles cut out
    report = implant_report(holed, implant, skull_surface)
    assert not report.watertight and report.boundary_edges > 0 and report.non_manifold_edges == 0
    assert report.to_json()["watertight"] is False
    # A fin on one edge: three triangles share it.
    fin = _polydata(np.vstack([points, points[triangles[0, :2]].mean(axis=0) + 3.0]),
                    np.vstack([triangles, [[triangles[0, 0], triangles[0, 1], len(points)]]]))
    report = implant_report(fin, implant, skull_surface)
    assert not report.watertight and report.non_manifold_edges == 1


def test_volume_and_area_of_a_box():
    """vtkMassProperties on a closed mesh: a 10 x 8 x 6 mm box of two triangles a face."""
    corners = np.array([[x, y, z] for x in (0, 10) for y in (0, 8) for z in (0, 6)], float)
    faces = [[0, 1, 3, 2], [4, 6, 7, 5], [0, 4, 5, 1], [2, 3, 7, 6], [0, 2, 6, 4], [1, 5, 7, 3]]
    triangles = np.array([[a, b, c] for a, b, c, d in faces] + [[a, c, d] for a, b, c, d in faces])
    volume, area = mass_properties(_polydata(corners, triangles))
    assert volume == pytest.approx(480.0) and area == pytest.approx(2 * (80 + 60 + 48))


@pytest.mark.parametrize("empty", [False, True])
def test_generate_puts_the_report_in_report_json(tmp_path, monkeypatch, model_dir, empty):
    """``generate`` with the network stood in for by a known implant (flush, 5 mm thick); none for an
    empty implant."""
    import torch

    from SparseImplantLib.pipeline import generate as pipeline
    from SparseImplantLib.pipeline.design import Design
    from SparseImplantLib.pipeline.io import write_volume

    defective, implant = skull_with_hole(12.0)

    def design(skull, networks, device, progress=None, clock=None, test_time_augmentation=True, straighten=True,
               method="auto", on_cut=None):  # never calls on_cut: generate starts the surfaces itself
        added = np.zeros_like(implant.array) if empty else implant.array
        return Design(skull.with_array(((skull.array > 0) | (added > 0)).astype(np.uint8)),
                               skull.with_array(added), torch.device("cpu"))

    monkeypatch.setattr(pipeline, "design_implant", design)
    options = pipeline.GenerateOptions(device="cpu", model_dir=model_dir, refine_model="none", preview=False)
    report = pipeline.generate(write_volume(tmp_path / "defective.nrrd", defective), tmp_path / "out", options)
    written = json.loads((tmp_path / "out" / "report.json").read_text())
    assert written["implant_report"] == report["implant_report"]
    if empty:
        assert report["implant_report"] is None
        return
    fit = report["implant_report"]
    assert fit["thickness_mm"]["median"] == pytest.approx(5.0, abs=0.25)
    assert fit["gap_mm"] < 0.25 and fit["overlap_mm"] < 0.25 and fit["watertight"] is True
    assert fit["volume_ml"] == pytest.approx(report["implant_volume_ml"], rel=0.03) and fit["seconds"] < 5


def median_mean_curvature(surface, skull_surface, from_skull_mm=5.0) -> float:
    """Median |mean curvature| (1/mm) of the vertices at least ``from_skull_mm`` from the skull: a smooth
    cap of radius R gives 1/R, voxel steps many times more."""
    curvatures = vtkCurvatures()
    curvatures.SetInputData(surface)
    curvatures.SetCurvatureTypeToMean()
    curvatures.Update()
    values = np.abs(vtk_to_numpy(curvatures.GetOutput().GetPointData().GetArray("Mean_Curvature")))
    points = vtk_to_numpy(surface.GetPoints().GetData()).astype(float)
    return float(np.median(values[distance_to_vertices(points, skull_surface, from_skull_mm) >= from_skull_mm]))


def test_the_printed_implant_is_smooth_where_its_mask_is_stepped_and_fits_the_border_as_before():
    """Issue 29, item 2: a cap cut from spherical shells of radius 37.5 and 42.5 mm, on a CT grid: the
    skulls' light smoothing leaves its voxel steps (curvature many times 1/R); the printed surface is as
    curved as the spheres, and keeps the border gap, overlap and watertightness of the light one."""
    defective, implant = skull_with_hole(16.0, spacing=CT_SPACING, hole=16.0)
    skull_surface = surface_from_mask(defective)
    stepped = without_specks(surface_from_mask(implant))
    printed = printable_implant_surface(implant, skull_surface)
    sphere = 1 / 40.0
    assert median_mean_curvature(stepped, skull_surface) > 3 * sphere
    assert median_mean_curvature(printed, skull_surface) == pytest.approx(sphere, rel=0.3)
    assert border_fit_mm(printed, skull_surface) == border_fit_mm(stepped, skull_surface)
    assert implant_report(printed, implant, skull_surface).watertight


def test_a_completed_skull_is_smoothed_around_its_implant_only():
    """The views show the completed skull's added bone as smooth as the printed implant: vertices beyond
    the implant's region keep their places exactly, the cap within it loses its voxel steps."""
    from SparseImplantLib.surfaces.from_masks import smoothed_away_from

    defective, implant = skull_with_hole(12.0, spacing=CT_SPACING, hole=12.0)
    completed = defective.with_array(((defective.array > 0) | (implant.array > 0)).astype(np.uint8))
    skull_surface, stepped = surface_from_mask(defective), surface_from_mask(completed)
    bounds = np.array(printable_implant_surface(implant, skull_surface).GetBounds()).reshape(3, 2)
    region = (bounds[:, 0] - 2.0, bounds[:, 1] + 2.0)
    smoothed = smoothed_away_from(stepped, skull_surface, region)
    before = vtk_to_numpy(stepped.GetPoints().GetData())
    after = vtk_to_numpy(smoothed.GetPoints().GetData())
    outside = ~np.all((before >= region[0]) & (before <= region[1]), axis=1)
    assert outside.sum() > 1000 and np.array_equal(before[outside], after[outside])
    assert median_mean_curvature(stepped, skull_surface) > 3 / 40.0
    assert median_mean_curvature(smoothed, skull_surface) == pytest.approx(1 / 40.0, rel=0.3)
