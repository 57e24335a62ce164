"""Classify images: the top-k classes of each, with their names and probabilities (``convnets predict``).

The model comes the way :func:`convnets.evaluate.load_member` takes it (a run, one of our weights
files, or registered weights such as ``resnet20:fashion-mnist``) with the classes and preprocessing
stored with its weights. Images are files, folders (searched recursively, in sorted order), open
binary file objects, PIL images, tensors or uint8 arrays. A file that cannot be classified (missing,
empty, truncated, not an image) gets a result with its reason instead of ending the run, so one bad
photo never costs the rest.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from PIL import Image
from torch import nn

from convnets.analysis.formatting import check_whole
from convnets.data.images import DECODE_ERRORS, IMAGE_EXTENSIONS, describe_error
from convnets.data.preprocess import Preprocessing
from convnets.data.views import TTA_VIEWS
from convnets.device import resolve_device
from convnets.errors import ConfigError, DataError, RunDirectoryError
from convnets.evaluate import Member, load_member, tta, view_kwargs
from convnets.weights import atomic_write
from convnets.weights.io import check_writable

OUT_FORMATS = (".csv", ".json")
# The first CSV column names, which also tell our earlier predictions file from a file of the user's.
CSV_HEAD = ["path", "error"]
JSON_KIND = "convnets predictions"

ImageInput = str | os.PathLike | BinaryIO | Image.Image | torch.Tensor | np.ndarray
ACCEPTED = "paths, folders, binary file objects, PIL images, tensors (C, H, W) or uint8 arrays (H, W, C)"


@dataclass
class Prediction:
    """What the model says about one image, or why it could not say anything.

    Attributes:
        path: the file; ``<image N>`` for the N-th in-memory image (from 0).
        classes: the top-k class names, most probable first (empty on error).
        probabilities: their probabilities (softmax of the logits, averaged over test-time views).
        indices: their class indices in the model's output.
        error: why the image could not be classified (``None`` when it was).
    """

    path: str
    classes: list[str] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def shown_path(self) -> str:
        """The path as one line of a terminal shows it: a newline, tab or other invisible character in a file name
        is written as its escape (``\\n``, ``\\u200b``), so that one image stays one line (files keep the name)."""
        return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in self.path)

    def line(self) -> str:
        """One line for a terminal: ``path: name 0.912, name 0.051, ...`` or ``path: error: reason``."""
        if self.error is not None:
            return f"{self.shown_path}: error: {self.error}"
        return f"{self.shown_path}: " + ", ".join(f"{c} {p:.4f}" for c, p in zip(self.classes, self.probabilities,
                                                                           strict=True))


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def _files_in(folder: Path) -> Iterator[tuple[str, str | None]]:
    """Every file under ``folder`` (recursively, sorted) as (path, why it cannot be classified or None).

    Files of other suffixes than images' get a reason, so that a folder of the wrong files says so;
    hidden files and folders are left out, as the folder dataset leaves them out.
    """
    found, unreadable = [], []
    for root, subfolders, files in os.walk(folder, onerror=lambda err: unreadable.append(err)):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        found += [Path(root, name) for name in files if not name.startswith(".")]
    for err in unreadable:
        yield str(err.filename), f"folder cannot be read ({err.strerror or err})"
    for path in sorted(found):
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            yield str(path), _unusable(path)
        else:
            yield str(path), f"not an image file (extension {path.suffix or 'none'})"
    if not found and not unreadable:
        yield str(folder), f"no files in it (images: {', '.join(sorted(IMAGE_EXTENSIONS))})"


def _unusable(path: Path) -> str | None:
    """Why the file at ``path`` cannot be an image before it is opened (missing, broken link, empty), or None."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "broken link" if path.is_symlink() else "no such file or directory"
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    return "empty file (0 bytes)" if size == 0 else None


def collect_images(images: ImageInput | Iterable[ImageInput]) -> list[tuple[str, Any, str | None]]:
    """Every input as (name, image, reason it cannot be used or None); folders are expanded.

    Raises:
        ConfigError: no inputs, or one of a type that is not an image (its position is named).
    """
    one = (isinstance(images, str | os.PathLike | Image.Image | torch.Tensor | np.ndarray | bytes | bytearray)
           or _is_file(images) or not isinstance(images, Iterable))
    items = [images] if one else list(images)
    if not items:
        raise ConfigError(f"predict needs at least one image: {ACCEPTED}")
    out: list[tuple[str, Any, str | None]] = []
    for i, item in enumerate(items):
        if isinstance(item, Image.Image | torch.Tensor | np.ndarray):
            if isinstance(item, torch.Tensor):
                _check_tensor(item, i)
            elif isinstance(item, np.ndarray):
                _check_array(item, i)
            out.append((f"<image {i}>", item, None))
        elif _is_file(item):
            if isinstance(item, io.TextIOBase):
                raise ConfigError(f"file object {i} is open in text mode; open the image with open(path, 'rb')")
            name = getattr(item, "name", None)
            # Pillow reads a file object from its start (it seeks to 0), whatever was read of it before.
            closed = "the file object is closed" if getattr(item, "closed", False) else None
            out.append((name if isinstance(name, str) else f"<image {i}>", item, closed))
        elif isinstance(item, bytes | bytearray):
            raise ConfigError(f"item {i} is {type(item).__name__}: give an image file's contents as "
                              "io.BytesIO(data), or its path as a str")
        elif isinstance(item, str | os.PathLike) and os.fspath(item).strip():
            path = Path(item)
            if path.is_dir():
                out += [(name, name, reason) for name, reason in _files_in(path)]
            else:
                out.append((str(path), str(path), _unusable(path)))
        else:
            raise ConfigError(f"images must be {ACCEPTED}; item {i} is "
                              f"{repr(item)[:60] if isinstance(item, str) else type(item).__name__}")
    return out


def _is_file(item: Any) -> bool:
    """An open file object (anything with ``read``, as ``Image.open`` takes), not a path."""
    return callable(getattr(item, "read", None)) and not isinstance(item, str | os.PathLike)


def _check_array(image: np.ndarray, i: int) -> None:
    """An array image is (H, W, C) with C 1 or 3, or (H, W): uint8 pixels, as Pillow's and NumPy's images are."""
    shape = image.shape
    if not (image.ndim == 2 or (image.ndim == 3 and shape[2] in (1, 3))) or 0 in shape:
        raise ConfigError(f"array image {i} has shape {shape}; give one image as (H, W, C) with C 1 or 3, or (H, W)")
    if image.dtype != np.uint8:
        raise ConfigError(f"array image {i} is {image.dtype}; give uint8 pixels (0..255)")


def _check_tensor(image: torch.Tensor, i: int) -> None:
    """A tensor image is (C, H, W) or (H, W), C 1 or 3: uint8 pixels 0..255 or floats 0..1."""
    shape = tuple(image.shape)
    if not (image.ndim == 2 or (image.ndim == 3 and shape[0] in (1, 3))) or 0 in shape:
        raise ConfigError(f"tensor image {i} has shape {shape}; give one image as (C, H, W) with C 1 or 3, or (H, W)")
    if not (image.dtype == torch.uint8 or image.is_floating_point()):
        raise ConfigError(f"tensor image {i} is {image.dtype}; give uint8 pixels (0..255) or floats (0..1)")


def _as_pil(image: torch.Tensor | np.ndarray) -> Image.Image:
    """A tensor image (uint8 pixels, or floats in 0..1) or a uint8 (H, W, C) array as the Pillow image of its pixels."""
    if isinstance(image, np.ndarray):
        array = image
    else:
        pixels = image.detach().cpu()
        if pixels.is_floating_point():
            pixels = (pixels.float().nan_to_num(0.0).clamp(0, 1) * 255).round().to(torch.uint8)
        array = pixels.numpy() if pixels.ndim == 2 else pixels.permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(array.squeeze(-1) if array.ndim == 3 and array.shape[2] == 1
                                                else array))


def _prepare(member: Member, image: str | BinaryIO | Image.Image | torch.Tensor | np.ndarray) -> torch.Tensor:
    """One image as the model's input: decoded, fitted to its size and normalised as its weights were trained.

    Files (paths and open file objects), Pillow images, tensors and arrays go through the same decoding
    (:func:`convnets.data.images.upright_image`), so a photo gives the same input whichever of them it comes as.

    Raises:
        One of DECODE_ERRORS: a file that is not a readable image.
    """
    return preprocessing_of(member)(_as_pil(image) if isinstance(image, torch.Tensor | np.ndarray) else image)


def preprocessing_of(member: Member) -> Preprocessing:
    """The member's recipe: its weights' own, or (a bare model) a fit to its input size with its mean and std."""
    if member.preprocessing is not None:
        return member.preprocessing
    c, h, w = member.input_size
    return Preprocessing(size=(h, w), channels=c, mean=member.mean, std=member.std)


# --------------------------------------------------------------------------------------------
# Predicting
# --------------------------------------------------------------------------------------------


def as_member(model: Member | nn.Module | str | os.PathLike, device: torch.device,
              classes: Sequence[str] | None = None, mean: Sequence[float] | None = None,
              std: Sequence[float] | None = None, input_size: Sequence[int] | None = None) -> Member:
    """A :class:`Member` on ``device``: loaded from a source, or a bare model with its classes and preprocessing.

    Raises:
        ConfigError: a bare model without ``mean``/``std``, or with a class list of another length.
    """
    if isinstance(model, Member):
        model.model.to(device).eval()
        return model
    if not isinstance(model, nn.Module):
        return load_member(model, device)
    name = getattr(model, "name", "") or type(model).__name__
    if any(t.is_meta for t in model.state_dict().values()):
        raise ConfigError(f"{name} is on the meta device (shapes without values): build it on a real device, or "
                          "give a run directory, a weights file or 'MODEL:TAG'")
    if mean is None or std is None:
        raise ConfigError(f"predict with a bare {name} model needs mean= and std= (the normalisation it was "
                          "trained with); or give a run directory, a weights file or 'MODEL:TAG'")
    # A registered model's nominal input; weights trained at another size (28x28 Fashion-MNIST) need theirs.
    input_size = tuple(input_size or getattr(model, "input_size", ()) or ())
    if len(input_size) != 3 or not all(isinstance(n, int) and n > 0 for n in input_size):
        raise ConfigError(f"{name}: input_size must be (C, H, W), the size it was trained at; got {input_size or None}")
    count = getattr(model, "num_classes", None)
    names = list(classes) if classes is not None else [str(i) for i in range(count or 0)]
    if count and len(names) != count:
        raise ConfigError(f"{len(names)} class names for {name}, which predicts {count} classes")
    if not names:  # every image would get an empty top-k
        raise ConfigError(f"{name} has no classifier (num_classes=0): its outputs are features, not classes"
                          if count == 0 else f"{name} does not say how many classes it predicts: give classes=")
    member = Member(name, model, names, input_size, tuple(mean), tuple(std), name)
    preprocessing_of(member)  # mean/std that cannot normalise its input are refused once, not for every image
    member.model = model.to(device).eval()
    return member


@torch.no_grad()
def predict(model: Member | nn.Module | str | os.PathLike, images: ImageInput | Iterable[ImageInput], *,
            top_k: int = 5, batch_size: int = 64, views: str = "none", device: str | torch.device | None = None,
            classes: Sequence[str] | None = None, mean: Sequence[float] | None = None,
            std: Sequence[float] | None = None, input_size: Sequence[int] | None = None,
            progress: bool | None = False) -> list[Prediction]:
    """The top-k classes of every image, with their probabilities; a file that cannot be read gets its reason.

    Args:
        model: a run directory, one of our weights files, registered weights (``"resnet20:fashion-mnist"``),
            a loaded :class:`~convnets.evaluate.Member`, or a model with ``classes``/``mean``/``std`` given.
        images: paths of files or folders (recursive, sorted), open binary file objects, PIL images,
            tensors (C, H, W) of uint8 pixels or floats in 0..1, or uint8 arrays (H, W, C) or (H, W); one or
            a sequence.
        top_k: classes per image, >= 1 (more than the model has means all of them).
        batch_size: images per forward pass, >= 1.
        views: test-time views averaged per image, as ``convnets evaluate`` takes them (none, mirror, ten-crop).
        device: cpu, cuda, cuda:N or mps (default: the best present).
        classes, mean, std, input_size: for a bare model, its class names, normalisation and the (C, H, W)
            it was trained at (default: its ``input_size``).
        progress: a progress bar on standard error (None: only on a terminal).

    Returns:
        One :class:`Prediction` per image, in input order (a folder's files sorted), bad files included.

    Raises:
        ConfigError: an argument out of range or of the wrong type (checked before the model is loaded).
        FileNotFoundError, RunDirectoryError, WeightsError: the model cannot be loaded.
    """
    top_k, batch_size = check_whole(top_k, "top_k"), check_whole(batch_size, "batch_size")
    if views not in TTA_VIEWS:
        raise ConfigError(f"views must be one of {', '.join(TTA_VIEWS)}, got {views!r}")
    items = collect_images(images)
    dev = resolve_device(device)
    member = as_member(model, dev, classes, mean, std, input_size)
    k = min(top_k, len(member.classes))
    kwargs = view_kwargs(views, member.input_size[1], member.mean, member.std)
    results: dict[int, Prediction] = {i: Prediction(name, error=reason)
                                      for i, (name, _, reason) in enumerate(items) if reason is not None}
    todo = [(i, image) for i, (_, image, reason) in enumerate(items) if reason is None]
    from tqdm import tqdm

    with tqdm(total=len(todo), unit="image", file=sys.stderr, dynamic_ncols=True, leave=False,
              disable=None if progress is None else not progress) as bar:
        for start in range(0, len(todo), batch_size):
            batch, inputs = todo[start:start + batch_size], []
            for i, image in batch:
                try:
                    inputs.append((i, _prepare(member, image)))
                except DECODE_ERRORS as err:
                    results[i] = Prediction(items[i][0], error=_reason(err))
            if inputs:
                x = torch.stack([t for _, t in inputs]).to(dev)
                probs = tta(member.model, x, views, **kwargs).cpu()
                top = probs.topk(k, dim=1)
                for (i, _), p, idx in zip(inputs, top.values.tolist(), top.indices.tolist(), strict=True):
                    results[i] = _result(items[i][0], member, p, idx)
            bar.update(len(batch))
    return [results[i] for i in range(len(items))]


def _reason(err: BaseException) -> str:
    """Why a file could not be classified, in one line."""
    text = describe_error(err)
    if isinstance(err, OSError) and err.strerror:  # a file the system refused: its reason, not Pillow's wording
        text = f"{type(err).__name__}: {err.strerror}"
    return " ".join(text.split())


def _result(name: str, member: Member, probs: list[float], indices: list[int]) -> Prediction:
    if not all(math.isfinite(p) for p in probs):  # argmax of NaN would still name a class
        return Prediction(name, error=f"{member.name} gives NaN or infinite outputs for it")
    return Prediction(name, [member.classes[j] for j in indices], probs, indices)


# --------------------------------------------------------------------------------------------
# The predictions file
# --------------------------------------------------------------------------------------------


def _is_ours(path: Path) -> bool:
    """Whether ``path`` is a predictions file written by :func:`write_predictions`."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
            if path.suffix.lower() == ".csv":
                return next(csv.reader(f), [])[:2] == CSV_HEAD
            payload = json.load(f)
    except (OSError, ValueError, UnicodeDecodeError, csv.Error):
        return False
    return isinstance(payload, dict) and payload.get("kind") == JSON_KIND


def check_out(out: str | Path, force: bool = False) -> Path:
    """``out`` if predictions may be written there, checked before any work.

    Raises:
        ConfigError: a suffix other than .csv or .json.
        RunDirectoryError: ``out`` is a directory, its folder is a file, or it is a file not written by
            convnets predict (unless ``force``).
    """
    out = Path(out)
    if out.suffix.lower() not in OUT_FORMATS:
        raise ConfigError(f"{out}: the predictions file must end in .csv or .json (the suffix says the format)")
    if out.is_dir():
        raise RunDirectoryError(f"{out} is a directory; --out names the predictions file, e.g. {out}/predictions.csv")
    if any(p.exists() and not p.is_dir() for p in out.parents):
        raise RunDirectoryError(f"{out}: its folder {next(p for p in out.parents if p.exists() and not p.is_dir())} "
                                "is a file")
    if out.exists() and not force and not _is_ours(out):
        raise RunDirectoryError(f"{out} exists and is not a predictions file of convnets; choose another --out, "
                                "move it, or pass --force to replace it")
    check_writable(out.parent, out)  # a read-only folder is found before the images are classified
    return out


def write_predictions(predictions: Sequence[Prediction], out: str | Path, *, source: str = "", views: str = "none",
                      force: bool = False) -> Path:
    """Write ``predictions`` to ``out`` (.csv or .json by its suffix), whole or not at all.

    CSV: one row per image, ``path, error, class_1, index_1, probability_1, ..., class_k, ...``.
    JSON: ``{"kind", "weights", "views", "top_k", "predictions": [{path, classes, indices, probabilities,
    error}]}``.
    """
    out = check_out(out, force)
    k = max((len(p.classes) for p in predictions), default=0)
    if out.suffix.lower() == ".csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(CSV_HEAD + [f"{col}_{r}" for r in range(1, k + 1)
                                    for col in ("class", "index", "probability")])
        for p in predictions:
            top = [v for row in zip(p.classes, p.indices, p.probabilities, strict=True) for v in row]
            writer.writerow([p.path, p.error or "", *top] + [""] * (3 * k - len(top)))
        text = buffer.getvalue()
    else:
        text = json.dumps({"kind": JSON_KIND, "weights": source, "views": views, "top_k": k,
                           "predictions": [{"path": p.path, "classes": p.classes, "indices": p.indices,
                                            "probabilities": p.probabilities, "error": p.error}
                                           for p in predictions]}, indent=1, ensure_ascii=False) + "\n"
        # A file or class-folder name that is not UTF-8 holds lone surrogates (Python's surrogateescape): JSON
        # escapes them, so the file stays valid UTF-8 and json.load gives the name back as Python holds it.
        text = re.sub("[\udc80-\udcff]", lambda m: f"\\u{ord(m[0]):04x}", text)
    # In a CSV such a name is written as its original bytes, as bad_files.tsv writes it.
    atomic_write(out, lambda tmp: Path(tmp).write_text(text, encoding="utf-8", errors="surrogateescape", newline=""))
    return out


def classified(predictions: Sequence[Prediction]) -> int:
    """How many images were classified."""
    return sum(p.ok for p in predictions)


def none_classified(predictions: Sequence[Prediction]) -> DataError:
    """The error of a run that classified nothing: how many inputs and the first reason."""
    first = predictions[0]
    return DataError(f"none of the {len(predictions)} inputs could be classified "
                     f"(first: {first.shown_path}: {first.error})")
