"""The catalog screenshot, drawn as Slicer draws the module's results.

    python Utilities/catalog_screenshot.py [-o Resources/Screenshots/three_panel.png]

Runs ``sparseimplant generate`` on the bundled sample as the module runs it, loads the folder into a
slicer-core scene with ``scene_results.add_results_from_folder`` and renders the module's three linked MRML 3D
views offscreen with Slicer's own displayable managers (no Qt), one camera shared by the three.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import slicer  # noqa: E402
import vtk  # noqa: E402

from SparseImplantLib.slicer import scene_results, scene_views  # noqa: E402
from SparseImplantLib.surfaces.render import capture_window, defect_camera, offscreen_window, write_png  # noqa: E402

SAMPLE = ROOT / "Resources" / "SampleData" / "SkullFix_050_defective.nrrd"
SCREENSHOT = ROOT / "Resources" / "Screenshots" / "three_panel.png"
THREE_D_DISPLAYABLE_MANAGERS = ("vtkMRMLCameraDisplayableManager", "vtkMRMLViewDisplayableManager",
                                "vtkMRMLModelDisplayableManager", "vtkMRMLSegmentationsDisplayableManager3D",
                                "vtkMRMLColorLegendDisplayableManager")
APPLICATION_SINGLETONS = ("vtkMRMLInteractionNode", "vtkMRMLSelectionNode")


def add_application_singletons(scene) -> None:
    """The interaction and selection nodes Slicer's application logic puts in every scene: the
    displayable managers look them up, and each warns that the scene lacks them where they are missing."""
    for node_class in APPLICATION_SINGLETONS:
        if scene.GetFirstNodeByClass(node_class) is None:
            scene.AddNode(getattr(slicer, node_class)())


class OffscreenViews:
    """3D view nodes drawn offscreen by Slicer's own displayable managers, without Qt.

    Attach before adding the nodes to show, as Slicer's views exist before a module adds results
    (the colour-legend manager only picks up legends added after it)."""

    def __init__(self, views: Sequence, size: Tuple[int, int] = (600, 600)) -> None:
        self._pipelines: List[tuple] = []
        add_application_singletons(views[0].GetScene())
        for view in views:
            window = offscreen_window(size)
            renderer = vtk.vtkRenderer()
            window.AddRenderer(renderer)
            interactor = vtk.vtkGenericRenderWindowInteractor()  # displayable managers expect one
            interactor.SetRenderWindow(window)
            interactor.Initialize()
            group = slicer.vtkMRMLDisplayableManagerGroup()
            for name in THREE_D_DISPLAYABLE_MANAGERS:
                group.AddDisplayableManager(getattr(slicer, name)())
            group.SetRenderer(renderer)
            group.SetMRMLDisplayableNode(view)
            self._pipelines.append((group, renderer, interactor, window))

    def capture(self, path: Path, camera: Optional[vtk.vtkCamera] = None) -> Path:
        """PNG of the views side by side; one shared ``camera`` (RAS) mimics Slicer's linked views."""
        append = vtk.vtkImageAppend()
        append.SetAppendAxis(0)
        for group, renderer, interactor, window in self._pipelines:
            if camera is not None:
                renderer.GetActiveCamera().DeepCopy(camera)
                renderer.ResetCameraClippingRange()
            window.Render()
            append.AddInputData(capture_window(window))
        append.Update()
        return write_png(append.GetOutput(), path)

    def close(self) -> None:
        for group, renderer, interactor, window in self._pipelines:
            group.SetMRMLDisplayableNode(None)
            window.Finalize()
        self._pipelines = []


def render_results(output_dir: Path, png: Path, size: Tuple[int, int] = (600, 600)) -> Path:
    """The three views of a ``generate`` folder's results, as the module shows them, as one PNG."""
    scene = slicer.vtkMRMLScene()
    views = OffscreenViews(scene_views.three_view_nodes(scene), size)
    try:
        result = scene_results.add_results_from_folder(scene, output_dir)
        completed = result.models["completed"].GetPolyData()
        implant = result.models["implant"].GetPolyData() if "implant" in result.models else completed
        return views.capture(png, defect_camera(completed, implant))
    finally:
        views.close()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=SCREENSHOT, help=f"PNG to write (default: {SCREENSHOT})")
    parser.add_argument("--size", type=int, default=600, help="pixels per view (square)")
    args = parser.parse_args(argv)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run([sys.executable, "-m", "SparseImplantLib.cli", "generate", str(SAMPLE), "-o", folder,
                        "--device", "cpu", "--progress", "none", "--no-preview", "--mesh-formats", "vtk"],
                       env=env, check=True)
        print(render_results(Path(folder), args.output, (args.size, args.size)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
