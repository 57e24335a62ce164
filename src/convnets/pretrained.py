"""Old home of the weights registry; everything is in :mod:`convnets.weights` now (kept for old imports)."""

from convnets.weights import (  # noqa: F401
    FASHION_MNIST_CLASSES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PACKAGE_DIR,
    WEIGHTS,
    WeightSpec,
    get_weights,
    is_tag,
    list_weights,
    load_pretrained,
    sha256_of,
    weights_path,
    weights_preprocessing,
)
