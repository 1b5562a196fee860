"""The Generate Implant run as the panel sees it, without Qt: start, progress, Cancel, and the end of a run.

``RunController`` makes every decision of a run (what the status line says and in which level, when
the log grows, which warnings and result are shown, when the button reads Cancel) and tells a
``RunView`` what to show. The widget in ``SparseImplant.py`` implements ``RunView`` with its Qt
widgets, polls ``RunController.poll`` from a timer and shows the dialogs; the tests drive the
controller with plain objects in its place.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol, Sequence, Tuple

from .panel import RunOutcome, run_outcome


class RunLogic(Protocol):
    """What the controller needs of ``SparseImplantLogic``: a run's steps, each without dialogs."""

    def inputs(self, parameters: Any) -> Any:
        """The parameter node's choices as ``designer.DesignInputs``."""

    def start(self, inputs: Any) -> Tuple[Any, Any]:
        """Export the inputs and start the worker: (request, job); the job behaves as ``job.GenerateJob``."""

    def report(self, request: Any) -> Optional[dict]:
        """The finished run's report.json, or None when the worker wrote none."""

    def finish(self, request: Any, inputs: Any, report: Optional[dict]) -> Any:
        """Load a finished run into the scene (earlier runs hidden): its ``scene_results.ResultNodes``."""

    def discard(self, request: Any) -> None:
        """Remove the run's work folder."""


class RunView(Protocol):
    """What the panel shows of a run; the widget implements it with its Qt widgets."""

    def show_status(self, text: str, level: str) -> None:
        """The status line, in the colour of ``level`` ('info', 'warning', 'error'), also added to the log."""

    def show_progress(self, percent: int, text: Optional[str] = None) -> None:
        """The progress bar; ``text``, when given, replaces the status line without being logged."""

    def clear_log(self) -> None:
        """Empty the log pane for a new run."""

    def append_log(self, lines: Sequence[str]) -> None:
        """Add the worker's output lines to the log pane."""

    def show_warnings(self, warnings: Sequence[str]) -> None:
        """The run's warnings under the status line (none: nothing shown)."""

    def show_result(self, result: Any) -> None:
        """The shown run's result (its metrics table), or None."""

    def show_failure(self, message: str, details: str) -> None:
        """Tell the user that the run failed (the widget: a message box with the log as details)."""

    def show_running(self, running: bool) -> None:
        """A run started or ended: the button reads Cancel while one runs, and the widget polls meanwhile."""


@dataclass
class ActiveRun:
    """One started run: what it was asked, its worker, and how much of the worker's log is shown."""

    request: Any
    inputs: Any
    job: Any
    log_shown: int = 0


def untranslated(text: str) -> str:
    """The default ``translate``: the English text as it is."""
    return text


class RunController:
    """The panel's run state: idle, or one run in progress; and the result shown, the newest that succeeded.

    ``translate`` turns each user-visible text into the user's language (the widget passes Slicer's
    ``tr``) before its fields are filled in."""

    def __init__(self, logic: RunLogic, view: RunView, translate: Callable[[str], str] = untranslated) -> None:
        self.logic = logic
        self.view = view
        self.translate = translate
        self.result: Any = None
        self._run: Optional[ActiveRun] = None

    @property
    def running(self) -> bool:
        return self._run is not None

    def start(self, parameters: Any, dependencies_ready: Callable[[], bool]) -> bool:
        """Generate Implant: clear the last run's warnings, let ``dependencies_ready`` (which may ask the user
        to install packages) approve, then start the worker. Returns whether a run started; errors of the
        logic are raised, for the widget to show."""
        self.view.show_warnings([])  # the last run's warnings go with it
        if not dependencies_ready():
            return False
        inputs = self.logic.inputs(parameters)
        request, job = self.logic.start(inputs)
        self._run = ActiveRun(request, inputs, job)
        self.view.clear_log()
        self.view.show_progress(0)
        self.view.show_status(self.translate("Starting..."), "info")
        self.view.show_running(True)
        return True

    def poll(self) -> None:
        """Show the worker's new progress and log lines; once it has ended, load or report the run.

        Errors while loading the results are raised after the work folder is removed."""
        run = self._run
        if run is None:
            return
        for event in run.job.poll():
            self.view.show_progress(int(round(100 * event.fraction)), event.message or event.stage)
        self._show_new_log(run)
        if not run.job.finished:
            return
        self._run = None
        try:
            outcome = self._end(run)
        finally:
            self.logic.discard(run.request)
            self.view.show_running(False)
        if not outcome.succeeded:  # last, once the panel is idle: a message box waits for the user
            self.view.show_failure(self.translate("Generate Implant failed: {message}").format(message=outcome.error),
                                   "\n".join(run.job.log))

    def cancel(self) -> None:
        """The user's Cancel: end the run, and say that the scene was not changed."""
        if self.abandon():
            self.view.show_status(self.translate("Cancelled: the scene was not changed."), "info")

    def abandon(self) -> bool:
        """End the run without a word (the module closes); returns whether one was running."""
        run, self._run = self._run, None
        if run is None:
            return False
        run.job.cancel()
        self.logic.discard(run.request)
        self.view.show_progress(0)
        self.view.show_running(False)
        return True

    def reset(self) -> None:
        """The scene closes: end any run and forget the shown result and warnings (their nodes go with it)."""
        self.abandon()
        self.result = None
        self.view.show_result(None)
        self.view.show_warnings([])

    def _show_new_log(self, run: ActiveRun) -> None:
        lines = run.job.log[run.log_shown:]
        run.log_shown += len(lines)
        if lines:
            self.view.append_log(lines)

    def _end(self, run: ActiveRun) -> RunOutcome:
        """Warnings, status line and, if the run succeeded, its results; report.json is read once here and
        handed to the loading step."""
        report = self.logic.report(run.request)
        outcome = run_outcome(run.job, report)
        for warning in outcome.warnings:
            logging.warning(f"SparseImplant: {warning}")
        self.view.show_warnings(outcome.warnings)
        if not outcome.succeeded:
            self.view.show_status(self.translate("Failed: {message}").format(message=outcome.error), outcome.level)
            return outcome
        self.result = self.logic.finish(run.request, run.inputs, report)
        self.view.show_result(self.result)
        self.view.show_progress(100)
        self.view.show_status(self._done_text(outcome, self.result.segmentation.GetName()), outcome.level)
        return outcome

    def _done_text(self, outcome: RunOutcome, name: str) -> str:
        if outcome.empty_implant:
            return self.translate("No implant: the network filled no opening (is the skull already complete?). "
                                  "See the log.")
        if outcome.warnings:
            return self.translate("Done with {count} warning(s): '{name}'. {first}").format(
                count=len(outcome.warnings), name=name, first=outcome.warnings[0])
        return self.translate("Done: '{name}', implant {volume:.1f} ml.").format(name=name, volume=outcome.implant_ml)
