"""SparseImplant: patient-specific cranial implants from a defective skull segmentation.

Slicer's scripted-module template (Module / Widget / Logic / Test). The widget only wires the user
interface to ``SparseImplantLib``: ``designer.ImplantDesigner`` exports the inputs, runs
``sparseimplant generate`` in a PythonSlicer subprocess and loads the results through ``mrml``.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Annotated, List, Optional

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.util import VTKObservationMixin

# The library sits next to this file once installed, and one folder up in the source tree.
_MODULE_DIR = Path(__file__).resolve().parent
for _candidate in (_MODULE_DIR, _MODULE_DIR.parent):
    if (_candidate / "SparseImplantLib").is_dir() and str(_candidate) not in sys.path:
        sys.path.insert(0, str(_candidate))
        break

from SparseImplantLib import mrml  # noqa: E402
from SparseImplantLib.designer import DesignInputs, ImplantDesigner  # noqa: E402
from SparseImplantLib.errors import SparseImplantError  # noqa: E402
from SparseImplantLib.job import GenerateJob, GenerateRequest  # noqa: E402

SAMPLE_NAME = "SkullFix050Defective"
SAMPLE_FILE = "SkullFix_050_defective.nrrd"
SAMPLE_SHA256 = "SHA256:1120f6d4d7364f05a501550b368293c747caba823ae22049193c0ed23bb359f3"
DEVICES = {"Auto": "auto", "GPU": "cuda", "CPU": "cpu"}
PYTORCH_REQUIREMENT = ">=2.1"
PIP_PACKAGES = {"safetensors": "safetensors", "scipy": "scipy", "tqdm": "tqdm", "SimpleITK": "SimpleITK"}


def _resource_dir() -> Path:
    """Top-level Resources/ (weights, sample data): beside the module once installed, one up in the source tree."""
    for candidate in (_MODULE_DIR / "Resources", _MODULE_DIR.parent / "Resources"):
        if (candidate / "SampleData").is_dir():
            return candidate
    return _MODULE_DIR / "Resources"


#
# SparseImplant
#


class SparseImplant(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("SparseImplant")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["SparseImplant developers"]
        self.parent.helpText = _(
            "Completes a defective skull with a sparse convolutional network at full CT resolution and designs "
            "the cranial implant: completed skull, implant, and a signed-distance colour map in three linked 3D "
            "views, with STL/OBJ export for 3D printing. The extension's README has the tutorial and troubleshooting."
            "<br><br>Method: J. Li, C. Gsaxner, A. Pepe, D. Schmalstieg, J. Kleesiek, J. Egger. Sparse convolutional "
            "neural network for high-resolution skull shape completion and shape super-resolution. "
            'Scientific Reports 13, 20229 (2023), <a href="https://doi.org/10.1038/s41598-023-47437-6">'
            "doi:10.1038/s41598-023-47437-6</a>."
            "<br><br>The bundled model was trained on SkullFix (CC BY-NC-SA 4.0): research use only, not for "
            "commercial or clinical use without your own validation."
        )
        self.parent.acknowledgementText = _(
            "SkullFix data: O. Kodym et al., SkullBreak / SkullFix - Dataset for automatic cranial implant "
            "design, Data in Brief 35 (2021), derived from CQ500 (qure.ai), CC BY-NC-SA 4.0."
        )
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """A defective skull (SkullFix case 050) in the Sample Data module, loaded as a segmentation."""
    import SampleData

    sample = _resource_dir() / "SampleData" / SAMPLE_FILE
    if not sample.is_file():
        return
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="SparseImplant",
        sampleName=SAMPLE_NAME,
        thumbnailFileName=str(_MODULE_DIR / "Resources" / "Icons" / "SparseImplant.png"),
        uris=sample.as_uri(),
        fileNames=SAMPLE_FILE,
        nodeNames=SAMPLE_NAME,
        checksums=SAMPLE_SHA256,
        loadFileType="SegmentationFile",
    )


#
# Parameter node
#


@parameterNodeWrapper
class SparseImplantParameterNode:
    """What the user chose. Segments are picked with segment selectors and stored by ID."""

    inputSegmentation: vtkMRMLSegmentationNode
    inputSegmentId: str = ""
    inputVolume: vtkMRMLScalarVolumeNode
    boneThreshold: Annotated[float, WithinRange(-1000, 3000)] = 300.0
    referenceSegmentation: vtkMRMLSegmentationNode
    referenceSegmentId: str = ""
    model: str = ""
    device: Annotated[str, Choice(list(DEVICES))] = "Auto"
    refine: bool = True


#
# SparseImplantWidget
#


class SparseImplantWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    POLL_INTERVAL_MS = 200

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: Optional[SparseImplantLogic] = None
        self._parameterNode: Optional[SparseImplantParameterNode] = None
        self._parameterNodeGuiTag = None
        self._job: Optional[GenerateJob] = None
        self._request: Optional[GenerateRequest] = None
        self._lastResult: Optional[mrml.ResultNodes] = None
        self._timer = qt.QTimer()
        self._timer.setInterval(self.POLL_INTERVAL_MS)
        self._timer.timeout.connect(self.onPoll)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SparseImplant.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SparseImplantLogic()

        self.ui.modelSelector.addItems(self.logic.availableModels())
        self.ui.inputSegmentSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onSegmentSelectionChanged)
        self.ui.inputSegmentSelector.connect("currentSegmentChanged(QString)", self.onSegmentSelectionChanged)
        self.ui.referenceSegmentSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onSegmentSelectionChanged)
        self.ui.referenceSegmentSelector.connect("currentSegmentChanged(QString)", self.onSegmentSelectionChanged)
        self.ui.modelSelector.connect("currentTextChanged(QString)", self.onSegmentSelectionChanged)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.exportButton.connect("clicked(bool)", self.onExportButton)
        self.ui.exportDirectoryButton.directory = str(Path.home())

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.cancelJob()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        self.cancelJob()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputSegmentation:
            self._parameterNode.inputSegmentation = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSegmentationNode")

    def setParameterNode(self, inputParameterNode: Optional[SparseImplantParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            # Segment selectors are not bound by the wrapper: restore them by hand.
            self.ui.inputSegmentSelector.setCurrentNode(self._parameterNode.inputSegmentation)
            if self._parameterNode.inputSegmentId:
                self.ui.inputSegmentSelector.setCurrentSegmentID(self._parameterNode.inputSegmentId)
            self.ui.referenceSegmentSelector.setCurrentNode(self._parameterNode.referenceSegmentation)
            if self._parameterNode.referenceSegmentId:
                self.ui.referenceSegmentSelector.setCurrentSegmentID(self._parameterNode.referenceSegmentId)
            if self._parameterNode.model:
                self.ui.modelSelector.setCurrentText(self._parameterNode.model)
            self._updateRefinement()
            self._updateButtons()

    def onSegmentSelectionChanged(self, *unused) -> None:
        if not self._parameterNode:
            return
        self._parameterNode.inputSegmentation = self.ui.inputSegmentSelector.currentNode()
        self._parameterNode.inputSegmentId = self.ui.inputSegmentSelector.currentSegmentID() or ""
        self._parameterNode.referenceSegmentation = self.ui.referenceSegmentSelector.currentNode()
        self._parameterNode.referenceSegmentId = self.ui.referenceSegmentSelector.currentSegmentID() or ""
        self._parameterNode.model = self.ui.modelSelector.currentText
        self._updateRefinement()

    def _updateRefinement(self) -> None:
        """The super-resolution checkbox only means something when the registry has a model for the chosen one."""
        refiner = self.logic.refinementModel(self._parameterNode.model)
        self.ui.refineCheckBox.enabled = refiner is not None
        self.ui.refineCheckBox.toolTip = (
            _("Redraw the implant region with '{name}' on its finer grid.").format(name=refiner) if refiner
            else _("No super-resolution model for this model is installed (none is bundled; see the README)."))

    def _updateButtons(self, caller=None, event=None) -> None:
        if self._job is not None:
            self.ui.applyButton.text = _("Cancel")
            self.ui.applyButton.enabled = True
            return
        self.ui.applyButton.text = _("Generate Implant")
        parameters = self._parameterNode
        hasInput = bool(parameters and ((parameters.inputSegmentation and parameters.inputSegmentId) or parameters.inputVolume))
        self.ui.applyButton.enabled = hasInput
        self.ui.applyButton.toolTip = (_("Complete the skull and design the implant (click again to cancel).") if hasInput
                                       else _("Select the defective skull segment or a CT volume first."))
        self.ui.exportButton.enabled = self._lastResult is not None

    def onApplyButton(self) -> None:
        if self._job is not None:
            self.cancelJob()
            self.ui.statusLabel.text = _("Cancelled: the scene was not changed.")
            return
        if not self.logic.ensureDependencies():
            return
        try:
            self._request, self._job = self.logic.start(self._parameterNode)
        except SparseImplantError as error:
            slicer.util.errorDisplay(_("Generate Implant: {message}").format(message=str(error)))
            return
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = _("Starting...")
        self._timer.start()
        self._updateButtons()

    def onPoll(self) -> None:
        job = self._job
        if job is None:
            self._timer.stop()
            return
        for event in job.poll():
            self.ui.progressBar.value = int(round(100 * event.fraction))
            self.ui.statusLabel.text = event.message or event.stage
        if not job.finished:
            return
        self._timer.stop()
        request, self._job = self._request, None
        try:
            if job.succeeded:
                with slicer.util.WaitCursor():
                    self._lastResult = self.logic.finish(request)
                self.ui.metricsTableView.setMRMLTableNode(self._lastResult.metrics_table)
                self.ui.metricsTableView.visible = self._lastResult.metrics_table is not None
                self.ui.progressBar.value = 100
                self.ui.statusLabel.text = _("Done: '{name}'.").format(name=self._lastResult.segmentation.GetName())
            else:
                self.ui.statusLabel.text = _("Failed.")
                slicer.util.errorDisplay(_("Generate Implant failed: {message}").format(message=job.error_message()),
                                         detailedText="\n".join(job.log))
        except SparseImplantError as error:
            slicer.util.errorDisplay(_("Generate Implant: {message}").format(message=str(error)))
        finally:
            ImplantDesigner.discard(request)
            self._updateButtons()

    def cancelJob(self) -> None:
        if self._job is not None:
            self._timer.stop()
            self._job.cancel()
            ImplantDesigner.discard(self._request)
            self._job = self._request = None
            self.ui.progressBar.value = 0
            self._updateButtons()

    def onExportButton(self) -> None:
        folder = self.ui.exportDirectoryButton.directory
        try:
            paths = mrml.export_segments(self._lastResult.segmentation, Path(folder),
                                         file_format=self.ui.exportFormatSelector.currentText)
        except SparseImplantError as error:
            slicer.util.errorDisplay(_("Export: {message}").format(message=str(error)))
            return
        slicer.util.infoDisplay(_("Wrote:\n{files}").format(files="\n".join(str(p) for p in paths)))


#
# SparseImplantLogic
#


def pythonSlicerExecutable() -> str:
    """PythonSlicer runs the library with Slicer's Python and packages, outside the GUI process."""
    found = shutil.which("PythonSlicer")
    if found:
        return found
    name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
    return str(Path(slicer.app.slicerHome) / "bin" / name)


class SparseImplantLogic(ScriptedLoadableModuleLogic):
    """Usable without the GUI: ``process()`` runs the whole job and returns the result nodes."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.designer = ImplantDesigner(slicer.mrmlScene, python=pythonSlicerExecutable(),
                                        work_root=Path(slicer.app.temporaryPath) / "SparseImplant")

    def getParameterNode(self) -> SparseImplantParameterNode:
        return SparseImplantParameterNode(super().getParameterNode())

    @staticmethod
    def availableModels() -> List[str]:
        from SparseImplantLib.models.registry import load_registry

        try:
            return [info.name for info in load_registry() if info.kind == "completion"]
        except SparseImplantError as error:
            logging.warning(str(error))
            return []

    @staticmethod
    def refinementModel(modelName: str) -> Optional[str]:
        """The super-resolution model ``generate`` picks for ``modelName`` (empty: the default), if any."""
        from SparseImplantLib.models.registry import find_model, find_refiner

        try:
            refiner = find_refiner("auto", find_model(modelName or None))
        except SparseImplantError:
            return None
        return refiner.name if refiner else None

    @staticmethod
    def ensureDependencies(askConfirmation: bool = True) -> bool:
        """PyTorch through the PyTorch extension (it picks the CUDA build that fits), the rest with pip."""
        try:
            import torch  # noqa: F401
        except ImportError:
            try:
                import PyTorchUtils
            except ImportError:
                slicer.util.errorDisplay(_("SparseImplant needs the PyTorch extension: install 'PyTorch' from the "
                                           "Extensions Manager and restart Slicer."))
                return False
            torchLogic = PyTorchUtils.PyTorchUtilsLogic()
            if not torchLogic.torchInstalled():
                if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                        _("SparseImplant needs PyTorch (about 1-3 GB download). Install it now?")):
                    return False
                with slicer.util.WaitCursor():
                    if torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=PYTORCH_REQUIREMENT) is None:
                        slicer.util.errorDisplay(_("PyTorch could not be installed: see the Python console, or install "
                                                   "it from the PyTorch Utils module."))
                        return False
        missing = []
        for module, package in PIP_PACKAGES.items():
            try:
                __import__(module)
            except ImportError:
                missing.append(package)
        if missing:
            with slicer.util.WaitCursor():
                slicer.util.pip_install(" ".join(missing))
        return True

    def inputs(self, parameters: SparseImplantParameterNode) -> DesignInputs:
        return DesignInputs(
            segmentation_node=parameters.inputSegmentation if parameters.inputSegmentId else None,
            segment_id=parameters.inputSegmentId,
            ct_volume_node=parameters.inputVolume,
            threshold_hu=parameters.boneThreshold,
            reference_segmentation_node=parameters.referenceSegmentation if parameters.referenceSegmentId else None,
            reference_segment_id=parameters.referenceSegmentId,
            model=parameters.model or None,
            device=DEVICES[parameters.device],
            refine=parameters.refine,
        )

    def start(self, parameters: SparseImplantParameterNode):
        """Export the inputs and start the subprocess; returns (request, job)."""
        request = self.designer.prepare(self.inputs(parameters))
        return request, self.designer.start(request)

    def finish(self, request: GenerateRequest) -> mrml.ResultNodes:
        """Load a finished run into new nodes and switch to the three linked 3D views."""
        result = self.designer.load(request, name="Implant design")
        mrml.show_three_view_layout(slicer.mrmlScene)
        for view in mrml.three_view_nodes(slicer.mrmlScene):
            widget = slicer.app.layoutManager().viewWidget(view) if slicer.app.layoutManager() else None
            if widget is not None:
                widget.threeDView().resetFocalPoint()
        return result

    def process(self, parameters: SparseImplantParameterNode, timeoutSeconds: float = 3600.0) -> mrml.ResultNodes:
        """Blocking run for scripts and tests (keeps the application responsive while waiting)."""
        import time

        request, job = self.start(parameters)
        deadline = time.monotonic() + timeoutSeconds
        try:
            while not job.finished:
                if time.monotonic() > deadline:
                    job.cancel()
                    raise SparseImplantError(f"generate did not finish within {timeoutSeconds:.0f} s")
                job.poll()
                slicer.app.processEvents()
                time.sleep(0.1)
            job.poll()
            if not job.succeeded:
                raise SparseImplantError(job.error_message())
            return self.finish(request)
        finally:
            ImplantDesigner.discard(request)


#
# SparseImplantTest
#


class SparseImplantTest(ScriptedLoadableModuleTest):
    """Inside Slicer: sample skull -> Generate Implant with the bundled model on CPU -> results."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_GenerateImplantOnSample()

    def test_GenerateImplantOnSample(self) -> None:
        self.delayDisplay("Loading the sample defective skull")
        segmentation = slicer.util.loadSegmentation(str(_resource_dir() / "SampleData" / SAMPLE_FILE))
        segmentId = segmentation.GetSegmentation().GetNthSegmentID(0)
        self.assertTrue(SparseImplantLogic.ensureDependencies(askConfirmation=False))

        logic = SparseImplantLogic()
        parameters = logic.getParameterNode()
        parameters.inputSegmentation = segmentation
        parameters.inputSegmentId = segmentId
        parameters.device = "CPU"
        nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
        self.delayDisplay("Generating the implant on the CPU (a few minutes)")
        result = logic.process(parameters)

        segments = result.segmentation.GetSegmentation()
        self.assertEqual(segments.GetNumberOfSegments(), 2)
        implant = mrml.segment_to_volume(result.segmentation, segments.GetSegmentIdBySegmentName(mrml.IMPLANT_SEGMENT))
        defective = mrml.segment_to_volume(segmentation, segmentId, reference=implant)
        self.assertGreater(int(implant.array.sum()), 10000)  # the sample's defect is about 47 ml
        self.assertEqual(int((implant.array & defective.array).sum()), 0)  # the implant adds bone only
        self.assertIn("implant", result.models)
        self.assertGreater(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore)
        self.assertEqual(segmentation.GetSegmentation().GetNumberOfSegments(), 1)  # input untouched
        self.delayDisplay("Test passed")
