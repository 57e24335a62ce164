"""Which device and how many CPU threads: checked once, with a message that says what is available."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

import torch

from convnets.errors import ConfigError

DEVICE_HELP = "cpu, cuda, cuda:N or mps (default: CUDA when present, else cpu)"


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """The device called ``name``, or the best present one for None.

    Raises:
        ConfigError: ``name`` is not a device, or this machine (or this PyTorch build) does not have it.
    """
    if name is None or name == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"device must be {DEVICE_HELP}; got {name!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this PyTorch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ConfigError(f"device {name!r}: {why}; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r}: there are {torch.cuda.device_count()} CUDA devices "
                              f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    elif device.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ConfigError(f"device {name!r}: MPS (Apple GPU) is not available here; use --device cpu")
    elif device.type != "cpu":
        raise ConfigError(f"device must be {DEVICE_HELP}; got {name!r}")
    return device


def check_threads(threads: int | None) -> int | None:
    """``threads`` if it is None or a whole number from 1 to 4x the cores, else a ConfigError saying so."""
    if threads is None:
        return None
    cores = os.cpu_count() or 1
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 4 * cores:
        raise ConfigError(f"threads must be a whole number from 1 to {4 * cores} (this machine has {cores} cores); "
                          f"got {threads!r}")
    return threads


def set_threads(threads: int | None) -> None:
    """Use ``threads`` CPU threads for PyTorch's kernels (None: leave PyTorch's default, one per core)."""
    if check_threads(threads):
        torch.set_num_threads(threads)


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# The largest mmap threshold glibc accepts on a 64-bit system (DEFAULT_MMAP_THRESHOLD_MAX).
_MMAP_THRESHOLD = 32 * 1024 * 1024


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep the memory a process frees for its next allocations (once per process).

    PyTorch's CPU allocator hands every tensor it frees back to malloc, and glibc by default returns
    large blocks to the operating system: ones over its mmap threshold at once, the top of the heap
    once it exceeds the trim threshold. A training step frees and re-allocates the same activations
    every step, so each step faults their pages in again, zeroed by the kernel. Measured on resnet20
    (batch 128, bf16 channels-last, 2 cores, ``/usr/bin/time -f %R``): 770k minor page faults over 63
    steps by default, 97k with the thresholds set here; ``benchmarks/bench_train.py --malloc-compare``
    measures both and the images/s of each. Blocks up to 32 MiB (glibc's largest mmap threshold) come
    from the heap, and the heap is never trimmed: the process keeps its peak heap size, as a caching
    allocator would.

    Returns:
        True if the thresholds are set; False where the C library is not glibc (macOS, musl, Windows)
        or refused them: a no-op, never an error.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return False
    # gnu_get_libc_version is glibc's own; musl has a mallopt that accepts nothing.
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success.
    return mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
