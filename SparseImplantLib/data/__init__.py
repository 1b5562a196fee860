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

__all__ = [
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
