"""Weights: files, downloads, the registry of known weights, peer layouts, and the one :func:`load`.

- :mod:`~convnets.weights.io`: sha256, atomic writes, :func:`download` (deadline, progress) and the
  download cache keyed by the full URL.
- :mod:`~convnets.weights.files`: our safetensors files (:func:`save_weights`, :func:`read_metadata`,
  :func:`read_state_dict`) and the key-by-key fit check.
- :mod:`~convnets.weights.specs`: :class:`WeightSpec` and the registry (``convnets weights`` lists it).
- :mod:`~convnets.weights.layouts`: torchvision's and timm's key layouts and their rename rules.
- :mod:`~convnets.weights.keras`: Keras Applications' HDF5 files (both formats), read with h5py.
- :mod:`~convnets.weights.load`: :func:`load`, which every path uses (``create_model(weights=...)``,
  ``--weights``, :func:`load_weights`, :func:`load_peer_weights`).
"""

from convnets.errors import DownloadError, LayoutError, WeightsError, WeightsMismatchError
from convnets.weights.files import check_metadata, check_state_dict, read_metadata, read_state_dict, save_weights
from convnets.weights.io import (
    CACHE_ENV,
    atomic_write,
    cache_path,
    cache_root,
    cached_download,
    download,
    remove_partials,
    remove_stale_temporaries,
    sha256_of,
    try_lock,
)
from convnets.weights.layouts import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LAYOUTS,
    PeerLayout,
    convert_state_dict,
    detect_layout,
    strip_wrapper_prefixes,
)
from convnets.weights.load import (
    LAYOUT_NAMES,
    load,
    load_peer_weights,
    load_pretrained,
    load_weights,
    local_path,
    weights_path,
    weights_preprocessing,
)
from convnets.weights.specs import (
    FASHION_MNIST_CLASSES,
    IMAGENET_CLASSES,
    PACKAGE_DIR,
    WEIGHTS,
    WeightSpec,
    get_weights,
    is_tag,
    list_weights,
)

__all__ = [
    "CACHE_ENV",
    "FASHION_MNIST_CLASSES",
    "IMAGENET_CLASSES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LAYOUTS",
    "PACKAGE_DIR",
    "WEIGHTS",
    "DownloadError",
    "LayoutError",
    "PeerLayout",
    "WeightSpec",
    "WeightsError",
    "WeightsMismatchError",
    "atomic_write",
    "cache_path",
    "cache_root",
    "cached_download",
    "check_metadata",
    "check_state_dict",
    "convert_state_dict",
    "detect_layout",
    "download",
    "get_weights",
    "is_tag",
    "list_weights",
    "LAYOUT_NAMES",
    "load",
    "load_peer_weights",
    "load_pretrained",
    "load_weights",
    "local_path",
    "read_metadata",
    "read_state_dict",
    "remove_partials",
    "remove_stale_temporaries",
    "save_weights",
    "sha256_of",
    "strip_wrapper_prefixes",
    "try_lock",
    "weights_path",
    "weights_preprocessing",
]
