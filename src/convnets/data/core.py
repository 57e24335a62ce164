"""The dataset core: what every format produces, the checks every format shares, in-memory shape changes.

Every loader returns a :class:`Dataset` with a train and a test split, or only the splits asked
for (``splits=("test",)`` reads no training image: what evaluation needs). Small datasets are
held in memory as uint8 tensors of shape (N, C, H, W) (:class:`TensorSplit`); image folders
stay on disk and are decoded by parallel workers (:class:`~convnets.data.images.ImageFolderSplit`).
Per-channel mean, standard deviation and the pixel covariance (for PCA colour augmentation) are
computed from the training split, on the 0..1 scale.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from convnets.data.badfiles import BadFileLog
from convnets.errors import ConfigError, DataError

if TYPE_CHECKING:
    from convnets.data.images import ImageFolderSplit
    from convnets.data.preprocess import Preprocessing

logger = logging.getLogger("convnets.data")

# The largest image side any loader produces. EfficientNet-B7, the largest input of the case studies,
# takes 600; 4096 leaves room for high-resolution experiments while one decoded image stays under 50 MB.
MAX_IMAGE_SIZE = 4096
RESIZE_MODES = ("auto", "pad", "interpolate")
# The splits a Dataset holds; an image folder's val/ (or test/) folder, or its held-out part, is "test".
SPLITS = ("train", "test")


@dataclass
class TensorSplit:
    """One split held in memory.

    Attributes:
        images: uint8 tensor (N, C, H, W).
        labels: int64 tensor (N,).
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> TensorSplit:
        """The samples at ``index`` (int64 positions), in that order."""
        return TensorSplit(self.images[index], self.labels[index])


@dataclass
class Dataset:
    """A dataset ready for training: both splits and what a model and a loader need to know.

    Attributes:
        name: Short name (``fashion-mnist``, ``digits``, ``cifar10``, or the folder's name).
        classes: Class names; label ``i`` is ``classes[i]``.
        channels: Channels of every image the splits yield (1 or 3).
        image_size: (height, width) of every image the splits yield.
        mean: Per-channel mean of the training split, pixel values scaled to 0..1; None when the
            training split was not loaded (``splits`` without ``"train"``): bring the weights' own.
        std: Per-channel standard deviation of the training split, same scale (None likewise).
        pixel_cov: (C, C) covariance of training pixels on the 0..1 scale, for PCA colour augmentation
            (None likewise).
        train: Training split; None when not loaded.
        test: Test split (an image folder's ``val/`` folder or held-out part); None when not loaded.
        bad_files: Files skipped in any split: while scanning, computing statistics, or by any loader
            made with :func:`~convnets.data.make_loader` (they all record into this one log).
        source: Where the data was read from.
    """

    name: str
    classes: list[str]
    channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    pixel_cov: torch.Tensor | None
    train: TensorSplit | ImageFolderSplit | None
    test: TensorSplit | ImageFolderSplit | None
    bad_files: BadFileLog = field(default_factory=BadFileLog)
    source: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_memory(self) -> bool:
        return isinstance(self.train if self.train is not None else self.test, TensorSplit)

    def describe(self) -> str:
        """One line: name, sizes, shape, classes and statistics."""
        h, w = self.image_size
        sizes = " / ".join(f"{len(part) if part is not None else 'not loaded'} {name}"
                           for name, part in (("train", self.train), ("test", self.test)))
        stats = "no training statistics"
        if self.mean is not None and self.std is not None:
            stats = (f"mean ({', '.join(f'{m:.3f}' for m in self.mean)}) "
                     f"std ({', '.join(f'{s:.3f}' for s in self.std)})")
        kind = "in memory" if self.in_memory else "streamed from disk"
        return f"{self.name}: {sizes} images, {self.channels}x{h}x{w}, {self.num_classes} classes, {kind}; {stats}"


# --------------------------------------------------------------------------------------------
# argument checks shared by every format (the Python API gets the same messages as the CLI)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_image_size(image_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    """``image_size`` as (height, width), or None; a ConfigError naming the allowed range otherwise."""
    if image_size is None:
        return None
    sides = [image_size] if _is_int(image_size) else image_size
    if isinstance(sides, (list, tuple)) and len(sides) in (1, 2) and all(_is_int(s) for s in sides):
        h, w = int(sides[0]), int(sides[-1])
        if 1 <= h <= MAX_IMAGE_SIZE and 1 <= w <= MAX_IMAGE_SIZE:
            return (h, w)
    raise ConfigError(
        f"image_size must be a whole number or (height, width), each from 1 to {MAX_IMAGE_SIZE}; got {image_size!r}"
    )


def check_channels(channels: int | None) -> int | None:
    """``channels`` if it is None, 1 or 3; a ConfigError otherwise."""
    if channels is None or (_is_int(channels) and channels in (1, 3)):
        return channels
    raise ConfigError(f"channels must be 1 (grey) or 3 (RGB); got {channels!r}")


def check_resize(resize: str) -> str:
    """``resize`` if it is a known mode; a ConfigError listing them otherwise."""
    if resize in RESIZE_MODES:
        return resize
    raise ConfigError(f"resize must be one of {', '.join(RESIZE_MODES)}; got {resize!r}")


def check_splits(splits: Any) -> tuple[str, ...]:
    """``splits`` as a tuple in :data:`SPLITS` order; a ConfigError unless it is a non-empty tuple or list of them."""
    if isinstance(splits, (tuple, list)) and splits and all(isinstance(s, str) and s in SPLITS for s in splits):
        return tuple(s for s in SPLITS if s in splits)
    hint = ""
    if isinstance(splits, str):
        hint = f" (a tuple: ({splits!r},))"
    elif isinstance(splits, (tuple, list)) and "val" in splits:
        hint = " (the held-out split, an image folder's val/ folder among them, is 'test')"
    raise ConfigError(f"splits must be a non-empty tuple of {', '.join(map(repr, SPLITS))}; got {splits!r}{hint}")


def check_whole(name: str, value: Any, low: int, high: int | None = None, *, optional: bool = False) -> Any:
    """``value`` if it is a whole number in [low, high] (or None when ``optional``); a ConfigError otherwise."""
    if value is None and optional:
        return None
    if _is_int(value) and value >= low and (high is None or value <= high):
        return int(value)
    allowed = f"from {low} to {high}" if high is not None else f">= {low}"
    raise ConfigError(f"{name} must be a whole number {allowed}{' or None' if optional else ''}; got {value!r}")


def check_fraction(name: str, value: Any, low: float, high: float, *, high_open: bool = False) -> float:
    """``value`` as a float in [low, high] (or [low, high) with ``high_open``); a ConfigError otherwise."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low <= value and (value < high if high_open else value <= high):
        return float(value)
    interval = f"[{low}, {high}{')' if high_open else ']'}"
    raise ConfigError(f"{name} must be a number in {interval}; got {value!r}")


@dataclass(frozen=True)
class LoadOptions:
    """The options of :func:`~convnets.data.load_dataset`, checked once before anything is read.

    Attributes:
        image_size: Output (height, width), or None for the data's own size.
        channels: 1, 3, or None for the data's own.
        resize: How in-memory data reaches ``image_size`` (see :func:`resize_images`).
        seed: Seed of an image folder's held-out split and statistics subset.
        val_fraction: Held-out fraction of an image folder without split folders, in [0, 1).
        num_workers: Decoding processes for an image folder's statistics; None for the default.
        preprocessing: pretrained weights' recipe: an image folder decodes its files with it; in-memory
            data with a published resize is loaded at its own size and brought to the recipe's after.
        splits: The splits to load (see :data:`SPLITS`).
    """

    image_size: tuple[int, int] | None = None
    channels: int | None = None
    resize: str = "auto"
    seed: int = 0
    val_fraction: float = 0.2
    num_workers: int | None = None
    preprocessing: Preprocessing | None = None
    splits: tuple[str, ...] = SPLITS

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_size", check_image_size(self.image_size))
        check_channels(self.channels)
        check_resize(self.resize)
        check_whole("seed", self.seed, 0, 2**63 - 1)
        object.__setattr__(self, "val_fraction", check_fraction("val_fraction", self.val_fraction, 0, 1,
                                                                high_open=True))
        check_whole("num_workers", self.num_workers, 0, 256, optional=True)
        object.__setattr__(self, "splits", check_splits(self.splits))

    @property
    def shape(self) -> dict[str, Any]:
        """The keyword arguments of the in-memory loaders: image_size, channels, resize, splits."""
        published = self.preprocessing is not None and self.preprocessing.resize is not None
        return {"image_size": None if published else self.image_size,  # a published recipe resizes after loading
                "channels": self.channels, "resize": self.resize, "splits": self.splits}


# --------------------------------------------------------------------------------------------
# statistics and in-memory shape changes


def channel_stats(images: torch.Tensor, chunk: int = 8192) -> tuple[tuple[float, ...], tuple[float, ...], torch.Tensor]:
    """Per-channel mean, std and covariance of uint8 images (N, C, H, W), on the 0..1 scale.

    Accumulated in float64 over chunks so that CIFAR-sized sets do not need a float copy.
    """
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    outer = torch.zeros(c, c, dtype=torch.float64)
    count = 0
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk].to(torch.float64).div_(255).transpose(0, 1).reshape(c, -1)
        total += x.sum(1)
        outer += x @ x.T
        count += x.shape[1]
    if count == 0:
        raise DataError("cannot compute statistics of an empty split")
    mean = total / count
    cov = outer / count - torch.outer(mean, mean)
    std = cov.diagonal().clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist()), cov.float()


def convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Convert uint8 images (N, C, H, W) between 1 and 3 channels.

    Grey to RGB repeats the channel; RGB to grey uses ITU-R 601-2 luma, as Pillow's ``L`` mode does.
    """
    c = images.shape[1]
    if c == channels:
        return images
    if c == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    if c == 3 and channels == 1:
        luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (images.float() * luma).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
    raise DataError(f"cannot convert {c}-channel images to {channels} channels")


def _physical_memory() -> int | None:
    """Bytes of RAM on this machine, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _check_fits_in_memory(count: int, channels: int, size: tuple[int, int]) -> None:
    """A DataError, before allocating, when ``count`` uint8 images of ``size`` exceed this machine's memory."""
    need, have = count * channels * size[0] * size[1], _physical_memory()
    if have is not None and need > have:
        raise DataError(
            f"{count} images of {channels}x{size[0]}x{size[1]} need {need / 2**30:.1f} GiB in memory, more than this "
            f"machine's {have / 2**30:.1f} GiB; choose a smaller image_size"
        )


def resize_images(images: torch.Tensor, size: tuple[int, int], mode: str = "auto") -> torch.Tensor:
    """Bring uint8 images (N, C, H, W) to ``size`` = (height, width).

    Args:
        images: uint8 images.
        size: Target (height, width).
        mode: ``pad``: centre the image on a zero canvas, what LeCun et al. (1998) did to give
            LeNet-5 32x32 MNIST digits; ``interpolate``: bilinear resize with antialiasing;
            ``auto``: pad when the target is at least as large and at most 25% larger on
            each side (28 -> 32), otherwise interpolate.

    Returns:
        uint8 images of the requested size.
    """
    h, w = images.shape[-2:]
    th, tw = check_image_size(size)
    check_resize(mode)
    if (h, w) == (th, tw):
        return images
    _check_fits_in_memory(len(images), images.shape[1], (th, tw))
    if mode == "auto":
        mode = "pad" if h <= th <= h * 1.25 and w <= tw <= w * 1.25 else "interpolate"
    if mode == "pad":
        if th < h or tw < w:
            raise DataError(f"cannot pad {h}x{w} images to the smaller size {th}x{tw}; use resize='interpolate'")
        top, left = (th - h) // 2, (tw - w) // 2
        return F.pad(images, (left, tw - w - left, top, th - h - top))
    out = torch.empty(images.shape[0], images.shape[1], th, tw, dtype=torch.uint8)
    for start in range(0, len(images), 4096):  # chunks: a float copy of all of CIFAR would be 600 MB
        x = images[start : start + 4096].float()
        y = F.interpolate(x, size=(th, tw), mode="bilinear", align_corners=False, antialias=True)
        out[start : start + 4096] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out


# --------------------------------------------------------------------------------------------
# labels and classes: data that cannot make the classifier the user expects is named


def check_labels(labels: np.ndarray, num_classes: int, path: str | Path) -> None:
    """A DataError naming ``path`` when a label lies outside 0..num_classes-1."""
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)]
        raise DataError(
            f"{path}: labels must lie in 0..{num_classes - 1}, found {len(bad)} outside (e.g. {int(bad[0])})"
        )


def _listing(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_classes(classes: Sequence[str], train_labels: torch.Tensor | np.ndarray, source: str | Path) -> None:
    """Refuse a training split that cannot make a classifier; warn about classes it never shows.

    Raises:
        DataError: Fewer than two classes, or training images of only one class (a model trained
            on them predicts that class for everything).
    """
    if len(classes) < 2:
        raise DataError(
            f"{source}: a classifier needs at least two classes; found {len(classes)}"
            + (f" ({classes[0]})" if classes else "")
        )
    counts = np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=len(classes))
    present = np.flatnonzero(counts)
    if len(present) < 2:
        only = f" (all {int(counts.sum())} are {classes[present[0]]!r})" if len(present) else ""
        raise DataError(f"{source}: the training images show {len(present)} class{only}; a classifier needs two")
    empty = [classes[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        logger.warning(
            "%s: %d of %d classes have no training images (%s); the model has an output for each it never learns",
            source, len(empty), len(classes), _listing(empty),
        )


def in_memory_dataset(
    name: str,
    classes: list[str],
    train: tuple[np.ndarray, np.ndarray] | None,
    test: tuple[np.ndarray, np.ndarray] | None,
    *,
    image_size: int | Sequence[int] | None,
    channels: int | None,
    resize: str,
    source: str,
) -> Dataset:
    """Build a Dataset from uint8 (N, C, H, W) arrays and int labels: check, convert, resize, measure.

    A split given as None was not loaded; without the training split there are no statistics.
    """
    size, channels, resize = check_image_size(image_size), check_channels(channels), check_resize(resize)
    if train is not None:
        check_classes(classes, train[1], source)
    splits: list[TensorSplit | None] = []
    for part in (train, test):
        if part is None:
            splits.append(None)
            continue
        x = torch.from_numpy(np.ascontiguousarray(part[0]))
        if channels is not None:
            x = convert_channels(x, channels)
        if size is not None:
            x = resize_images(x, size, resize)
        splits.append(TensorSplit(x, torch.from_numpy(np.asarray(part[1], dtype=np.int64))))
    mean = std = cov = None
    if splits[0] is not None:
        mean, std, cov = channel_stats(splits[0].images)
    c, h, w = next(s for s in splits if s is not None).images.shape[1:]
    return Dataset(name, classes, c, (h, w), mean, std, cov, splits[0], splits[1], source=source)


def subsample_per_class(dataset: Dataset, per_class: int, seed: int = 0, split: str = "train") -> Dataset:
    """The dataset with at most ``per_class`` examples of each class in ``split`` (a seeded, fixed choice).

    For learning-curve and transfer experiments ("10 examples per class"). The other split and
    the normalisation statistics are kept, so results stay comparable across sizes.
    """
    check_whole("per_class", per_class, 1)
    check_whole("seed", seed, 0, 2**63 - 1)
    if split not in ("train", "test"):
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
    part = getattr(dataset, split)
    if part is None:
        raise ConfigError(f"the {split} split was not loaded (load_dataset's splits); it has nothing to subsample")
    labels = part.labels
    generator = torch.Generator().manual_seed(seed)
    keep = []
    for c in range(dataset.num_classes):
        members = (labels == c).nonzero().flatten()
        keep.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    index = torch.cat(keep).sort().values
    return dataclasses.replace(dataset, **{split: part.subset(index)})
