"""``predict``: batch prediction over a SkullFix or SkullBreak folder, each case designed as ``generate``
designs one (``design_implant``), with a report per case and a summary that lists the doubtful ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional, Sequence

from .. import contract
from ..contract import COMPLETED_FILE, IMPLANT_FILE
from ..data.datasets import NOT_BINARY_REMEDY, list_cases
from ..errors import SparseImplantError
from ..evaluate import json_safe
from ..outputs import atomic_write, check_output, staged_output
from ..progress import ProgressCallback, ProgressEvent, ignore_progress
from .design import Design, StageClock, design_implant
from .generate import GenerateOptions
from .inference import Networks, load_networks, select_device
from .io import read_mask, write_volume


def predict_cases(data_root: Path, output_dir: Path, cases: Optional[Sequence[str]] = None,
                  options: GenerateOptions = GenerateOptions(),
                  progress: ProgressCallback = ignore_progress) -> List[dict]:
    """Batch prediction over a SkullFix/SkullBreak folder: OUTDIR/<case>/{completed_skull,implant}.nrrd,
    the layout ``evaluate`` reads, and OUTDIR/<case>/report.json (``case_report``), each case's files
    staged and moved in as one set; then OUTDIR/predict_summary.json (``predict_summary``), also
    refreshed for the cases finished when a later one fails. Of ``options``, the network's (model,
    device, test-time augmentation, straightening, pruning threshold) and ``overwrite`` apply; the
    rest is ``generate``'s. Returns this run's case reports, in order."""
    output_dir = Path(output_dir)
    selected = list_cases(data_root, cases=cases, with_implants=False)
    for files in selected:
        check_output(output_dir / files.key, contract.PREDICT_CASE_FILES, options.overwrite)
    chosen = select_device(options.device)
    networks = load_networks(options.model, options.refine_model, chosen, options.model_dir, options.keep_logit)
    records: List[dict] = []
    try:
        for index, files in enumerate(selected):
            case_progress = _case_progress(progress, index, len(selected), files.key)
            case_progress(ProgressEvent("read", 0.0, "reading"))
            clock = StageClock()
            with staged_output(output_dir / files.key, contract.PREDICT_CASE_FILES, options.overwrite) as staging:
                with clock.stage("read"):
                    defective = read_mask(files.defective_path, remedy=NOT_BINARY_REMEDY)
                design = design_implant(defective, networks, chosen, case_progress, clock,
                                        options.test_time_augmentation, options.straighten, options.method)
                case_progress(ProgressEvent("write", 0.9, "writing"))
                with clock.stage("write"):
                    write_volume(staging / COMPLETED_FILE, design.completed)
                    write_volume(staging / IMPLANT_FILE, design.implant)
                report = case_report(files.key, files.defective_path, design, networks, clock)
                text = json.dumps(json_safe(report), indent=2) + "\n"
                (staging / contract.REPORT_FILE).write_text(text, encoding="utf-8")
            records.append(report)
    except BaseException:
        if records:  # the finished cases stay: the summary must list them (without hiding this error)
            try:
                write_predict_summary(output_dir)
            except Exception:  # noqa: BLE001
                pass
        raise
    summary = write_predict_summary(output_dir)
    doubtful = f"; {len(summary['doubtful'])} doubtful" if summary["doubtful"] else ""
    progress(ProgressEvent("done", 1.0, f"{len(selected)} case(s) in {output_dir}{doubtful}"))
    return records


def _case_progress(progress: ProgressCallback, index: int, count: int, case: str) -> ProgressCallback:
    """``progress`` for one case of a batch: its events fill the case's share of the bar, named by case."""

    def report(event: ProgressEvent) -> None:
        fraction = (index + min(max(event.fraction, 0.0), 1.0)) / count
        message = f"case {case}: {event.message}" if event.message else f"case {case}"
        progress(ProgressEvent(event.stage, fraction, message))

    return report


def case_report(case: str, input_path: Path, design: Design, networks: Networks, clock: StageClock) -> dict:
    """What ``predict`` writes as OUTDIR/<case>/report.json (and returns per case): the implant's
    volume, the doubts about it, the pose and priors the network saw, the device and each stage's time."""
    return {
        "case": case,
        "input": str(input_path),
        "model": networks.info.name,
        "refinement": networks.refiner_info.name if networks.refiner_info else None,
        "device": design.device.type,
        "completed_by": design.completed_by,
        "implant_volume_ml": round(design.implant_ml, 3),
        "warnings": list(design.warnings),
        "notes": list(design.notes),
        "pose": design.pose,
        "priors": design.priors,
        "timings_s": dict(clock.timings),
    }


def predict_summary(output_dir: Path) -> dict:
    """Every case of ``output_dir`` with a predict report (this run's and earlier runs' into the same
    folder, so a batch run in parts adds up): its warning count and implant volume, sorted by case;
    and the doubtful cases, those with warnings, with their warnings. Unreadable reports are left out."""
    output_dir = Path(output_dir)
    reports = []
    for path in [*output_dir.glob(f"*/{contract.REPORT_FILE}"), *output_dir.glob(f"*/*/{contract.REPORT_FILE}")]:
        report = _read_case_report(path)
        # A report counts where its case's folder is (not a staging or kept-aside folder, not a generate report).
        if report is not None and report["case"] == path.parent.relative_to(output_dir).as_posix():
            reports.append(report)
    reports.sort(key=lambda report: report["case"])
    return {
        "cases": [{"case": r["case"], "warning_count": len(r["warnings"]),
                   "implant_volume_ml": r.get("implant_volume_ml")} for r in reports],
        "doubtful": [{"case": r["case"], "warnings": r["warnings"]} for r in reports if r["warnings"]],
    }


def _read_case_report(path: Path) -> Optional[dict]:
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (not isinstance(report, dict) or not isinstance(report.get("case"), str)
            or not isinstance(report.get("warnings"), list)):
        return None
    report["warnings"] = [str(warning) for warning in report["warnings"]]
    return report


def write_predict_summary(output_dir: Path) -> dict:
    """Write ``predict_summary`` atomically as OUTDIR/predict_summary.json and return it (nothing is
    written into an output folder that does not exist: no case was predicted)."""
    output_dir = Path(output_dir)
    summary = predict_summary(output_dir)
    if not output_dir.is_dir():
        return summary
    text = json.dumps(summary, indent=2) + "\n"
    path = output_dir / contract.PREDICT_SUMMARY_FILE
    try:
        atomic_write(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise SparseImplantError(f"cannot write the batch summary '{path}' ({reason}): the cases' results and "
                                 "reports are in their folders; clear the way for that file") from None
    return summary
