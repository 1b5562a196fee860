"""What the Slicer module's panel decides outside a run, without Qt: selections, the default input,
how a finished run ends for the user (``run_outcome``, ``warnings_text``), and the licence.

The run itself (Generate / Cancel, progress, loading or reporting its end) is ``run_controller``'s
state machine, which classifies a finished run with ``run_outcome``; ``SparseImplant.py`` only wires
widgets and dialogs to both (its run view shows the warnings as ``warnings_text`` words them).
These are tested in CI with plain objects standing in for the parameter node and the selectors
(same attribute and method names).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence

from .job import GenerateJob

# Acknowledged terms are remembered under this key with this value; a change of terms changes the value.
LICENCE_SETTINGS_KEY = "SparseImplant/AcknowledgedTerms"
LICENCE_TERMS = "skullfix-cc-by-nc-sa-4.0"


class SelectionSync:
    """Keeps the segment selectors and the model box in step with the parameter node.

    The parameter node wrapper does not bind segment selectors, so they are restored by hand. Setting
    one fires its change signal, whose handler (``store``) writes every selector back to the parameter
    node; during ``restore`` those writes are ignored, so a loaded scene keeps its reference
    segmentation, its segment and its model instead of the still-empty selectors' values."""

    def __init__(self, parameters, input_selector, reference_selector, model_box) -> None:
        self.parameters = parameters
        self.input_selector = input_selector
        self.reference_selector = reference_selector
        self.model_box = model_box
        self._restoring = False

    @contextmanager
    def _restore_guard(self) -> Iterator[None]:
        self._restoring = True
        try:
            yield
        finally:
            self._restoring = False

    def restore(self) -> None:
        """Parameter node -> widgets."""
        p = self.parameters
        with self._restore_guard():
            self.input_selector.setCurrentNode(p.inputSegmentation)
            if p.inputSegmentId:
                self.input_selector.setCurrentSegmentID(p.inputSegmentId)
            self.reference_selector.setCurrentNode(p.referenceSegmentation)
            if p.referenceSegmentId:
                self.reference_selector.setCurrentSegmentID(p.referenceSegmentId)
            if p.model:
                self.model_box.setCurrentText(p.model)

    def store(self) -> bool:
        """Widgets -> parameter node (the selectors' change signals); False while restoring."""
        if self._restoring:
            return False
        p = self.parameters
        p.inputSegmentation = self.input_selector.currentNode()
        p.inputSegmentId = self.input_selector.currentSegmentID() or ""
        p.referenceSegmentation = self.reference_selector.currentNode()
        p.referenceSegmentId = self.reference_selector.currentSegmentID() or ""
        p.model = self.model_box.currentText
        return True


def default_input(parameters, scene) -> bool:
    """Pick the scene's first segmentation and its first segment when nothing is chosen yet.

    Returns whether anything was picked (the selectors must then be restored to show it)."""
    if parameters.inputSegmentation is not None:
        return False
    node = scene.GetFirstNodeByClass("vtkMRMLSegmentationNode")
    if node is None:
        return False
    parameters.inputSegmentation = node
    segmentation = node.GetSegmentation()
    parameters.inputSegmentId = segmentation.GetNthSegmentID(0) if segmentation.GetNumberOfSegments() else ""
    return True


@dataclass
class RunOutcome:
    """How a finished run ends for the user: its status line, its warnings and the result figures."""

    succeeded: bool
    empty_implant: bool = False
    warnings: List[str] = field(default_factory=list)
    implant_ml: Optional[float] = None
    timings_s: Dict[str, float] = field(default_factory=dict)
    error: str = ""

    @property
    def level(self) -> str:
        """'error', 'warning' or 'info', for the status line and Slicer's log."""
        if not self.succeeded:
            return "error"
        return "warning" if self.empty_implant or self.warnings else "info"


def run_outcome(job: GenerateJob, report: Optional[dict]) -> RunOutcome:
    """Classify a finished job; ``report`` is its report.json (None when it did not get that far)."""
    warnings = job.warnings()
    if not job.succeeded or report is None:
        return RunOutcome(False, warnings=warnings, error=job.error_message())
    return RunOutcome(True, empty_implant=report["voxels"]["implant"] == 0, warnings=warnings,
                      implant_ml=report.get("implant_volume_ml"), timings_s=dict(report.get("timings_s", {})))


def warnings_text(warnings: Sequence[str]) -> str:
    """What the panel shows under its status line after a run: a heading with the count, then each
    distinct warning on a line of its own; empty (nothing shown) when the run had none."""
    distinct = list(dict.fromkeys(warning.strip() for warning in warnings if warning.strip()))
    if not distinct:
        return ""
    heading = "1 warning" if len(distinct) == 1 else f"{len(distinct)} warnings"
    return "\n".join([f"{heading} from this run:", *(f"\u2022 {warning}" for warning in distinct)])


def licence_acknowledged(settings) -> bool:
    """Whether the user has acknowledged the current terms (``settings``: QSettings or the like)."""
    return settings.value(LICENCE_SETTINGS_KEY) == LICENCE_TERMS


def acknowledge_licence(settings) -> None:
    settings.setValue(LICENCE_SETTINGS_KEY, LICENCE_TERMS)
