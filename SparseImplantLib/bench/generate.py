"""The main job end to end (``sparseimplant generate``) on a full-resolution SkullFix case: wall time,
stage timings from report.json and the subprocess's peak memory; plus one sparse forward pass at full
512^2 x Z resolution (issue target: <= 60 s and <= 6 GB on 2 CPU cores)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..contract import REPORT_FILE
from .network import _spawn
from .report import markdown_table, write_results


# Runs the CLI and, at exit, writes the process's own peak RSS (VmHWM) to the file named by argv[1]:
# ru_maxrss of RUSAGE_CHILDREN cannot be used, Linux carries the parent's peak over into a fresh child.
_CLI_WITH_PEAK = (
    "import atexit, sys; from pathlib import Path; from SparseImplantLib.bench.memory import peak_rss_mb; "
    "from SparseImplantLib.cli import main; peak_file = Path(sys.argv.pop(1)); "
    "atexit.register(lambda: peak_file.write_text(str(peak_rss_mb()))); sys.exit(main(sys.argv[1:]))"
)


def run(data_root: Path, case: str, output_dir: Path, model: str | None, timeout_s: float) -> dict:
    source = Path(data_root) / "defective_skull" / f"{case}.nrrd"
    with tempfile.TemporaryDirectory() as folder:
        peak_file = Path(folder) / "peak_mb.txt"
        results = Path(folder) / "out"
        command = [sys.executable, "-c", _CLI_WITH_PEAK, str(peak_file), "generate", str(source), "-o", str(results),
                   "--progress", "none", "--device", "cpu"]
        reference = Path(data_root) / "implant" / f"{case}.nrrd"
        if reference.is_file():
            command += ["--reference", str(reference)]
        if model:
            command += ["--model", model]
        start = time.perf_counter()
        subprocess.run(command, check=True, timeout=timeout_s)
        wall = time.perf_counter() - start
        peak_mb = float(peak_file.read_text())
        report = json.loads((results / REPORT_FILE).read_text())
    forward = _spawn("sparse", 512, "inference", data_root, case, "ch1", timeout_s)
    rows = [["generate (end to end)", round(wall, 1), round(peak_mb)]]
    rows += [[f"  stage: {stage}", round(seconds, 1), ""] for stage, seconds in report["timings_s"].items()]
    rows.append(["sparse forward, full 512²xZ, ch1", round(forward.get("seconds", float("nan")), 1),
                 round(forward.get("peak_mb", float("nan")))])
    table = markdown_table(["what", "seconds", "peak MB (process)"], rows)
    notes = (f"SkullFix case {case} ({report['voxels']['defective']:,} input voxels), model {report['model']['name']} at "
             f"{report['model']['spacing_mm']} mm; full-resolution forward with oracle pruning, "
             f"{forward.get('max_layer_voxels', 0):,} voxels in its largest layer. Metrics: {report.get('metrics')}.")
    data = {"case": case, "wall_s": wall, "peak_mb": peak_mb, "report": report, "full_resolution_forward": forward}
    write_results(output_dir, "generate", data, table, notes)
    return data
