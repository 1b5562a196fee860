"""``python -m SparseImplantLib.bench {engine,network,generate}``."""

import sys

from .commands import main

sys.exit(main())
