"""Readers for the SkullFix and SkullBreak data sets (AutoImplant 2020/2021).

SkullFix:   ``complete_skull/NNN.nrrd``, ``defective_skull/NNN.nrrd``, ``implant/NNN.nrrd``
SkullBreak: ``complete_skull/NNN.nrrd``, ``defective_skull/<type>/NNN.nrrd``, ``implant/<type>/NNN.nrrd``
            with <type> one of ``SKULLBREAK_DEFECT_TYPES``.

Listing a data set only collects file paths (``CaseFiles``); ``CaseFiles.load()`` reads the masks, so a
training loop never holds 60 x 3 full-resolution volumes at once. Masks are read through ``io`` and keep
their spacing, origin and direction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from ..errors import SparseImplantError
from ..outputs import PathLike
from ..pipeline.io import mask_from_labels, read_volume
from ..pipeline.refusals import check_case_count
from ..pipeline.volume import Volume

SKULLFIX = "skullfix"
SKULLBREAK = "skullbreak"
LAYOUTS = (SKULLFIX, SKULLBREAK)
SKULLBREAK_DEFECT_TYPES = ("bilateral", "frontoorbital", "parietotemporal", "random_1", "random_2")
COMPLETE_DIR, DEFECTIVE_DIR, IMPLANT_DIR = "complete_skull", "defective_skull", "implant"
CASE_SUFFIX = ".nrrd"
# What to do with a data set file that is not binary (the command line options of generate do not apply).
NOT_BINARY_REMEDY = "a data set's masks must be binary (0 and 1): fix or re-export the file"


@dataclass
class Case:
    """One loaded case: binary uint8 masks sharing one geometry."""

    case_id: str
    defect_type: Optional[str]
    defective: Volume
    implant: Volume
    complete: Optional[Volume]

    @property
    def key(self) -> str:
        return case_key(self.case_id, self.defect_type)


@dataclass(frozen=True)
class CaseFiles:
    """Where one case's masks live; ``load()`` reads them. ``complete`` is optional, as in test sets;
    so is the implant when listed for prediction (``list_cases(with_implants=False)``)."""

    case_id: str
    defect_type: Optional[str]
    defective_path: Path
    implant_path: Optional[Path]
    complete_path: Optional[Path]

    @property
    def key(self) -> str:
        return case_key(self.case_id, self.defect_type)

    def load(self, with_complete: bool = True) -> Case:
        if self.implant_path is None:
            raise SparseImplantError(
                f"case {self.key} has no implant file: ground truth is needed for training and evaluation"
            )
        defective = _read_mask(self.defective_path)
        implant = _read_mask(self.implant_path)
        complete = _read_mask(self.complete_path) if with_complete and self.complete_path is not None else None
        for name, volume in (("implant", implant), ("complete skull", complete)):
            if volume is not None and not volume.same_geometry(defective):
                raise SparseImplantError(
                    f"case {self.key}: the {name} and the defective skull have different geometry"
                    f" ({describe_geometry_difference(volume, defective)}): the data set is inconsistent"
                )
        return Case(self.case_id, self.defect_type, defective, implant, complete)


def case_key(case_id: str, defect_type: Optional[str]) -> str:
    """``NNN`` for SkullFix, ``<type>/NNN`` for SkullBreak (also the per-case output sub-folder)."""
    return case_id if defect_type is None else f"{defect_type}/{case_id}"


def describe_geometry_difference(a: Volume, b: Volume, tolerance: float = 1e-4) -> str:
    """A short human-readable list of what differs between two geometries."""
    differences = []
    if a.shape != b.shape:
        differences.append(f"shape {a.shape} vs {b.shape}")
    for name in ("spacing", "origin", "direction"):
        first, second = getattr(a, name), getattr(b, name)
        if not np.allclose(first, second, atol=tolerance):
            differences.append(f"{name} {_fmt(first)} vs {_fmt(second)}")
    return "; ".join(differences) or "none"


def _fmt(values: np.ndarray) -> str:
    return np.array2string(np.asarray(values).reshape(-1), precision=4, separator=",")


def _read_mask(path: Path) -> Volume:
    return mask_from_labels(read_volume(path), path.name, remedy=NOT_BINARY_REMEDY)


def parse_case_range(text: str) -> List[str]:
    """``"000-049,055"`` -> ["000", ..., "049", "055"]; ids keep the zero-padding of the text (at least 3
    digits, as the data sets name their files)."""
    ranges = []
    for part in (piece.strip() for piece in str(text).split(",")):
        match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not match:
            raise SparseImplantError(
                f"case list '{text}' is not understood at '{part}': use numbers and ranges like 000-049,055"
            )
        first, last = match.group(1), match.group(2) or match.group(1)
        if int(last) < int(first):
            raise SparseImplantError(f"case range '{part}' runs backwards: write it as {last}-{first}")
        ranges.append((first, last))
    check_case_count(text, sum(int(last) - int(first) + 1 for first, last in ranges))
    ids: List[str] = []
    for first, last in ranges:
        width = max(3, len(first), len(last))
        ids.extend(str(number).zfill(width) for number in range(int(first), int(last) + 1))
    return list(dict.fromkeys(ids))


def format_case_range(ids: Sequence[str]) -> str:
    """Compact inverse of ``parse_case_range`` for messages (non-numeric ids are listed as they are)."""
    numeric = sorted({i for i in ids if i.isdigit()}, key=int)
    parts: List[str] = []
    start = previous = None
    for case_id in numeric + [None]:  # type: ignore[list-item]
        if previous is not None and (case_id is None or int(case_id) != int(previous) + 1):
            parts.append(start if start == previous else f"{start}-{previous}")
            start = None
        if case_id is not None and start is None:
            start = case_id
        previous = case_id
    return ",".join(parts + sorted(i for i in ids if not i.isdigit())) or "none"


def detect_layout(root: PathLike) -> str:
    """SkullBreak if ``defective_skull`` holds defect-type folders, SkullFix if it holds case files."""
    defective_dir = _require_dir(Path(root), DEFECTIVE_DIR)
    if any((defective_dir / defect_type).is_dir() for defect_type in SKULLBREAK_DEFECT_TYPES):
        return SKULLBREAK
    return SKULLFIX


def list_cases(
    root: PathLike,
    layout: Optional[str] = None,
    cases: Optional[Sequence[str]] = None,
    defect_types: Optional[Sequence[str]] = None,
    with_implants: bool = True,
) -> List[CaseFiles]:
    """The cases of a data set folder, sorted; ``cases`` (ids) and ``defect_types`` (SkullBreak) select.
    An empty ``cases`` selects none (no validation cases, say); only a folder without cases is an error.

    Every selected case must have a defective skull and, when ``with_implants`` (ground truth for
    training and evaluation), an implant file; the complete skull is optional. Prediction lists
    without implants: an unlabelled test set is what users predict on.
    """
    root = Path(root)
    if not root.is_dir():
        problem = "is not a folder" if root.exists() else "does not exist"
        raise SparseImplantError(f"data folder '{root}' {problem}: check the --data path")
    layout = detect_layout(root) if layout is None else layout
    if layout not in LAYOUTS:
        raise SparseImplantError(f"unknown data layout '{layout}': use one of {', '.join(LAYOUTS)}")
    if layout == SKULLFIX:
        if defect_types:
            raise SparseImplantError("defect types only exist in the SkullBreak layout: drop --defect-types")
        groups = [(None, DEFECTIVE_DIR, IMPLANT_DIR)]
    else:
        unknown = sorted(set(defect_types or ()) - set(SKULLBREAK_DEFECT_TYPES))
        if unknown:
            raise SparseImplantError(
                f"unknown defect type(s) {', '.join(unknown)}: use {', '.join(SKULLBREAK_DEFECT_TYPES)}"
            )
        groups = [(t, f"{DEFECTIVE_DIR}/{t}", f"{IMPLANT_DIR}/{t}") for t in (defect_types or SKULLBREAK_DEFECT_TYPES)]
    folders = [
        (t, _require_dir(root, defective), _require_dir(root, implant) if with_implants else root / implant)
        for t, defective, implant in groups
    ]
    complete_dir = root / COMPLETE_DIR
    found: List[CaseFiles] = []
    for defect_type, defective_dir, implant_dir in folders:
        available = sorted(p.name[: -len(CASE_SUFFIX)] for p in defective_dir.glob("*" + CASE_SUFFIX))
        if cases is not None:
            missing = [c for c in cases if c not in available]
            if missing:
                raise SparseImplantError(
                    f"case(s) {format_case_range(missing)} missing in '{defective_dir}'"
                    f" (available: {format_case_range(available)}): choose other --cases"
                )
        for case_id in available if cases is None else list(cases):
            implant_path: Optional[Path] = implant_dir / (case_id + CASE_SUFFIX)
            if not implant_path.is_file():
                if with_implants:
                    raise SparseImplantError(
                        f"case {case_key(case_id, defect_type)} has no implant file '{implant_path}':"
                        " ground truth is needed for training and evaluation"
                    )
                implant_path = None
            complete_path = complete_dir / (case_id + CASE_SUFFIX)
            found.append(
                CaseFiles(
                    case_id,
                    defect_type,
                    defective_dir / (case_id + CASE_SUFFIX),
                    implant_path,
                    complete_path if complete_path.is_file() else None,
                )
            )
    if not found and cases is None:
        raise SparseImplantError(f"no cases ('NNN{CASE_SUFFIX}' files) found under '{root}': check the --data path")
    return found


def _require_dir(root: Path, relative: str) -> Path:
    folder = root / relative
    if not folder.is_dir():
        raise SparseImplantError(
            f"'{root}' has no '{relative}' folder: a SkullFix/SkullBreak data set needs"
            f" {COMPLETE_DIR}/, {DEFECTIVE_DIR}/ and {IMPLANT_DIR}/ (SkullBreak: one sub-folder per defect type)"
        )
    return folder
