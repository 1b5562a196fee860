"""The training run: examples from draws, the paper's loss, Adam, validation, checkpoints and resume.

Validation draws a fixed set of new patients from the validation cases (their own defects and the other
defect kinds, some of them turned) and scores the implant on the model grid, per kind; full-resolution
scores come from ``evaluate`` and ``bench generalization``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from ..errors import SparseImplantError
from ..inference import OUTPUT_SMOOTHING, Networks, coarse_skull, load_networks, model_grid_input
from ..io import atomic_write
from ..metrics import dice
from ..models.completion import CHANNEL_PRESETS, CompletionNet, completion_loss
from ..models.registry import MODEL_KINDS, PRIOR_CHANNELS, ModelInfo, find_model, load_network, save_network
from ..priors import Priors, ShapeTemplate, channel_input, estimate_priors, load_shape_template
from ..sparse import SparseTensor, batch_coordinates
from ..superres import INPUT_CHANNELS, batch_input, input_voxels, refine_box, upsample_coarse
from ..volume import Volume, canonical_grid, resample_mask
from .augment import OWN_DEFECT, Augmentation, Draw, draw
from .distributed import Distributed
from .draw_priors import CasePriors, case_priors, draw_priors
from .samples import CaseSource, load_sources, soft_on_grid
from .schedule import Schedule

COMPLETION, SUPER_RESOLUTION = MODEL_KINDS
DATA_LICENCE = "CC BY-NC-SA 4.0 (trained on SkullFix, derived from CQ500): non-commercial use only"
VALIDATION_KINDS = (OWN_DEFECT, "craniotomy", "frontoorbital", "parietotemporal", "wedge", "random")
# Validation patients: every defect kind, half of them turned by up to 25 degrees, bone as it is.
VALIDATION_AUGMENTATION = replace(Augmentation.preset("defects"), rotation=0.5, max_rotation_deg=25.0, flip=0.0)
VALIDATION_SEED = 20261129
SNAPSHOT_FOLDER = "snapshot"  # the latest checkpoint's weights as a model: register-model RUN/snapshot evaluates a run midway


@dataclass
class Example:
    """One network input (voxels (N, 3) and their features (N, C)) with its defective and complete skull."""

    voxels: np.ndarray
    features: np.ndarray
    defective: np.ndarray
    complete: np.ndarray


def _through_coarse_grid(mask: np.ndarray, spacing: float, input_spacing: Sequence[float]) -> np.ndarray:
    """``mask`` (on a ``spacing`` grid) as a completion model on the ``input_spacing`` grid would hand it
    to a refiner: resampled to that grid and upsampled back."""
    fine = Volume(mask, [spacing] * 3, (0.0, 0.0, 0.0), np.eye(3))
    coarse = resample_mask(fine, canonical_grid(fine, input_spacing, 0.0))
    return upsample_coarse(coarse.with_array(coarse.array.astype(np.float32)), fine, OUTPUT_SMOOTHING)


def make_example(pair: Draw, input_spacing: Optional[Sequence[float]] = None,
                 rng: Optional[np.random.Generator] = None, shift_voxels: int = 0, priors: Optional[Priors] = None) -> Example:
    """The network's view of a draw: the defective skull (and its ``priors``, for a model that takes
    them) for completion; for super-resolution (an ``input_spacing``) the box ``superres.refine_box``
    cuts from the coarse skull (the completion model's prediction where the draw has one, else the
    target through the coarse grid) and the defective skull. With ``rng``, shifted at random by up to
    ``shift_voxels``."""
    defective, complete = pair.defective, pair.complete
    if input_spacing is None:
        voxels, features = channel_input(defective, priors)
        defective_voxels, complete_voxels = np.argwhere(defective), np.argwhere(complete)
    else:
        coarse = pair.predicted if pair.predicted is not None else _through_coarse_grid(complete, pair.spacing, input_spacing)
        box = refine_box(coarse, defective, [pair.spacing] * 3) or tuple(slice(0, n) for n in defective.shape)
        voxels, features = input_voxels(coarse[box], defective[box])
        defective_voxels, complete_voxels = np.argwhere(defective[box]), np.argwhere(complete[box])
    shift = rng.integers(0, shift_voxels, size=3) if rng is not None and shift_voxels > 0 else np.zeros(3, np.int64)
    return Example(voxels + shift, features, defective_voxels + shift, complete_voxels + shift)


def network_input(examples: Sequence[Example], device: torch.device) -> SparseTensor:
    return batch_input([(e.voxels, e.features) for e in examples], device)


def validation_draws(sources: Sequence[CaseSource], spacing: float, margin_mm: float, augmentation: Augmentation,
                     with_predicted: bool) -> List[Draw]:
    """A fixed set of new patients per validation case: its own defect and, when training generates
    defects, the other kinds, some turned."""
    kinds = [k for k in VALIDATION_KINDS if k == OWN_DEFECT or (augmentation.own_defect < 1 and k in augmentation.defect_kinds)]
    draws = []
    for index, source in enumerate(sources):
        for number, kind in enumerate(kinds):
            if kind == OWN_DEFECT and not source.has_own_defect:
                continue
            rng = np.random.default_rng([VALIDATION_SEED, index, number])
            draws.append(draw(source, spacing, margin_mm, rng, VALIDATION_AUGMENTATION, kind, with_predicted))
    return draws


@torch.no_grad()
def validate(network: CompletionNet, draws: Sequence[Draw], input_spacing: Optional[Sequence[float]],
             device: torch.device, priors: Optional[Sequence[Priors]] = None) -> Dict[str, float]:
    """Implant and completed-skull DSC on the model grid (within the refined box for super-resolution),
    overall and per defect kind; ``priors``, one per draw, as inference estimates them."""
    was_training = network.training
    network.eval()
    implant_by_kind: Dict[str, List[float]] = {}
    complete_scores = []
    for index, pair in enumerate(draws):
        example = make_example(pair, input_spacing, priors=priors[index] if priors else None)
        result = network(network_input([example], device))
        shape = np.maximum.reduce([example.complete.max(axis=0), example.defective.max(axis=0)]) + 1
        predicted = np.zeros(shape, bool)
        coordinates = result.output.C[:, 1:].cpu().numpy()
        coordinates = coordinates[np.all((coordinates >= 0) & (coordinates < shape), axis=1)]
        predicted[tuple(coordinates.T)] = True
        defective, complete = np.zeros(shape, bool), np.zeros(shape, bool)
        defective[tuple(example.defective.T)] = True
        complete[tuple(example.complete.T)] = True
        complete_scores.append(dice(predicted, complete))
        implant_by_kind.setdefault(pair.kind, []).append(dice(predicted & ~defective, complete & ~defective))
    network.train(was_training)
    scores = {"val_implant_dice_grid": float(np.mean([s for kind in implant_by_kind.values() for s in kind])),
              "val_complete_dice_grid": float(np.mean(complete_scores))}
    scores.update({f"val_implant_dice_grid_{kind}": round(float(np.mean(values)), 4)
                   for kind, values in sorted(implant_by_kind.items())})
    return scores


def weights_checksum(network: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(network.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def parse_channels(text: str) -> tuple:
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
    if args.channels and parse_channels(args.channels) != tuple(initial.channels):
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


def add_predictions(sources: Sequence[CaseSource], data_root: Path, networks: Networks, spacing: Sequence[float],
                    cache_dir: Path) -> None:
    """Give each source a completion model's skull for its own defect (as inference makes it: averaged
    passes), cached under the model's checksum and pruning threshold, which decide it."""
    from ..data.datasets import list_cases

    model = networks.info
    files = {f.key: f for f in list_cases(data_root, cases=[s.case.split("/")[-1] for s in sources])}
    device = next(networks.completion.parameters()).device
    for source in sources:
        cached = cache_dir / f"{source.case.replace('/', '_')}_predicted-{model.sha256[:12]}_k{model.keep_logit:g}.npy"
        if not cached.is_file():
            defective = files[source.case].load(with_complete=False).defective
            coarse, _ = coarse_skull(model_grid_input(defective, networks.info), networks, device)
            soft = soft_on_grid(coarse, source, spacing)
            atomic_write(cached, lambda tmp: np.save(tmp, soft))
        source.predicted = np.load(cached)


class TrainingBatches(torch.utils.data.Dataset):
    """Iteration i's batch, made from (seed, process rank, i) alone: workers can prepare batches ahead
    of the network (``--workers``), in any order, and a resumed run draws exactly what an uninterrupted
    one would, with no random state to keep."""

    def __init__(self, sources: Sequence[CaseSource], priors: Optional[Sequence[CasePriors]],
                 template: Optional[ShapeTemplate], spacing: float, margin_mm: float, augmentation: Augmentation,
                 input_spacing: Optional[Sequence[float]], batch_size: int, seed: Sequence[int], with_predicted: bool) -> None:
        self.sources, self.priors, self.template = sources, priors, template
        self.spacing, self.margin_mm, self.augmentation = spacing, margin_mm, augmentation
        self.input_spacing, self.batch_size, self.seed, self.with_predicted = input_spacing, batch_size, seed, with_predicted

    def __getitem__(self, iteration: int) -> List[Example]:
        rng = np.random.default_rng([*self.seed, iteration])
        batch = []
        for i in rng.integers(0, len(self.sources), size=self.batch_size):
            pair = draw(self.sources[i], self.spacing, self.margin_mm, rng, self.augmentation,
                        with_predicted=self.with_predicted)
            priors = draw_priors(pair, self.priors[i], self.template, rng) if self.priors else None
            batch.append(make_example(pair, self.input_spacing, rng, self.augmentation.shift_voxels, priors))
        return batch


def _as_is(batch: List[Example]) -> List[Example]:
    return batch


def _one_thread(worker: int) -> None:
    torch.set_num_threads(1)  # a worker draws with numpy and scipy; the network keeps the cores' threads


def write_model(network: CompletionNet, info: ModelInfo, folder: Path) -> None:
    """The weights and their model.json, as ``register-model`` reads a run folder."""
    folder.mkdir(parents=True, exist_ok=True)
    save_network(network, info)
    atomic_write(folder / "model.json", lambda tmp: tmp.write_text(json.dumps(info.to_json(), indent=2) + "\n"))


def widen_input(network: CompletionNet, in_channels: int) -> CompletionNet:
    """``network`` with ``in_channels`` input channels: the first ones keep their weights, the added
    ones start at zero, so the widened network starts from the same behaviour on the skull channel."""
    wider = CompletionNet(network.channels, in_channels).to(next(network.parameters()).device)
    state = network.state_dict()
    kernel = state["enc_block_s1.0.kernel"]  # (kernel volume, in, out)
    padded = kernel.new_zeros((kernel.shape[0], in_channels, kernel.shape[2]))
    padded[:, :kernel.shape[1]] = kernel
    state["enc_block_s1.0.kernel"] = padded
    wider.load_state_dict(state)
    wider.keep_logit = network.keep_logit
    return wider


def _start_network(initial: Optional[ModelInfo], channels: Sequence[int], in_channels: int,
                   device: torch.device) -> CompletionNet:
    if initial is None:
        return CompletionNet(channels, in_channels).to(device)
    network = load_network(initial, device).train()
    if network.in_channels == in_channels:
        return network
    if network.in_channels == 1 and in_channels > 1:
        return widen_input(network, in_channels).train()
    raise SparseImplantError(f"model '{initial.name}' takes {network.in_channels} input channels, this run "
                             f"{in_channels}: fine-tune a model of the same kind and inputs")


def _load_network_state(network: CompletionNet, state: dict, checkpoint_path: Path) -> None:
    """The checkpoint's weights, or a one-line error when the run was made with other channels or inputs."""
    stored = (state.get("channels"), state.get("in_channels"))
    try:
        network.load_state_dict(state["network"])
    except RuntimeError:
        made = f" (channels {stored[0]}, {stored[1]} input channel(s))" if stored[0] else ""
        raise SparseImplantError(f"{checkpoint_path} was made by a run with other channels or inputs{made} than "
                                 "these options ask for: resume with the run's own --channels, --priors and --kind") from None


def _announcer(is_main: bool) -> Callable[[str], None]:
    """Plain progress lines while a run prepares (one process of several speaks)."""
    return (lambda message: print(message, flush=True)) if is_main else (lambda message: None)


def _stored_schedule(state: dict) -> Schedule:
    """The run's schedule; a checkpoint from before schedules were kept holds PyTorch's cosine state."""
    if "schedule" in state:
        return Schedule.from_json(state["schedule"])
    cosine = state["scheduler"]
    return Schedule.cosine(float(cosine["base_lrs"][0]), int(cosine["T_max"]))


def train(args: argparse.Namespace) -> dict:
    """Train and return the summary (also written as training_summary.json)."""
    from ..data.datasets import parse_case_range

    output = Path(args.output)
    checkpoint_path = output / "checkpoint.pt"
    _check_run_folder(output, checkpoint_path, args.resume)
    initial = _initial_model(args)  # a wrong --init-model, --coarse-model or --channels fails before the folder is made
    coarse_model = _coarse_model(args)
    augmentation = Augmentation.preset(args.augmentation)
    if args.own_defects is not None:
        augmentation = replace(augmentation, own_defect=args.own_defects)
    output.mkdir(parents=True, exist_ok=True)
    cluster = Distributed()
    torch.manual_seed(args.seed)
    channels = tuple(initial.channels) if initial else parse_channels(args.channels or "ch1")
    spacing = [float(args.spacing)] * 3
    input_spacing = _input_spacing(args)
    cache = Path(args.cache) if args.cache else output / "cache"
    announce = _announcer(cluster.is_main)
    train_sources = load_sources(Path(args.data), parse_case_range(args.train_cases), spacing, cache, announce)
    val_sources = (load_sources(Path(args.data), parse_case_range(args.val_cases), spacing, cache, announce)
                   if args.val_cases and cluster.is_main else [])
    if coarse_model:
        coarse_networks = load_networks(coarse_model.name, "none", cluster.device, args.model_dir)
        for sources in (train_sources, val_sources):
            add_predictions(sources, Path(args.data), coarse_networks, spacing, cache)
    val_draws = validation_draws(val_sources, spacing[0], args.margin_mm, augmentation, coarse_model is not None)
    uses_priors = bool(getattr(args, "priors", False) or (initial and initial.priors))
    template = load_shape_template() if uses_priors else None
    if uses_priors:
        announce(f"fitting the priors of {len(train_sources)} training cases and {len(val_draws)} validation draws "
                 "(about a second each; the cases' fits are cached)")
    train_priors = [case_priors(source, template, cache) for source in train_sources] if uses_priors else None
    val_priors = [estimate_priors(pair.defective, pair.spacing) for pair in val_draws] if uses_priors else None
    in_channels = INPUT_CHANNELS if input_spacing else 1 + (len(PRIOR_CHANNELS) if uses_priors else 0)
    network = _start_network(initial, channels, in_channels, cluster.device)
    network.keep_logit = 0.0  # train with the paper's pruning; the inference threshold is tuned at registration
    model: torch.nn.Module = network
    if cluster.world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(network, device_ids=[cluster.device.index] if cluster.device.type == "cuda" else None)
    optimizer = torch.optim.Adam(network.parameters(), lr=args.lr)

    def model_info(iterations: int, folder: Path) -> ModelInfo:
        return ModelInfo(name=args.name, kind=args.kind, channels=list(channels), spacing_mm=spacing,
                         file="model.safetensors", licence=DATA_LICENCE, crop_margin_mm=args.margin_mm,
                         in_channels=in_channels, input_spacing_mm=input_spacing,
                         priors=list(PRIOR_CHANNELS) if uses_priors and not input_spacing else [],
                         training={"data": str(args.data), "cases": args.train_cases, "iterations": iterations,
                                   "batch_size": args.batch_size * cluster.world_size, "lr": args.lr, "seed": args.seed,
                                   "frame": "canonical (L, P, S)", "augmentation": args.augmentation,
                                   "own_defects": augmentation.own_defect,
                                   **({"initialised_from": _lineage(initial)} if initial else {}),
                                   **({"coarse_model": {"name": coarse_model.name, "sha256": coarse_model.sha256}}
                                      if coarse_model else {})},
                         directory=folder)

    schedule = Schedule.cosine(args.lr, args.iterations)
    start, seconds_before = 0, 0.0
    log_path = output / "train_log.jsonl"
    if args.resume:
        state = torch.load(checkpoint_path, map_location=cluster.device, weights_only=False)
        _load_network_state(network, state, checkpoint_path)
        optimizer.load_state_dict(state["optimizer"])
        start, seconds_before = int(state["iteration"]), float(state.get("seconds", 0.0))
        schedule, note = _stored_schedule(state).resized(args.iterations, start)
        if note and cluster.is_main:
            print(note, flush=True)
        if "torch_rng" in state:
            torch.set_rng_state(state["torch_rng"])
        if cluster.is_main:
            _truncate_log(log_path, start)
    network.train()
    announce(f"training from iteration {start} to {args.iterations}: a log line every {args.log_every} iterations")
    started = time.perf_counter() - seconds_before  # the log and summary count the whole run's training time
    batches = TrainingBatches(train_sources, train_priors, template, spacing[0], args.margin_mm, augmentation,
                              input_spacing, args.batch_size, (args.seed, cluster.rank), coarse_model is not None)
    loader = torch.utils.data.DataLoader(batches, batch_size=None, sampler=range(start, args.iterations),
                                         num_workers=args.workers, collate_fn=_as_is, prefetch_factor=2 if args.workers else None,
                                         worker_init_fn=_one_thread)
    for iteration, batch in zip(range(start, args.iterations), loader):
        for group in optimizer.param_groups:
            group["lr"] = schedule.rate(iteration)
        result = model(network_input(batch, cluster.device), batch_coordinates([e.complete for e in batch], cluster.device))
        loss = completion_loss(result)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        done = iteration + 1
        if cluster.is_main and (done % args.log_every == 0 or done == args.iterations):
            entry = {"iteration": done, "loss": round(loss.item(), 5), "lr": round(schedule.rate(iteration), 8),
                     "output_voxels": len(result.output), "seconds": round(time.perf_counter() - started, 1)}
            if val_draws and (done % args.val_every == 0 or done == args.iterations):
                entry.update(validate(network, val_draws, input_spacing, cluster.device, val_priors))
            with open(log_path, "a") as log:
                log.write(json.dumps(entry) + "\n")
            print(json.dumps(entry), flush=True)
        if cluster.is_main and (done % args.checkpoint_every == 0 or done == args.iterations):
            state = {"network": network.state_dict(), "optimizer": optimizer.state_dict(),
                     "schedule": schedule.to_json(), "iteration": done, "seconds": time.perf_counter() - started,
                     "channels": list(channels), "in_channels": in_channels, "torch_rng": torch.get_rng_state()}
            atomic_write(checkpoint_path, lambda tmp: torch.save(state, tmp))
            if done < args.iterations:  # the run's weights so far, as a model that register-model takes
                write_model(network, model_info(done, output / SNAPSHOT_FOLDER), output / SNAPSHOT_FOLDER)

    cluster.share_buffers(network)
    checksums = cluster.gather_strings(weights_checksum(network))
    summary = {"iterations": args.iterations, "world_size": cluster.world_size, "rank_weight_checksums": checksums,
               "seconds": round(time.perf_counter() - started, 1)}
    if cluster.is_main:
        write_model(network, model_info(args.iterations, output), output)
        atomic_write(output / "training_summary.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=2) + "\n"))
    cluster.close()
    return summary
