"""scikit-learn's handwritten digits: 1,797 grey 8x8 images, always split the same way."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from convnets.data.core import SPLITS, Dataset, check_splits, in_memory_dataset
from convnets.errors import MissingDependencyError


def load_digits(
    *,
    image_size: int | Sequence[int] | None = None,
    channels: int | None = None,
    resize: str = "auto",
    splits: tuple[str, ...] = SPLITS,
) -> Dataset:
    """scikit-learn's 1,797 8x8 handwritten digits, split 1,437 / 360, stratified, always the same.

    The 0..16 intensities are scaled to 0..255. The split uses a fixed seed (not the run's)
    so that results from different runs are measured on the same test images.

    Args:
        image_size, channels, resize, splits: As for :func:`~convnets.data.load_idx_dataset`.
    """
    splits = check_splits(splits)
    try:
        from sklearn.datasets import load_digits as sk_load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as err:
        raise MissingDependencyError("the digits dataset needs scikit-learn: pip install scikit-learn") from err
    bunch = sk_load_digits()
    images = np.rint(bunch.images * (255 / 16)).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=360, stratify=labels, random_state=0)
    return in_memory_dataset(
        "digits",
        [str(c) for c in bunch.target_names],
        (images[train_idx], labels[train_idx]) if "train" in splits else None,
        (images[test_idx], labels[test_idx]) if "test" in splits else None,
        image_size=image_size,
        channels=channels,
        resize=resize,
        source="sklearn.datasets.load_digits",
    )
