"""The panel's run state machine without Qt: Generate -> progress -> Cancel, a failed run, a rerun whose
results replace the shown ones; with fake logic and jobs, and once on a real designer and scene."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any, List, Optional, Sequence, Tuple

import pytest

from SparseImplantLib.contract import ERROR_PREFIX, WARNING_PREFIX
from SparseImplantLib.progress import ProgressEvent
from SparseImplantLib.slicer.run_controller import RunController

DONE_REPORT = {"voxels": {"implant": 10}, "implant_volume_ml": 47.0, "timings_s": {"network": 6.5}}


class FakeJob:
    """Behaves as ``job.GenerateJob`` for the controller: each ``poll`` delivers the next tick's progress
    events and output lines; once every tick is delivered the worker has ended with ``exit_code``."""

    def __init__(self, ticks: Sequence[Tuple[Sequence[ProgressEvent], Sequence[str]]], exit_code: int = 0) -> None:
        self.ticks = list(ticks)
        self.exit_code = exit_code
        self.log: List[str] = []
        self.polls = 0
        self.cancelled = False

    def poll(self) -> List[ProgressEvent]:
        self.polls += 1
        if not self.ticks:
            return []
        events, lines = self.ticks.pop(0)
        self.log.extend(lines)
        return list(events)

    @property
    def finished(self) -> bool:
        return not self.ticks

    @property
    def succeeded(self) -> bool:
        return self.finished and self.exit_code == 0 and not self.cancelled

    def cancel(self) -> None:
        self.cancelled = True

    def warnings(self) -> List[str]:
        return [line[len(WARNING_PREFIX):] for line in self.log if line.startswith(WARNING_PREFIX)]

    def error_message(self) -> str:
        errors = [line[len(ERROR_PREFIX):] for line in self.log if line.startswith(ERROR_PREFIX)]
        return errors[-1] if errors else f"the process ended with exit code {self.exit_code}"


class FakeResult:
    """What ``finish`` returns: the controller reads the name of its segmentation."""

    def __init__(self, name: str) -> None:
        self.segmentation = SimpleNamespace(GetName=lambda: name)


class FakeLogic:
    """SparseImplantLogic's run steps: hands out the given jobs in turn and records every call."""

    def __init__(self, jobs: Sequence[FakeJob], reports: Sequence[Optional[dict]] = ()) -> None:
        self.jobs = list(jobs)
        self.reports = list(reports)
        self.started: List[str] = []
        self.reported: List[str] = []
        self.finished: List[Tuple[str, Any, Optional[dict]]] = []
        self.discarded: List[str] = []
        self.load_error: Optional[Exception] = None

    def inputs(self, parameters: Any) -> Any:
        return ("inputs of", parameters)

    def start(self, inputs: Any) -> Tuple[str, FakeJob]:
        request = f"request {len(self.started) + 1}"
        self.started.append(request)
        return request, self.jobs.pop(0)

    def report(self, request: str) -> Optional[dict]:
        self.reported.append(request)
        return self.reports.pop(0)

    def finish(self, request: str, inputs: Any, report: Optional[dict]) -> FakeResult:
        if self.load_error is not None:
            raise self.load_error
        self.finished.append((request, inputs, report))
        return FakeResult("Implant design" if len(self.finished) == 1 else f"Implant design_{len(self.finished) - 1}")

    def discard(self, request: str) -> None:
        self.discarded.append(request)


class RecordingView:
    """The panel's state as the widget would show it, and every call in order."""

    def __init__(self) -> None:
        self.calls: List[Tuple[str, Any]] = []
        self.status: Tuple[str, str] = ("", "info")
        self.status_line = ""
        self.progress = -1
        self.log: List[str] = []
        self.warnings: List[str] = []
        self.result: Any = None
        self.failures: List[Tuple[str, str]] = []
        self.running = False

    def show_status(self, text: str, level: str) -> None:
        self.calls.append(("status", (text, level)))
        self.status = (text, level)
        self.status_line = text
        self.log.append(text)

    def show_progress(self, percent: int, text: Optional[str] = None) -> None:
        self.calls.append(("progress", (percent, text)))
        self.progress = percent
        if text is not None:
            self.status_line = text

    def clear_log(self) -> None:
        self.calls.append(("clear_log", None))
        self.log = []

    def append_log(self, lines: Sequence[str]) -> None:
        self.calls.append(("append_log", list(lines)))
        self.log.extend(lines)

    def show_warnings(self, warnings: Sequence[str]) -> None:
        self.calls.append(("warnings", list(warnings)))
        self.warnings = list(warnings)

    def show_result(self, result: Any) -> None:
        self.calls.append(("result", result))
        self.result = result

    def show_failure(self, message: str, details: str) -> None:
        self.calls.append(("failure", (message, details)))
        self.failures.append((message, details))

    def show_running(self, running: bool) -> None:
        self.calls.append(("running", running))
        self.running = running


def ready() -> bool:
    return True


def succeeding_job(*lines: str) -> FakeJob:
    return FakeJob([([ProgressEvent("network", 0.5, "Running the network")], ["reading input.nrrd", *lines]),
                    ([ProgressEvent("done", 1.0)], [])])


def test_generate_shows_progress_and_cancel_leaves_the_scene_alone():
    job = FakeJob([([ProgressEvent("read", 0.1, "Reading the input")], ["reading input.nrrd"]),
                   ([ProgressEvent("network", 0.25, ""), ProgressEvent("network", 0.4, "Running the network")],
                    ["device: cpu", "threads: 2"]),
                   ([ProgressEvent("done", 1.0)], [])])
    logic, view = FakeLogic([job]), RecordingView()
    view.log = ["the last run's log"]
    controller = RunController(logic, view)
    assert controller.start("parameters", ready)
    assert controller.running and view.running
    assert view.log == ["Starting..."] and view.status == ("Starting...", "info") and view.progress == 0
    controller.poll()
    assert (view.progress, view.status_line) == (10, "Reading the input")
    controller.poll()
    assert (view.progress, view.status_line) == (40, "Running the network")  # the newest event wins
    assert view.status == ("Starting...", "info")  # progress texts are not status messages: not logged
    assert view.log == ["Starting...", "reading input.nrrd", "device: cpu", "threads: 2"]  # each line once
    controller.cancel()
    assert job.cancelled and not controller.running and not view.running
    assert logic.discarded == ["request 1"] and logic.finished == [] and logic.reported == []
    assert view.status == ("Cancelled: the scene was not changed.", "info") and view.progress == 0
    assert controller.result is None and view.result is None
    polls = job.polls
    controller.poll()  # a last tick of the timer after Cancel changes nothing
    assert job.polls == polls and view.status[0].startswith("Cancelled")


def test_a_failed_run_shows_the_workers_error_and_keeps_the_scene():
    job = FakeJob([([ProgressEvent("read", 0.1)], [f"{WARNING_PREFIX}the head lies turned by about 40 degrees",
                                                   f"{ERROR_PREFIX}bad input: fix it"])], exit_code=1)
    logic, view = FakeLogic([job], reports=[None]), RecordingView()
    controller = RunController(logic, view)
    controller.start("parameters", ready)
    controller.poll()
    assert view.status == ("Failed: bad input: fix it", "error")
    assert view.failures == [("Generate Implant failed: bad input: fix it", "\n".join(job.log))]
    assert len(job.log) == 2
    assert view.warnings == ["the head lies turned by about 40 degrees"]  # failed runs show theirs too
    assert logic.finished == [] and logic.discarded == ["request 1"] and controller.result is None
    assert not controller.running and not view.running
    assert [name for name, _ in view.calls[-3:]] == ["status", "running", "failure"]  # the box comes once idle


def test_a_rerun_replaces_the_shown_result_and_reads_each_report_once():
    second_report = {"voxels": {"implant": 12}, "implant_volume_ml": 52.5}
    logic = FakeLogic([succeeding_job(), succeeding_job(f"{WARNING_PREFIX}the implant is unusually large")],
                      reports=[DONE_REPORT, second_report])
    view = RecordingView()
    controller = RunController(logic, view)
    controller.start("parameters", ready)
    controller.poll()
    controller.poll()
    first = controller.result
    assert view.status == ("Done: 'Implant design', implant 47.0 ml.", "info") and view.progress == 100
    assert view.result is first and view.warnings == [] and not view.running
    controller.start("parameters", ready)
    assert controller.result is first  # shown until the rerun succeeds
    controller.poll()
    controller.poll()
    assert controller.result is not first and view.result is controller.result
    assert view.status == ("Done with 1 warning(s): 'Implant design_1'. the implant is unusually large", "warning")
    assert view.warnings == ["the implant is unusually large"]
    assert logic.reported == ["request 1", "request 2"]  # report.json read once per run...
    assert [report for _, _, report in logic.finished] == [DONE_REPORT, second_report]  # ...and handed on as read
    assert logic.finished[0][2] is DONE_REPORT and logic.finished[1][1] == ("inputs of", "parameters")
    assert logic.discarded == ["request 1", "request 2"]


def test_an_empty_implant_is_a_warning_not_plain_done():
    empty = {"voxels": {"implant": 0}, "implant_volume_ml": 0.0}
    logic, view = FakeLogic([succeeding_job()], reports=[empty]), RecordingView()
    controller = RunController(logic, view)
    controller.start("parameters", ready)
    controller.poll()
    controller.poll()
    assert view.status == ("No implant: the network filled no opening (is the skull already complete?). See the log.",
                           "warning")
    assert controller.result is view.result is not None


def test_declined_dependencies_start_nothing_but_clear_the_last_warnings():
    logic, view = FakeLogic([succeeding_job()]), RecordingView()
    view.warnings = ["from the last run"]
    controller = RunController(logic, view)
    assert not controller.start("parameters", lambda: False)
    assert logic.started == [] and not controller.running and not view.running and view.warnings == []


def test_a_failure_to_load_is_raised_after_the_work_folder_is_removed():
    logic, view = FakeLogic([succeeding_job()], reports=[DONE_REPORT]), RecordingView()
    logic.load_error = RuntimeError("cannot read completed_skull.vtk")
    controller = RunController(logic, view)
    controller.start("parameters", ready)
    controller.poll()
    with pytest.raises(RuntimeError, match="completed_skull"):
        controller.poll()
    assert logic.discarded == ["request 1"] and not controller.running and not view.running
    assert controller.result is None and view.failures == []


def test_closing_the_scene_ends_the_run_quietly_and_forgets_the_result():
    finished_job, running_job = succeeding_job(), succeeding_job()
    logic, view = FakeLogic([finished_job, running_job], reports=[DONE_REPORT]), RecordingView()
    controller = RunController(logic, view)
    controller.start("parameters", ready)
    controller.poll()
    controller.poll()
    controller.start("parameters", ready)
    controller.reset()
    assert running_job.cancelled and logic.discarded == ["request 1", "request 2"]
    assert controller.result is None and view.result is None and view.warnings == []
    assert not view.status[0].startswith("Cancelled") and not view.running


def test_every_text_goes_through_translate():
    logic, view = FakeLogic([succeeding_job()], reports=[DONE_REPORT]), RecordingView()
    controller = RunController(logic, view, translate=lambda text: text.replace("Done", "Fertig"))
    controller.start("parameters", ready)
    controller.poll()
    controller.poll()
    assert view.status[0] == "Fertig: 'Implant design', implant 47.0 ml."


DEVICES = {"Auto": "auto", "GPU": "cuda", "CPU": "cpu"}  # SparseImplant.DEVICES (that module needs Qt)


class CopyingJob(FakeJob):
    """A worker that has already run: its first poll moves a finished ``generate`` folder into place."""

    def __init__(self, finished_output: Path, output_dir: Path) -> None:
        super().__init__([([ProgressEvent("network", 0.5)], ["reading input.nrrd"]),
                          ([ProgressEvent("done", 1.0)], [])])
        self.finished_output, self.output_dir = finished_output, output_dir

    def poll(self) -> List[ProgressEvent]:
        if self.polls == 0:
            shutil.copytree(self.finished_output, self.output_dir)
        return super().poll()


class DesignerLogic:
    """SparseImplantLogic's run steps (SparseImplant.py itself needs Qt) on a real ``ImplantDesigner``."""

    def __init__(self, designer, finished_output: Path) -> None:
        self.designer = designer
        self.finished_output = finished_output

    def inputs(self, parameters):
        from SparseImplantLib.slicer.designer import design_inputs

        return design_inputs(parameters, DEVICES)

    def start(self, inputs):
        request = self.designer.prepare(inputs)
        return request, CopyingJob(self.finished_output, request.output_dir)

    def report(self, request):
        return self.designer.report(request)

    def finish(self, request, inputs, report):
        return self.designer.load(request, name="Implant design", inputs=inputs, report=report)

    def discard(self, request) -> None:
        self.designer.discard(request)


def test_real_runs_load_into_the_scene_and_a_rerun_hides_the_first(tmp_path, synthetic_skull, generated, monkeypatch):
    slicer = pytest.importorskip("slicer", reason="slicer-core is part of the test extras")
    from conftest import skull_segmentation
    from SparseImplantLib.slicer import scene_results
    from SparseImplantLib.slicer.designer import ImplantDesigner

    reads: List[Path] = []
    read_report = scene_results.read_report
    monkeypatch.setattr(scene_results, "read_report", lambda folder: reads.append(Path(folder)) or read_report(folder))
    scene = slicer.vtkMRMLScene()
    skull = skull_segmentation(scene, synthetic_skull[0])
    parameters = SimpleNamespace(inputSegmentation=skull, inputSegmentId=skull.GetSegmentation().GetNthSegmentID(0),
                                 inputVolume=None, boneThreshold=300.0, referenceSegmentation=None,
                                 referenceSegmentId="", model="", device="CPU", refine=True, straighten=True)
    view = RecordingView()
    designer = ImplantDesigner(scene, work_root=tmp_path / "work")
    controller = RunController(DesignerLogic(designer, generated.output), view)
    results = []
    for _ in range(2):
        assert controller.start(parameters, ready)
        while controller.running:
            controller.poll()
        results.append(controller.result)
    first, second = results
    assert len(reads) == 2 and reads[0] != reads[1]  # each run's report.json read once, by the controller
    assert first.segmentation.GetName() != second.segmentation.GetName()
    assert scene.IsNodePresent(first.segmentation) and scene.IsNodePresent(second.segmentation)
    assert not first.models["completed"].GetDisplayNode().GetVisibility()  # kept, hidden
    assert second.models["completed"].GetDisplayNode().GetVisibility()
    assert view.result is second and view.failures == [] and view.progress == 100
    assert view.status == ("No implant: the network filled no opening (is the skull already complete?). See the log.",
                           "warning")  # the seeded, untrained 'tiny' model of the shared run adds no bone
    assert second.metrics_table is not None  # from the report.json that was read once
    assert list((tmp_path / "work").iterdir()) == []  # both work folders removed
    assert skull.GetSegmentation().GetNumberOfSegments() == 1  # the input untouched
