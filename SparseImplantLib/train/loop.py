"""The training run: the network to start from, the paper's loss, Adam on a stored schedule,
validation, checkpoints and resume (the examples and the validation set are ``examples``).

Validation draws a fixed set of new patients from the validation cases (their own defects and the other
defect kinds, some of them turned) and scores the implant on the model grid, per kind; full-resolution
scores come from ``evaluate`` and ``bench generalization``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch

from ..errors import SparseImplantError
from ..models.completion import CHANNEL_PRESETS, CompletionNet, completion_loss
from ..models.registry import MODEL_KINDS, PRIOR_CHANNELS, ModelInfo, find_model, load_network, save_network
from ..outputs import atomic_write
from ..pipeline.inference import Networks, coarse_skull, load_networks, model_grid_input
from ..pipeline.priors import estimate_priors, load_shape_template
from ..pipeline.superres import INPUT_CHANNELS
from ..sparse import batch_coordinates
from .augment import Augmentation
from .distributed import Distributed
from .draw_priors import case_priors
from .examples import Example, TrainingBatches, network_input, validate, validation_draws
from .samples import CaseSource, load_sources, soft_on_grid
from .schedule import Schedule

COMPLETION, SUPER_RESOLUTION = MODEL_KINDS
DATA_LICENCE = "CC BY-NC-SA 4.0 (trained on SkullFix, derived from CQ500): non-commercial use only"
SNAPSHOT_FOLDER = "snapshot"  # the latest checkpoint's weights as a model: register-model RUN/snapshot evaluates a run midway


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

    del model  # DDP's reducer goes now, while the process group it holds is still up
    cluster.share_buffers(network)
    checksums = cluster.gather_strings(weights_checksum(network))
    summary = {"iterations": args.iterations, "world_size": cluster.world_size, "rank_weight_checksums": checksums,
               "seconds": round(time.perf_counter() - started, 1)}
    if cluster.is_main:
        write_model(network, model_info(args.iterations, output), output)
        atomic_write(output / "training_summary.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=2) + "\n"))
    cluster.close()
    return summary
