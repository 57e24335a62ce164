"""One entry point for every dataset: :func:`load_dataset`, what ``--data`` accepts everywhere.

A name (``fashion-mnist``, ``digits``, ``cifar10``, ``cifar100``) picks a known dataset; a directory
is loaded by the first of :data:`FORMATS` that recognises it. Each format lives in its own module
under :mod:`convnets.data.formats`; the shared dataset core is :mod:`convnets.data.core`. The names
this module re-exports keep ``from convnets.data.datasets import ...`` working.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from convnets.data.core import (
    SPLITS,
    Dataset,
    LoadOptions,
    TensorSplit,
    channel_stats,
    convert_channels,
    resize_images,
    subsample_per_class,
)
from convnets.data.formats import cifar, folder, idx
from convnets.data.formats.cifar import load_cifar
from convnets.data.formats.digits import load_digits
from convnets.data.formats.fashion_mnist import (
    download_fashion_mnist,
    download_file,
    find_fashion_mnist,
    load_fashion_mnist,
)
from convnets.data.formats.folder import load_image_folder
from convnets.data.formats.idx import find_idx_files, load_idx_dataset, load_idx_pair
from convnets.data.images import IMAGE_EXTENSIONS, ImageFolderSplit, collate_images, decode_image
from convnets.data.preprocess import Preprocessing
from convnets.errors import ConfigError, DataError

__all__ = [
    "DATASET_NAMES",
    "FORMATS",
    "IMAGE_EXTENSIONS",
    "Dataset",
    "ImageFolderSplit",
    "LoadOptions",
    "TensorSplit",
    "channel_stats",
    "collate_images",
    "convert_channels",
    "decode_image",
    "download_fashion_mnist",
    "download_file",
    "find_fashion_mnist",
    "find_idx_files",
    "load_cifar",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_idx_dataset",
    "load_idx_pair",
    "load_image_folder",
    "resize_images",
    "subsample_per_class",
]

DATASET_NAMES = ("fashion-mnist", "digits", "cifar10", "cifar100")
# Every spelling of a name above that load_dataset takes.
_NAMES = ("fashion-mnist", "fashionmnist", "digits", "cifar10", "cifar-10", "cifar100", "cifar-100")
logger = logging.getLogger("convnets.data")

# The directory formats, tried in order: (recognise(path) -> bool, load(path, options) -> Dataset).
# CIFAR and IDX folders are recognised by their file names; any other directory is an image folder.
FORMATS: list[tuple[Callable[[Path], bool], Callable[[Path, LoadOptions], Dataset]]] = [
    (cifar.recognise, cifar.load),
    (idx.recognise, idx.load),
    (folder.recognise, folder.load),
]


def load_dataset(
    name_or_path: str | Path,
    *,
    data_dir: str | Path | None = None,
    image_size: int | Sequence[int] | None = None,
    channels: int | None = None,
    resize: str = "auto",
    seed: int = 0,
    val_fraction: float = 0.2,
    download: bool = True,
    num_workers: int | None = None,
    preprocessing: Preprocessing | None = None,
    splits: tuple[str, ...] = SPLITS,
) -> Dataset:
    """Load a dataset by name or path: what ``--data`` accepts everywhere.

    Args:
        name_or_path: ``fashion-mnist``, ``digits``, ``cifar10``/``cifar100`` (batches in
            ``data_dir``), or a directory: CIFAR batches, MNIST-format IDX files, or an image folder.
        data_dir: Where named datasets are looked up (and downloaded to).
        image_size: Output side or (height, width), 1 to 4096. In-memory data keeps its size by default;
            LeNet-5's 32 on Fashion-MNIST zero-pads 28 -> 32 as LeCun did (``resize``).
        channels: 1 or 3; converts grey <-> RGB. The data's own by default (3 for image folders).
        resize: ``auto``, ``pad`` or ``interpolate`` for in-memory data (see :func:`resize_images`).
        seed: Seed (0 or more) of an image folder's held-out split (named datasets have fixed splits).
        val_fraction: Held-out fraction, in [0, 1), of an image folder without ``train/`` and ``val/``.
        download: Allow downloading Fashion-MNIST when no local copy exists.
        num_workers: Decoding processes used for an image folder's statistics.
        preprocessing: the recipe of pretrained weights (:class:`~convnets.data.preprocess.Preprocessing`);
            it sets ``image_size`` and ``channels``. Image folders are decoded by it; in-memory data is
            brought to its size by it when it has a published ``resize`` (each image resized and
            centre-cropped through Pillow, as a file would be), otherwise as ``resize`` says. The
            dataset's mean/std stay the data's own: the caller normalises with the recipe's.
        splits: The splits to load: ``("train", "test")`` (the default), ``("train",)`` or ``("test",)``. A
            split not asked for is None in the Dataset, and so are the mean, std and covariance without
            ``"train"`` (they are the training split's): evaluation brings the weights' own.

    Raises:
        ConfigError: An argument outside its range (checked before anything is read).
        FileNotFoundError: Unknown name that is not an existing path, or files missing.
        DataError: Data that cannot make a classifier, or malformed data (the message names the file).
    """
    if not isinstance(name_or_path, (str, Path)) or not str(name_or_path).strip():
        # An empty name would be the current directory, read as an image folder.
        raise ConfigError(f"expected a dataset name ({', '.join(DATASET_NAMES)}) or a path, got {name_or_path!r}")
    if not isinstance(download, bool):
        raise ConfigError(f"download must be True or False, got {download!r}")
    if preprocessing is not None:
        if not isinstance(preprocessing, Preprocessing):
            raise ConfigError(f"preprocessing must be a convnets.data.preprocess.Preprocessing (from_spec, "
                              f"from_metadata), got {type(preprocessing).__name__}")
        image_size, channels = preprocessing.size, preprocessing.channels
    options = LoadOptions(image_size=image_size, channels=channels, resize=resize, seed=seed,
                          val_fraction=val_fraction, num_workers=num_workers, preprocessing=preprocessing,
                          splits=splits)
    dataset = _load(name_or_path, data_dir, options, download)
    if preprocessing is not None and preprocessing.resize is not None and dataset.in_memory:
        dataset = _published_geometry(dataset, preprocessing)
    return dataset


def _published_geometry(dataset: Dataset, preprocessing: Preprocessing) -> Dataset:
    """In-memory data brought to a published recipe's size (loaded at its own size for it), statistics recomputed."""
    train, test = (None if split is None else TensorSplit(preprocessing.transform_images(split.images), split.labels)
                   for split in (dataset.train, dataset.test))
    mean, std, cov = channel_stats(train.images) if train is not None else (None, None, None)
    return dataclasses.replace(dataset, image_size=preprocessing.size, mean=mean, std=std, pixel_cov=cov,
                               train=train, test=test)


def _load(name_or_path: str | Path, data_dir: str | Path | None, options: LoadOptions, download: bool) -> Dataset:
    spec = str(name_or_path)
    key = spec.lower().replace("_", "-")
    if isinstance(name_or_path, str) and key in _NAMES and Path(spec).is_dir():
        # The name wins (as it always has); the user who meant the folder is told how to get it.
        logger.warning("%s is the built-in dataset; the folder %s here is not read (pass --data ./%s for it)",
                       spec, spec, spec)
    if key in ("fashion-mnist", "fashionmnist"):
        return load_fashion_mnist(data_dir, download=download, **options.shape)
    if key == "digits":
        return load_digits(**options.shape)
    if key in ("cifar10", "cifar-10", "cifar100", "cifar-100"):
        if data_dir is None:
            raise FileNotFoundError(f"{spec}: pass --data-dir with the extracted python batches (or --data FOLDER)")
        return load_cifar(data_dir, **options.shape)
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"unknown dataset {spec!r}: not one of {', '.join(DATASET_NAMES)} nor an existing path")
    if not path.is_dir():
        raise DataError(f"{path}: expected a dataset name or a directory, not a file")
    try:
        for recognise, load in FORMATS:
            if recognise(path):
                return load(path, options)
    except PermissionError as err:  # a folder or file the user cannot read (not an output: the boundary's hint is)
        raise DataError(f"{err.filename or path}: permission denied: convnets cannot read it (check the "
                        "permissions of it and of the folders above it)") from err
    raise DataError(f"{path}: not a dataset directory")  # unreachable while the image folder takes any directory
