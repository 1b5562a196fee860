"""Benchmarks (``python -m SparseImplantLib.bench`` or ``sparseimplant bench``): each prints a table and
writes JSON + Markdown (and a plot where it helps) under ``output/bench/`` (``-o results/bench`` replaces the committed results).

- ``engine``: one 3x3x3 8->8 convolution on ~1M surface-like voxels, kernel-map build and compute
  split, this engine versus MinkowskiEngine when it is importable.
- ``network``: the completion network, sparse versus its dense twin (and ME), on real skulls at the
  paper's grids 64^2xZ/8 .. 512^2xZ: time, peak memory, active voxels, FLOPs, one training step.
- ``generate``: the main job end to end on a full-resolution SkullFix case: each stage's time, the
  total, the bytes written, beside the network alone; ``--baseline TREE`` adds another version's run.

Peak memory is the process's peak resident set (VmHWM), reset before each measured stage, measured
in a fresh subprocess per case so one case's allocations never count against another.
"""
