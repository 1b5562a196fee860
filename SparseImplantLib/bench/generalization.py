"""Generalisation benchmark: is the implant right for skulls, defects and files unlike SkullFix's?

A deterministic suite built from validation skulls (050-059 by default, never trained or tuned on). Each
case is run through the pipeline (``design_implant``, as ``generate`` runs it) and scored with the
challenge metrics at full resolution against its own ground truth:

- ``skullfix``: the case's own SkullFix defect, as stored;
- ``defect:<kind>``: every kind the defect generator knows, cut into the complete skull at full
  resolution at a seeded random place and size (saw-cut craniotomies in three size classes);
- ``clinical:<name>``: openings beyond the defect group's ranges, as clinics see them (``CLINICAL``):
  a hemicraniectomy, a large fronto-orbital opening, a saw-cut opening low on the temple;
- ``orientation:<name>``: the same file stored with permuted or flipped axes (a RAS-stored NIfTI flips
  two); scored against the truth and for agreement with the file as stored;
- ``rotation:<axes>``: the head turned by 25 degrees (pitch, roll or yaw, either way), resampled;
- ``source:<name>``: another skull source: 1 mm voxels, 3 mm slices, bone one voxel thinner or thicker.

The SkullFix, defect and clinical groups also run the two baselines the network must beat (``contract.METHODS``):
the defective skull completed by its own mirror image alone, and by the fitted mean skull alone, cut
into an implant by the same post-processing.

Failures are cases with implant DSC below 0.6. Results: a per-group table, JSON with every case.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..data.defects import (
    BILATERAL,
    CRANIOTOMY,
    FRONTOORBITAL,
    PARIETOTEMPORAL,
    RANDOM,
    SKULLFIX_BOX,
    WEDGE,
    CraniotomyDefect,
    SphereDefect,
    cut_defect,
)
from ..errors import SparseImplantError
from ..pipeline.volume import Volume, corners_lps, find_foreground_box, reorient, resample_mask, undo_reorient
from .commands import GENERALIZATION_GROUPS as GROUPS
from .report import markdown_table, write_results

FAILURE_DSC = 0.6
BASELINE_GROUPS = ("skullfix", "defect", "clinical")  # where the prior-only baselines run beside the network
PRIOR_ONLY = ("mirror", "fitted")  # methods that are baselines; network and auto are designs, run on every group
ROTATION_DEG = 25.0
CRANIOTOMY_SIZES = {"small": (20.0, 40.0), "medium": (50.0, 90.0), "large": (100.0, 140.0)}
# Openings the defect group's ranges leave out (name: kind, its spec): a decompressive hemicraniectomy
# (radius 50-60 mm, 10-12 cm across and longer front to back), a fronto-orbital opening of 38-48 mm
# radius (the defect group's: 22-38), a saw-cut opening of 6-10 cm centred within 15 degrees of the
# skull centre's horizontal plane (the temple, where the vault meets the skull base).
CLINICAL = {
    "hemicraniectomy": (PARIETOTEMPORAL, {"spheres": SphereDefect(radius_mm=(50.0, 60.0), satellites=(0, 2))}),
    "frontoorbital-large": (FRONTOORBITAL, {"spheres": SphereDefect(radius_mm=(38.0, 48.0))}),
    "craniotomy-temporal": (CRANIOTOMY, {"craniotomy": CraniotomyDefect(diameter_mm=(60.0, 100.0),
                                                                        elevation_deg=(-15.0, 15.0))}),
}
ORIENTATIONS = {  # name: (axis order, flips)
    "permuted": ((2, 0, 1), (False, False, False)),
    "flipped-LR-AP (RAS)": ((0, 1, 2), (True, True, False)),
    "flipped-SI": ((0, 1, 2), (False, False, True)),
}
# Each case gets two of these (pitch about L, roll about P, yaw about S), so ten cases cover all.
ROTATIONS = [(ROTATION_DEG, 0.0, 0.0), (-ROTATION_DEG, 0.0, 0.0), (0.0, ROTATION_DEG, 0.0), (0.0, -ROTATION_DEG, 0.0),
             (0.0, 0.0, ROTATION_DEG), (0.0, 0.0, -ROTATION_DEG)]
SOURCES = ("1 mm voxels", "3 mm slices", "bone thinner", "bone thicker")

Pair = Tuple[Volume, Volume]  # (defective skull, true implant)


@dataclass
class Variant:
    """One benchmark case: how to make its (defective, implant) pair and, for stored-otherwise copies,
    how to bring its arrays back to the stored file's index order."""

    case: str
    group: str
    name: str
    make: Callable[[], Pair]
    undo: Optional[Callable[[np.ndarray], np.ndarray]] = None


def _seed(case: str, name: str) -> List[int]:
    return [int(case), sum(map(ord, name))]


def _defect_variant(case: str, complete: Callable[[], Volume], kind: str, name: str, group: str = "defect",
                    **specs) -> Variant:
    """A defect of ``kind`` drawn from ``specs`` (``cut_defect``'s keyword specs; its defaults otherwise),
    seeded by case and name."""

    def make() -> Pair:
        return cut_defect(complete(), kind, np.random.default_rng(_seed(case, name)), **specs)

    return Variant(case, group, name, make)


def _undo_orientation(order: Sequence[int], flips: Sequence[bool]) -> Callable[[np.ndarray], np.ndarray]:
    return lambda array: undo_reorient(array, order, flips)


def rotated(pair: Pair, angles_deg: Sequence[float]) -> Pair:
    """The head turned about its centre (pitch about L, roll about P, yaw about S), on the same grid
    geometry, grown to hold it: the masks are resampled (as a tilted head would be scanned)."""
    from ..train.augment import rotation_matrix

    defective, implant = pair
    complete = defective.with_array((defective.array | implant.array).astype(np.uint8))
    corners = corners_lps(complete, find_foreground_box(complete.array))
    centre = (corners.min(axis=0) + corners.max(axis=0)) / 2
    rotation = rotation_matrix(*angles_deg)
    reach = np.abs((corners - centre) @ rotation.T).max(axis=0) + 10.0  # mm each side, in LPS
    to_index = np.linalg.inv(complete.direction * complete.spacing)
    half = np.abs(to_index) @ reach  # index half-extent holding the turned skull
    shape = np.ceil(2 * half).astype(int) + 1
    grid_origin = centre - (complete.direction * complete.spacing) @ ((shape - 1) / 2)
    # Sampling the original at centre + R^T (y - centre) for every grid point y turns the head by R.
    source_grid = Volume(np.zeros(tuple(shape), np.uint8), complete.spacing, centre + rotation.T @ (grid_origin - centre),
                         rotation.T @ complete.direction)
    turned_complete = resample_mask(complete, source_grid).array
    turned_defective = resample_mask(defective, source_grid).array & turned_complete
    target = Volume(turned_defective, complete.spacing, grid_origin, complete.direction)
    return target, target.with_array((turned_complete & ~turned_defective).astype(np.uint8))


def another_source(pair: Pair, name: str) -> Pair:
    """The same skull and defect as another scanner or segmentation would give it (see ``SOURCES``)."""
    from scipy import ndimage

    from ..pipeline.volume import grid_with_spacing

    defective, implant = pair
    complete = (defective.array | implant.array) > 0
    if name in ("bone thinner", "bone thicker"):
        grow = name == "bone thicker"
        cross = ndimage.generate_binary_structure(3, 1)
        changed = (ndimage.binary_dilation if grow else ndimage.binary_erosion)(complete, structure=cross)
        holder = ndimage.binary_dilation(defective.array > 0, structure=cross) if grow else defective.array > 0
        new_defective = changed & holder
        return (defective.with_array(new_defective.astype(np.uint8)),
                defective.with_array((changed & ~new_defective).astype(np.uint8)))
    spacing = [1.0, 1.0, 1.0] if name == "1 mm voxels" else [defective.spacing[0], defective.spacing[1], 3.0]
    grid = grid_with_spacing(defective, spacing)
    new_complete = resample_mask(defective.with_array(complete.astype(np.uint8)), grid).array
    new_defective = resample_mask(defective, grid).array & new_complete
    return grid.with_array(new_defective), grid.with_array((new_complete & ~new_defective).astype(np.uint8))


def build_suite(data_root: Path, cases: Sequence[str], groups: Sequence[str] = GROUPS) -> List[Variant]:
    """The deterministic suite for ``cases`` (ids of a SkullFix folder), limited to ``groups``."""
    from ..data.datasets import list_cases

    variants: List[Variant] = []
    for position, files in enumerate(list_cases(data_root, cases=cases)):
        case = files.key
        index = int(case) if case.isdigit() else position  # a case's rotations do not depend on the others chosen
        cache: Dict[str, object] = {}

        def own(files=files, cache=cache) -> Pair:
            if "own" not in cache:
                loaded = files.load()
                cache["own"] = (loaded.defective, loaded.implant)
            return cache["own"]  # type: ignore[return-value]

        def complete(own=own) -> Volume:
            defective, implant = own()
            return defective.with_array((defective.array | implant.array).astype(np.uint8))

        if "skullfix" in groups:
            variants.append(Variant(case, "skullfix", "own defect", own))
        if "defect" in groups:
            for kind in (SKULLFIX_BOX, BILATERAL, FRONTOORBITAL, PARIETOTEMPORAL, RANDOM, WEDGE):
                variants.append(_defect_variant(case, complete, kind, kind))
            for size, diameter in CRANIOTOMY_SIZES.items():
                variants.append(_defect_variant(case, complete, CRANIOTOMY, f"{CRANIOTOMY}-{size}",
                                                craniotomy=CraniotomyDefect(diameter_mm=diameter)))
        if "clinical" in groups:
            for name, (kind, specs) in CLINICAL.items():
                variants.append(_defect_variant(case, complete, kind, name, "clinical", **specs))
        if "orientation" in groups:
            for name, (order, flips) in ORIENTATIONS.items():
                make = (lambda own=own, order=order, flips=flips:
                        tuple(reorient(volume, order, flips) for volume in own()))
                variants.append(Variant(case, "orientation", name, make, _undo_orientation(order, flips)))
        if "rotation" in groups:
            for angles in (ROTATIONS[(2 * index) % len(ROTATIONS)], ROTATIONS[(2 * index + 1) % len(ROTATIONS)]):
                name = "/".join(f"{axis}{value:+.0f}" for axis, value in zip(("pitch", "roll", "yaw"), angles) if value)
                variants.append(Variant(case, "rotation", name, lambda own=own, angles=angles: rotated(own(), angles)))
        if "source" in groups:
            for name in SOURCES:
                variants.append(Variant(case, "source", name, lambda own=own, name=name: another_source(own(), name)))
    return variants


def run_variant(variant: Variant, networks, device, baseline: Optional[np.ndarray] = None,
                straighten: bool = True, method: str = "network", pair: Optional[Pair] = None) -> Tuple[dict, np.ndarray]:
    """Design the implant for one variant by ``method`` and score it; ``baseline`` (the stored file's
    implant) adds the agreement of a stored-otherwise copy with it; ``pair``: the variant's pair when
    already made. Returns the row and the implant array."""
    from ..evaluate import evaluate_case
    from ..metrics import dice
    from ..pipeline.design import design_implant

    defective, truth = pair or variant.make()
    started = time.perf_counter()
    design = design_implant(defective, networks, device, straighten=straighten, method=method)
    seconds = time.perf_counter() - started
    completed, implant = design.completed, design.implant
    row = {"case": variant.case, "group": variant.group, "name": variant.name, "method": method,
           "completed_by": design.completed_by, "seconds": round(seconds, 1),
           "true_ml": round(truth.nonzero_ml, 2),
           "implant_ml": round(design.implant_ml, 2), "warnings": design.warnings, "notes": design.notes, "pose": design.pose,
           "priors": design.priors,  # what the doubts weighed: expected missing bone, agreement with it
           **evaluate_case(implant, truth, defective, completed, case=variant.case)}
    if variant.undo is not None and baseline is not None:
        row["agreement_dsc"] = dice(variant.undo(implant.array), baseline)
    return row, implant.array


def summarise(rows: Sequence[dict]) -> List[dict]:
    """One line per (group, name, method) and per (group, method): n, mean DSC, bDSC, HD95, failures, and
    how many of the failures and of the good results (DSC at least ``FAILURE_DSC``) carry a warning:
    every failure should, and few good results (issue 28's doubts)."""
    from ..contract import METHODS

    lines = []
    keys = sorted({(row["group"], row["name"]) for row in rows}, key=lambda k: (GROUPS.index(k[0]), k[1]))
    for group in GROUPS:
        members = [k for k in keys if k[0] == group]
        for key, method in itertools.product(members + ([(group, "all")] if len(members) > 1 else []), METHODS):
            chosen = [r for r in rows if r["group"] == group and (key[1] == "all" or r["name"] == key[1])
                      and r.get("method", "network") == method]
            if not chosen:
                continue
            failed = [bool(r.get("warnings")) for r in chosen if r["dsc"] < FAILURE_DSC]
            good = [bool(r.get("warnings")) for r in chosen if r["dsc"] >= FAILURE_DSC]
            line = {"group": group, "name": key[1], "method": method, "n": len(chosen), "failures": len(failed),
                    "failures_warned": sum(failed), "good": len(good), "good_warned": sum(good)}
            for metric in ("dsc", "bdsc", "hd95_mm", "agreement_dsc"):
                values = [r[metric] for r in chosen if r.get(metric) is not None]
                line[metric] = float(np.mean(values)) if values and all(map(math.isfinite, values)) else (
                    math.inf if values else None)
            lines.append(line)
    return lines


def _cell(value: Optional[float], digits: int = 3) -> str:
    if value is None:
        return "–"
    return "inf" if not math.isfinite(value) else f"{value:.{digits}f}"


def run(data_root: Path, cases: Sequence[str], output_dir: Path, model: Optional[str], groups: Sequence[str],
        device_name: str = "cpu", model_dir: Optional[Path] = None, keep_logit: Optional[float] = None,
        straighten: bool = True, methods: Sequence[str] = ("network", "mirror", "fitted")) -> dict:
    """The suite by each of ``methods``: the designs (network, auto) on every group, a reoriented copy's
    agreement taken against the stored file's implant by the same method; the prior-only baselines
    (``PRIOR_ONLY``) in ``BASELINE_GROUPS`` only."""
    from ..pipeline.inference import load_networks, select_device

    device = select_device(device_name)
    networks = load_networks(model, "none", device, model_dir, keep_logit)
    rows: List[dict] = []
    baselines: Dict[str, Tuple[str, Optional[np.ndarray]]] = {}  # per design method: (case, the stored file's implant)
    for variant in build_suite(data_root, cases, groups):
        pair = variant.make()
        for method in methods:
            if method in PRIOR_ONLY and variant.group not in BASELINE_GROUPS:
                continue
            stored_case, stored = baselines.get(method, ("", None))
            if variant.undo is not None and stored_case != variant.case:
                stored_variant = next(v for v in build_suite(data_root, [variant.case], ["skullfix"]))
                stored_case, stored = variant.case, run_variant(stored_variant, networks, device, straighten=straighten,
                                                                method=method)[1]
            row, implant = run_variant(variant, networks, device, stored if stored_case == variant.case else None,
                                       straighten, method=method, pair=pair)
            if variant.group == "skullfix":
                stored_case, stored = variant.case, implant
            baselines[method] = (stored_case, stored)
            rows.append(row)
            _print_row(row)
    data = {"model": networks.info.name, "keep_logit": networks.completion.keep_logit, "straighten": straighten,
            "device": device.type, "cases": list(cases), "groups": list(groups), "rows": rows}
    return write_report(data, output_dir)


def _print_row(row: dict) -> None:
    print(f"{row['case']} {row['group']:<12} {row['name']:<22} {row['method']:<8} DSC {row['dsc']:.3f}  bDSC {row['bdsc']:.3f}  "
              f"HD95 {_cell(row['hd95_mm'], 2)} mm  implant {row['implant_ml']:.1f} / {row['true_ml']:.1f} ml"
              + (f"  agreement {row['agreement_dsc']:.3f}" if "agreement_dsc" in row else "")
              + f"  cut tilt {_cell(row['pose']['cut_tilt_deg'], 1)}°, yaw {row['pose']['yaw_undone_deg']:.0f}°, "
                f"turn {_cell(row['pose']['turn_deg'], 0)}°",
              flush=True)


def write_report(data: dict, output_dir: Path) -> dict:
    """Summarise ``data["rows"]`` into the per-group table and write JSON and Markdown under ``output_dir``;
    also joins runs over parts of the suite (``merge``)."""
    data = {**data, "summary": summarise(data["rows"])}
    table = markdown_table(
        ["group", "variant", "method", "n", "implant DSC", "border DSC", "HD95 (mm)", "failures (DSC < 0.6)",
         "failures warned", "good results warned", "agreement DSC"],
        [[s["group"], s["name"], s["method"], s["n"], _cell(s["dsc"]), _cell(s["bdsc"]), _cell(s["hd95_mm"], 2),
          s["failures"], f"{s['failures_warned']} of {s['failures']}" if s["failures"] else "–",
          f"{s['good_warned']} of {s['good']}" if s["good"] else "–", _cell(s["agreement_dsc"])]
         for s in data["summary"]])
    notes = (f"Model {data['model']} (pruning threshold {data['keep_logit']:g}), skulls "
             f"{'straightened (bottom cut levelled, facing forward)' if data['straighten'] else 'as they lie (--no-straighten)'}"
             f", cases {','.join(data['cases'])}, device {data['device']}. Defects cut at full "
             f"resolution with seeded random position and size; rotations of {ROTATION_DEG:g} degrees; agreement: "
             "the implant of a stored-otherwise copy against the stored file's, in the file's index order.")
    write_results(output_dir, "generalization", data, table, notes)
    return data


def merge(parts: Sequence[dict], output_dir: Path) -> dict:
    """One report from runs over disjoint cases of one suite (the same model, threshold and straightening)."""
    keys = ("model", "keep_logit", "straighten", "device", "groups")
    for number, part in enumerate(parts, 1):
        missing = [key for key in (*keys, "cases", "rows") if not isinstance(part, dict) or key not in part]
        if missing:
            raise SparseImplantError(f"--merge file {number} lacks {', '.join(missing)}: give the generalization.json "
                                     "files that 'sparseimplant bench generalization' wrote")
    settings = {key: parts[0][key] for key in keys}
    if any({key: part[key] for key in settings} != settings for part in parts):
        raise SparseImplantError("these generalization results come from different settings: run them alike to merge")
    cases = sorted(case for part in parts for case in part["cases"])
    rows = sorted((row for part in parts for row in part["rows"]), key=lambda row: row["case"])
    return write_report({**settings, "cases": cases, "rows": rows}, output_dir)
