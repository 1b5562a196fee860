"""What the network sees in training: examples made from draws (the defective skull, its priors, or a
super-resolution model's input box), the batch of each iteration, and the fixed validation set with
its scores per defect kind.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ..metrics import dice
from ..models.completion import CompletionNet
from ..pipeline.inference import OUTPUT_SMOOTHING
from ..pipeline.priors import Priors, ShapeTemplate, channel_input
from ..pipeline.superres import batch_input, input_voxels, refine_box, upsample_coarse
from ..pipeline.volume import Volume, canonical_grid, resample_mask
from ..sparse import SparseTensor
from .augment import OWN_DEFECT, Augmentation, Draw, draw
from .draw_priors import CasePriors, draw_priors
from .samples import CaseSource

VALIDATION_KINDS = (OWN_DEFECT, "craniotomy", "frontoorbital", "parietotemporal", "wedge", "random")
# Validation patients: every defect kind, half of them turned by up to 25 degrees, bone as it is.
VALIDATION_AUGMENTATION = replace(Augmentation.preset("defects"), rotation=0.5, max_rotation_deg=25.0, flip=0.0)
VALIDATION_SEED = 20261129


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
