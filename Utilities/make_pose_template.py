"""The head-pose template (``Resources/Models/pose-template.npz``) from the training skulls.

    python Utilities/make_pose_template.py [--data ../shared/data/skullfix] [--cases 000-044]

Averages the complete skulls of the training cases (never 045-059: those tune and validate), each
centred on its centroid, on a 4 mm grid (``pose.build_template``); then, ``--rounds`` times, turns
each skull upright onto the last mean and averages again, so the mean sharpens to one pose. It
prints, per training case, the turn the search finds for its defective skull (the spread that
``pose.TRAINING_TURN_DEG`` is set against) and the template match (``pose.POOR_MATCH`` lies below the lowest).
Derived from SkullFix: CC BY-NC-SA 4.0, like the bundled weights.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from SparseImplantLib.data.datasets import list_cases, parse_case_range  # noqa: E402
from SparseImplantLib.models.registry import default_model_dir  # noqa: E402
from SparseImplantLib.pipeline.pose import TEMPLATE_FILE, build_template, pose_of_points, skull_points  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "skullfix")
    parser.add_argument("--cases", default="000-044")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("-o", "--output", type=Path, default=default_model_dir() / TEMPLATE_FILE)
    args = parser.parse_args()
    cases = list_cases(args.data, cases=parse_case_range(args.cases))
    complete_clouds, defective_clouds = [], []
    for files in cases:  # one case in memory at a time: only its 4 mm voxel positions are kept
        case = files.load()
        complete = case.defective.with_array((case.defective.array | case.implant.array).astype(np.uint8))
        complete_clouds.append(skull_points(complete))
        defective_clouds.append(skull_points(case.defective))
    template = build_template(complete_clouds)
    for _ in range(args.rounds):
        template = build_template(complete_clouds, rotations=[pose_of_points(cloud, template).rotation
                                                              for cloud in complete_clouds])
    template.save(args.output)
    print(f"{args.output}: {template.fraction.shape} at {template.spacing} mm from {len(cases)} skulls, {args.rounds} round(s)")
    turns = []
    for files, cloud in zip(cases, defective_clouds):
        pose = pose_of_points(cloud, template)
        turns.append(pose.turn_deg)
        print(f"{files.key}  turn {pose.turn_deg:5.1f}°  match {pose.match:.3f}")
    print(f"turns: median {np.median(turns):.1f}°, 90th percentile {np.percentile(turns, 90):.1f}°, max {max(turns):.1f}°")


if __name__ == "__main__":
    main()
