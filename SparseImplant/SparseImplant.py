"""SparseImplant: patient-specific cranial implants from a defective skull segmentation.

Slicer's scripted-module template (Module / Widget / Logic / Test). The widget only wires Qt: it
reads the panel, shows every dialog, and polls a run from a timer; ``SparseImplantRunView`` shows a
run on the panel's widgets. The logic has no dialogs, so scripts and the self-test can run it.

The work is in ``SparseImplantLib.slicer`` (imported on first use, not at Slicer's start, and after
the dependency check has installed what it needs), all of it tested without Qt:
``run_controller.RunController`` holds the run's state machine (Generate / Cancel, progress, the end
of a run, failures, warnings, the result shown); ``panel`` the panel's other decisions (selections,
a run's outcome, licence); ``requirements`` the dependency check; ``designer`` exports the inputs,
runs ``sparseimplant generate`` in a PythonSlicer subprocess (``job``) and loads the results
(``scene_results``, ``scene_views``).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import shutil
import sys
import time
import unittest
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Callable, Iterator, List, Optional, Sequence, Tuple

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin


def findLayout(moduleDir: Path) -> Tuple[Path, Path]:
    """(folder holding SparseImplantLib, the shared Resources folder) for both layouts: an installed
    extension has everything beside this file; a source tree added under Application settings ->
    Modules -> Additional module paths as ``SparseImplant/`` has both one folder up."""
    for candidate in (moduleDir, moduleDir.parent):
        if (candidate / "SparseImplantLib" / "__init__.py").is_file() and (candidate / "Resources" / "Models").is_dir():
            return candidate, candidate / "Resources"
    raise ImportError(f"SparseImplant: no SparseImplantLib and Resources/Models beside {moduleDir} or one folder "
                      "up: reinstall the extension, or add the SparseImplant folder of a complete source tree")


MODULE_DIR = Path(__file__).resolve().parent
LIBRARY_PARENT, SHARED_RESOURCES = findLayout(MODULE_DIR)
if str(LIBRARY_PARENT) not in sys.path:
    sys.path.insert(0, str(LIBRARY_PARENT))

SAMPLES = (  # (category, sample name, file, sha256): the defective skull, and its ground truth for metrics
    ("SparseImplant", "SkullFix050Defective", "SkullFix_050_defective.nrrd",
     "1120f6d4d7364f05a501550b368293c747caba823ae22049193c0ed23bb359f3"),
    ("SparseImplant reference", "SkullFix050Implant", "SkullFix_050_implant.nrrd",
     "02568d29f88730559dcf3cd5708b1f67466cf870726c6784a87c29b97d37615b"),
)
DEVICES = {"Auto": "auto", "GPU": "cuda", "CPU": "cpu"}
# The panel's design choices and generate's --method (README, Defects anywhere).
METHODS = {"Auto": "auto", "Network": "network", "Fitted skull shape": "fitted", "Mirror image": "mirror"}


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
            "Completes a defective skull with a sparse convolutional network (on a 2 mm grid, resampled back "
            "to the CT grid) and designs the cranial implant: completed skull, implant, and a signed-distance "
            "colour map in three linked 3D views, with STL/OBJ export for 3D printing. The extension's README "
            "has the tutorial and troubleshooting."
            "<br><br>Method: J. Li, C. Gsaxner, A. Pepe, D. Schmalstieg, J. Kleesiek, J. Egger. Sparse convolutional "
            "neural network for high-resolution skull shape completion and shape super-resolution. "
            'Scientific Reports 13, 20229 (2023), <a href="https://doi.org/10.1038/s41598-023-47437-6">'
            "doi:10.1038/s41598-023-47437-6</a>."
            "<br><br>The bundled model and the sample were made from SkullFix (CC BY-NC-SA 4.0): non-commercial "
            "research use only, and not a medical device."
        )
        self.parent.acknowledgementText = _(
            "SkullFix data: O. Kodym et al., SkullBreak / SkullFix - Dataset for automatic cranial implant "
            "design, Data in Brief 35 (2021), derived from CQ500 (qure.ai), CC BY-NC-SA 4.0."
        )
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData() -> None:
    """SkullFix case 050 in the Sample Data module: the defective skull, and in a category of its own
    the ground-truth implant (a *Reference implant* for the metrics), both loaded as segmentations."""
    import SampleData

    for category, name, fileName, sha256 in SAMPLES:
        path = SHARED_RESOURCES / "SampleData" / fileName
        if not path.is_file():
            continue
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category=category,
            sampleName=name,
            thumbnailFileName=str(MODULE_DIR / "Resources" / "Icons" / "SparseImplant.png"),
            uris=path.as_uri(),
            fileNames=fileName,
            nodeNames=name,
            checksums=f"SHA256:{sha256}",
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
    straighten: bool = True  # off: generate --no-straighten
    method: Annotated[str, Choice(list(METHODS))] = "Auto"  # generate --method


#
# SparseImplantWidget
#


class SparseImplantRunView:
    """``run_controller.RunView`` on the panel's Qt widgets: status line, progress bar, log pane, warnings,
    results table, and the Generate button with the timer that polls a run."""

    STATUS_STYLES = {"info": "", "warning": "color: #b36b00;", "error": "color: #c00000;"}

    def __init__(self, ui, timer: qt.QTimer, updateButtons: Callable[[], None]) -> None:
        self.ui = ui
        self.timer = timer
        self.updateButtons = updateButtons

    def show_status(self, text: str, level: str = "info") -> None:
        """Status line, log pane and, for warnings and errors, Slicer's log."""
        self.ui.statusLabel.text = text
        self.ui.statusLabel.setStyleSheet(self.STATUS_STYLES[level])
        self.ui.logTextEdit.appendPlainText(text)
        if level != "info":
            getattr(logging, level)(f"SparseImplant: {text}")

    def show_progress(self, percent: int, text: Optional[str] = None) -> None:
        self.ui.progressBar.value = percent
        if text is not None:
            self.ui.statusLabel.text = text

    def clear_log(self) -> None:
        self.ui.logTextEdit.clear()

    def append_log(self, lines: Sequence[str]) -> None:
        for line in lines:
            self.ui.logTextEdit.appendPlainText(line)

    def show_warnings(self, warnings: Sequence[str]) -> None:
        """The run's warnings under the status line (panel.warnings_text); hidden when there are none."""
        from SparseImplantLib.slicer import panel

        text = panel.warnings_text(warnings)
        self.ui.warningsLabel.text = text
        self.ui.warningsLabel.visible = bool(text)

    def show_result(self, result) -> None:
        table = result.metrics_table if result is not None else None
        self.ui.metricsTableView.setMRMLTableNode(table)
        self.ui.metricsTableView.visible = table is not None

    def show_failure(self, message: str, details: str) -> None:
        slicer.util.errorDisplay(message, detailedText=details)

    def show_running(self, running: bool) -> None:
        if running:
            self.timer.start()
        else:
            self.timer.stop()
        self.updateButtons()


class SparseImplantWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Qt wiring only: the run's decisions are ``run_controller.RunController``'s, the panel's others ``panel``'s."""

    POLL_INTERVAL_MS = 200

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: Optional[SparseImplantLogic] = None
        self._parameterNode: Optional[SparseImplantParameterNode] = None
        self._parameterNodeGuiTag = None
        self._selection = None  # panel.SelectionSync of the current parameter node
        self._view: Optional[SparseImplantRunView] = None
        self._controller = None  # run_controller.RunController, made in setup
        self._timer = qt.QTimer()
        self._timer.setInterval(self.POLL_INTERVAL_MS)
        self._timer.timeout.connect(self.onPoll)

    def setup(self) -> None:
        from SparseImplantLib.slicer.run_controller import RunController

        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SparseImplant.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SparseImplantLogic()
        self._view = SparseImplantRunView(self.ui, self._timer, self._updateButtons)
        # Slicer's tr takes its translation context from the calling file: called here, it stays "SparseImplant".
        self._controller = RunController(self.logic, self._view, translate=lambda text: _(text))

        self.ui.modelSelector.addItems(self.logic.availableModels())
        self.ui.inputSegmentSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onSelectionChanged)
        self.ui.inputSegmentSelector.connect("currentSegmentChanged(QString)", self.onSelectionChanged)
        self.ui.referenceSegmentSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onSelectionChanged)
        self.ui.referenceSegmentSelector.connect("currentSegmentChanged(QString)", self.onSelectionChanged)
        self.ui.modelSelector.connect("currentTextChanged(QString)", self.onSelectionChanged)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.exportButton.connect("clicked(bool)", self.onExportButton)
        self.ui.exportDirectoryButton.directory = str(Path.home())
        self._view.show_warnings([])

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self._controller is not None:
            self._controller.abandon()
        self.removeObservers()

    def onReload(self) -> None:
        """Reload SparseImplantLib too (deepest modules first), so Reload picks up edits to the library,
        which Slicer's own Reload leaves as first imported."""
        loaded = [name for name in sys.modules if name.split(".")[0] == "SparseImplantLib"]
        for name in sorted(loaded, key=lambda name: name.count("."), reverse=True):
            importlib.reload(sys.modules[name])
        ScriptedLoadableModuleWidget.onReload(self)

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        self._controller.reset()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        from SparseImplantLib.slicer import panel

        parameterNode = self.logic.getParameterNode()
        panel.default_input(parameterNode, slicer.mrmlScene)
        self.setParameterNode(parameterNode)

    def setParameterNode(self, inputParameterNode: Optional[SparseImplantParameterNode]) -> None:
        from SparseImplantLib.slicer import panel

        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        self._selection = None
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            # The wrapper does not bind segment selectors: restore them, ignoring their change signals meanwhile.
            self._selection = panel.SelectionSync(self._parameterNode, self.ui.inputSegmentSelector,
                                                  self.ui.referenceSegmentSelector, self.ui.modelSelector)
            self._selection.restore()
            self._updateRefinement()
            self._updateButtons()

    def onSelectionChanged(self, *unused) -> None:
        if self._selection is not None and self._selection.store():
            self._updateRefinement()

    def _updateRefinement(self) -> None:
        """The super-resolution checkbox only means something when the registry has a model for the chosen one."""
        refiner = self.logic.refinementModel(self._parameterNode.model)
        self.ui.refineCheckBox.enabled = refiner is not None
        self.ui.refineCheckBox.toolTip = (
            _("Redraw the implant region with '{name}' on its finer grid.").format(name=refiner) if refiner
            else _("No super-resolution model for this model is installed (none is bundled; see the README)."))

    def _updateButtons(self, caller=None, event=None) -> None:
        if self._controller.running:
            self.ui.applyButton.text = _("Cancel")
            self.ui.applyButton.enabled = True
            return
        self.ui.applyButton.text = _("Generate Implant")
        parameters = self._parameterNode
        hasInput = bool(parameters and ((parameters.inputSegmentation and parameters.inputSegmentId) or parameters.inputVolume))
        self.ui.applyButton.enabled = hasInput
        self.ui.applyButton.toolTip = (_("Complete the skull and design the implant (click again to cancel).") if hasInput
                                       else _("Select the defective skull segment or a CT volume first."))
        result = self._controller.result
        self.ui.exportButton.enabled = bool(result and slicer.mrmlScene.IsNodePresent(result.segmentation))

    @contextmanager
    def _showingErrors(self, message: str) -> Iterator[None]:
        """A message box with the cause (as the module template does), and the same in the status line."""
        try:
            with slicer.util.tryWithErrorDisplay(message, waitCursor=True):
                yield
        except Exception as error:
            self._view.show_status(f"{message} {error}", "error")
            raise

    def _confirmLicence(self) -> bool:
        """Ask once (remembered in the application settings) that the weights and sample are non-commercial."""
        from SparseImplantLib.slicer import panel

        settings = qt.QSettings()
        if panel.licence_acknowledged(settings):
            return True
        if not slicer.util.confirmOkCancelDisplay(
                _("The bundled model and the sample data were made from SkullFix, licensed CC BY-NC-SA 4.0: "
                  "non-commercial research use only, with attribution. SparseImplant is not a medical device; "
                  "every implant needs review by a qualified person.\n\nClick OK to accept these terms (asked once)."),
                windowTitle=_("SparseImplant terms of use")):
            return False
        panel.acknowledge_licence(settings)
        return True

    def _ensureDependencies(self) -> bool:
        """PyTorch through the PyTorch extension (it picks the CUDA build that fits), the rest with pip; asks first."""
        from SparseImplantLib.slicer import requirements

        problem = self.logic.torchProblem()
        if problem is not None:
            if not slicer.util.confirmOkCancelDisplay(
                    _("{problem}. SparseImplant needs PyTorch {minimum} or newer; install it now through PyTorch "
                      "Utils (1-3 GB download)?").format(problem=problem, minimum=requirements.TORCH_MINIMUM)):
                return False
            with slicer.util.WaitCursor():
                self.logic.installTorch()
        missing = self.logic.missingRequirements()
        if missing:
            try:
                import slicer.packaging as packaging  # Slicer versions that have it ask and install themselves
            except ImportError:
                packaging = None
            if packaging is not None and hasattr(packaging, "pip_ensure"):
                packaging.pip_ensure(missing, requester="SparseImplant")
            else:
                if not slicer.util.confirmOkCancelDisplay(
                        _("SparseImplant needs these Python packages: {packages}. Install them now with pip?")
                        .format(packages=", ".join(missing))):
                    return False
                with slicer.util.WaitCursor():
                    slicer.util.pip_install(missing)
        return True

    def onApplyButton(self) -> None:
        if self._controller.running:
            self._controller.cancel()
            return
        if not self._confirmLicence():
            return
        with self._showingErrors(_("Generate Implant could not start.")):
            self._controller.start(self._parameterNode, self._ensureDependencies)

    def onPoll(self) -> None:
        with self._showingErrors(_("Loading the results failed.")):
            self._controller.poll()

    def onExportButton(self) -> None:
        with self._showingErrors(_("Export failed.")):
            paths = self.logic.export(self._controller.result, Path(self.ui.exportDirectoryButton.directory),
                                      self.ui.exportFormatSelector.currentText)
            slicer.util.infoDisplay(_("Wrote:\n{files}").format(files="\n".join(str(p) for p in paths)))


#
# SparseImplantLogic
#


def pythonSlicerExecutable() -> str:
    """PythonSlicer runs the library with Slicer's Python and packages, outside the GUI process."""
    found = shutil.which("PythonSlicer")
    if found:
        return found
    name = "PythonSlicer.exe" if sys.platform == "win32" else "PythonSlicer"
    return str(Path(slicer.app.slicerHome) / "bin" / name)


class SparseImplantLogic(ScriptedLoadableModuleLogic):
    """No dialogs, so scripts and tests can use it: ``process()`` runs the whole job and returns the
    result nodes; problems are raised as ``SparseImplantError`` (one line: problem and what to do)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._designer = None

    @property
    def designer(self):
        """Made on first use: it needs scipy and SimpleITK, which the dependency check may still install."""
        if self._designer is None:
            from SparseImplantLib.slicer.designer import ImplantDesigner

            self._designer = ImplantDesigner(slicer.mrmlScene, python=pythonSlicerExecutable(),
                                             work_root=Path(slicer.app.temporaryPath) / "SparseImplant",
                                             environment=slicer.util.startupEnvironment())
        return self._designer

    def getParameterNode(self) -> SparseImplantParameterNode:
        return SparseImplantParameterNode(super().getParameterNode())

    @staticmethod
    def availableModels() -> List[str]:
        from SparseImplantLib.errors import SparseImplantError
        from SparseImplantLib.models.registry import load_registry

        try:
            return [info.name for info in load_registry() if info.kind == "completion"]
        except SparseImplantError as error:
            logging.warning(str(error))
            return []

    @staticmethod
    def refinementModel(modelName: str) -> Optional[str]:
        """The super-resolution model ``generate`` picks for ``modelName`` (empty: the default), if any."""
        from SparseImplantLib.errors import SparseImplantError
        from SparseImplantLib.models.registry import find_model, find_refiner

        try:
            refiner = find_refiner("auto", find_model(modelName or None))
        except SparseImplantError:
            return None
        return refiner.name if refiner else None

    @staticmethod
    def torchProblem() -> Optional[str]:
        """Why the installed PyTorch will not do, or None; read from its metadata, without importing it."""
        from SparseImplantLib.slicer import requirements

        try:
            installed: Optional[str] = importlib.metadata.version("torch")
        except importlib.metadata.PackageNotFoundError:
            installed = None
        return requirements.torch_problem(installed)

    def installTorch(self) -> None:
        """Install PyTorch through PyTorch Utils, then check that what it installed will do."""
        from SparseImplantLib.slicer import requirements
        from SparseImplantLib.errors import SparseImplantError

        try:
            import PyTorchUtils
        except ImportError as error:
            raise SparseImplantError("the PyTorch extension is missing: install 'PyTorch' from the Extensions "
                                     "Manager and restart Slicer") from error
        PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                      torchVersionRequirement=f">={requirements.TORCH_MINIMUM}")
        problem = self.torchProblem()
        if problem is not None:
            raise SparseImplantError(f"{problem} after installing it through PyTorch Utils: install PyTorch in "
                                     "the PyTorch Utils module, restart Slicer and try again")

    @staticmethod
    def missingRequirements() -> List[str]:
        from SparseImplantLib.slicer import requirements

        return requirements.missing_requirements()

    def inputs(self, parameters: SparseImplantParameterNode):
        from SparseImplantLib.slicer.designer import design_inputs

        return design_inputs(parameters, DEVICES, METHODS)

    def start(self, inputs):
        """Export the inputs and start the subprocess; returns (request, job)."""
        request = self.designer.prepare(inputs)
        return request, self.designer.start(request)

    def report(self, request) -> Optional[dict]:
        """The run's report.json, or None if the worker did not write one; read once, then given to ``finish``."""
        return self.designer.report(request)

    def finish(self, request, inputs=None, report: Optional[dict] = None):
        """Load a finished run into new nodes (earlier runs hidden) and switch to the three linked 3D views;
        ``report``: the run's report.json as ``report`` read it (read again if not given)."""
        from SparseImplantLib.slicer import scene_views

        result = self.designer.load(request, name="Implant design", inputs=inputs, report=report)
        scene_views.show_three_view_layout(slicer.mrmlScene)
        layoutManager = slicer.app.layoutManager()
        for view in scene_views.three_view_nodes(slicer.mrmlScene):
            widget = layoutManager.viewWidget(view) if layoutManager else None
            if widget is not None:
                widget.threeDView().resetFocalPoint()
        return result

    def discard(self, request) -> None:
        if request is not None:
            self.designer.discard(request)

    @staticmethod
    def export(result, folder: Path, fileFormat: str) -> List[Path]:
        from SparseImplantLib.slicer import scene_results
        from SparseImplantLib.errors import SparseImplantError

        if result is None or not slicer.mrmlScene.IsNodePresent(result.segmentation):
            raise SparseImplantError("no implant design in the scene: run Generate Implant first")
        return scene_results.export_segments(result.segmentation, folder, file_format=fileFormat)

    def process(self, parameters: SparseImplantParameterNode, timeoutSeconds: float = 3600.0):
        """Blocking run for scripts and tests (keeps the application responsive while waiting)."""
        from SparseImplantLib.errors import SparseImplantError

        inputs = self.inputs(parameters)
        request, job = self.start(inputs)
        deadline = time.monotonic() + timeoutSeconds
        try:
            while not job.finished:
                if time.monotonic() > deadline:
                    job.cancel()
                    raise SparseImplantError(f"generate did not finish within {timeoutSeconds:.0f} s: "
                                             "choose the GPU or a smaller input, or allow more time")
                job.poll()
                slicer.app.processEvents()
                time.sleep(0.1)
            job.poll()
            if not job.succeeded:
                raise SparseImplantError(job.error_message())
            return self.finish(request, inputs)
        finally:
            self.discard(request)


#
# SparseImplantTest
#


class SparseImplantTest(ScriptedLoadableModuleTest):
    """Inside Slicer: the registered sample skull -> Generate Implant with the bundled model on the CPU,
    twice, with the registered ground truth as reference -> results, metrics, one run shown. Skipped
    where PyTorch is missing: the extension installs it on first use, so a fresh Slicer has none."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        """Reload and Test calls this directly, outside unittest's runner: a skip is reported, not raised."""
        self.setUp()
        try:
            self.test_GenerateImplantOnSample()
        except unittest.SkipTest as skipped:
            self.delayDisplay(f"Test skipped: {skipped}")

    def test_GenerateImplantOnSample(self) -> None:
        logic = SparseImplantLogic()
        torchProblem = logic.torchProblem()
        if torchProblem is not None:
            self.skipTest(f"{torchProblem}: install PyTorch in the PyTorch Utils module to run this test")
        self.assertEqual(logic.missingRequirements(), [])
        import SampleData

        from SparseImplantLib.slicer import scene_input, scene_results  # they need the packages checked above

        self.delayDisplay("Loading the sample defective skull and its ground-truth implant")
        registerSampleData()
        segmentation = SampleData.downloadSample("SkullFix050Defective")
        reference = SampleData.downloadSample("SkullFix050Implant")
        segmentId = segmentation.GetSegmentation().GetNthSegmentID(0)

        parameters = logic.getParameterNode()
        parameters.inputSegmentation = segmentation
        parameters.inputSegmentId = segmentId
        parameters.referenceSegmentation = reference
        parameters.referenceSegmentId = reference.GetSegmentation().GetNthSegmentID(0)
        parameters.device = "CPU"
        self.delayDisplay("Generating the implant on the CPU, twice (a few minutes)")
        first = logic.process(parameters)
        result = logic.process(parameters)

        segments = result.segmentation.GetSegmentation()
        self.assertEqual(segments.GetNumberOfSegments(), 2)
        implant = scene_input.segment_to_volume(result.segmentation, segments.GetSegmentIdBySegmentName(scene_results.IMPLANT_SEGMENT))
        defective = scene_input.segment_to_volume(segmentation, segmentId, reference=implant)
        self.assertGreater(int(implant.array.sum()), 10000)  # the sample's defect is tens of millilitres
        self.assertEqual(int((implant.array & defective.array).sum()), 0)  # the implant adds bone only
        self.assertIn("implant", result.models)
        self.assertEqual(segmentation.GetSegmentation().GetNumberOfSegments(), 1)  # input untouched
        table = result.metrics_table.GetTable()
        labels = [table.GetValue(row, 0).ToString() for row in range(table.GetNumberOfRows())]
        self.assertIn("Dice (implant)", labels)
        self.assertIn("Implant volume", labels)
        self.assertFalse(first.models["implant"].GetDisplayNode().GetVisibility())  # only the newest run shows
        self.assertTrue(result.models["implant"].GetDisplayNode().GetVisibility())
        self.delayDisplay("Test passed")
