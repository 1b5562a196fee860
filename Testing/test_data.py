"""SkullFix / SkullBreak readers on tiny synthetic data sets in both layouts, plus the real SkullFix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import oblique_direction, require_skullfix, shell_skull
from SparseImplantLib.data import (
    SKULLBREAK,
    SKULLBREAK_DEFECT_TYPES,
    SKULLFIX,
    detect_layout,
    format_case_range,
    list_cases,
    parse_case_range,
)
from SparseImplantLib.errors import SparseImplantError
from SparseImplantLib.pipeline.io import write_volume
from SparseImplantLib.pipeline.volume import Volume

GEOMETRY = dict(spacing=(0.8, 0.7, 1.1), origin=(-20.0, 10.0, 5.0), direction=oblique_direction())


def _write_case(folder: Path, case_id: str, defective: np.ndarray, implant: np.ndarray, sub: str = "") -> None:
    write_volume(folder / "defective_skull" / sub / f"{case_id}.nrrd", Volume(defective, **GEOMETRY))
    write_volume(folder / "implant" / sub / f"{case_id}.nrrd", Volume(implant, **GEOMETRY))


def make_skullfix(root: Path, ids=("000", "001", "002"), with_complete: bool = True) -> Path:
    defective, implant = shell_skull(shape=(24, 24, 20), radius=8.0, thickness=2.0)
    for case_id in ids:
        _write_case(root, case_id, defective, implant)
        if with_complete:
            write_volume(root / "complete_skull" / f"{case_id}.nrrd", Volume(defective | implant, **GEOMETRY))
    (root / "complete_skull").mkdir(exist_ok=True)
    return root


def make_skullbreak(root: Path, ids=("000", "001")) -> Path:
    complete, _ = shell_skull(shape=(24, 24, 20), radius=8.0, thickness=2.0, defect=False)
    for number, defect_type in enumerate(SKULLBREAK_DEFECT_TYPES):
        implant = np.zeros_like(complete)
        implant[:, :, 12 + number % 4:] = complete[:, :, 12 + number % 4:]  # a different cap per type
        for case_id in ids:
            _write_case(root, case_id, complete & ~implant, implant, sub=defect_type)
    for case_id in ids:
        write_volume(root / "complete_skull" / f"{case_id}.nrrd", Volume(complete, **GEOMETRY))
    return root


def test_parse_case_range():
    assert parse_case_range("000-003,055") == ["000", "001", "002", "003", "055"]
    assert parse_case_range(" 7 , 9-10 ") == ["007", "009", "010"]
    assert parse_case_range("1000-1001") == ["1000", "1001"]
    assert parse_case_range("003,001-003") == ["003", "001", "002"]  # no duplicates, order kept


@pytest.mark.parametrize("text, message", [("a-b", "not understood"), ("10-3", "backwards"), ("", "not understood")])
def test_parse_case_range_errors(text, message):
    with pytest.raises(SparseImplantError, match=message):
        parse_case_range(text)


def test_format_case_range_is_compact():
    assert format_case_range(["000", "001", "002", "005", "007", "008"]) == "000-002,005,007-008"
    assert format_case_range([]) == "none"


def test_skullfix_layout(tmp_path):
    root = make_skullfix(tmp_path)
    assert detect_layout(root) == SKULLFIX
    files = list_cases(root)
    assert [f.key for f in files] == ["000", "001", "002"]
    case = list_cases(root, cases=["001"])[0].load()
    assert (case.case_id, case.defect_type, case.key) == ("001", None, "001")
    assert case.defective.same_geometry(Volume(case.defective.array, **GEOMETRY))
    assert case.defective.array.dtype == np.uint8 and set(np.unique(case.implant.array)) == {0, 1}
    assert np.array_equal(case.complete.array, case.defective.array | case.implant.array)
    assert list_cases(root)[0].load(with_complete=False).complete is None


def test_skullfix_without_complete_skulls(tmp_path):
    root = make_skullfix(tmp_path, ids=("100",), with_complete=False)
    files = list_cases(root)
    assert files[0].complete_path is None and files[0].load().complete is None


def test_skullbreak_layout(tmp_path):
    root = make_skullbreak(tmp_path)
    assert detect_layout(root) == SKULLBREAK
    files = list_cases(root)
    assert len(files) == 2 * len(SKULLBREAK_DEFECT_TYPES)
    assert files[0].key == "bilateral/000"
    selected = list_cases(root, cases=["001"], defect_types=["frontoorbital", "random_2"])
    assert [f.key for f in selected] == ["frontoorbital/001", "random_2/001"]
    first, second = (f.load() for f in selected)
    assert np.array_equal(first.complete.array, second.complete.array)  # one complete skull per case
    assert not np.array_equal(first.implant.array, second.implant.array)
    assert np.array_equal(first.defective.array | first.implant.array, first.complete.array)


def test_unlabelled_cases_are_listed_for_prediction(tmp_path):
    """A test set has no implants: prediction lists its cases, training and evaluation refuse them."""
    import shutil

    root = make_skullbreak(tmp_path)
    shutil.rmtree(root / "implant" / "random_1")
    (root / "implant" / "bilateral" / "001.nrrd").unlink()
    files = {f.key: f for f in list_cases(root, with_implants=False)}
    assert len(files) == 2 * len(SKULLBREAK_DEFECT_TYPES)
    assert files["random_1/000"].implant_path is None and files["bilateral/001"].implant_path is None
    assert files["bilateral/000"].implant_path is not None
    with pytest.raises(SparseImplantError, match="case random_1/000 has no implant file: ground truth is needed"):
        files["random_1/000"].load()
    with pytest.raises(SparseImplantError, match="no 'implant/random_1' folder"):
        list_cases(root)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(cases=["004"]), r"case\(s\) 004 missing .*available: 000-002"),
        (dict(layout="nifti"), "unknown data layout"),
        (dict(defect_types=["bilateral"]), "only exist in the SkullBreak layout"),
    ],
)
def test_skullfix_selection_errors(tmp_path, arguments, message):
    root = make_skullfix(tmp_path)
    with pytest.raises(SparseImplantError, match=message):
        list_cases(root, **arguments)


def test_missing_root_folder_and_implant(tmp_path):
    with pytest.raises(SparseImplantError, match="does not exist"):
        list_cases(tmp_path / "nowhere")
    (tmp_path / "defective_skull").mkdir()
    with pytest.raises(SparseImplantError, match="no 'implant' folder"):
        list_cases(tmp_path)
    root = make_skullfix(tmp_path / "set")
    (root / "implant" / "002.nrrd").unlink()
    with pytest.raises(SparseImplantError, match="case 002 has no implant file"):
        list_cases(root)


def test_empty_data_set_and_unknown_defect_type(tmp_path):
    (tmp_path / "defective_skull").mkdir()
    (tmp_path / "implant").mkdir()
    with pytest.raises(SparseImplantError, match="no cases"):
        list_cases(tmp_path)
    root = make_skullbreak(tmp_path / "break")
    with pytest.raises(SparseImplantError, match="unknown defect type"):
        list_cases(root, defect_types=["occipital"])


def test_geometry_mismatch_names_the_case(tmp_path):
    root = make_skullfix(tmp_path)
    implant_file = root / "implant" / "001.nrrd"
    moved = dict(GEOMETRY, origin=(0.0, 0.0, 0.0))
    write_volume(implant_file, Volume(np.zeros((24, 24, 20), np.uint8), **moved))
    with pytest.raises(SparseImplantError, match="case 001: the implant .* different geometry .*origin"):
        list_cases(root, cases=["001"])[0].load()


@pytest.mark.slow
def test_real_skullfix_case():
    root = require_skullfix()
    files = list_cases(root)
    assert len(files) >= 60 and files[0].key == "000"
    case = list_cases(root, cases=["050"])[0].load()
    assert case.defective.shape[:2] == (512, 512)
    assert not np.allclose(case.defective.direction, np.eye(3))  # SkullFix scans are oblique
    assert case.implant.same_geometry(case.defective)
    defective, implant = case.defective.array > 0, case.implant.array > 0
    assert not np.any(defective & implant)
    assert np.array_equal(case.complete.array > 0, defective | implant)
