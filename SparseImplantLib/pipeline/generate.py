"""``generate``: defective skull in, completed skull, implant, meshes, distance map and preview out.

The job around the design (``design``): read, design the implant, surfaces, write, report. The one
function the CLI and the Slicer module (through the CLI in a subprocess) call. Stages report
``ProgressEvent``s; every output is staged and moved into the output folder only when all succeeded.
"""

from __future__ import annotations

import json
import os
import platform
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .. import __version__, contract
from ..contract import COMPLETED_FILE, IMPLANT_FILE, MESH_FORMATS, output_names
from ..errors import SparseImplantError
from ..evaluate import evaluate_case
from ..outputs import staged_output
from ..progress import ProgressCallback, ProgressEvent, ignore_progress
from .design import StageClock, design_implant
from .inference import load_networks, network_passes, select_device
from .io import read_mask, write_volume
from .volume import Volume

if TYPE_CHECKING:  # VTK is imported where surfaces are made: a design alone does not load it
    from vtkmodules.vtkCommonDataModel import vtkPolyData


@dataclass
class GenerateOptions:
    """What ``generate`` does beyond its input and output paths; the defaults are the CLI's.

    Attributes:
        model (str, optional): the completion model's registry name; None: the registry's first
            completion model.
        device (str): ``"auto"`` (CUDA when available, else the CPU), ``"cpu"`` or ``"cuda"``. On CUDA
            out-of-memory the networks move to the CPU and the run goes on there (the report says
            which device finished).
        label (int, optional): the skull's value in a multi-label input; None: the input must be
            binary (one non-zero value). Excludes ``threshold_hu``.
        threshold_hu (float, optional): treat the input as a CT and take voxels at or above this
            value (HU) as bone. Excludes ``label``.
        reference (Path, optional): ground-truth implant mask on the input's geometry: adds
            ``metrics`` to the report and measures the distance map against defective + reference.
        mesh_formats (Sequence[str]): formats of every mesh, from ``contract.MESH_FORMATS``
            (stl, obj, ply, vtk, vtp). Default ``("stl",)``.
        overwrite (bool): replace results already in the output folder; without it such a folder
            is refused. Default False.
        preview_size (tuple[int, int]): preview.png's (width, height) in pixels. Default (1800, 600).
        model_dir (Path, optional): folder holding the model registry; None:
            ``registry.default_model_dir()`` (``SPARSEIMPLANT_MODEL_DIR`` or the bundled models).
        test_time_augmentation (bool): average the completion network over
            ``inference.AUGMENTED_PASSES`` (4 passes); False: one pass, a quarter of the compute.
            Default True.
        keep_logit (float, optional): the completion model's pruning threshold (a voxel is kept
            where its logit exceeds it) instead of its registry value, for tuning.
        refine_model (str, optional): super-resolution model: a name, ``"auto"`` (the registry's
            model for the completion model's grid, if any) or ``"none"``. Default ``"auto"``.
        preview (bool): write preview.png; the Slicer module draws its own views and skips it.
            Default True.
        full_resolution_meshes (bool): write the whole-skull meshes as extracted instead of their
            display copies. Default False.
        straighten (bool): lay the network's grid with the scan's bottom cut level and the head
            facing forward (``pose``). Default True.
        method (str): how the skull is completed (``contract.METHODS``): ``"auto"`` (default: the
            network, or the fitted skull shape where the network leaves most of the opening open or
            fills it short of a well-fitting shape,
            ``doubts.fitted_fills_instead``), ``"network"`` alone, or one prior alone, ``"mirror"`` or
            ``"fitted"`` (``priors.Priors.completed``).
    """

    model: Optional[str] = None
    device: str = "auto"
    label: Optional[int] = None
    threshold_hu: Optional[float] = None
    reference: Optional[Path] = None  # ground-truth implant mask: adds metrics, distances against it
    mesh_formats: Sequence[str] = ("stl",)
    overwrite: bool = False
    preview_size: Tuple[int, int] = (1800, 600)
    model_dir: Optional[Path] = None
    test_time_augmentation: bool = True  # average the network over AUGMENTED_PASSES (False: one pass, a quarter of the compute)
    keep_logit: Optional[float] = None  # the completion model's pruning threshold instead of its registry value (tuning)
    refine_model: Optional[str] = "auto"  # super-resolution model: a name, "auto" (the registry's, if any) or "none"
    preview: bool = True  # preview.png; the Slicer module draws its own views and skips it
    full_resolution_meshes: bool = False  # whole-skull meshes as extracted, not their display copies (display_meshes.display_mesh)
    straighten: bool = True  # lay the network's grid with the scan's bottom cut level and the head facing forward (pose)
    method: str = "auto"  # how the skull is completed (METHODS): the network or, where it leaves the opening, the fitted mean skull


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
    full-resolution reference surface.

    Writes into ``output_dir`` (``contract.output_names``): completed_skull.nrrd and implant.nrrd on
    the input's geometry, completed_skull, defective_skull and implant meshes in each of
    ``options.mesh_formats`` (no implant mesh for an empty implant), distance_map.vtp (per-vertex
    ``SignedDistance_mm``), preview.png when ``options.preview``, and report.json. The files are
    staged and moved in together only if every step succeeded (``outputs.staged_output``).

    Args:
        input_path (Path or str): the defective skull: a binary or label mask, or a CT with
            ``options.threshold_hu`` (NRRD, NIfTI, MHA/MHD).
        output_dir (Path or str): the results' folder, created if missing.
        options (GenerateOptions): see its attributes. Default ``GenerateOptions()``.
        progress (ProgressCallback): receives ``ProgressEvent``s from read (0.0) to done (1.0).
            Default: ignored.

    Returns:
        dict: the report: input, model, device (the one that finished), timings_s (per stage),
        threads, network_passes, voxels (defective, completed, implant counts), implant_volume_ml,
        implant_report (None for an empty implant), warnings, pose, priors, distance (mean_abs,
        mean_signed, max_abs, p95_abs in mm), versions, and metrics when ``options.reference``.

    Raises:
        SparseImplantError: a user error, with its fix in the message: unknown mesh format, model or
            label; an unknown or unavailable device; label and threshold together; an unreadable,
            non-3D or non-binary input; a reference of another geometry; an output folder that would
            overwrite the input, is not writable, or holds results without ``options.overwrite``; the
            skull vanishing on the model's grid. On any error nothing is moved into the output folder.
    """
    from ..surfaces.distances import DistanceTo, NearChanges, add_signed_distance, distance_statistics
    from ..surfaces.from_masks import surface_from_mask
    from ..surfaces.implant_report import implant_report

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
            networks = load_networks(options.model, options.refine_model, device, options.model_dir,
                                     options.keep_logit)
        progress(ProgressEvent("read", 0.05, f"model {networks.info.name} on {device.type}"))
        # Surfaces run beside the main line, on the core that its numpy, scipy and sequential VTK steps
        # leave idle (VTK releases the GIL): the input skull's beside the design; the implant's and the
        # completed skull's as soon as the first cut is made, beside the priors that decide whether it
        # stands, while this thread makes the lab report, the masks' files and the distances' search
        # structure; the mesh files beside the preview. The executor waits for its work on errors too.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="beside") as beside:
            input_skull = beside.submit(_surfaces_of_input, defective)
            started: List[_StartedSurfaces] = []

            def start_surfaces(completed: Volume, implant: Volume) -> None:
                started.append(_StartedSurfaces(completed, beside.submit(_printable_implant, implant, input_skull),
                                                beside.submit(surface_from_mask, completed)))

            design = design_implant(defective, networks, device, progress, clock, options.test_time_augmentation,
                                    options.straighten, options.method, on_cut=start_surfaces)
            completed, implant, device = design.completed, design.implant, design.device
            progress(ProgressEvent("meshes", 0.75, "surfaces of the implant and the completed skull"))
            with clock.stage("meshes"):  # several seconds: each step moves the bar
                surfaces = next((surfaces for surfaces in started if surfaces.completed is completed), None)
                for replaced in started:
                    if replaced is not surfaces:  # the fitted skull shape's cut replaced the first one
                        replaced.cancel()
                if surfaces is None:
                    start_surfaces(completed, implant)
                    surfaces = started[-1]
                defective_surface, defective_view = input_skull.result()
                implant_surface = surfaces.implant.result()
                completed_skull = beside.submit(_surfaces_of_completed, completed, surfaces.extracted,
                                                defective_surface, _own_copy(implant_surface))  # the lab report uses the original
                # What a lab checks before printing: volume, area, thickness, border fit, watertightness.
                fit = (implant_report(implant_surface, implant, defective_surface).to_json()
                       if implant_surface is not None else None)
                write_volume(staging / COMPLETED_FILE, completed)
                write_volume(staging / IMPLANT_FILE, implant)
                # The distances' search structure is built here, while the completed skull's surface is
                # made: built beside the design instead, it slowed the network's two threads down.
                if reference is not None:
                    against = defective.with_array(((defective.array > 0) | (reference.array > 0)).astype(np.uint8))
                    distance_to_against = DistanceTo(surface_from_mask(against))
                else:
                    against, distance_to_against = defective, DistanceTo(defective_surface)
                near_changes = NearChanges(completed, against)
                if options.preview:  # its VTK modules load while the completed skull's surface is made
                    from ..surfaces.render import render_three_panel
                completed_surface, completed_view = completed_skull.result()
                progress(ProgressEvent("meshes", 0.85, "signed distances"))
                distance_surface = add_signed_distance(completed_view, distance_to_against, where=near_changes.at(completed_view))
                distances = distance_statistics(_point_array(distance_surface, contract.DISTANCE_ARRAY))
            whole_skulls = ((completed_surface, defective_surface) if options.full_resolution_meshes
                            else (completed_view, defective_view))
            meshes = {contract.mesh_file(stem, fmt): surface for fmt in options.mesh_formats
                      for stem, surface in zip(contract.MESH_STEMS, (*whole_skulls, implant_surface))
                      if surface is not None}  # the implant at full resolution; none for an empty implant
            meshes[contract.DISTANCE_MAP_FILE] = distance_surface
            progress(ProgressEvent("write", 0.9, "writing results"))
            # The files are written beside the preview, each from its own copy: VTK's writers and renderer
            # walk a mesh's cells with state kept in the mesh.
            written = beside.submit(_export_meshes, {name: _own_copy(surface) for name, surface in meshes.items()},
                                    staging)
            if options.preview:
                with clock.stage("preview"):
                    render_three_panel(completed_view, defective_view, implant_surface, distance_surface,
                                       staging / contract.PREVIEW_FILE, size=options.preview_size)
            with clock.stage("write"):  # what of the writing the preview did not hide
                written.result()
        report = {
            "input": str(input_path),
            "model": networks.describe(),
            "device": device.type,
            "timings_s": clock.timings,
            "threads": _threads(),
            "method": options.method,
            "completed_by": design.completed_by,
            "network_passes": len(network_passes(options.test_time_augmentation)),
            "voxels": {
                "defective": int(np.count_nonzero(defective.array)),
                "completed": int(np.count_nonzero(completed.array)),
                "implant": int(np.count_nonzero(implant.array)),
            },
            "implant_volume_ml": round(design.implant_ml, 3),
            "implant_report": fit,
            "warnings": design.warnings,
            "notes": design.notes,
            "pose": design.pose,
            "priors": design.priors,
            "distance": distances,
            "versions": _versions(),
        }
        if reference is not None:
            report["metrics"] = evaluate_case(implant, reference, defective, completed, case=input_path.name)
        (staging / contract.REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    progress(ProgressEvent("done", 1.0, f"results in {output_dir}"))
    return report


@dataclass
class _StartedSurfaces:
    """The surfaces of one cut, under way beside the main line: the printed implant's and the extracted
    surface of the completed skull's mask."""

    completed: Volume
    implant: Future
    extracted: Future

    def cancel(self) -> None:
        self.implant.cancel()
        self.extracted.cancel()


def _printable_implant(implant: Volume, input_skull: Future) -> Optional[vtkPolyData]:
    """The implant's mesh as printed (None for an empty implant), against the input skull's surface."""
    from ..surfaces.from_masks import printable_implant_surface

    return printable_implant_surface(implant, input_skull.result()[0]) if implant.array.any() else None


def _surfaces_of_completed(completed: Volume, extracted: Future, skull_surface: vtkPolyData,
                           implant_surface: Optional[vtkPolyData]) -> Tuple[vtkPolyData, vtkPolyData]:
    """The completed skull's full-resolution surface (from ``extracted``, the surface of its mask; its added
    bone as the printed implant) and its display mesh. Run beside VTK work on other objects: of
    ``skull_surface`` it reads the points only."""
    from ..surfaces.display_meshes import display_mesh
    from ..surfaces.from_masks import completed_skull_surface

    surface = completed_skull_surface(completed, skull_surface, implant_surface, extracted.result())
    return surface, display_mesh(surface)


def _export_meshes(meshes: Dict[str, vtkPolyData], folder: Path) -> None:
    from ..surfaces.meshes import export_mesh

    for name, surface in meshes.items():
        export_mesh(surface, folder / name)


def _own_copy(surface: Optional[vtkPolyData]) -> Optional[vtkPolyData]:
    """A deep copy, for work in another thread: VTK builds some of a surface's structures when first
    asked (bounds, cell links), which two threads must not do at once."""
    if surface is None:
        return None
    from vtkmodules.vtkCommonDataModel import vtkPolyData

    copy = vtkPolyData()
    copy.DeepCopy(surface)
    return copy


def _surfaces_of_input(skull: Volume) -> Tuple[vtkPolyData, vtkPolyData]:
    """``skull``'s full-resolution surface and its display mesh."""
    from ..surfaces.display_meshes import display_mesh
    from ..surfaces.from_masks import surface_from_mask

    surface = surface_from_mask(skull)
    return surface, display_mesh(surface)


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
