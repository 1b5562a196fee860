"""The main job end to end (``sparseimplant generate`` with its defaults, as ``make demo`` runs it) on
a full-resolution SkullFix case: wall time from process start to exit, each stage's time from
report.json, the bytes written and the process's peak memory; beside it, the network alone (its
averaged passes on the case's model grid). Given ``baseline`` (a source tree of another version), the
same job runs with that tree's package too, in the same benchmark run, for a before/after table.

Issue 24's targets for SkullFix 050 on 2 CPU cores: at most ``TARGET_SECONDS`` end to end and
``TARGET_MEGABYTES`` written.
"""

from __future__ import annotations

import compileall
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

from ..contract import ERROR_PREFIX, REPORT_FILE
from ..errors import SparseImplantError
from .report import markdown_table, write_results

TARGET_SECONDS = 15.0
TARGET_MEGABYTES = 80.0
NETWORK_REPEATS = 3

# Runs the CLI and, at exit, writes the process's own peak RSS (VmHWM) to the file named by argv[1]:
# ru_maxrss of RUSAGE_CHILDREN cannot be used, Linux carries the parent's peak over into a fresh child.
_CLI_WITH_PEAK = (
    "import atexit, sys; from pathlib import Path; from SparseImplantLib.bench.memory import peak_rss_mb; "
    "from SparseImplantLib.cli import main; peak_file = Path(sys.argv.pop(1)); "
    "atexit.register(lambda: peak_file.write_text(str(peak_rss_mb()))); sys.exit(main())"
)


def run_job(source: Path, timeout_s: float, package_root: Optional[Path] = None) -> dict:
    """One ``generate`` in a fresh process (``package_root``: import SparseImplantLib from that tree).
    Its failure ends the benchmark with its own one-line error; its warnings are passed on."""
    environment = dict(os.environ)
    if package_root is not None:
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(package_root), environment.get("PYTHONPATH")]))
    job = f"'sparseimplant generate' on '{source}'" + (f" with the package of '{package_root}'" if package_root else "")
    with tempfile.TemporaryDirectory() as folder:
        peak_file = Path(folder) / "peak_mb.txt"
        results = Path(folder) / "out"
        command = [sys.executable, "-c", _CLI_WITH_PEAK, str(peak_file), "generate", str(Path(source).resolve()),
                   "-o", str(results), "--progress", "none", "--device", "cpu"]
        start = time.perf_counter()
        # Run from the temporary folder: 'python -c' puts the working directory first on the import path,
        # where a source tree would shadow the package under test.
        try:
            done = subprocess.run(command, timeout=timeout_s, env=environment, cwd=folder, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)
        except subprocess.TimeoutExpired:
            raise SparseImplantError(f"{job} took more than {timeout_s:g} s: raise --timeout") from None
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SparseImplantError(f"{job} failed: {_failure(done)}")
        sys.stderr.write(done.stderr)
        files = {path.name: path.stat().st_size for path in sorted(results.iterdir())}
        report = json.loads((results / REPORT_FILE).read_text())
        return {"wall_s": wall, "peak_mb": float(peak_file.read_text()), "timings_s": report["timings_s"],
                "bytes_written": sum(files.values()), "files": files, "threads": report["threads"]}


def compiled_package(tree: Path) -> None:
    """Compile ``tree``'s SparseImplantLib to bytecode before it is timed, as an installed package is: where
    PYTHONDONTWRITEBYTECODE is set (as on this project's machines) every run would compile it again
    (about 0.3 s). A tree that cannot be written to is timed as it is."""
    compileall.compile_dir(str(tree / "SparseImplantLib"), quiet=2)


def _failure(done: subprocess.CompletedProcess) -> str:
    """Why a measured process failed: its own error line, else its last words, else its exit code."""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    errors = [line[len(ERROR_PREFIX):] for line in lines if line.startswith(ERROR_PREFIX)]
    if errors:
        return errors[-1]
    return lines[-1] if lines else f"exit code {done.returncode}"


def network_seconds(source: Path, repeats: int = NETWORK_REPEATS) -> dict:
    """The completion network alone, as generate runs it (straightened grid, test-time augmentation, CPU): the
    median of ``repeats`` timings on the case's cropped model grid, without reading or resampling back;
    for a model that takes priors, their estimate's time beside it (``priors_s``, as generate's stage)."""
    import torch

    from ..pipeline.inference import AUGMENTED_PASSES, coarse_skull, load_networks, model_grid_input
    from ..pipeline.io import read_mask
    from ..pipeline.pose import straighten_head
    from ..pipeline.priors import estimate_priors

    device = torch.device("cpu")
    networks = load_networks(None, "none", device)
    defective = read_mask(source)
    model_input = model_grid_input(defective, networks.info, straighten_head(defective).axes)
    priors_s = None
    if networks.info.priors:
        start = time.perf_counter()
        model_input.priors = estimate_priors(model_input.cropped.array, model_input.cropped.spacing[0])
        priors_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        coarse_skull(model_input, networks, device)
        times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times), "passes": len(AUGMENTED_PASSES), "times_s": times,
            "priors_s": priors_s, "grid": list(model_input.cropped.shape), "model": networks.info.name}


def _rows(runs: Dict[str, dict], network: dict) -> List[list]:
    """Stages, the rest (start-up, imports, exit), total, bytes and peak memory, one column per run
    (and after/before for two), then the network alone."""
    stages: List[str] = []
    for run in runs.values():
        stages += [stage for stage in run["timings_s"] if stage not in stages]
    lines = [(f"stage: {stage}", [run["timings_s"].get(stage) for run in runs.values()], _seconds) for stage in stages]
    lines += [
        ("start-up, imports, exit (the rest)", [run["wall_s"] - sum(run["timings_s"].values()) for run in runs.values()],
         _seconds),
        ("**end to end**", [run["wall_s"] for run in runs.values()], lambda value: f"**{value:.1f} s**"),
        ("**written**", [run["bytes_written"] for run in runs.values()], lambda value: f"**{value / 1e6:.1f} MB**"),
        ("peak memory", [run["peak_mb"] for run in runs.values()], lambda value: f"{value:,.0f} MB"),
    ]
    rows = []
    for label, values, shown in lines:
        row = [label, *("" if value is None else shown(value) for value in values)]
        if len(values) == 2:
            row.append(f"{values[1] / values[0]:.2f}x" if values[0] and values[1] is not None else "")
        rows.append(row)
    blank = [""] * (len(runs) - 1 + (len(runs) == 2))
    if network.get("priors_s") is not None:
        rows.append([f"priors alone ({network['model']})", _seconds(network["priors_s"]), *blank])
    rows.append([f"network alone ({network['passes']} passes, {network['model']})", _seconds(network["seconds"]), *blank])
    return rows


def _seconds(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.2f} s"


def run(data_root: Path, case: str, output_dir: Path, timeout_s: float, baseline: Optional[Path] = None) -> dict:
    if baseline is not None and not (Path(baseline) / "SparseImplantLib" / "__init__.py").is_file():
        # The child would import this version instead and measure it twice under two names.
        raise SparseImplantError(f"--baseline '{baseline}' holds no SparseImplantLib/: give the root of another "
                                 "version's source tree")
    source = Path(data_root) / "defective_skull" / f"{case}.nrrd"
    for tree in filter(None, (Path(__file__).resolve().parents[2], baseline)):
        compiled_package(Path(tree))
    runs: Dict[str, dict] = {}
    if baseline is not None:
        runs["before"] = run_job(source, timeout_s, Path(baseline))
    runs["after" if baseline is not None else "this version"] = run_job(source, timeout_s)
    network = network_seconds(source)
    current = list(runs.values())[-1]
    headers = ["what", *runs, *(["after/before"] if baseline else [])]
    table = markdown_table(headers, _rows(runs, network))
    met = [f"end to end {current['wall_s']:.1f} s (target <= {TARGET_SECONDS:.0f} s: "
           f"{'met' if current['wall_s'] <= TARGET_SECONDS else 'missed'})",
           f"written {current['bytes_written'] / 1e6:.1f} MB (target <= {TARGET_MEGABYTES:.0f} MB: "
           f"{'met' if current['bytes_written'] <= TARGET_MEGABYTES * 1e6 else 'missed'})"]
    compared = f"before: the package in {baseline}; after: this one; " if baseline else ""
    waiting = current["threads"].get("omp_wait_policy", "default")
    notes = (f"`sparseimplant generate` with its defaults on SkullFix case {case}, CPU ({current['threads']['torch']} "
             f"torch threads, OMP_WAIT_POLICY {waiting}), {compared}one run of each in this benchmark run; stage times "
             f"from report.json, end to end from process start to exit. "
             f"{'; '.join(met)}. Files written by this version: "
             + ", ".join(f"{name} {size / 1e6:.1f} MB" for name, size in current["files"].items()) + ".")
    data = {"case": case, "runs": runs, "network_alone": network,
            "targets": {"seconds": TARGET_SECONDS, "megabytes": TARGET_MEGABYTES}}
    write_results(output_dir, "generate", data, table, notes)
    return data
