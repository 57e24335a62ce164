"""Scripts that are not packages, loaded as modules: the fixture-making scripts of ``tests/data`` (run elsewhere,
where timm or torchvision is installed) and the benchmarks of ``benchmarks/``.

The tests import the fixtures' deterministic weight fills from them, so that what a test rebuilds is exactly what
the script fed the peer library, and test the benchmarks' bookkeeping on tiny data.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

DATA = Path(__file__).resolve().parent / "data"
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def fixture_script(name: str) -> ModuleType:
    """``tests/data/NAME.py`` loaded as a module (``tests/data`` is not a package)."""
    spec = importlib.util.spec_from_file_location(name, DATA / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextmanager
def benchmark_script(name: str) -> Iterator[ModuleType]:
    """``benchmarks/NAME.py`` as a module, in ``sys.modules`` while the block runs (dataclasses look their module
    up there)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[name]
