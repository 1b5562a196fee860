"""Offscreen three-panel preview: completed skull | implant in the defect | signed-distance colour map.

One render window with three viewports sharing one camera, rendered through EGL (or OSMesa) without a
display; used for the CLI's preview.png (the catalog screenshot shows the module's own MRML views).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
import vtkmodules.vtkRenderingFreeType  # noqa: F401  (text of titles and legend)
import vtkmodules.vtkRenderingOpenGL2  # noqa: F401  (the render window's implementation)
from vtkmodules.vtkCommonCore import vtkLookupTable
from vtkmodules.vtkCommonDataModel import vtkImageData, vtkPolyData
from vtkmodules.vtkIOImage import vtkPNGWriter
from vtkmodules.vtkRenderingAnnotation import vtkScalarBarActor
from vtkmodules.util.numpy_support import vtk_to_numpy
from vtkmodules.vtkRenderingCore import (
    vtkActor,
    vtkCamera,
    vtkColorTransferFunction,
    vtkPolyDataMapper,
    vtkRenderWindow,
    vtkRenderer,
    vtkTextActor,
    vtkWindowToImageFilter,
)

from .contract import DISTANCE_ARRAY
from .io import PathLike, atomic_write

BONE = (0.93, 0.89, 0.80)
IMPLANT = (0.95, 0.55, 0.15)
BACKGROUND = (0.10, 0.11, 0.14)
TEXT = (0.95, 0.95, 0.95)


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


def color_legend(table: vtkLookupTable, title: str) -> vtkScalarBarActor:
    legend = vtkScalarBarActor()
    legend.SetLookupTable(table)
    legend.SetTitle(title)
    legend.SetNumberOfLabels(5)
    legend.SetLabelFormat("%+.1f")
    legend.SetOrientationToVertical()
    legend.SetWidth(0.12)
    legend.SetHeight(0.6)
    legend.SetPosition(0.85, 0.2)
    legend.UnconstrainedFontSizeOn()
    for text in (legend.GetTitleTextProperty(), legend.GetLabelTextProperty()):
        text.SetColor(*TEXT)
        text.SetFontSize(14)
        text.ItalicOff()
        text.ShadowOff()
    return legend


def _actor(surface: vtkPolyData, color: Optional[Tuple[float, float, float]] = None,
           table: Optional[vtkLookupTable] = None) -> vtkActor:
    mapper = vtkPolyDataMapper()
    mapper.SetInputData(surface)
    if table is None:
        mapper.ScalarVisibilityOff()
    else:
        mapper.SetLookupTable(table)
        mapper.UseLookupTableScalarRangeOn()
        mapper.SetScalarModeToUsePointData()
    actor = vtkActor()
    actor.SetMapper(mapper)
    if color is not None:
        actor.GetProperty().SetColor(*color)
    actor.GetProperty().SetSpecular(0.2)
    actor.GetProperty().SetSpecularPower(20)
    return actor


def _title(text: str) -> vtkTextActor:
    actor = vtkTextActor()
    actor.SetInput(text)
    actor.GetTextProperty().SetColor(*TEXT)
    actor.GetTextProperty().SetFontSize(18)
    actor.GetTextProperty().BoldOn()
    position = actor.GetPositionCoordinate()
    position.SetCoordinateSystemToNormalizedViewport()  # relative to its own panel
    position.SetValue(0.03, 0.03)
    return actor


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


def headless_linux() -> bool:
    """Linux with neither an X nor a Wayland display. Windows and macOS never set DISPLAY and have
    their own native offscreen windows, which EGL would replace with a class their VTK lacks."""
    return sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def offscreen_window(size: Sequence[int]) -> vtkRenderWindow:
    if headless_linux():
        # Without a display VTK would first try X; go straight to EGL (OSMesa remains VTK's fallback).
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    window = vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(int(size[0]), int(size[1]))
    window.SetMultiSamples(0)
    return window


def capture_window(window: vtkRenderWindow) -> vtkImageData:
    """A copy of the rendered pixels (the back buffer, which offscreen windows draw into)."""
    grabber = vtkWindowToImageFilter()
    grabber.SetInput(window)
    grabber.ReadFrontBufferOff()
    grabber.Update()
    image = vtkImageData()
    image.DeepCopy(grabber.GetOutput())
    return image


def write_png(image: vtkImageData, path: PathLike) -> Path:
    """Write ``image`` as a PNG, atomically."""
    writer = vtkPNGWriter()
    writer.SetInputData(image)

    def write(temporary: Path) -> None:
        writer.SetFileName(str(temporary))
        writer.Write()

    return atomic_write(path, write)


def render_three_panel(completed: vtkPolyData, defective: vtkPolyData, implant: Optional[vtkPolyData],
                       distance_surface: vtkPolyData, path: PathLike, size: Tuple[int, int] = (1800, 600),
                       title_mm: str = "Signed distance (mm)", distance_array: str = DISTANCE_ARRAY) -> Path:
    """PNG of three linked views; ``implant`` may be None or empty (no bone was added)."""
    window = offscreen_window(size)
    camera = defect_camera(completed, implant)
    values = distance_surface.GetPointData().GetArray(distance_array)
    largest = max(abs(values.GetRange()[0]), abs(values.GetRange()[1])) if values is not None and values.GetNumberOfTuples() else 1.0
    limit = color_limit_mm(largest)
    table = diverging_lookup_table(limit)

    panels = [
        ("Completed skull", [_actor(completed, BONE)]),
        ("Implant in the defect", [_actor(defective, BONE)] + ([_actor(implant, IMPLANT)] if implant is not None and implant.GetNumberOfPoints() else [])),
        (title_mm, [_actor(distance_surface, table=table)]),
    ]
    for index, (title, actors) in enumerate(panels):
        renderer = vtkRenderer()
        renderer.SetViewport(index / 3.0, 0.0, (index + 1) / 3.0, 1.0)
        renderer.SetBackground(*BACKGROUND)
        renderer.SetActiveCamera(camera)  # one camera object: the three views stay linked
        for actor in actors:
            renderer.AddActor(actor)
        renderer.AddViewProp(_title(title))
        if index == 2:
            renderer.AddViewProp(color_legend(table, "mm"))
        window.AddRenderer(renderer)
    window.GetRenderers().GetFirstRenderer().ResetCameraClippingRange()  # before the one render it takes
    window.Render()

    result = write_png(capture_window(window), path)
    window.Finalize()
    return result
