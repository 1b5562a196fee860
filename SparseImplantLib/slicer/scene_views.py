"""The three linked 3D views (completed skull, implant in its defect, signed distance) in a custom
layout, their cameras turned towards the implant, and the signed-distance colouring with its legend
(the colour map and camera of ``surfaces.view_style``, shared with the preview PNG).
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import slicer
import vtk

from ..contract import DISTANCE_ARRAY
from ..errors import SparseImplantError
from ..surfaces.view_style import defect_camera, diverging_lookup_table

DISTANCE_TITLE = "Signed distance (mm)"


BONE_COLOR = (0.945, 0.839, 0.569)  # Slicer's "bone" colour


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
    """Turn the views' cameras to look at the skull from the implant's side (``surfaces.view_style.defect_camera``)."""
    camera = defect_camera(completed_ras, implant_ras)
    for view in views:
        node = view_camera(scene, view)
        node.SetFocalPoint(*camera.GetFocalPoint())
        node.SetPosition(*camera.GetPosition())
        node.SetViewUp(*camera.GetViewUp())


def show_three_view_layout(scene) -> None:
    layout_node(scene).SetViewArrangement(LAYOUT_ID)


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
