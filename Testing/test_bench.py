"""Benchmarks at small sizes (their numbers are for results/, not for assertions on speed) and the
dense twin's agreement with the sparse network."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from conftest import PROJECT_ROOT, require_skullfix
from SparseImplantLib.bench import engine, network
from SparseImplantLib.errors import SparseImplantError
from SparseImplantLib.models.completion import CHANNEL_PRESETS, LEVELS, CompletionNet, encoder_name
from SparseImplantLib.models.dense_twin import DenseCompletionNet, copy_from_sparse
from SparseImplantLib.sparse import from_mask, to_dense


def test_engine_benchmark_writes_a_sane_report(tmp_path):
    data = engine.run(voxels=20_000, channels=4, repeats=1, output_dir=tmp_path)
    saved = json.loads((tmp_path / "engine.json").read_text())
    assert saved["voxels"] == data["voxels"] == len(engine.shell_coordinates(20_000))
    assert abs(saved["voxels"] - 20_000) / 20_000 < 0.15
    ours = saved["engines"]["ours"]
    assert all(ours[key] > 0 for key in ("map_build_s", "forward_s", "forward_backward_s"))
    assert "| engine |" in (tmp_path / "engine.md").read_text()


@pytest.mark.slow
def test_network_benchmark_on_the_smallest_grid(tmp_path, monkeypatch):
    root = require_skullfix()
    twin = str(PROJECT_ROOT / "Testing" / "minkowski")  # ME's network, for the ME rows where ME is installed
    monkeypatch.syspath_prepend(twin)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [twin, os.environ.get("PYTHONPATH")])))
    output = tmp_path / "new-folder"  # made by the benchmark, plot included
    network.run(root, "050", sizes=[64], channels="ch1", output_dir=output, timeout_s=600)
    results = json.loads((output / "network.json").read_text())["results"]
    methods = ("sparse", "dense") + (("minkowski",) if network.minkowski_available() else ())
    assert {(r["method"], r["mode"]) for r in results} == {(m, n) for m in methods for n in ("inference", "train")}
    for result in results:
        if result["method"] == "minkowski" and result["mode"] == "train":
            # ME's batch norm refuses the single voxel left at stride 64 of a 64^2 grid in training.
            assert result["status"] == "ok" or "more than 1 value per channel" in result["status"], result
            continue
        assert result["status"] == "ok", result
        assert result["seconds"] > 0 and result["peak_mb"] > 0
        # Passes well under the repeat budget are repeated; the time is their median.
        assert len(result["passes_s"]) == network.MAX_TIMED_PASSES or sum(result["passes_s"]) >= network.REPEAT_BUDGET_S
        assert result["seconds"] == pytest.approx(float(np.median(result["passes_s"])))
        assert result["gmacs"] > 0 or result["method"] == "minkowski"
    sparse = next(r for r in results if r["method"] == "sparse" and r["mode"] == "inference")
    if network.minkowski_available():  # same weights, same oracle: the same voxels in every layer
        theirs = next(r for r in results if r["method"] == "minkowski" and r["mode"] == "inference")
        assert [layer["voxels"] for layer in theirs["layers"]] == [layer["voxels"] for layer in sparse["layers"]]
    dense = next(r for r in results if r["method"] == "dense" and r["mode"] == "inference")
    assert sparse["layers"][0]["voxels"] == sparse["input_voxels"]  # first conv keeps the input voxels
    assert dense["layers"][0]["voxels"] == int(np.prod(dense["grid"]))  # dense works on every voxel
    assert sparse["gmacs"] < dense["gmacs"]
    assert (output / "network.png").is_file()
    if not network.minkowski_available():
        assert "No MinkowskiEngine rows: MinkowskiEngine is not installed" in (output / "network.md").read_text()


def test_minkowski_rows_fail_clearly_without_minkowski(monkeypatch, tmp_path):
    monkeypatch.setattr(network, "ME_TWIN_MODULE", "no_such_twin_module")
    assert not network.minkowski_available()
    with pytest.raises(SparseImplantError, match=r"cannot run the MinkowskiEngine network: .*(build\.sh|PYTHONPATH)"):
        network.worker("minkowski", 64, "inference", tmp_path, "050", "ch1")


@pytest.mark.slow
def test_dense_twin_matches_the_sparse_encoder_on_a_full_grid():
    torch.manual_seed(0)
    sparse = CompletionNet(CHANNEL_PRESETS["ch1"]).eval()
    dense = copy_from_sparse(DenseCompletionNet(CHANNEL_PRESETS["ch1"]), sparse).eval()
    mask = np.ones((64, 64, 64), bool)
    x = from_mask(mask)
    encoded_sparse = [sparse.enc_block_s1(x)]
    for level in range(LEVELS):
        encoded_sparse.append(getattr(sparse, encoder_name(level))(encoded_sparse[-1]))
    volume = torch.ones(1, 1, 64, 64, 64)
    with torch.no_grad():
        encoded_dense = [dense.encoder[0](volume)]
        for block in dense.encoder[1:]:
            encoded_dense.append(block(encoded_dense[-1]))
    for level, (s, d) in enumerate(zip(encoded_sparse, encoded_dense)):
        expected = d
        actual = to_dense(s, tuple(64 // 2**level for _ in range(3))).detach()
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        logits = dense(volume)
    assert [tuple(l.shape[2:]) for l in logits] == [(64 // 2**level,) * 3 for level in reversed(range(LEVELS))]


def test_bench_options_reject_unknown_sizes_and_modes(capsys):
    from SparseImplantLib.bench.commands import GRID_SIZES, main

    assert [int(size) for size in GRID_SIZES] == sorted(network.GRIDS)
    for option, value, message in (("--sizes", "64,100", "unknown grid size 100: choose from 64,128,256,512"),
                                   ("--modes", "inference,infer", "unknown mode infer: choose from inference,train")):
        with pytest.raises(SystemExit) as exit_info:
            main(["network", option, value])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_generate_benchmark_table_has_each_stage_the_rest_and_the_ratio():
    from SparseImplantLib.bench.generate import _rows

    before = {"wall_s": 40.0, "peak_mb": 2000.0, "bytes_written": 370e6, "timings_s": {"read": 5.0, "meshes": 15.0}}
    after = {"wall_s": 20.0, "peak_mb": 1500.0, "bytes_written": 68e6, "timings_s": {"read": 1.0, "meshes": 9.0, "preview": 1.0}}
    rows = {row[0]: row[1:] for row in _rows({"before": before, "after": after}, {"seconds": 1.0, "passes": 4, "model": "m"})}
    assert rows["stage: read"] == ["5.00 s", "1.00 s", "0.20x"]
    assert rows["stage: preview"] == ["", "1.00 s", ""]
    assert rows["start-up, imports, exit (the rest)"] == ["20.00 s", "9.00 s", "0.45x"]
    assert rows["**end to end**"][-1] == "0.50x" and rows["**written**"] == ["**370.0 MB**", "**68.0 MB**", "0.18x"]
    assert rows["network alone (4 passes, m)"] == ["1.00 s", "", ""]
