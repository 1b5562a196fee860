"""Model weights: safetensors files described by a small JSON registry.

Each registry entry names a model, its kind (``completion`` or ``super_resolution``), its channels,
the grid it was trained on (``spacing_mm``; a super-resolution model also the coarse grid its input
comes from, ``input_spacing_mm``, and its ``in_channels``), the file and its sha256, the licence and
the validation metrics. Loading verifies the checksum so a corrupt or swapped file never runs silently.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence

from ..errors import SparseImplantError

if TYPE_CHECKING:  # torch is imported only to load or save weights: the Slicer module lists models without it
    import torch

    from .completion import CompletionNet

MODEL_KINDS = ("completion", "super_resolution")
PRIOR_CHANNELS = ("mirror", "fitted")  # a completion model's optional input channels (``priors``), in this order
REGISTRY_NAME = "registry.json"


def default_model_dir() -> Path:
    """``Resources/Models`` next to the library (source tree and installed Slicer module alike);
    ``SPARSEIMPLANT_MODEL_DIR`` overrides it."""
    override = os.environ.get("SPARSEIMPLANT_MODEL_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "Resources" / "Models"


@dataclass
class ModelInfo:
    name: str
    kind: str
    channels: List[int]
    spacing_mm: List[float]
    file: str
    sha256: str = ""
    licence: str = ""
    crop_margin_mm: float = 20.0
    keep_logit: float = 0.0
    in_channels: int = 1
    priors: List[str] = field(default_factory=list)  # completion: the priors (``priors.PRIOR_CHANNELS``) after the skull channel
    input_spacing_mm: Optional[List[float]] = None
    training: Dict[str, Any] = field(default_factory=dict)
    metrics: Dict[str, Any] = field(default_factory=dict)
    directory: Path = field(default_factory=default_model_dir, repr=False)

    @property
    def path(self) -> Path:
        return self.directory / self.file

    def to_json(self) -> Dict[str, Any]:
        entry = asdict(self)
        entry.pop("directory")
        return entry


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_registry(model_dir: Optional[Path] = None) -> List[ModelInfo]:
    model_dir = Path(model_dir) if model_dir else default_model_dir()
    registry = model_dir / REGISTRY_NAME
    if not registry.is_file():
        raise SparseImplantError(
            f"no model registry at '{registry}': reinstall the extension or point SPARSEIMPLANT_MODEL_DIR at a model folder"
        )
    try:
        entries = json.loads(registry.read_text())["models"]
        models = [ModelInfo(**entry, directory=model_dir) for entry in entries]
    except (ValueError, KeyError, TypeError) as error:
        raise SparseImplantError(f"model registry '{registry}' is malformed ({error}): reinstall the extension") from None
    for model in models:
        _check_entry(model, registry)
    return models


def _check_entry(info: ModelInfo, registry: Path) -> None:
    """Refuse the values that would otherwise fail later, deep in the network or grid code, with a
    traceback: wrong types, non-positive spacings, a weights file outside the model folder."""
    checks = (
        ("name", isinstance(info.name, str) and info.name != "", "a non-empty text"),
        ("kind", info.kind in MODEL_KINDS, f"one of {', '.join(MODEL_KINDS)}"),
        ("channels", isinstance(info.channels, list) and all(_whole(c) and c > 0 for c in info.channels),
         "a list of positive whole numbers"),
        ("spacing_mm", _spacing(info.spacing_mm), "three positive numbers (mm)"),
        ("input_spacing_mm", info.input_spacing_mm is None or _spacing(info.input_spacing_mm),
         "three positive numbers (mm) or null"),
        ("keep_logit", _number(info.keep_logit), "a number"),
        ("crop_margin_mm", _number(info.crop_margin_mm) and info.crop_margin_mm >= 0, "a number >= 0"),
        ("in_channels", _whole(info.in_channels) and info.in_channels > 0, "a positive whole number"),
        ("priors", isinstance(info.priors, list) and list(info.priors) in ([], list(PRIOR_CHANNELS))
         and (info.kind != "completion" or info.in_channels == 1 + len(info.priors)),
         f"[] or {list(PRIOR_CHANNELS)}, one input channel each after the skull's"),
        ("file", _inside_folder(info.file), "a file name inside the model folder"),
        ("sha256", isinstance(info.sha256, str), "a text"),
        ("training", isinstance(info.training, dict), "an object"),
        ("metrics", isinstance(info.metrics, dict), "an object"),
    )
    for key, valid, needed in checks:
        if not valid:
            raise SparseImplantError(
                f"model registry '{registry}': entry '{info.name}' has {key} {getattr(info, key)!r}, not {needed}:"
                " fix the entry or reinstall the extension"
            )


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _spacing(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 3 and all(_number(v) and v > 0 for v in value)


def _inside_folder(file: Any) -> bool:
    """A relative path without '..': the registry may only name weights in its own folder."""
    if not isinstance(file, str) or not file.strip():
        return False
    posix = PurePosixPath(file.replace("\\", "/"))
    return not posix.is_absolute() and ".." not in posix.parts and not PureWindowsPath(file).drive


def find_model(name: Optional[str] = None, kind: str = "completion", model_dir: Optional[Path] = None,
               option: str = "--model") -> ModelInfo:
    """The named model, or the first model of ``kind`` in the registry; checks the kind either way.
    ``option`` is the command line option that named it, for the messages."""
    models = load_registry(model_dir)
    if name is None:
        candidates = [m for m in models if m.kind == kind]
        if not candidates:
            raise SparseImplantError(f"the registry has no {kind} model: install one or pass --model")
        return candidates[0]
    for model in models:
        if model.name == name:
            if model.kind != kind:
                raise SparseImplantError(
                    f"model '{name}' is a {model.kind} model but a {kind} model is needed: choose another {option}"
                )
            return model
    known = ", ".join(m.name for m in models) or "none"
    raise SparseImplantError(f"unknown model '{name}' (available: {known}): check {option}")


def find_refiner(name: Optional[str], completion: ModelInfo, model_dir: Optional[Path] = None) -> Optional[ModelInfo]:
    """The super-resolution model that refines ``completion``'s output: ``none`` -> None; ``auto`` (or None)
    -> among the registry's models whose input grid is the completion model's grid, the first trained on
    this completion model's own predictions (``training.coarse_model.sha256``: it learned that model's
    errors), else the first, else None; a name -> that model, which must take that grid."""
    if name == "none":
        return None
    if name in (None, "auto"):
        fitting = [m for m in load_registry(model_dir) if m.kind == "super_resolution"
                   and _same_spacing(m.input_spacing_mm, completion.spacing_mm)]
        trained_on_it = [m for m in fitting if completion.sha256
                         and m.training.get("coarse_model", {}).get("sha256") == completion.sha256]
        return (trained_on_it or fitting or [None])[0]
    refiner = find_model(name, "super_resolution", model_dir, option="--refine-model")
    if not _same_spacing(refiner.input_spacing_mm, completion.spacing_mm):
        raise SparseImplantError(
            f"model '{name}' refines a {refiner.input_spacing_mm} mm grid but '{completion.name}' completes on a "
            f"{completion.spacing_mm} mm grid: choose a refinement model made for it, or none"
        )
    return refiner


def _same_spacing(a: Optional[Sequence[float]], b: Sequence[float]) -> bool:
    return a is not None and len(a) == len(b) and all(abs(x - y) < 1e-6 for x, y in zip(a, b))


def load_network(info: ModelInfo, device: "torch.device | str" = "cpu") -> "CompletionNet":
    """Network with verified weights, in eval mode on ``device``."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .completion import CompletionNet

    if not info.path.is_file():
        raise SparseImplantError(f"weights of model '{info.name}' are missing ('{info.path}'): reinstall the extension")
    if info.sha256 and sha256_of(info.path) != info.sha256:
        raise SparseImplantError(
            f"weights of model '{info.name}' fail their sha256 check ('{info.path}' is corrupt or replaced): reinstall the extension"
        )
    try:
        state = load_file(str(info.path))
    except (SafetensorError, OSError) as error:
        raise SparseImplantError(
            f"weights '{info.path.name}' of model '{info.name}' are not a readable safetensors file ({_first_line(error)}):"
            " reinstall the extension, or save the weights with safetensors"
        ) from None
    try:
        network = CompletionNet(info.channels, info.in_channels)
        network.load_state_dict(state)
    except (RuntimeError, ValueError) as error:
        raise SparseImplantError(
            f"weights '{info.path.name}' do not fit model '{info.name}' ({_first_line(error)}): check the registry entry"
        ) from None
    if not all(bool(torch.isfinite(tensor).all()) for tensor in state.values() if tensor.is_floating_point()):
        raise SparseImplantError(
            f"weights of model '{info.name}' contain NaN or infinite values ('{info.path}'; a training run that"
            " diverged): use weights from another run or checkpoint"
        )
    network.keep_logit = float(info.keep_logit)
    return network.to(device).eval()


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def save_network(network: "CompletionNet", info: ModelInfo, extra_metadata: Optional[Dict[str, str]] = None) -> ModelInfo:
    """Write the weights as safetensors and return ``info`` with the new sha256 (registry not touched)."""
    from safetensors.torch import save_file

    from ..outputs import atomic_write

    state = {key: value.detach().cpu().contiguous() for key, value in network.state_dict().items()}
    metadata = {"name": info.name, "kind": info.kind, "licence": info.licence, **(extra_metadata or {})}
    atomic_write(info.path, lambda tmp: save_file(state, str(tmp), metadata=metadata))
    info.sha256 = sha256_of(info.path)
    return info


def write_registry(models: Sequence[ModelInfo], model_dir: Optional[Path] = None) -> Path:
    from ..outputs import atomic_write

    model_dir = Path(model_dir) if model_dir else default_model_dir()
    text = json.dumps({"models": [m.to_json() for m in models]}, indent=2) + "\n"
    return atomic_write(model_dir / REGISTRY_NAME, lambda tmp: tmp.write_text(text))


def generalization_metrics(bench: dict) -> Dict[str, Any]:
    """The model card's per-group table from ``bench generalization``'s JSON."""
    return {"cases": bench["cases"], "keep_logit": bench.get("keep_logit"),
            "groups": [{key: (round(value, 4) if isinstance(value, float) else value) for key, value in line.items()}
                       for line in bench["summary"]]}


def evaluation_metrics(report: dict) -> Dict[str, Any]:
    """The model card's validation metrics from ``evaluate``'s JSON (a metric no case has, mean null, is left out)."""
    return {"validation_mean": {key: round(value["mean"], 4) for key, value in report["summary"].items()
                                if value["mean"] is not None},
            "validation_cases": [{key: (round(value, 4) if isinstance(value, float) else value)
                                  for key, value in case.items() if value is not None}
                                 for case in report["cases"]]}


def _report_metrics(path: Path, option: str, writer: str, metrics: Callable[[dict], Dict[str, Any]]) -> Dict[str, Any]:
    """``metrics`` of the JSON report that ``option`` names, read before anything is copied: a missing
    or wrong file is refused in one line and leaves the model folder as it was."""
    try:
        return metrics(json.loads(Path(path).read_text(encoding="utf-8")))
    except OSError as error:
        raise SparseImplantError(f"cannot read {option} '{path}' ({error.strerror or error}): check the path") from None
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise SparseImplantError(f"{option} '{path}' is not the JSON that {writer} writes ({type(error).__name__}: "
                                 f"{error}): give that file") from None


def register_trained_model(run_dir: Path, model_dir: Optional[Path] = None, evaluation: Optional[Path] = None,
                           keep_logit: Optional[float] = None, generalization: Optional[Path] = None) -> ModelInfo:
    """Copy a training run's weights (``model.json`` + weights) into a model folder and its registry,
    replacing an entry of the same name; ``evaluation`` (an ``evaluate`` JSON) becomes its metrics, and
    ``generalization`` (``bench generalization``'s JSON) adds the per-group table of its model card.
    Everything is read and checked before the first file is written."""
    import shutil

    from ..outputs import atomic_write

    run_dir = Path(run_dir)
    try:
        trained = ModelInfo(**json.loads((run_dir / "model.json").read_text()), directory=run_dir)
    except (OSError, ValueError, TypeError) as error:
        raise SparseImplantError(f"'{run_dir}' is not a finished training run ({error}): point at the train output folder") from None
    if not trained.path.is_file():
        raise SparseImplantError(f"the run's weights '{trained.path}' are missing: the run did not finish; point at a "
                                 "finished train output folder")
    if sha256_of(trained.path) != trained.sha256:
        raise SparseImplantError(f"'{trained.path}' does not match the sha256 in model.json: the run did not finish cleanly")
    metrics = dict(trained.metrics)
    if evaluation is not None:
        metrics = _report_metrics(evaluation, "--evaluation", "'sparseimplant evaluate'", evaluation_metrics)
    if generalization is not None:
        metrics["generalization"] = _report_metrics(generalization, "--generalization",
                                                    "'sparseimplant bench generalization'", generalization_metrics)
    target_dir = Path(model_dir) if model_dir else default_model_dir()
    if target_dir.exists() and not target_dir.is_dir():
        raise SparseImplantError(f"model folder '{target_dir}' is a file: choose a folder with --model-dir")
    existing = load_registry(target_dir) if (target_dir / REGISTRY_NAME).is_file() else []
    target_dir.mkdir(parents=True, exist_ok=True)
    training = dict(trained.training)
    if "data" in training:  # the data set's name, not a path on the training machine
        training["data"] = Path(training["data"]).name
    bundled = replace(trained, file=f"{trained.name}.safetensors", directory=target_dir, training=training, metrics=metrics)
    if keep_logit is not None:
        bundled.keep_logit = float(keep_logit)
    atomic_write(bundled.path, lambda tmp: shutil.copyfile(trained.path, tmp))
    write_registry([model for model in existing if model.name != bundled.name] + [bundled], target_dir)
    return bundled
