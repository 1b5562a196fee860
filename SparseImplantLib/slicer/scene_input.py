"""The user's input as a mask: a segment or a volume node of the scene as a ``Volume`` (LPS geometry,
parent transforms applied), and masks back as labelmap nodes. Works on a bare ``vtkMRMLScene``
(slicer-core) and in Slicer; nothing here modifies the input nodes.
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from ..errors import SparseImplantError
from ..pipeline.volume import LPS_TO_RAS, Volume
from ..surfaces.meshes import image_data, vtk_matrix

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


def oriented_image(volume: Volume) -> "slicer.vtkOrientedImageData":
    """A mask as Slicer's binary-labelmap image (geometry in its image-to-world matrix)."""
    image = image_data(volume.array.astype(np.uint8), slicer.vtkOrientedImageData())
    image.SetImageToWorldMatrix(vtk_matrix(volume.index_to_ras()))
    return image


def add_labelmap_node(scene, volume: Volume, name: str) -> "slicer.vtkMRMLLabelMapVolumeNode":
    """A labelmap volume node holding ``volume`` (image in IJK, geometry in IJKToRAS, as Slicer stores it)."""
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", scene.GenerateUniqueName(name))
    node.SetAndObserveImageData(image_data(volume.array.astype(np.uint8)))
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
