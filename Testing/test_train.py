"""Training: a short run learns, resumes, and two Gloo processes under torchrun stay identical."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import PROJECT_ROOT, make_registry, shell_skull
from SparseImplantLib.cli import main
from SparseImplantLib.models.registry import ModelInfo, load_network
from SparseImplantLib.pipeline.volume import Volume


def train_args(data, output, iterations, *extra):
    return ["train", "--data", str(data), "--train-cases", "000-001", "--val-cases", "002", "-o", str(output),
            "--spacing", "1.5", "--margin-mm", "6", "--iterations", str(iterations), "--log-every", "5",
            "--augmentation", "none",
            "--val-every", "10", "--checkpoint-every", "5", "--lr", "5e-3", *extra]


def read_log(output):
    return [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_training_learns_and_resumes(tmp_path, tiny_skullfix, capsys):
    output = tmp_path / "run"
    assert main(train_args(tiny_skullfix, output, 20)) == 0
    log = read_log(output)
    assert [entry["iteration"] for entry in log] == [5, 10, 15, 20]
    assert log[-1]["loss"] < log[0]["loss"]
    assert "val_implant_dice_grid" in log[1]
    info = ModelInfo(**json.loads((output / "model.json").read_text()), directory=output)
    assert info.licence.startswith("CC BY-NC-SA") and len(info.sha256) == 64
    load_network(info)  # checksum and shapes agree

    model_file = (output / "model.safetensors").read_bytes()
    assert main(train_args(tiny_skullfix, output, 30)) != 0  # no --resume: the finished run stays as it was
    assert "already holds a training run; pass --resume" in capsys.readouterr().err
    assert (output / "model.safetensors").read_bytes() == model_file
    assert main(train_args(tiny_skullfix, tmp_path / "empty", 30, "--resume")) != 0
    assert "nothing to resume" in capsys.readouterr().err

    with open(output / "train_log.jsonl", "a") as log:  # as if stopped after logging 25 but before its checkpoint
        log.write(json.dumps({"iteration": 25, "loss": 1.0, "seconds": 1e9}) + "\n")
    assert main(train_args(tiny_skullfix, output, 30, "--resume")) == 0
    resumed = read_log(output)
    assert [entry["iteration"] for entry in resumed] == [5, 10, 15, 20, 25, 30]
    seconds = [entry["seconds"] for entry in resumed]
    assert seconds == sorted(seconds) and seconds[-1] < 1e9  # the whole run's time, counted on from the checkpoint


@pytest.mark.slow
def test_two_gloo_processes_end_with_identical_weights(tmp_path, tiny_skullfix):
    output = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "SparseImplantLib.train", *train_args(tiny_skullfix, output, 6)[1:]]
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT_ROOT, env=environment, timeout=600)
    assert process.returncode == 0, process.stderr[-3000:]
    summary = json.loads((output / "training_summary.json").read_text())
    assert summary["world_size"] == 2
    checksums = summary["rank_weight_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]


@pytest.mark.slow
def test_fine_tuning_starts_from_a_registered_model(tmp_path, tiny_skullfix, capsys):
    import torch

    from SparseImplantLib.models.completion import CompletionNet
    from SparseImplantLib.models.registry import save_network, write_registry

    torch.manual_seed(123)  # not the training seed: a fresh network would differ
    start = ModelInfo(name="start", kind="completion", channels=[4, 4, 8, 8, 8, 8, 8], spacing_mm=[1.5] * 3,
                      file="start.safetensors", licence="test", directory=tmp_path / "models")
    save_network(CompletionNet(start.channels), start)
    write_registry([start], start.directory)
    fine_tune = ["--init-model", "start", "--model-dir", str(start.directory)]

    assert main(train_args(tiny_skullfix, tmp_path / "bad", 2, *fine_tune, "--channels", "ch1")) != 0
    assert "differs from model 'start'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()  # refused before the run folder is made

    output = tmp_path / "run"
    assert main(train_args(tiny_skullfix, output, 2, *fine_tune, "--lr", "0")) == 0  # Adam with lr 0 moves nothing
    info = ModelInfo(**json.loads((output / "model.json").read_text()), directory=output)
    assert info.channels == start.channels
    assert info.training["initialised_from"] == {"name": "start", "sha256": start.sha256, "training": start.training}
    tuned, initial = load_network(info).state_dict(), load_network(start).state_dict()
    parameters = [name for name, _ in CompletionNet(start.channels).named_parameters()]
    assert all(torch.equal(tuned[name], initial[name]) for name in parameters)


@pytest.mark.slow
def test_super_resolution_training_learns_and_is_picked_for_its_grid(tmp_path, tiny_skullfix, capsys):
    from SparseImplantLib.models.registry import find_model, find_refiner, register_trained_model

    output = tmp_path / "sr"
    args = train_args(tiny_skullfix, output, 20, "--kind", "super_resolution", "--input-spacing", "2.0", "--name", "sr")
    args[args.index("--spacing") + 1] = "1.0"
    assert main(args) == 0
    log = read_log(output)
    assert log[-1]["loss"] < log[0]["loss"]
    assert "val_implant_dice_grid" in log[1]
    info = ModelInfo(**json.loads((output / "model.json").read_text()), directory=output)
    assert (info.kind, info.in_channels, info.input_spacing_mm, info.spacing_mm) == ("super_resolution", 2, [2.0] * 3, [1.0] * 3)
    assert load_network(info).in_channels == 2

    models = tmp_path / "models"
    models.mkdir()
    make_registry(models)  # a 2 mm completion model
    register_trained_model(output, models)
    assert find_refiner("auto", find_model(model_dir=models), models).name == "sr"

    refused = tmp_path / "sr-from-4mm"  # fine-tuning keeps the model's input grid, refused before any folder exists
    assert main([*args[:args.index("-o")], "-o", str(refused), *args[args.index("-o") + 2:], "--init-model", "sr",
                 "--model-dir", str(models), "--input-spacing", "4.0"]) != 0
    assert "--input-spacing 4.0 differs from model 'sr'" in capsys.readouterr().err
    assert not refused.exists()


def test_super_resolution_pairs_each_defect_with_its_own_coarse_skull():
    """The case's own defect comes with the completion model's prediction of it; a generated defect, which
    no model has seen, with the target through the coarse grid."""
    from SparseImplantLib.train.augment import OWN_DEFECT, Augmentation, draw
    from SparseImplantLib.pipeline.superres import refine_box
    from SparseImplantLib.train.examples import _through_coarse_grid, make_example
    from SparseImplantLib.train.samples import make_source

    defective, implant = shell_skull(shape=(84, 84, 64), radius=38.0, thickness=8.0)  # bone that survives 2 mm
    geometry = dict(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=np.eye(3))
    source = make_source("000", Volume(defective, **geometry), Volume(defective | implant, **geometry), [1.0] * 3)
    source.predicted = np.roll(source.complete, 2, axis=0)  # a stand-in unlike the complete skull
    steady = Augmentation.preset("defects")
    own = draw(source, 1.0, 6.0, np.random.default_rng(0), steady, OWN_DEFECT, with_predicted=True)
    assert own.predicted is not None and own.predicted.shape == own.complete.shape
    assert not np.array_equal(own.predicted, own.complete)
    generated = draw(source, 1.0, 6.0, np.random.default_rng(0), steady, "craniotomy", with_predicted=True)
    assert generated.predicted is None
    through_grid = _through_coarse_grid(generated.complete, 1.0, [2.0] * 3)
    for pair, expected in ((own, own.predicted), (generated, through_grid)):
        example = make_example(pair, input_spacing=[2.0] * 3)
        box = refine_box(expected, pair.defective, [1.0] * 3)
        assert box is not None
        coarse_voxels = {tuple(v) for v, f in zip(example.voxels.tolist(), example.features.tolist()) if f[0] > 0}
        assert coarse_voxels == {tuple(v) for v in np.argwhere(expected[box]).tolist()}


@pytest.mark.slow
def test_super_resolution_learns_from_a_completion_models_predictions(tmp_path, tiny_skullfix, capsys):
    models = tmp_path / "models"
    models.mkdir()
    completion = make_registry(models)  # a 2 mm completion model
    output = tmp_path / "sr"
    args = train_args(tiny_skullfix, output, 6, "--kind", "super_resolution", "--input-spacing", "2.0",
                      "--coarse-model", "tiny", "--model-dir", str(models))
    args[args.index("--spacing") + 1] = "1.0"
    assert main(args) == 0
    info = ModelInfo(**json.loads((output / "model.json").read_text()), directory=output)
    assert info.training["coarse_model"] == {"name": "tiny", "sha256": completion.sha256}
    predictions = sorted(path.name for path in (output / "cache").glob("*_predicted-*.npy"))
    assert predictions == [f"{case}_predicted-{completion.sha256[:12]}_k0.npy" for case in ("000", "001", "002")]

    for wrong, message in ((["--input-spacing", "4.0"], "completes on a [2.0, 2.0, 2.0] mm grid but --input-spacing is 4.0"),
                           (["--kind", "completion"], "--coarse-model is for --kind super_resolution")):
        refused = tmp_path / "refused"
        assert main([*args[:args.index("-o")], "-o", str(refused), *args[args.index("-o") + 2:], *wrong]) != 0
        assert message in capsys.readouterr().err
        assert not refused.exists()


def test_schedule_continues_on_resume_and_never_restarts_when_extended():
    from SparseImplantLib.errors import SparseImplantError
    from SparseImplantLib.train.schedule import FLOOR_SHARE, Schedule

    planned = Schedule.cosine(1e-3, 100)
    assert planned.rate(0) == pytest.approx(1e-3) and planned.rate(100) == pytest.approx(1e-3 * FLOOR_SHARE)
    same, note = planned.resized(100, 40)
    assert same is planned and note is None
    for done in (40, 100):  # mid-run and after the run finished
        longer, note = planned.resized(250, done)
        rates = [longer.rate(i) for i in range(250)]
        assert rates[:done] == [planned.rate(i) for i in range(done)]  # what was done stays as it was
        assert all(b <= a + 1e-15 for a, b in zip(rates[done - 1:], rates[done:]))  # never rises
        assert longer.rate(250) == pytest.approx(1e-3 * FLOOR_SHARE) and "does not restart" in note
        assert Schedule.from_json(longer.to_json()) == longer
    with pytest.raises(SparseImplantError, match="cut its schedule short"):
        planned.resized(80, 40)


@pytest.mark.slow
def test_a_resumed_run_ends_exactly_as_an_uninterrupted_one(tmp_path, tiny_skullfix, monkeypatch):
    from SparseImplantLib.train import loop

    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(train_args(tiny_skullfix, straight, 10, "--val-cases", "", "--checkpoint-every", "4")) == 0
    calls = []

    def interrupted_loss(result):
        calls.append(1)
        if len(calls) == 10:  # the session ends during iteration 10, after the checkpoint of iteration 8
            raise KeyboardInterrupt
        return original_loss(result)

    original_loss = loop.completion_loss
    monkeypatch.setattr(loop, "completion_loss", interrupted_loss)
    assert main(train_args(tiny_skullfix, split, 10, "--val-cases", "", "--checkpoint-every", "4")) != 0  # Ctrl-C
    monkeypatch.setattr(loop, "completion_loss", original_loss)
    assert main(train_args(tiny_skullfix, split, 10, "--val-cases", "", "--checkpoint-every", "4", "--resume")) == 0
    finished = [json.loads((folder / "training_summary.json").read_text()) for folder in (straight, split)]
    assert finished[0]["rank_weight_checksums"] == finished[1]["rank_weight_checksums"]
    snapshot = ModelInfo(**json.loads((split / "snapshot" / "model.json").read_text()), directory=split / "snapshot")
    assert snapshot.training["iterations"] == 8  # the last checkpoint's weights before the end, as a model
    load_network(snapshot)


@pytest.mark.slow
def test_training_with_priors_widens_a_one_channel_model(tmp_path, tiny_skullfix):
    import torch

    from SparseImplantLib.models.completion import CompletionNet
    from SparseImplantLib.models.registry import PRIOR_CHANNELS, save_network, write_registry

    start = ModelInfo(name="start", kind="completion", channels=[4, 4, 8, 8, 8, 8, 8], spacing_mm=[1.5] * 3,
                      file="start.safetensors", licence="test", directory=tmp_path / "models")
    save_network(CompletionNet(start.channels), start)
    write_registry([start], start.directory)
    output = tmp_path / "run"
    assert main(train_args(tiny_skullfix, output, 2, "--init-model", "start", "--model-dir", str(start.directory),
                           "--priors", "--lr", "0")) == 0
    info = ModelInfo(**json.loads((output / "model.json").read_text()), directory=output)
    assert info.in_channels == 3 and info.priors == list(PRIOR_CHANNELS)
    kernel, original = (load_network(m).state_dict()["enc_block_s1.0.kernel"] for m in (info, start))
    assert kernel.shape[1] == 3 and torch.equal(kernel[:, :1], original) and not kernel[:, 1:].any()
