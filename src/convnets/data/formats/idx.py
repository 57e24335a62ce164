"""Directories of MNIST-format IDX files: MNIST, Fashion-MNIST, KMNIST, EMNIST."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from convnets.data.core import SPLITS, Dataset, LoadOptions, check_labels, check_splits, in_memory_dataset
from convnets.data.idx import read_idx
from convnets.errors import DataError


def load_idx_pair(images_path: str | Path, labels_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an IDX image file and its label file.

    Returns:
        uint8 images (N, C, H, W) and int64 labels (N,).

    Raises:
        IDXFormatError: A header that does not match the file's size.
        DataError: Images that are not uint8 (N, H, W[, C]), or counts that differ.
    """
    images = read_idx(images_path)
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise DataError(
            f"{images_path}: expected uint8 images (N, H, W) or (N, H, W, C), got {images.dtype} {images.shape}"
        )
    labels = _labels(labels_path)
    if len(images) != len(labels):
        raise DataError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
    images = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
    return images, labels


def _idx_name(directory: Path, stem: str) -> Path | None:
    """The file in ``directory`` whose name holds ``stem`` (gzip or raw), or None; ambiguity is an error."""
    found = sorted(p for p in directory.glob(f"*{stem}*") if p.is_file() and not p.name.endswith(".part"))
    if len(found) > 1:
        # One raw and one gzipped copy of the same file is fine; prefer the raw one.
        raw = [p for p in found if not p.name.endswith(".gz")]
        if len(raw) == 1 and all(p.name.removesuffix(".gz") == raw[0].name for p in found):
            return raw[0]
        raise DataError(f"{directory}: several files match *{stem}*: {', '.join(p.name for p in found)}")
    return found[0] if found else None


def find_idx_files(directory: str | Path) -> dict[str, tuple[Path, Path]] | None:
    """The train and test (images, labels) IDX files in a directory, or None if it has none.

    Names follow MNIST's (``train-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte``),
    with any prefix (EMNIST's ``emnist-letters-train-images-idx3-ubyte``); ``test-`` may
    stand for ``t10k-``.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return None
    files = {}
    for split, prefixes in (("train", ("train",)), ("test", ("t10k", "test"))):
        for prefix in prefixes:
            images, labels = _idx_name(directory, f"{prefix}-images-idx"), _idx_name(directory, f"{prefix}-labels-idx")
            if images and labels:
                files[split] = (images, labels)
                break
    return files if len(files) == 2 else None


def classes_from_labels(labels: np.ndarray, path: str | Path) -> list[str]:
    """Class names ``"0"`` .. ``"max label"`` for labels that come without names.

    Raises:
        DataError: A negative label, or labels with holes so large that most of the classes
            they imply have no image: one stray label 255 among 0..9 would make a 256-way model.
            The message names the stray labels and how many images carry each.
    """
    if not len(labels):
        return []
    if labels.min() < 0:
        raise DataError(f"{path}: labels must be 0 or more; found {int((labels < 0).sum())} negative "
                        f"(e.g. {int(labels[labels < 0][0])})")
    # The labels used and their counts, without a count for every label up to the largest: one stray
    # label 2**31 - 1 would need a 16 GB table.
    used, counts = np.unique(labels, return_counts=True)
    ways = int(used[-1]) + 1
    empty = ways - len(used)
    if empty > len(used):
        gap = next((i for i, label in enumerate(used) if label != i), len(used))
        stray, stray_counts = used[gap:], counts[gap:]
        named = ", ".join(f"{int(s)} ({n} image{'s' if n != 1 else ''})" for s, n in zip(stray[:5], stray_counts[:5],
                                                                                              strict=True))
        more = f" and {len(stray) - 5} more" if len(stray) > 5 else ""
        kept = f"0..{gap - 1}" if gap > 0 else "none below them"
        plural = len(stray) > 1
        raise DataError(
            f"{path}: label{'s' if plural else ''} {named}{more} {'lie' if plural else 'lies'} far beyond the others "
            f"({kept}) and would make a {ways:,}-way classifier in which {empty:,} classes have no image; "
            f"fix or remove {'those labels' if plural else 'that label'}, or pass classes=[...] naming every class"
        )
    return [str(i) for i in range(ways)]


def load_idx_dataset(
    directory: str | Path,
    *,
    name: str | None = None,
    classes: list[str] | None = None,
    image_size: int | Sequence[int] | None = None,
    channels: int | None = None,
    resize: str = "auto",
    splits: tuple[str, ...] = SPLITS,
) -> Dataset:
    """Load a directory of MNIST-format IDX files (Fashion-MNIST, MNIST, KMNIST, EMNIST).

    Args:
        directory: Holds train and test image and label files (see :func:`find_idx_files`).
        name: Dataset name; the directory's name by default.
        classes: Class names; ``"0"``, ``"1"``, ... up to the largest training label by default.
        image_size: Resize to this (see :func:`~convnets.data.resize_images`); native size by default.
        channels: 1 or 3; the files' own by default.
        resize: How to reach ``image_size``: ``auto``, ``pad`` or ``interpolate``.
        splits: The splits to read, ``("train", "test")`` by default; ``("test",)`` reads no training
            image. Without ``classes``, the training labels (not images) are still read: they say
            how many classes there are, which the test labels alone may not show.

    Raises:
        FileNotFoundError: No IDX files in the directory.
        DataError: Malformed files, labels outside the class range or with large holes (naming the file),
            or fewer than two classes.
    """
    splits = check_splits(splits)
    directory = Path(directory)
    files = find_idx_files(directory)
    if files is None:
        raise FileNotFoundError(f"{directory}: no train/t10k IDX image and label files")
    train, test = (load_idx_pair(*files[s]) if s in splits else None for s in SPLITS)
    if train is not None and not len(train[1]):
        raise DataError(f"{files['train'][0]}: holds no images: a dataset needs training images")
    if classes is None:
        train_labels = train[1] if train is not None else _labels(files["train"][1])
        classes = classes_from_labels(train_labels, files["train"][1])
    for split, part in zip(SPLITS, (train, test), strict=True):
        if part is not None:
            check_labels(part[1], len(classes), files[split][1])
    return in_memory_dataset(
        name or directory.name,
        classes,
        train,
        test,
        image_size=image_size,
        channels=channels,
        resize=resize,
        source=str(directory),
    )


def _labels(path: str | Path) -> np.ndarray:
    """The labels of an IDX label file alone (the class count of a split whose images are not read)."""
    labels = read_idx(path)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(f"{path}: expected one whole-number label per image, got {labels.dtype} {labels.shape}")
    return labels.astype(np.int64)


def recognise(path: Path) -> bool:
    """Whether ``path`` is a directory with train and test IDX files."""
    return find_idx_files(path) is not None


def load(path: Path, options: LoadOptions) -> Dataset:
    """:func:`load_idx_dataset` with :func:`~convnets.data.load_dataset`'s options."""
    return load_idx_dataset(path, **options.shape)
