"""Keras Applications checkpoints (HDF5): VGG16/19, ResNet50/101/152, MobileNet, MobileNetV2, EfficientNetB0-B7.

Two file formats hold them, both read with h5py (``pip install 'convnets[keras]'``):

- the legacy HDF5 weights that ``keras.applications`` downloads and ``save_weights("x.h5")``
  writes: one group per layer, its weights listed in order by the ``weight_names`` attribute.
  Keras 2 names carry a ``:0`` suffix (``conv1_conv/kernel:0``), Keras 1 named them otherwise
  (``block1_conv1_W_1:0``) and Keras 3 drops the suffix: Keras itself loads them by position,
  and so does this reader (a layer's weights come in Keras's order whatever they are called);
- Keras 3's ``.weights.h5`` (``layers/<class>/vars/0, 1...``, each layer's name in an attribute),
  also inside a ``.keras`` archive.

Layers are matched by their Keras names (a :class:`~convnets.weights.layouts.PeerLayout`'s rules
per application, ResNet50's published file with the Keras 2.2 names ``res2a_branch2a`` as well)
and converted: conv kernels HWIO -> OIHW, depthwise kernels H, W, C, 1 -> C, 1, H, W, dense
kernels transposed. What else it takes to give the publisher's outputs:

- ResNet's convolutions have a bias before their BatchNorm: it is folded into the running mean
  (BN(conv + b) with mean m is BN(conv) with mean m - b), as our convs have none;
- VGG's ``fc1`` reads the NHWC flattening of the last map: its input rows are permuted to NCHW's;
- BatchNorm eps: 1.001e-5 in ResNet, Keras's default 1e-3 in the others;
- TensorFlow's "same" padding of strided convolutions (MobileNets, EfficientNet) and MobileNet's
  ReLU6: the builder options ``tf_same`` and ``relu6``, which a model built here gets and a given
  model must have;
- preprocessing, in the layout's ``mean``/``std`` (on pixels scaled to 0..1, RGB):
  ``caffe`` (VGG, ResNet: BGR, ImageNet mean subtracted on 0..255) reverses the first conv's
  input channels so the model takes RGB, with mean = the ImageNet mean and std = 1/255;
  ``tf`` (MobileNets: 0..255 -> [-1, 1]) is mean = std = 0.5; EfficientNet rescales and
  normalises inside the Keras model (Rescaling(1/255), then Normalization with the mean and
  variance stored in the file): mean = the file's mean, std = the square root of its variance,
  except in the published ImageNet files, whose "variance" is ImageNet's standard deviation
  and which Keras divides once more by its square root (``weights="imagenet"``): std = ImageNet's.

A difference that is not the weights': Keras's MobileNet (v1) pads every strided depthwise conv
by one pixel right/bottom, which is TensorFlow's "same" only on even sides. At sides that are
multiples of 32 (all the sizes Keras publishes: 128-224) the two are the same network.
"""

from __future__ import annotations

import dataclasses
import io
import math
import re
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convnets.data.preprocess import KERAS_NORMALISATION
from convnets.errors import LayoutError, MissingDependencyError, WeightsError
from convnets.models.efficientnet import B0_STAGES, COEFFICIENTS
from convnets.models.mobilenet import V1_STAGES, V2_ROWS
from convnets.weights.layouts import (
    EFFICIENTNET_SIGNATURES,
    LAYOUTS,
    RESNET_DEPTHS,
    VGG_DEPTHS,
    PeerLayout,
    _rule,
)
from convnets.weights.specs import IMAGENET_MEAN, IMAGENET_STD

SUFFIXES = (".h5", ".hdf5", ".keras")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

# Keras's preprocess_input modes as our mean/std on RGB pixels in 0..1 (convnets.data.preprocess):
# caffe subtracts the mean on 0..255 in BGR order and does not scale: x * 255 - mean * 255 = (x - mean) / (1 / 255);
# tf is x / 127.5 - 1 on 0..255.
(CAFFE_MEAN, CAFFE_STD), (TF_MEAN, TF_STD) = KERAS_NORMALISATION["caffe"], KERAS_NORMALISATION["tf"]


def h5py_module() -> Any:
    """The h5py module, or a :class:`MissingDependencyError` that says how to install it."""
    try:
        import h5py
    except ImportError as err:
        raise MissingDependencyError("reading Keras .h5 weights needs h5py: pip install 'convnets[keras]' "
                                     "(or pip install h5py)") from err
    return h5py


def is_keras_file(path: Path) -> bool:
    """Whether ``path`` is read by this module: a .h5/.hdf5/.keras name, or by its content an HDF5 file or a
    zip archive holding ``model.weights.h5`` (a .keras file renamed)."""
    if path.suffix.lower() in SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            if f.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE:
                return True
        with zipfile.ZipFile(path) as archive:
            return "model.weights.h5" in archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


# --------------------------------------------------------------------------------------------
# The applications: rename rules per family, and the variants Keras publishes
# --------------------------------------------------------------------------------------------

_OLD_LAYER = {"res": "conv", "bn": "bn"}
RESNET_RULES = (
    _rule(r"conv1_conv", "stem.conv"),
    _rule(r"conv1_bn", "stem.bn"),
    # conv{2..5} are our stages 0..3; block k's conv _0 is the projection shortcut, _1.._3 the bottleneck.
    _rule(r"conv(\d)_block(\d+)_0_(conv|bn)", lambda m: f"stages.{int(m[1]) - 2}.{int(m[2]) - 1}.shortcut.{m[3]}"),
    _rule(r"conv(\d)_block(\d+)_([123])_(conv|bn)",
          lambda m: f"stages.{int(m[1]) - 2}.{int(m[2]) - 1}.conv{m[3]}.{m[4]}"),
    # Keras 2.2's ResNet50, whose names the published ResNet50 file keeps: blocks lettered a, b, c...
    # branch2a/2b/2c are the bottleneck's three convs, branch1 the shortcut.
    _rule(r"conv1", "stem.conv"),
    _rule(r"bn_conv1", "stem.bn"),
    _rule(r"(res|bn)(\d)([a-z])_branch2([abc])",
          lambda m: f"stages.{int(m[2]) - 2}.{ord(m[3]) - 97}.conv{ord(m[4]) - 96}.{_OLD_LAYER[m[1]]}"),
    _rule(r"(res|bn)(\d)a_branch1", lambda m: f"stages.{int(m[2]) - 2}.0.shortcut.{_OLD_LAYER[m[1]]}"),
    _rule(r"predictions|probs|fc1000", "head.fc"),
)

VGG_RULES = (
    _rule(r"block(\d)_conv(\d)", lambda m: f"stages.{int(m[1]) - 1}.conv{m[2]}.conv"),
    _rule(r"fc([12])", lambda m: f"head.hidden.{int(m[1]) - 1}.fc"),
    _rule(r"predictions", "head.fc"),
)

# Keras numbers MobileNet's 13 depthwise-separable blocks 1..13 (conv_dw_n, conv_pw_n); ours are
# grouped by resolution (Howard et al. Table 1, V1_STAGES).
_V1_BLOCKS = [(s, b) for s, rows in enumerate(V1_STAGES) for b in range(len(rows))]


def _v1_block(m: re.Match[str]) -> str | None:
    n = int(m[2])
    if not 1 <= n <= len(_V1_BLOCKS):
        return None
    stage, block = _V1_BLOCKS[n - 1]
    return f"stages.{stage}.{block}.{m[1]}.{'bn' if m[3] else 'conv'}"


MOBILENET_RULES = (
    _rule(r"conv1", "stem.conv"),
    _rule(r"conv1_bn", "stem.bn"),
    _rule(r"conv_(dw|pw)_(\d+)(_bn)?", _v1_block),
    _rule(r"conv_preds", "head.fc"),  # a 1x1 convolution on the pooled features: our linear layer
)

# Keras numbers MobileNetV2's 17 bottlenecks 0..16 (block 0, without expansion, is "expanded_conv").
_V2_BLOCKS = [(s, b) for s, row in enumerate(V2_ROWS) for b in range(row.n)]
_V2_LAYERS = {"expand": "expand", "depthwise": "dw", "project": "project"}


def _v2_block(m: re.Match[str]) -> str | None:
    n = int(m[1] or 0)
    if not 0 <= n < len(_V2_BLOCKS):
        return None
    stage, block = _V2_BLOCKS[n]
    return f"stages.{stage}.{block}.{_V2_LAYERS[m[2]]}.{'bn' if m[3] else 'conv'}"


MOBILENET_V2_RULES = (
    _rule(r"Conv1", "stem.conv"),
    _rule(r"bn_Conv1", "stem.bn"),
    _rule(r"(?:block_(\d+)|expanded_conv)_(expand|depthwise|project)(_BN)?", _v2_block),
    _rule(r"Conv_1", f"stages.{len(V2_ROWS)}.conv"),
    _rule(r"Conv_1_bn", f"stages.{len(V2_ROWS)}.bn"),
    _rule(r"predictions|Logits", "head.fc"),  # keras_applications 1.0 called it Logits
)

_MBCONV_LAYERS = {"expand_conv": "expand.conv", "expand_bn": "expand.bn", "dwconv": "dw.conv", "bn": "dw.bn",
                  "se_reduce": "se.reduce", "se_expand": "se.expand", "project_conv": "project.conv",
                  "project_bn": "project.bn"}

EFFICIENTNET_RULES = (
    _rule(r"stem_conv", "stem.conv"),
    _rule(r"stem_bn", "stem.bn"),
    # block{stage 1..7}{block a, b, c...}_{layer}
    _rule(r"block(\d)([a-z])_(" + "|".join(_MBCONV_LAYERS) + ")",
          lambda m: f"stages.{int(m[1]) - 1}.{ord(m[2]) - 97}.{_MBCONV_LAYERS[m[3]]}"),
    _rule(r"top_conv", f"stages.{len(B0_STAGES)}.conv"),
    _rule(r"top_bn", f"stages.{len(B0_STAGES)}.bn"),
    _rule(r"predictions", "head.fc"),
)
# EfficientNet's in-model Normalization layer: its mean and variance become the preprocessing.
_NORMALIZATION = re.compile(r"normalization(_\d+)?")

_RESNET_NOTE = ("Keras's ResNet and VGG weights take Caffe's preprocessing (BGR, ImageNet mean subtracted, "
                "no scaling): the first conv's channels were reversed so the model takes RGB; normalise with "
                "this mean and std (1/255)")
_TF_NOTE = "Keras's MobileNet weights take inputs scaled to [-1, 1]: mean = std = 0.5"


@dataclass(frozen=True)
class KerasVariant:
    """One Keras application as convnets loads it.

    Attributes:
        layout: name (``keras:resnet50``), our model, rename rules, BatchNorm eps and preprocessing.
        family: ``vgg``, ``resnet``, ``mobilenet``, ``mobilenet_v2`` or ``efficientnet``.
        model_kwargs: the builder arguments the weights need (``tf_same``, ``relu6``, ``width``).
    """

    layout: PeerLayout
    family: str
    model_kwargs: Mapping[str, Any]

    @property
    def bgr(self) -> bool:
        """Caffe-preprocessed weights: the first conv reads BGR."""
        return self.family in ("vgg", "resnet")


MOBILENET_ALPHAS = {1.0: "mobilenet_v1", 0.75: "mobilenet_v1_075", 0.5: "mobilenet_v1_050", 0.25: "mobilenet_v1_025"}
MOBILENET_V2_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)


def _variants() -> dict[str, KerasVariant]:
    # Sizes and resize: Keras's examples resize straight to the input size (load_img, nearest neighbour,
    # aspect lost), which is no evaluation recipe; these are the recipes the weights' accuracy was measured
    # with by their first publishers: Caffe's ResNet/VGG and TF-slim's MobileNets (central 87.5%) take the
    # 224 centre of a 256 shorter side; TensorFlow's EfficientNet crops size/(size + 32) of the shorter side,
    # bicubic. Resize before crop, antialiased, as the torchvision weights: within a pixel of those recipes.
    out = []
    for depth in (16, 19):
        out.append(KerasVariant(PeerLayout(f"keras:vgg{depth}", f"vgg{depth}", VGG_RULES, note=_RESNET_NOTE,
                                           mean=CAFFE_MEAN, std=CAFFE_STD, resize=256), "vgg", {}))
    for depth in (50, 101, 152):
        out.append(KerasVariant(PeerLayout(f"keras:resnet{depth}", f"resnet{depth}", RESNET_RULES, 1.001e-5,
                                           _RESNET_NOTE, CAFFE_MEAN, CAFFE_STD, resize=256), "resnet", {}))
    for alpha, model in MOBILENET_ALPHAS.items():
        out.append(KerasVariant(PeerLayout(f"keras:mobilenet_{alpha}", model, MOBILENET_RULES, 1e-3, _TF_NOTE,
                                           TF_MEAN, TF_STD, resize=256), "mobilenet", {"tf_same": True, "relu6": True}))
    for alpha in MOBILENET_V2_ALPHAS:
        width = {} if alpha == 1.0 else {"width": alpha}
        out.append(KerasVariant(PeerLayout(f"keras:mobilenet_v2_{alpha}", "mobilenet_v2", MOBILENET_V2_RULES, 1e-3,
                                           _TF_NOTE, TF_MEAN, TF_STD, resize=256), "mobilenet_v2",
                                {"tf_same": True, **width}))
    for b in range(8):
        # mean/std: replaced by each file's own Normalization layer (see read_keras).
        size = COEFFICIENTS[f"b{b}"].resolution  # Keras's EfficientNetB0-B7: 224, 240, 260, 300, 380, 456, 528, 600
        out.append(KerasVariant(PeerLayout(f"keras:efficientnet_b{b}", f"efficientnet_b{b}", EFFICIENTNET_RULES, 1e-3,
                                           resize=size + 32, crop=size, interpolation="bicubic"),
                                "efficientnet", {"tf_same": True}))
    return {v.layout.name: v for v in out}


KERAS_LAYOUTS: dict[str, KerasVariant] = _variants()


# --------------------------------------------------------------------------------------------
# Reading the two formats
# --------------------------------------------------------------------------------------------

Layers = dict[str, list[Any]]  # Keras layer name -> its weights (h5py datasets), in Keras's order


def _text(value: Any) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _attribute_list(group: Any, name: str) -> list[str]:
    """A list attribute, also when Keras split it into ``name0``, ``name1``... (over HDF5's 64 KB header limit)."""
    if name in group.attrs:
        return [_text(v) for v in group.attrs[name]]
    values, i = [], 0
    while f"{name}{i}" in group.attrs:
        values += [_text(v) for v in group.attrs[f"{name}{i}"]]
        i += 1
    return values


def _dataset(group: Any, key: str, h5py: Any) -> Any:
    """``group[key]``, which must be an array; a KeyError (absent, or not an array) is named by :func:`_layers`."""
    item = group[key]
    if not isinstance(item, h5py.Dataset):
        raise KeyError(f"{item.name} is a {type(item).__name__.lower()}, not an array")
    return item


def _legacy_layers(root: Any, h5py: Any) -> Layers:
    """The legacy format: a group per layer, ``weight_names`` giving its weights in Keras's order.

    A model nested in the saved one (``Sequential([EfficientNetB0(...), ...])``) is one group whose
    weight names say the inner layer: ``efficientnetb0/stem_conv/kernel``. Weights are grouped by that
    owner (the group itself for names without one, Keras 1's ``block1_conv1_W_1:0``).
    """
    layers: Layers = {}
    for name in _attribute_list(root, "layer_names"):
        group, owners = root[name], {}
        for weight in _attribute_list(group, "weight_names"):
            parts = weight.split("/")
            owners.setdefault(parts[-2] if len(parts) > 1 else name, []).append(_dataset(group, weight, h5py))
        for owner, weights in owners.items():
            if owner in layers:
                raise WeightsError(f"two layers are named {owner!r}")
            layers[owner] = weights
    return layers


def _keras3_layers(group: Any, h5py: Any, layers: Layers) -> None:
    """Keras 3's ``.weights.h5``: ``.../<class>/vars/0, 1, ...``, the layer's name in the ``vars`` attributes."""
    for key, child in group.items():
        if not isinstance(child, h5py.Group) or key == "vars":
            continue
        variables = child.get("vars")
        if isinstance(variables, h5py.Group) and len(variables):
            if "name" not in variables.attrs:
                raise WeightsError("a Keras 3 weights file that does not record its layers' names (written by an "
                                   "older Keras 3): save it again with a recent Keras, or as legacy HDF5 "
                                   "(keras.src.legacy.saving.legacy_h5_format.save_weights_to_hdf5_group)")
            name = _text(variables.attrs["name"])
            if name in layers:
                raise WeightsError(f"two layers are named {name!r}")
            layers[name] = [_dataset(variables, str(i), h5py) for i in range(len(variables))]
        _keras3_layers(child, h5py, layers)


@contextmanager
def open_layers(path: Path) -> Iterator[Layers]:
    """The weighted layers of a Keras weights file, readable while the context is open.

    Raises:
        MissingDependencyError: h5py is not installed.
        WeightsError: not a readable HDF5 file (damaged, truncated, another format), or not Keras weights;
            also a weight that cannot be read inside the context (h5py's OSError for a truncated file).
    """
    h5py = h5py_module()
    try:
        if path.suffix.lower() == ".keras" or zipfile.is_zipfile(path):  # a zip archive holding model.weights.h5
            with zipfile.ZipFile(path) as archive:
                if "model.weights.h5" not in archive.namelist():
                    raise WeightsError(f"{path}: a zip archive without model.weights.h5, so not a .keras model file "
                                       f"(it holds {', '.join(archive.namelist()[:5]) or 'nothing'})")
                source: Any = io.BytesIO(archive.read("model.weights.h5"))
        else:
            source = path
        with h5py.File(source, "r") as f:
            yield _layers(f, h5py, path)
    except (OSError, zipfile.BadZipFile) as err:
        raise WeightsError(f"{path}: not a readable Keras weights file (damaged, truncated or another format: "
                           f"{err})") from err


def _layers(f: Any, h5py: Any, path: Path) -> Layers:
    root = f.get("model_weights", f)  # a whole model saved by model.save("x.h5")
    try:
        if _attribute_list(root, "layer_names"):
            layers = _legacy_layers(root, h5py)
        elif isinstance(f.get("layers"), h5py.Group):
            layers = {}
            _keras3_layers(f["layers"], h5py, layers)
        else:
            raise WeightsError(f"{path}: an HDF5 file but not Keras weights (no layer_names attribute, no "
                               "layers/ group)")
    except KeyError as err:  # a layer or weight listed by name and absent
        raise WeightsError(f"{path}: a damaged Keras weights file ({err})") from err
    if not layers:
        raise WeightsError(f"{path}: a Keras weights file holding no weights")
    return layers


def _shapes(layers: Layers) -> dict[str, list[tuple[int, ...]]]:
    return {name: [tuple(w.shape) for w in weights] for name, weights in layers.items()}


# --------------------------------------------------------------------------------------------
# Detection: which application, from the layer names and shapes
# --------------------------------------------------------------------------------------------


def _count(names: list[str], pattern: str) -> tuple[int, ...]:
    """For names matching ``pattern`` (groups: stage, block): the number of blocks per stage, in order."""
    found: dict[int, set[str]] = {}
    for name in names:
        m = re.fullmatch(pattern, name)
        if m:
            found.setdefault(int(m[1]), set()).add(m[2])
    return tuple(len(v) for _, v in sorted(found.items()))


def _width(shapes: Mapping[str, list[tuple[int, ...]]], name: str) -> int:
    """Output channels of a conv layer's kernel (H, W, in, out)."""
    return shapes[name][0][-1] if name in shapes and shapes[name] and len(shapes[name][0]) == 4 else 0


def detect_keras_layout(shapes: Mapping[str, list[tuple[int, ...]]]) -> KerasVariant:
    """The Keras application of a weights file, from its layer names and weight shapes.

    Raises:
        LayoutError: the file is another application, or a variant convnets does not have.
    """
    names = sorted(shapes)
    if "stem_conv" in shapes and "block1a_dwconv" in shapes:
        blocks = _count(names, r"block(\d)([a-z])_dwconv")
        signature = (_width(shapes, "stem_conv"), blocks, _width(shapes, "top_conv"))
        if signature in EFFICIENTNET_SIGNATURES:
            return KERAS_LAYOUTS[f"keras:efficientnet_{EFFICIENTNET_SIGNATURES[signature]}"]
        raise LayoutError(f"a Keras EfficientNet with (stem, blocks per stage, head) = {signature}, none of B0-B7")
    if "Conv1" in shapes and "expanded_conv_depthwise" in shapes:
        widths = (_width(shapes, "Conv1"), _width(shapes, "block_16_project"), _width(shapes, "Conv_1"))
        for alpha in MOBILENET_V2_ALPHAS:
            if _v2_signature(alpha) == widths:
                return KERAS_LAYOUTS[f"keras:mobilenet_v2_{alpha}"]
        raise LayoutError(f"a Keras MobileNetV2 with first conv {_width(shapes, 'Conv1')} wide, none of alpha "
                          f"{', '.join(map(str, MOBILENET_V2_ALPHAS))}")
    if "conv1" in shapes and "conv_dw_1" in shapes:
        alpha = _width(shapes, "conv1") / 32
        if alpha in MOBILENET_ALPHAS:
            return KERAS_LAYOUTS[f"keras:mobilenet_{alpha}"]
        raise LayoutError(f"a Keras MobileNet with alpha {alpha:g} (first conv {_width(shapes, 'conv1')} wide): "
                          f"convnets has alpha {', '.join(map(str, MOBILENET_ALPHAS))}")
    if "conv2_block1_preact_bn" in shapes or "post_bn" in shapes:
        raise LayoutError("a Keras ResNetV2 (pre-activation): convnets has the original ResNet only")
    new, old = "conv1_conv" in shapes, "bn_conv1" in shapes and "res2a_branch2a" in shapes
    if new or old:
        blocks = (_count(names, r"conv(\d)_block(\d+)_1_conv") if new else _count(names, r"res(\d)([a-z])_branch2a"))
        depth = RESNET_DEPTHS.get(("bottleneck", blocks))
        if depth is None or depth < 50:
            raise LayoutError(f"a Keras ResNet with {blocks} blocks per stage, none of ResNet50/101/152")
        return KERAS_LAYOUTS[f"keras:resnet{depth}"]
    if "block1_conv1" in shapes:
        convs = len([n for n in names if re.fullmatch(r"block\d_conv\d", n)])
        if f"keras:vgg{VGG_DEPTHS.get(convs)}" in KERAS_LAYOUTS:
            return KERAS_LAYOUTS[f"keras:vgg{VGG_DEPTHS[convs]}"]
        raise LayoutError(f"a Keras VGG with {convs} convolutions, neither VGG16 (13) nor VGG19 (16)")
    sample = ", ".join(names[:5])
    raise LayoutError(f"unrecognised Keras weights (layers such as {sample}): convnets reads Keras Applications' "
                      f"{', '.join(KERAS_LAYOUTS)}")


def _v2_signature(alpha: float) -> tuple[int, int, int]:
    """Widths of MobileNetV2's first conv, last bottleneck and last conv at ``alpha`` (Keras's rounding, ours)."""
    from convnets.layers import make_divisible

    return make_divisible(32 * alpha), make_divisible(V2_ROWS[-1].c * alpha), make_divisible(1280 * max(1.0, alpha))


# --------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------


def _tensor(data: Any) -> torch.Tensor:
    return torch.from_numpy(np.array(data, dtype=np.float32))


def _layer_tensors(name: str, ours: str, weights: list[Any]) -> dict[str, torch.Tensor]:
    """Our tensors for one Keras layer, its kind told by its weights (Keras's order: kernel, bias; gamma,
    beta, moving mean, moving variance)."""
    shapes = [tuple(w.shape) for w in weights]
    kinds = sorted({str(w.dtype) for w in weights if w.dtype.kind != "f"})
    if kinds:
        # Keras's model.quantize("int8") stores int8 kernels beside a kernel_scale: read as floats, they would
        # load as other weights (a scale taken for a bias), without a word.
        raise LayoutError(f"Keras layer {name!r} holds {', '.join(kinds)} weights (a model quantized with "
                          "model.quantize?): convnets reads float weights; save the model before quantizing it")
    if len(shapes) == 4 and len(set(shapes)) == 1 and len(shapes[0]) == 1:  # BatchNormalization
        gamma, beta, mean, var = (_tensor(w) for w in weights)
        return {f"{ours}.weight": gamma, f"{ours}.bias": beta, f"{ours}.running_mean": mean,
                f"{ours}.running_var": var, f"{ours}.num_batches_tracked": torch.tensor(0)}
    if len(shapes) in (1, 2) and len(shapes[0]) in (2, 4) and all(len(s) == 1 for s in shapes[1:]):
        kernel = _tensor(weights[0])
        if kernel.ndim == 2:  # Dense: (in, out)
            weight = kernel.T
        elif ours.startswith("head."):  # a 1x1 convolution on pooled features (MobileNet's conv_preds)
            weight = kernel.reshape(-1, kernel.shape[-1]).T
        elif ours.endswith("dw.conv"):  # DepthwiseConv2D: (H, W, channels, multiplier)
            weight = kernel.permute(2, 3, 0, 1).reshape(-1, 1, *kernel.shape[:2])
        else:  # Conv2D: (H, W, in, out)
            weight = kernel.permute(3, 2, 0, 1)
        out = {f"{ours}.weight": weight.contiguous()}
        if len(weights) == 2:
            out[f"{ours}.bias"] = _tensor(weights[1])
        return out
    raise LayoutError(f"Keras layer {name!r} holds weights of shapes {shapes}: not a convolution, dense or "
                      "BatchNormalization layer")


def _fold_conv_biases(state: dict[str, torch.Tensor]) -> None:
    """A conv bias followed by BatchNorm goes into the BN's running mean (our convs before BN have no bias)."""
    for key in [k for k in state if k.endswith(".conv.bias")]:
        mean = key.removesuffix(".conv.bias") + ".bn.running_mean"
        if mean in state:
            state[mean] = state[mean] - state.pop(key)


def _nhwc_to_nchw_rows(state: dict[str, torch.Tensor], key: str, channels: int) -> None:
    """Permute the input columns of a linear layer that reads a flattened (H, W, C) map to (C, H, W)."""
    weight = state[key]
    side = math.isqrt(weight.shape[1] // channels)
    if side * side * channels != weight.shape[1]:
        raise LayoutError(f"{key}: {weight.shape[1]} inputs are not a square map of {channels} channels")
    state[key] = weight.reshape(-1, side, side, channels).permute(0, 3, 1, 2).reshape(weight.shape[0], -1).contiguous()


def _normalization(weights: list[Any]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """EfficientNet's in-model preprocessing as (mean, std) on 0..1 pixels, from its Normalization layer."""
    mean = tuple(float(v) for v in np.asarray(weights[0], dtype=np.float64))
    variance = np.asarray(weights[1], dtype=np.float64)
    if np.allclose(variance, IMAGENET_STD, rtol=1e-6, atol=0):
        # The published files store ImageNet's std as the "variance"; Keras's weights="imagenet" model
        # divides again by its square root (Keras's EfficientNet, tensorflow/tensorflow#49930).
        return mean, IMAGENET_STD
    return mean, tuple(max(math.sqrt(v), 1e-7) for v in variance)  # Keras: (x - mean) / max(sqrt(var), 1e-7)


def convert_layers(layers: Layers, variant: KerasVariant) -> dict[str, torch.Tensor]:
    """Our state dict for the weighted layers of ``variant``'s Keras application.

    Raises:
        LayoutError: layers that no rule of the variant covers, or weights of an unexpected kind.
    """
    state: dict[str, torch.Tensor] = {}
    unmapped = []
    for name, weights in layers.items():
        if variant.family == "efficientnet" and _NORMALIZATION.fullmatch(name):
            continue  # preprocessing, not weights
        ours = variant.layout.rename(name)
        if ours is None:
            unmapped.append(name)
            continue
        for key, tensor in _layer_tensors(name, ours, weights).items():
            if key in state:
                raise LayoutError(f"{variant.layout.name}: two layers map to {key!r} (one is {name!r})")
            state[key] = tensor
    if unmapped:
        shown = ", ".join(unmapped[:10]) + (f" ... and {len(unmapped) - 10} more" if len(unmapped) > 10 else "")
        raise LayoutError(f"{variant.layout.name}: {len(unmapped)} Keras layer(s) that no rule covers: {shown}")
    _fold_conv_biases(state)
    if variant.family == "vgg" and "head.hidden.0.fc.weight" in state:
        last = max((k for k in state if k.endswith(".conv.weight")), key=lambda k: [int(p) for p in
                                                                                  re.findall(r"\d+", k)])
        _nhwc_to_nchw_rows(state, "head.hidden.0.fc.weight", state[last].shape[0])
    if variant.bgr:
        first = "stem.conv.weight" if "stem.conv.weight" in state else "stages.0.conv1.conv.weight"
        state[first] = state[first].flip(1).contiguous()  # BGR -> RGB input channels
    return state


@dataclass
class KerasCheckpoint:
    """What a Keras weights file gives: its variant (with the file's own preprocessing) and our tensors.

    Attributes:
        layout: the variant's layout; for EfficientNet, with the mean/std of the file's Normalization layer.
        model_kwargs: builder arguments the weights need.
        state: our state dict (empty when only inspected).
    """

    layout: PeerLayout
    model_kwargs: dict[str, Any]
    state: dict[str, torch.Tensor]


def read_keras(path: str | Path, layout: str | None = None, *, tensors: bool = True) -> KerasCheckpoint:
    """Read a Keras Applications weights file (either format) into our naming.

    Args:
        path: a ``.h5``/``.hdf5`` (legacy or Keras 3 ``.weights.h5``) or ``.keras`` file.
        layout: a key of :data:`KERAS_LAYOUTS`; detected from the layer names and shapes when None.
        tensors: convert the weights (False: only names, shapes and preprocessing are read).

    Raises:
        FileNotFoundError: no such file.
        MissingDependencyError: h5py is not installed.
        WeightsError: an empty, unreadable or damaged file, or not Keras weights.
        LayoutError: another application or variant, or layers no rule covers.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    if path.stat().st_size == 0:
        raise WeightsError(f"{path}: the file is empty (an interrupted download or copy?)")
    with open_layers(path) as layers:
        shapes = _shapes(layers)
        if layout is None:
            variant = detect_keras_layout(shapes)
        elif layout in KERAS_LAYOUTS:
            variant = KERAS_LAYOUTS[layout]
        elif layout in LAYOUTS:
            raise LayoutError(f"{layout} is a layout of PyTorch state dicts (torchvision/timm checkpoints); "
                              f"{path.name} is a Keras weights file, whose layouts are {', '.join(KERAS_LAYOUTS)}")
        else:
            raise LayoutError(f"unknown Keras layout {layout!r}; known: {', '.join(KERAS_LAYOUTS)}")
        peer = variant.layout
        if variant.family == "efficientnet":
            norms = [n for n in layers if _NORMALIZATION.fullmatch(n)]
            if len(norms) > 1:
                # One would become the preprocessing, the other be dropped (which one: the file format's order).
                raise LayoutError(f"{path.name}: {len(norms)} Normalization layers ({', '.join(norms)}), where "
                                  "EfficientNet has one, whose statistics become the preprocessing: a Normalization "
                                  "in front of the application cannot be taken with it; save the application alone")
            norm = next((w for n, w in layers.items() if _NORMALIZATION.fullmatch(n) and len(w) >= 2), None)
            # A file without the layer (keras_applications 1.0) expects ImageNet's normalisation.
            mean, std = _normalization(norm) if norm else (IMAGENET_MEAN, IMAGENET_STD)
            peer = dataclasses.replace(peer, mean=mean, std=std, note=(
                "Keras's EfficientNet normalises inside the model; here it is the weights' preprocessing: "
                f"mean {_rounded(mean)}, std {_rounded(std)} on pixels in 0..1"))
        state = convert_layers(layers, variant) if tensors else {}
    return KerasCheckpoint(peer, dict(variant.model_kwargs), state)


def _rounded(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"
