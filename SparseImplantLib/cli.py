"""``sparseimplant``: the command line of SparseImplantLib (generate, evaluate, train, bench).

User errors (``SparseImplantError``) end as one line ``sparseimplant: error: ...`` on stderr and exit
code 1; the Slicer module shows that line in a message box. SIGTERM stops a run like Ctrl-C does, so
its staging folder is removed on the way out.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import threading
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import List, Optional

from .contract import DEVICES, ERROR_PREFIX, MESH_FORMATS, METHODS, WARNING_PREFIX, designer_in_words
from .errors import SparseImplantError
from .process import keep_freed_memory, leave_now
from .progress import PROGRESS_PREFIX, ProgressCallback, ProgressEvent, TerminalProgress

EXIT_USER_ERROR = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt so the same clean-up runs."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


class ProgressBar:
    """A terminal bar drawn from the first progress event on: a run refused while its inputs are
    checked (before any event) ends with its one-line error alone, not below an empty 0 % bar."""

    def __init__(self) -> None:
        self._bar: Optional[TerminalProgress] = None

    def __call__(self, event: ProgressEvent) -> None:
        if self._bar is None:
            self._bar = TerminalProgress()
        self._bar(event)

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


def _check_numbers(args: argparse.Namespace) -> None:
    """NaN or infinity in a numeric option silently yields nonsense (e.g. empty implants): refuse it."""
    for key, value in vars(args).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise SparseImplantError(f"--{key.replace('_', '-')} is {value}: give a finite number")


def _register_generate(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="complete a defective skull and design its implant",
        description="Complete a defective skull with the sparse CNN and write the completed skull, the implant "
        "(masks and meshes), a signed-distance map, a preview PNG and report.json into OUTDIR.",
    )
    parser.add_argument("input", type=Path, help="defective skull: binary mask (.nrrd, .seg.nrrd, .nii, .nii.gz) or CT with --threshold")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUTDIR", help="output folder (created if needed)")
    parser.add_argument("--model", help="model name from Resources/Models/registry.json (default: the bundled completion model)")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="auto = CUDA when available, else CPU")
    parser.add_argument("--label", type=int, help="label value of the skull in a multi-label file")
    parser.add_argument("--threshold", type=float, metavar="HU", help="input is a CT volume: bone is >= HU (e.g. 300)")
    parser.add_argument("--reference", type=Path, help="ground-truth implant mask: adds DSC/border DSC/HD95 and distances against it")
    parser.add_argument("--mesh-formats", default="stl", help=f"comma-separated, from {','.join(MESH_FORMATS)} (default: stl)")
    parser.add_argument("--progress", choices=("bar", "json", "none"), default="bar", help="terminal bar, JSON lines (for Slicer) or nothing")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the results already in OUTDIR (an earlier run's files this run does not write go too)")
    parser.add_argument("--model-dir", type=Path, help="folder with registry.json and weights (default: Resources/Models)")
    parser.add_argument("--no-preview", action="store_true", help="do not render preview.png (the Slicer module draws its own views)")
    parser.add_argument("--full-resolution-meshes", action="store_true",
                        help="write the whole skulls' meshes at full resolution (default: display meshes with a fifth "
                             "of the triangles, within 0.8 mm; the implant mesh is always full resolution)")
    _add_network_choices(parser)
    parser.set_defaults(func=_run_generate)


def _add_network_choices(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--refine-model", default="auto", metavar="NAME|auto|none",
                        help="super-resolution model that redraws the implant region on its finer grid: auto (default) "
                             "= the registry's model made for the completion model's grid, if there is one (one trained "
                             "on that model's own predictions first); none = resample the completion model's output directly")
    parser.add_argument("--test-time-augmentation", action=argparse.BooleanOptionalAction, default=True,
                        help="average four network passes (left-right flip x grid shift; default); without it, one pass: "
                             "a quarter of the network's compute for a slightly lower implant DSC (README, Bundled model)")
    parser.add_argument("--method", choices=METHODS, default="auto",
                        help="how the skull is completed: auto (default) = the network, or, where it leaves most of "
                             "the bone the fitted skull shape fills open (or fills under 90 %% of it where that shape "
                             "meets the bone around the opening well), the fitted skull shape (the report's "
                             "completed_by says which, with a note or warning); network = the "
                             "network alone; or one of the patient's own priors alone: mirror (the healthy side "
                             "mirrored) or fitted (the training skulls' shape model or their mean skull, fitted to this one, "
                             "or for an opening on one side the mirror image, whichever meets the bone around the "
                             "opening best). README, Defects anywhere")
    parser.add_argument("--straighten", action=argparse.BooleanOptionalAction, default=True,
                        help="level the plane where the scan ends below the skull and turn the head to face forward before "
                             "the network sees it (default); without it, the skull as it lies on L, P, S axes (README, How it works)")


def _network_options(args: argparse.Namespace) -> dict:
    """The ``GenerateOptions`` fields that generate and predict share (``_add_network_choices``, model, device)."""
    return {"model": args.model, "device": args.device, "model_dir": args.model_dir, "overwrite": args.overwrite,
            "refine_model": args.refine_model, "test_time_augmentation": args.test_time_augmentation,
            "straighten": args.straighten, "method": args.method}


def _without_done(report: ProgressCallback) -> ProgressCallback:
    """``report`` for every event but the pipeline's "done": the CLI writes that one itself, with the outcome."""

    def forward(event: ProgressEvent) -> None:
        if event.stage != "done":
            report(event)

    return forward


def _done_line(report: dict, output: Path, message: str) -> str:
    """The last JSON progress line: the "done" event with what the bar's summary says, as data."""
    from .evaluate import json_safe

    summary = {"output": str(output), "device": report["device"], "implant_voxels": report["voxels"]["implant"],
               "implant_volume_ml": report["implant_volume_ml"], "completed_by": report["completed_by"],
               "warnings": report["warnings"], "notes": report["notes"], "metrics": report.get("metrics")}
    return PROGRESS_PREFIX + json.dumps(json_safe({**asdict(ProgressEvent("done", 1.0, message)), "summary": summary}))


def _run_generate(args: argparse.Namespace) -> int:
    from .pipeline.generate import GenerateOptions, generate
    from .progress import ignore_progress, json_lines_progress

    options = GenerateOptions(
        **_network_options(args),
        label=args.label,
        threshold_hu=args.threshold,
        reference=args.reference,
        mesh_formats=tuple(f.strip().lower() for f in args.mesh_formats.split(",") if f.strip()),
        preview=not args.no_preview,
        full_resolution_meshes=args.full_resolution_meshes,
    )
    if args.progress == "bar":
        with ProgressBar() as bar:
            report = generate(args.input, args.output, options, bar)
    else:
        progress = _without_done(json_lines_progress()) if args.progress == "json" else ignore_progress
        report = generate(args.input, args.output, options, progress)
    designer = "" if report["completed_by"] == "network" else f", designed by the {designer_in_words(report)}"
    summary = (f"implant: {report['voxels']['implant']} voxels ({report['implant_volume_ml']} ml){designer} on "
               f"{report['device']}; results in {args.output}")
    if args.progress == "json":
        print(_done_line(report, args.output, summary), flush=True)
        return 0
    print(summary)
    for note in report["notes"]:
        print(f"  note: {note}")
    for name, value in report.get("metrics", {}).items():
        print(f"  {name}: {value:.4f}" if value is not None else f"  {name}: n/a")
    return 0


def _register_predict(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="batch prediction over a SkullFix/SkullBreak folder (masks only, for evaluate)",
        description="Predict completed skulls and implants for every selected case of a data folder (ground-truth "
        "implants are not needed); writes OUTDIR/<case>/completed_skull.nrrd and implant.nrrd, the layout "
        "'sparseimplant evaluate' reads, and OUTDIR/<case>/report.json (warnings, pose, priors, implant volume, "
        "device, stage times); ends with the doubtful cases (those with warnings), also in "
        "OUTDIR/predict_summary.json.",
    )
    parser.add_argument("--data", type=Path, required=True, help="data root (SkullFix or SkullBreak layout)")
    parser.add_argument("--cases", help="case ids, e.g. 050-059 (default: all)")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUTDIR")
    parser.add_argument("--model", help="model name from the registry (default: the bundled completion model)")
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument("--model-dir", type=Path, help="folder with registry.json and weights")
    parser.add_argument("--overwrite", action="store_true", help="replace the predictions already in OUTDIR's case folders")
    parser.add_argument("--progress", choices=("bar", "json", "none"), default="bar",
                        help="terminal bar, JSON lines (the last one, \"done\", with the summary) or nothing")
    parser.add_argument("--keep-logit", type=float, help="override the model's pruning threshold (for tuning on training cases)")
    _add_network_choices(parser)
    parser.set_defaults(func=_run_predict)


def _run_predict(args: argparse.Namespace) -> int:
    from .contract import PREDICT_SUMMARY_FILE
    from .data.datasets import parse_case_range
    from .pipeline.generate import GenerateOptions
    from .pipeline.predict import predict_cases
    from .progress import ignore_progress, json_lines_progress

    cases = parse_case_range(args.cases) if args.cases else None
    options = GenerateOptions(**_network_options(args), keep_logit=args.keep_logit)

    def predict(progress: ProgressCallback) -> list:
        return predict_cases(args.data, args.output, cases, options, progress)

    if args.progress == "bar":
        with ProgressBar() as bar:
            records = predict(bar)
    elif args.progress == "json":  # to sys.stdout as it is now, like the done line (the default is the one at import)
        records = predict(_without_done(json_lines_progress(sys.stdout)))
    else:
        records = predict(ignore_progress)
    summary_path = args.output / PREDICT_SUMMARY_FILE
    summary = (json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file()
               else {"cases": [], "doubtful": []})  # no case was predicted
    lines = _predict_summary_lines(summary, summary_path)
    if args.progress == "json":
        print(_predict_done_line(summary, records, args.output, summary_path, lines[-1]), flush=True)
        return 0
    for record in records:
        count = len(record["warnings"])
        warned = f" ({count} warning{'s' if count != 1 else ''})" if count else ""
        seconds = sum(record["timings_s"].values())
        print(f"{record['case']}: implant {record['implant_volume_ml']:.1f} ml, {seconds:.1f} s on {record['device']}{warned}")
    for line in lines:
        print(line)
    return 0


def _predict_summary_lines(summary: dict, summary_path: Path) -> List[str]:
    """One line per doubtful case (its first warning), then the count and where the summary is."""
    lines = []
    for case in summary["doubtful"]:
        count = len(case["warnings"])
        lines.append(f"doubtful: {case['case']} ({count} warning{'s' if count != 1 else ''}): {case['warnings'][0]}")
    total = len(summary["cases"])
    if not total:
        return lines + ["no case predicted"]
    where = f"summary in {summary_path}"
    if summary["doubtful"]:
        return lines + [f"{len(summary['doubtful'])} of {total} case(s) doubtful: review them first; {where}"]
    return lines + [f"no doubtful case among {total}; {where}"]


def _predict_done_line(summary: dict, records: list, output: Path, summary_path: Path, message: str) -> str:
    """predict's last JSON progress line: "done" with predict_summary.json's content, where it is, and
    which cases this run predicted (the summary covers every case folder of OUTDIR)."""
    from .evaluate import json_safe

    data = {**summary, "output": str(output), "summary_file": str(summary_path),
            "run_cases": [record["case"] for record in records]}
    return PROGRESS_PREFIX + json.dumps(json_safe({**asdict(ProgressEvent("done", 1.0, message)), "summary": data}))


def _register_evaluate(subparsers: argparse._SubParsersAction) -> None:
    from .data.datasets import LAYOUTS, SKULLBREAK_DEFECT_TYPES
    from .evaluate import REPORT_JSON, REPORT_MARKDOWN

    parser = subparsers.add_parser(
        "evaluate",
        help="score predicted implants against SkullFix/SkullBreak ground truth (DSC, bDSC, HD95)",
        description="Score DIR/<case>/implant.nrrd (and completed_skull.nrrd if present) against the data set's"
        " ground truth; writes evaluation.md and evaluation.json.",
    )
    parser.add_argument("--predictions", required=True, metavar="DIR", help="folder with one sub-folder per case")
    parser.add_argument("--data", required=True, metavar="ROOT", help="data set root (complete_skull/, defective_skull/, implant/)")
    parser.add_argument("--cases", type=_case_list, metavar="LIST", help="case ids, e.g. 050-059,061 (default: all)")
    parser.add_argument("--layout", choices=LAYOUTS, help="data set layout (default: detected)")
    parser.add_argument(
        "--defect-types",
        type=lambda text: [t.strip() for t in text.split(",") if t.strip()],
        metavar="LIST",
        help=f"SkullBreak defect types, comma-separated (default: all of {','.join(SKULLBREAK_DEFECT_TYPES)})",
    )
    parser.add_argument("-o", "--output", metavar="OUTDIR", help=f"where {REPORT_MARKDOWN} and {REPORT_JSON} go (default: DIR)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation's reports in OUTDIR")
    parser.set_defaults(func=_run_evaluate)


def _case_list(text: str) -> List[str]:
    from .data.datasets import parse_case_range

    try:
        return parse_case_range(text)
    except SparseImplantError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _run_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import REPORT_JSON, REPORT_MARKDOWN, evaluate_folders, markdown_table

    with ProgressBar() as bar:
        rows, summary = evaluate_folders(
            args.predictions, args.data, args.cases, args.layout, args.defect_types, args.output, progress=bar,
            overwrite=args.overwrite,
        )
    print(markdown_table(rows, summary), end="")
    output = Path(args.output) if args.output else Path(args.predictions)
    print(f"written: {output / REPORT_MARKDOWN}, {output / REPORT_JSON}")
    return 0


def _register_register_model(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "register-model",
        help="add a trained model to a model folder's registry (with its validation metrics)",
        description="Copy RUN/model.safetensors (checked against RUN/model.json) into the model folder as "
        "<name>.safetensors and add or replace its registry entry; --evaluation attaches evaluate's JSON.",
    )
    parser.add_argument("run", type=Path, help="output folder of 'sparseimplant train'")
    parser.add_argument("--evaluation", type=Path, help="evaluation.json written by 'sparseimplant evaluate'")
    parser.add_argument("--model-dir", type=Path, help="model folder (default: Resources/Models)")
    parser.add_argument("--keep-logit", type=float, help="pruning threshold stored with the model (default 0)")
    parser.add_argument("--generalization", type=Path,
                        help="generalization.json written by 'sparseimplant bench generalization' for this model")
    parser.set_defaults(func=_run_register_model)


def _run_register_model(args: argparse.Namespace) -> int:
    from .models.registry import register_trained_model

    info = register_trained_model(args.run, args.model_dir, args.evaluation, args.keep_logit, args.generalization)
    print(f"registered '{info.name}' ({info.path}, sha256 {info.sha256[:12]}...)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparseimplant", description="Sparse CNN skull completion and cranial implant design.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _register_generate(subparsers)
    _register_predict(subparsers)
    _register_evaluate(subparsers)
    _register_register_model(subparsers)
    from . import train
    from .bench import commands as bench

    for module in (train, bench):
        module.register(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """The command line. Run as the program (no ``argv``), ``generate`` and ``predict`` have the process to
    themselves: they tune its allocator first (``process.keep_freed_memory``) and end it at once
    (``process.leave_now``)."""
    args = build_parser().parse_args(argv)
    own_process = argv is None and args.func in (_run_generate, _run_predict)
    if own_process:
        keep_freed_memory()
    code = _run(args)
    if own_process:
        leave_now(code)
    return code


def _run(args: argparse.Namespace) -> int:
    warnings.formatwarning = lambda message, category, *rest: f"{WARNING_PREFIX}{message}\n"
    in_main_thread = threading.current_thread() is threading.main_thread()  # only it may set handlers
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        _check_numbers(args)
        return int(args.func(args) or 0)
    except SparseImplantError as error:
        print(f"{ERROR_PREFIX}{error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as stop:
        terminated = isinstance(stop, Terminated)
        print(f"{ERROR_PREFIX}{'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


if __name__ == "__main__":
    sys.exit(main())
