"""``generate``: defective skull in, completed skull, implant, meshes, distance map and preview out.

The job around the networks (``inference``): read, design the implant, surfaces, write, report. The one
function the CLI and the Slicer module (through the CLI in a subprocess) call. Stages report
``ProgressEvent``s; every output is staged and moved into the output folder only when all succeeded.
"""

from __future__ import annotations

import json
import os
import platform
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from . import __version__, contract
from .contract import COMPLETED_FILE, IMPLANT_FILE, MESH_FORMATS, output_names
from .errors import SparseImplantError
from .evaluate import evaluate_case
from .checks import doubts, result_doubts
from .metrics import dice
from .inference import (
    OUTPUT_SMOOTHING,
    Networks,
    coarse_skull,
    load_networks,
    model_grid_input,
    network_passes,
    refined_skull,
    select_device,
)
from .io import read_mask, write_volume
from .outputs import check_output, staged_output
from .pose import pose_doubts, straighten
from .postprocess import extract_implant
from .priors import estimate_priors
from .progress import ProgressCallback, ProgressEvent, ignore_progress
from .volume import Volume, paste, resample_mask, resample_soft_mask

METHODS = ("network", "mirror", "fitted")  # how the skull is completed: the network, or one prior alone (baselines)


@dataclass
class GenerateOptions:
    model: Optional[str] = None
    device: str = "auto"
    label: Optional[int] = None
    threshold_hu: Optional[float] = None
    reference: Optional[Path] = None  # ground-truth implant mask: adds metrics, distances against it
    mesh_formats: Sequence[str] = ("stl",)
    overwrite: bool = False
    preview_size: Tuple[int, int] = (1800, 600)
    model_dir: Optional[Path] = None
    averaged: bool = True  # average the network over AVERAGED_PASSES (False: one pass, a quarter of the compute)
    refine_model: Optional[str] = "auto"  # super-resolution model: a name, "auto" (the registry's, if any) or "none"
    preview: bool = True  # preview.png; the Slicer module draws its own views and skips it
    full_resolution_meshes: bool = False  # whole-skull meshes as extracted, not their display copies (display_meshes.display_mesh)
    straighten: bool = True  # lay the network's grid with the scan's bottom cut level and the head facing forward (pose)


@dataclass
class StageClock:
    """Wall-clock seconds per stage, for the report."""

    timings: Dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - start, 3)


@dataclass
class Design:
    """What ``design_implant`` gives: the completed skull and the implant on the input's geometry
    (completed = defective | implant), the device used, and plain-language doubts about the result."""

    completed: Volume
    implant: Volume
    device: torch.device
    warnings: List[str] = field(default_factory=list)
    pose: Optional[dict] = None  # the scan's bottom cut and the head's turn as the network saw it (pose)
    priors: Optional[dict] = None  # the symmetry plane, the mean skull's fit and what they expect missing

    @property
    def implant_ml(self) -> float:
        return float(np.count_nonzero(self.implant.array)) * self.implant.voxel_volume_mm3 / 1000.0


def design_implant(defective: Volume, networks: Networks, device: torch.device,
                   progress: ProgressCallback = ignore_progress, clock: Optional[StageClock] = None,
                   averaged: bool = True, straighten_skull: bool = True, method: str = "network") -> Design:
    """Complete the skull and cut the implant; every doubt is also issued as a warning. With
    ``straighten_skull``, the network sees the skull with the scan's bottom cut level and the head
    facing forward, as it saw its training skulls (``pose.straighten``). ``method`` (``METHODS``): the
    network, or one prior alone, the baselines ``bench generalization`` sets beside it."""
    if method not in METHODS:
        raise SparseImplantError(f"unknown method '{method}': use one of {', '.join(METHODS)}")
    clock = clock or StageClock()
    with clock.stage("pose"):
        progress(ProgressEvent("pose", 0.1, "finding the scan's bottom cut and the head's pose"))
        straightened = straighten(defective, straighten_skull)
    with clock.stage("network"):
        model_input = model_grid_input(defective, networks.info, straightened.axes)
    with clock.stage("priors"):  # the network's guides when it takes them, and a check on its result always
        progress(ProgressEvent("priors", 0.15, "mirroring the skull and fitting the mean skull"))
        priors = estimate_priors(model_input.cropped.array, model_input.cropped.spacing[0])
    if networks.info.priors:
        model_input.priors = priors
    last_stage, resample = "network", resample_soft_mask  # the coarse skull is a share of passes per voxel
    if method != "network":
        completed_on_grid = priors.completed(model_input.cropped.array, method).astype(np.float32)
        skull = model_input.grid.with_array(paste(completed_on_grid, model_input.box, model_input.grid.shape))
    else:
        with clock.stage("network"):
            skull, device = coarse_skull(model_input, networks, device, progress, averaged)
    skull_on_model_grid = skull
    if networks.refiner is not None and method == "network":
        with clock.stage("refine"):
            skull, device = refined_skull(skull, defective, networks, device, progress)
        last_stage, resample = "refine", resample_mask
    with clock.stage(last_stage):  # the way back to the input grid counts as the last network's time
        progress(ProgressEvent("restore", 0.6, "resampling to the input grid"))
        completed_raw = resample(skull, defective, smoothing=OUTPUT_SMOOTHING)
    progress(ProgressEvent("implant", 0.7, "extracting the implant"))
    with clock.stage("implant"):
        implant_array = extract_implant(completed_raw.array, defective.array, defective.spacing)
    implant = defective.with_array(implant_array.astype(np.uint8))
    completed = defective.with_array(((defective.array > 0) | implant_array).astype(np.uint8))
    expected = priors.missing(model_input.cropped.array)
    added = (skull_on_model_grid.array[model_input.box] >= 0.5) & ~(model_input.cropped.array > 0)
    agreement = dice(added, expected) if expected.any() or added.any() else 1.0
    expected_ml = float(expected.sum()) * model_input.cropped.voxel_volume_mm3 / 1000.0
    design = Design(completed, implant, device, pose=straightened.report(),
                    priors={**priors.report(model_input.grid.direction), "expected_missing_ml": round(expected_ml, 1),
                            "agreement_dsc": round(agreement, 3)})
    design.warnings = (doubts(model_input.cropped, design.implant_ml) + pose_doubts(straightened.pose)
                       + priors.doubts() + result_doubts(expected_ml, design.implant_ml, agreement))
    if not implant_array.any():
        design.warnings.append("the network added no bone: the implant is empty (is the skull already complete?)")
    for message in design.warnings:
        warnings.warn(message)
    return design


def predict_cases(data_root: Path, output_dir: Path, cases: Optional[Sequence[str]] = None, model: Optional[str] = None,
                  device: str = "auto", model_dir: Optional[Path] = None, overwrite: bool = False,
                  progress: ProgressCallback = ignore_progress, keep_logit: Optional[float] = None,
                  averaged: bool = True, refine_model: Optional[str] = "auto", straighten: bool = True) -> list[dict]:
    """Batch prediction over a SkullFix/SkullBreak folder: OUTDIR/<case>/{completed_skull,implant}.nrrd,
    the layout ``evaluate`` reads, and OUTDIR/<case>/report.json (``case_report``), each case's files
    staged and moved in as one set; then OUTDIR/predict_summary.json (``predict_summary``), also
    refreshed for the cases finished when a later one fails. ``keep_logit`` overrides the completion
    model's pruning threshold (tuning); ``averaged``, ``refine_model`` and ``straighten`` as in
    ``GenerateOptions``. Returns this run's case reports, in order."""
    from .data.datasets import NOT_BINARY_REMEDY, list_cases
    from .evaluate import json_safe

    output_dir = Path(output_dir)
    selected = list_cases(data_root, cases=cases, with_implants=False)
    for files in selected:
        check_output(output_dir / files.key, contract.PREDICT_CASE_FILES, overwrite)
    chosen = select_device(device)
    networks = load_networks(model, refine_model, chosen, model_dir)
    if keep_logit is not None:
        networks.completion.keep_logit = keep_logit
    records: List[dict] = []
    try:
        for index, files in enumerate(selected):
            case_progress = _case_progress(progress, index, len(selected), files.key)
            case_progress(ProgressEvent("read", 0.0, "reading"))
            clock = StageClock()
            with staged_output(output_dir / files.key, contract.PREDICT_CASE_FILES, overwrite) as staging:
                with clock.stage("read"):
                    defective = read_mask(files.defective_path, remedy=NOT_BINARY_REMEDY)
                design = design_implant(defective, networks, chosen, case_progress, clock, averaged=averaged,
                                        straighten_skull=straighten)
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
        "implant_volume_ml": round(design.implant_ml, 3),
        "warnings": list(design.warnings),
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
    from .io import atomic_write

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


def _check_options(input_path: Path, output_dir: Path, options: GenerateOptions) -> None:
    unknown = sorted(set(options.mesh_formats) - set(MESH_FORMATS))
    if unknown or not options.mesh_formats:
        raise SparseImplantError(f"unknown mesh format(s) {unknown or '(none)'}: choose from {', '.join(MESH_FORMATS)}")
    resolved_input = input_path.resolve()
    if any((output_dir / name).resolve() == resolved_input for name in output_names(options.mesh_formats, options.preview)):
        raise SparseImplantError(f"the output folder would overwrite the input '{input_path}': choose another folder")


def generate(input_path: Path, output_dir: Path, options: GenerateOptions = GenerateOptions(),
             progress: ProgressCallback = ignore_progress) -> dict:
    """Run the whole job and return the report (also written as report.json).

    The whole skulls are written and shown as display meshes (``display_meshes.display_mesh``: within
    ``DISPLAY_TOLERANCE_MM`` of the full-resolution surfaces, a fifth of their triangles) unless
    ``options.full_resolution_meshes``; the implant mesh, which is printed, is always full resolution.
    The distance map is the completed skull's display mesh, its vertices measured against the
    full-resolution reference surface."""
    from .display_meshes import display_mesh
    from .distances import add_signed_distance, distance_statistics, vertices_near_changes
    from .geometry import surface_from_mask, without_specks
    from .implant_report import implant_report
    from .meshes import export_mesh

    input_path, output_dir = Path(input_path), Path(output_dir)
    _check_options(input_path, output_dir, options)
    clock = StageClock()
    with staged_output(output_dir, output_names(options.mesh_formats, options.preview), options.overwrite) as staging:
        progress(ProgressEvent("read", 0.0, f"reading {input_path.name}"))
        with clock.stage("read"):
            defective = read_mask(input_path, options.label, options.threshold_hu)
            reference = (read_mask(options.reference, remedy="the reference must be a binary implant mask (0 and 1)")
                         if options.reference else None)
            if reference is not None and not reference.same_geometry(defective):
                raise SparseImplantError("the reference implant's geometry differs from the input's: resample it onto the input")
            device = select_device(options.device)
            networks = load_networks(options.model, options.refine_model, device, options.model_dir)
        progress(ProgressEvent("read", 0.05, f"model {networks.info.name} on {device.type}"))
        design = design_implant(defective, networks, device, progress, clock, options.averaged, options.straighten)
        completed, implant, device = design.completed, design.implant, design.device
        implant_array = implant.array > 0
        progress(ProgressEvent("meshes", 0.75, "surfaces of the skulls and the implant"))
        with clock.stage("meshes"):  # several seconds: each step moves the bar
            completed_surface = surface_from_mask(completed)
            defective_surface = surface_from_mask(defective)
            implant_surface = without_specks(surface_from_mask(implant)) if implant_array.any() else None
            progress(ProgressEvent("meshes", 0.8, "display meshes"))
            completed_view, defective_view = display_mesh(completed_surface), display_mesh(defective_surface)
            progress(ProgressEvent("meshes", 0.85, "signed distances and the implant report"))
            if reference is not None:
                against = defective.with_array(((defective.array > 0) | (reference.array > 0)).astype(np.uint8))
                against_surface = surface_from_mask(against)
            else:
                against, against_surface = defective, defective_surface
            distance_surface = add_signed_distance(completed_view, against_surface,
                                                   where=vertices_near_changes(completed_view, completed, against))
            distances = distance_statistics(_point_array(distance_surface, contract.DISTANCE_ARRAY))
            # What a lab checks before printing: volume, area, thickness, border fit, watertightness.
            fit = (implant_report(implant_surface, implant, defective_surface).to_json()
                   if implant_surface is not None else None)
        whole_skulls = ((completed_surface, defective_surface) if options.full_resolution_meshes
                        else (completed_view, defective_view))
        meshes = dict(zip(contract.MESH_STEMS, (*whole_skulls, implant_surface)))  # the implant at full resolution
        progress(ProgressEvent("write", 0.9, "writing results"))
        with clock.stage("write"):
            write_volume(staging / COMPLETED_FILE, completed)
            write_volume(staging / IMPLANT_FILE, implant)
            for fmt in options.mesh_formats:
                for stem, surface in meshes.items():
                    if surface is not None:  # no implant mesh for an empty implant
                        export_mesh(surface, staging / contract.mesh_file(stem, fmt))
            export_mesh(distance_surface, staging / contract.DISTANCE_MAP_FILE)
        if options.preview:
            from .render import render_three_panel

            with clock.stage("preview"):
                render_three_panel(completed_view, defective_view, implant_surface, distance_surface,
                                   staging / contract.PREVIEW_FILE, size=options.preview_size)
        report = {
            "input": str(input_path),
            "model": networks.describe(),
            "device": device.type,
            "timings_s": clock.timings,
            "threads": _threads(),
            "network_passes": len(network_passes(options.averaged)),
            "voxels": {
                "defective": int(np.count_nonzero(defective.array)),
                "completed": int(np.count_nonzero(completed.array)),
                "implant": int(implant_array.sum()),
            },
            "implant_volume_ml": round(design.implant_ml, 3),
            "implant_report": fit,
            "warnings": design.warnings,
            "pose": design.pose,
            "priors": design.priors,
            "distance": distances,
            "versions": _versions(),
        }
        if reference is not None:
            report["metrics"] = evaluate_case(implant, reference, defective, completed, case=input_path.name)
        (staging / contract.REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    progress(ProgressEvent("done", 1.0, f"results in {output_dir}"))
    return report


def _point_array(surface, name: str) -> np.ndarray:
    from vtkmodules.util.numpy_support import vtk_to_numpy

    return vtk_to_numpy(surface.GetPointData().GetArray(name))


def _threads() -> dict:
    """What the timings depend on besides the hardware: CPU threads and how idle OpenMP threads wait."""
    return {"torch": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default")}


def _versions() -> dict:
    from vtkmodules.vtkCommonCore import vtkVersion

    return {
        "sparseimplant": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "vtk": vtkVersion.GetVTKVersion(),
    }
