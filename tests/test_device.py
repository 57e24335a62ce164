"""convnets.device.keep_freed_memory: glibc keeps what a CPU training step frees, and nothing happens elsewhere."""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from convnets import device
from convnets.training import TrainConfig, distributed
from convnets.training import loop as loop_module
from convnets.training.loop import Trainer

GLIBC = platform.libc_ver()[0] == "glibc"

# Allocates and frees eight 8 MiB tensors (what a step does with its activations) five times, with or without
# keep_freed_memory, and prints what it answered, the minor page faults of the last four cycles and the pages
# they touched.
FAULTS = """
import resource, sys, torch
from convnets.device import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
def cycle():
    tensors = [torch.empty(2 * 1024 * 1024).fill_(1.0) for _ in range(8)]
    del tensors
cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    cycle()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(kept, faults, 4 * 8 * 8 * 1024 * 1024 // resource.getpagesize())
"""


@pytest.fixture
def fresh():
    """keep_freed_memory as if not yet called in this process (it acts once and remembers its answer)."""
    device.keep_freed_memory.cache_clear()
    yield device.keep_freed_memory
    device.keep_freed_memory.cache_clear()


def test_keep_freed_memory_sets_glibcs_thresholds_once(fresh) -> None:
    assert fresh() is GLIBC
    assert fresh() is GLIBC and fresh.cache_info().misses == 1


def faults(mode: str) -> tuple[bool, int, int]:
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True).stdout
    answer, counted, pages = out.split()
    return answer == "True", int(counted), int(pages)


@pytest.mark.slow  # two fresh processes that import torch
def test_freed_memory_is_reused_without_page_faults() -> None:
    # In fresh processes: a process that has called keep_freed_memory keeps its thresholds.
    tuned, kept, pages = faults("keep")
    assert tuned is GLIBC
    if not GLIBC:  # nothing was changed: nothing to observe
        return
    _, default, _ = faults("default")
    # By default glibc returns the freed 64 MiB to the system and faults it in again each cycle (about every
    # page); kept, the cycles reuse the heap (0 to 2k faults measured, of 65k pages).
    assert kept < pages // 8
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not (thp.exists() and "[always]" in thp.read_text()):  # else one fault may map 512 pages at once
        assert default >= pages // 8


@pytest.mark.parametrize("broken", ["no_library", "cannot_load", "no_mallopt"])
def test_keep_freed_memory_is_a_no_op_without_glibc(fresh, monkeypatch, broken) -> None:
    if broken == "no_library":  # Windows
        monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    elif broken == "cannot_load":
        def refuse(name: str) -> None:
            raise OSError(f"{name}: cannot open shared object file")
        monkeypatch.setattr(ctypes, "CDLL", refuse)
    else:  # macOS's libc and musl have no gnu_get_libc_version
        monkeypatch.setattr(ctypes, "CDLL", lambda name: object())
    assert fresh() is False


def test_the_trainer_keeps_freed_memory_on_the_cpu(tmp_path: Path, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(loop_module, "keep_freed_memory", lambda: calls.append(1) or True)
    Trainer(TrainConfig(model="lenet5", data="digits", image_size=32, progress=False, device="cpu",
                        out=str(tmp_path / "run")), distributed.setup("cpu"))
    assert calls == [1]
