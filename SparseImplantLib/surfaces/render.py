"""Offscreen three-panel preview: completed skull | implant in the defect | signed-distance colour map.

One render window with three viewports sharing one camera, rendered through EGL (or OSMesa) without a
display; used for the CLI's preview.png (the catalog screenshot shows the module's own MRML views).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional, Sequence, Tuple

import vtkmodules.vtkRenderingFreeType  # noqa: F401  (text of titles and legend)
import vtkmodules.vtkRenderingOpenGL2  # noqa: F401  (the render window's implementation)
from vtkmodules.vtkCommonCore import vtkLookupTable
from vtkmodules.vtkCommonDataModel import vtkImageData, vtkPolyData
from vtkmodules.vtkIOImage import vtkPNGWriter
from vtkmodules.vtkRenderingAnnotation import vtkScalarBarActor
from vtkmodules.vtkRenderingCore import (
    vtkActor,
    vtkPolyDataMapper,
    vtkRenderWindow,
    vtkRenderer,
    vtkTextActor,
    vtkWindowToImageFilter,
)

from ..contract import DISTANCE_ARRAY
from ..outputs import PathLike, atomic_write
from .view_style import defect_camera, distance_color_limit, diverging_lookup_table

BONE = (0.93, 0.89, 0.80)
IMPLANT = (0.95, 0.55, 0.15)
BACKGROUND = (0.10, 0.11, 0.14)
TEXT = (0.95, 0.95, 0.95)


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
    table = diverging_lookup_table(distance_color_limit(distance_surface, distance_array))

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
