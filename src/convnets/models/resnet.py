"""ResNet and the plain nets it is measured against (He, Zhang, Ren & Sun 2015, "Deep residual
learning for image recognition").

ImageNet nets (Table 1): a 7x7/2 conv and 3x3/2 max-pool stem, four stages of basic (3x3, 3x3)
or bottleneck (1x1, 3x3, 1x1) blocks at 64/128/256/512 widths, global average pool, FC.
CIFAR nets (Section 4.2): a 3x3 conv, three stages of n basic blocks at 16/32/64 filters, global
average pool, FC: 6n + 2 layers.

The shortcut ``W_s`` of Eq. (2) is selectable (Section 3.3 / Table 3):
  "A": identity, zero-padded where channels grow (no parameters; the CIFAR default);
  "B": identity, a 1x1 projection + BN where the shape changes (the ImageNet default);
  "C": a projection on every block;
  None: no shortcut at all: the plain net, identical otherwise.

Where a bottleneck block downsamples, the paper's code puts the stride on its first 1x1 conv
(3.86 GMACs for ResNet-50); torchvision puts it on the 3x3 ("ResNet v1.5", 4.09 GMACs, slightly
more accurate). ``downsample_on="1x1"`` (default) or ``"3x3"``; the ``*_torchvision`` names use
the latter. Basic blocks have a single stride position, so ResNet-18/34 are the same in both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from convnets.errors import ConfigError
from convnets.layers import ClassifierHead, ConvBNAct, ZeroPadShortcut, relu
from convnets.models.base import ConvNet, StageInfo
from convnets.registry import Published, register_model

Shortcut = Literal["A", "B", "C"] | None


def make_shortcut(option: Shortcut, in_channels: int, out_channels: int, stride: int) -> nn.Module | None:
    """The shortcut ``W_s`` of He et al. 2015 Eq. (2) for one block; None for a plain block."""
    if option is None:
        return None
    if option not in ("A", "B", "C"):
        raise ConfigError(f"shortcut must be 'A', 'B', 'C' or None (plain), got {option!r}")
    same_shape = stride == 1 and in_channels == out_channels
    if option == "C" or (option == "B" and not same_shape):
        return ConvBNAct(in_channels, out_channels, 1, stride, act=None)
    return nn.Identity() if same_shape else ZeroPadShortcut(in_channels, out_channels, stride)


class _Residual(nn.Module):
    """relu(F(x) + W_s x), or relu(F(x)) when the block is plain (``shortcut`` is None)."""

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.residual(x)
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return self.act(out)


class BasicBlock(_Residual):
    """Two 3x3 convolutions (ResNet-18/34 and the CIFAR nets)."""

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int, shortcut: Shortcut, **_: object) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(in_channels, width, 3, stride)
        self.conv2 = ConvBNAct(width, width, 3, act=None)
        self.shortcut = make_shortcut(shortcut, in_channels, width, stride)
        self.act = relu()

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class Bottleneck(_Residual):
    """1x1 reduce -> 3x3 -> 1x1 expand (x4): ResNet-50/101/152."""

    expansion = 4

    def __init__(
        self, in_channels: int, width: int, stride: int, shortcut: Shortcut, downsample_on: str = "1x1"
    ) -> None:
        super().__init__()
        out_channels = width * self.expansion
        stride_1x1, stride_3x3 = (stride, 1) if downsample_on == "1x1" else (1, stride)
        self.conv1 = ConvBNAct(in_channels, width, 1, stride_1x1)
        self.conv2 = ConvBNAct(width, width, 3, stride_3x3)
        self.conv3 = ConvBNAct(width, out_channels, 1, act=None)
        self.shortcut = make_shortcut(shortcut, in_channels, out_channels, stride)
        self.act = relu()

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.conv2(self.conv1(x)))


@dataclass(frozen=True)
class ResNetSpec:
    """One column of He et al. 2015 Table 1 (or the CIFAR design of Section 4.2)."""

    block: type[BasicBlock] | type[Bottleneck]
    layers: tuple[int, ...]
    widths: tuple[int, ...]
    cifar: bool = False


# He et al. 2015, Table 1.
IMAGENET = {
    18: ResNetSpec(BasicBlock, (2, 2, 2, 2), (64, 128, 256, 512)),
    34: ResNetSpec(BasicBlock, (3, 4, 6, 3), (64, 128, 256, 512)),
    50: ResNetSpec(Bottleneck, (3, 4, 6, 3), (64, 128, 256, 512)),
    101: ResNetSpec(Bottleneck, (3, 4, 23, 3), (64, 128, 256, 512)),
    152: ResNetSpec(Bottleneck, (3, 8, 36, 3), (64, 128, 256, 512)),
}


def cifar_spec(depth: int) -> ResNetSpec:
    """He et al. 2015 Section 4.2: depth 6n + 2, n basic blocks per stage at 16/32/64 filters."""
    if depth < 8 or (depth - 2) % 6:
        raise ConfigError(f"a CIFAR ResNet has 6n + 2 layers (20, 32, 44, 56, 110, ...), got {depth}")
    n = (depth - 2) // 6
    return ResNetSpec(BasicBlock, (n, n, n), (16, 32, 64), cifar=True)


class ResNet(ConvNet):
    """Stem, one stage per entry of ``spec.layers``, global average pool, FC.

    Args:
        spec: blocks per stage and widths.
        num_classes: outputs.
        in_chans: input channels.
        shortcut: "A", "B", "C" or None for the plain net.
        downsample_on: "1x1" (paper) or "3x3" (torchvision v1.5) for bottleneck blocks.
        small_input: ImageNet nets only: a stride-1 stem without max-pool, for 32-64 px images
            (parameters unchanged, 16x the stem MACs).
    """

    def __init__(
        self,
        spec: ResNetSpec,
        num_classes: int = 1000,
        in_chans: int = 3,
        *,
        shortcut: Shortcut = "B",
        downsample_on: Literal["1x1", "3x3"] = "1x1",
        small_input: bool = False,
    ) -> None:
        super().__init__()
        if downsample_on not in ("1x1", "3x3"):
            raise ConfigError(f"downsample_on must be '1x1' or '3x3', got {downsample_on!r}")
        self.small_input = small_input
        if spec.cifar:
            self.stem = ConvBNAct(in_chans, spec.widths[0], 3)
            reduction, width, input_size = 1, spec.widths[0], (3, 32, 32)
        else:
            self.stem = ConvBNAct(in_chans, 64, 7, 1 if small_input else 2)
            if not small_input:
                self.stem.add_module("pool", nn.MaxPool2d(3, 2, padding=1))
            reduction, width, input_size = (1 if small_input else 4), 64, (3, 224, 224)
        stages, info = [], []
        for i, (blocks, stage_width) in enumerate(zip(spec.layers, spec.widths, strict=True)):
            # Table 1: conv3_1, conv4_1 and conv5_1 downsample with stride 2.
            stride = 1 if i == 0 else 2
            stage = []
            for j in range(blocks):
                stage.append(spec.block(width, stage_width, stride if j == 0 else 1, shortcut,
                                        downsample_on=downsample_on))
                width = stage_width * spec.block.expansion
            reduction *= stride
            stages.append(nn.Sequential(*stage))
            info.append(StageInfo(f"stages.{i}", width, reduction))
        self.stages = nn.Sequential(*stages)
        self.head = ClassifierHead(width, num_classes)
        self.shortcut, self.downsample_on = shortcut, downsample_on
        self._init_weights()
        self._finish(in_chans=in_chans, stage_info=info, input_size=input_size, min_input_size=reduction)

    def _init_weights(self) -> None:
        # He et al. 2015 Section 3.4 initialise as in their PReLU paper (He init, fan_out).
        for module in self.modules():
            if isinstance(module, nn.Conv2d) and not module.weight.is_meta:  # meta: built for counting
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")


def _imagenet(depth: int, shortcut: Shortcut, downsample_on: str, **kwargs: object) -> ResNet:
    return ResNet(IMAGENET[depth], shortcut=shortcut, downsample_on=downsample_on, **kwargs)


def _cifar(depth: int, shortcut: Shortcut, num_classes: int, in_chans: int) -> ResNet:
    return ResNet(cifar_spec(depth), num_classes, in_chans, shortcut=shortcut)


_IMAGENET_KW = dict(family="resnet", input_size=(3, 224, 224))
_RECOUNT = "He et al. 2015, Table 1 (3.8/7.6/11.3 G), recounted"
_TV = "torchvision 0.28"


@register_model(**_IMAGENET_KW, published=Published(11_689_512, 1_814_073_344, _TV))
def resnet18(num_classes: int = 1000, in_chans: int = 3, *, shortcut: Shortcut = "B", small_input: bool = False):
    """ResNet-18 (He et al. 2015, Table 1): basic blocks [2, 2, 2, 2], option-B shortcuts."""
    return _imagenet(18, shortcut, "1x1", num_classes=num_classes, in_chans=in_chans, small_input=small_input)


@register_model(**_IMAGENET_KW, published=Published(21_797_672, 3_663_761_408, _TV))
def resnet34(num_classes: int = 1000, in_chans: int = 3, *, shortcut: Shortcut = "B", small_input: bool = False):
    """ResNet-34 (He et al. 2015, Table 1): basic blocks [3, 4, 6, 3], option-B shortcuts."""
    return _imagenet(34, shortcut, "1x1", num_classes=num_classes, in_chans=in_chans, small_input=small_input)


@register_model(**_IMAGENET_KW, published=Published(25_557_032, 3_858_000_000, _RECOUNT, approx=("macs",)))
def resnet50(num_classes: int = 1000, in_chans: int = 3, *, shortcut: Shortcut = "B",
             downsample_on: Literal["1x1", "3x3"] = "1x1", small_input: bool = False):
    """ResNet-50 (He et al. 2015, Table 1): bottlenecks [3, 4, 6, 3]; stride on the 1x1 as in the paper."""
    return _imagenet(50, shortcut, downsample_on, num_classes=num_classes, in_chans=in_chans, small_input=small_input)


@register_model(**_IMAGENET_KW, published=Published(44_549_160, 7_570_000_000, _RECOUNT, approx=("macs",)))
def resnet101(num_classes: int = 1000, in_chans: int = 3, *, shortcut: Shortcut = "B",
              downsample_on: Literal["1x1", "3x3"] = "1x1", small_input: bool = False):
    """ResNet-101 (He et al. 2015, Table 1): bottlenecks [3, 4, 23, 3]; stride on the 1x1 as in the paper."""
    return _imagenet(101, shortcut, downsample_on, num_classes=num_classes, in_chans=in_chans, small_input=small_input)


@register_model(**_IMAGENET_KW, published=Published(60_192_808, 11_282_000_000, _RECOUNT, approx=("macs",)))
def resnet152(num_classes: int = 1000, in_chans: int = 3, *, shortcut: Shortcut = "B",
              downsample_on: Literal["1x1", "3x3"] = "1x1", small_input: bool = False):
    """ResNet-152 (He et al. 2015, Table 1): bottlenecks [3, 8, 36, 3]; stride on the 1x1 as in the paper."""
    return _imagenet(152, shortcut, downsample_on, num_classes=num_classes, in_chans=in_chans, small_input=small_input)


@register_model(**_IMAGENET_KW, published=Published(25_557_032, 4_089_184_256, _TV))
def resnet50_torchvision(num_classes: int = 1000, in_chans: int = 3, *, small_input: bool = False):
    """ResNet-50 with the stride on the 3x3 conv (torchvision's "v1.5"): 4.09 GMACs instead of 3.86."""
    return _imagenet(50, "B", "3x3", num_classes=num_classes, in_chans=in_chans, small_input=small_input)


@register_model(**_IMAGENET_KW, published=Published(44_549_160, 7_801_405_440, _TV))
def resnet101_torchvision(num_classes: int = 1000, in_chans: int = 3, *, small_input: bool = False):
    """ResNet-101 with the stride on the 3x3 conv (torchvision's "v1.5")."""
    return _imagenet(101, "B", "3x3", num_classes=num_classes, in_chans=in_chans, small_input=small_input)


@register_model(**_IMAGENET_KW, published=Published(60_192_808, 11_513_626_624, _TV))
def resnet152_torchvision(num_classes: int = 1000, in_chans: int = 3, *, small_input: bool = False):
    """ResNet-152 with the stride on the 3x3 conv (torchvision's "v1.5")."""
    return _imagenet(152, "B", "3x3", num_classes=num_classes, in_chans=in_chans, small_input=small_input)


_PLAIN_KW = dict(family="plain", input_size=(3, 224, 224))


@register_model(**_PLAIN_KW)
def plain18(num_classes: int = 1000, in_chans: int = 3, *, small_input: bool = False):
    """18-layer plain net (He et al. 2015, Table 1 / Fig. 3 middle): ResNet-18 without shortcuts."""
    return _imagenet(18, None, "1x1", num_classes=num_classes, in_chans=in_chans, small_input=small_input)


@register_model(**_PLAIN_KW)
def plain34(num_classes: int = 1000, in_chans: int = 3, *, small_input: bool = False):
    """34-layer plain net (He et al. 2015, Table 1 / Fig. 3 middle): ResNet-34 without shortcuts."""
    return _imagenet(34, None, "1x1", num_classes=num_classes, in_chans=in_chans, small_input=small_input)


@register_model(**_PLAIN_KW)
def plain50(num_classes: int = 1000, in_chans: int = 3, *, small_input: bool = False):
    """50-layer plain net: ResNet-50's bottleneck stack without shortcuts."""
    return _imagenet(50, None, "1x1", num_classes=num_classes, in_chans=in_chans, small_input=small_input)


@register_model(**_PLAIN_KW)
def plain101(num_classes: int = 1000, in_chans: int = 3, *, small_input: bool = False):
    """101-layer plain net: ResNet-101's bottleneck stack without shortcuts."""
    return _imagenet(101, None, "1x1", num_classes=num_classes, in_chans=in_chans, small_input=small_input)


@register_model(**_PLAIN_KW)
def plain152(num_classes: int = 1000, in_chans: int = 3, *, small_input: bool = False):
    """152-layer plain net: ResNet-152's bottleneck stack without shortcuts."""
    return _imagenet(152, None, "1x1", num_classes=num_classes, in_chans=in_chans, small_input=small_input)


# He et al. 2015, Table 6 (CIFAR-10, option A), params and MACs at 32x32 recounted.
_CIFAR_KW = dict(input_size=(3, 32, 32))
_TABLE6 = "He et al. 2015, Table 6, recounted"


@register_model(family="resnet_cifar", **_CIFAR_KW, published=Published(269_722, 40_600_000, _TABLE6, ("macs",)))
def resnet20(num_classes: int = 10, in_chans: int = 3, *, shortcut: Shortcut = "A"):
    """ResNet-20 for 32x32 images (He et al. 2015, Section 4.2, n=3): 8.75% CIFAR-10 error in the paper."""
    return _cifar(20, shortcut, num_classes, in_chans)


@register_model(family="resnet_cifar", **_CIFAR_KW, published=Published(464_154, 68_900_000, _TABLE6, ("macs",)))
def resnet32(num_classes: int = 10, in_chans: int = 3, *, shortcut: Shortcut = "A"):
    """ResNet-32 for 32x32 images (He et al. 2015, Section 4.2, n=5): 7.51% CIFAR-10 error in the paper."""
    return _cifar(32, shortcut, num_classes, in_chans)


@register_model(family="resnet_cifar", **_CIFAR_KW, published=Published(658_586, 97_200_000, _TABLE6, ("macs",)))
def resnet44(num_classes: int = 10, in_chans: int = 3, *, shortcut: Shortcut = "A"):
    """ResNet-44 for 32x32 images (He et al. 2015, Section 4.2, n=7): 7.17% CIFAR-10 error in the paper."""
    return _cifar(44, shortcut, num_classes, in_chans)


@register_model(family="resnet_cifar", **_CIFAR_KW, published=Published(853_018, 125_500_000, _TABLE6, ("macs",)))
def resnet56(num_classes: int = 10, in_chans: int = 3, *, shortcut: Shortcut = "A"):
    """ResNet-56 for 32x32 images (He et al. 2015, Section 4.2, n=9): 6.97% CIFAR-10 error in the paper."""
    return _cifar(56, shortcut, num_classes, in_chans)


@register_model(family="resnet_cifar", **_CIFAR_KW, published=Published(1_727_962, 252_900_000, _TABLE6, ("macs",)))
def resnet110(num_classes: int = 10, in_chans: int = 3, *, shortcut: Shortcut = "A"):
    """ResNet-110 for 32x32 images (He et al. 2015, Section 4.2, n=18): 6.43% CIFAR-10 error in the paper."""
    return _cifar(110, shortcut, num_classes, in_chans)


# Plain CIFAR nets: the same layers without shortcuts, so the same parameter counts as option A.
@register_model(family="plain_cifar", **_CIFAR_KW, published=Published(269_722, 40_600_000, _TABLE6, ("macs",)))
def plain20(num_classes: int = 10, in_chans: int = 3):
    """20-layer plain net for 32x32 images (He et al. 2015, Section 4.2, Fig. 6 left)."""
    return _cifar(20, None, num_classes, in_chans)


@register_model(family="plain_cifar", **_CIFAR_KW, published=Published(464_154, 68_900_000, _TABLE6, ("macs",)))
def plain32(num_classes: int = 10, in_chans: int = 3):
    """32-layer plain net for 32x32 images (He et al. 2015, Section 4.2, Fig. 6 left)."""
    return _cifar(32, None, num_classes, in_chans)


@register_model(family="plain_cifar", **_CIFAR_KW, published=Published(658_586, 97_200_000, _TABLE6, ("macs",)))
def plain44(num_classes: int = 10, in_chans: int = 3):
    """44-layer plain net for 32x32 images (He et al. 2015, Section 4.2, Fig. 6 left)."""
    return _cifar(44, None, num_classes, in_chans)


@register_model(family="plain_cifar", **_CIFAR_KW, published=Published(853_018, 125_500_000, _TABLE6, ("macs",)))
def plain56(num_classes: int = 10, in_chans: int = 3):
    """56-layer plain net for 32x32 images (He et al. 2015, Section 4.2, Fig. 6 left)."""
    return _cifar(56, None, num_classes, in_chans)


@register_model(family="plain_cifar", **_CIFAR_KW, published=Published(1_727_962, 252_900_000, _TABLE6, ("macs",)))
def plain110(num_classes: int = 10, in_chans: int = 3):
    """110-layer plain net for 32x32 images (He et al. 2015, Section 4.2)."""
    return _cifar(110, None, num_classes, in_chans)
