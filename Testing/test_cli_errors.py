"""Every command ends as the README says: a result, or one line ``sparseimplant: error: ...`` and exit
code 1 (argparse's own refusals: its usage and exit code 2), never a traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List

import numpy as np
import pytest

from conftest import PROJECT_ROOT, load_utility, make_registry
from SparseImplantLib.cli import build_parser, main
from SparseImplantLib.contract import ERROR_PREFIX
from SparseImplantLib.pipeline.io import read_volume, write_volume
from SparseImplantLib.progress import ProgressEvent


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *words: str) -> None:
    assert code == 1, err
    assert err.startswith(ERROR_PREFIX) and err.count("\n") == 1, err
    assert all(word in err for word in words), err


@pytest.fixture
def skull_file(tmp_path, synthetic_skull) -> Path:
    return write_volume(tmp_path / "defective.nrrd", synthetic_skull[0])


def priors_registry(directory: Path) -> None:
    """A registry holding one small untrained model that takes both priors, 'tiny-priors'."""
    import torch

    from SparseImplantLib.models.completion import CHANNEL_PRESETS, CompletionNet
    from SparseImplantLib.models.registry import PRIOR_CHANNELS, ModelInfo, save_network, write_registry

    torch.manual_seed(1)
    info = ModelInfo(name="tiny-priors", kind="completion", channels=list(CHANNEL_PRESETS["ch1"]), spacing_mm=[2.0] * 3,
                     file="tiny-priors.safetensors", licence="test", in_channels=1 + len(PRIOR_CHANNELS),
                     priors=list(PRIOR_CHANNELS), directory=directory)
    save_network(CompletionNet(info.channels, in_channels=info.in_channels), info)
    write_registry([info], directory)


# --- bench generate -------------------------------------------------------------------------------

@pytest.mark.parametrize("with_priors", [False, True])
def test_bench_generate_times_the_network_on_the_model_input(tmp_path, monkeypatch, skull_file, with_priors):
    """The network alone runs on ``model_grid_input``'s ModelInput (it failed to unpack it as a tuple),
    with the priors estimated and timed apart for a model that takes them."""
    from SparseImplantLib.pipeline import inference
    from SparseImplantLib.bench.generate import _rows, network_seconds

    models = tmp_path / "models"
    models.mkdir()
    if with_priors:
        priors_registry(models)
    else:
        make_registry(models)
    load = inference.load_networks
    monkeypatch.setattr(inference, "load_networks", lambda model, refine, device, model_dir=None: load(model, refine, device, models))
    network = network_seconds(skull_file, repeats=1)
    assert network["seconds"] > 0 and network["passes"] == 4 and len(network["grid"]) == 3
    assert (network["priors_s"] is not None) == with_priors
    run = {"wall_s": 3.0, "peak_mb": 100.0, "bytes_written": 1e6, "timings_s": {"network": 1.0}}
    labels = [row[0] for row in _rows({"this version": run}, network)]
    assert labels[-1] == f"network alone (4 passes, {network['model']})"
    assert (f"priors alone ({network['model']})" in labels) == with_priors


def test_bench_results_go_where_nothing_is_committed():
    """Without -o, a benchmark never replaces the README's committed results/bench/ files."""
    ignored = (PROJECT_ROOT / ".gitignore").read_text().split()
    for benchmark in ("engine", "network", "generate", "generalization"):
        output = build_parser().parse_args(["bench", benchmark]).output
        assert not output.is_absolute() and f"/{output.parts[0]}/" in ignored and output.parts[0] != "results"
        assert build_parser().parse_args(["bench", benchmark, "-o", "results/bench"]).output == Path("results/bench")


def test_bench_generate_refuses_a_missing_data_folder_case_or_baseline(tmp_path, capsys, tiny_skullfix):
    assert_one_line_error(*run_cli(capsys, "bench", "generate", "--data", tmp_path / "none", "-o", tmp_path / "b")[::2],
                          "does not exist", "--data")
    assert_one_line_error(*run_cli(capsys, "bench", "generate", "--data", tiny_skullfix, "--case", "999",
                                   "-o", tmp_path / "b")[::2], "999", "--case")
    assert_one_line_error(*run_cli(capsys, "bench", "generate", "--data", tiny_skullfix, "--case", "000",
                                   "--baseline", tmp_path, "-o", tmp_path / "b")[::2], "--baseline", "SparseImplantLib")
    assert not (tmp_path / "b").exists()


def test_bench_generate_ends_with_the_measured_runs_own_error(tmp_path, capsys, tiny_skullfix):
    """A measured generate that fails ends the benchmark with that run's one-line reason, not a
    CalledProcessError traceback."""
    path = tiny_skullfix / "defective_skull" / "000.nrrd"
    skull = read_volume(path)
    write_volume(path, skull.with_array(np.zeros_like(skull.array)))
    code, _, err = run_cli(capsys, "bench", "generate", "--data", tiny_skullfix, "--case", "000", "-o", tmp_path / "b")
    assert_one_line_error(code, err, "'sparseimplant generate'", "failed: '000.nrrd' has no skull voxels")


# --- bench engine: counts ---------------------------------------------------------------------------

@pytest.mark.parametrize("option, value", [("--voxels", "-5"), ("--voxels", "0"), ("--repeats", "0"),
                                           ("--channels", "0"), ("--voxels", "many")])
def test_bench_engine_refuses_counts_below_one(capsys, option, value):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "engine", option, value])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"argument {option}: {value} is not" in err and "Traceback" not in err


# --- generate and predict/evaluate -------------------------------------------------------------------

def test_label_and_threshold_together_are_refused(tmp_path, capsys, skull_file):
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "generate", skull_file, "-o", out, "--label", "2", "--threshold", "300",
                           "--progress", "none")
    assert_one_line_error(code, err, "--label 2", "--threshold 300", "exclude each other")
    assert not out.exists()


def test_predict_and_evaluate_draw_no_bar_before_their_error(tmp_path, capsys, tiny_skullfix):
    """A run refused while its inputs are checked prints its error alone, no empty 0 % bar above it."""
    code, _, err = run_cli(capsys, "predict", "--data", tmp_path / "none", "-o", tmp_path / "p")
    assert_one_line_error(code, err, "does not exist")
    code, _, err = run_cli(capsys, "evaluate", "--predictions", tmp_path / "none", "--data", tiny_skullfix)
    assert_one_line_error(code, err, "--predictions")


def test_json_progress_ends_with_one_done_line_and_the_outcome(tmp_path, capsys, monkeypatch, skull_file, model_dir):
    from SparseImplantLib import progress

    events = []
    monkeypatch.setattr(progress, "json_lines_progress", lambda: events.append)
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "generate", skull_file, "-o", out, "--model-dir", model_dir, "--device", "cpu",
                                "--progress", "json", "--no-test-time-augmentation", "--no-preview")
    assert code == 0, err
    assert events and all(event.stage != "done" for event in events)  # the one "done" is the CLI's, at the end
    last = stdout.splitlines()[-1]
    done = ProgressEvent.from_line(last)
    assert done is not None and done.stage == "done" and done.fraction == 1.0 and str(out) in done.message
    summary = json.loads(last.split(" ", 1)[1])["summary"]
    report = json.loads((out / "report.json").read_text())
    assert summary["implant_voxels"] == report["voxels"]["implant"] and summary["output"] == str(out)
    assert summary["implant_volume_ml"] == report["implant_volume_ml"] and summary["metrics"] is None


# --- train --kind super_resolution ---------------------------------------------------------------------

@pytest.mark.parametrize("kind, name", [
    ("completion", "skullfix-completion"),
    ("super_resolution", "skullfix-super-resolution"),
])
def test_the_default_model_name_follows_the_kind(tmp_path, monkeypatch, kind, name):
    from SparseImplantLib.train import loop

    started = []
    monkeypatch.setattr(loop, "train", started.append)
    assert main(["train", "--data", str(tmp_path), "-o", str(tmp_path / "run"), "--kind", kind]) == 0
    assert started[0].name == name
    assert main(["train", "--data", str(tmp_path), "-o", str(tmp_path / "run"), "--kind", kind, "--name", "mine"]) == 0
    assert started[1].name == "mine"


def test_no_validation_cases_need_no_coarse_predictions(tmp_path, tiny_skullfix, model_dir):
    """'--val-cases ""' leaves no validation sources; predicting them must select no case, not fail
    with 'no cases found' (an empty selection is not a folder without cases)."""
    import torch

    from SparseImplantLib.data.datasets import list_cases
    from SparseImplantLib.pipeline.inference import load_networks
    from SparseImplantLib.train.loop import add_predictions

    assert list_cases(tiny_skullfix, cases=[]) == []
    add_predictions([], tiny_skullfix, load_networks(None, "none", torch.device("cpu"), model_dir), [2.0] * 3, tmp_path)


# --- Utilities/catalog_screenshot.py ------------------------------------------------------------------

def test_catalog_views_find_the_interaction_node(capfd):
    """Slicer's displayable managers warn (about 30 times) when a scene has no interaction node."""
    import slicer

    from SparseImplantLib.slicer import scene_views

    scene = slicer.vtkMRMLScene()
    views = load_utility("catalog_screenshot").OffscreenViews(scene_views.three_view_nodes(scene), size=(32, 32))
    views.close()
    assert scene.GetFirstNodeByClass("vtkMRMLInteractionNode") is not None
    assert "InteractionNode" not in capfd.readouterr().err


# --- bench and register-model: every refusal is one line ----------------------------------------------

def _run_folder(tmp_path: Path, with_weights: bool = True) -> Path:
    """A finished training run's folder (model.json + weights), as 'sparseimplant train' leaves it."""
    from SparseImplantLib.models.completion import CHANNEL_PRESETS, CompletionNet
    from SparseImplantLib.models.registry import ModelInfo, save_network

    run = tmp_path / "run"
    run.mkdir()
    info = ModelInfo(name="trained", kind="completion", channels=list(CHANNEL_PRESETS["ch1"]), spacing_mm=[2.0] * 3,
                     file="model.safetensors", licence="test", directory=run)
    save_network(CompletionNet(info.channels), info)
    (run / "model.json").write_text(json.dumps(info.to_json()))
    if not with_weights:
        info.path.unlink()
    return run


def _bad_files(tmp_path: Path) -> dict:
    (tmp_path / "text.json").write_text("not JSON")
    (tmp_path / "object.json").write_text("{}")
    (tmp_path / "a_file").write_text("")
    return {"missing": tmp_path / "missing.json", "text": tmp_path / "text.json", "object": tmp_path / "object.json",
            "file": tmp_path / "a_file"}


def refusal(arguments: List[str], words: List[str], *marks: pytest.MarkDecorator):
    """A bad command line, the words its error must contain, named by the command line."""
    return pytest.param(arguments, words, marks=marks, id=" ".join(arguments))


@pytest.mark.parametrize("arguments, words", [
    refusal(["bench", "network", "--data", "{none}"], ["does not exist", "--data"]),
    refusal(["bench", "network", "--data", "{data}", "--case", "999"], ["999", "--case"]),
    refusal(["bench", "worker", "--method", "sparse", "--size", "64", "--mode", "train", "--data", "{none}",
             "--case", "000"], ["does not exist"]),
    refusal(["bench", "generalization", "--data", "{none}"], ["does not exist"]),
    refusal(["bench", "generalization", "--data", "{data}", "--cases", "abc"], ["abc"]),
    refusal(["bench", "generalization", "--data", "{data}", "--model", "nothing", "--model-dir", "{models}"], ["nothing"]),
    refusal(["bench", "generalization", "--data", "{data}", "--model-dir", "{none}"], ["no model registry"]),
    refusal(["bench", "generalization", "--merge", "{missing}"], ["--merge", "missing.json"]),
    refusal(["bench", "generalization", "--merge", "{text}"], ["--merge", "not JSON"]),
    refusal(["bench", "generalization", "--merge", "{object}"], ["--merge"]),
    refusal(["register-model", "{none}"], ["not a finished training run"]),
    refusal(["register-model", "{run}", "--keep-logit", "nan"], ["--keep-logit"]),
    refusal(["register-model", "{run_without_weights}"], ["model.safetensors"]),
    refusal(["register-model", "{run}", "--evaluation", "{missing}"], ["--evaluation"]),
    refusal(["register-model", "{run}", "--evaluation", "{text}"], ["--evaluation"]),
    refusal(["register-model", "{run}", "--evaluation", "{object}"], ["--evaluation"]),
    refusal(["register-model", "{run}", "--generalization", "{missing}"], ["--generalization"]),
    refusal(["register-model", "{run}", "--generalization", "{object}"], ["--generalization"]),
    refusal(["register-model", "{run}", "--model-dir", "{file}"], ["--model-dir"]),
])
def test_bench_and_register_model_refuse_bad_arguments_in_one_line(tmp_path, capsys, tiny_skullfix, model_dir,
                                                                   arguments, words):
    places = {"none": tmp_path / "none", "data": tiny_skullfix, "models": model_dir, **_bad_files(tmp_path)}
    if any("{run" in argument for argument in arguments):
        places["run"] = places["run_without_weights"] = _run_folder(tmp_path, "{run}" in arguments)
    target = tmp_path / "target"
    filled = [argument.format(**places) for argument in arguments]
    if filled[0] == "register-model" and "--model-dir" not in filled:
        filled += ["--model-dir", str(target)]
    assert_one_line_error(*run_cli(capsys, *filled)[::2], *words)
    if filled[0] == "register-model":
        assert not target.exists() or not any(target.iterdir())  # refused before anything was copied


@pytest.mark.parametrize("arguments", [["bench", "worker", "--method", "x", "--size", "64", "--mode", "train",
                                        "--data", "d", "--case", "000"],
                                       ["bench", "network", "--sizes", "100"],
                                       ["bench", "generate", "--timeout", "soon"]])
def test_bench_options_of_the_wrong_kind_are_refused_by_argparse(capsys, arguments):
    with pytest.raises(SystemExit) as exit_info:
        main(arguments)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "error: argument" in err and "Traceback" not in err
