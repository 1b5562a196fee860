"""Command line of the benchmarks: ``python -m SparseImplantLib.bench BENCHMARK`` or ``sparseimplant bench BENCHMARK``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import List, Optional

DEFAULT_OUTPUT = Path("results") / "bench"
DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "skullfix"


def _modes(text: str) -> List[str]:
    modes = text.split(",")
    unknown = sorted(set(modes) - {"inference", "train"})
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown mode {', '.join(unknown)}: choose from inference,train")
    return modes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    engine = commands.add_parser("engine", help="3x3x3 8->8 convolution on ~1M voxels, this engine vs MinkowskiEngine")
    engine.add_argument("--voxels", type=int, default=1_000_000)
    engine.add_argument("--channels", type=int, default=8)
    engine.add_argument("--repeats", type=int, default=3)
    network = commands.add_parser("network", help="completion network, sparse vs dense twin, 64^2 to 512^2 grids")
    network.add_argument("--sizes", default="64,128,256,512", help="in-plane grid sizes from 64,128,256,512")
    network.add_argument("--modes", default="inference,train", type=_modes, help="comma-separated, from inference,train")
    network.add_argument("--channels", default="ch1", choices=("ch1", "ch2"))
    generate = commands.add_parser("generate", help="sparseimplant generate end to end on a full-resolution case")
    generate.add_argument("--model", help="registry model name (default: the bundled model)")
    for sub in (network, generate):
        sub.add_argument("--data", type=Path, default=DEFAULT_DATA, help="SkullFix folder (default: ../shared/data/skullfix)")
        sub.add_argument("--case", default="050")
        sub.add_argument("--timeout", type=float, default=1800.0, help="seconds per measured process")
    worker = commands.add_parser("worker")  # one network measurement in a fresh process (used by 'network')
    worker.add_argument("--method", required=True)
    worker.add_argument("--size", type=int, required=True)
    worker.add_argument("--mode", required=True)
    worker.add_argument("--data", type=Path, required=True)
    worker.add_argument("--case", required=True)
    worker.add_argument("--channels", default="ch1")
    for sub in (engine, network, generate):
        sub.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT, help=f"results folder (default: {DEFAULT_OUTPUT})")


def run(args: argparse.Namespace) -> int:
    if args.benchmark == "engine":
        from . import engine

        engine.run(args.voxels, args.channels, args.repeats, args.output)
    elif args.benchmark == "network":
        from . import network

        sizes = [int(s) for s in args.sizes.split(",")]
        network.run(args.data, args.case, sizes, args.channels, args.output, args.timeout, args.modes)
    elif args.benchmark == "generate":
        from . import generate

        generate.run(args.data, args.case, args.output, args.model, args.timeout)
    else:
        from .network import worker

        print(json.dumps(worker(args.method, args.size, args.mode, args.data, args.case, args.channels)))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks: engine, network (sparse vs dense), generate",
                                   description="Benchmarks that print a table and write JSON/Markdown under results/bench/.")
    add_arguments(parser)
    parser.set_defaults(func=run)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m SparseImplantLib.bench", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
