"""The module panel's decisions without Qt: restoring selections, a run's outcome, dependencies, licence."""

from __future__ import annotations

import sys
import time
from types import SimpleNamespace

import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is part of the test extras")

from conftest import skull_segmentation  # noqa: E402
from SparseImplantLib.slicer import panel, requirements  # noqa: E402
from SparseImplantLib.slicer.job import GenerateJob  # noqa: E402


class SegmentSelector:
    """Behaves as qMRMLSegmentSelectorWidget does for the panel: every change fires ``changed``."""

    def __init__(self) -> None:
        self.changed = lambda: None
        self.node, self.segment = None, ""

    def setCurrentNode(self, node) -> None:
        self.node = node
        self.segment = node.GetSegmentation().GetNthSegmentID(0) if node is not None else ""
        self.changed()

    def setCurrentSegmentID(self, segment_id: str) -> None:
        self.segment = segment_id
        self.changed()

    def currentNode(self):
        return self.node

    def currentSegmentID(self) -> str:
        return self.segment


class ModelBox:
    def __init__(self) -> None:
        self.changed = lambda: None
        self.currentText = "first-model"

    def setCurrentText(self, text: str) -> None:
        self.currentText = text
        self.changed()


def parameters(**values) -> SimpleNamespace:
    fields = dict(inputSegmentation=None, inputSegmentId="", referenceSegmentation=None, referenceSegmentId="", model="")
    return SimpleNamespace(**{**fields, **values})


def test_restoring_a_saved_scene_keeps_every_selection(synthetic_skull):
    scene = slicer.vtkMRMLScene()
    skull = skull_segmentation(scene, synthetic_skull[0])
    reference = skull_segmentation(scene, synthetic_skull[1], "Reference")
    skull.GetSegmentation().AddEmptySegment("second")
    saved = parameters(inputSegmentation=skull, inputSegmentId="second", referenceSegmentation=reference,
                       referenceSegmentId=reference.GetSegmentation().GetNthSegmentID(0), model="other-model")
    expected = dict(vars(saved))
    widgets = SegmentSelector(), SegmentSelector(), ModelBox()
    sync = panel.SelectionSync(saved, *widgets)
    for widget in widgets:
        widget.changed = sync.store  # as the widget connects the change signals
    sync.restore()
    assert vars(saved) == expected
    assert (widgets[0].node, widgets[0].segment, widgets[1].node, widgets[2].currentText) == (
        skull, "second", reference, "other-model")
    widgets[1].setCurrentNode(None)  # after restoring, the user's changes are stored
    assert saved.referenceSegmentation is None and saved.inputSegmentId == "second"


def test_the_default_input_is_the_first_segmentation_and_its_first_segment(synthetic_skull):
    scene = slicer.vtkMRMLScene()
    chosen = parameters()
    assert not panel.default_input(chosen, scene)
    skull = skull_segmentation(scene, synthetic_skull[0])
    assert panel.default_input(chosen, scene)
    assert chosen.inputSegmentation is skull and chosen.inputSegmentId == skull.GetSegmentation().GetNthSegmentID(0)
    assert not panel.default_input(chosen, scene)  # a choice is never replaced


def finished_job(script: str) -> GenerateJob:
    job = GenerateJob([sys.executable, "-c", script])
    deadline = time.monotonic() + 30
    while not job.finished:
        assert time.monotonic() < deadline
        job.poll()
        time.sleep(0.02)
    return job


def test_outcomes_empty_implant_and_warnings_are_not_plain_done():
    warned = finished_job("print('sparseimplant: warning: the network added no bone: the implant is empty')")
    empty = panel.run_outcome(warned, {"voxels": {"implant": 0}, "implant_volume_ml": 0.0, "timings_s": {"read": 1.0}})
    assert empty.succeeded and empty.empty_implant and empty.level == "warning"
    assert empty.warnings == ["the network added no bone: the implant is empty"]
    clean = finished_job("print('fine')")
    done = panel.run_outcome(clean, {"voxels": {"implant": 10}, "implant_volume_ml": 47.0, "timings_s": {"network": 6.5}})
    assert done.level == "info" and done.implant_ml == 47.0 and done.timings_s == {"network": 6.5}
    failed = finished_job("import sys; print('sparseimplant: error: bad input: fix it'); sys.exit(1)")
    outcome = panel.run_outcome(failed, None)
    assert outcome.level == "error" and outcome.error == "bad input: fix it"


@pytest.mark.parametrize("installed, problem", [
    (None, "not installed"), ("2.0.1", "older than 2.1"), ("1.13.1+cu117", "older than 2.1"),
    ("2.1.0", None), ("2.8.0+cu128", None), ("2.13.0", None),
])
def test_torch_version_is_checked_against_the_minimum(installed, problem):
    found = requirements.torch_problem(installed)
    assert found is None if problem is None else problem in found


def test_missing_requirements_are_found_without_importing():
    assert requirements.missing_requirements({"json": "json", "sparseimplant_no_such_module": "nosuch>=1"}) == ["nosuch>=1"]


def test_the_licence_is_acknowledged_once_per_terms():
    class Settings(dict):  # the two QSettings calls the panel uses
        def value(self, key):
            return self.get(key)

        def setValue(self, key, value):
            self[key] = value

    settings = Settings()
    assert not panel.licence_acknowledged(settings)
    panel.acknowledge_licence(settings)
    assert panel.licence_acknowledged(settings)
    settings[panel.LICENCE_SETTINGS_KEY] = "older-terms"
    assert not panel.licence_acknowledged(settings)


def test_the_runs_warnings_are_listed_in_the_panel():
    """Shown under the status line after a run (failed ones too), each once; nothing when there are none."""
    warned = finished_job("print('sparseimplant: warning: the head lies turned by about 40 degrees')\n"
                          "print('sparseimplant: warning: the implant is unusually large')\n"
                          "print('sparseimplant: warning: the head lies turned by about 40 degrees')")
    outcome = panel.run_outcome(warned, {"voxels": {"implant": 10}, "implant_volume_ml": 90.0, "timings_s": {}})
    assert panel.warnings_text(outcome.warnings) == ("2 warnings from this run:\n"
                                                     "\u2022 the head lies turned by about 40 degrees\n"
                                                     "\u2022 the implant is unusually large")
    assert panel.warnings_text(["one"]) == "1 warning from this run:\n\u2022 one"
    assert panel.warnings_text([]) == "" and panel.warnings_text(["  "]) == ""
    failed = finished_job("import sys; print('sparseimplant: warning: odd pose'); "
                          "print('sparseimplant: error: bad input: fix it'); sys.exit(1)")
    assert panel.warnings_text(panel.run_outcome(failed, None).warnings) == "1 warning from this run:\n\u2022 odd pose"
