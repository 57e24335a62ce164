"""VGG (Simonyan & Zisserman 2014, "Very deep convolutional networks for large-scale image
recognition", Table 1): stacks of 3x3 "same" convolutions, 2x2/2 max-pooling after each stage,
FC 4096-4096-classes with dropout 0.5.

The last map is average-pooled to 7x7 before the FC layers (as in torchvision), so the head is
the paper's at 224x224 and still fits smaller inputs (at 32x32 the 1x1 map is repeated).
The ``_bn`` variants add BatchNorm after every conv, keeping the conv biases (not in the paper;
torchvision's layout). Weights start from He et al.'s initialisation
(:func:`convnets.layers.he_init`): the paper trained configuration A first and initialised the
deeper ones from it, which He init makes unnecessary.
"""

from __future__ import annotations

from torch import nn

from convnets.layers import ClassifierHead, ConvBNAct, he_init
from convnets.models.base import ConvNet, StageInfo
from convnets.registry import Published, register_model

# Simonyan & Zisserman 2014, Table 1, configurations A, B, D, E: the conv widths of each stage;
# every stage ends with a 2x2/2 max-pool.
VGG_STAGES: dict[int, tuple[tuple[int, ...], ...]] = {
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}


class VGG(ConvNet):
    """Five stages of 3x3 convolutions, each closed by a max-pool, then three FC layers.

    Args:
        stages: conv widths per stage (a row of ``VGG_STAGES``).
        num_classes: outputs.
        in_chans: input channels.
        batch_norm: BatchNorm after every conv.
        dropout: dropout after each hidden FC layer.
    """

    def __init__(
        self,
        stages: tuple[tuple[int, ...], ...],
        num_classes: int = 1000,
        in_chans: int = 3,
        *,
        batch_norm: bool = False,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.stem = nn.Identity()
        blocks, info, width = [], [], in_chans
        for i, widths in enumerate(stages):
            stage = nn.Sequential()
            for j, out in enumerate(widths):
                stage.add_module(f"conv{j + 1}", ConvBNAct(width, out, 3, norm=batch_norm, bias=True))
                width = out
            stage.add_module("pool", nn.MaxPool2d(2, 2))
            blocks.append(stage)
            info.append(StageInfo(f"stages.{i}", width, 2 ** (i + 1)))
        self.stages = nn.Sequential(*blocks)
        self.head = ClassifierHead(width * 7 * 7, num_classes, pool=nn.AdaptiveAvgPool2d(7), hidden=(4096, 4096),
                                   hidden_dropout=dropout)
        he_init(self)
        self._finish(in_chans=in_chans, stage_info=info, input_size=(3, 224, 224), min_input_size=32)


def _vgg(depth: int, batch_norm: bool, num_classes: int, in_chans: int, dropout: float) -> VGG:
    return VGG(VGG_STAGES[depth], num_classes, in_chans, batch_norm=batch_norm, dropout=dropout)


def _published(params: int, macs: int, batch_norm: bool = False) -> Published:
    # torchvision publishes only vgg16_bn among the _bn counts; the others add BN's 2 per channel.
    source = "Simonyan & Zisserman 2014; torchvision 0.28 count" + (" + BN scale/shift" if batch_norm else "")
    return Published(params, macs, source)


_VGG = dict(family="vgg", input_size=(3, 224, 224))


@register_model(**_VGG, published=_published(132_863_336, 7_609_090_048))
def vgg11(num_classes: int = 1000, in_chans: int = 3, *, dropout: float = 0.5) -> VGG:
    """VGG-11 (Simonyan & Zisserman 2014, Table 1, configuration A)."""
    return _vgg(11, False, num_classes, in_chans, dropout)


@register_model(**_VGG, published=_published(133_047_848, 11_308_466_176))
def vgg13(num_classes: int = 1000, in_chans: int = 3, *, dropout: float = 0.5) -> VGG:
    """VGG-13 (Simonyan & Zisserman 2014, Table 1, configuration B)."""
    return _vgg(13, False, num_classes, in_chans, dropout)


@register_model(**_VGG, published=_published(138_357_544, 15_470_264_320))
def vgg16(num_classes: int = 1000, in_chans: int = 3, *, dropout: float = 0.5) -> VGG:
    """VGG-16 (Simonyan & Zisserman 2014, Table 1, configuration D)."""
    return _vgg(16, False, num_classes, in_chans, dropout)


@register_model(**_VGG, published=_published(143_667_240, 19_632_062_464))
def vgg19(num_classes: int = 1000, in_chans: int = 3, *, dropout: float = 0.5) -> VGG:
    """VGG-19 (Simonyan & Zisserman 2014, Table 1, configuration E)."""
    return _vgg(19, False, num_classes, in_chans, dropout)


@register_model(**_VGG, published=_published(132_868_840, 7_609_090_048, batch_norm=True))
def vgg11_bn(num_classes: int = 1000, in_chans: int = 3, *, dropout: float = 0.5) -> VGG:
    """VGG-11 with BatchNorm after each conv (torchvision's vgg11_bn)."""
    return _vgg(11, True, num_classes, in_chans, dropout)


@register_model(**_VGG, published=_published(133_053_736, 11_308_466_176, batch_norm=True))
def vgg13_bn(num_classes: int = 1000, in_chans: int = 3, *, dropout: float = 0.5) -> VGG:
    """VGG-13 with BatchNorm after each conv (torchvision's vgg13_bn)."""
    return _vgg(13, True, num_classes, in_chans, dropout)


@register_model(**_VGG, published=Published(138_365_992, 15_470_264_320, "torchvision 0.28"))
def vgg16_bn(num_classes: int = 1000, in_chans: int = 3, *, dropout: float = 0.5) -> VGG:
    """VGG-16 with BatchNorm after each conv (torchvision's vgg16_bn)."""
    return _vgg(16, True, num_classes, in_chans, dropout)


@register_model(**_VGG, published=_published(143_678_248, 19_632_062_464, batch_norm=True))
def vgg19_bn(num_classes: int = 1000, in_chans: int = 3, *, dropout: float = 0.5) -> VGG:
    """VGG-19 with BatchNorm after each conv (torchvision's vgg19_bn)."""
    return _vgg(19, True, num_classes, in_chans, dropout)
