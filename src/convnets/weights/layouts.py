"""The key layouts of peer libraries' checkpoints (torchvision, timm), and the rules that rename them into ours.

A peer checkpoint is a state dict in the peer's own naming (``layer1.0.conv1.weight``); ours
reads ``stages.0.0.conv1.conv.weight``. Each peer layout has a table of rename rules over
*module paths* (the key without its last component: ``weight``, ``bias``, ``running_mean``...),
so a reader can check every line against both libraries' code. Rules never match by position
alone: a key no rule names is an error, never dropped, and :func:`convnets.weights.load` then
checks every shape against the model.

Known layouts are :data:`LAYOUTS`; :func:`detect_layout` picks one from the keys and shapes, and
claims it only when the layout's rules cover every key.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from convnets.errors import LayoutError
from convnets.layers import make_divisible
from convnets.models.efficientnet import B0_STAGES
from convnets.models.mobilenet import V2_ROWS
from convnets.models.vgg import VGG_STAGES
from convnets.weights.files import tensors_of
from convnets.weights.specs import IMAGENET_MEAN, IMAGENET_STD, TORCHVISION_EFFICIENTNET

# Prefixes added by wrappers, not by the architecture: DataParallel / DistributedDataParallel
# ("module.") and torch.compile ("_orig_mod."). They can nest, e.g. "module._orig_mod.".
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Keys a wrapper saves beside the model's: torch.optim.swa_utils.AveragedModel counts its averages.
WRAPPER_KEYS = frozenset({"n_averaged"})

# The top-level modules of every model of ours (ConvNet: stem -> stages -> head, GoogLeNet's aux).
OWN_TOP_LEVEL = frozenset({"stem", "stages", "head", "aux"})


# --------------------------------------------------------------------------------------------
# Rename rules
# --------------------------------------------------------------------------------------------

Target = str | Callable[[re.Match[str]], str | None]


@dataclass(frozen=True)
class Rule:
    """Rename a peer module path that fully matches ``pattern``.

    ``target`` is a replacement template (``\\1``, ``\\g<name>``) or a function of the match that
    returns our path, or None when the match names no layer of ours (then the key is unmapped).
    """

    pattern: re.Pattern[str]
    target: Target

    def apply(self, path: str) -> str | None:
        m = self.pattern.fullmatch(path)
        if m is None:
            return None
        return self.target(m) if callable(self.target) else m.expand(self.target)


def _rule(pattern: str, target: Target) -> Rule:
    return Rule(re.compile(pattern), target)


def _exact(table: Mapping[str, str]) -> tuple[Rule, ...]:
    """One rule per entry of a {peer path: our path} table."""
    return tuple(_rule(re.escape(peer), ours) for peer, ours in table.items())


@dataclass(frozen=True)
class PeerLayout:
    """A peer checkpoint layout: its id, our model it loads into and the rename rules.

    Attributes:
        name: the peer's id, ``"<library>:<model>"``.
        model: our registered model name.
        rules: rename rules over module paths, tried in order.
        bn_eps: BatchNorm epsilon the weights were trained with, where it is not PyTorch's 1e-5.
        note: something outside the state dict the user must know (input normalisation).
        mean: per-channel normalisation mean the weights expect (pixels scaled to 0..1).
        std: per-channel normalisation standard deviation the weights expect.
        resize: the shorter side is resized to this before the centre crop (None: fit and crop).
        crop: side of the centre crop; None: our model's input size.
        interpolation: the resize filter (see :class:`convnets.data.preprocess.Preprocessing`).
        model_kwargs: builder arguments the weights need (timm's ``tf_`` EfficientNets: ``tf_same``;
            MobileNet v2's ``width``): the shapes cannot say all of them.
        flatten: our module paths whose 4-D peer weights are flattened to a Linear's 2-D weight (timm's
            VGG computes its fully connected layers as convolutions).
    """

    name: str
    model: str
    rules: tuple[Rule, ...]
    bn_eps: float | None = None
    note: str = field(default="", compare=False)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    resize: int | None = 256  # torchvision's ImageClassification default
    crop: int | None = None
    interpolation: str = "bilinear"
    model_kwargs: Mapping[str, Any] = field(default_factory=dict, compare=False)
    flatten: frozenset[str] = frozenset()

    def rename(self, path: str) -> str | None:
        """Our module path for a peer module path, or None when no rule covers it."""
        for rule in self.rules:
            if rule.pattern.fullmatch(path):
                return rule.apply(path)
        return None


def _stage(m: re.Match[str], group: str | int = 1) -> int:
    """Peers number their stages from 1 (``layer1``, ``features.1``), we from 0."""
    return int(m[group]) - 1


# torchvision ResNet: conv{k}/bn{k} of a block are one ConvBNAct of ours; the projection
# shortcut is ``downsample`` = Sequential(conv, bn).
RESNET_RULES = (
    _rule(r"conv1", "stem.conv"),
    _rule(r"bn1", "stem.bn"),
    _rule(r"layer(\d)\.(\d+)\.conv(\d)", lambda m: f"stages.{_stage(m)}.{m[2]}.conv{m[3]}.conv"),
    _rule(r"layer(\d)\.(\d+)\.bn(\d)", lambda m: f"stages.{_stage(m)}.{m[2]}.conv{m[3]}.bn"),
    _rule(r"layer(\d)\.(\d+)\.downsample\.0", lambda m: f"stages.{_stage(m)}.{m[2]}.shortcut.conv"),
    _rule(r"layer(\d)\.(\d+)\.downsample\.1", lambda m: f"stages.{_stage(m)}.{m[2]}.shortcut.bn"),
    _rule(r"fc", "head.fc"),
)

# torchvision AlexNet: ``features`` interleaves conv, ReLU and max-pool, so the five convs sit at
# 0, 3, 6, 8, 10; ``classifier`` is Dropout, Linear, ReLU, Dropout, Linear, ReLU, Linear.
ALEXNET_RULES = _exact({
    "features.0": "stages.0.conv",
    "features.3": "stages.1.conv",
    "features.6": "stages.2.conv",
    "features.8": "stages.3.conv",
    "features.10": "stages.4.conv",
    "classifier.1": "head.hidden.0.fc",
    "classifier.4": "head.hidden.1.fc",
    "classifier.6": "head.fc",
})


def vgg_feature_table(depth: int, batch_norm: bool) -> dict[str, str]:
    """torchvision's ``features.{index}`` -> our path, for VGG-``depth``.

    torchvision's ``features`` is one flat Sequential: per conv a Conv2d, [a BatchNorm2d,] a ReLU;
    per stage a closing MaxPool2d. Walking the stage table (``VGG_STAGES``, the paper's Table 1)
    gives each layer's index: VGG-16 has its convs at 0, 2, 5, 7, 10, ...
    """
    table, index = {}, 0
    for i, widths in enumerate(VGG_STAGES[depth]):
        for j in range(1, len(widths) + 1):
            table[f"features.{index}"] = f"stages.{i}.conv{j}.conv"
            index += 1
            if batch_norm:
                table[f"features.{index}"] = f"stages.{i}.conv{j}.bn"
                index += 1
            index += 1  # the ReLU
        index += 1  # the max-pool
    return table


# torchvision VGG classifier: Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear.
VGG_CLASSIFIER = {"classifier.0": "head.hidden.0.fc", "classifier.3": "head.hidden.1.fc", "classifier.6": "head.fc"}


def vgg_rules(depth: int, batch_norm: bool) -> tuple[Rule, ...]:
    """Rules of torchvision's ``vgg{depth}[_bn]``."""
    return _exact({**vgg_feature_table(depth, batch_norm), **VGG_CLASSIFIER})


# torchvision GoogLeNet: BasicConv2d is (conv, bn) like our ConvBNAct, so ".conv"/".bn" carry over.
# Its branches are numbered: branch1 = 1x1, branch2 = 1x1 reduce + 3x3, branch3 = 1x1 reduce +
# the "5x5" (a 3x3 in torchvision, and in our googlenet_torchvision), branch4 = max-pool + 1x1.
# The auxiliary classifiers aux1/aux2 read inception 4a/4d.
_GOOGLENET_BRANCHES = {
    "branch1": "branch1x1",
    "branch2.0": "branch3x3.reduce",
    "branch2.1": "branch3x3.conv",
    "branch3.0": "branch5x5.reduce",
    "branch3.1": "branch5x5.conv",
    "branch4.1": "branch_pool.proj",  # branch4.0 is the max-pool
}
_GOOGLENET_AUX = {"aux1": "aux.4a", "aux2": "aux.4d"}


def _googlenet_inception(m: re.Match[str]) -> str | None:
    branch = _GOOGLENET_BRANCHES.get(m["branch"])
    stage = int(m["module"][0]) - 3  # inception3x -> stages.0, 4x -> stages.1, 5x -> stages.2
    return f"stages.{stage}.{m['module']}.{branch}.{m['layer']}" if branch else None


GOOGLENET_RULES = (
    _rule(r"conv1\.(conv|bn)", r"stem.conv1.\1"),
    _rule(r"conv2\.(conv|bn)", r"stem.conv2_reduce.\1"),
    _rule(r"conv3\.(conv|bn)", r"stem.conv2.\1"),
    _rule(r"inception(?P<module>[345][a-e])\.(?P<branch>branch\d(?:\.\d)?)\.(?P<layer>conv|bn)", _googlenet_inception),
    _rule(r"(aux[12])\.conv\.(conv|bn)", lambda m: f"{_GOOGLENET_AUX[m[1]]}.conv.{m[2]}"),
    _rule(r"(aux[12])\.fc1", lambda m: f"{_GOOGLENET_AUX[m[1]]}.head.hidden.0.fc"),
    _rule(r"(aux[12])\.fc2", lambda m: f"{_GOOGLENET_AUX[m[1]]}.head.fc"),
    _rule(r"fc", "head.fc"),
)

# torchvision numbers the layers inside an inverted residual block consecutively, so the same
# index means a different layer with and without the 1x1 expansion (absent where t = 1).
MBV2_EXPANDED = {"0.0": "expand.conv", "0.1": "expand.bn", "1.0": "dw.conv", "1.1": "dw.bn",
                 "2": "project.conv", "3": "project.bn"}
MBV2_UNEXPANDED = {"0.0": "dw.conv", "0.1": "dw.bn", "1": "project.conv", "2": "project.bn"}

# torchvision's ``features.{n}`` for n = 1..17 is the n-th bottleneck; Sandler et al. Table 2's
# rows (V2_ROWS) say which stage and block that is, and whether it expands.
_MBV2_BLOCKS = [(s, b, row.t != 1) for s, row in enumerate(V2_ROWS) for b in range(row.n)]
_MBV2_LAST = len(_MBV2_BLOCKS) + 1  # features.18: the final 1x1 conv to 1280


def _mbv2_block(m: re.Match[str]) -> str | None:
    n = int(m["n"])
    if not 1 <= n <= len(_MBV2_BLOCKS):
        return None
    stage, block, expands = _MBV2_BLOCKS[n - 1]
    layer = (MBV2_EXPANDED if expands else MBV2_UNEXPANDED).get(m["layer"])
    return f"stages.{stage}.{block}.{layer}" if layer else None


MOBILENET_V2_RULES = (
    _rule(r"features\.0\.0", "stem.conv"),
    _rule(r"features\.0\.1", "stem.bn"),
    _rule(r"features\.(?P<n>\d+)\.conv\.(?P<layer>\d(?:\.\d)?)", _mbv2_block),
    _rule(rf"features\.{_MBV2_LAST}\.0", f"stages.{len(V2_ROWS)}.conv"),
    _rule(rf"features\.{_MBV2_LAST}\.1", f"stages.{len(V2_ROWS)}.bn"),
    _rule(r"classifier\.1", "head.fc"),  # classifier.0 is the dropout
)

# torchvision MBConv: ``block`` = [expand,] depthwise, squeeze-excite (fc1/fc2), project; each
# conv a Conv2dNormActivation (0 = conv, 1 = bn). Only B0's first stage has no expansion.
MBCONV_EXPANDED = {"0.0": "expand.conv", "0.1": "expand.bn", "1.0": "dw.conv", "1.1": "dw.bn",
                   "2.fc1": "se.reduce", "2.fc2": "se.expand", "3.0": "project.conv", "3.1": "project.bn"}
MBCONV_UNEXPANDED = {"0.0": "dw.conv", "0.1": "dw.bn", "1.fc1": "se.reduce", "1.fc2": "se.expand",
                     "2.0": "project.conv", "2.1": "project.bn"}
_EFFICIENTNET_LAST = len(B0_STAGES) + 1  # features.8: the final 1x1 conv


def _mbconv_block(m: re.Match[str]) -> str | None:
    stage = _stage(m, "s")
    if not 0 <= stage < len(B0_STAGES):
        return None
    layer = (MBCONV_EXPANDED if B0_STAGES[stage].expand != 1 else MBCONV_UNEXPANDED).get(m["layer"])
    return f"stages.{stage}.{m['b']}.{layer}" if layer else None


EFFICIENTNET_RULES = (
    _rule(r"features\.0\.0", "stem.conv"),
    _rule(r"features\.0\.1", "stem.bn"),
    _rule(r"features\.(?P<s>\d+)\.(?P<b>\d+)\.block\.(?P<layer>\d\.(?:\d|fc1|fc2))", _mbconv_block),
    _rule(rf"features\.{_EFFICIENTNET_LAST}\.0", f"stages.{len(B0_STAGES)}.conv"),
    _rule(rf"features\.{_EFFICIENTNET_LAST}\.1", f"stages.{len(B0_STAGES)}.bn"),
    _rule(r"classifier\.1", "head.fc"),  # classifier.0 is the dropout
)

# timm MobileNet v1 (its EfficientNet builder): blocks.{s}.{b} = DepthwiseSeparableConv with
# conv_dw/bn1 then conv_pw/bn2; the stages coincide with ours.
TIMM_MOBILENET_V1_RULES = (
    _rule(r"conv_stem", "stem.conv"),
    _rule(r"bn1", "stem.bn"),
    _rule(r"blocks\.(\d+)\.(\d+)\.conv_dw", r"stages.\1.\2.dw.conv"),
    _rule(r"blocks\.(\d+)\.(\d+)\.bn1", r"stages.\1.\2.dw.bn"),
    _rule(r"blocks\.(\d+)\.(\d+)\.conv_pw", r"stages.\1.\2.pw.conv"),
    _rule(r"blocks\.(\d+)\.(\d+)\.bn2", r"stages.\1.\2.pw.bn"),
    _rule(r"classifier", "head.fc"),
)

# timm's EfficientNet builder also makes its MobileNet v2 and EfficientNets. Its stages coincide with
# ours. A block without expansion (MobileNet v2's first, EfficientNet's first stage) is a
# DepthwiseSeparableConv: conv_dw/bn1, [se,] conv_pw/bn2; every other block an InvertedResidual:
# conv_pw/bn1 (the 1x1 expansion), conv_dw/bn2, [se,] conv_pwl/bn3. The same name (conv_pw, bn1,
# bn2) thus means another layer of ours in each kind, told apart by the stage's expansion ratio.
TIMM_SEPARABLE = {"conv_dw": "dw.conv", "bn1": "dw.bn", "se.conv_reduce": "se.reduce", "se.conv_expand": "se.expand",
                  "conv_pw": "project.conv", "bn2": "project.bn"}
TIMM_INVERTED = {"conv_pw": "expand.conv", "bn1": "expand.bn", "conv_dw": "dw.conv", "bn2": "dw.bn",
                 "se.conv_reduce": "se.reduce", "se.conv_expand": "se.expand", "conv_pwl": "project.conv",
                 "bn3": "project.bn"}


def timm_builder_rules(expands: tuple[bool, ...]) -> tuple[Rule, ...]:
    """Rules of a timm EfficientNet-builder model whose stage ``s`` expands when ``expands[s]``."""

    def block(m: re.Match[str]) -> str | None:
        stage = int(m["s"])
        if stage >= len(expands):
            return None
        layer = (TIMM_INVERTED if expands[stage] else TIMM_SEPARABLE).get(m["layer"])
        return f"stages.{stage}.{m['b']}.{layer}" if layer else None

    last = len(expands)  # our final 1x1 conv follows the block stages
    return (
        _rule(r"conv_stem", "stem.conv"),
        _rule(r"bn1", "stem.bn"),
        _rule(r"blocks\.(?P<s>\d+)\.(?P<b>\d+)\.(?P<layer>[a-z_]+\d?|se\.conv_(?:reduce|expand))", block),
        _rule(r"conv_head", f"stages.{last}.conv"),
        _rule(r"bn2", f"stages.{last}.bn"),
        _rule(r"classifier", "head.fc"),
    )


TIMM_EFFICIENTNET_RULES = timm_builder_rules(tuple(stage.expand != 1 for stage in B0_STAGES))
TIMM_MOBILENET_V2_RULES = timm_builder_rules(tuple(row.t != 1 for row in V2_ROWS))

# timm's MobileNet v2 widths (mobilenetv2_035 ... _140) and the builder argument each is ours with.
TIMM_MOBILENET_V2_WIDTHS = {"035": 0.35, "050": 0.5, "075": 0.75, "100": 1.0, "140": 1.4}

# timm's VGG: ``features`` as torchvision's; the fully connected layers are a ConvMlp ``pre_logits``
# (fc1 a 7x7 conv, fc2 a 1x1 conv), then ``head.fc``. A 7x7 conv over a 7x7 map is our Linear over
# the flattened map, whose (C, H, W) order is the conv weight's own: the weights are flattened.
TIMM_VGG_HEAD = {"pre_logits.fc1": "head.hidden.0.fc", "pre_logits.fc2": "head.hidden.1.fc", "head.fc": "head.fc"}


def timm_vgg_rules(depth: int, batch_norm: bool) -> tuple[Rule, ...]:
    """Rules of timm's ``vgg{depth}[_bn]``."""
    return _exact({**vgg_feature_table(depth, batch_norm), **TIMM_VGG_HEAD})


_TIMM_VGG_NOTE = (
    "timm's VGG gives our outputs where the last feature map is at most 7x7 (inputs up to 255 px, its 224 among "
    "them); on a larger map timm slides its 7x7 'fc1' over it and averages, ours averages the map to 7x7 first"
)
_TIMM_EFFICIENTNET_NOTE = (
    "timm's tf_efficientnet_* checkpoints have the same keys as its efficientnet_* but need TensorFlow's "
    "padding and BatchNorm eps 1e-3: load them with layout='timm:tf_efficientnet_bN' (--layout on the command line)"
)
_TIMM_TF_NOTE = "the .ap_in1k weights of timm's tf_efficientnet_* take mean = std = 0.5, the others ImageNet's"

_GOOGLENET_NOTE = (
    "torchvision's GoogLeNet weights were trained with transform_input=True: feed images normalised "
    "with mean 0.5 and std 0.5 per channel, not the ImageNet mean/std"
)


def _layouts() -> dict[str, PeerLayout]:
    out = [PeerLayout("torchvision:alexnet", "alexnet_torchvision", ALEXNET_RULES)]
    for depth in VGG_STAGES:
        out.append(PeerLayout(f"torchvision:vgg{depth}", f"vgg{depth}", vgg_rules(depth, False)))
        out.append(PeerLayout(f"torchvision:vgg{depth}_bn", f"vgg{depth}_bn", vgg_rules(depth, True)))
    out += [PeerLayout(f"torchvision:resnet{d}", f"resnet{d}", RESNET_RULES) for d in (18, 34)]
    # torchvision's bottleneck puts the stride on the 3x3 ("v1.5"): our *_torchvision builds.
    out += [PeerLayout(f"torchvision:resnet{d}", f"resnet{d}_torchvision", RESNET_RULES) for d in (50, 101, 152)]
    # torchvision's BasicConv2d builds its BatchNorm with eps 1e-3.
    out.append(PeerLayout("torchvision:googlenet", "googlenet_torchvision", GOOGLENET_RULES, 1e-3,
                          note=_GOOGLENET_NOTE, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))
    out.append(PeerLayout("torchvision:mobilenet_v2", "mobilenet_v2", MOBILENET_V2_RULES))
    for i, (_, _, resize, crop) in TORCHVISION_EFFICIENTNET.items():
        # B5-B7 are ports of the TensorFlow weights, built by torchvision with BatchNorm eps 1e-3.
        eps = 1e-3 if i >= 5 else None
        out.append(PeerLayout(f"torchvision:efficientnet_b{i}", f"efficientnet_b{i}", EFFICIENTNET_RULES, eps,
                              resize=resize, crop=crop, interpolation="bicubic"))
    # timm's evaluation recipe belongs to a weight tag (its pretrained_cfg), which a state dict does not carry:
    # torchvision's default (256 -> 224 bilinear) is assumed, not verified.
    out.append(PeerLayout("timm:mobilenetv1_100", "mobilenet_v1", TIMM_MOBILENET_V1_RULES))
    for width, alpha in TIMM_MOBILENET_V2_WIDTHS.items():
        out.append(PeerLayout(f"timm:mobilenetv2_{width}", "mobilenet_v2", TIMM_MOBILENET_V2_RULES,
                              model_kwargs={} if alpha == 1.0 else {"width": alpha}))
    for i in range(8):
        out.append(PeerLayout(f"timm:efficientnet_b{i}", f"efficientnet_b{i}", TIMM_EFFICIENTNET_RULES,
                              note=_TIMM_EFFICIENTNET_NOTE))
    for i in range(8):  # ports of the TensorFlow weights: TensorFlow's padding, BatchNorm eps 1e-3
        out.append(PeerLayout(f"timm:tf_efficientnet_b{i}", f"efficientnet_b{i}", TIMM_EFFICIENTNET_RULES, 1e-3,
                              note=_TIMM_TF_NOTE, model_kwargs={"tf_same": True}))
    for depth in VGG_STAGES:
        for bn in ("", "_bn"):
            out.append(PeerLayout(f"timm:vgg{depth}{bn}", f"vgg{depth}{bn}", timm_vgg_rules(depth, bool(bn)),
                                  note=_TIMM_VGG_NOTE, flatten=frozenset({"head.hidden.0.fc", "head.hidden.1.fc"})))
    return {layout.name: layout for layout in out}


LAYOUTS: dict[str, PeerLayout] = _layouts()


# --------------------------------------------------------------------------------------------
# Detection and conversion
# --------------------------------------------------------------------------------------------

# He et al. 2015, Table 1: blocks per stage -> depth, for basic and bottleneck blocks.
RESNET_DEPTHS = {
    ("basic", (2, 2, 2, 2)): 18,
    ("basic", (3, 4, 6, 3)): 34,
    ("bottleneck", (3, 4, 6, 3)): 50,
    ("bottleneck", (3, 4, 23, 3)): 101,
    ("bottleneck", (3, 8, 36, 3)): 152,
}

# torchvision's VGG: number of convs -> depth (Simonyan & Zisserman 2014, Table 1: depth = convs + 3).
VGG_DEPTHS = {sum(len(s) for s in stages): depth for depth, stages in VGG_STAGES.items()}

# torchvision's efficientnet_b0..b7: (stem width, blocks per stage, final 1x1 conv width). B1 and B2
# share stem and depths and differ in width, hence the last entry.
EFFICIENTNET_SIGNATURES = {
    (32, (1, 2, 2, 3, 3, 4, 1), 1280): "b0",
    (32, (2, 3, 3, 4, 4, 5, 2), 1280): "b1",
    (32, (2, 3, 3, 4, 4, 5, 2), 1408): "b2",
    (40, (2, 3, 3, 5, 5, 6, 2), 1536): "b3",
    (48, (2, 4, 4, 6, 6, 8, 2), 1792): "b4",
    (48, (3, 5, 5, 7, 7, 9, 3), 2048): "b5",
    (56, (3, 6, 6, 8, 8, 11, 3), 2304): "b6",
    (64, (4, 7, 7, 10, 10, 13, 4), 2560): "b7",
}


def _mobilenet_v2_signature(width: float) -> tuple[int, tuple[int, ...], tuple[int, ...], int]:
    """(stem, blocks per stage, stage widths, head) of our (and timm's) MobileNet v2 at ``width``."""
    return (make_divisible(32 * width), tuple(row.n for row in V2_ROWS),
            tuple(make_divisible(row.c * width) for row in V2_ROWS), make_divisible(1280 * max(1.0, width)))


def strip_wrapper_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` without what wrappers add around a model's own keys.

    - the ``module.`` (DataParallel/DDP) and ``_orig_mod.`` (torch.compile) prefixes;
    - ``n_averaged``, the count ``torch.optim.swa_utils.AveragedModel`` keeps beside the model;
    - the attribute a training module holds the model in (a LightningModule's ``self.model``
      saves ``model.stem.conv.weight``), when every key starts with that one name and the rest
      is our layout or a peer's.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        stripped = key
        while stripped.startswith(WRAPPER_PREFIXES):
            stripped = stripped.split(".", 1)[1]
        if stripped in WRAPPER_KEYS:
            continue
        if stripped in out:
            raise LayoutError(f"two keys become {stripped!r} once wrapper prefixes are removed (one is {key!r})")
        out[stripped] = value
    return _without_holder(out)


def _without_holder(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` without the one first key component all its keys share, when what remains is a known layout."""
    holders = {key.partition(".")[0] for key in state}
    if len(holders) != 1 or is_own_layout(state) or not all("." in key for key in state):
        return state
    inner = {key.partition(".")[2]: value for key, value in state.items()}
    try:  # every model of ours has stages; a peer layout is recognised by its own keys
        own = is_own_layout(inner) and any(key.startswith("stages.") for key in inner)
        known = own or _guess_layout(inner) is not None
    except LayoutError:  # nearly a peer layout: its own error, naming the model's keys, says more
        known = True
    return inner if known else state


def is_own_layout(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``state`` (wrapper prefixes removed) is in convnets' own naming: stem, stages, head, aux."""
    return bool(state) and all(key.split(".", 1)[0] in OWN_TOP_LEVEL for key in state)


def _known() -> str:
    return ", ".join(LAYOUTS)


def _unmapped(layout: PeerLayout, keys: list[str]) -> list[str]:
    """The keys that no rule of ``layout`` renames."""
    return [k for k in keys if "." not in k or layout.rename(k.rpartition(".")[0]) is None]


def detect_layout(state: Mapping[str, torch.Tensor]) -> str:
    """The peer layout (``"torchvision:resnet50"``) of a state dict, from its keys and shapes.

    A layout is claimed only when its rules cover every key: a timm EfficientNet shares its
    stem's key names with timm's MobileNet v1 and is not taken for it.

    Raises:
        LayoutError: no known layout fits; the message lists the known ones.
    """
    state = strip_wrapper_prefixes(tensors_of(state, "state dict"))
    keys = sorted(state)
    if is_own_layout(state):
        raise LayoutError("the keys are convnets' own (stem, stages, head): not a peer layout; load it as it is")
    name = _guess_layout(state)
    own = [k for k in keys if k.split(".", 1)[0] in OWN_TOP_LEVEL]
    if name is None and len(own) > len(keys) // 2:
        others = [k for k in keys if k not in own]
        raise LayoutError(f"{len(own)} of its {len(keys)} keys are convnets' own (stem, stages, head); the other "
                          f"{len(others)} belong to no model ({', '.join(others[:5])}): remove them")
    unmapped = _unmapped(LAYOUTS[name], keys) if name else keys
    if unmapped:
        sample = ", ".join(unmapped[:5])
        nearest = f" are not in {name}, the nearest known layout" if name else " fit no known layout"
        raise LayoutError(f"unrecognised checkpoint layout: {len(unmapped)} of its {len(keys)} keys (such as "
                          f"{sample}){nearest}. Known layouts: {_known()}")
    return name


def _guess_layout(state: Mapping[str, torch.Tensor]) -> str | None:
    """The layout the keys and shapes point at (None: none), before checking that it covers every key."""
    keys = set(state)

    def shape(key: str) -> tuple[int, ...]:
        return tuple(state[key].shape)

    def count(pattern: str) -> dict[int, int]:
        """For keys matching ``pattern`` (groups: outer, inner index): the number of inner indices per outer."""
        found: dict[int, set[int]] = {}
        for key in keys:
            m = re.fullmatch(pattern, key)
            if m:
                found.setdefault(int(m[1]), set()).add(int(m[2]))
        return {k: len(v) for k, v in sorted(found.items())}

    if "conv_stem.weight" in keys and "blocks.0.0.conv_dw.weight" in keys:
        # timm's EfficientNet builder makes MobileNet v1, v2, v3 and EfficientNets with these names;
        # only MobileNet v1 has no final 1x1 conv (conv_head), and of the others only EfficientNet and
        # MobileNet v3 squeeze-excite (se.*).
        stem = shape("conv_stem.weight")[0]
        if "conv_head.weight" not in keys:
            v1 = LAYOUTS["timm:mobilenetv1_100"]
            if not _unmapped(v1, list(keys)) and stem != 32:
                raise LayoutError(f"a timm MobileNet v1 with stem width {stem}: only timm:mobilenetv1_100 "
                                  "(width 32) is supported")
            return v1.name
        blocks = tuple(count(r"blocks\.(\d+)\.(\d+)\.conv_dw\.weight").values())
        head = shape("conv_head.weight")[0]
        if any(".se." in key for key in keys):
            signature = (stem, blocks, head)
            if signature in EFFICIENTNET_SIGNATURES:
                return f"timm:efficientnet_{EFFICIENTNET_SIGNATURES[signature]}"
            raise LayoutError(f"a timm EfficientNet-like state dict with (stem, blocks per stage, head) = {signature}, "
                              "none of timm's efficientnet_b0-b7 (MobileNet v3, EfficientNet v2, B8 and other "
                              "variants are not supported)")
        widths = tuple(shape(f"blocks.{s}.0.conv_pwl.weight" if f"blocks.{s}.0.conv_pwl.weight" in keys
                             else f"blocks.{s}.0.conv_pw.weight")[0] for s in range(len(blocks)))
        for name, width in TIMM_MOBILENET_V2_WIDTHS.items():
            if (stem, blocks, widths, head) == _mobilenet_v2_signature(width):
                return f"timm:mobilenetv2_{name}"
        raise LayoutError(f"a timm MobileNet v2-like state dict with stem {stem}, blocks per stage {blocks}, stage "
                          f"widths {widths} and head {head}, none of timm's mobilenetv2_"
                          + "/".join(TIMM_MOBILENET_V2_WIDTHS) + " (other widths and depths are not supported)")
    if "layer1.0.conv1.weight" in keys:
        kind = "bottleneck" if "layer1.0.conv3.weight" in keys else "basic"
        blocks = tuple(count(r"layer(\d)\.(\d+)\.conv1\.weight").values())
        depth = RESNET_DEPTHS.get((kind, blocks))
        # Wide ResNets and ResNeXts share the key names; their first bottleneck is 128 wide, not 64.
        if depth is None or shape("layer1.0.conv1.weight")[0] != 64:
            raise LayoutError(f"a torchvision ResNet-like state dict ({kind} blocks {blocks}, first block "
                              f"{shape('layer1.0.conv1.weight')[0]} wide) that is none of: "
                              + ", ".join(k for k in LAYOUTS if k.startswith("torchvision:resnet")))
        return f"torchvision:resnet{depth}"
    if "inception3a.branch1.conv.weight" in keys:
        return "torchvision:googlenet"
    if "features.1.0.block.0.0.weight" in keys:
        blocks = tuple(count(r"features\.(\d+)\.(\d+)\.block\.0\.0\.weight").values())
        last = f"features.{len(blocks) + 1}.0.weight"
        signature = (shape("features.0.0.weight")[0], blocks, shape(last)[0] if last in keys else 0)
        if signature in EFFICIENTNET_SIGNATURES:
            return f"torchvision:efficientnet_{EFFICIENTNET_SIGNATURES[signature]}"
        raise LayoutError(f"a torchvision EfficientNet with (stem, blocks per stage, head) = {signature}, none of "
                          "B0-B7 (EfficientNet v2 and other widths are not supported)")
    if "features.1.conv.0.0.weight" in keys:
        if shape("features.0.0.weight")[0] == 32 and f"features.{_MBV2_LAST}.0.weight" in keys:
            return "torchvision:mobilenet_v2"
        raise LayoutError("a torchvision MobileNet v2 with a width multiplier other than 1.0: not supported")
    if "features.0.weight" in keys and "pre_logits.fc1.weight" in keys:
        convs = sum(1 for k in keys if re.fullmatch(r"features\.\d+\.weight", k) and len(shape(k)) == 4)
        if convs in VGG_DEPTHS:
            bn = "_bn" if "features.1.running_mean" in keys else ""
            return f"timm:vgg{VGG_DEPTHS[convs]}{bn}"
        raise LayoutError(f"a timm VGG-like state dict with {convs} convs, none of VGG-11/13/16/19")
    if "features.0.weight" in keys and "classifier.6.weight" in keys:
        if shape("features.0.weight")[-1] == 11:  # AlexNet's 11x11 first conv; VGG's are all 3x3
            return "torchvision:alexnet"
        convs = sum(1 for k in keys if re.fullmatch(r"features\.\d+\.weight", k) and len(shape(k)) == 4)
        if convs in VGG_DEPTHS:
            bn = "_bn" if "features.1.running_mean" in keys else ""
            return f"torchvision:vgg{VGG_DEPTHS[convs]}{bn}"
        raise LayoutError(f"a torchvision VGG-like state dict with {convs} convs, none of VGG-11/13/16/19")
    return None


def convert(state: Mapping[str, torch.Tensor], layout: str | None = None) -> tuple[PeerLayout, dict[str, torch.Tensor]]:
    """:func:`convert_state_dict`, returning the :class:`PeerLayout` itself."""
    state = strip_wrapper_prefixes(tensors_of(state, "state dict"))
    name = layout or detect_layout(state)
    if name not in LAYOUTS:
        raise LayoutError(f"unknown layout {name!r}. Known layouts: {_known()}")
    spec = LAYOUTS[name]
    out: dict[str, torch.Tensor] = {}
    unmapped = []
    for key, tensor in state.items():
        path, _, leaf = key.rpartition(".")
        ours = spec.rename(path) if path else None
        if ours is None:
            unmapped.append(key)
            continue
        new = f"{ours}.{leaf}"
        if ours in spec.flatten and leaf == "weight":
            tensor = tensor.flatten(1)
        if new in out:
            raise LayoutError(f"{name}: two keys map to {new!r} (one is {key!r})")
        out[new] = tensor
    if unmapped:
        shown = ", ".join(unmapped[:10]) + (f" ... and {len(unmapped) - 10} more" if len(unmapped) > 10 else "")
        raise LayoutError(f"{name}: {len(unmapped)} key(s) that no rename rule covers: {shown}")
    return spec, out


def convert_state_dict(
    state: Mapping[str, torch.Tensor], layout: str | None = None
) -> tuple[str, dict[str, torch.Tensor]]:
    """Rename a peer state dict into our naming.

    Wrapper prefixes (``module.``, ``_orig_mod.``) are removed first. The tensors themselves are
    passed through unchanged (no copy).

    Args:
        state: the peer's state dict.
        layout: a key of :data:`LAYOUTS`; detected with :func:`detect_layout` when None.

    Returns:
        Our model's registered name and the renamed state dict.

    Raises:
        LayoutError: unknown layout, or keys that no rule covers (named in the message).
    """
    spec, out = convert(state, layout)
    return spec.model, out
