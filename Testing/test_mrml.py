"""The MRML layer on a real ``vtkMRMLScene`` (slicer-core), offscreen rendering included."""

from __future__ import annotations

import json

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is part of the test extras")
vtk = pytest.importorskip("vtk")

from vtk.util.numpy_support import vtk_to_numpy  # noqa: E402

from conftest import load_utility, read_png, shown_in_view  # noqa: E402
from SparseImplantLib import mrml  # noqa: E402
from SparseImplantLib.contract import DISTANCE_ARRAY  # noqa: E402
from SparseImplantLib.distances import add_signed_distance  # noqa: E402
from SparseImplantLib.errors import SparseImplantError  # noqa: E402
from SparseImplantLib.geometry import surface_from_mask  # noqa: E402
from SparseImplantLib.meshes import transform_polydata  # noqa: E402
from SparseImplantLib.render import defect_camera  # noqa: E402
from SparseImplantLib.volume import LPS_TO_RAS  # noqa: E402


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


@pytest.fixture
def results(synthetic_skull):
    defective, implant = synthetic_skull
    completed = defective.with_array(defective.array | implant.array)
    surfaces = {"completed": surface_from_mask(completed), "defective": surface_from_mask(defective),
                "implant": surface_from_mask(implant)}
    surfaces["distance"] = add_signed_distance(surfaces["completed"], surfaces["defective"])
    return completed, implant, surfaces


def test_volume_node_round_trip_keeps_oblique_geometry(scene, synthetic_skull):
    defective = synthetic_skull[0]
    back = mrml.volume_from_node(mrml.add_labelmap_node(scene, defective, "skull"))
    assert back.same_geometry(defective)
    np.testing.assert_array_equal(back.array, defective.array)


def test_parent_transform_moves_the_volume(scene, synthetic_skull):
    node = mrml.add_labelmap_node(scene, synthetic_skull[0], "skull")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(0, 3, 10.0)  # 10 mm towards R = -10 mm in LPS x
    transform.SetMatrixTransformToParent(shift)
    node.SetAndObserveTransformNodeID(transform.GetID())
    moved = mrml.volume_from_node(node)
    np.testing.assert_allclose(moved.origin, synthetic_skull[0].origin + [-10.0, 0.0, 0.0])


def test_result_segmentation_round_trips_and_names_segments(scene, results):
    completed, implant, _ = results
    node = mrml.add_result_segmentation(scene, completed, implant, "Implant design")
    segmentation = node.GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    assert names == [mrml.COMPLETED_SEGMENT, mrml.IMPLANT_SEGMENT]
    implant_id = segmentation.GetSegmentIdBySegmentName(mrml.IMPLANT_SEGMENT)
    assert "^40388003^Implant~" in segmentation.GetSegment(implant_id).GetTerminology()
    back = mrml.segment_to_volume(node, implant_id)
    assert back.same_geometry(implant)
    np.testing.assert_array_equal(back.array, implant.array)
    with pytest.raises(SparseImplantError, match="no segment 'nope'"):
        mrml.segment_to_volume(node, "nope")


def test_results_are_pinned_to_three_linked_views_and_rerun_adds_new_nodes(scene, results):
    completed, implant, surfaces = results
    first = mrml.add_results(scene, completed, implant, surfaces, metrics={"dsc": 0.91, "hd95_mm": 1.5})
    count = scene.GetNumberOfNodes()
    second = mrml.add_results(scene, completed, implant, surfaces)
    views = mrml.three_view_nodes(scene)
    assert [v.GetSingletonTag() for v in views] == list(mrml.VIEW_TAGS) and all(v.GetLinkedControl() for v in views)
    assert len({v.GetID() for v in views}) == 3 and scene.GetNumberOfNodes() > count
    # The first run's nodes are all still there, untouched, and the second run's names differ.
    assert all(scene.GetNodeByID(node.GetID()) is node for node in first.all_nodes())
    assert first.segmentation.GetName() != second.segmentation.GetName()
    pinned = {key: first.models[key].GetDisplayNode().GetNthViewNodeID(0) for key in first.models}
    assert pinned == {"completed": views[0].GetID(), "defective": views[1].GetID(), "implant": views[1].GetID(),
                      "distance": views[2].GetID()}
    distance_display = first.models["distance"].GetDisplayNode()
    assert distance_display.GetScalarVisibility() and distance_display.GetActiveScalarName() == DISTANCE_ARRAY
    low, high = distance_display.GetScalarRange()
    assert low == -high and high > 0
    assert first.legend.GetTitleText() == mrml.DISTANCE_TITLE
    table = first.metrics_table.GetTable()
    assert table.GetNumberOfRows() == 2 and table.GetValue(0, 1).ToString() == "0.91"
    assert mrml.result_rows({"hd95_mm": None}, {"implant_volume_ml": 47.04, "timings_s": {"network": 6.52}}) == [
        ("Implant volume", "47.0", "ml"), ("HD95", "n/a", "mm"), ("Time: network", "6.5", "s")]
    fit = {"area_cm2": 165.86, "thickness_mm": {"min": 1.55, "median": 6.48, "max": 9.61}, "gap_mm": 0.03,
           "overlap_mm": None, "watertight": False, "boundary_edges": 12, "non_manifold_edges": 0}
    assert mrml.result_rows(None, {"implant_volume_ml": 47.04, "implant_report": fit}) == [
        ("Implant volume", "47.0", "ml"), ("Implant area", "165.9", "cm²"), ("Thickness (min)", "1.55", "mm"),
        ("Thickness (median)", "6.48", "mm"), ("Thickness (max)", "9.61", "mm"),
        ("Border gap (95th pct.)", "0.03", "mm"), ("Border overlap (95th pct.)", "n/a", "mm"),
        ("Watertight", "no (12 open, 0 non-manifold edges)", "")]
    fit_table = mrml.metrics_table(scene, None, "fit", {"implant_volume_ml": 47.04, "implant_report": fit}).GetTable()
    assert fit_table.GetNumberOfRows() == 8 and fit_table.GetValue(1, 2).ToString() == "cm²"
    layout = mrml.layout_node(scene)
    mrml.show_three_view_layout(scene)
    assert layout.GetViewArrangement() == mrml.LAYOUT_ID
    assert all(tag in layout.GetLayoutDescription(mrml.LAYOUT_ID) for tag in mrml.VIEW_TAGS)


def catalog_screenshot():
    """Utilities/catalog_screenshot.py, which renders the module's three views for the catalog."""
    return load_utility("catalog_screenshot")


def _panel_fractions(path, panels: int = 3):
    rgb = read_png(path)
    width = rgb.shape[1]
    return [rgb[:, i * width // panels:(i + 1) * width // panels].astype(int) for i in range(panels)]


def test_three_mrml_views_render_offscreen(scene, results, tmp_path):
    completed, implant, surfaces = results
    views = mrml.three_view_nodes(scene)
    offscreen = catalog_screenshot().OffscreenViews(views, size=(300, 300))
    try:
        mrml.add_results(scene, completed, implant, surfaces)
        ras = [transform_polydata(surfaces[key], LPS_TO_RAS) for key in ("completed", "implant")]
        path = offscreen.capture(tmp_path / "views.png", defect_camera(*ras))
    finally:
        offscreen.close()
    panels = _panel_fractions(path)
    for panel in panels:
        # Slicer's 3D background is a blue gradient; geometry shows as bone, implant or map colours.
        background = (panel[..., 2] > panel[..., 0] + 40)
        assert (~background).mean() > 0.05
    implant_blue = (panels[1][..., 2] > 180) & (panels[1][..., 0] < 120)
    assert implant_blue.sum() > 100
    added_red = (panels[2][..., 0] > 170) & (panels[2][..., 1] < 90) & (panels[2][..., 2] < 90)
    assert added_red.sum() > 100


def test_export_segments_writes_stl_once(scene, results, tmp_path):
    from SparseImplantLib.meshes import enclosed_volume_mm3, read_mesh

    completed, implant, _ = results
    node = mrml.add_result_segmentation(scene, completed, implant, "Design")
    paths = mrml.export_segments(node, tmp_path, file_format="stl")
    assert [p.name for p in paths] == ["Design_Completed skull.stl", "Design_Implant.stl"]
    exported = read_mesh(paths[1])  # LPS, millimetres
    surface = surface_from_mask(implant)
    np.testing.assert_allclose(exported.GetBounds(), surface.GetBounds(), atol=max(implant.spacing) * 1.5)
    mask_volume = implant.array.sum() * implant.voxel_volume_mm3
    assert abs(enclosed_volume_mm3(exported) - mask_volume) / mask_volume < 0.2
    with pytest.raises(SparseImplantError, match="already exists"):
        mrml.export_segments(node, tmp_path)
    with pytest.raises(SparseImplantError, match="cannot export 'STEP'"):
        mrml.export_segments(node, tmp_path, file_format="step")


def test_results_from_a_generate_folder(scene, synthetic_skull, tmp_path, generated):
    report = json.loads((generated.output / "report.json").read_text())
    result = mrml.add_results_from_folder(scene, generated.output, name="Case")
    assert {"completed", "defective", "distance"} <= set(result.models)
    table = result.metrics_table.GetTable()
    labels = [table.GetValue(row, 0).ToString() for row in range(table.GetNumberOfRows())]
    fit = ["Implant area", "Thickness (min)", "Thickness (median)", "Thickness (max)", "Border gap (95th pct.)",
           "Border overlap (95th pct.)", "Watertight"] if report["implant_report"] else []
    assert labels == (["Implant volume", *fit, "Dice (implant)", "Border Dice (10 mm)", "HD95", "Dice (completed skull)"]
                      + [f"Time: {stage}" for stage in report["timings_s"]])
    completed = mrml.segment_to_volume(result.segmentation, result.segmentation.GetSegmentation()
                                       .GetSegmentIdBySegmentName(mrml.COMPLETED_SEGMENT))
    assert completed.same_geometry(synthetic_skull[0])
    with pytest.raises(SparseImplantError, match="no report.json"):
        mrml.add_results_from_folder(scene, tmp_path)
    # The catalog screenshot is these three views, drawn by Slicer's displayable managers.
    panels = _panel_fractions(catalog_screenshot().render_results(generated.output, tmp_path / "views.png", (200, 200)))
    assert all((~(panel[..., 2] > panel[..., 0] + 40)).mean() > 0.05 for panel in panels)


def test_a_rerun_shows_only_the_newest_results_in_the_three_views(scene, results):
    completed, implant, surfaces = results
    first = mrml.add_results(scene, completed, implant, surfaces)
    second = mrml.add_results(scene, completed, implant, surfaces)
    views = mrml.three_view_nodes(scene)
    models = [scene.GetNthNodeByClass(i, "vtkMRMLModelNode") for i in range(scene.GetNumberOfNodesByClass("vtkMRMLModelNode"))]
    shown = [[m.GetName() for m in models if shown_in_view(m.GetDisplayNode(), view)] for view in views]
    assert shown == [[second.models["completed"].GetName()],
                     [second.models["defective"].GetName(), second.models["implant"].GetName()],
                     [second.models["distance"].GetName()]]
    legends = [scene.GetNthNodeByClass(i, "vtkMRMLColorLegendDisplayNode")
               for i in range(scene.GetNumberOfNodesByClass("vtkMRMLColorLegendDisplayNode"))]
    assert [legend for legend in legends if legend.GetVisibility()] == [second.legend]
    # The first run is still there, hidden, and marked as a result (also in a saved scene).
    assert all(scene.GetNodeByID(node.GetID()) is node for node in first.all_nodes())
    assert not first.segmentation.GetDisplayNode().GetVisibility() and second.segmentation.GetDisplayNode().GetVisibility()
    assert {n.GetID() for n in mrml.result_nodes_in_scene(scene)} == {n.GetID() for n in first.all_nodes() + second.all_nodes()}


def test_the_input_segmentation_is_kept_out_of_the_three_views(scene, synthetic_skull):
    from conftest import skull_segmentation

    skull = skull_segmentation(scene, synthetic_skull[0])
    skull.CreateDefaultDisplayNodes()
    red = slicer.vtkMRMLSliceNode()
    red.SetLayoutName("Red")
    scene.AddNode(red)
    main_3d = slicer.vtkMRMLViewNode()
    scene.AddNode(main_3d)
    views = mrml.three_view_nodes(scene)
    display = skull.GetDisplayNode()
    assert all(shown_in_view(display, view) for view in views)  # shown everywhere by default
    mrml.keep_out_of_views(skull, views)
    assert not any(shown_in_view(display, view) for view in views)
    assert shown_in_view(display, red) and shown_in_view(display, main_3d)
    mrml.keep_out_of_views(skull, views)  # again: nothing changes
    assert sorted(display.GetViewNodeIDs()) == sorted([red.GetID(), main_3d.GetID()])
    alone = slicer.vtkMRMLScene()  # no other view to show it in: hidden
    lonely = skull_segmentation(alone, synthetic_skull[0])
    lonely.CreateDefaultDisplayNodes()
    mrml.keep_out_of_views(lonely, mrml.three_view_nodes(alone))
    assert not lonely.GetDisplayNode().GetVisibility()


def test_the_three_views_face_the_implant(scene, results):
    """The synthetic skull's implant is a cap on top (superior, +S), so every view looks down from above."""
    completed, implant, surfaces = results
    mrml.add_results(scene, completed, implant, surfaces)
    for view in mrml.three_view_nodes(scene):
        camera = mrml.view_camera(scene, view)
        looking_from = np.array(camera.GetPosition()) - np.array(camera.GetFocalPoint())
        implant_ras = transform_polydata(surfaces["implant"], LPS_TO_RAS)
        completed_ras = transform_polydata(surfaces["completed"], LPS_TO_RAS)
        towards_implant = (vtk_to_numpy(implant_ras.GetPoints().GetData()).mean(axis=0)
                           - np.array(completed_ras.GetBounds()).reshape(3, 2).mean(axis=1))
        cosine = np.dot(looking_from, towards_implant) / np.linalg.norm(looking_from) / np.linalg.norm(towards_implant)
        assert cosine > 0.999
