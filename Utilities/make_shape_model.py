"""The shape model for the fitted prior (``Resources/Models/shape-model.npz``, ``pipeline.shape_model``).

    python Utilities/make_shape_model.py [--data ../shared/data/skullfix] [--cases 000-044] [--cache DIR]

Each training case's complete skull (never 045-059: those tune and validate) is laid onto the bundled
mean skull (``shape-template.npz``) by ``priors.fit_points``; its signed distance (mm, negative in
bone, truncated at ``--trunc``) is sampled on a ``--spacing`` grid in the mean skull's frame, and the
principal components of those fields are kept (``--modes``, stored as float16). It prints each case's
fit residual and the share of the variance the kept modes explain. Derived from SkullFix:
CC BY-NC-SA 4.0, like the bundled weights.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from SparseImplantLib.data.datasets import parse_case_range  # noqa: E402
from SparseImplantLib.models.registry import default_model_dir  # noqa: E402
from SparseImplantLib.pipeline.priors import fit_points, load_shape_template  # noqa: E402
from SparseImplantLib.pipeline.shape_model import MODES, SHAPE_MODEL_FILE, ShapeModel, distance_in_mean_frame  # noqa: E402
from SparseImplantLib.train.samples import SCALE, load_sources, source_points  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "skullfix")
    parser.add_argument("--cases", default="000-044")
    parser.add_argument("--spacing", type=float, default=4.0, help="the model's grid (mm)")
    parser.add_argument("--trunc", type=float, default=15.0, help="signed distances are clipped to +-this (mm)")
    parser.add_argument("--modes", type=int, default=MODES, help="modes stored (and fitted: MODES)")
    parser.add_argument("--cache", type=Path, default=Path("training-cache"), help="prepared cases (as train's --cache)")
    parser.add_argument("-o", "--output", type=Path, default=default_model_dir() / SHAPE_MODEL_FILE)
    args = parser.parse_args()
    template = load_shape_template()
    shape = np.ceil(np.array(template.fraction.shape) * template.spacing / args.spacing).astype(int) + 1
    centre = template.centre * template.spacing / args.spacing
    offsets = (np.indices(shape).reshape(3, -1).T - centre) * args.spacing  # mm from the mean skull's centre
    fields = []
    for source in load_sources(args.data, parse_case_range(args.cases), [2.0] * 3, args.cache):
        fit = fit_points(source_points(source, source.complete, 2.0), template)
        fields.append(distance_in_mean_frame(source.complete >= SCALE / 2, source.spacing, source.origin, fit.matrix,
                                             fit.shift, offsets, args.trunc).reshape(shape))
        print(f"{source.case}  fit residual {fit.residual_mm:.2f} mm", flush=True)
    model = ShapeModel.build(fields, centre, args.spacing, args.trunc)
    variance = model.spread ** 2
    print(f"{args.modes} of {len(variance)} modes explain {variance[:args.modes].sum() / variance.sum():.1%} of the variance")
    model.save(args.output, args.modes)
    print(f"{args.output}: {len(fields)} skulls, grid {tuple(shape)} at {args.spacing} mm")


if __name__ == "__main__":
    main()
