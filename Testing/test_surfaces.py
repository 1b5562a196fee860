"""Surfaces in physical coordinates, closed and manifold (geometry); display meshes as closed and manifold
as the surfaces they lighten (display_meshes); signed distances (distances); export round trips (meshes)."""

from __future__ import annotations

import numpy as np
import pytest
from vtkmodules.util.numpy_support import numpy_to_vtk, vtk_to_numpy
from vtkmodules.vtkCommonCore import vtkPoints
from vtkmodules.vtkCommonDataModel import vtkPolyData

from conftest import oblique_direction, shell_skull
from SparseImplantLib.contract import DISTANCE_ARRAY
from SparseImplantLib.errors import SparseImplantError
from SparseImplantLib.pipeline.volume import Volume
from SparseImplantLib.surfaces import display_meshes, distances, from_masks, meshes


def box_mask(shape=(30, 28, 26), low=(8, 7, 6), high=(20, 19, 16)) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[low[0]:high[0], low[1]:high[1], low[2]:high[2]] = 1
    return mask


def oblique_volume(mask: np.ndarray) -> Volume:
    return Volume(mask, spacing=(0.8, 0.6, 1.2), origin=(-12.0, 30.0, 4.0), direction=oblique_direction(20.0))


def test_surface_is_closed_manifold_and_outward():
    _, implant = shell_skull()
    surface = from_masks.surface_from_mask(oblique_volume(implant))
    assert meshes.open_edge_counts(surface) == {"boundary": 0, "non_manifold": 0}
    assert meshes.enclosed_volume_mm3(surface) > 0


def test_normals_follow_vertices_that_moved():
    """``with_normals`` on a surface that already has normals (moved since: the printed implant is
    smoothed after its normals were made) gives the normals of where its vertices are now."""
    surface = from_masks.surface_from_mask(oblique_volume(box_mask()))
    points = vtk_to_numpy(surface.GetPoints().GetData()).astype(np.float64)
    sheared = vtkPolyData()
    sheared.DeepCopy(surface)
    moved = points.copy()
    moved[:, 2] += 0.8 * points[:, 0]  # a shear turns every face's normal
    sheared.GetPoints().SetData(numpy_to_vtk(moved, deep=True))
    renewed = vtk_to_numpy(from_masks.with_normals(sheared).GetPointData().GetNormals())
    bare = vtkPolyData()
    bare.DeepCopy(sheared)
    bare.GetPointData().SetNormals(None)
    fresh = vtk_to_numpy(from_masks.with_normals(bare).GetPointData().GetNormals())
    old = vtk_to_numpy(surface.GetPointData().GetNormals())
    np.testing.assert_allclose(renewed, fresh, atol=1e-6)
    assert np.mean(np.sum(renewed * old, axis=1)) < 0.95
    assert surface.GetPointData().GetNormals() is not None  # the input keeps its own


def test_surface_sits_at_the_mask_in_physical_space():
    volume = oblique_volume(box_mask())
    surface = from_masks.surface_from_mask(volume, smoothing_iterations=0)
    voxels = np.argwhere(volume.array)
    centre_index = voxels.mean(axis=0)
    expected_centre = volume.index_to_lps() @ np.append(centre_index, 1.0)
    points = np.array([surface.GetPoint(i) for i in range(surface.GetNumberOfPoints())])
    assert np.linalg.norm(points.mean(axis=0) - expected_centre[:3]) < 0.6
    expected_volume = voxels.shape[0] * volume.voxel_volume_mm3
    assert meshes.enclosed_volume_mm3(surface) == pytest.approx(expected_volume, rel=0.08)
    ras = from_masks.surface_from_mask(volume, smoothing_iterations=0, coordinates="RAS")
    assert np.allclose(np.array(ras.GetPoint(0))[:2], -np.array(surface.GetPoint(0))[:2])


def test_signed_distance_sign_and_size():
    inner = oblique_volume(box_mask(low=(10, 9, 8), high=(18, 17, 14)))
    outer = oblique_volume(box_mask())
    inner_surface = from_masks.surface_from_mask(inner, smoothing_iterations=0)
    outer_surface = from_masks.surface_from_mask(outer, smoothing_iterations=0)
    inside = distances.signed_distance(inner_surface, outer_surface)
    outside = distances.signed_distance(outer_surface, inner_surface)
    assert (inside < 0).mean() > 0.99 and (outside > 0).mean() > 0.99
    # The boxes are two voxels apart on every side: 1.2-2.4 mm depending on the axis.
    assert 1.0 < np.median(np.abs(inside)) < 2.6
    stats = distances.distance_statistics(outside)
    assert stats["mean_signed"] > 0 and stats["max_abs"] >= stats["p95_abs"] >= 0
    with_array = distances.add_signed_distance(outer_surface, inner_surface)
    assert with_array.GetPointData().GetScalars().GetName() == DISTANCE_ARRAY


def triangle_areas(surface: vtkPolyData) -> np.ndarray:
    points = vtk_to_numpy(surface.GetPoints().GetData()).astype(np.float64)
    corners = points[vtk_to_numpy(surface.GetPolys().GetConnectivityArray()).reshape(-1, 3)]
    return 0.5 * np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1)


def test_zero_area_triangles_leave_the_distances_unchanged():
    """A reference with triangles whose corners lie on one line (the display meshes had some) gives
    the distances of the same surface without them."""
    outer = from_masks.surface_from_mask(oblique_volume(box_mask()), smoothing_iterations=0)
    inner = from_masks.surface_from_mask(oblique_volume(box_mask(low=(10, 9, 8), high=(18, 17, 14))), smoothing_iterations=0)
    points = vtk_to_numpy(outer.GetPoints().GetData())
    triangles = vtk_to_numpy(outer.GetPolys().GetConnectivityArray()).reshape(-1, 3)
    a, b = triangles[0, 0], triangles[0, 1]
    midpoint = len(points)  # a new vertex halfway along an edge: triangles (a, midpoint, b) have no area
    with_slivers = vtkPolyData()
    with_slivers.SetPoints(vtkPoints())
    with_slivers.GetPoints().SetData(numpy_to_vtk(np.vstack([points, (points[a] + points[b]) / 2]), deep=True))
    slivers = np.tile([a, midpoint, b], (5, 1))
    with_slivers.SetPolys(meshes.triangle_cells(np.vstack([triangles, slivers])))
    assert (triangle_areas(with_slivers) < 1e-9).sum() == 5
    cleaned = meshes.without_zero_area_triangles(with_slivers)
    assert cleaned.GetNumberOfCells() == len(triangles)
    np.testing.assert_allclose(distances.signed_distance(inner, with_slivers), distances.signed_distance(inner, outer), atol=1e-9)


def test_distance_searched_near_changes_equals_the_full_search():
    # A plate larger than twice the surfaces' reach (about 38 voxels), with a hole cut near one corner.
    plate = np.zeros((130, 130, 12), np.uint8)
    plate[3:127, 3:127, 3:9] = 1
    holed = plate.copy()
    holed[10:30, 10:30, 3:9] = 0
    complete, defective = oblique_volume(plate), oblique_volume(holed)
    complete_surface, defective_surface = from_masks.surface_from_mask(complete), from_masks.surface_from_mask(defective)
    near = distances.NearChanges(complete, defective).at(complete_surface)
    assert 0.05 < near.mean() < 0.9
    full = distances.signed_distance(complete_surface, defective_surface)
    assert np.abs(full[~near]).max() < 1e-3  # beyond the reach both surfaces coincide
    assert np.abs(full[near]).max() > 1.0  # the hole's floor lies millimetres from the plate's surface
    np.testing.assert_allclose(distances.signed_distance(complete_surface, defective_surface, where=near), full, atol=1e-3)
    assert not distances.NearChanges(complete, complete).at(complete_surface).any()
    elsewhere = Volume(holed, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=np.eye(3))  # another grid
    assert distances.NearChanges(complete, elsewhere).at(complete_surface).all()


@pytest.mark.parametrize("suffix", [".stl", ".obj", ".ply", ".vtk", ".vtp"])
def test_export_round_trip_keeps_bounds_and_volume(tmp_path, suffix):
    _, implant = shell_skull()
    volume = oblique_volume(implant)
    surface = distances.add_signed_distance(from_masks.surface_from_mask(volume), from_masks.surface_from_mask(volume))
    path = meshes.export_mesh(surface, tmp_path / f"implant{suffix}")
    loaded = meshes.read_mesh(path)
    voxel = float(max(volume.spacing))
    assert np.allclose(loaded.GetBounds(), surface.GetBounds(), atol=voxel)
    expected = implant.sum() * volume.voxel_volume_mm3
    assert meshes.enclosed_volume_mm3(loaded) == pytest.approx(expected, rel=0.15)
    # The physical extent of the mask, within one voxel.
    corners = volume.index_to_lps() @ np.c_[np.argwhere(implant), np.ones(int(implant.sum()))].T
    assert np.allclose(np.array(loaded.GetBounds())[::2], corners[:3].min(axis=1), atol=voxel)
    assert np.allclose(np.array(loaded.GetBounds())[1::2], corners[:3].max(axis=1), atol=voxel)
    if suffix in (".vtk", ".vtp"):
        np.testing.assert_array_equal(vtk_to_numpy(loaded.GetPointData().GetArray(DISTANCE_ARRAY)),
                                      vtk_to_numpy(surface.GetPointData().GetArray(DISTANCE_ARRAY)))
    assert [p.name for p in tmp_path.iterdir()] == [f"implant{suffix}"]


def test_ras_export_flips_x_and_y(tmp_path):
    volume = oblique_volume(box_mask())
    surface = from_masks.surface_from_mask(volume)
    lps = meshes.read_mesh(meshes.export_mesh(surface, tmp_path / "lps.stl"))
    ras = meshes.read_mesh(meshes.export_mesh(surface, tmp_path / "ras.stl", coordinates="RAS"))
    b_lps, b_ras = np.array(lps.GetBounds()), np.array(ras.GetBounds())
    assert np.allclose(b_ras[:4], [-b_lps[1], -b_lps[0], -b_lps[3], -b_lps[2]], atol=1e-3)
    assert np.allclose(b_ras[4:], b_lps[4:], atol=1e-3)


def test_unsupported_export_format(tmp_path):
    surface = from_masks.surface_from_mask(oblique_volume(box_mask()))
    with pytest.raises(SparseImplantError, match="cannot export meshes as '.fbx'"):
        meshes.export_mesh(surface, tmp_path / "implant.fbx")


def test_empty_mask_gives_empty_surface():
    assert from_masks.surface_from_mask(oblique_volume(np.zeros((5, 5, 5), np.uint8))).GetNumberOfPoints() == 0


@pytest.mark.parametrize("mirrored", [False, True])
def test_normals_point_out_of_the_bone_around_cavities_and_islands(mirrored):
    grid = np.indices((44, 44, 44)).astype(float)
    radius = np.sqrt(((grid - 20.0) ** 2).sum(axis=0))
    mask = (radius < 14) & (radius >= 6)  # a ball with a cavity inside
    mask |= np.sqrt(((grid - 38.0) ** 2).sum(axis=0)) < 3  # and a separate island
    direction = np.diag([-1.0, 1.0, 1.0]) if mirrored else oblique_direction(20.0)
    volume = Volume(mask.astype(np.uint8), spacing=(0.8, 0.6, 1.2), origin=(5.0, -3.0, 2.0), direction=direction)
    surface = from_masks.surface_from_mask(volume)
    points = vtk_to_numpy(surface.GetPoints().GetData())
    normals = vtk_to_numpy(surface.GetPointData().GetNormals())
    to_index = np.linalg.inv(volume.index_to_lps())
    ahead = np.rint((points + 0.8 * normals) @ to_index[:3, :3].T + to_index[:3, 3]).astype(int)
    behind = np.rint((points - 0.8 * normals) @ to_index[:3, :3].T + to_index[:3, 3]).astype(int)
    assert not mask[tuple(ahead.T)].any()  # a step along the normal leaves the bone, in the cavity too
    assert mask[tuple(behind.T)].mean() > 0.97  # and a step back is in it (a few thin spots aside)


def test_display_mesh_is_lighter_and_close_and_keeps_both_sides_of_thin_bone():
    plate = np.zeros((60, 60, 14), np.uint8)
    plate[4:56, 4:56, 6:8] = 1  # two voxels thick: thinner than a display cell
    volume = Volume(plate, spacing=(0.5, 0.5, 0.5), origin=(0.0, 0.0, 0.0), direction=oblique_direction(20.0))
    full = from_masks.surface_from_mask(volume)
    full = distances.add_signed_distance(full, from_masks.surface_from_mask(volume, smoothing_iterations=0))
    shown = display_meshes.display_mesh(full)
    assert shown.GetNumberOfCells() < 0.4 * full.GetNumberOfCells()
    assert triangle_areas(shown).min() > 1e-6
    assert np.abs(distances.signed_distance(full, shown)).max() <= display_meshes.DISPLAY_TOLERANCE_MM
    # Its vertices are vertices of the surface, with their normals and distances.
    points, shown_points = vtk_to_numpy(full.GetPoints().GetData()), vtk_to_numpy(shown.GetPoints().GetData())
    index = {tuple(point): n for n, point in enumerate(points)}
    source = np.array([index[tuple(point)] for point in shown_points])
    for name in (DISTANCE_ARRAY, "Normals"):
        np.testing.assert_array_equal(vtk_to_numpy(shown.GetPointData().GetArray(name)),
                                      vtk_to_numpy(full.GetPointData().GetArray(name))[source])
    # Both faces of the plate are kept: normals point both ways along its thickness.
    across = vtk_to_numpy(shown.GetPointData().GetNormals()) @ volume.direction[:, 2]
    assert (across > 0.9).sum() > 100 and (across < -0.9).sum() > 100
    assert display_meshes.display_mesh(vtkPolyData()).GetNumberOfPoints() == 0


def edges_pair_up(surface: vtkPolyData) -> bool:
    """Whether every edge has exactly two triangles running opposite ways along it (closed, manifold
    and consistently oriented: vtkFeatureEdges counts the triangles but not their ways)."""
    triangles = vtk_to_numpy(surface.GetPolys().GetConnectivityArray()).reshape(-1, 3)
    start, end = triangles.reshape(-1), triangles[:, [1, 2, 0]].reshape(-1)
    forward = {tuple(edge) for edge in np.stack([start, end], axis=1)}
    return len(forward) == len(start) and forward == {tuple(edge) for edge in np.stack([end, start], axis=1)}


def porous_plate() -> Volume:
    """A plate 3 mm thick with a seeded sixth of its voxels missing: pits, tunnels, struts and specks
    smaller than a display cell, as a skull's thin and porous bone has."""
    plate = np.zeros((60, 60, 16), bool)
    plate[4:56, 4:56, 5:11] = True
    plate &= np.random.default_rng(0).random(plate.shape) >= 0.15
    return Volume(plate.astype(np.uint8), spacing=(0.5, 0.5, 0.5), origin=(0.0, 0.0, 0.0),
                  direction=oblique_direction(20.0))


def test_display_mesh_is_closed_and_manifold_where_clusters_would_break_the_surface():
    """Clustering alone left holes and fins here (76 open and 103 non-manifold edges, the dark specks
    of the 3D views); the clusters that break the surface are split until none does."""
    full = from_masks.surface_from_mask(porous_plate())
    assert meshes.open_edge_counts(full) == {"boundary": 0, "non_manifold": 0}
    shown = display_meshes.display_mesh(full)
    assert meshes.open_edge_counts(shown) == {"boundary": 0, "non_manifold": 0}
    assert edges_pair_up(full) and edges_pair_up(shown)
    assert shown.GetNumberOfCells() < 0.3 * full.GetNumberOfCells()
    assert meshes.without_zero_area_triangles(shown).GetNumberOfCells() == shown.GetNumberOfCells()
    assert np.abs(distances.signed_distance(full, shown)).max() <= display_meshes.DISPLAY_TOLERANCE_MM
    assert meshes.enclosed_volume_mm3(shown) == pytest.approx(meshes.enclosed_volume_mm3(full), rel=0.05)


def test_display_mesh_of_voxels_meeting_only_at_corners_is_the_surface_itself():
    """Where no cluster can be merged without breaking the surface (blobs that meet only at corners
    and edges), the copy is the full-resolution surface, closed and manifold, rather than a broken one."""
    blobs = (np.indices((16, 16, 16)).sum(axis=0) % 2 == 0) & np.pad(np.ones((10, 10, 10), bool), 3)
    full = from_masks.surface_from_mask(Volume(blobs.astype(np.uint8), spacing=(0.5, 0.5, 0.5), origin=(0.0, 0.0, 0.0),
                                             direction=oblique_direction(20.0)))
    shown = display_meshes.display_mesh(full)
    assert meshes.open_edge_counts(shown) == {"boundary": 0, "non_manifold": 0} and edges_pair_up(shown)
    assert shown.GetNumberOfCells() <= full.GetNumberOfCells()
