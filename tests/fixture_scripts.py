"""The fixture-making scripts of ``tests/data`` (run elsewhere, where timm or torchvision is installed), as modules.

The tests import their deterministic weight fills from them, so that what a test rebuilds is exactly what the
script fed the peer library.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

DATA = Path(__file__).resolve().parent / "data"


def fixture_script(name: str) -> ModuleType:
    """``tests/data/NAME.py`` loaded as a module (``tests/data`` is not a package)."""
    spec = importlib.util.spec_from_file_location(name, DATA / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
