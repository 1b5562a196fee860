"""``predict``'s per-case report.json and its batch summary (printed, in the JSON "done" line and in
predict_summary.json), with the network stood in for: each case's warnings are chosen by the test."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from SparseImplantLib.cli import main
from SparseImplantLib.errors import SparseImplantError
from SparseImplantLib.outputs import MANIFEST
from SparseImplantLib.pipeline.design import Design
from SparseImplantLib.pipeline import predict as batch
from SparseImplantLib.progress import PROGRESS_PREFIX, ProgressEvent, ignore_progress

REPORT_KEYS = {"case", "input", "model", "refinement", "device", "completed_by", "implant_volume_ml", "warnings", "notes", "pose",
               "priors", "timings_s"}


def stand_in(monkeypatch, *warnings_per_case):
    """Replace the network's design with one adding a small block of bone; the n-th case designed gets
    the n-th list of warnings (an exception instead: that case fails)."""
    plans = iter(warnings_per_case)

    def design(defective, networks, device, progress=ignore_progress, clock=None, test_time_augmentation=True,
               straighten=True, method="auto"):
        plan = next(plans)
        if isinstance(plan, Exception):
            raise plan
        with clock.stage("network"):
            progress(ProgressEvent("network", 0.2, "standing in for the network"))
        implant = np.zeros(defective.shape, np.uint8)
        implant[:4, :4, :4] = 1
        implant &= defective.array == 0
        return Design(defective.with_array(((defective.array > 0) | (implant > 0)).astype(np.uint8)),
                               defective.with_array(implant), torch.device("cpu"), warnings=list(plan),
                               pose={"straightened": straighten}, priors={"agreement_dsc": 0.9})

    monkeypatch.setattr(batch, "design_implant", design)


def predict(capsys, data, output, model_dir, *options):
    code = main(["predict", "--data", str(data), "-o", str(output), "--model-dir", str(model_dir), "--device", "cpu",
                 *map(str, options)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_each_case_gets_a_report_and_the_batch_a_summary(tmp_path, capsys, tiny_skullfix, model_dir, monkeypatch):
    stand_in(monkeypatch, [], ["the defect is odd", "the pose is odd"], [])
    out = tmp_path / "predictions"
    code, stdout, stderr = predict(capsys, tiny_skullfix, out, model_dir, "--cases", "000-002", "--progress", "none",
                                   "--no-straighten")
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == ["000", "001", "002", "predict_summary.json"]
    case = out / "001"
    assert {p.name for p in case.iterdir()} == {"completed_skull.nrrd", "implant.nrrd", "report.json", MANIFEST}
    assert "report.json" in json.loads((case / MANIFEST).read_text())["files"]  # staged and moved in with the masks
    report = json.loads((case / "report.json").read_text())
    assert set(report) == REPORT_KEYS
    assert report["case"] == "001" and report["model"] == "tiny" and report["device"] == "cpu"
    assert report["warnings"] == ["the defect is odd", "the pose is odd"]
    assert report["pose"] == {"straightened": False} and report["priors"] == {"agreement_dsc": 0.9}
    assert report["implant_volume_ml"] > 0 and {"read", "network", "write"} <= set(report["timings_s"])
    summary = json.loads((out / "predict_summary.json").read_text())
    assert [c["case"] for c in summary["cases"]] == ["000", "001", "002"]
    assert [c["warning_count"] for c in summary["cases"]] == [0, 2, 0]
    assert summary["cases"][1]["implant_volume_ml"] == report["implant_volume_ml"]
    assert summary["doubtful"] == [{"case": "001", "warnings": ["the defect is odd", "the pose is odd"]}]
    lines = stdout.splitlines()
    assert "doubtful: 001 (2 warnings): the defect is odd" in lines
    assert lines[-1].startswith("1 of 3 case(s) doubtful") and str(out / "predict_summary.json") in lines[-1]
    assert lines[1].startswith("001: implant ") and lines[1].endswith("(2 warnings)")


def test_json_progress_ends_with_the_summary(tmp_path, capsys, tiny_skullfix, model_dir, monkeypatch):
    stand_in(monkeypatch, ["only one doubt"], [])
    out = tmp_path / "predictions"
    code, stdout, stderr = predict(capsys, tiny_skullfix, out, model_dir, "--cases", "000-001", "--progress", "json")
    assert code == 0, stderr
    lines = stdout.splitlines()
    assert all(line.startswith(PROGRESS_PREFIX) for line in lines)  # nothing else on stdout for the module to parse
    events = [ProgressEvent.from_line(line) for line in lines]
    fractions = [event.fraction for event in events]
    assert fractions == sorted(fractions) and [e.stage for e in events].count("done") == 1
    assert any(e.message.startswith("case 001: ") for e in events)
    done = json.loads(lines[-1][len(PROGRESS_PREFIX):])
    assert done["stage"] == "done" and done["fraction"] == 1.0 and "1 of 2 case(s) doubtful" in done["message"]
    summary = done["summary"]
    assert summary["run_cases"] == ["000", "001"] and summary["output"] == str(out)
    assert summary["summary_file"] == str(out / "predict_summary.json")
    written = json.loads((out / "predict_summary.json").read_text())
    assert {key: summary[key] for key in written} == written
    assert written["doubtful"] == [{"case": "000", "warnings": ["only one doubt"]}]


def test_reports_are_kept_without_overwrite_and_batches_in_parts_add_up(tmp_path, capsys, tiny_skullfix, model_dir,
                                                                         monkeypatch):
    out = tmp_path / "predictions"
    stand_in(monkeypatch, [], ["first doubt"], ["second run"], [], ["third run"])
    code, _, stderr = predict(capsys, tiny_skullfix, out, model_dir, "--cases", "000-001", "--progress", "none")
    assert code == 0, stderr
    (out / "001" / "implant.nrrd").unlink()  # a report alone is a result too
    before = (out / "001" / "report.json").read_text()
    code, _, stderr = predict(capsys, tiny_skullfix, out, model_dir, "--cases", "001", "--progress", "none")
    assert code == 1 and "already holds" in stderr and "report.json" in stderr and "--overwrite" in stderr
    assert (out / "001" / "report.json").read_text() == before
    code, stdout, stderr = predict(capsys, tiny_skullfix, out, model_dir, "--cases", "002", "--progress", "none")
    assert code == 0, stderr  # the stand-in's "second run" plan went to case 002
    summary = json.loads((out / "predict_summary.json").read_text())
    assert [c["case"] for c in summary["cases"]] == ["000", "001", "002"]  # the earlier part is still listed
    assert [d["case"] for d in summary["doubtful"]] == ["001", "002"]
    assert "2 of 3 case(s) doubtful" in stdout.splitlines()[-1]
    code, _, stderr = predict(capsys, tiny_skullfix, out, model_dir, "--cases", "001", "--progress", "none", "--overwrite")
    assert code == 0, stderr
    assert json.loads((out / "001" / "report.json").read_text())["warnings"] == []
    assert [d["case"] for d in json.loads((out / "predict_summary.json").read_text())["doubtful"]] == ["002"]


def test_a_failed_batch_still_summarises_its_finished_cases(tmp_path, capsys, tiny_skullfix, model_dir, monkeypatch):
    stand_in(monkeypatch, ["a doubt"], SparseImplantError("case 001 went wrong: fix it"))
    out = tmp_path / "predictions"
    code, _, stderr = predict(capsys, tiny_skullfix, out, model_dir, "--cases", "000-002", "--progress", "none")
    assert code == 1 and stderr.splitlines()[-1] == "sparseimplant: error: case 001 went wrong: fix it"
    assert sorted(p.name for p in out.iterdir()) == ["000", "predict_summary.json"]
    summary = json.loads((out / "predict_summary.json").read_text())
    assert summary["doubtful"] == [{"case": "000", "warnings": ["a doubt"]}]


def test_the_summary_counts_only_predict_reports_in_their_case_folders(tmp_path):
    def report(folder, case, warnings):
        folder.mkdir(parents=True)
        (folder / "report.json").write_text(json.dumps({"case": case, "warnings": warnings, "implant_volume_ml": 1.5}))

    report(tmp_path / "bilateral" / "050", "bilateral/050", ["w"])  # SkullBreak: <type>/<case>
    report(tmp_path / "051", "051", [])
    report(tmp_path / "051" / ".staging-1-host-x", "051", ["staged, not moved in"])
    report(tmp_path / "elsewhere", "052", [])  # not its case's folder
    (tmp_path / "generated").mkdir()
    (tmp_path / "generated" / "report.json").write_text(json.dumps({"input": "a generate report"}))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "report.json").write_text("{")
    summary = batch.write_predict_summary(tmp_path)
    assert summary == {"cases": [{"case": "051", "warning_count": 0, "implant_volume_ml": 1.5},
                                 {"case": "bilateral/050", "warning_count": 1, "implant_volume_ml": 1.5}],
                       "doubtful": [{"case": "bilateral/050", "warnings": ["w"]}]}
    assert json.loads((tmp_path / "predict_summary.json").read_text()) == summary
    assert batch.write_predict_summary(tmp_path / "absent") == {"cases": [], "doubtful": []}
    assert not (tmp_path / "absent").exists()


@pytest.mark.parametrize("doubtful, last", [(0, "no doubtful case among 2"), (1, "1 of 2 case(s) doubtful")])
def test_summary_lines(tmp_path, doubtful, last):
    from SparseImplantLib.cli import _predict_summary_lines

    summary = {"cases": [{"case": "050"}, {"case": "053"}],
               "doubtful": [{"case": "053", "warnings": ["one"]}][:doubtful]}
    lines = _predict_summary_lines(summary, tmp_path / "predict_summary.json")
    assert lines[-1].startswith(last)
    assert lines[:-1] == ["doubtful: 053 (1 warning): one"][:doubtful]
