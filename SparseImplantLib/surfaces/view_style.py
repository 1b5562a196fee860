"""How the signed distance and the defect are shown, the same in the preview PNG (``render``) and in
Slicer's views (``slicer.scene_views``): the diverging colour map, its range, and the camera that
faces the implant. VTK only; no rendering, so the scene side does not pull in an offscreen window.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from vtkmodules.util.numpy_support import vtk_to_numpy
from vtkmodules.vtkCommonCore import vtkLookupTable
from vtkmodules.vtkCommonDataModel import vtkPolyData
from vtkmodules.vtkRenderingCore import vtkCamera, vtkColorTransferFunction

from ..contract import DISTANCE_ARRAY


def diverging_lookup_table(max_abs_mm: float) -> vtkLookupTable:
    """Blue (inside, negative) - white (0) - red (outside, positive), symmetric around 0."""
    limit = max(float(max_abs_mm), 1e-3)
    transfer = vtkColorTransferFunction()
    transfer.SetColorSpaceToDiverging()
    transfer.AddRGBPoint(-limit, 0.23, 0.30, 0.75)
    transfer.AddRGBPoint(0.0, 0.87, 0.87, 0.87)
    transfer.AddRGBPoint(limit, 0.71, 0.02, 0.15)
    table = vtkLookupTable()
    table.SetNumberOfTableValues(256)
    table.SetRange(-limit, limit)
    for index in range(256):
        value = -limit + 2 * limit * index / 255.0
        table.SetTableValue(index, *transfer.GetColor(value), 1.0)
    table.Build()
    return table


def color_limit_mm(largest_abs_mm: float) -> float:
    """Symmetric colour range: the largest |distance| rounded up to 0.5 mm, capped at 10 mm so small
    errors stay visible next to a large defect."""
    return float(np.ceil(min(largest_abs_mm, 10.0) * 2) / 2) or 0.5


def distance_color_limit(surface: vtkPolyData, array_name: str = DISTANCE_ARRAY) -> float:
    """``color_limit_mm`` of the surface's distance array (1 mm when it has none)."""
    values = surface.GetPointData().GetArray(array_name)
    largest = max(abs(v) for v in values.GetRange()) if values is not None and values.GetNumberOfTuples() else 1.0
    return color_limit_mm(largest)


def _centre(surface: vtkPolyData) -> np.ndarray:
    bounds = np.array(surface.GetBounds()).reshape(3, 2)
    return bounds.mean(axis=1)


def _centroid(surface: vtkPolyData) -> np.ndarray:
    return vtk_to_numpy(surface.GetPoints().GetData()).mean(axis=0)


def defect_camera(completed: vtkPolyData, implant: Optional[vtkPolyData]) -> vtkCamera:
    """Camera facing the implant: on the line from the skull's centre through the implant's centroid,
    framing the skull, so a defect on the side or the front is seen, not hidden behind the skull.
    Superior (+z) is up, in LPS and RAS alike."""
    centre = _centre(completed)
    direction = np.array([0.0, 1.0, 0.3])  # no implant: from posterior (LPS) and a little above
    if implant is not None and implant.GetNumberOfPoints():
        offset = _centroid(implant) - centre
        if np.linalg.norm(offset) > 1e-6:
            direction = offset
    direction = direction / np.linalg.norm(direction)
    bounds = np.array(completed.GetBounds()).reshape(3, 2)
    radius = float(np.linalg.norm(bounds[:, 1] - bounds[:, 0])) / 2
    camera = vtkCamera()
    camera.SetFocalPoint(*centre)
    camera.SetPosition(*(centre + direction * radius * 3.2))
    up = np.array([0.0, 0.0, 1.0])
    if abs(float(np.dot(up, direction))) > 0.95:
        up = np.array([0.0, -1.0, 0.0])  # looking from the top: -y up
    camera.SetViewUp(*up)
    camera.SetViewAngle(30)
    return camera
