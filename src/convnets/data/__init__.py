"""Datasets, augmentation, test-time views and loaders.

``load_dataset(name_or_path)`` gives both splits with their statistics;
``make_loader(dataset, "train", batch_size=..., augment="standard", device=...)`` gives
normalised, augmented batches that are reproducible from (seed, epoch) and resumable mid-epoch.
"""

from convnets.data.augment import PRESETS, AugmentConfig, Augmenter, get_preset, pca_basis, pca_color_shift
from convnets.data.badfiles import BadFileLog
from convnets.data.core import (
    Dataset,
    LoadOptions,
    TensorSplit,
    channel_stats,
    convert_channels,
    resize_images,
    subsample_per_class,
)
from convnets.data.datasets import DATASET_NAMES, FORMATS, load_dataset
from convnets.data.formats.cifar import load_cifar
from convnets.data.formats.digits import load_digits
from convnets.data.formats.fashion_mnist import (
    download_fashion_mnist,
    download_file,
    find_fashion_mnist,
    load_fashion_mnist,
)
from convnets.data.formats.folder import load_image_folder
from convnets.data.formats.idx import load_idx_dataset, load_idx_pair
from convnets.data.idx import IDXFormatError, read_idx, write_idx
from convnets.data.images import ImageFolderSplit, decode_image
from convnets.data.loader import BatchLoader, derive_seed, make_loader
from convnets.data.preprocess import Preprocessing
from convnets.data.views import TTA_VIEWS, center_crop, identity_views, mirror_views, ten_crop_views, tta_views

__all__ = [
    "DATASET_NAMES",
    "FORMATS",
    "PRESETS",
    "TTA_VIEWS",
    "AugmentConfig",
    "Augmenter",
    "BadFileLog",
    "BatchLoader",
    "Dataset",
    "IDXFormatError",
    "ImageFolderSplit",
    "LoadOptions",
    "Preprocessing",
    "TensorSplit",
    "center_crop",
    "channel_stats",
    "convert_channels",
    "decode_image",
    "derive_seed",
    "download_fashion_mnist",
    "download_file",
    "find_fashion_mnist",
    "get_preset",
    "identity_views",
    "load_cifar",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_idx_dataset",
    "load_idx_pair",
    "load_image_folder",
    "make_loader",
    "mirror_views",
    "pca_basis",
    "pca_color_shift",
    "read_idx",
    "resize_images",
    "subsample_per_class",
    "ten_crop_views",
    "tta_views",
    "write_idx",
]
