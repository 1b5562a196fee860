"""``python -m SparseImplantLib.train ARGS`` is ``sparseimplant train ARGS`` (for torchrun)."""

import sys

from ..cli import main

sys.exit(main(["train", *sys.argv[1:]]))
