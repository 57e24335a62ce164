"""Weights files: save, read the tensors, read and check the metadata, check a state dict's fit.

A weights file of ours holds the state dict and, in its safetensors header, the model name, the
number of classes, input size, normalisation and where the weights came from, so that
``load_weights(path)`` rebuilds the right model without the user repeating any of it. That
metadata is checked field by field, and against the tensors' shapes in the header, before any
model is built: a file saying ``num_classes = 10**9`` is refused, not allocated.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convnets.errors import ConfigError, ConvnetsError, WeightsError, WeightsMismatchError
from convnets.weights.io import atomic_write

# The metadata fields convnets writes and reads, by the type each must have. Others are kept as they are.
_STR_FIELDS = ("model", "dataset", "command")
_JSON_FIELDS = ("num_classes", "in_chans", "input_size", "mean", "std", "classes", "model_kwargs", "bn_eps",
                "preprocessing")
MAX_SIDE = 16384  # largest input height/width a weights file may ask for
MAX_CHANNELS = 1024  # most input channels (hyperspectral images have a few hundred)


def save_weights(model: nn.Module | Mapping[str, torch.Tensor], path: str | Path,
                 metadata: Mapping[str, Any] | None = None) -> Path:
    """Save ``model``'s state dict (or a state dict) as safetensors (atomically) with JSON-encoded metadata.

    A BatchNorm eps other than PyTorch's 1e-5, shared by every BatchNorm layer (set when peer
    weights that need it were loaded, e.g. torchvision's EfficientNet-B5), is recorded as
    ``bn_eps`` so that the file loads into the same network. The metadata is checked as
    :func:`read_metadata` will check it, so that no file is written that could not be read back.

    Raises:
        ConfigError: a metadata key that is not a string, or a value that is not JSON.
        WeightsError: a metadata field :func:`read_metadata` would refuse (the message names it).
    """
    from safetensors.torch import save

    import convnets

    path = Path(path)
    raw = model.state_dict() if isinstance(model, nn.Module) else tensors_of(model, "state dict")
    state = {k: v.detach().contiguous().cpu() for k, v in raw.items()}
    meta = {"format": "pt", "convnets": convnets.__version__}
    eps = set()
    if isinstance(model, nn.Module):
        eps = {m.eps for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    if len(eps) == 1 and eps != {1e-5}:
        meta["bn_eps"] = json.dumps(eps.pop())
    for key, value in (metadata or {}).items():
        if not isinstance(key, str):
            raise ConfigError(f"cannot save {path}: metadata keys are strings, got {key!r}")
        try:
            meta[key] = json.dumps(value)
        except (TypeError, ValueError) as err:  # an object JSON has no form for, or a circular one
            raise ConfigError(f"cannot save {path}: metadata field {key!r} = {_short(value)} is not JSON "
                              "(numbers, strings, lists, dicts)") from err
    decoded = {k: json.loads(v) for k, v in meta.items() if k not in ("format", "convnets")}  # as read back
    check_metadata(decoded, f"cannot save {path}", {k: tuple(v.shape) for k, v in state.items()
                                                    if k.startswith("head.fc.")})
    # Written by Python, not by safetensors' save_file, whose full-disk error is its own type, not an OSError.
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(save(state, metadata=meta)))


def _check_file(path: Path) -> None:
    if path.is_dir():
        raise WeightsError(f"{path} is a directory, not a weights file")
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    if path.stat().st_size == 0:
        raise WeightsError(f"{path}: the file is empty (an interrupted download or copy?)")


def file_format(path: str | Path) -> str:
    """What a file holds, from its first bytes rather than its name: ``safetensors``, ``torch`` (a
    ``torch.save`` checkpoint), ``keras`` (Keras's HDF5 weights or .keras archive), ``zip`` (another
    archive), ``html``, ``json`` or ``unknown``."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(16)
    if head[8:9] == b"{":  # a safetensors file: an 8-byte header length, then its JSON header
        return "safetensors"
    if head.startswith(b"PK\x03\x04"):  # torch.save's zip format; NumPy's .npz is a zip too
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):  # a truncated checkpoint: torch.load will say so
            return "torch"
        if "model.weights.h5" in names:
            return "keras"
        return "torch" if any(n.endswith("data.pkl") for n in names) else "zip"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "keras"
    if head[:1] == b"\x80":  # a pickle: torch.save's legacy format
        return "torch"
    text = head.lstrip()
    if text[:1] == b"<":
        return "html"
    if text[:1] in (b"{", b"["):
        return "json"
    return "unknown"


_FORMAT_WORDS = {
    "torch": "it is a PyTorch checkpoint, saved with torch.save; weights saved by convnets are .safetensors files "
             "such as a run's best.safetensors",
    # Told by its first bytes: any HDF5 file is one, not only Keras's (h5py is not needed to say this much).
    "keras": "it is HDF5 or a .keras archive, as Keras weights are: convnets.weights.load(PATH) reads Keras weights "
             "and convnets transfer MODEL --weights PATH fine-tunes from them; evaluate, predict and export take "
             "the run that writes (or a file saved by convnets)",
    "zip": "it is a zip archive that is not a PyTorch checkpoint, a NumPy .npz perhaps",
    "html": "it is a web page (HTML), not weights: a login or error page saved in place of the file?",
    "json": "it is JSON text, not weights: a run's config.json? Give the run directory or its best.safetensors",
}


def _format_words(path: Path, kind: str) -> str:
    if kind == "unknown" and path.suffix == ".onnx":
        return "it is an ONNX model; convnets reads PyTorch state dicts and safetensors files"
    return _FORMAT_WORDS.get(kind, "damaged, truncated or another format")


@contextlib.contextmanager
def safetensors_path(path: str | Path) -> Iterator[str]:
    """``path`` as safetensors can open it: a name that is not UTF-8 (a folder named in Latin-1, which Python holds
    with surrogates) is refused by its Rust code, so the file is opened here and its descriptor's name passed."""
    name = str(path)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        fd = os.open(path, os.O_RDONLY)
        try:
            yield f"/dev/fd/{fd}"
        finally:
            os.close(fd)
        return
    yield name


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata stored with a safetensors weights file, decoded from JSON and checked.

    Raises:
        WeightsError: not a safetensors file, or a field of the wrong type, out of range, or at
            odds with the tensors (the message names the field).
    """
    from safetensors import safe_open

    path = Path(path)
    _check_file(path)
    kind = file_format(path)
    if kind != "safetensors":
        raise WeightsError(f"{path}: not a readable safetensors file: {_format_words(path, kind)}")
    try:
        with safetensors_path(path) as name, safe_open(name, framework="pt") as f:
            raw = f.metadata() or {}
            names = f.keys()
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in names if k.startswith("head.fc.")}
    except Exception as err:  # safetensors raises its own error types for damaged headers
        raise WeightsError(f"{path}: not a readable safetensors file (damaged, truncated or another format: "
                           f"{err})") from err
    meta: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            meta[key] = json.loads(value)
        except json.JSONDecodeError as err:
            if key in _JSON_FIELDS:
                raise WeightsError(f"{path}: metadata field {key!r} is not JSON: {value[:60]!r}") from err
            meta[key] = value  # "format": "pt", a version string, or a plain string a user wrote
    check_metadata(meta, str(path), shapes)
    return meta


def check_metadata(meta: Mapping[str, Any], label: str, shapes: Mapping[str, tuple[int, ...]] | None = None) -> None:
    """Check each field convnets uses, and that it agrees with the classifier's shape in ``shapes``.

    Raises:
        WeightsError: naming the first field that is wrong and what it may be.
    """

    def bad(field: str, why: str) -> WeightsError:
        return WeightsError(f"{label}: metadata field {field!r} = {_short(meta[field])} {why}")

    for field in _STR_FIELDS:
        if field in meta and not isinstance(meta[field], str):
            raise bad(field, "must be a string")
    if "model" in meta:
        from convnets.registry import model_entry

        try:
            model_entry(meta["model"])
        except ConvnetsError as err:
            raise bad("model", f"is not a model convnets knows ({err})") from err
    if "num_classes" in meta:
        n = meta["num_classes"]
        if not _is_int(n) or n < 0:
            raise bad("num_classes", "must be a whole number >= 0")
        rows = next((s[0] for k, s in sorted((shapes or {}).items()) if s), None)
        if shapes is not None and rows != (n or None):
            held = f"its classifier head.fc has {rows} outputs" if rows else "it holds no classifier (head.fc)"
            raise bad("num_classes", f"disagrees with the file's tensors: {held}")
    if "in_chans" in meta and (not _is_int(meta["in_chans"]) or not 1 <= meta["in_chans"] <= MAX_CHANNELS):
        raise bad("in_chans", f"must be a whole number from 1 to {MAX_CHANNELS}")
    if "input_size" in meta:
        size = meta["input_size"]
        if not (isinstance(size, list) and len(size) == 3 and all(_is_int(s) for s in size)
                and 1 <= size[0] <= MAX_CHANNELS and all(1 <= s <= MAX_SIDE for s in size[1:])):
            raise bad("input_size", f"must be [channels, height, width]: channels 1-{MAX_CHANNELS}, "
                      f"sides 1-{MAX_SIDE}")
        if "in_chans" in meta and size[0] != meta["in_chans"]:
            raise bad("input_size", f"has {size[0]} channels but in_chans is {meta['in_chans']}")
    channels = meta["input_size"][0] if "input_size" in meta else meta.get("in_chans")
    for field in ("mean", "std"):
        if field in meta:
            values = meta[field]
            if not (isinstance(values, list) and values and all(_is_number(v) for v in values)):
                raise bad(field, "must be a list of numbers, one per channel")
            if channels is not None and len(values) != channels:
                raise bad(field, f"has {len(values)} values for {channels} input channel(s)")
            if field == "std" and not all(v > 0 for v in values):
                raise bad(field, "must be positive")
    if "classes" in meta:
        classes = meta["classes"]
        if not (isinstance(classes, list) and all(isinstance(c, (str, int)) for c in classes)):
            raise bad("classes", "must be a list of class names")
        if _is_int(meta.get("num_classes")) and len(classes) != meta["num_classes"]:
            raise bad("classes", f"names {len(classes)} classes but num_classes is {meta['num_classes']}")
    if "bn_eps" in meta and not (_is_number(meta["bn_eps"]) and 0 < meta["bn_eps"] < 1):
        raise bad("bn_eps", "must be a number between 0 and 1")
    if "preprocessing" in meta:
        from convnets.data.preprocess import Preprocessing

        try:
            prep = Preprocessing.from_dict(meta["preprocessing"])
        except ConfigError as err:
            raise bad("preprocessing", f"is not a preprocessing recipe: {err}") from None
        if "input_size" in meta and [prep.channels, *prep.size] != meta["input_size"]:
            raise bad("preprocessing", f"gives inputs {[prep.channels, *prep.size]}, input_size says "
                      f"{meta['input_size']}")
    if "model_kwargs" in meta and not (isinstance(meta["model_kwargs"], dict)
                                       and all(isinstance(k, str) for k in meta["model_kwargs"])):
        raise bad("model_kwargs", "must be a JSON object of builder arguments")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, or of a ``torch.save`` file loaded without unpickling code.

    The format is told by the file's content, not its name. A training checkpoint that nests the
    weights under ``"state_dict"``, ``"model"`` or ``"model_state_dict"`` (ours, Lightning's,
    timm's train script's, PyTorch's tutorials') gives the nested state dict.

    Raises:
        WeightsError: empty, damaged, truncated, a pickle that asks for code, or not a state dict.
        FileNotFoundError: no such file.
    """
    path = Path(path)
    _check_file(path)
    kind = file_format(path)
    if kind == "safetensors":
        from safetensors.torch import load_file

        try:
            with safetensors_path(path) as name:
                return load_file(name)
        except Exception as err:
            raise WeightsError(f"{path}: damaged or truncated safetensors file, or another format ({err})") from err
    if kind == "unknown" and path.suffix == ".safetensors":
        raise WeightsError(f"{path}: not a readable safetensors file: {_format_words(path, kind)}")
    if (kind in _FORMAT_WORDS and kind != "torch") or (kind == "unknown" and path.suffix == ".onnx"):
        raise WeightsError(f"{path}: not a weights file: {_format_words(path, kind)}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises UnpicklingError, RuntimeError or others for a file it refuses
        raise WeightsError(f"{path}: cannot be read as a plain tensor checkpoint: {describe_refusal(path, err)}"
                           ) from err
    return tensors_of(state, str(path))


def describe_refusal(path: Path, err: Exception) -> str:
    """Why ``torch.load(path, weights_only=True)`` refused a file, in a sentence: the objects its pickle asks
    for (read without running them), else the first line of PyTorch's own message."""
    try:
        wanted = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # a legacy or damaged file: its globals cannot be listed
        wanted = []
    if not wanted:
        lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip().splitlines() if line.strip()]
        if lines and lines[0].startswith("Weights only load failed"):
            # PyTorch's first line advises weights_only=False, which would run whatever a damaged file holds.
            detail = next((line for line in lines[1:] if not line.startswith(("Please file", "Check the"))), "")
            return (f"PyTorch's safe loader refused it{f' ({detail[:100]})' if detail else ''}: it is damaged, or "
                    "not a PyTorch checkpoint")
        return lines[0][:200] if lines else type(err).__name__
    if any(name.startswith(("torch.nn.modules.", "convnets.models.")) for name in wanted):
        what = ("a whole pickled model (torch.save(model)); save its weights instead: "
                "torch.save(model.state_dict(), PATH) or convnets.weights.save_weights(model, PATH)")
    elif any(name.startswith("numpy") for name in wanted):
        what = "NumPy arrays rather than tensors; convert them with torch.from_numpy before saving"
    else:
        what = f"objects other than tensors ({', '.join(wanted[:3])})"
    return (f"it holds {what}. Unpickling those could run code, so convnets does not; if you trust the file, "
            "load it with torch.load(path, weights_only=False) and pass its state dict")


def tensors_of(state: object, label: str) -> dict[str, torch.Tensor]:
    """The tensors of a state dict, also when nested under ``"state_dict"`` or ``"model"``.

    Raises:
        WeightsError: not a mapping of names to tensors (the odd entries are named).
    """
    if isinstance(state, Mapping):
        for nest in ("state_dict", "model", "model_state_dict"):
            if isinstance(state.get(nest), Mapping):
                state = state[nest]
                break
    if not isinstance(state, Mapping):
        raise WeightsError(f"{label}: holds a {type(state).__name__}, not a state dict")
    odd = [k for k, v in state.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if odd:
        raise WeightsError(f"{label}: not a state dict of tensors: {', '.join(map(repr, odd[:5]))} hold other values")
    # A sparse tensor is the same values as the dense one a layer holds.
    return {k: v.to_dense() if v.layout != torch.strided else v for k, v in state.items()}


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
    # Loading casts: float16 or float64 into float32 is exact enough, but integer or complex values
    # into a float weight (or floats into a counter) would load something else than was saved.
    types = [
        f"{k}: {state[k].dtype} in the {source}, {v.dtype} in the model"
        for k, v in expected.items()
        if k in state and (_kind(state[k]) != _kind(v))
    ]
    if not (missing or unexpected or shapes or types):
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
        + listing("different kinds of values", types)
    )


def _kind(tensor: torch.Tensor) -> str:
    return "complex" if tensor.is_complex() else "float" if tensor.is_floating_point() else "integer"


def _finite(tensor: torch.Tensor) -> bool:
    # PyTorch has no isfinite for the one-byte floats (float8_e4m3fn, float8_e5m2...): their float32 values tell.
    return bool(torch.isfinite(tensor if tensor.element_size() > 1 else tensor.float()).all())


def check_values(state: Mapping[str, torch.Tensor], label: str, *, into_meta: bool = False) -> None:
    """Refuse weights without usable values: meta tensors (shapes only), NaN or infinity (a diverged training's).

    Args:
        state: the tensors to load.
        label: how the message names them.
        into_meta: they go into a model on the meta device, which takes shapes without values.

    Raises:
        WeightsError: naming the tensors.
    """

    def listed(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

    empty = [k for k, v in state.items() if v.is_meta]
    if empty and not into_meta:
        raise WeightsError(f"{label}: {listed(empty)} are meta tensors, shapes without values (saved from a model "
                           "on the meta device?)")
    bad = [k for k, v in state.items()
           if not v.is_meta and (v.is_floating_point() or v.is_complex()) and not _finite(v)]
    if bad:
        raise WeightsError(f"{label} holds NaN or infinite values in {listed(bad)}: the training that made them "
                           "diverged; use an earlier checkpoint")
