"""Training of the completion and super-resolution networks: the paper's loss, Adam, checkpoints,
resume, DDP.

One process trains on one CPU or GPU; ``torchrun --nproc_per_node N -m SparseImplantLib.train ...``
(or ``sparseimplant train`` under torchrun) trains data-parallel with DDP (NCCL on GPUs, Gloo on CPU).
Skulls are resampled once to the model grid and cached as voxel coordinates, so an iteration costs
only the network. Progress goes to ``train_log.jsonl`` in the output folder (and the terminal).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist

from .errors import SparseImplantError
from .io import atomic_write
from .models.completion import CHANNEL_PRESETS, CompletionNet, completion_loss
from .models.registry import MODEL_KINDS, ModelInfo, find_model, load_network, save_network
from .inference import OUTPUT_SMOOTHING, Networks, coarse_skull, load_networks
from .sparse import SparseTensor, batch_coordinates
from .superres import INPUT_CHANNELS, Box, batch_input, input_voxels, refine_box, upsample_coarse
from .volume import Volume, crop, foreground_box, grid_with_spacing, resample_mask

MIN_KEPT_FRACTION = 0.6  # a generated defect must leave this share of the skull
DATA_LICENCE = "CC BY-NC-SA 4.0 (trained on SkullFix, derived from CQ500): non-commercial use only"


COMPLETION, SUPER_RESOLUTION = MODEL_KINDS


@dataclass
class TrainingSample:
    """One skull on the model grid, cropped like inference crops it: voxel coordinates (N, 3), and the
    grid's direction (defects are placed by anatomical region). For super-resolution, ``coarse`` holds
    the complete skull as the coarse grid shows it, upsampled to this grid like inference upsamples, and
    ``predicted`` (with ``--coarse-model``) a completion model's skull for the case's own defect, upsampled
    the same way."""

    case: str
    defective: np.ndarray
    complete: np.ndarray
    shape: tuple
    direction: np.ndarray
    coarse: Optional[np.ndarray] = None
    predicted: Optional[np.ndarray] = None

    def input_coarse(self, own_defect: bool = True) -> Optional[np.ndarray]:
        """The coarse skull to pair with a defect: the prediction when there is one for this (the case's
        own) defect, else the complete skull through the coarse grid (a generated defect has no prediction)."""
        return self.predicted if own_defect and self.predicted is not None else self.coarse

    def complete_volume(self, spacing: Sequence[float]) -> Volume:
        array = np.zeros(self.shape, np.uint8)
        array[tuple(self.complete.T)] = 1
        return Volume(array, spacing, (0.0, 0.0, 0.0), self.direction)


def _grid_sample(case: str, defective: Volume, complete: Volume, spacing: Sequence[float], margin_mm: float,
                 input_spacing: Optional[Sequence[float]] = None) -> TrainingSample:
    grid, defective_grid, box = _sample_grid(defective, spacing, margin_mm)
    complete_grid = resample_mask(complete, grid).array | defective_grid
    arrays = [defective_grid, complete_grid]
    if input_spacing is not None:  # the complete skull through the coarse grid and back, as inference sees it
        coarse = resample_mask(complete, grid_with_spacing(defective, input_spacing))
        arrays.append(upsample_coarse(coarse.with_array(coarse.array.astype(np.float32)), grid, OUTPUT_SMOOTHING))
    voxels = [_box_voxels(grid.with_array(a), box) for a in arrays]
    shape = tuple(s.stop - s.start for s in box)
    return TrainingSample(case, voxels[0], voxels[1], shape, defective.direction, voxels[2] if input_spacing else None)


def _sample_grid(defective: Volume, spacing: Sequence[float], margin_mm: float) -> Tuple[Volume, np.ndarray, Box]:
    """The model grid over ``defective``, the defective skull on it, and the training crop box."""
    grid = grid_with_spacing(defective, spacing)
    defective_grid = resample_mask(defective, grid).array
    return grid, defective_grid, foreground_box(defective_grid, int(np.ceil(margin_mm / min(spacing))))


def _box_voxels(mask: Volume, box: Box) -> np.ndarray:
    return np.argwhere(crop(mask, box).array).astype(np.int32)


def _predicted_coarse(defective: Volume, networks: Networks, spacing: Sequence[float], margin_mm: float) -> np.ndarray:
    """The completion network's skull for ``defective``, exactly as inference hands it to a refiner
    (averaged passes, upsampled to the ``spacing`` grid), as voxels of the training crop."""
    grid, _, box = _sample_grid(defective, spacing, margin_mm)
    coarse, _ = coarse_skull(defective, networks, next(networks.completion.parameters()).device)
    return _box_voxels(grid.with_array(upsample_coarse(coarse, grid, OUTPUT_SMOOTHING)), box)


def load_samples(data_root: Path, cases: Sequence[str], spacing: Sequence[float], margin_mm: float,
                 cache_dir: Path, input_spacing: Optional[Sequence[float]] = None,
                 coarse_networks: Optional[Networks] = None) -> List[TrainingSample]:
    """Cases of a SkullFix/SkullBreak folder on the model grid, from the cache when it holds them;
    ``input_spacing`` (super-resolution) adds the coarse view of each complete skull and
    ``coarse_networks`` a completion model's prediction for each case's own defect (cached apart,
    under the model's checksum and pruning threshold)."""
    from .data.datasets import list_cases

    cache_dir.mkdir(parents=True, exist_ok=True)
    tag = "x".join(f"{s:g}" for s in spacing) + f"_m{margin_mm:g}"
    if input_spacing is not None:
        tag += "_from" + "x".join(f"{s:g}" for s in input_spacing)
    samples = []
    for files in list_cases(data_root, cases=cases):
        cached = cache_dir / f"{files.key.replace('/', '_')}_{tag}.npz"
        case = None
        if cached.is_file():
            data = np.load(cached)
            direction = data["direction"] if "direction" in data else _direction_of(files.defective_path)
            samples.append(TrainingSample(files.key, data["defective"], data["complete"], tuple(data["shape"]), direction,
                                          data["coarse"] if "coarse" in data else None))
        else:
            case = files.load()
            complete = case.complete or case.defective.with_array(case.defective.array | case.implant.array)
            sample = _grid_sample(files.key, case.defective, complete, spacing, margin_mm, input_spacing)
            extra = {"coarse": sample.coarse} if sample.coarse is not None else {}
            atomic_write(cached, lambda tmp: np.savez(tmp, defective=sample.defective, complete=sample.complete,
                                                      shape=np.array(sample.shape), direction=sample.direction, **extra))
            samples.append(sample)
        if coarse_networks is not None:
            model = coarse_networks.info  # its weights and its pruning threshold decide the prediction
            predicted = cached.with_name(f"{cached.stem}_predicted-{model.sha256[:12]}_k{model.keep_logit:g}.npy")
            if not predicted.is_file():
                defective = (case or files.load()).defective
                voxels = _predicted_coarse(defective, coarse_networks, spacing, margin_mm)
                atomic_write(predicted, lambda tmp: np.save(tmp, voxels))
            samples[-1].predicted = np.load(predicted)
    return samples


def _direction_of(path: Path) -> np.ndarray:
    """Direction matrix from a file's header only (for caches written without it)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return np.array(reader.GetDirection()).reshape(3, 3)


@dataclass
class Example:
    """One network input (voxels (N, 3) and their features (N, C)) with its defective and complete skull."""

    voxels: np.ndarray
    features: np.ndarray
    defective: np.ndarray
    complete: np.ndarray


def augment(sample: TrainingSample, rng: np.random.Generator, spacing: Sequence[float],
            generated_defects: float) -> TrainingSample:
    """With probability ``generated_defects`` a new SkullFix-style defect replaces the case's own; then a
    random left-right flip."""
    from .data.defects import SKULLFIX_BOX, cut_defect

    defective, own_defect = sample.defective.copy(), True
    if rng.random() < generated_defects:
        generated, _ = cut_defect(sample.complete_volume(spacing), SKULLFIX_BOX, rng)
        kept = np.argwhere(generated.array).astype(np.int32)
        if len(kept) >= MIN_KEPT_FRACTION * len(sample.complete):  # small skulls: a box may take most of them
            defective, own_defect = kept, False
    coarse = sample.input_coarse(own_defect)
    voxel_sets = [defective, sample.complete.copy()] + ([coarse.copy()] if coarse is not None else [])
    if rng.random() < 0.5:
        for voxels in voxel_sets:
            voxels[:, 0] = sample.shape[0] - 1 - voxels[:, 0]
    return TrainingSample(sample.case, voxel_sets[0], voxel_sets[1], sample.shape, sample.direction,
                          voxel_sets[2] if coarse is not None else None)


def make_example(sample: TrainingSample, spacing: Sequence[float], rng: Optional[np.random.Generator] = None,
                 generated_defects: float = 0.0) -> Example:
    """The network's view of a sample: the defective skull for completion; for super-resolution the
    box ``superres.refine_box`` cuts from the coarse and defective skulls. With ``rng``: augmented, and
    shifted at random (which changes how voxels fall into the network's coarse cells)."""
    if rng is not None:
        sample = augment(sample, rng, spacing, generated_defects)
    defective, complete, coarse = sample.defective, sample.complete, sample.input_coarse()
    if coarse is None:
        voxels, features = defective, np.ones((len(defective), 1), np.float32)
    else:
        masks = []
        for voxel_set in (coarse, defective, complete):
            mask = np.zeros(sample.shape, np.uint8)
            mask[tuple(voxel_set.T)] = 1
            masks.append(mask)
        box = refine_box(masks[0], masks[1], spacing) or tuple(slice(0, n) for n in sample.shape)
        coarse, defective_box, complete_box = (m[box] for m in masks)
        voxels, features = input_voxels(coarse, defective_box)
        defective, complete = np.argwhere(defective_box), np.argwhere(complete_box)
    shift = rng.integers(0, 16, size=3) if rng is not None else np.zeros(3, np.int64)
    return Example(voxels + shift, features, defective + shift, complete + shift)


def network_input(examples: Sequence[Example], device: torch.device) -> SparseTensor:
    return batch_input([(e.voxels, e.features) for e in examples], device)


def dice_coefficient(a: set, b: set) -> float:
    return 1.0 if not a and not b else 2 * len(a & b) / (len(a) + len(b))


@torch.no_grad()
def validate(network: CompletionNet, samples: Sequence[TrainingSample], spacing: Sequence[float],
             device: torch.device) -> Dict[str, float]:
    """Implant and completed-skull DSC on the model grid, within the refined box for super-resolution
    (quick; full-resolution scores come from ``evaluate``)."""
    was_training = network.training
    network.eval()
    implant_scores, complete_scores = [], []
    for sample in samples:
        example = make_example(sample, spacing)
        result = network(network_input([example], device))
        predicted = {tuple(c) for c in result.output.C[:, 1:].cpu().numpy().tolist()}
        defective = {tuple(c) for c in example.defective.tolist()}
        complete = {tuple(c) for c in example.complete.tolist()}
        complete_scores.append(dice_coefficient(predicted, complete))
        implant_scores.append(dice_coefficient(predicted - defective, complete - defective))
    network.train(was_training)
    return {"val_implant_dice_grid": float(np.mean(implant_scores)), "val_complete_dice_grid": float(np.mean(complete_scores))}


def weights_checksum(network: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(network.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class Distributed:
    """Rank/world of this process; initialises torch.distributed when launched by torchrun."""

    def __init__(self) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            self.device = torch.device("cuda", local_rank)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        if self.world_size > 1:
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def gather_strings(self, value: str) -> List[str]:
        if self.world_size == 1:
            return [value]
        values: List[Optional[str]] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return [str(v) for v in values]

    def share_buffers(self, network: torch.nn.Module) -> None:
        """Give every rank rank 0's batch-norm statistics (DDP syncs gradients, not running stats)."""
        if self.world_size > 1:
            for buffer in network.buffers():
                dist.broadcast(buffer, src=0)

    def close(self) -> None:
        if self.world_size > 1:
            dist.barrier()
            dist.destroy_process_group()


def _parse_channels(text: str) -> tuple:
    if text in CHANNEL_PRESETS:
        return tuple(CHANNEL_PRESETS[text])
    try:
        channels = tuple(int(c) for c in text.split(","))
    except ValueError:
        channels = ()
    if len(channels) != 7 or min(channels) < 1:
        raise SparseImplantError(f"--channels '{text}' is neither ch1, ch2 nor 7 comma-separated positive widths")
    return channels


def _lineage(initial: ModelInfo) -> dict:
    """The start model's identity and its own training record, so a fine-tuned model card shows its whole history."""
    return {"name": initial.name, "sha256": initial.sha256, "training": initial.training}


def _initial_model(args: argparse.Namespace) -> Optional[ModelInfo]:
    """The registered model to fine-tune (``--init-model``): it fixes the channels (and a super-resolution
    model its input grid), and its weights start a fresh optimiser and learning-rate schedule."""
    if not args.init_model:
        return None
    initial = find_model(args.init_model, args.kind, model_dir=args.model_dir)
    if args.channels and _parse_channels(args.channels) != tuple(initial.channels):
        raise SparseImplantError(f"--channels {args.channels} differs from model '{initial.name}' "
                                 f"({','.join(map(str, initial.channels))}): leave --channels out when fine-tuning")
    if args.kind == SUPER_RESOLUTION and initial.input_spacing_mm != _input_spacing(args):
        raise SparseImplantError(f"--input-spacing {args.input_spacing} differs from model '{initial.name}' "
                                 f"({initial.input_spacing_mm}): leave it at the model's value when fine-tuning")
    return initial


def _coarse_model(args: argparse.Namespace) -> Optional[ModelInfo]:
    """The completion model whose predictions a super-resolution model learns to refine (``--coarse-model``);
    it must complete on the ``--input-spacing`` grid."""
    if not args.coarse_model:
        return None
    if args.kind != SUPER_RESOLUTION:
        raise SparseImplantError("--coarse-model is for --kind super_resolution: leave it out to train a completion model")
    model = find_model(args.coarse_model, COMPLETION, model_dir=args.model_dir)
    if any(abs(s - args.input_spacing) > 1e-6 for s in model.spacing_mm):
        raise SparseImplantError(f"--coarse-model '{model.name}' completes on a {model.spacing_mm} mm grid but "
                                 f"--input-spacing is {args.input_spacing}: set --input-spacing to the model's spacing")
    return model


def _input_spacing(args: argparse.Namespace) -> Optional[List[float]]:
    """The coarse grid a super-resolution model's input comes from; None for completion."""
    return [float(args.input_spacing)] * 3 if args.kind == SUPER_RESOLUTION else None


def _check_run_folder(output: Path, checkpoint_path: Path, resume: bool) -> None:
    """Never overwrite a run the user has (hours of CPU), and never silently start over when asked to resume."""
    if resume and not checkpoint_path.is_file():
        raise SparseImplantError(f"nothing to resume: {checkpoint_path} does not exist; drop --resume to start a new run")
    if not resume and (checkpoint_path.is_file() or (output / "model.json").is_file()):
        raise SparseImplantError(f"{output} already holds a training run; pass --resume to continue it "
                                 "or choose another --output folder")


def _truncate_log(log_path: Path, last_iteration: int) -> None:
    """Drop log entries written after the checkpoint: the resumed run repeats those iterations."""
    if not log_path.is_file():
        return
    kept = [line for line in log_path.read_text().splitlines() if json.loads(line)["iteration"] <= last_iteration]
    atomic_write(log_path, lambda tmp: tmp.write_text("".join(line + "\n" for line in kept)))


def train(args: argparse.Namespace) -> dict:
    """Train and return the summary (also written as training_summary.json)."""
    from .data.datasets import parse_case_range

    output = Path(args.output)
    checkpoint_path = output / "checkpoint.pt"
    _check_run_folder(output, checkpoint_path, args.resume)
    initial = _initial_model(args)  # a wrong --init-model, --coarse-model or --channels fails before the folder is made
    coarse_model = _coarse_model(args)
    output.mkdir(parents=True, exist_ok=True)
    cluster = Distributed()
    torch.manual_seed(args.seed)
    channels = tuple(initial.channels) if initial else _parse_channels(args.channels or "ch1")
    spacing = [float(args.spacing)] * 3
    input_spacing = _input_spacing(args)
    train_cases = parse_case_range(args.train_cases)
    val_cases = parse_case_range(args.val_cases) if args.val_cases else []
    cache = Path(args.cache) if args.cache else output / "cache"
    coarse_networks = (load_networks(coarse_model.name, "none", cluster.device, args.model_dir)
                       if coarse_model else None)
    train_samples = load_samples(Path(args.data), train_cases, spacing, args.margin_mm, cache, input_spacing,
                                 coarse_networks)
    val_samples = (load_samples(Path(args.data), val_cases, spacing, args.margin_mm, cache, input_spacing,
                                coarse_networks) if cluster.is_main else [])
    in_channels = INPUT_CHANNELS if input_spacing else 1
    network = (load_network(initial, cluster.device).train() if initial
               else CompletionNet(channels, in_channels).to(cluster.device))
    network.keep_logit = 0.0  # train with the paper's pruning; the inference threshold is tuned at registration
    model: torch.nn.Module = network
    if cluster.world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(network, device_ids=[cluster.device.index] if cluster.device.type == "cuda" else None)
    optimizer = torch.optim.Adam(network.parameters(), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.iterations, eta_min=args.lr * 0.02)
    start, seconds_before = 0, 0.0
    log_path = output / "train_log.jsonl"
    if args.resume:
        state = torch.load(checkpoint_path, map_location=cluster.device, weights_only=False)
        network.load_state_dict(state["network"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, seconds_before = int(state["iteration"]), float(state.get("seconds", 0.0))
        if cluster.is_main:
            _truncate_log(log_path, start)
    rng = np.random.default_rng([args.seed, cluster.rank, start])
    network.train()
    started = time.perf_counter() - seconds_before  # the log and summary count the whole run's training time
    for iteration in range(start, args.iterations):
        batch = [make_example(train_samples[i], spacing, rng, args.generated_defects)
                 for i in rng.integers(0, len(train_samples), size=args.batch_size)]
        result = model(network_input(batch, cluster.device), batch_coordinates([e.complete for e in batch], cluster.device))
        loss = completion_loss(result)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        done = iteration + 1
        if cluster.is_main and (done % args.log_every == 0 or done == args.iterations):
            entry = {"iteration": done, "loss": round(loss.item(), 5), "lr": scheduler.get_last_lr()[0],
                     "output_voxels": len(result.output), "seconds": round(time.perf_counter() - started, 1)}
            if val_samples and (done % args.val_every == 0 or done == args.iterations):
                entry.update(validate(network, val_samples, spacing, cluster.device))
            with open(log_path, "a") as log:
                log.write(json.dumps(entry) + "\n")
            print(json.dumps(entry), flush=True)
        if cluster.is_main and (done % args.checkpoint_every == 0 or done == args.iterations):
            state = {"network": network.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "iteration": done,
                     "seconds": time.perf_counter() - started}
            atomic_write(checkpoint_path, lambda tmp: torch.save(state, tmp))

    cluster.share_buffers(network)
    checksums = cluster.gather_strings(weights_checksum(network))
    summary = {"iterations": args.iterations, "world_size": cluster.world_size, "rank_weight_checksums": checksums,
               "seconds": round(time.perf_counter() - started, 1)}
    if cluster.is_main:
        info = ModelInfo(name=args.name, kind=args.kind, channels=list(channels), spacing_mm=spacing,
                         file="model.safetensors", licence=DATA_LICENCE, crop_margin_mm=args.margin_mm,
                         in_channels=in_channels, input_spacing_mm=input_spacing,
                         training={"data": str(args.data), "cases": args.train_cases, "iterations": args.iterations,
                                   "batch_size": args.batch_size * cluster.world_size, "lr": args.lr, "seed": args.seed,
                                   "generated_defects": args.generated_defects,
                                   **({"initialised_from": _lineage(initial)} if initial else {}),
                                   **({"coarse_model": {"name": coarse_model.name, "sha256": coarse_model.sha256}}
                                      if coarse_model else {})},
                         directory=output)
        save_network(network, info)
        atomic_write(output / "model.json", lambda tmp: tmp.write_text(json.dumps(info.to_json(), indent=2) + "\n"))
        atomic_write(output / "training_summary.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=2) + "\n"))
    cluster.close()
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="SkullFix root (complete_skull/, defective_skull/, implant/)")
    parser.add_argument("--train-cases", default="000-049", help="case ids, e.g. 000-049")
    parser.add_argument("--val-cases", default="050-059", help="validation case ids ('' for none)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="run folder: checkpoint, log, final weights")
    parser.add_argument("--name", default="skullfix-completion", help="model name written into model.json")
    parser.add_argument("--kind", choices=MODEL_KINDS, default=COMPLETION,
                        help="completion (defective skull -> complete skull) or super_resolution (the coarse complete "
                             "skull and the defective skull on the --spacing grid -> the skull on that grid)")
    parser.add_argument("--input-spacing", type=float, default=2.0,
                        help="super_resolution: spacing in mm of the coarse grid its input comes from (the completion model's)")
    parser.add_argument("--coarse-model", metavar="NAME",
                        help="super_resolution: learn to refine this registered completion model's predictions of "
                             "each case's own defect (generated defects still pair with the complete skull through "
                             "the coarse grid)")
    parser.add_argument("--channels", help="ch1 (default), ch2 or 7 comma-separated widths")
    parser.add_argument("--init-model", metavar="NAME",
                        help="fine-tune this registered model (its weights and channels; new optimiser and schedule)")
    parser.add_argument("--model-dir", type=Path, help="folder with registry.json for --init-model and --coarse-model (default: Resources/Models)")
    parser.add_argument("--spacing", type=float, default=1.6, help="isotropic working grid spacing in mm")
    parser.add_argument("--margin-mm", type=float, default=20.0, help="crop margin around the defective skull")
    parser.add_argument("--iterations", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=1, help="skulls per process and iteration")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--generated-defects", type=float, default=0.5, metavar="P",
                        help="probability of replacing a case's defect by a generated SkullFix-style one")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--val-every", type=int, default=500)
    parser.add_argument("--checkpoint-every", type=int, default=250)
    parser.add_argument("--cache", type=Path, help="folder for resampled skulls (default: OUTPUT/cache)")
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoint.pt")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train a completion or super-resolution network (torchrun for several processes)",
                                   description="Train the completion or the super-resolution network on SkullFix cases.")
    add_arguments(parser)
    parser.set_defaults(func=lambda args: (train(args), 0)[1])


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m SparseImplantLib.train", description="Train the completion or super-resolution network.")
    add_arguments(parser)
    try:
        train(parser.parse_args(argv))
    except SparseImplantError as error:
        print(f"sparseimplant: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
