"""The mean training skull for the fitted-skull prior (``Resources/Models/shape-template.npz``).

    python Utilities/make_shape_template.py [--data ../shared/data/skullfix] [--cases 000-044] [--cache DIR]

Averages the complete skulls of the training cases (never 045-059: those tune and validate) at 2 mm,
read as training prepares them (``train.samples``, cached in ``--cache``):
first each centred on its centroid, then, ``--rounds`` times, each laid onto the last mean by
``priors.fit_points`` (turn, scale per axis, shift) and averaged again, so the mean sharpens. It
prints, per case, how well the mean fits its complete and its defective skull (the residuals that
``priors.POOR_FIT_MM`` is set above). Derived from SkullFix: CC BY-NC-SA 4.0, like the bundled weights.
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
from SparseImplantLib.pipeline.priors import SHAPE_TEMPLATE_FILE, build_shape_template, fit_points  # noqa: E402
from SparseImplantLib.train.samples import load_sources, source_points  # noqa: E402

SPACING_MM = 2.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "skullfix")
    parser.add_argument("--cases", default="000-044")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=Path("training-cache"), help="prepared cases (as train's --cache)")
    parser.add_argument("-o", "--output", type=Path, default=default_model_dir() / SHAPE_TEMPLATE_FILE)
    args = parser.parse_args()
    sources = load_sources(args.data, parse_case_range(args.cases), [SPACING_MM] * 3, args.cache)
    complete_clouds = [source_points(source, source.complete, SPACING_MM) for source in sources]
    defective_clouds = [source_points(source, source.defective, SPACING_MM) for source in sources]
    template = build_shape_template(complete_clouds, SPACING_MM)
    for round_ in range(args.rounds):
        fits = [fit_points(cloud, template) for cloud in complete_clouds]
        template = build_shape_template(complete_clouds, SPACING_MM, fits)
        print(f"round {round_ + 1}: median residual {np.median([f.residual_mm for f in fits]):.2f} mm", flush=True)
    template.save(args.output)
    print(f"{args.output}: {template.fraction.shape} at {template.spacing} mm from {len(sources)} skulls")
    for source, complete, defective in zip(sources, complete_clouds, defective_clouds):
        on_complete, on_defective = fit_points(complete, template), fit_points(defective, template)
        print(f"{source.case}  complete {on_complete.residual_mm:.2f} mm  defective {on_defective.residual_mm:.2f} mm  "
              f"scales {np.round(on_defective.scales, 3)}")


if __name__ == "__main__":
    main()
