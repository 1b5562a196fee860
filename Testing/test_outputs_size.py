"""Issue 24 on the sample skull: the default outputs stay under the size bound, the implant mesh is
the full-resolution one, and the whole skulls' display meshes (as written) stay within their stated
distance of the full-resolution surfaces, both ways. Every mesh written is closed and manifold (the
display meshes had thousands of open and non-manifold edges, dark specks in the 3D views)."""

from __future__ import annotations

import numpy as np
import pytest
from vtkmodules.vtkFiltersCore import vtkCellCenters, vtkPolyDataConnectivityFilter

from conftest import SAMPLE_DEFECTIVE
from SparseImplantLib import contract
from SparseImplantLib.bench.generate import TARGET_MEGABYTES
from SparseImplantLib.cli import build_parser
from SparseImplantLib.outputs import MANIFEST
from SparseImplantLib.pipeline.generate import GenerateOptions, generate, output_names
from SparseImplantLib.pipeline.io import read_mask, read_volume
from SparseImplantLib.surfaces import display_meshes, distances, from_masks, meshes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sample_outputs(tmp_path_factory):
    """``generate`` on the sample with the defaults (STL meshes, preview), as ``make demo`` runs it."""
    folder = tmp_path_factory.mktemp("sample") / "out"
    generate(SAMPLE_DEFECTIVE, folder, GenerateOptions(device="cpu"))
    return folder


def test_default_outputs_stay_under_the_size_bound(sample_outputs):
    sizes = {path.name: path.stat().st_size for path in sample_outputs.iterdir()}
    assert set(sizes) == set(output_names(("stl",))) | {MANIFEST}
    assert sum(sizes.values()) <= TARGET_MEGABYTES * 1e6, sizes


def test_implant_mesh_is_full_resolution_in_one_piece(sample_outputs):
    written = meshes.read_mesh(sample_outputs / "implant.stl")
    full = from_masks.surface_from_mask(read_volume(sample_outputs / "implant.nrrd"))
    pieces = vtkPolyDataConnectivityFilter()
    pieces.SetInputData(written)
    pieces.SetExtractionModeToAllRegions()
    pieces.Update()
    assert pieces.GetNumberOfExtractedRegions() == 1  # no speck beside the implant (the sample's had one)
    assert written.GetNumberOfCells() == from_masks.without_specks(full).GetNumberOfCells()


@pytest.mark.parametrize("mesh", [contract.mesh_file(stem, "stl") for stem in contract.MESH_STEMS]
                         + [contract.DISTANCE_MAP_FILE])
def test_every_mesh_written_is_closed_and_manifold(sample_outputs, mesh):
    assert meshes.open_edge_counts(meshes.read_mesh(sample_outputs / mesh)) == {"boundary": 0, "non_manifold": 0}


@pytest.mark.parametrize("mesh, mask", [("completed_skull.stl", "completed_skull.nrrd"), ("defective_skull.stl", None)])
def test_display_meshes_stay_within_their_stated_distance(sample_outputs, mesh, mask):
    """Against the full-resolution surface each came from: the defective skull's, and the completed
    skull's with its added bone smoothed as the printed implant is (``completed_skull_surface``)."""
    full = from_masks.surface_from_mask(read_mask(SAMPLE_DEFECTIVE))
    if mask:
        implant = from_masks.printable_implant_surface(read_mask(sample_outputs / "implant.nrrd"), full)
        full = from_masks.completed_skull_surface(read_mask(sample_outputs / mask), full, implant)
    shown = meshes.read_mesh(sample_outputs / mesh)
    assert shown.GetNumberOfCells() < 0.25 * full.GetNumberOfCells()
    assert meshes.without_zero_area_triangles(shown).GetNumberOfCells() == shown.GetNumberOfCells()
    # Every full-resolution vertex lies near the display mesh, and every display triangle (its vertices
    # are full-resolution vertices; its centre is the point of a triangle that strays furthest) near the surface.
    assert np.abs(distances.signed_distance(full, shown)).max() <= display_meshes.DISPLAY_TOLERANCE_MM
    centres = vtkCellCenters()
    centres.SetInputData(shown)
    centres.Update()
    assert np.abs(distances.signed_distance(centres.GetOutput(), full)).max() <= display_meshes.DISPLAY_TOLERANCE_MM
    assert np.abs(distances.signed_distance(shown, full)).max() <= 1e-3


def test_full_resolution_meshes_option_states_the_bound():
    generate_parser = build_parser()._subparsers._group_actions[0].choices["generate"]
    option = next(action for action in generate_parser._actions if "--full-resolution-meshes" in action.option_strings)
    assert f"within {display_meshes.DISPLAY_TOLERANCE_MM} mm" in option.help
