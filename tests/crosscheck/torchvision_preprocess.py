"""Cross-check: convnets' Preprocessing against torchvision's own ``weights.transforms()`` on real photos.

Not part of the test suite: torchvision does not install beside the pinned torch. Run it in a venv
that has torchvision (and scikit-learn), with convnets' sources on the path:

    PYTHONPATH=src /work/tvenv/bin/python tests/crosscheck/torchvision_preprocess.py

For every torchvision spec convnets lists (and, for information, the IMAGENET1K_V2 recipes of the
same families), it prints the max |ours - torchvision| over china.jpg and flower.jpg, and fails
if one exceeds 1e-6 (float32 rounding of the same arithmetic).
"""

from __future__ import annotations

import sys
from pathlib import Path

import sklearn.datasets
import torch
import torchvision
from PIL import Image
from torchvision import models

from convnets.data.preprocess import Preprocessing
from convnets.weights import list_weights

PHOTOS = [Path(sklearn.datasets.__file__).parent / "images" / name for name in ("china.jpg", "flower.jpg")]
EXTRA = {  # torchvision recipes convnets lists no spec for: checked that Preprocessing can express them
    "efficientnet_b1 IMAGENET1K_V2": models.EfficientNet_B1_Weights.IMAGENET1K_V2,
    "mobilenet_v2 IMAGENET1K_V2": models.MobileNet_V2_Weights.IMAGENET1K_V2,
    "resnet50 IMAGENET1K_V2": models.ResNet50_Weights.IMAGENET1K_V2,
}


def torchvision_weights(url: str) -> models.WeightsEnum:
    """The torchvision weights enum member whose file is ``url``."""
    for name in models.list_models(module=models):
        for member in models.get_model_weights(name):
            if member.url == url:
                return member
    raise LookupError(url)


def recipe_of(weights: models.WeightsEnum) -> Preprocessing:
    t = weights.transforms()
    return Preprocessing(t.crop_size[0], t.resize_size[0], t.interpolation.value, mean=tuple(t.mean), std=tuple(t.std))


def max_difference(prep: Preprocessing, weights: models.WeightsEnum) -> float:
    transform = weights.transforms()
    worst = 0.0
    for path in PHOTOS:
        with Image.open(path) as image:
            theirs = transform(image.convert("RGB"))
        ours = prep(path)
        assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
        worst = max(worst, (ours - theirs).abs().max().item())
    return worst


def main() -> int:
    print(f"torchvision {torchvision.__version__}, torch {torch.__version__}")
    rows = []
    for spec in list_weights():
        if spec.peer and spec.peer.startswith("torchvision:"):
            weights = torchvision_weights(spec.source)
            prep = Preprocessing.from_spec(spec)
            # The spec's own recipe must be torchvision's (googlenet: mean/std 0.5, see specs.py: compare geometry).
            same = recipe_of(weights)
            assert (prep.size, prep.resize, prep.interpolation) == (same.size, same.resize, same.interpolation), spec
            if spec.model.startswith("googlenet"):
                prep = same  # its spec folds torchvision's transform_input into mean = std = 0.5
            rows.append((f"{spec.model} ({spec.source.rsplit('/', 1)[-1]})", prep.describe(),
                         max_difference(prep, weights)))
    for name, weights in EXTRA.items():
        prep = recipe_of(weights)
        rows.append((name, prep.describe(), max_difference(prep, weights)))
    for name, recipe, diff in rows:
        print(f"{name:<58} {recipe.split(', mean')[0]:<42} max |ours - torchvision| = {diff:.2e}")
    worst = max(diff for _, _, diff in rows)
    print(f"worst: {worst:.2e} over {len(rows)} recipes x {len(PHOTOS)} photos")
    return 0 if worst <= 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
