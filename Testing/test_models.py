"""The completion network: ME-compatible parameter names, training behaviour, weight registry."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from conftest import make_registry, shell_skull
from SparseImplantLib.errors import SparseImplantError
from SparseImplantLib.models.completion import CHANNEL_PRESETS, CompletionNet, completion_loss
from SparseImplantLib.models.registry import ModelInfo, find_model, load_network, write_registry
from SparseImplantLib.sparse import SparseTensor, from_mask


def small_case() -> tuple[SparseTensor, torch.Tensor]:
    defective, implant = shell_skull(shape=(32, 32, 28), radius=11.0, thickness=2.5)
    complete = torch.from_numpy(np.argwhere(defective | implant)).long()
    target = torch.cat([torch.zeros(len(complete), 1, dtype=torch.long), complete], dim=1)
    return from_mask(defective.astype(bool)), target


def test_state_dict_follows_minkowski_completion_names():
    state = CompletionNet(CHANNEL_PRESETS["ch1"]).state_dict()
    assert state["enc_block_s1.0.kernel"].shape == (27, 1, 8)
    assert state["enc_block_s1s2.0.kernel"].shape == (8, 8, 8)  # kernel 2: 8 offsets
    assert state["enc_block_s32s64.3.kernel"].shape == (27, 64, 64)
    assert state["dec_block_s64s32.0.kernel"].shape == (64, 64, 32)  # kernel 4 transposed: 64 offsets
    assert state["dec_block_s2s1.0.kernel"].shape == (8, 8, 8)
    assert state["dec_s1_cls.kernel"].shape == (1, 8, 1)
    assert state["dec_s1_cls.bias"].shape == (1, 1)
    assert "dec_block_s4s2.1.bn.running_mean" in state
    assert sum(k.endswith("_cls.kernel") for k in state) == 6


def test_ch2_preset_builds():
    state = CompletionNet(CHANNEL_PRESETS["ch2"]).state_dict()
    assert state["enc_block_s32s64.0.kernel"].shape == (8, 256, 388)


def test_training_forward_backward_reaches_every_parameter():
    torch.manual_seed(0)
    network = CompletionNet().train()
    partial, target = small_case()
    result = network(partial, target)
    assert len(result.logits) == len(result.targets) == 6
    assert [x.tensor_stride for x in result.logits] == [32, 16, 8, 4, 2, 1]
    # During training the target voxels survive every pruning but the last.
    assert all(t.sum() > 0 for t in result.targets)
    loss = completion_loss(result)
    loss.backward()
    missing = [n for n, p in network.named_parameters() if p.grad is None]
    assert not missing


@pytest.mark.slow
def test_a_few_steps_reduce_the_loss():
    torch.manual_seed(0)
    network = CompletionNet().train()
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-2)
    partial, target = small_case()
    losses = []
    for _ in range(15):
        loss = completion_loss(network(partial, target))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_inference_on_tiny_input_survives_total_pruning():
    network = CompletionNet().eval()
    for module in network.modules():
        if hasattr(module, "bias") and isinstance(module.bias, torch.nn.Parameter) and module.bias.shape == (1, 1):
            torch.nn.init.constant_(module.bias, -100.0)  # every classifier says "no"
    mask = np.zeros((8, 8, 8), bool)
    mask[3:5, 3:5, 3:5] = True
    with torch.no_grad():
        result = network(from_mask(mask))
    assert len(result.output) == 0


def test_inference_without_map_cache_equals_cached_inference():
    torch.manual_seed(0)
    network = CompletionNet().eval()
    x, target = small_case()
    defective = x.C[:, 1:].numpy()
    mask = np.zeros(tuple(defective.max(axis=0) + 1), bool)
    mask[tuple(defective.T)] = True
    with torch.no_grad():  # keep_targets: a random network would otherwise prune everything at once
        cached = network(from_mask(mask), target, keep_targets=True)
        streamed = network(from_mask(mask, cache_maps=False), target, keep_targets=True)
    assert len(streamed.output) > len(x) // 2
    assert torch.equal(streamed.output.C, cached.output.C) and torch.equal(streamed.output.F, cached.output.F)
    for ours, reference in zip(streamed.logits, cached.logits):
        assert torch.equal(ours.F, reference.F)


def test_registry_roundtrip_and_checksum(tmp_path):
    info = make_registry(tmp_path)
    assert len(info.sha256) == 64
    loaded = find_model("tiny", model_dir=tmp_path)
    network = load_network(loaded)
    assert not network.training
    torch.manual_seed(1)
    reference = CompletionNet(info.channels)
    for key, value in reference.state_dict().items():
        assert torch.equal(network.state_dict()[key], value)
    data = bytearray(info.path.read_bytes())
    data[-1] ^= 0xFF
    info.path.write_bytes(bytes(data))
    with pytest.raises(SparseImplantError, match="sha256"):
        load_network(find_model("tiny", model_dir=tmp_path))


def test_registry_errors(tmp_path):
    with pytest.raises(SparseImplantError, match="no model registry"):
        find_model(model_dir=tmp_path)
    info = make_registry(tmp_path, kind="super_resolution")
    with pytest.raises(SparseImplantError, match="super_resolution model but a completion model"):
        find_model("tiny", model_dir=tmp_path)
    with pytest.raises(SparseImplantError, match="unknown model 'other'"):
        find_model("other", model_dir=tmp_path)
    info.path.unlink()
    with pytest.raises(SparseImplantError, match="missing"):
        load_network(find_model("tiny", kind="super_resolution", model_dir=tmp_path))


def test_weights_of_other_channels_are_rejected(tmp_path):
    info = make_registry(tmp_path)
    registry = json.loads((tmp_path / "registry.json").read_text())
    registry["models"][0]["channels"] = list(CHANNEL_PRESETS["ch2"])
    registry["models"][0]["sha256"] = info.sha256
    (tmp_path / "registry.json").write_text(json.dumps(registry))
    with pytest.raises(SparseImplantError, match="do not fit model 'tiny'"):
        load_network(find_model("tiny", model_dir=tmp_path))


def test_register_trained_model_adds_weights_and_metrics(tmp_path):
    from SparseImplantLib.models.registry import load_registry, register_trained_model

    run = tmp_path / "run"
    run.mkdir()
    trained = make_registry(run)  # stands in for a finished 'train' run
    (run / "model.json").write_text(json.dumps(trained.to_json()))
    evaluation = tmp_path / "evaluation.json"
    evaluation.write_text(json.dumps({"cases": [{"case": "050", "defect_type": None, "dsc": 0.912345, "hd95_mm": 1.5}],
                                      "summary": {"dsc": {"mean": 0.912345, "std": 0.0, "n": 1}}}))
    models = tmp_path / "models"
    make_registry(models, kind="super_resolution")  # an existing entry named 'tiny' is replaced
    bundled = register_trained_model(run, models, evaluation)
    entries = load_registry(models)
    assert [(m.name, m.kind) for m in entries] == [("tiny", "completion")]
    assert entries[0].file == "tiny.safetensors" and entries[0].sha256 == trained.sha256
    assert entries[0].metrics["validation_mean"] == {"dsc": 0.9123}
    assert entries[0].metrics["validation_cases"] == [{"case": "050", "dsc": 0.9123, "hd95_mm": 1.5}]
    load_network(bundled)  # checksum verified
    bench = tmp_path / "generalization.json"
    bench.write_text(json.dumps({"cases": ["050"], "keep_logit": -1.5, "summary": [
        {"group": "defect", "name": "wedge", "n": 1, "failures": 0, "dsc": 0.876543, "bdsc": 0.9, "hd95_mm": 2.0}]}))
    tuned = register_trained_model(run, models, keep_logit=-1.5, generalization=bench)
    assert load_network(find_model("tiny", model_dir=models)).keep_logit == tuned.keep_logit == -1.5
    assert find_model("tiny", model_dir=models).metrics["generalization"] == {
        "cases": ["050"], "keep_logit": -1.5,
        "groups": [{"group": "defect", "name": "wedge", "n": 1, "failures": 0, "dsc": 0.8765, "bdsc": 0.9, "hd95_mm": 2.0}]}
    (run / "tiny.safetensors").write_bytes(b"corrupt")
    with pytest.raises(SparseImplantError, match="does not match the sha256"):
        register_trained_model(run, models)


@pytest.mark.slow
def test_a_lower_keep_logit_keeps_more_voxels():
    torch.manual_seed(3)
    network = CompletionNet(CHANNEL_PRESETS["ch1"]).eval()
    defective, _ = shell_skull(shape=(32, 32, 32), radius=11.0)
    counts = []
    for threshold in (0.5, 0.0, -0.5):
        network.keep_logit = threshold
        with torch.no_grad():
            counts.append(len(network(from_mask(defective)).output))
    assert counts == sorted(counts) and counts[0] < counts[-1]


def _unverified(tmp_path) -> ModelInfo:
    """A registered model without a checksum, so a damaged file reaches the safetensors reader."""
    info = make_registry(tmp_path)
    info.sha256 = ""
    write_registry([info], tmp_path)
    return info


def _damage(path, kind: str) -> None:
    import pickle

    data = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "bit-flipped":
        path.write_bytes(data[:3] + bytes([data[3] ^ 0x10]) + data[4:])  # in the header's length
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "pickle":
        path.write_bytes(pickle.dumps({"enc_block_s1.0.kernel": [0.0]}))
    else:
        torch.save(CompletionNet().state_dict(), path)  # a PyTorch checkpoint renamed .safetensors


@pytest.mark.parametrize("kind", ["truncated", "bit-flipped", "empty", "pickle", "torch.save"])
def test_damaged_or_foreign_weight_files_fail_cleanly(tmp_path, kind):
    info = _unverified(tmp_path)
    _damage(info.path, kind)
    with pytest.raises(SparseImplantError, match="are not a readable safetensors file .*: reinstall the extension"):
        load_network(find_model("tiny", model_dir=tmp_path))


@pytest.mark.parametrize("key, value, needed", [
    ("channels", "ch1", "a list of positive whole numbers"),
    ("channels", [8, 8, 16, 16, 32, 32, 0], "a list of positive whole numbers"),
    ("keep_logit", "-0.5", "a number"),
    ("spacing_mm", [0.0, 2.0, 2.0], "three positive numbers"),
    ("spacing_mm", [-2.0, 2.0, 2.0], "three positive numbers"),
    ("spacing_mm", 2.0, "three positive numbers"),
    ("in_channels", 0, "a positive whole number"),
    ("crop_margin_mm", -1.0, "a number >= 0"),
    ("file", "../outside.safetensors", "a file name inside the model folder"),  # exists, and holds valid weights
    ("file", "/etc/passwd", "a file name inside the model folder"),
    ("training", [], "an object"),
])
def test_bad_registry_values_fail_cleanly(tmp_path, key, value, needed):
    models = tmp_path / "models"
    models.mkdir()
    make_registry(models)
    (tmp_path / "outside.safetensors").write_bytes((models / "tiny.safetensors").read_bytes())  # valid, but not ours
    registry = json.loads((models / "registry.json").read_text())
    registry["models"][0][key] = value
    (models / "registry.json").write_text(json.dumps(registry))
    with pytest.raises(SparseImplantError, match=f"entry 'tiny' has {key} .*, not {re.escape(needed)}.*: fix the entry or reinstall"):
        load_network(find_model("tiny", model_dir=models))


def test_channels_of_the_wrong_count_fail_cleanly(tmp_path):
    info = make_registry(tmp_path)
    registry = json.loads((tmp_path / "registry.json").read_text())
    registry["models"][0]["channels"] = [8, 8, 16]
    (tmp_path / "registry.json").write_text(json.dumps(registry))
    with pytest.raises(SparseImplantError, match="do not fit model 'tiny' \\(channels needs 7 entries"):
        load_network(find_model("tiny", model_dir=tmp_path))
    assert info.path.is_file()
