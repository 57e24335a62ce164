"""Saving and loading model weights as safetensors, with the metadata needed to use them again.

A weights file holds the state dict and, in its safetensors header, the model name, the
number of classes, input size, normalisation and where the weights came from, so that
``load_weights(path)`` rebuilds the right model without the user repeating any of it.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

import convnets
from convnets.errors import WeightsError, WeightsMismatchError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks (see try_lock)
    fcntl = None


def atomic_write(path: str | Path, write: Any) -> Path:
    """Write a file so that a crash at any moment leaves either the old file or the new one.

    ``write(tmp_path)`` writes the content; the temporary file is fsynced and renamed over
    ``path`` (an atomic operation on POSIX and Windows), then the directory is fsynced. A
    temporary file left by a writer that died is removed by :func:`remove_stale_temporaries`;
    while the write lasts, its temporary file is locked so that a live one is told apart.

    Raises:
        OSError: the disk is full, read-only or refuses the write; ``filename`` is ``path``
            (not the temporary file), so the message names the file the user knows.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise _naming(err, path) from err
    try_lock(fd)  # a fresh file: nobody else holds it; kept open, and so locked, until the rename
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private; a result file should not be
        if fcntl is None:  # Windows cannot rename a file that is open
            os.close(fd)
            fd = -1
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise _naming(err, path) from err
        raise
    finally:
        if fd >= 0:
            os.close(fd)
    if hasattr(os, "O_DIRECTORY"):
        dir_fd = os.open(path.parent, os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def _naming(err: OSError, path: Path) -> OSError:
    """``err`` naming ``path``: a write error from a buffer names no file, and the temporary file is not one the
    user knows. An error that names another file (a parent directory that could not be made) is kept."""
    named = Path(err.filename).name if err.filename else ""
    if err.errno is None or (named and not named.startswith(f".{path.name}.")):
        return err
    return OSError(err.errno, err.strerror or str(err), str(path))


# The temporary files of atomic_write: ".NAME.XXXXXXXX.tmp" (mkstemp's random part).
_TEMPORARY = re.compile(r"\.(.+)\.[a-z0-9_]{8}\.tmp")


def remove_stale_temporaries(directory: str | Path, names: str = "*") -> list[Path]:
    """Remove the temporary files that interrupted :func:`atomic_write` calls left in ``directory``.

    A temporary file still being written is locked by its writer and kept; one whose writer died
    (the lock goes with the process) is removed. Returns the removed files.

    Args:
        directory: Where to look (not below).
        names: Only temporaries of files whose names match this glob (``features-*.safetensors``):
            in a directory shared with other tools, leave their files alone.
    """
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for tmp in directory.iterdir():
        match = _TEMPORARY.fullmatch(tmp.name)
        if not match or not fnmatch.fnmatchcase(match[1], names) or not tmp.is_file():
            continue
        try:
            fd = os.open(tmp, os.O_RDWR)
        except FileNotFoundError:  # its writer just renamed it
            continue
        try:
            if try_lock(fd):
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
        finally:
            os.close(fd)
    return removed


def try_lock(fd: int) -> bool:
    """Take an exclusive advisory lock on an open file without waiting; False when another process holds it.

    The operating system releases the lock when the process ends, however it ends (kill -9
    included). Where ``fcntl`` does not exist (Windows) nothing is locked and this returns True.
    """
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_weights(model: nn.Module, path: str | Path, metadata: Mapping[str, Any] | None = None) -> Path:
    """Save ``model``'s state dict as safetensors (atomically) with JSON-encoded metadata."""
    from safetensors.torch import save

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"format": "pt", "convnets": convnets.__version__}
    meta.update({k: json.dumps(v) for k, v in (metadata or {}).items()})
    # Written by Python, not by safetensors' save_file, whose full-disk error is its own type, not an OSError.
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(save(state, metadata=meta)))


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata stored with a weights file (decoded from JSON)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for damaged headers
        raise WeightsError(f"{path}: not a readable safetensors file ({err})") from err
    out: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file, or of a .pt/.pth file loaded without unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    if path.stat().st_size == 0:
        raise WeightsError(f"{path}: the file is empty (an interrupted download or copy?)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:
            raise WeightsError(f"{path}: damaged or truncated safetensors file ({err})") from err
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsError(f"{path}: cannot be read as a plain tensor checkpoint ({err})") from err
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return state


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise :class:`WeightsMismatchError` listing missing, unexpected and mis-shaped keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: {tuple(state[k].shape)} in the {source}, {tuple(v.shape)} in the model"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or shapes):
        return

    def listing(title: str, items: list[str]) -> str:
        shown = "\n    ".join(items[:10]) + (f"\n    ... and {len(items) - 10} more" if len(items) > 10 else "")
        return f"\n  {title} ({len(items)}):\n    {shown}" if items else ""

    name = getattr(model, "name", "") or type(model).__name__
    raise WeightsMismatchError(
        f"the {source} does not fit {name}:"
        + listing("missing from the " + source, missing)
        + listing("not in the model", unexpected)
        + listing("different shapes", shapes)
    )


def load_weights(path: str | Path, model: nn.Module | None = None, **model_kwargs: Any) -> nn.Module:
    """Load a weights file into ``model``, or into the model its metadata names.

    Raises:
        WeightsMismatchError: the file was saved from another architecture or head size.
    """
    state = read_state_dict(path)
    if model is None:
        meta = read_metadata(path)
        if "model" not in meta:
            raise WeightsError(f"{path}: no model name in its metadata; pass the model to load into")
        kwargs = {"num_classes": meta.get("num_classes", 1000), "in_chans": meta.get("in_chans", 3)}
        kwargs.update(meta.get("model_kwargs", {}))
        kwargs.update(model_kwargs)
        model = convnets.create_model(meta["model"], **kwargs)
    check_state_dict(model, state, source=f"weights file {Path(path).name}")
    model.load_state_dict(state)
    return model


def head_keys(model: nn.Module) -> list[str]:
    """State-dict keys of the layers ``reset_classifier`` replaces (the final FC, and aux heads' FCs)."""
    keys = [k for k in model.state_dict() if k.startswith("head.fc.")]
    keys += [k for k in model.state_dict() if k.startswith("aux.") and ".head.fc." in k]
    return keys


def load_into(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> list[str]:
    """Load ``state`` into ``model``, keeping the model's own classifier where the class count differs.

    A checkpoint for 1000 ImageNet classes loads into a 3-class model: everything but the
    classifier is loaded, the classifier keeps its fresh initialisation, and the keys not loaded
    are printed and returned, so nothing is dropped silently. Any other mismatch is an error
    listing the keys.

    Returns:
        The checkpoint keys that were not loaded (those of the replaced classifier layers).
    """
    own = model.state_dict()
    replaced = {k.rsplit(".", 1)[0] for k in head_keys(model) if k in state and state[k].shape != own[k].shape}
    dropped = sorted(k for k in state if k.rsplit(".", 1)[0] in replaced)
    merged = {k: v for k, v in state.items() if k not in dropped} | {k: own[k] for k in dropped}
    check_state_dict(model, merged, source)
    model.load_state_dict(merged)
    if dropped:
        print(f"{source}: new classifier for {getattr(model, 'num_classes', '?')} classes; "
              f"not loaded: {', '.join(dropped)}")
    return dropped
