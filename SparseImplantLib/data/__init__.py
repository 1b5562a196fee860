"""Data sets (SkullFix, SkullBreak) and synthetic defects for training and evaluation."""

from .datasets import (
    LAYOUTS,
    SKULLBREAK,
    SKULLBREAK_DEFECT_TYPES,
    SKULLFIX,
    Case,
    CaseFiles,
    detect_layout,
    format_case_range,
    list_cases,
    parse_case_range,
)
from .defects import DEFECT_KINDS, BoxDefect, CraniotomyDefect, SphereDefect, WedgeDefect, cut_defect

__all__ = [
    "DEFECT_KINDS",
    "BoxDefect",
    "CraniotomyDefect",
    "SphereDefect",
    "WedgeDefect",
    "cut_defect",
    "LAYOUTS",
    "SKULLBREAK",
    "SKULLBREAK_DEFECT_TYPES",
    "SKULLFIX",
    "Case",
    "CaseFiles",
    "detect_layout",
    "format_case_range",
    "list_cases",
    "parse_case_range",
]
