"""What the module needs installed before it can run: PyTorch (through the PyTorch extension, which
picks the build for the GPU) of at least ``TORCH_MINIMUM``, and the pip packages of
``PIP_REQUIREMENTS``; found from package metadata, without importing them (importing torch takes seconds).
"""

from __future__ import annotations

import importlib.util
import re
from typing import Dict, List, Optional, Tuple

TORCH_MINIMUM = "2.1"  # the oldest PyTorch the library supports (pyproject.toml: torch>=2.1)
# import name -> pip requirement, for what PythonSlicer may lack besides torch
PIP_REQUIREMENTS = {"safetensors": "safetensors>=0.4", "scipy": "scipy>=1.10", "tqdm": "tqdm>=4.60",
                    "SimpleITK": "SimpleITK>=2.3"}


def release(version: str) -> Tuple[int, ...]:
    """The numeric release of a version string: '2.8.0+cu121' -> (2, 8, 0)."""
    match = re.match(r"\d+(\.\d+)*", version.strip())
    if match is None:
        raise ValueError(f"not a version: '{version}'")
    return tuple(int(part) for part in match.group(0).split("."))


def torch_problem(installed: Optional[str], minimum: str = TORCH_MINIMUM) -> Optional[str]:
    """Why the installed PyTorch will not do (None: it will). ``installed`` is its version or None."""
    if installed is None:
        return "PyTorch is not installed"
    if release(installed) < release(minimum):
        return f"PyTorch {installed} is older than {minimum}, the oldest this extension supports"
    return None


def missing_requirements(requirements: Dict[str, str] = PIP_REQUIREMENTS) -> List[str]:
    """The pip requirements whose module cannot be found (found without importing it)."""
    return [requirement for module, requirement in requirements.items() if importlib.util.find_spec(module) is None]
