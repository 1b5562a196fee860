"""Command line of the benchmarks: ``python -m SparseImplantLib.bench BENCHMARK`` or ``sparseimplant bench BENCHMARK``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from ..contract import METHODS
from ..errors import SparseImplantError

# Not results/bench/, whose committed files the README quotes: those are replaced only on purpose (-o results/bench).
DEFAULT_OUTPUT = Path("output") / "bench"
DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "skullfix"


MODES = ("inference", "train")
GRID_SIZES = ("64", "128", "256", "512")  # the keys of network.GRIDS, here so that parsing needs no torch
GENERALIZATION_GROUPS = ("skullfix", "defect", "clinical", "orientation", "rotation", "source")  # generalization.GROUPS
WORKER_METHODS = ("sparse", "dense", "minkowski")  # the methods network.worker measures


def _comma_list(allowed: Sequence[str], what: str) -> Callable[[str], List[str]]:
    """An argparse type: a comma-separated list of ``allowed`` values, rejected as a whole with the choices."""

    def parse(text: str) -> List[str]:
        values = text.split(",")
        unknown = [value for value in values if value not in allowed]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(unknown)}: choose from {','.join(allowed)}")
        return values

    return parse


def _positive_whole_number(text: str) -> int:
    """An argparse type (worded as train's --iterations): zero or a negative count would be measured as
    nonsense (a shell of 8 voxels, the median of no timings)."""
    try:
        value: Optional[int] = int(text)
    except ValueError:
        value = None
    if value is None or value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive whole number")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    engine = commands.add_parser("engine", help="3x3x3 8->8 convolution on ~1M voxels, this engine vs MinkowskiEngine")
    engine.add_argument("--voxels", type=_positive_whole_number, default=1_000_000)
    engine.add_argument("--channels", type=_positive_whole_number, default=8)
    engine.add_argument("--repeats", type=_positive_whole_number, default=3)
    network = commands.add_parser("network", help="completion network, sparse vs dense twin, 64^2 to 512^2 grids")
    network.add_argument("--sizes", default=",".join(GRID_SIZES), type=_comma_list(GRID_SIZES, "grid size"),
                         help=f"in-plane grid sizes, comma-separated, from {','.join(GRID_SIZES)}")
    network.add_argument("--modes", default=",".join(MODES), type=_comma_list(MODES, "mode"),
                         help=f"comma-separated, from {','.join(MODES)}")
    network.add_argument("--channels", default="ch1", choices=("ch1", "ch2"))
    generate = commands.add_parser("generate", help="sparseimplant generate end to end on a full-resolution case")
    generate.add_argument("--baseline", type=Path, metavar="TREE",
                          help="a source tree of another version (with SparseImplantLib/): run it too, for a before/after table")
    general = commands.add_parser("generalization",
                                  help="implants for skulls, defects and files unlike SkullFix's: every defect kind, "
                                       "reoriented, rotated and other-source copies of validation skulls")
    general.add_argument("--data", type=Path, default=DEFAULT_DATA, help="SkullFix folder (default: ../shared/data/skullfix)")
    general.add_argument("--cases", default="050-059", help="validation cases, never trained or tuned on (default 050-059)")
    general.add_argument("--groups", default=",".join(GENERALIZATION_GROUPS),
                         type=_comma_list(GENERALIZATION_GROUPS, "group"),
                         help=f"comma-separated, from {','.join(GENERALIZATION_GROUPS)}")
    general.add_argument("--methods", default=",".join(METHODS), type=_comma_list(METHODS, "method"),
                         help="the designs (auto: the default; network: the network alone), run on every group, and "
                              "the baselines they must beat: the skull completed by its mirror image alone, or by the "
                              f"fitted skull shape alone (SkullFix, defect and clinical groups), from {','.join(METHODS)}")
    general.add_argument("--model", help="registry model name (default: the bundled model)")
    general.add_argument("--model-dir", type=Path, help="folder with registry.json and weights (default: Resources/Models)")
    general.add_argument("--keep-logit", type=float,
                         help="override the model's pruning threshold (to tune it on training cases, never on 050-059)")
    general.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    general.add_argument("--straighten", action=argparse.BooleanOptionalAction, default=True,
                         help="straighten the skulls first, as generate does (default; --no-straighten: as they lie)")
    general.add_argument("--merge", nargs="+", type=Path, metavar="JSON",
                         help="join the generalization.json of runs over different cases (run side by side) into one report")
    for sub in (network, generate):
        sub.add_argument("--data", type=Path, default=DEFAULT_DATA, help="SkullFix folder (default: ../shared/data/skullfix)")
        sub.add_argument("--case", default="050")
        sub.add_argument("--timeout", type=float, default=1800.0, help="seconds per measured process")
    worker = commands.add_parser("worker")  # one network measurement in a fresh process (used by 'network')
    worker.add_argument("--method", required=True, choices=WORKER_METHODS)
    worker.add_argument("--size", type=int, required=True, choices=[int(size) for size in GRID_SIZES])
    worker.add_argument("--mode", required=True, choices=MODES)
    worker.add_argument("--data", type=Path, required=True)
    worker.add_argument("--case", required=True)
    worker.add_argument("--channels", default="ch1", choices=("ch1", "ch2"))
    for sub in (engine, network, generate, general):
        sub.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT, help=f"results folder (default: {DEFAULT_OUTPUT})")


def _check_case(data_root: Path, case: str, folders: Sequence[str]) -> None:
    """Refuse a missing data folder or case before the first measured process starts: each process
    would fail alike, after seconds of start-up, and leave a table of failures."""
    if not Path(data_root).is_dir():
        problem = "is not a folder" if Path(data_root).exists() else "does not exist"
        raise SparseImplantError(f"data folder '{data_root}' {problem}: give the SkullFix folder with --data")
    for folder in folders:
        path = Path(data_root) / folder / f"{case}.nrrd"
        if not path.is_file():
            raise SparseImplantError(f"case {case} has no '{path}': choose another --case, or check --data")


def _read_json(path: Path, option: str) -> dict:
    """A JSON file named on the command line, refused in one line when it is missing or not JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise SparseImplantError(f"cannot read {option} file '{path}' ({error.strerror or error}): check the path") from None
    except ValueError as error:
        raise SparseImplantError(f"{option} file '{path}' is not JSON ({error}): give the file the benchmark wrote") from None


def run(args: argparse.Namespace) -> int:
    if args.benchmark == "engine":
        from . import engine

        engine.run(args.voxels, args.channels, args.repeats, args.output)
    elif args.benchmark == "network":
        from . import network

        _check_case(args.data, args.case, ("defective_skull", "complete_skull"))
        network.run(args.data, args.case, [int(size) for size in args.sizes], args.channels, args.output, args.timeout, args.modes)
    elif args.benchmark == "generate":
        from . import generate

        _check_case(args.data, args.case, ("defective_skull",))
        generate.run(args.data, args.case, args.output, args.timeout, args.baseline)
    elif args.benchmark == "generalization":
        from ..data.datasets import parse_case_range
        from . import generalization

        if args.merge:
            generalization.merge([_read_json(path, "--merge") for path in args.merge], args.output)
            return 0
        generalization.run(args.data, parse_case_range(args.cases), args.output, args.model, args.groups, args.device,
                           args.model_dir, args.keep_logit, straighten=args.straighten, methods=args.methods)
    else:
        from .network import worker

        print(json.dumps(worker(args.method, args.size, args.mode, args.data, args.case, args.channels)))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks: engine, network (sparse vs dense), generate, generalization",
                                   description=f"Benchmarks that print a table and write JSON/Markdown under {DEFAULT_OUTPUT}/ "
                                               "(-o results/bench replaces the README's committed results).")
    add_arguments(parser)
    parser.set_defaults(func=run)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m SparseImplantLib.bench", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
