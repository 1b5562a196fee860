"""Training of the completion and super-resolution networks: the paper's loss, Adam, checkpoints,
resume, DDP, on draws that vary pose, defect and bone (``augment``).

One process trains on one CPU or GPU; ``torchrun --nproc_per_node N -m SparseImplantLib.train ...``
(or ``sparseimplant train`` under torchrun) trains data-parallel with DDP (NCCL on GPUs, Gloo on CPU).
Cases are prepared once (``samples``) and cached, so an iteration costs a draw and the network.
Progress goes to ``train_log.jsonl`` in the output folder (and the terminal).

    samples  -> augment -> loop (examples, validation, checkpoints) -> registry
                             distributed (DDP)          arguments (CLI)
"""

from .arguments import register

__all__ = ["register"]
