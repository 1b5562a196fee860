"""The generalisation benchmark's suite: what each variant does to a case, and how results are summed up."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import shell_skull
from SparseImplantLib.bench import generalization
from SparseImplantLib.errors import SparseImplantError
from SparseImplantLib.pipeline.volume import Volume, reorient


@pytest.fixture(scope="module")
def pair():
    """A 1 mm shell skull with a cap defect, its bone thicker at the back (+P) so that turns show."""
    defective, implant = shell_skull(shape=(72, 72, 64), radius=30.0, thickness=4.0)
    defective[:, 50:, :] |= (np.roll(defective, 2, axis=1) & (implant == 0))[:, 50:, :]
    geometry = dict(spacing=(1.0, 1.0, 1.0), origin=(-36.0, -36.0, 0.0), direction=np.eye(3))
    return Volume(defective, **geometry), Volume(implant, **geometry)


def test_a_turned_head_keeps_its_bone_and_moves_as_asked(pair):
    defective, implant = pair
    turned_defective, turned_implant = generalization.rotated(pair, (0.0, 0.0, 90.0))  # yaw: posterior -> right
    assert not np.any(turned_defective.array & turned_implant.array)
    assert int(turned_implant.array.sum()) == pytest.approx(int(implant.array.sum()), rel=0.1)
    assert int(turned_defective.array.sum()) == pytest.approx(int(defective.array.sum()), rel=0.1)

    def centroid(volume):
        matrix = volume.index_to_lps()
        return (np.argwhere(volume.array) @ matrix[:3, :3].T + matrix[:3, 3]).mean(axis=0)

    before, after = centroid(defective), centroid(turned_defective)
    assert before[1] > 0.5 and after[0] < -0.5 * before[1]  # the thick back is now on the right (-L)


@pytest.mark.parametrize("name", generalization.SOURCES)
def test_another_source_keeps_defect_and_implant_apart(pair, name):
    defective, implant = pair
    new_defective, new_implant = generalization.another_source(pair, name)
    assert not np.any(new_defective.array & new_implant.array) and new_implant.array.any()
    complete = lambda d, i: np.count_nonzero(d.array | i.array) * d.voxel_volume_mm3  # noqa: E731
    ratio = complete(new_defective, new_implant) / complete(defective, implant)
    expected = {"bone thinner": (0.4, 0.8), "bone thicker": (1.2, 1.7)}.get(name, (0.85, 1.15))
    assert expected[0] < ratio < expected[1]
    if name == "3 mm slices":
        assert new_defective.spacing[2] == 3.0


def test_the_suite_covers_every_group(tiny_skullfix):
    suite = generalization.build_suite(tiny_skullfix, ["000", "001"])
    counts = {group: sum(1 for v in suite if v.group == group) for group in generalization.GROUPS}
    per_case = {"skullfix": 1, "defect": 9, "clinical": 3, "orientation": 3, "rotation": 2, "source": 4}
    assert counts == {group: 2 * n for group, n in per_case.items()}
    assert len({(v.case, v.name) for v in suite if v.group == "rotation"}) == 4  # each case turned two other ways
    only = generalization.build_suite(tiny_skullfix, ["001"], ["orientation"])
    defective, _ = only[0].make()
    stored, _ = generalization.build_suite(tiny_skullfix, ["001"], ["skullfix"])[0].make()
    np.testing.assert_array_equal(only[0].undo(defective.array), stored.array)


def test_orientations_are_undone(pair):
    defective, _ = pair
    for order, flips in generalization.ORIENTATIONS.values():
        copy = reorient(defective, order, flips)
        np.testing.assert_array_equal(generalization._undo_orientation(order, flips)(copy.array), defective.array)


def test_summary_counts_failures_and_warned_results_per_variant_and_group():
    rows = [{"group": "defect", "name": "wedge", "dsc": 0.9, "bdsc": 0.9, "hd95_mm": 1.0, "warnings": []},
            {"group": "defect", "name": "wedge", "dsc": 0.5, "bdsc": 0.6, "hd95_mm": 5.0, "warnings": ["too little"]},
            {"group": "defect", "name": "random", "dsc": 0.8, "bdsc": 0.8, "hd95_mm": 2.0, "warnings": ["turned"],
             "notes": ["the fitted shape's"]},
            {"group": "defect", "name": "random", "dsc": 0.4, "bdsc": 0.4, "hd95_mm": 9.0}]  # a row without warnings
    summary = {(s["group"], s["name"]): s for s in generalization.summarise(rows)}
    wedge, random, every = summary[("defect", "wedge")], summary[("defect", "random")], summary[("defect", "all")]
    assert wedge["failures"] == 1 and wedge["dsc"] == pytest.approx(0.7)
    assert (wedge["failures_warned"], wedge["good"], wedge["good_warned"]) == (1, 1, 0)
    assert (random["failures"], random["failures_warned"], random["good"], random["good_warned"]) == (1, 0, 1, 1)
    assert every["n"] == 4 and (every["failures"], every["failures_warned"], every["good_warned"]) == (2, 1, 1)


def test_a_cases_rotations_do_not_depend_on_the_cases_chosen_with_it(tiny_skullfix):
    alone = [v.name for v in generalization.build_suite(tiny_skullfix, ["001"], ["rotation"])]
    together = [v.name for v in generalization.build_suite(tiny_skullfix, ["000", "001"], ["rotation"]) if v.case == "001"]
    assert alone == together


def test_runs_over_parts_of_the_suite_merge_into_one_report(tmp_path):
    def part(case, dsc, **settings):
        return {"model": "m", "keep_logit": -0.5, "straighten": True, "device": "cpu", "groups": ["defect"],
                "cases": [case], **settings,
                "rows": [{"case": case, "group": "defect", "name": "wedge", "dsc": dsc, "bdsc": dsc, "hd95_mm": 1.0}]}

    merged = generalization.merge([part("051", 0.5), part("050", 0.9)], tmp_path)
    assert merged["cases"] == ["050", "051"] and [row["case"] for row in merged["rows"]] == ["050", "051"]
    wedge = next(s for s in merged["summary"] if s["name"] == "wedge")
    assert wedge["n"] == 2 and wedge["failures"] == 1 and wedge["dsc"] == pytest.approx(0.7)
    assert (tmp_path / "generalization.md").is_file()
    with pytest.raises(SparseImplantError, match="different settings"):
        generalization.merge([part("050", 0.9), part("051", 0.5, straighten=False)], tmp_path)


def test_the_designs_run_on_every_group_and_the_baselines_where_they_belong(tiny_skullfix, tmp_path, monkeypatch):
    """``--methods auto`` measures the default design on the reoriented and turned copies too (an earlier
    version ran only the network there), each copy's agreement taken against the stored file's implant
    designed the same way; the prior-only baselines stay in the SkullFix, defect and clinical groups."""
    calls = []

    def fake_run_variant(variant, networks, device, baseline=None, straighten=True, method="network", pair=None):
        calls.append((variant.case, variant.group, variant.name, method, None if baseline is None else int(baseline[0])))
        row = {"case": variant.case, "group": variant.group, "name": variant.name, "method": method, "dsc": 0.9,
               "bdsc": 0.9, "hd95_mm": 1.0, "implant_ml": 1.0, "true_ml": 1.0, "warnings": [], "notes": [],
               "completed_by": "network", "pose": {"cut_tilt_deg": 0.0, "yaw_undone_deg": 0.0, "turn_deg": 0.0}}
        marker = {"auto": 1, "network": 2, "fitted": 3}[method]  # which method's stored implant a copy is held to
        return row, np.full(1, marker if variant.group == "skullfix" else 0)

    class FakeNetworks:
        info = type("Info", (), {"name": "fake"})()
        completion = type("Completion", (), {"keep_logit": 0.0})()

    monkeypatch.setattr(generalization, "run_variant", fake_run_variant)
    monkeypatch.setattr("SparseImplantLib.pipeline.inference.load_networks", lambda *args, **kwargs: FakeNetworks())
    generalization.run(tiny_skullfix, ["000"], tmp_path, None, ["skullfix", "orientation", "rotation"],
                       methods=["auto", "fitted"])
    copies = [call for call in calls if call[1] == "orientation"]
    assert {call[3] for call in copies} == {"auto"} and len(copies) == 3
    assert all(call[4] == 1 for call in copies)  # held to the stored file's auto implant
    assert {call[3] for call in calls if call[1] == "rotation"} == {"auto"}
    assert {call[3] for call in calls if call[1] == "skullfix"} == {"auto", "fitted"}
