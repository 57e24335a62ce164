"""AlexNet (Krizhevsky, Sutskever & Hinton 2012, "ImageNet classification with deep
convolutional neural networks", Section 3 and Figure 2).

``alexnet``: as published. 227x227 input (the paper's "224" does not give its 55x55 maps),
96-256-384-384-256 kernels, the two-GPU towers kept as ``groups=2`` in conv2, conv4 and conv5
(conv3 and the FC layers read both towers), LRN after the first two ReLUs, overlapping 3/2
max-pooling, dropout 0.5 in the first two FC layers: 60,965,224 parameters.

``alexnet_torchvision``: the single-tower 64-192-384-256-256 layout of Krizhevsky 2014 ("One
weird trick") that torchvision ships, 224 input, no LRN: 61,100,840 parameters.

Both pool the last map to 6x6 with adaptive average pooling before the FC layers (as
torchvision does), so inputs other than the paper's size keep the same head.

Initialisation is He et al.'s (:func:`convnets.layers.he_init`), not the paper's N(0, 0.01) with
some biases at 1: without BatchNorm either starting point needs care, and He init is the one
that trains at once with SGD at the recipes' learning rates.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from convnets.layers import ClassifierHead, ConvBNAct, he_init, local_response_norm
from convnets.models.base import ConvNet, StageInfo
from convnets.registry import Published, register_model


@dataclass(frozen=True)
class ConvLayer:
    """One row of the conv stack: kernels, size, stride, groups, and what follows the ReLU."""

    channels: int
    kernel: int
    stride: int = 1
    groups: int = 1
    lrn: bool = False
    pool: bool = False


# Krizhevsky et al. 2012, Section 3.5 and Figure 2.
PAPER = (
    ConvLayer(96, 11, stride=4, lrn=True, pool=True),
    ConvLayer(256, 5, groups=2, lrn=True, pool=True),
    ConvLayer(384, 3),
    ConvLayer(384, 3, groups=2),
    ConvLayer(256, 3, groups=2, pool=True),
)
# torchvision.models.alexnet (Krizhevsky 2014, "One weird trick..."): one tower, no LRN.
TORCHVISION = (
    ConvLayer(64, 11, stride=4, pool=True),
    ConvLayer(192, 5, pool=True),
    ConvLayer(384, 3),
    ConvLayer(256, 3),
    ConvLayer(256, 3, pool=True),
)


class AlexNet(ConvNet):
    """Five conv layers (one stage each), then FC 4096-4096-classes.

    Args:
        layers: the conv stack.
        num_classes: outputs.
        in_chans: input channels.
        conv1_padding: padding of the first conv (0 in the paper at 227, 2 in torchvision at 224).
        dropout: dropout after each hidden FC layer.
        small_input: for 32-64 px images: the first conv uses stride 1 and "same" padding, so
            the maps are not reduced below the pooling windows (parameters unchanged).
    """

    def __init__(
        self,
        layers: tuple[ConvLayer, ...],
        num_classes: int = 1000,
        in_chans: int = 3,
        *,
        conv1_padding: int = 0,
        dropout: float = 0.5,
        small_input: bool = False,
        input_size: tuple[int, int, int] = (3, 227, 227),
    ) -> None:
        super().__init__()
        self.small_input = small_input
        self.stem = nn.Identity()
        stages, info, width, reduction = [], [], in_chans, 1
        for i, layer in enumerate(layers):
            stride, padding = layer.stride, (layer.kernel - 1) // 2
            if i == 0:
                stride, padding = (1, padding) if small_input else (stride, conv1_padding)
            stage = ConvBNAct(width, layer.channels, layer.kernel, stride, padding=padding, groups=layer.groups,
                              norm=False)
            if layer.lrn:
                stage.add_module("lrn", local_response_norm())
            if layer.pool:
                # Overlapping pooling (3/2): the paper reports it lowers top-1 error by 0.4%.
                stage.add_module("pool", nn.MaxPool2d(3, 2))
            reduction *= stride * (2 if layer.pool else 1)
            stages.append(stage)
            info.append(StageInfo(f"stages.{i}", layer.channels, reduction))
            width = layer.channels
        self.stages = nn.Sequential(*stages)
        self.head = ClassifierHead(width * 6 * 6, num_classes, pool=nn.AdaptiveAvgPool2d(6), hidden=(4096, 4096),
                                   hidden_dropout=dropout)
        # Smallest input that leaves the last 3/2 pool a window: 67 (stride-4 conv1), 15 (small_input).
        he_init(self)
        self._finish(in_chans=in_chans, stage_info=info, input_size=input_size,
                     min_input_size=15 if small_input else 63 + 4 - 2 * conv1_padding)


@register_model(family="alexnet", input_size=(3, 227, 227),
                published=Published(60_965_224, 724_000_000, "Krizhevsky et al. 2012, recounted", approx=("macs",)))
def alexnet(num_classes: int = 1000, in_chans: int = 3, *, small_input: bool = False, dropout: float = 0.5) -> AlexNet:
    """AlexNet as published (Krizhevsky et al. 2012): two towers as grouped convs, LRN, 227x227 input."""
    return AlexNet(PAPER, num_classes, in_chans, small_input=small_input, dropout=dropout)


@register_model(family="alexnet", input_size=(3, 224, 224),
                published=Published(61_100_840, 714_188_480, "torchvision 0.28"))
def alexnet_torchvision(
    num_classes: int = 1000, in_chans: int = 3, *, small_input: bool = False, dropout: float = 0.5
) -> AlexNet:
    """torchvision's AlexNet: single tower 64-192-384-256-256, no LRN, 224 input (Krizhevsky 2014)."""
    return AlexNet(TORCHVISION, num_classes, in_chans, conv1_padding=2, small_input=small_input, dropout=dropout,
                   input_size=(3, 224, 224))
