"""MobileNet v1 (Howard et al. 2017) and v2 (Sandler et al. 2018).

v1 replaces each 3x3 convolution by a depthwise 3x3 (one filter per channel) and a pointwise
1x1 (mixing channels): 1/N + 1/9 of the multiplications. v2 turns the block inside out: expand
the channels x6 with a 1x1, filter depthwise, project back with a *linear* 1x1, and add a
residual between the narrow ends.

Both take a width multiplier (alpha / ``width``) that thins every layer, and run at any input
resolution (the paper's rho: 224, 192, 160, 128) via global average pooling.

``tf_same=True`` pads the strided convolutions as TensorFlow does, and v1's ``relu6=True`` clips
its activations at 6 as the TensorFlow release did: both are what Keras Applications' weights
need (:mod:`convnets.weights.keras`).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from torch import nn

from convnets.errors import ConfigError
from convnets.layers import ActFactory, ClassifierHead, ConvBNAct, InvertedResidual, make_divisible, relu
from convnets.models.base import ConvNet, StageInfo
from convnets.registry import Published, register_model

# Howard et al. 2017, Table 1: (output channels, stride) of the 13 depthwise-separable blocks,
# grouped by resolution. The table's last block reads "Conv dw / s2" on a 7x7 map; that is a
# typo: the released model (and every reimplementation) uses stride 1 there.
V1_STAGES: tuple[tuple[tuple[int, int], ...], ...] = (
    ((64, 1),),
    ((128, 2), (128, 1)),
    ((256, 2), (256, 1)),
    ((512, 2), (512, 1), (512, 1), (512, 1), (512, 1), (512, 1)),
    ((1024, 2), (1024, 1)),
)


@dataclass(frozen=True)
class BottleneckRow:
    """One row of Sandler et al. 2018, Table 2: expansion t, channels c, repeats n, stride s."""

    t: int
    c: int
    n: int
    s: int


# Sandler et al. 2018, Table 2 (17 bottleneck blocks).
V2_ROWS = (
    BottleneckRow(1, 16, 1, 1),
    BottleneckRow(6, 24, 2, 2),
    BottleneckRow(6, 32, 3, 2),
    BottleneckRow(6, 64, 4, 2),
    BottleneckRow(6, 96, 3, 1),
    BottleneckRow(6, 160, 3, 2),
    BottleneckRow(6, 320, 1, 1),
)


def _check_width(width: float) -> None:
    if not width > 0:
        raise ConfigError(f"the width multiplier must be > 0 (the papers use 0.25 to 1.4), got {width}")


def _input_size(image_size: int | None, in_chans: int) -> tuple[int, int, int]:
    if image_size is not None and image_size < 32:
        raise ConfigError(f"image_size must be at least 32, got {image_size}")
    return (in_chans, image_size or 224, image_size or 224)


class DepthwiseSeparable(nn.Sequential):
    """Depthwise 3x3 conv + BN + ReLU, then pointwise 1x1 conv + BN + ReLU (Howard et al. Figure 3)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, *, act: ActFactory = relu,
                 tf_same: bool = False) -> None:
        super().__init__(
            OrderedDict(
                dw=ConvBNAct(in_channels, in_channels, 3, stride, groups=in_channels, act=act, tf_same=tf_same),
                pw=ConvBNAct(in_channels, out_channels, 1, act=act),
            )
        )


class MobileNetV1(ConvNet):
    """3x3/2 conv, 13 depthwise-separable blocks, global average pool, FC.

    Args:
        num_classes: outputs.
        in_chans: input channels.
        width: the width multiplier alpha (channels rounded to multiples of 8).
        image_size: default input resolution rho (224, 192, 160, 128 in the paper).
        dropout: before the FC (the paper uses none).
        small_input: for 32-64 px images: a stride-1 first conv (parameters unchanged).
        relu6: ReLU6 activations (the TensorFlow release) instead of the paper's ReLU.
        tf_same: TensorFlow's padding of the strided convolutions.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        *,
        width: float = 1.0,
        image_size: int | None = None,
        dropout: float = 0.0,
        small_input: bool = False,
        relu6: bool = False,
        tf_same: bool = False,
    ) -> None:
        super().__init__()
        _check_width(width)
        self.small_input, self.relu6, self.tf_same = small_input, relu6, tf_same
        act = nn.ReLU6 if relu6 else relu
        channels = make_divisible(32 * width)
        self.stem = ConvBNAct(in_chans, channels, 3, 1 if small_input else 2, act=act, tf_same=tf_same)
        reduction = 1 if small_input else 2
        stages, info = [], []
        for i, rows in enumerate(V1_STAGES):
            blocks = []
            for out, stride in rows:
                out = make_divisible(out * width)
                blocks.append(DepthwiseSeparable(channels, out, stride, act=act, tf_same=tf_same))
                channels, reduction = out, reduction * stride
            stages.append(nn.Sequential(*blocks))
            info.append(StageInfo(f"stages.{i}", channels, reduction))
        self.stages = nn.Sequential(*stages)
        self.head = ClassifierHead(channels, num_classes, dropout=dropout)
        self.width = width
        self._finish(in_chans=in_chans, stage_info=info, input_size=_input_size(image_size, in_chans),
                     min_input_size=reduction)


class MobileNetV2(ConvNet):
    """3x3/2 conv 32, the 17 bottlenecks of Table 2, 1x1 conv 1280, global average pool, FC.

    Args:
        num_classes: outputs.
        in_chans: input channels.
        width: width multiplier (channels rounded to multiples of 8; the last conv is never
            thinned below 1280).
        image_size: default input resolution.
        dropout: before the FC (0.2, as torchvision's training recipe).
        small_input: for 32-64 px images: a stride-1 first conv (parameters unchanged).
        tf_same: TensorFlow's padding of the strided convolutions.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        *,
        width: float = 1.0,
        image_size: int | None = None,
        dropout: float = 0.2,
        small_input: bool = False,
        tf_same: bool = False,
    ) -> None:
        super().__init__()
        _check_width(width)
        self.small_input, self.tf_same = small_input, tf_same
        channels = make_divisible(32 * width)
        self.stem = ConvBNAct(in_chans, channels, 3, 1 if small_input else 2, act=nn.ReLU6, tf_same=tf_same)
        reduction = 1 if small_input else 2
        stages, info = [], []
        for i, row in enumerate(V2_ROWS):
            out = make_divisible(row.c * width)
            blocks = []
            for j in range(row.n):
                blocks.append(InvertedResidual(channels, out, 3, row.s if j == 0 else 1, row.t, tf_same=tf_same))
                channels = out
            reduction *= row.s
            stages.append(nn.Sequential(*blocks))
            info.append(StageInfo(f"stages.{i}", channels, reduction))
        last = make_divisible(1280 * max(1.0, width))
        stages.append(ConvBNAct(channels, last, 1, act=nn.ReLU6))
        info.append(StageInfo(f"stages.{len(V2_ROWS)}", last, reduction))
        self.stages = nn.Sequential(*stages)
        self.head = ClassifierHead(last, num_classes, dropout=dropout)
        self.width = width
        self._finish(in_chans=in_chans, stage_info=info, input_size=_input_size(image_size, in_chans),
                     min_input_size=reduction)


_V1_KW = dict(family="mobilenet_v1", input_size=(3, 224, 224))
_V1_TABLE = "Howard et al. 2017, Table 6"


@register_model(**_V1_KW, published=Published(4_231_976, 568_740_352, "Howard et al. 2017 (4.2M, 569M); timm count"))
def mobilenet_v1(num_classes: int = 1000, in_chans: int = 3, *, width: float = 1.0, image_size: int | None = None,
                 dropout: float = 0.0, small_input: bool = False, relu6: bool = False,
                 tf_same: bool = False) -> MobileNetV1:
    """1.0 MobileNet-224 (Howard et al. 2017, Table 1): 70.6% ImageNet top-1 in the paper."""
    return MobileNetV1(num_classes, in_chans, width=width, image_size=image_size, dropout=dropout,
                       small_input=small_input, relu6=relu6, tf_same=tf_same)


@register_model(**_V1_KW, published=Published(2_600_000, 325_000_000, _V1_TABLE, ("params", "macs")))
def mobilenet_v1_075(num_classes: int = 1000, in_chans: int = 3, *, image_size: int | None = None,
                     small_input: bool = False, relu6: bool = False, tf_same: bool = False) -> MobileNetV1:
    """0.75 MobileNet-224 (Howard et al. 2017, Table 6): width multiplier 0.75."""
    return MobileNetV1(num_classes, in_chans, width=0.75, image_size=image_size, small_input=small_input,
                       relu6=relu6, tf_same=tf_same)


@register_model(**_V1_KW, published=Published(1_300_000, 149_000_000, _V1_TABLE, ("params", "macs")))
def mobilenet_v1_050(num_classes: int = 1000, in_chans: int = 3, *, image_size: int | None = None,
                     small_input: bool = False, relu6: bool = False, tf_same: bool = False) -> MobileNetV1:
    """0.5 MobileNet-224 (Howard et al. 2017, Table 6): width multiplier 0.5."""
    return MobileNetV1(num_classes, in_chans, width=0.5, image_size=image_size, small_input=small_input,
                       relu6=relu6, tf_same=tf_same)


@register_model(**_V1_KW, published=Published(500_000, 41_000_000, _V1_TABLE, ("params", "macs")))
def mobilenet_v1_025(num_classes: int = 1000, in_chans: int = 3, *, image_size: int | None = None,
                     small_input: bool = False, relu6: bool = False, tf_same: bool = False) -> MobileNetV1:
    """0.25 MobileNet-224 (Howard et al. 2017, Table 6): width multiplier 0.25."""
    return MobileNetV1(num_classes, in_chans, width=0.25, image_size=image_size, small_input=small_input,
                       relu6=relu6, tf_same=tf_same)


@register_model(family="mobilenet_v2", input_size=(3, 224, 224),
                published=Published(3_504_872, 300_774_272, "Sandler et al. 2018 (3.4M, 300M); torchvision count"))
def mobilenet_v2(num_classes: int = 1000, in_chans: int = 3, *, width: float = 1.0, image_size: int | None = None,
                 dropout: float = 0.2, small_input: bool = False, tf_same: bool = False) -> MobileNetV2:
    """MobileNet v2 1.0-224 (Sandler et al. 2018, Table 2): 72.0% ImageNet top-1 in the paper."""
    return MobileNetV2(num_classes, in_chans, width=width, image_size=image_size, dropout=dropout,
                       small_input=small_input, tf_same=tf_same)
