"""Which device and how many CPU threads: checked once, with a message that says what is available."""

from __future__ import annotations

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
