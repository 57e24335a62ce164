"""The registry of known weights: what each set is, where it comes from, how it was trained.

Kept apart from the model code: a :class:`WeightSpec` says where the file is (shipped in this
package, or a URL downloaded once into the cache), its sha256, the classes, the input size and
preprocessing it was trained with, its measured accuracy, and the names of the first conv and
the classifier. Evaluation and fine-tuning take their preprocessing from the spec, never guess it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from convnets.errors import WeightsError

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "pretrained"  # the shipped files
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")


def _read_names(file: str) -> tuple[str, ...]:
    """Class names shipped beside this module, one per line (``#`` lines are the file's header)."""
    lines = (Path(__file__).resolve().parent / file).read_text(encoding="utf-8").splitlines()
    return tuple(line for line in lines if line and not line.startswith("#"))


# torchvision's, timm's and Keras's ImageNet classifiers share this order (sorted WordNet ids); see the file's header.
IMAGENET_CLASSES = _read_names("imagenet_classes.txt")


@dataclass(frozen=True)
class WeightSpec:
    """One set of pretrained weights.

    Attributes:
        model: registered model name the weights fit.
        tag: short name (``fashion-mnist``, ``imagenet``) used as ``weights=`` in :func:`convnets.create_model`.
        source: a file name inside ``convnets/pretrained/`` or an http(s) URL.
        sha256: full hex digest, or the prefix a peer library puts in its file names.
        dataset: what the weights were trained on.
        num_classes: classifier outputs.
        categories: class names in output order (ImageNet's 1000 from ``imagenet_classes.txt``).
        input_size: (C, H, W) the weights expect.
        mean: per-channel normalisation mean (pixels scaled to 0..1).
        std: per-channel normalisation standard deviation.
        resize: the shorter side is resized to this before the centre crop (None: no published recipe; the
            image is fitted to ``input_size`` and centre-cropped).
        crop: side of the centre crop (None: ``input_size``).
        interpolation: the resize filter: ``bilinear``, ``bicubic`` or ``nearest``
            (see :class:`convnets.data.preprocess.Preprocessing`, which applies all of these).
        accuracy: measured top-1 accuracy on the dataset's test split.
        model_kwargs: builder arguments the weights need (``{"small_input": True}``).
        recipe: how they were trained (a command for ours).
        first_conv: state-dict prefix of the first convolution (for in_chans adaptation).
        classifier: state-dict prefix of the final layer (dropped for another class count).
        peer: the peer layout to convert from (``torchvision:resnet50``), None for our own layout.
    """

    model: str
    tag: str
    source: str
    sha256: str
    dataset: str
    num_classes: int
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    accuracy: float
    categories: tuple[str, ...] = ()
    resize: int | None = None
    crop: int | None = None
    interpolation: str = "bilinear"
    model_kwargs: dict = field(default_factory=dict)
    recipe: str = ""
    first_conv: str = "stem.conv"
    classifier: str = "head.fc"
    peer: str | None = None

    @property
    def is_url(self) -> bool:
        return self.source.startswith(("http://", "https://"))


def _imagenet(model: str, peer: str, url: str, accuracy: float, *, resize: int = 256, crop: int = 224,
              interpolation: str = "bilinear", first_conv: str = "stem.conv", mean: tuple[float, ...] = IMAGENET_MEAN,
              std: tuple[float, ...] = IMAGENET_STD) -> WeightSpec:
    """torchvision's weights with its evaluation recipe (``weights.transforms()``: resize, crop, filter)."""
    return WeightSpec(model, "imagenet", url, sha256=url.rsplit("-", 1)[-1].split(".")[0], dataset="ImageNet-1k",
                      num_classes=1000, input_size=(3, crop, crop), mean=mean, std=std, accuracy=accuracy,
                      categories=IMAGENET_CLASSES, resize=resize, crop=crop, interpolation=interpolation,
                      recipe=f"{peer} published weights", first_conv=first_conv, peer=peer)


_TV = "https://download.pytorch.org/models/"
# torchvision's EfficientNet IMAGENET1K_V1 weights (torchvision/models/efficientnet.py): file, ImageNet top-1, and
# the evaluation recipe of ``weights.transforms()``: resize, crop, all bicubic. B2 is evaluated at 288, not the
# paper's 260 (B0-B4 were trained by Ross Wightman; B5-B7 are ports of TensorFlow's). B1's IMAGENET1K_V2
# (efficientnet_b1-c27df63c.pth) is another recipe: 255 -> 240 bilinear.
TORCHVISION_EFFICIENTNET = {
    0: ("rwightman-7f5810bc", 0.77692, 256, 224), 1: ("rwightman-bac287d4", 0.78642, 256, 240),
    2: ("rwightman-c35c1473", 0.80608, 288, 288), 3: ("rwightman-b3899882", 0.82008, 320, 300),
    4: ("rwightman-23ab8bcd", 0.83384, 384, 380), 5: ("lukemelas-1a07897c", 0.83444, 456, 456),
    6: ("lukemelas-24a108a5", 0.84008, 528, 528), 7: ("lukemelas-c5b4e57e", 0.84122, 600, 600),
}


def _ours(model: str, file: str, sha256: str, accuracy: float, input_size: tuple[int, int, int],
          mean: float, std: float, recipe: str, **model_kwargs: object) -> WeightSpec:
    """The project's own Fashion-MNIST weights, trained by ``recipe`` (seed 0) and shipped in the package."""
    return WeightSpec(model, "fashion-mnist", file, sha256, dataset="Fashion-MNIST", num_classes=10,
                      input_size=input_size, mean=(mean,), std=(std,), accuracy=accuracy,
                      categories=FASHION_MNIST_CLASSES, model_kwargs=dict(model_kwargs), recipe=recipe,
                      first_conv="stages.0.conv" if model.startswith("lenet") else "stem.conv")

WEIGHTS: list[WeightSpec] = [
    # Ours: accuracy measured on the 10,000 Fashion-MNIST test images at the end of the recipe.
    _ours("lenet5", "lenet5-fashion-mnist.safetensors",
          "15cf4a0adaacc8dc39ecdfb07522ac0aed7c285ac9955d238aa78852608da9f3", 0.9081, (1, 32, 32),
          0.2189998320695466, 0.33181137300004, "convnets train lenet5"),
    _ours("resnet20", "resnet20-fashion-mnist.safetensors",
          "6bf79c34cab9366042a5008c735f506bbe56197ce01b2a53058d2413c3c7a1f2", 0.9103, (1, 28, 28),
          0.2860405969887956, 0.3530242445150222, "convnets train resnet20 --epochs 4 --precision fp32 "
          "--no-channels-last"),
    _ours("mobilenet_v2", "mobilenet_v2-fashion-mnist.safetensors",
          "9c5552dc3be7dc124667dba6fa56c91e903468b9df007fbad86e2c4216575bdd", 0.8800, (1, 28, 28),
          0.2860405969887956, 0.3530242445150222, "convnets train mobilenet_v2 --model-arg width=0.5 --model-arg "
          "small_input=true --epochs 4 --precision fp32 --no-channels-last", width=0.5, small_input=True),
    # Peer checkpoints (torchvision's own published accuracy, ImageNet-1k validation top-1).
    _imagenet("alexnet_torchvision", "torchvision:alexnet", _TV + "alexnet-owt-7be5be79.pth", 0.56522,
              first_conv="stages.0.conv"),
    _imagenet("vgg11", "torchvision:vgg11", _TV + "vgg11-8a719046.pth", 0.69020, first_conv="stages.0.conv1.conv"),
    _imagenet("vgg13", "torchvision:vgg13", _TV + "vgg13-19584684.pth", 0.69928, first_conv="stages.0.conv1.conv"),
    _imagenet("vgg16", "torchvision:vgg16", _TV + "vgg16-397923af.pth", 0.71592, first_conv="stages.0.conv1.conv"),
    _imagenet("vgg19", "torchvision:vgg19", _TV + "vgg19-dcbb9e9d.pth", 0.72376, first_conv="stages.0.conv1.conv"),
    _imagenet("vgg16_bn", "torchvision:vgg16_bn", _TV + "vgg16_bn-6c64b313.pth", 0.73360,
              first_conv="stages.0.conv1.conv"),
    _imagenet("resnet18", "torchvision:resnet18", _TV + "resnet18-f37072fd.pth", 0.69758),
    _imagenet("resnet34", "torchvision:resnet34", _TV + "resnet34-b627a593.pth", 0.73314),
    _imagenet("resnet50_torchvision", "torchvision:resnet50", _TV + "resnet50-0676ba61.pth", 0.76130),
    _imagenet("resnet101_torchvision", "torchvision:resnet101", _TV + "resnet101-63fe2227.pth", 0.77374),
    _imagenet("resnet152_torchvision", "torchvision:resnet152", _TV + "resnet152-394f9c45.pth", 0.78312),
    # torchvision's GoogLeNet weights were ported from TensorFlow, which normalised to [-1, 1]
    # (torchvision re-normalises inside the model, "transform_input"): mean = std = 0.5.
    _imagenet("googlenet_torchvision", "torchvision:googlenet", _TV + "googlenet-1378be20.pth", 0.69778,
              first_conv="stem.conv1.conv", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    _imagenet("mobilenet_v2", "torchvision:mobilenet_v2", _TV + "mobilenet_v2-b0353104.pth", 0.71878),
    *(_imagenet(f"efficientnet_b{b}", f"torchvision:efficientnet_b{b}", _TV + f"efficientnet_b{b}_{file}.pth",
                accuracy, resize=resize, crop=crop, interpolation="bicubic")
      for b, (file, accuracy, resize, crop) in TORCHVISION_EFFICIENTNET.items()),
]


def list_weights(model: str | None = None) -> list[WeightSpec]:
    """Every known weight set, or those of one model."""
    return [w for w in WEIGHTS if model is None or w.model == model]


def get_weights(model: str, tag: str) -> WeightSpec:
    """The spec of ``model``'s weights called ``tag``; an unknown tag lists the known ones.

    Both are spelled as freely as :func:`~convnets.registry.create_model` takes a model's name (``LeNet5``,
    `` resnet-18 ``) and the tags' case aside (``Fashion-MNIST``).
    """
    from convnets.registry import UnknownModelError, model_entry

    with contextlib.suppress(UnknownModelError):  # an unknown name is named as given, with the models that have weights
        model = model_entry(model).name
    key = tag.strip().lower()
    for spec in WEIGHTS:
        if spec.model == model and spec.tag == key:
            return spec
    known = ", ".join(w.tag for w in list_weights(model))
    if not known:  # a typo in the model's name, or a model without weights: name the ones that have some
        having = ", ".join(sorted({w.model for w in WEIGHTS}))
        raise WeightsError(f"no {tag!r} weights for {model}: it has none; models with weights: {having}")
    raise WeightsError(f"no {tag!r} weights for {model}; known for it: {known}")


def is_tag(weights: object) -> bool:
    """A registered tag such as ``fashion-mnist``, as opposed to a file path, a URL or a state dict.

    A ``Path`` is always a path; a string is a tag unless it has a folder separator or a file
    suffix (``model.ckpt``), or names a file that exists.
    """
    if not isinstance(weights, str):
        return False
    if "/" in weights or "\\" in weights or Path(weights).suffix:
        return False
    try:
        return not Path(weights).exists()
    except (OSError, ValueError):  # a name too long for a file, or with a NUL byte: not a file either
        return True
