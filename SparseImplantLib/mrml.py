"""The MRML side of SparseImplant, without Qt: what the Slicer module does to the scene.

Everything here works on a bare ``vtkMRMLScene`` (the ``slicer-core`` package in CI, the application's
scene inside Slicer): segmentation <-> ``Volume`` with geometry, the result segmentation and models,
the signed-distance colour table and legend, the three linked 3D views and their layout, export.
Nothing here modifies the input nodes; every call adds new nodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from . import contract
from .contract import DISTANCE_ARRAY
from .errors import SparseImplantError
from .io import PathLike
from .meshes import transform_polydata, vtk_matrix
from .metrics import METRICS
from .render import color_limit_mm, defect_camera, diverging_lookup_table
from .volume import LPS_TO_RAS, Volume

COMPLETED_SEGMENT = "Completed skull"
IMPLANT_SEGMENT = "Implant"
BONE_COLOR = (0.945, 0.839, 0.569)  # Slicer's "bone" colour
IMPLANT_COLOR = (0.27, 0.62, 0.92)
DISTANCE_TITLE = "Signed distance (mm)"
# DICOM/SNOMED terminology so the segments keep their meaning in exported .seg.nrrd / DICOM SEG.
TERMINOLOGY = {
    COMPLETED_SEGMENT: "Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure"
                       "~SCT^89546000^Bone structure of cranium~^^~Anatomic codes - DICOM master list~^^~^^",
    IMPLANT_SEGMENT: "Segmentation category and type - 3D Slicer General Anatomy list~SCT^260787004^Physical object"
                     "~SCT^40388003^Implant~^^~Anatomic codes - DICOM master list~^^~^^",
}

LAYOUT_ID = 8501  # custom layouts live above Slicer's built-in ids
VIEW_TAGS = ("SparseImplantCompleted", "SparseImplantImplant", "SparseImplantDistance")
VIEW_LABELS = ("Completed skull", "Implant in defect", "Signed distance")
LAYOUT_XML = (
    '<layout type="horizontal">'
    + "".join(
        f'<item><view class="vtkMRMLViewNode" singletontag="{tag}">'
        f'<property name="viewlabel" action="default">{label}</property></view></item>'
        for tag, label in zip(VIEW_TAGS, VIEW_LABELS)
    )
    + "</layout>"
)


_SEGMENTATION_LOGICS: Dict[int, object] = {}


def enable_segmentations(scene) -> None:
    """Representation conversions need a segmentations logic on the scene: Slicer has one, a bare
    ``slicer-core`` scene gets one here (kept alive for the scene's lifetime)."""
    if hasattr(slicer, "app") or id(scene) in _SEGMENTATION_LOGICS:
        return
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)
    _SEGMENTATION_LOGICS[id(scene)] = logic


def _numpy_matrix(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(row, column) for column in range(4)] for row in range(4)])


def _world_matrix(node) -> np.ndarray:
    """4x4 from the node's coordinates to world RAS; only linear parent transforms can be honoured."""
    transform = node.GetParentTransformNode()
    if transform is None:
        return np.eye(4)
    if not transform.IsTransformToWorldLinear():
        raise SparseImplantError(f"'{node.GetName()}' is under a non-linear transform: harden the transform first")
    matrix = vtk.vtkMatrix4x4()
    transform.GetMatrixTransformToWorld(matrix)
    return _numpy_matrix(matrix)


def volume_from_node(node) -> Volume:
    """A scalar or labelmap volume node as a ``Volume`` (LPS geometry, parent transform applied)."""
    image = node.GetImageData()
    if image is None or image.GetPointData().GetScalars() is None:
        raise SparseImplantError(f"volume '{node.GetName()}' has no voxels: load or create its image first")
    if image.GetNumberOfScalarComponents() != 1:
        raise SparseImplantError(f"volume '{node.GetName()}' has several components: select a scalar volume")
    dims = image.GetDimensions()
    array = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[::-1]).transpose(2, 1, 0)
    ijk_to_ras = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(ijk_to_ras)
    index_to_lps = LPS_TO_RAS @ _world_matrix(node) @ _numpy_matrix(ijk_to_ras)
    spacing = np.linalg.norm(index_to_lps[:3, :3], axis=0)
    return Volume(np.ascontiguousarray(array), spacing, index_to_lps[:3, 3], index_to_lps[:3, :3] / spacing)


def _oriented_image(volume: Volume) -> "slicer.vtkOrientedImageData":
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(*volume.shape)
    image.SetImageToWorldMatrix(vtk_matrix(volume.index_to_ras()))
    scalars = numpy_support.numpy_to_vtk(np.ravel(volume.array.astype(np.uint8), order="F"), deep=True,
                                         array_type=vtk.VTK_UNSIGNED_CHAR)
    image.GetPointData().SetScalars(scalars)
    return image


def add_labelmap_node(scene, volume: Volume, name: str) -> "slicer.vtkMRMLLabelMapVolumeNode":
    """A labelmap volume node holding ``volume`` (image in IJK, geometry in IJKToRAS, as Slicer stores it)."""
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", scene.GenerateUniqueName(name))
    image = vtk.vtkImageData()
    image.SetDimensions(*volume.shape)
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(
        np.ravel(volume.array.astype(np.uint8), order="F"), deep=True, array_type=vtk.VTK_UNSIGNED_CHAR))
    node.SetAndObserveImageData(image)
    node.SetIJKToRASMatrix(vtk_matrix(volume.index_to_ras()))
    return node


def _node_ids(scene) -> set:
    return {scene.GetNthNode(index).GetID() for index in range(scene.GetNumberOfNodes())}


def _pad(mask: Volume, margin_mm: float) -> Volume:
    """Grow the grid by ``margin_mm`` on every side (the completed skull may reach beyond the input's box)."""
    pad = np.ceil(margin_mm / mask.spacing).astype(int)
    array = np.pad(mask.array, [(p, p) for p in pad])
    origin = mask.origin - mask.direction @ (pad * mask.spacing)
    return Volume(array, mask.spacing, origin, mask.direction)


def segment_to_volume(segmentation_node, segment_id: str, reference: Optional[Volume] = None,
                      margin_mm: float = 30.0) -> Volume:
    """One segment as a binary mask: on ``reference``'s grid if given, else on the segmentation's
    reference geometry, else on the segment's extent grown by ``margin_mm``."""
    segmentation = segmentation_node.GetSegmentation()
    if segmentation.GetSegment(segment_id) is None:
        raise SparseImplantError(f"segmentation '{segmentation_node.GetName()}' has no segment '{segment_id}': pick an existing segment")
    scene = segmentation_node.GetScene()
    enable_segmentations(scene)
    geometry_name = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    has_geometry = bool(segmentation.GetConversionParameter(geometry_name))
    existing = _node_ids(scene)
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__SparseImplantExport")
    try:
        reference_node = None
        if reference is not None:
            reference_node = add_labelmap_node(scene, reference.with_array(np.zeros(reference.shape, np.uint8)), "__SparseImplantGrid")
        extent = (slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY if reference is not None or has_geometry
                  else slicer.vtkSegmentation.EXTENT_UNION_OF_SEGMENTS)
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentation_node, ids, labelmap, reference_node, extent):
            raise SparseImplantError(f"could not export segment '{segment_id}' as a labelmap: check that it is not empty")
        mask = volume_from_node(labelmap)
    finally:
        # The export also creates display and colour nodes: remove everything this call added.
        for node_id in _node_ids(scene) - existing:
            scene.RemoveNode(scene.GetNodeByID(node_id))
    mask = mask.with_array((mask.array > 0).astype(np.uint8))
    return mask if reference is not None or has_geometry else _pad(mask, margin_mm)


def _set_segment(segmentation_node, name: str, mask: Volume, color: Tuple[float, float, float]) -> str:
    segment_id = segmentation_node.AddSegmentFromBinaryLabelmapRepresentation(_oriented_image(mask), name, color)
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    segment.SetTerminology(TERMINOLOGY[name])
    return segment_id


def add_result_segmentation(scene, completed: Volume, implant: Volume, name: str) -> "slicer.vtkMRMLSegmentationNode":
    """One new segmentation with 'Completed skull' and 'Implant' on the input's geometry."""
    if not completed.same_geometry(implant):
        raise SparseImplantError("completed skull and implant masks have different geometries")
    enable_segmentations(scene)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name))
    node.CreateDefaultDisplayNodes()
    converter = slicer.vtkSegmentationConverter
    node.GetSegmentation().SetConversionParameter(converter.GetReferenceImageGeometryParameterName(),
                                                  converter.SerializeImageGeometry(_oriented_image(completed)))
    _set_segment(node, COMPLETED_SEGMENT, completed, BONE_COLOR)
    _set_segment(node, IMPLANT_SEGMENT, implant, IMPLANT_COLOR)
    return node


def add_model(scene, surface_lps: vtk.vtkPolyData, name: str, color: Tuple[float, float, float],
              view_nodes: Sequence = ()) -> "slicer.vtkMRMLModelNode":
    """A model node from an LPS surface (library convention), shown only in ``view_nodes`` if given."""
    node = scene.AddNewNodeByClass("vtkMRMLModelNode", scene.GenerateUniqueName(name))
    node.SetAndObservePolyData(transform_polydata(surface_lps, LPS_TO_RAS))
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    display.SetColor(*color)
    display.SetViewNodeIDs([view.GetID() for view in view_nodes])
    return node


def distance_color_node(scene, max_abs_mm: float) -> "slicer.vtkMRMLColorTableNode":
    """The library's diverging map (blue = inside/removed, red = outside/added) as a colour table."""
    table = diverging_lookup_table(max_abs_mm)
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", scene.GenerateUniqueName("SparseImplant signed distance"))
    node.SetTypeToUser()
    node.SetNumberOfColors(table.GetNumberOfTableValues())
    for index in range(table.GetNumberOfTableValues()):
        node.SetColor(index, *table.GetTableValue(index))
    node.GetLookupTable().SetRange(*table.GetRange())
    return node


def show_distance(model_node, max_abs_mm: float, view_nodes: Sequence = ()) -> "slicer.vtkMRMLColorLegendDisplayNode":
    """Colour a model by its signed-distance array, symmetric around 0, with a titled legend in mm."""
    polydata = model_node.GetPolyData()
    if polydata is None or polydata.GetPointData().GetArray(DISTANCE_ARRAY) is None:
        raise SparseImplantError(f"model '{model_node.GetName()}' has no '{DISTANCE_ARRAY}' point array")
    scene = model_node.GetScene()
    colors = distance_color_node(scene, max_abs_mm)
    display = model_node.GetDisplayNode()
    display.SetActiveScalar(DISTANCE_ARRAY, vtk.vtkAssignAttribute.POINT_DATA)
    display.SetAndObserveColorNodeID(colors.GetID())
    display.SetScalarRangeFlag(slicer.vtkMRMLDisplayNode.UseManualScalarRange)
    display.SetScalarRange(-max_abs_mm, max_abs_mm)
    display.SetScalarVisibility(True)
    legend = slicer.vtkMRMLColorLegendDisplayNode()  # not registered in a bare scene: create it directly
    legend.SetName(f"{model_node.GetName()} legend")
    scene.AddNode(legend)
    legend.SetAndObservePrimaryDisplayNode(display)
    model_node.AddAndObserveDisplayNodeID(legend.GetID())
    legend.SetTitleText(DISTANCE_TITLE)
    legend.SetLabelFormat("%.1f")
    legend.SetViewNodeIDs([view.GetID() for view in view_nodes])
    legend.SetVisibility(True)
    return legend


def layout_node(scene) -> "slicer.vtkMRMLLayoutNode":
    """The scene's layout node (Slicer has one; a bare scene gets one)."""
    node = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    if node is None:
        node = slicer.vtkMRMLLayoutNode()
        node.SetSingletonTag("vtkMRMLLayoutNode")
        scene.AddNode(node)
    return node


def three_view_nodes(scene) -> List["slicer.vtkMRMLViewNode"]:
    """The three linked 3D views (reused across runs) and the layout that shows them side by side."""
    layout = layout_node(scene)
    if not layout.IsLayoutDescription(LAYOUT_ID):
        layout.AddLayoutDescription(LAYOUT_ID, LAYOUT_XML)
    views = []
    for tag, label in zip(VIEW_TAGS, VIEW_LABELS):
        view = scene.GetSingletonNode(tag, "vtkMRMLViewNode")
        if view is None:
            view = slicer.vtkMRMLViewNode()
            view.SetSingletonTag(tag)
            view.SetName(f"View{tag}")
            view.SetLayoutName(tag)
            view.SetLayoutLabel(label)
            view.SetLayoutColor(*BONE_COLOR)
            scene.AddNode(view)
        view.SetLinkedControl(True)
        view.SetBoxVisible(False)
        view.SetAxisLabelsVisible(False)
        views.append(view)
    return views


def view_camera(scene, view) -> "slicer.vtkMRMLCameraNode":
    """The camera node of a 3D view (found by the view's layout name, as Slicer pairs them; added if missing)."""
    collection = scene.GetNodesByClass("vtkMRMLCameraNode")
    for index in range(collection.GetNumberOfItems()):
        camera = collection.GetItemAsObject(index)
        if camera.GetLayoutName() == view.GetLayoutName():
            return camera
    camera = scene.AddNewNodeByClass("vtkMRMLCameraNode", f"Camera{view.GetLayoutName()}")
    camera.SetLayoutName(view.GetLayoutName())
    return camera


def face_implant(scene, views: Sequence, completed_ras: vtk.vtkPolyData, implant_ras: Optional[vtk.vtkPolyData]) -> None:
    """Turn the views' cameras to look at the skull from the implant's side (``render.defect_camera``)."""
    camera = defect_camera(completed_ras, implant_ras)
    for view in views:
        node = view_camera(scene, view)
        node.SetFocalPoint(*camera.GetFocalPoint())
        node.SetPosition(*camera.GetPosition())
        node.SetViewUp(*camera.GetViewUp())


def show_three_view_layout(scene) -> None:
    layout_node(scene).SetViewArrangement(LAYOUT_ID)


@dataclass
class ResultNodes:
    """Every node one Generate Implant run adds (nothing else in the scene is touched)."""

    segmentation: object
    models: Dict[str, object] = field(default_factory=dict)
    legend: Optional[object] = None
    metrics_table: Optional[object] = None

    def all_nodes(self) -> list:
        nodes = [self.segmentation, *self.models.values(), self.legend, self.metrics_table]
        return [node for node in nodes if node is not None]


RESULT_ATTRIBUTE = "SparseImplant.Result"  # set on every node a run adds; saved with the scene


def result_nodes_in_scene(scene) -> List[object]:
    """Every node that any Generate Implant run added, this session or before the scene was saved."""
    nodes = (scene.GetNthNode(index) for index in range(scene.GetNumberOfNodes()))
    return [node for node in nodes if node.GetAttribute(RESULT_ATTRIBUTE)]


def hide_results(scene) -> None:
    """Hide every earlier run's segmentation, models and legend; they stay in the scene."""
    for node in result_nodes_in_scene(scene):
        for index in range(node.GetNumberOfDisplayNodes() if hasattr(node, "GetNumberOfDisplayNodes") else 0):
            node.GetNthDisplayNode(index).SetVisibility(False)


def keep_out_of_views(node, views: Sequence) -> None:
    """Show ``node`` everywhere but in ``views`` (its data is untouched; only where it is drawn changes).

    A display node with no view list is drawn in every view, so it gets the list of all other views;
    where there are no other views, it is hidden instead (an empty list would mean every view)."""
    excluded = {view.GetID() for view in views}
    collection = node.GetScene().GetNodesByClass("vtkMRMLAbstractViewNode")
    all_views = [collection.GetItemAsObject(index).GetID() for index in range(collection.GetNumberOfItems())]
    others = [view for view in all_views if view not in excluded]
    for index in range(node.GetNumberOfDisplayNodes()):
        display = node.GetNthDisplayNode(index)
        shown = [display.GetNthViewNodeID(i) for i in range(display.GetNumberOfViewNodeIDs())]
        remaining = [view for view in (shown or others) if view not in excluded]
        if remaining:
            display.SetViewNodeIDs(remaining)
        else:
            display.SetVisibility(False)


def add_results(scene, completed: Volume, implant: Volume, surfaces: Dict[str, vtk.vtkPolyData],
                name: str = "Implant design", metrics: Optional[Dict[str, float]] = None,
                report: Optional[dict] = None) -> ResultNodes:
    """Put one run's results into the scene: segmentation, models pinned to the three views, colour map.

    Only the newest run is shown: earlier runs' nodes are hidden (not removed), so the views never
    hold two runs at once. ``surfaces`` maps 'completed', 'defective', 'implant' (optional) and
    'distance' to LPS polydata. ``report`` (report.json) adds the implant volume and the timings to
    the results table."""
    views = three_view_nodes(scene)
    hide_results(scene)
    result = ResultNodes(add_result_segmentation(scene, completed, implant, name))
    result.segmentation.GetDisplayNode().SetVisibility3D(False)  # 3D shows the smoothed models instead
    result.models["completed"] = add_model(scene, surfaces["completed"], f"{name} - completed skull", BONE_COLOR, [views[0]])
    result.models["defective"] = add_model(scene, surfaces["defective"], f"{name} - defective skull", BONE_COLOR, [views[1]])
    if surfaces.get("implant") is not None:
        result.models["implant"] = add_model(scene, surfaces["implant"], f"{name} - implant", IMPLANT_COLOR, [views[1]])
    result.models["distance"] = add_model(scene, surfaces["distance"], f"{name} - signed distance", BONE_COLOR, [views[2]])
    values = surfaces["distance"].GetPointData().GetArray(DISTANCE_ARRAY)
    largest = max(abs(v) for v in values.GetRange()) if values is not None and values.GetNumberOfTuples() else 1.0
    result.legend = show_distance(result.models["distance"], color_limit_mm(largest), [views[2]])
    implant_model = result.models.get("implant")
    face_implant(scene, views, result.models["completed"].GetPolyData(),
                 implant_model.GetPolyData() if implant_model is not None else None)
    if metrics or report:
        result.metrics_table = metrics_table(scene, metrics, f"{name} - results", report)
    for node in result.all_nodes():
        node.SetAttribute(RESULT_ATTRIBUTE, result.segmentation.GetName())
    return result


MESH_PREFERENCE = ("vtk", "stl", "ply", "obj")  # first found wins: VTK keeps the distance array


def result_files(output_dir: PathLike) -> Dict[str, Path]:
    """The files of a ``sparseimplant generate`` folder that ``add_results_from_folder`` reads, by role
    (a mesh that was not written, such as the implant of an empty implant, is left out)."""
    folder = Path(output_dir)
    files = {"report": folder / contract.REPORT_FILE, "completed_mask": folder / contract.COMPLETED_FILE,
             "implant_mask": folder / contract.IMPLANT_FILE, "distance": folder / contract.DISTANCE_MAP_FILE}
    for role, stem in zip(("completed", "defective", "implant"), contract.MESH_STEMS):
        found = [path for path in (folder / contract.mesh_file(stem, fmt) for fmt in MESH_PREFERENCE) if path.is_file()]
        if found:
            files[role] = found[0]
    return files


def add_results_from_folder(scene, output_dir: PathLike, name: str = "Implant design") -> ResultNodes:
    """Load what ``sparseimplant generate`` wrote (the Slicer module runs it in a subprocess)."""
    import json

    from .io import read_volume
    from .meshes import read_mesh

    folder = Path(output_dir)
    files = result_files(folder)
    if not files["report"].is_file():
        raise SparseImplantError(f"'{folder}' holds no {contract.REPORT_FILE}: the generate step did not finish")
    report = json.loads(files["report"].read_text())
    missing = [key for key in ("completed", "defective") if key not in files]
    if missing:
        raise SparseImplantError(f"'{folder}' lacks the {missing[0]} skull mesh: run generate again")
    surfaces = {key: read_mesh(files[key]) if key in files else None
                for key in ("completed", "defective", "implant", "distance")}
    return add_results(scene, read_volume(files["completed_mask"]), read_volume(files["implant_mask"]), surfaces,
                       name=name, metrics=report.get("metrics"), report=report)


def result_rows(metrics: Optional[Dict[str, Optional[float]]] = None,
                report: Optional[dict] = None) -> List[Tuple[str, str, str]]:
    """(label, value, unit) rows of the results table: implant volume, the implant report (area,
    thickness, border fit, watertight: ``implant_report``), metrics, then stage timings."""
    rows = []
    if report is not None and report.get("implant_volume_ml") is not None:
        rows.append(("Implant volume", f"{report['implant_volume_ml']:.1f}", "ml"))
    fit = (report or {}).get("implant_report")
    if fit:
        def mm(value: Optional[float]) -> str:
            return "n/a" if value is None else f"{value:.2f}"

        thickness = fit["thickness_mm"]
        rows += [("Implant area", f"{fit['area_cm2']:.1f}", "cm²"),
                 *((f"Thickness ({key})", mm(thickness[key]), "mm") for key in ("min", "median", "max")),
                 ("Border gap (95th pct.)", mm(fit["gap_mm"]), "mm"),
                 ("Border overlap (95th pct.)", mm(fit["overlap_mm"]), "mm"),
                 ("Watertight", "yes" if fit["watertight"] else
                  f"no ({fit['boundary_edges']} open, {fit['non_manifold_edges']} non-manifold edges)", "")]
    shown = {metric.key: (metric.label, metric.unit) for metric in METRICS}
    for key, value in (metrics or {}).items():
        label, unit = shown.get(key, (key, ""))
        rows.append((label, "n/a" if value is None else f"{value:.4g}", unit))
    for stage, seconds in (report or {}).get("timings_s", {}).items():
        rows.append((f"Time: {stage}", f"{seconds:.1f}", "s"))
    return rows


def metrics_table(scene, metrics: Optional[Dict[str, Optional[float]]], name: str,
                  report: Optional[dict] = None) -> "slicer.vtkMRMLTableNode":
    """Quantity | value | unit, for the module's results table (``result_rows``)."""
    node = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
    table = node.GetTable()
    for title in ("Metric", "Value", "Unit"):
        column = vtk.vtkStringArray()
        column.SetName(title)
        table.AddColumn(column)
    for texts in result_rows(metrics, report):
        row = table.InsertNextBlankRow()
        for column, text in enumerate(texts):
            table.SetValue(row, column, vtk.vtkVariant(text))
    node.Modified()
    return node


EXPORT_FORMATS = ("STL", "OBJ")


def export_segments(segmentation_node, folder: Path, segment_names: Sequence[str] = (COMPLETED_SEGMENT, IMPLANT_SEGMENT),
                    file_format: str = "STL") -> List[Path]:
    """Write closed surfaces of the named segments (LPS, mm, as Slicer writes for 3D printing).

    Existing files are not overwritten: the user picks another folder instead."""
    file_format = file_format.upper()
    if file_format not in EXPORT_FORMATS:
        raise SparseImplantError(f"cannot export '{file_format}': choose one of {', '.join(EXPORT_FORMATS)}")
    folder = Path(folder)
    if not folder.is_dir():
        raise SparseImplantError(f"export folder '{folder}' does not exist: choose an existing folder")
    segmentation = segmentation_node.GetSegmentation()
    ids = vtk.vtkStringArray()
    targets = []
    for name in segment_names:
        segment_id = segmentation.GetSegmentIdBySegmentName(name)
        if not segment_id:
            raise SparseImplantError(f"segmentation '{segmentation_node.GetName()}' has no segment '{name}'")
        ids.InsertNextValue(segment_id)
        targets.append(folder / f"{segmentation_node.GetName()}_{name}.{file_format.lower()}")
    existing = [str(path) for path in targets if path.exists()]
    if existing:
        raise SparseImplantError(f"{existing[0]} already exists: choose an empty folder or move the old files")
    enable_segmentations(segmentation_node.GetScene())
    segmentation_node.CreateClosedSurfaceRepresentation()
    if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsClosedSurfaceRepresentationToFiles(
            str(folder), segmentation_node, ids, file_format, True, 1.0, False):
        raise SparseImplantError(f"could not export meshes into '{folder}': check free disk space and permissions")
    missing = [str(path) for path in targets if not path.exists()]
    if missing:
        raise SparseImplantError(f"Slicer did not write {missing[0]}: check the segment's closed surface and the folder")
    return targets
