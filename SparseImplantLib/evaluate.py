"""Scoring predictions against a SkullFix/SkullBreak ground truth with the challenge metrics.

Predictions live one folder per case, as ``sparseimplant generate -o DIR/<case>`` writes them:
``DIR/<case>/implant.nrrd`` and, optionally, ``DIR/<case>/completed_skull.nrrd``; SkullBreak cases use
``DIR/<type>/<case>/``. Results are written as ``evaluation.md`` (a table) and ``evaluation.json``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import metrics
from .contract import COMPLETED_FILE, IMPLANT_FILE
from .data.datasets import describe_geometry_difference, list_cases
from .errors import SparseImplantError
from .metrics import METRICS
from .outputs import PathLike, atomic_write, staged_output
from .pipeline.io import mask_from_labels, read_volume
from .pipeline.volume import Volume
from .progress import ProgressCallback, ProgressEvent, ignore_progress

REPORT_MARKDOWN = "evaluation.md"
REPORT_JSON = "evaluation.json"

Row = Dict[str, object]
Summary = Dict[str, Dict[str, Optional[float]]]


def _check_geometry(volume: Volume, truth: Volume, case: str, what: str) -> None:
    if not volume.same_geometry(truth):
        raise SparseImplantError(
            f"case {case}: the {what} does not lie on the ground-truth implant's grid"
            f" ({describe_geometry_difference(volume, truth)}): predict on the case's original defective skull file"
        )


def evaluate_case(
    pred_implant: Volume,
    true_implant: Volume,
    defective: Volume,
    pred_complete: Optional[Volume] = None,
    case: str = "prediction",
) -> Dict[str, Optional[float]]:
    """DSC, border DSC and HD95 of the implant, plus the completed skull's DSC when one is given
    (``skull_dsc`` is None otherwise). Geometries must match the ground truth exactly."""
    _check_geometry(pred_implant, true_implant, case, "predicted implant")
    _check_geometry(defective, true_implant, case, "defective skull")
    spacing = true_implant.spacing
    result: Dict[str, Optional[float]] = {
        "dsc": metrics.dice(pred_implant.array, true_implant.array),
        "bdsc": metrics.border_dice(pred_implant.array, true_implant.array, defective.array, spacing),
        "hd95_mm": metrics.hd95(pred_implant.array, true_implant.array, spacing),
        "skull_dsc": None,
    }
    if pred_complete is not None:
        _check_geometry(pred_complete, true_implant, case, "predicted completed skull")
        result["skull_dsc"] = metrics.completed_skull_dice(pred_complete.array, defective.array, true_implant.array)
    return result


def _read_prediction(path: Path, case: str) -> Volume:
    return mask_from_labels(read_volume(path), f"{case}/{path.name}",
                            remedy="predictions must be binary masks (0 and 1), as 'sparseimplant predict' writes them")


def evaluate_folders(
    predictions_dir: PathLike,
    data_root: PathLike,
    cases: Optional[Sequence[str]] = None,
    layout: Optional[str] = None,
    defect_types: Optional[Sequence[str]] = None,
    output_dir: Optional[PathLike] = None,
    progress: ProgressCallback = ignore_progress,
    overwrite: bool = False,
) -> Tuple[List[Row], Summary]:
    """Score every selected case, write ``evaluation.md`` and ``evaluation.json`` into ``output_dir``
    (default: ``predictions_dir``; replacing earlier reports only with ``overwrite``) and return
    (per-case rows, per-metric mean/std/n)."""
    predictions_dir = Path(predictions_dir)
    if not predictions_dir.is_dir():
        problem = "is not a folder" if predictions_dir.exists() else "does not exist"
        raise SparseImplantError(f"predictions folder '{predictions_dir}' {problem}: check --predictions")
    selected = list_cases(data_root, layout=layout, cases=cases, defect_types=defect_types)
    missing = [f.key for f in selected if not (predictions_dir / f.key / IMPLANT_FILE).is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise SparseImplantError(
            f"no predicted implant for {len(missing)} case(s) ({shown}): expected '{predictions_dir}/<case>/{IMPLANT_FILE}'"
            " as written by `sparseimplant generate -o DIR/<case>`"
        )
    rows: List[Row] = []
    target = Path(output_dir) if output_dir is not None else predictions_dir
    with staged_output(target, [REPORT_MARKDOWN, REPORT_JSON], overwrite) as staging:
        for number, files in enumerate(selected):
            progress(ProgressEvent("evaluate", number / len(selected), files.key))
            truth = files.load(with_complete=False)
            folder = predictions_dir / files.key
            completed_path = folder / COMPLETED_FILE
            scores = evaluate_case(
                _read_prediction(folder / IMPLANT_FILE, files.key),
                truth.implant,
                truth.defective,
                _read_prediction(completed_path, files.key) if completed_path.is_file() else None,
                case=files.key,
            )
            rows.append({"case": files.key, "defect_type": files.defect_type, **scores})
        progress(ProgressEvent("evaluate", 1.0, f"{len(rows)} cases"))
        summary = summarise(rows)
        write_reports(rows, summary, staging)
    return rows, summary


def summarise(rows: Sequence[Row]) -> Summary:
    """Mean and (population) standard deviation per metric over the cases that have it. An infinite
    HD95 (empty prediction) makes the mean infinite on purpose: a missing implant must not vanish."""
    summary: Summary = {}
    for key in (metric.key for metric in METRICS):
        values = np.array([row[key] for row in rows if row.get(key) is not None], dtype=np.float64)
        if values.size == 0:
            summary[key] = {"mean": None, "std": None, "n": 0}
            continue
        finite = bool(np.all(np.isfinite(values)))
        summary[key] = {
            "mean": float(values.mean()) if finite else math.inf,
            "std": float(values.std()) if finite else math.inf,
            "n": int(values.size),
        }
    return summary


def _cell(value: object, number_format: str) -> str:
    if value is None:
        return "–"
    return "inf" if not math.isfinite(float(value)) else number_format.format(value)


def markdown_table(rows: Sequence[Row], summary: Summary) -> str:
    """One row per case and a final ``mean ± std`` row."""
    header = "| case | " + " | ".join(metric.column for metric in METRICS) + " |"
    lines = [header, "|" + "---|" * (len(METRICS) + 1)]
    for row in rows:
        lines.append(f"| {row['case']} | " + " | ".join(_cell(row[m.key], m.number_format) for m in METRICS) + " |")
    averages = []
    for metric in METRICS:
        entry = summary[metric.key]
        averages.append(
            "–" if entry["mean"] is None
            else f"{_cell(entry['mean'], metric.number_format)} ± {_cell(entry['std'], metric.number_format)}"
        )
    lines.append(f"| **mean ± std** (n={len(rows)}) | " + " | ".join(averages) + " |")
    return "\n".join(lines) + "\n"


def json_safe(value: object) -> object:
    """JSON has no infinity: non-finite numbers become null (the Markdown table shows them as inf)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def write_reports(rows: Sequence[Row], summary: Summary, output_dir: Path) -> Tuple[Path, Path]:
    document = json_safe({"cases": list(rows), "summary": summary})
    text = json.dumps(document, indent=2, allow_nan=False) + "\n"
    json_path = atomic_write(output_dir / REPORT_JSON, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    table = markdown_table(rows, summary)
    markdown_path = atomic_write(output_dir / REPORT_MARKDOWN, lambda tmp: tmp.write_text(table, encoding="utf-8"))
    return markdown_path, json_path
