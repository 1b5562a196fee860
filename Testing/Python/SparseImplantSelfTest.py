"""Slicer self-test entry point for ``slicer_add_python_unittest``: the module's own test case.

Run inside Slicer (needs the application): ``Slicer --python-script SparseImplantSelfTest.py`` or
through CTest in an extension build. The pytest suite (``make test``) covers the same flow with
``slicer-core`` in CI.
"""

import unittest

from SparseImplant import SparseImplantTest


class SparseImplantSelfTest(SparseImplantTest):
    """The sample skull through Generate Implant with the bundled model on the CPU."""


if __name__ == "__main__":
    unittest.main()
