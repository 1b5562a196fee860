"""One run's results in the scene: the result segmentation (completed skull and implant), the models
pinned to the three views, the results table, and the export of segments for 3D printing. Each run
adds new nodes, marked as results; earlier runs' nodes are hidden, never changed or removed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import slicer
import vtk

from .. import contract
from ..errors import SparseImplantError
from ..metrics import METRICS
from ..outputs import PathLike
from ..pipeline.io import read_volume
from ..pipeline.volume import LPS_TO_RAS, Volume
from ..surfaces.meshes import read_mesh, transform_polydata
from ..surfaces.view_style import distance_color_limit
from .scene_input import enable_segmentations, oriented_image
from .scene_views import BONE_COLOR, face_implant, show_distance, three_view_nodes

COMPLETED_SEGMENT = "Completed skull"
IMPLANT_SEGMENT = "Implant"
IMPLANT_COLOR = (0.27, 0.62, 0.92)


# DICOM/SNOMED terminology so the segments keep their meaning in exported .seg.nrrd / DICOM SEG.
TERMINOLOGY = {
    COMPLETED_SEGMENT: "Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure"
                       "~SCT^89546000^Bone structure of cranium~^^~Anatomic codes - DICOM master list~^^~^^",
    IMPLANT_SEGMENT: "Segmentation category and type - 3D Slicer General Anatomy list~SCT^260787004^Physical object"
                     "~SCT^40388003^Implant~^^~Anatomic codes - DICOM master list~^^~^^",
}


def _set_segment(segmentation_node, name: str, mask: Volume, color: Tuple[float, float, float]) -> str:
    segment_id = segmentation_node.AddSegmentFromBinaryLabelmapRepresentation(oriented_image(mask), name, color)
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
                                                  converter.SerializeImageGeometry(oriented_image(completed)))
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
    result.legend = show_distance(result.models["distance"], distance_color_limit(surfaces["distance"]), [views[2]])
    implant_model = result.models.get("implant")
    face_implant(scene, views, result.models["completed"].GetPolyData(),
                 implant_model.GetPolyData() if implant_model is not None else None)
    if metrics or report:
        result.metrics_table = metrics_table(scene, metrics, f"{name} - results", report)
    for node in result.all_nodes():
        node.SetAttribute(RESULT_ATTRIBUTE, result.segmentation.GetName())
    return result


def _put_under(hierarchy: "slicer.vtkMRMLSubjectHierarchyNode", node: "slicer.vtkMRMLNode", parent: int) -> None:
    """Move ``node``'s subject-hierarchy item under ``parent``. Slicer gives every new data node an item
    (its plugin logic); a bare slicer-core scene has none, so the node gets its item here."""
    item = hierarchy.GetItemByDataNode(node)
    if item:
        hierarchy.SetItemParent(item, parent)
    else:
        hierarchy.CreateItem(parent, node)


def place_with_input(result: ResultNodes, input_node: "slicer.vtkMRMLNode") -> int:
    """File one run's results with the node it read, as TotalSegmentator and MONAIAuto3DSeg file theirs.

    The segmentation goes directly under the input's parent (its study, a folder, or the scene): a
    study's direct children are the series that DICOM export offers. The models and the results table
    go into a folder for the run beside it, so that a study keeps one segmentation and one folder per
    run instead of six loose nodes; the legend is a display node of the distance model and moves with
    it. A CT volume input becomes the segmentation's reference geometry (Segment Editor, DICOM SEG
    export), and a segment input passes on its own reference volume; the masks are on that grid
    already, so no voxel changes. The input is only read.
    Returns the folder's item."""
    scene = result.segmentation.GetScene()
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    input_item = hierarchy.GetItemByDataNode(input_node)
    parent = hierarchy.GetItemParent(input_item) if input_item else hierarchy.GetSceneItemID()
    _put_under(hierarchy, result.segmentation, parent)
    folder = hierarchy.CreateFolderItem(parent, f"{result.segmentation.GetName()} - models and results")
    for node in [*result.models.values(), result.metrics_table]:
        if node is not None:
            _put_under(hierarchy, node, folder)
    role = result.segmentation.GetReferenceImageGeometryReferenceRole()
    if input_node.IsA("vtkMRMLScalarVolumeNode"):
        result.segmentation.SetReferenceImageGeometryParameterFromVolumeNode(input_node)
    elif input_node.GetNodeReference(role) is not None:
        # A segment input's own reference volume, for DICOM SEG export; its masks came out on that
        # volume's geometry already, so the segmentation's geometry parameter stays as it is.
        result.segmentation.SetNodeReferenceID(role, input_node.GetNodeReferenceID(role))
    return folder


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


def read_report(output_dir: PathLike) -> Optional[dict]:
    """The run's report.json, or None when the worker did not get as far as writing it."""
    path = Path(output_dir) / contract.REPORT_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def add_results_from_folder(scene, output_dir: PathLike, name: str = "Implant design",
                            report: Optional[dict] = None) -> ResultNodes:
    """Load what ``sparseimplant generate`` wrote (the Slicer module runs it in a subprocess);
    ``report``: its report.json when the caller has read it already (``read_report``)."""
    folder = Path(output_dir)
    files = result_files(folder)
    report = report if report is not None else read_report(folder)
    if report is None:
        raise SparseImplantError(f"'{folder}' holds no {contract.REPORT_FILE}: the generate step did not finish")
    missing = [key for key in ("completed", "defective") if key not in files]
    if missing:
        raise SparseImplantError(f"'{folder}' lacks the {missing[0]} skull mesh: run generate again")
    surfaces = {key: read_mesh(files[key]) if key in files else None
                for key in ("completed", "defective", "implant", "distance")}
    return add_results(scene, read_volume(files["completed_mask"]), read_volume(files["implant_mask"]), surfaces,
                       name=name, metrics=report.get("metrics"), report=report)


def result_rows(metrics: Optional[Dict[str, Optional[float]]] = None,
                report: Optional[dict] = None) -> List[Tuple[str, str, str]]:
    """(label, value, unit) rows of the results table: what designed the implant, its volume, the implant report (area,
    thickness, border fit, watertight: ``implant_report``), metrics, then stage timings."""
    rows = []
    if (report or {}).get("completed_by"):  # with method auto, the fitted shape where the network left the opening open
        rows.append(("Designed by", contract.designer_in_words(report), ""))
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
