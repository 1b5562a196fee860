"""The output contract: the names that whoever writes SparseImplant's results and whoever reads them share.

A ``generate`` folder holds the two masks, one mesh per ``MESH_STEMS`` entry and format, the distance
map (its vertices carry ``DISTANCE_ARRAY``), ``preview.png`` unless ``--no-preview``, and
``report.json``; ``predict`` writes the two masks (which ``evaluate`` reads) and a ``report.json`` per
case, and ``predict_summary.json`` beside the case folders. The Slicer module reads a folder back
(``slicer.scene_results.result_files``) and the CLI's output lines (``job``). Change a name here and every writer and
reader follows.
"""

from __future__ import annotations

from typing import List, Sequence

DEVICES = ("auto", "cpu", "cuda")  # --device: auto = CUDA when available, else the CPU
METHODS = ("auto", "network", "mirror", "fitted")  # --method: auto = the network, or the fitted skull shape where it leaves the opening open or fills it short; or one of them alone
DESIGNERS = {"network": "network", "fitted": "fitted skull shape", "mirror": "mirror image"}  # completed_by, in words
COMPLETED_FILE = "completed_skull.nrrd"
IMPLANT_FILE = "implant.nrrd"
MESH_STEMS = ("completed_skull", "defective_skull", "implant")  # defective: the fit check beside the implant
MESH_FORMATS = ("stl", "obj", "ply", "vtk", "vtp")
DISTANCE_MAP_FILE = "distance_map.vtp"  # compressed XML: the completed skull's display mesh
DISTANCE_ARRAY = "SignedDistance_mm"  # per-vertex signed distance, positive outside the reference surface
PREVIEW_FILE = "preview.png"
REPORT_FILE = "report.json"
PREDICT_CASE_FILES = (COMPLETED_FILE, IMPLANT_FILE, REPORT_FILE)  # what predict writes into OUTDIR/<case>/
PREDICT_SUMMARY_FILE = "predict_summary.json"  # predict: every case folder's report, in brief, and the doubtful ones

# The CLI's one-line messages on stderr, which the Slicer module's job reader picks out of the output.
ERROR_PREFIX = "sparseimplant: error: "
WARNING_PREFIX = "sparseimplant: warning: "


def mesh_file(stem: str, mesh_format: str) -> str:
    return f"{stem}.{mesh_format}"


def output_names(mesh_formats: Sequence[str], preview: bool = True) -> List[str]:
    """Every file a ``generate`` run may write, in the order it lists them."""
    meshes = [mesh_file(stem, fmt) for stem in MESH_STEMS for fmt in mesh_formats]
    return [COMPLETED_FILE, IMPLANT_FILE, *meshes, DISTANCE_MAP_FILE, *([PREVIEW_FILE] if preview else []), REPORT_FILE]


def designer_in_words(report: dict) -> str:
    """What designed a report's implant (``completed_by``), in words; for the fitted shape, which one filled
    the opening (``priors.fitted_bone.from``: the mean skull, the shape model or the mirror image)."""
    designer = report.get("completed_by") or ""
    words = DESIGNERS.get(designer, designer)
    shape = ((report.get("priors") or {}).get("fitted_bone") or {}).get("from")
    return f"{words} ({shape})" if designer == "fitted" and shape else words
