"""``sparseimplant train``: its arguments."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..models.registry import MODEL_KINDS
from .augment import AUGMENTATION_PRESETS

DEFAULT_NAMES = dict(zip(MODEL_KINDS, ("skullfix-completion", "skullfix-super-resolution")))  # --name by --kind


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text} is not a share between 0 and 1")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive whole number")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="SkullFix root (complete_skull/, defective_skull/, implant/)")
    parser.add_argument("--train-cases", default="000-044", help="case ids, e.g. 000-044")
    parser.add_argument("--val-cases", default="045-049",
                        help="cases whose draws (own defect and every other kind, some turned) are scored during "
                             "training ('' for none); keep the final validation cases out")
    parser.add_argument("-o", "--output", type=Path, required=True, help="run folder: checkpoint, log, final weights")
    parser.add_argument("--name", help="model name written into model.json (default: skullfix-completion, or "
                                       "skullfix-super-resolution with --kind super_resolution)")
    parser.add_argument("--kind", choices=MODEL_KINDS, default=MODEL_KINDS[0],
                        help="completion (defective skull -> complete skull) or super_resolution (the coarse complete "
                             "skull and the defective skull on the --spacing grid -> the skull on that grid)")
    parser.add_argument("--input-spacing", type=float, default=2.0,
                        help="super_resolution: spacing in mm of the coarse grid its input comes from (the completion model's)")
    parser.add_argument("--coarse-model", metavar="NAME",
                        help="super_resolution: learn to refine this registered completion model's predictions of "
                             "each case's own defect (generated defects pair with the target through the coarse grid)")
    parser.add_argument("--priors", action="store_true",
                        help="completion: also give the network the skull's mirror image and the fitted mean skull "
                             "(priors); with --init-model of a model without them, their weights start at zero")
    parser.add_argument("--channels", help="ch1 (default), ch2 or 7 comma-separated widths")
    parser.add_argument("--init-model", metavar="NAME",
                        help="fine-tune this registered model (its weights and channels; new optimiser and schedule)")
    parser.add_argument("--model-dir", type=Path, help="folder with registry.json for --init-model and --coarse-model (default: Resources/Models)")
    parser.add_argument("--spacing", type=float, default=2.0, help="isotropic working grid spacing in mm")
    parser.add_argument("--margin-mm", type=float, default=20.0, help="crop margin around the defective skull")
    parser.add_argument("--iterations", type=_positive, default=20000,
                        help="the run's planned length: the learning rate decays over it (resume with more to extend it)")
    parser.add_argument("--batch-size", type=int, default=1, help="skulls per process and iteration")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--augmentation", choices=AUGMENTATION_PRESETS, default="full",
                        help="full: pose, every defect kind and bone variations; defects: every defect kind on the "
                             "skull as it is; none: each case's own defect only")
    parser.add_argument("--own-defects", type=_share, metavar="P",
                        help="share of draws that keep the case's own defect (default: 0.2; 1 with --augmentation none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, choices=range(0, 9), default=0, metavar="N",
                        help="processes that prepare the next draws while the network trains (0: in the training "
                             "process; on 2 CPU cores a worker only competes with the network, on a GPU it pays)")
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--val-every", type=int, default=500)
    parser.add_argument("--checkpoint-every", type=int, default=250)
    parser.add_argument("--cache", type=Path, help="folder for prepared cases (default: OUTPUT/cache)")
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoint.pt")


def _run(args: argparse.Namespace) -> int:
    from .loop import train

    if args.name is None:  # a refinement model must not take the completion model's name in a registry
        args.name = DEFAULT_NAMES[args.kind]
    train(args)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train a completion or super-resolution network (torchrun for several processes)",
                                   description="Train the completion or the super-resolution network on SkullFix cases.",
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(func=_run)
