"""The MRML layer on a real ``vtkMRMLScene`` (slicer-core), offscreen rendering included."""

from __future__ import annotations

import json

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is part of the test extras")
vtk = pytest.importorskip("vtk")

from vtk.util.numpy_support import vtk_to_numpy  # noqa: E402

from conftest import load_utility, read_png, shown_in_view  # noqa: E402
from SparseImplantLib.contract import DISTANCE_ARRAY  # noqa: E402
from SparseImplantLib.errors import SparseImplantError  # noqa: E402
from SparseImplantLib.pipeline.volume import LPS_TO_RAS, Volume  # noqa: E402
from SparseImplantLib.slicer import scene_input, scene_results, scene_views  # noqa: E402
from SparseImplantLib.surfaces.distances import add_signed_distance  # noqa: E402
from SparseImplantLib.surfaces.from_masks import surface_from_mask  # noqa: E402
from SparseImplantLib.surfaces.meshes import transform_polydata  # noqa: E402
from SparseImplantLib.surfaces.render import defect_camera  # noqa: E402


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
    back = scene_input.volume_from_node(scene_input.add_labelmap_node(scene, defective, "skull"))
    assert back.same_geometry(defective)
    np.testing.assert_array_equal(back.array, defective.array)


def test_parent_transform_moves_the_volume(scene, synthetic_skull):
    node = scene_input.add_labelmap_node(scene, synthetic_skull[0], "skull")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(0, 3, 10.0)  # 10 mm towards R = -10 mm in LPS x
    transform.SetMatrixTransformToParent(shift)
    node.SetAndObserveTransformNodeID(transform.GetID())
    moved = scene_input.volume_from_node(node)
    np.testing.assert_allclose(moved.origin, synthetic_skull[0].origin + [-10.0, 0.0, 0.0])


def test_result_segmentation_round_trips_and_names_segments(scene, results):
    completed, implant, _ = results
    node = scene_results.add_result_segmentation(scene, completed, implant, "Implant design")
    segmentation = node.GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    assert names == [scene_results.COMPLETED_SEGMENT, scene_results.IMPLANT_SEGMENT]
    implant_id = segmentation.GetSegmentIdBySegmentName(scene_results.IMPLANT_SEGMENT)
    assert "^40388003^Implant~" in segmentation.GetSegment(implant_id).GetTerminology()
    back = scene_input.segment_to_volume(node, implant_id)
    assert back.same_geometry(implant)
    np.testing.assert_array_equal(back.array, implant.array)
    with pytest.raises(SparseImplantError, match="no segment 'nope'"):
        scene_input.segment_to_volume(node, "nope")


def test_results_are_pinned_to_three_linked_views_and_rerun_adds_new_nodes(scene, results):
    completed, implant, surfaces = results
    first = scene_results.add_results(scene, completed, implant, surfaces, metrics={"dsc": 0.91, "hd95_mm": 1.5})
    count = scene.GetNumberOfNodes()
    second = scene_results.add_results(scene, completed, implant, surfaces)
    views = scene_views.three_view_nodes(scene)
    assert [v.GetSingletonTag() for v in views] == list(scene_views.VIEW_TAGS) and all(v.GetLinkedControl() for v in views)
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
    assert first.legend.GetTitleText() == scene_views.DISTANCE_TITLE
    table = first.metrics_table.GetTable()
    assert table.GetNumberOfRows() == 2 and table.GetValue(0, 1).ToString() == "0.91"
    assert scene_results.result_rows({"hd95_mm": None}, {"implant_volume_ml": 47.04, "timings_s": {"network": 6.52}}) == [
        ("Implant volume", "47.0", "ml"), ("HD95", "n/a", "mm"), ("Time: network", "6.5", "s")]
    fit = {"area_cm2": 165.86, "thickness_mm": {"min": 1.55, "median": 6.48, "max": 9.61}, "gap_mm": 0.03,
           "overlap_mm": None, "watertight": False, "boundary_edges": 12, "non_manifold_edges": 0}
    assert scene_results.result_rows(None, {"implant_volume_ml": 47.04, "implant_report": fit}) == [
        ("Implant volume", "47.0", "ml"), ("Implant area", "165.9", "cm²"), ("Thickness (min)", "1.55", "mm"),
        ("Thickness (median)", "6.48", "mm"), ("Thickness (max)", "9.61", "mm"),
        ("Border gap (95th pct.)", "0.03", "mm"), ("Border overlap (95th pct.)", "n/a", "mm"),
        ("Watertight", "no (12 open, 0 non-manifold edges)", "")]
    fit_table = scene_results.metrics_table(scene, None, "fit", {"implant_volume_ml": 47.04, "implant_report": fit}).GetTable()
    assert fit_table.GetNumberOfRows() == 8 and fit_table.GetValue(1, 2).ToString() == "cm²"
    layout = scene_views.layout_node(scene)
    scene_views.show_three_view_layout(scene)
    assert layout.GetViewArrangement() == scene_views.LAYOUT_ID
    assert all(tag in layout.GetLayoutDescription(scene_views.LAYOUT_ID) for tag in scene_views.VIEW_TAGS)


def catalog_screenshot():
    """Utilities/catalog_screenshot.py, which renders the module's three views for the catalog."""
    return load_utility("catalog_screenshot")


def _panel_fractions(path, panels: int = 3):
    rgb = read_png(path)
    width = rgb.shape[1]
    return [rgb[:, i * width // panels:(i + 1) * width // panels].astype(int) for i in range(panels)]


def test_three_mrml_views_render_offscreen(scene, results, tmp_path):
    completed, implant, surfaces = results
    views = scene_views.three_view_nodes(scene)
    offscreen = catalog_screenshot().OffscreenViews(views, size=(300, 300))
    try:
        scene_results.add_results(scene, completed, implant, surfaces)
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
    from SparseImplantLib.surfaces.meshes import enclosed_volume_mm3, read_mesh

    completed, implant, _ = results
    node = scene_results.add_result_segmentation(scene, completed, implant, "Design")
    paths = scene_results.export_segments(node, tmp_path, file_format="stl")
    assert [p.name for p in paths] == ["Design_Completed skull.stl", "Design_Implant.stl"]
    exported = read_mesh(paths[1])  # LPS, millimetres
    surface = surface_from_mask(implant)
    np.testing.assert_allclose(exported.GetBounds(), surface.GetBounds(), atol=max(implant.spacing) * 1.5)
    mask_volume = implant.array.sum() * implant.voxel_volume_mm3
    assert abs(enclosed_volume_mm3(exported) - mask_volume) / mask_volume < 0.2
    with pytest.raises(SparseImplantError, match="already exists"):
        scene_results.export_segments(node, tmp_path)
    with pytest.raises(SparseImplantError, match="cannot export 'STEP'"):
        scene_results.export_segments(node, tmp_path, file_format="step")


def test_results_from_a_generate_folder(scene, synthetic_skull, tmp_path, generated):
    report = json.loads((generated.output / "report.json").read_text())
    result = scene_results.add_results_from_folder(scene, generated.output, name="Case")
    assert {"completed", "defective", "distance"} <= set(result.models)
    table = result.metrics_table.GetTable()
    labels = [table.GetValue(row, 0).ToString() for row in range(table.GetNumberOfRows())]
    fit = ["Implant area", "Thickness (min)", "Thickness (median)", "Thickness (max)", "Border gap (95th pct.)",
           "Border overlap (95th pct.)", "Watertight"] if report["implant_report"] else []
    assert labels == (["Designed by", "Implant volume", *fit, "Dice (implant)", "Border Dice (10 mm)", "HD95", "Dice (completed skull)"]
                      + [f"Time: {stage}" for stage in report["timings_s"]])
    completed = scene_input.segment_to_volume(result.segmentation, result.segmentation.GetSegmentation()
                                       .GetSegmentIdBySegmentName(scene_results.COMPLETED_SEGMENT))
    assert completed.same_geometry(synthetic_skull[0])
    with pytest.raises(SparseImplantError, match="no report.json"):
        scene_results.add_results_from_folder(scene, tmp_path)
    # The catalog screenshot is these three views, drawn by Slicer's displayable managers.
    panels = _panel_fractions(catalog_screenshot().render_results(generated.output, tmp_path / "views.png", (200, 200)))
    assert all((~(panel[..., 2] > panel[..., 0] + 40)).mean() > 0.05 for panel in panels)


def test_a_rerun_shows_only_the_newest_results_in_the_three_views(scene, results):
    completed, implant, surfaces = results
    first = scene_results.add_results(scene, completed, implant, surfaces)
    second = scene_results.add_results(scene, completed, implant, surfaces)
    views = scene_views.three_view_nodes(scene)
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
    assert {n.GetID() for n in scene_results.result_nodes_in_scene(scene)} == {n.GetID() for n in first.all_nodes() + second.all_nodes()}


def test_the_input_segmentation_is_kept_out_of_the_three_views(scene, synthetic_skull):
    from conftest import skull_segmentation

    skull = skull_segmentation(scene, synthetic_skull[0])
    skull.CreateDefaultDisplayNodes()
    red = slicer.vtkMRMLSliceNode()
    red.SetLayoutName("Red")
    scene.AddNode(red)
    main_3d = slicer.vtkMRMLViewNode()
    scene.AddNode(main_3d)
    views = scene_views.three_view_nodes(scene)
    display = skull.GetDisplayNode()
    assert all(shown_in_view(display, view) for view in views)  # shown everywhere by default
    scene_results.keep_out_of_views(skull, views)
    assert not any(shown_in_view(display, view) for view in views)
    assert shown_in_view(display, red) and shown_in_view(display, main_3d)
    scene_results.keep_out_of_views(skull, views)  # again: nothing changes
    assert sorted(display.GetViewNodeIDs()) == sorted([red.GetID(), main_3d.GetID()])
    alone = slicer.vtkMRMLScene()  # no other view to show it in: hidden
    lonely = skull_segmentation(alone, synthetic_skull[0])
    lonely.CreateDefaultDisplayNodes()
    scene_results.keep_out_of_views(lonely, scene_views.three_view_nodes(alone))
    assert not lonely.GetDisplayNode().GetVisibility()


def test_the_three_views_face_the_implant(scene, results):
    """The synthetic skull's implant is a cap on top (superior, +S), so every view looks down from above."""
    completed, implant, surfaces = results
    scene_results.add_results(scene, completed, implant, surfaces)
    for view in scene_views.three_view_nodes(scene):
        camera = scene_views.view_camera(scene, view)
        looking_from = np.array(camera.GetPosition()) - np.array(camera.GetFocalPoint())
        implant_ras = transform_polydata(surfaces["implant"], LPS_TO_RAS)
        completed_ras = transform_polydata(surfaces["completed"], LPS_TO_RAS)
        towards_implant = (vtk_to_numpy(implant_ras.GetPoints().GetData()).mean(axis=0)
                           - np.array(completed_ras.GetBounds()).reshape(3, 2).mean(axis=1))
        cosine = np.dot(looking_from, towards_implant) / np.linalg.norm(looking_from) / np.linalg.norm(towards_implant)
        assert cosine > 0.999


def _in_study(scene, node) -> int:
    """Put ``node`` under a new patient and study, as DICOM loading files it; returns the study's item."""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = hierarchy.CreateStudyItem(hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "Patient"), "Study")
    hierarchy.CreateItem(study, node)  # slicer-core has no plugin logic that gives new nodes an item
    return study


def _ct_node(scene, grid: Volume) -> "slicer.vtkMRMLScalarVolumeNode":
    """A CT-like scalar volume on ``grid``'s geometry (bone 1000 HU, the rest -1000 HU)."""
    from SparseImplantLib.surfaces.meshes import image_data, vtk_matrix

    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    node.SetAndObserveImageData(image_data(np.where(grid.array > 0, 1000, -1000).astype(np.int16)))
    node.SetIJKToRASMatrix(vtk_matrix(grid.index_to_ras()))
    return node


def _parent(scene, node) -> int:
    """The item that holds ``node``'s subject-hierarchy item."""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    return hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node))


def test_results_are_filed_in_the_input_segmentations_study(scene, synthetic_skull, results):
    from conftest import skull_segmentation

    completed, implant, surfaces = results
    skull = skull_segmentation(scene, synthetic_skull[0])
    study = _in_study(scene, skull)
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    geometry_name = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    skull_geometry = skull.GetSegmentation().GetConversionParameter(geometry_name)
    runs = []
    for _ in range(2):
        result = scene_results.add_results(scene, completed, implant, surfaces, metrics={"dsc": 0.9})
        runs.append((result, scene_results.place_with_input(result, skull)))
    for result, folder in runs:
        # The segmentation is a series of the study, the models and table are in the run's folder beside it.
        assert _parent(scene, result.segmentation) == study
        assert hierarchy.GetItemParent(folder) == study and not hierarchy.GetItemDataNode(folder)
        assert hierarchy.GetItemName(folder) == f"{result.segmentation.GetName()} - models and results"
        assert {_parent(scene, node) for node in [*result.models.values(), result.metrics_table]} == {folder}
        assert all(hierarchy.GetItemAncestorAtLevel(hierarchy.GetItemByDataNode(node), "Study") == study
                   for node in result.all_nodes() if node is not result.legend)
        assert result.legend.GetDisplayableNode() is result.models["distance"]  # the legend goes with its model
        # A segmentation input is no reference volume: the segmentation keeps its own grid.
        assert result.segmentation.GetNodeReference(result.segmentation.GetReferenceImageGeometryReferenceRole()) is None
    assert runs[0][1] != runs[1][1]
    # The input is where it was, as it was.
    assert _parent(scene, skull) == study and skull.GetSegmentation().GetNumberOfSegments() == 1
    assert skull.GetSegmentation().GetConversionParameter(geometry_name) == skull_geometry
    assert skull.GetNodeReference(skull.GetReferenceImageGeometryReferenceRole()) is None


def test_a_segment_inputs_reference_volume_passes_to_the_results(scene, synthetic_skull, results):
    """A segmentation drawn on a CT (Segment Editor) names that CT as its reference: so do the results,
    for DICOM SEG export, while their geometry parameter stays the masks' own."""
    from conftest import skull_segmentation

    skull = skull_segmentation(scene, synthetic_skull[0])
    ct = scene_input.add_labelmap_node(scene, synthetic_skull[0], "CT")
    role = skull.GetReferenceImageGeometryReferenceRole()
    skull.SetNodeReferenceID(role, ct.GetID())
    result = scene_results.add_results(scene, *results)
    geometry_name = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    geometry = result.segmentation.GetSegmentation().GetConversionParameter(geometry_name)
    scene_results.place_with_input(result, skull)
    assert result.segmentation.GetNodeReference(role) is ct
    assert result.segmentation.GetSegmentation().GetConversionParameter(geometry_name) == geometry


def test_results_of_an_input_at_the_scene_root_stay_at_the_root(scene, synthetic_skull, results):
    from conftest import skull_segmentation

    skull = skull_segmentation(scene, synthetic_skull[0])
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    hierarchy.CreateItem(hierarchy.GetSceneItemID(), skull)
    result = scene_results.add_results(scene, *results)
    folder = scene_results.place_with_input(result, skull)
    assert _parent(scene, result.segmentation) == hierarchy.GetSceneItemID() == hierarchy.GetItemParent(folder)
    assert {_parent(scene, node) for node in result.models.values()} == {folder}


@pytest.mark.parametrize("shifted", [False, True])
def test_a_ct_input_is_the_result_segmentations_reference_geometry(scene, results, shifted):
    """Set as the Segment Editor and DICOM SEG export want it, without changing a voxel; a CT under a
    transform (the masks are then in world coordinates) gives the same grid."""
    completed, implant, surfaces = results
    ct = _ct_node(scene, completed)
    if shifted:
        transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
        shift = vtk.vtkMatrix4x4()
        shift.SetElement(1, 3, 12.5)
        transform.SetMatrixTransformToParent(shift)
        ct.SetAndObserveTransformNodeID(transform.GetID())
    grid = scene_input.volume_from_node(ct)  # what the run reads, on which its masks come back
    completed, implant = (Volume(mask.array, grid.spacing, grid.origin, grid.direction) for mask in (completed, implant))
    study = _in_study(scene, ct)
    ct_voxels = vtk_to_numpy(ct.GetImageData().GetPointData().GetScalars()).copy()
    result = scene_results.add_results(scene, completed, implant, surfaces)
    scene_results.place_with_input(result, ct)
    segmentation = result.segmentation
    assert segmentation.GetNodeReference(segmentation.GetReferenceImageGeometryReferenceRole()) is ct
    converter = slicer.vtkSegmentationConverter
    assert (segmentation.GetSegmentation().GetConversionParameter(converter.GetReferenceImageGeometryParameterName())
            == converter.SerializeImageGeometry(scene_input.oriented_image(completed)))
    for name, mask in ((scene_results.COMPLETED_SEGMENT, completed), (scene_results.IMPLANT_SEGMENT, implant)):
        back = scene_input.segment_to_volume(segmentation, segmentation.GetSegmentation().GetSegmentIdBySegmentName(name))
        assert back.same_geometry(mask)
        np.testing.assert_array_equal(back.array, mask.array)
    assert _parent(scene, segmentation) == study == _parent(scene, ct)
    np.testing.assert_array_equal(vtk_to_numpy(ct.GetImageData().GetPointData().GetScalars()), ct_voxels)
