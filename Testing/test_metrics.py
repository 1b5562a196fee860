"""Challenge metrics on hand-made cases with answers worked out by hand, and the evaluation of folders."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from conftest import SAMPLE_DEFECTIVE, SAMPLE_IMPLANT, oblique_direction, shell_skull
from SparseImplantLib.cli import build_parser
from SparseImplantLib.errors import SparseImplantError
from SparseImplantLib.evaluate import evaluate_case, evaluate_folders
from SparseImplantLib.metrics import border_dice, completed_skull_dice, dice, hd95
from SparseImplantLib.pipeline.io import read_mask, write_volume
from SparseImplantLib.pipeline.volume import Volume

SPACING = (0.5, 0.7, 2.0)


def test_dice_of_shifted_cubes():
    a = np.zeros((10, 10, 10), np.uint8)
    b = np.zeros_like(a)
    a[2:6, 2:6, 2:6] = 1
    b[3:7, 2:6, 2:6] = 1  # overlap 3x4x4 = 48 of 64 + 64 voxels
    assert dice(a, b) == pytest.approx(96 / 128)
    assert dice(a, a) == 1.0


def test_dice_of_empty_masks():
    empty = np.zeros((4, 4, 4), bool)
    full = np.ones((4, 4, 4), bool)
    assert dice(empty, empty) == 1.0
    assert dice(empty, full) == 0.0


def test_dice_rejects_different_shapes():
    with pytest.raises(ValueError, match="same shape"):
        dice(np.zeros((3, 3, 3)), np.zeros((3, 3, 4)))


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_hd95_of_parallel_plates_uses_the_spacing_of_each_axis(axis):
    shape = [12, 12, 12]
    a = np.zeros(shape, bool)
    b = np.zeros(shape, bool)
    a[(slice(None),) * axis + (2,)] = True  # a one-voxel plate: every voxel is surface
    b[(slice(None),) * axis + (5,)] = True
    assert hd95(a, b, SPACING) == pytest.approx(3 * SPACING[axis])


def test_hd95_of_two_voxels_is_their_physical_distance():
    a = np.zeros((30, 30, 30), bool)
    b = np.zeros_like(a)
    a[20, 10, 5] = True
    b[21, 12, 7] = True
    expected = math.sqrt((1 * 0.5) ** 2 + (2 * 0.7) ** 2 + (2 * 2.0) ** 2)
    assert hd95(a, b, SPACING) == pytest.approx(expected)


def test_hd95_takes_the_percentile_of_both_directions_together():
    # B = A's 10x10 plate + 8 far single voxels. B->A has 8 of 108 distances large (> 5 %, so its own
    # 95th percentile is large), but the pooled 208 distances have only 3.8 % large ones.
    a = np.zeros((40, 12, 12), bool)
    a[1:11, 1:11, 2] = True
    b = a.copy()
    b[30:38, 5, 8] = True
    assert hd95(a, b, (1.0, 1.0, 1.0)) == 0.0
    b[28:40, 5, 8] = True  # 12 of 212 pooled distances are now large (5.7 %)
    # Pooled 95th percentile: position 0.95 * 211 = 200.45 between the two nearest line voxels
    # (i = 28, 29; the plate ends at i = 10, j = 5 is inside it, k is 6 above).
    near, next_near = math.hypot(18, 6), math.hypot(19, 6)
    assert hd95(a, b, (1.0, 1.0, 1.0)) == pytest.approx(near + 0.45 * (next_near - near))


def test_hd95_of_empty_masks():
    empty = np.zeros((5, 5, 5), bool)
    blob = empty.copy()
    blob[2, 2, 2] = True
    assert hd95(empty, empty, SPACING) == 0.0
    assert hd95(empty, blob, SPACING) == math.inf
    assert hd95(blob, empty, SPACING) == math.inf


def _brute_force_hd95(a: np.ndarray, b: np.ndarray, spacing) -> float:
    """Surfaces by explicit 6-neighbour test on a padded grid, distances by all pairs."""

    def surface_points(mask: np.ndarray) -> np.ndarray:
        padded = np.pad(mask, 1)
        interior = np.ones_like(mask)
        for axis in range(3):
            for step in (-1, 1):
                interior &= np.roll(padded, step, axis=axis)[1:-1, 1:-1, 1:-1]
        return np.argwhere(mask & ~interior) * np.asarray(spacing)

    pa, pb = surface_points(a), surface_points(b)
    distances = cdist(pa, pb)
    return float(np.percentile(np.concatenate([distances.min(axis=1), distances.min(axis=0)]), 95))


def test_hd95_matches_brute_force_on_blobs_away_from_the_origin():
    rng = np.random.default_rng(3)
    a = np.zeros((60, 50, 40), bool)
    b = np.zeros_like(a)
    a[30:44, 20:32, 15:27] = ndimage.binary_opening(rng.random((14, 12, 12)) > 0.35)
    b[33:45, 22:34, 14:26] = ndimage.binary_opening(rng.random((12, 12, 12)) > 0.35)
    assert hd95(a, b, SPACING) == pytest.approx(_brute_force_hd95(a, b, SPACING))


def _column_case():
    """Defective skull = plate at i = 0; implants are columns along i (voxel i lies 2*i mm away)."""
    defective = np.zeros((12, 3, 3), bool)
    defective[0] = True
    truth = np.zeros_like(defective)
    prediction = np.zeros_like(defective)
    truth[1:10, 1, 1] = True  # i = 1..9
    prediction[1:4, 1, 1] = True  # i = 1..3 ...
    prediction[7:10, 1, 1] = True  # ... and 7..9
    return prediction, truth, defective


def test_border_dice_by_hand():
    prediction, truth, defective = _column_case()
    spacing = (2.0, 0.3, 0.3)
    # Within 10 mm: i <= 5, so truth keeps 5 voxels and the prediction 3 (all shared).
    assert border_dice(prediction, truth, defective, spacing) == pytest.approx(2 * 3 / (5 + 3))
    # Within 4 mm: i <= 2 in both.
    assert border_dice(prediction, truth, defective, spacing, distance_mm=4.0) == 1.0
    assert dice(prediction, truth) == pytest.approx(2 * 6 / (6 + 9))


def test_border_dice_is_one_when_nothing_is_near_the_rim():
    prediction, truth, defective = _column_case()
    far = np.zeros_like(defective)
    assert border_dice(prediction, truth, far, (2.0, 0.3, 0.3)) == 1.0


def test_border_dice_crop_matches_full_grid():
    defective, implant = shell_skull(shape=(64, 60, 52), radius=22.0)
    prediction = np.roll(implant, 2, axis=2) & ~defective.astype(bool)
    spacing = (0.9, 0.8, 1.3)
    distance = ndimage.distance_transform_edt(defective == 0, sampling=spacing)
    near = distance <= 10.0
    expected = dice(prediction & near, (implant > 0) & near)
    assert border_dice(prediction, implant, defective, spacing) == pytest.approx(expected)
    assert expected < 1.0


def test_completed_skull_dice():
    defective, implant = shell_skull()
    complete = defective | implant
    assert completed_skull_dice(complete, defective, implant) == 1.0
    assert completed_skull_dice(defective, defective, implant) < 1.0


def test_metrics_reject_bad_spacing():
    a = np.ones((3, 3, 3), bool)
    with pytest.raises(ValueError, match="spacing"):
        hd95(a, a, (1.0, 0.0, 1.0))


def test_hd95_on_the_sample_implant_shifted_by_one_voxel():
    if not SAMPLE_IMPLANT.is_file():
        pytest.skip("sample data missing")
    implant = read_mask(SAMPLE_IMPLANT)
    defective = read_mask(SAMPLE_DEFECTIVE)
    shifted = np.roll(implant.array, 1, axis=2)
    # Each surface voxel has its shifted twin one k-step away, so HD95 is at most one k-spacing.
    value = hd95(implant.array, shifted, implant.spacing)
    assert 0.0 < value <= implant.spacing[2] + 1e-9
    assert 0.5 < border_dice(shifted, implant.array, defective.array, implant.spacing) < 1.0


# --- evaluation of prediction folders -------------------------------------------------------------

GEOMETRY = dict(spacing=(0.8, 0.7, 1.1), origin=(-20.0, 10.0, 5.0), direction=oblique_direction())


def _volume(array: np.ndarray, **changes) -> Volume:
    return Volume(array.astype(np.uint8), **dict(GEOMETRY, **changes))


def test_evaluate_case_perfect_and_shifted_prediction():
    defective, implant = shell_skull()
    perfect = evaluate_case(_volume(implant), _volume(implant), _volume(defective), _volume(defective | implant))
    assert perfect == {"dsc": 1.0, "bdsc": 1.0, "hd95_mm": 0.0, "skull_dsc": 1.0}
    shifted = np.roll(implant, 1, axis=0)
    scores = evaluate_case(_volume(shifted), _volume(implant), _volume(defective))
    assert scores["dsc"] == pytest.approx(dice(shifted, implant))
    assert scores["hd95_mm"] == pytest.approx(0.8)  # one i-step of 0.8 mm
    assert scores["skull_dsc"] is None


def test_evaluate_case_rejects_other_geometry():
    defective, implant = shell_skull()
    with pytest.raises(SparseImplantError, match=r"case 007: the predicted implant .*spacing \[0\.5"):
        evaluate_case(_volume(implant, spacing=(0.5, 0.7, 1.1)), _volume(implant), _volume(defective), case="007")
    with pytest.raises(SparseImplantError, match="completed skull .*shape"):
        evaluate_case(_volume(implant), _volume(implant), _volume(defective), _volume(np.zeros((4, 4, 4))))


def _write_data_set(root):
    defective, implant = shell_skull(shape=(24, 24, 20), radius=8.0, thickness=2.0)
    for case_id in ("000", "001"):
        write_volume(root / "data" / "defective_skull" / f"{case_id}.nrrd", _volume(defective))
        write_volume(root / "data" / "implant" / f"{case_id}.nrrd", _volume(implant))
    write_volume(root / "pred" / "000" / "implant.nrrd", _volume(implant))
    write_volume(root / "pred" / "000" / "completed_skull.nrrd", _volume(defective | implant))
    write_volume(root / "pred" / "001" / "implant.nrrd", _volume(np.zeros_like(implant)))
    return root / "pred", root / "data"


def test_evaluate_folders_writes_table_and_json(tmp_path):
    predictions, data = _write_data_set(tmp_path)
    rows, summary = evaluate_folders(predictions, data, output_dir=tmp_path / "report")
    assert [row["case"] for row in rows] == ["000", "001"]
    assert rows[0]["dsc"] == 1.0 and rows[0]["skull_dsc"] == 1.0
    assert rows[1]["dsc"] == 0.0 and rows[1]["hd95_mm"] == math.inf and rows[1]["skull_dsc"] is None
    assert summary["dsc"] == {"mean": 0.5, "std": 0.5, "n": 2}
    assert summary["hd95_mm"]["mean"] == math.inf
    assert summary["skull_dsc"] == {"mean": 1.0, "std": 0.0, "n": 1}
    report = json.loads((tmp_path / "report" / "evaluation.json").read_text())
    assert report["cases"][1]["hd95_mm"] is None and report["summary"]["dsc"]["mean"] == 0.5
    table = (tmp_path / "report" / "evaluation.md").read_text()
    assert "| 001 | 0.0000 | 0.0000 | inf | – |" in table
    assert "| **mean ± std** (n=2) | 0.5000 ± 0.5000 |" in table


def test_evaluate_folders_names_missing_predictions(tmp_path):
    predictions, data = _write_data_set(tmp_path)
    (predictions / "001" / "implant.nrrd").unlink()
    with pytest.raises(SparseImplantError, match=r"no predicted implant for 1 case\(s\) \(001\)"):
        evaluate_folders(predictions, data)
    with pytest.raises(SparseImplantError, match="predictions folder .* does not exist"):
        evaluate_folders(tmp_path / "nothing", data)


def test_evaluate_command_line(tmp_path, capsys):
    predictions, data = _write_data_set(tmp_path)
    parser = build_parser()
    args = parser.parse_args(["evaluate", "--predictions", str(predictions), "--data", str(data), "--cases", "0"])
    assert args.cases == ["000"]
    assert args.func(args) == 0
    assert "| 000 | 1.0000 | 1.0000 | 0.000 | 1.0000 |" in capsys.readouterr().out
    assert json.loads((predictions / "evaluation.json").read_text())["summary"]["dsc"]["n"] == 1
    with pytest.raises(SystemExit):
        parser.parse_args(["evaluate", "--predictions", "p", "--data", "d", "--cases", "9-1"])
