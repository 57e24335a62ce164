"""EfficientNet (Tan & Le 2019, "EfficientNet: rethinking model scaling for convolutional
neural networks").

B0 (Table 1) is a stack of MBConv blocks (MobileNet v2's inverted residual with
squeeze-and-excitation and swish). Larger models scale B0's depth, width and resolution
together: depth d = alpha^phi, width w = beta^phi, resolution r = gamma^phi with alpha = 1.2,
beta = 1.1, gamma = 1.15, chosen so that alpha * beta^2 * gamma^2 ~ 2: each step of phi about
doubles the MACs. The published B1-B7 round these (Table in the reference code), so the
registered ``efficientnet_b*`` use the published coefficients and :func:`efficientnet_scaled`
applies the formula for any phi. ``tf_same=True`` pads the strided convolutions as TensorFlow
does, which the TensorFlow/Keras weights need (:mod:`convnets.weights.keras`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from convnets.checks import number
from convnets.errors import ConfigError
from convnets.layers import ClassifierHead, ConvBNAct, InvertedResidual, make_divisible
from convnets.models.base import ConvNet, StageInfo
from convnets.registry import Published, register_model


@dataclass(frozen=True)
class MBConvStage:
    """One row of Tan & Le 2019, Table 1: MBConv<expand> kxk, stride, channels, layers."""

    expand: int
    kernel: int
    stride: int
    channels: int
    layers: int


# Tan & Le 2019, Table 1 (EfficientNet-B0), stages 2-8.
B0_STAGES = (
    MBConvStage(1, 3, 1, 16, 1),
    MBConvStage(6, 3, 2, 24, 2),
    MBConvStage(6, 5, 2, 40, 2),
    MBConvStage(6, 3, 2, 80, 3),
    MBConvStage(6, 5, 1, 112, 3),
    MBConvStage(6, 5, 2, 192, 4),
    MBConvStage(6, 3, 1, 320, 1),
)


@dataclass(frozen=True)
class Scaling:
    """Compound-scaling coefficients: width and depth multipliers, input resolution, dropout."""

    width: float
    depth: float
    resolution: int
    dropout: float


# The published (width, depth, resolution, dropout) of B0-B7 (the paper's reference code).
COEFFICIENTS = {
    "b0": Scaling(1.0, 1.0, 224, 0.2),
    "b1": Scaling(1.0, 1.1, 240, 0.2),
    "b2": Scaling(1.1, 1.2, 260, 0.3),
    "b3": Scaling(1.2, 1.4, 300, 0.3),
    "b4": Scaling(1.4, 1.8, 380, 0.4),
    "b5": Scaling(1.6, 2.2, 456, 0.4),
    "b6": Scaling(1.8, 2.6, 528, 0.5),
    "b7": Scaling(2.0, 3.1, 600, 0.5),
}
ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15  # depth, width, resolution bases (Section 3.3)


def compound_scaling(phi: float) -> Scaling:
    """Coefficients for any phi >= 0 from alpha^phi, beta^phi, gamma^phi.

    Resolution is rounded to a multiple of 8; dropout grows linearly from B0's 0.2 to B7's 0.5
    (the published values do so, approximately).
    """
    # Bounded above: each step about doubles the MACs, so phi = 30 would be a billion times B0's.
    number(ge=0, le=10, note="0 is B0, about 7 is B7; each step about doubles the MACs").check("phi", phi)
    resolution = max(32, int(round(224 * GAMMA**phi / 8)) * 8)
    return Scaling(BETA**phi, ALPHA**phi, resolution, min(0.5, 0.2 + 0.3 * phi / 7))


class EfficientNet(ConvNet):
    """3x3/2 conv, the seven MBConv stages scaled by ``scaling``, 1x1 conv, pool, FC.

    Args:
        scaling: width, depth, resolution and dropout.
        num_classes: outputs.
        in_chans: input channels.
        drop_path: stochastic-depth probability of the last block, growing linearly from 0 at
            the first (drop-connect 0.2 in the reference code).
        small_input: for 32-64 px images: a stride-1 first conv (parameters unchanged).
        tf_same: TensorFlow's padding of the strided convolutions.
    """

    def __init__(
        self,
        scaling: Scaling,
        num_classes: int = 1000,
        in_chans: int = 3,
        *,
        drop_path: float = 0.2,
        small_input: bool = False,
        tf_same: bool = False,
    ) -> None:
        super().__init__()
        if not scaling.width > 0 or not scaling.depth > 0:
            raise ConfigError(f"width and depth multipliers must be > 0, got {scaling}")
        self.small_input, self.tf_same = small_input, tf_same
        self.scaling = scaling
        channels = make_divisible(32 * scaling.width)
        self.stem = ConvBNAct(in_chans, channels, 3, 1 if small_input else 2, act=nn.SiLU, tf_same=tf_same)
        reduction = 1 if small_input else 2
        depths = [math.ceil(stage.layers * scaling.depth) for stage in B0_STAGES]
        total, index = sum(depths), 0
        stages, info = [], []
        for i, (stage, depth) in enumerate(zip(B0_STAGES, depths, strict=True)):
            out = make_divisible(stage.channels * scaling.width)
            blocks = []
            for j in range(depth):
                blocks.append(
                    InvertedResidual(channels, out, stage.kernel, stage.stride if j == 0 else 1, stage.expand,
                                     act=nn.SiLU, se_ratio=0.25, drop_path=drop_path * index / total,
                                     tf_same=tf_same)
                )
                channels, index = out, index + 1
            reduction *= stage.stride
            stages.append(nn.Sequential(*blocks))
            info.append(StageInfo(f"stages.{i}", channels, reduction))
        last = 4 * channels  # 1280 for B0
        stages.append(ConvBNAct(channels, last, 1, act=nn.SiLU))
        info.append(StageInfo(f"stages.{len(B0_STAGES)}", last, reduction))
        self.stages = nn.Sequential(*stages)
        self.head = ClassifierHead(last, num_classes, dropout=scaling.dropout)
        size = scaling.resolution
        self._finish(in_chans=in_chans, stage_info=info, input_size=(in_chans, size, size), min_input_size=reduction)


def efficientnet_scaled(phi: float, num_classes: int = 1000, in_chans: int = 3, **kwargs: object) -> EfficientNet:
    """EfficientNet compound-scaled from B0 by any phi >= 0 with the formula (not the rounded table)."""
    return EfficientNet(compound_scaling(phi), num_classes, in_chans, **kwargs)


def _b(variant: str, num_classes: int, in_chans: int, drop_path: float, small_input: bool,
       tf_same: bool) -> EfficientNet:
    return EfficientNet(COEFFICIENTS[variant], num_classes, in_chans, drop_path=drop_path, small_input=small_input,
                        tf_same=tf_same)


def _published(params: int, macs: int, paper: str) -> Published:
    return Published(params, macs, f"Tan & Le 2019 ({paper}); torchvision count")


def _kw(variant: str) -> dict:
    size = COEFFICIENTS[variant].resolution
    return dict(family="efficientnet", input_size=(3, size, size))


@register_model(**_kw("b0"), published=_published(5_288_548, 385_814_752, "5.3M, 0.39B"))
def efficientnet_b0(num_classes: int = 1000, in_chans: int = 3, *, drop_path: float = 0.2,
                    small_input: bool = False, tf_same: bool = False) -> EfficientNet:
    """EfficientNet-B0 (Tan & Le 2019, Table 1): 224 input, 77.1% ImageNet top-1 in the paper."""
    return _b("b0", num_classes, in_chans, drop_path, small_input, tf_same)


@register_model(**_kw("b1"), published=_published(7_794_184, 686_802_832, "7.8M, 0.70B"))
def efficientnet_b1(num_classes: int = 1000, in_chans: int = 3, *, drop_path: float = 0.2,
                    small_input: bool = False, tf_same: bool = False) -> EfficientNet:
    """EfficientNet-B1 (Tan & Le 2019): width 1.0, depth 1.1, 240 input."""
    return _b("b1", num_classes, in_chans, drop_path, small_input, tf_same)


# torchvision's B2 figure (1.088 GMACs) is at its 288 evaluation size, not this default 260: the MACs at 260
# are the paper's rounded 1.0B; the parameters are torchvision's count.
@register_model(**_kw("b2"), published=Published(9_109_994, 1_000_000_000, "Tan & Le 2019 (9.2M, 1.0B at 260); "
                                                 "params: torchvision count", approx=("macs",)))
def efficientnet_b2(num_classes: int = 1000, in_chans: int = 3, *, drop_path: float = 0.2,
                    small_input: bool = False, tf_same: bool = False) -> EfficientNet:
    """EfficientNet-B2 (Tan & Le 2019): width 1.1, depth 1.2, 260 input."""
    return _b("b2", num_classes, in_chans, drop_path, small_input, tf_same)


@register_model(**_kw("b3"), published=_published(12_233_232, 1_827_141_392, "12M, 1.8B"))
def efficientnet_b3(num_classes: int = 1000, in_chans: int = 3, *, drop_path: float = 0.2,
                    small_input: bool = False, tf_same: bool = False) -> EfficientNet:
    """EfficientNet-B3 (Tan & Le 2019): width 1.2, depth 1.4, 300 input."""
    return _b("b3", num_classes, in_chans, drop_path, small_input, tf_same)


@register_model(**_kw("b4"), published=_published(19_341_616, 4_393_771_024, "19M, 4.2B"))
def efficientnet_b4(num_classes: int = 1000, in_chans: int = 3, *, drop_path: float = 0.2,
                    small_input: bool = False, tf_same: bool = False) -> EfficientNet:
    """EfficientNet-B4 (Tan & Le 2019): width 1.4, depth 1.8, 380 input."""
    return _b("b4", num_classes, in_chans, drop_path, small_input, tf_same)


@register_model(**_kw("b5"), published=_published(30_389_784, 10_266_384_752, "30M, 9.9B"))
def efficientnet_b5(num_classes: int = 1000, in_chans: int = 3, *, drop_path: float = 0.2,
                    small_input: bool = False, tf_same: bool = False) -> EfficientNet:
    """EfficientNet-B5 (Tan & Le 2019): width 1.6, depth 2.2, 456 input."""
    return _b("b5", num_classes, in_chans, drop_path, small_input, tf_same)


@register_model(**_kw("b6"), published=_published(43_040_704, 19_067_593_536, "43M, 19B"))
def efficientnet_b6(num_classes: int = 1000, in_chans: int = 3, *, drop_path: float = 0.2,
                    small_input: bool = False, tf_same: bool = False) -> EfficientNet:
    """EfficientNet-B6 (Tan & Le 2019): width 1.8, depth 2.6, 528 input."""
    return _b("b6", num_classes, in_chans, drop_path, small_input, tf_same)


@register_model(**_kw("b7"), published=_published(66_347_960, 37_745_884_192, "66M, 37B"))
def efficientnet_b7(num_classes: int = 1000, in_chans: int = 3, *, drop_path: float = 0.2,
                    small_input: bool = False, tf_same: bool = False) -> EfficientNet:
    """EfficientNet-B7 (Tan & Le 2019): width 2.0, depth 3.1, 600 input, 84.3% ImageNet top-1 in the paper."""
    return _b("b7", num_classes, in_chans, drop_path, small_input, tf_same)
