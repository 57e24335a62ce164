"""Network in Network (Lin, Chen & Yan 2013), the CIFAR-10 network of the paper's Section 4.2.

A 1x1 convolution is a fully connected layer applied at every pixel: it mixes the channels of
one position and shares its weights across positions. NiN's "mlpconv" layer is a kxk conv
followed by two such 1x1 layers, i.e. a small multilayer perceptron slid over the image.
Weights start from He et al.'s initialisation (:func:`convnets.layers.he_init`).
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from convnets.layers import ClassifierHead, he_init, relu
from convnets.models.base import ConvNet, StageInfo
from convnets.registry import register_model


def conv1x1(in_channels: int, out_channels: int, *, bias: bool = True) -> nn.Conv2d:
    """A 1x1 convolution: the same ``in -> out`` linear map applied at each position."""
    return nn.Conv2d(in_channels, out_channels, 1, bias=bias)


class MLPConv(nn.Sequential):
    """kxk conv -> ReLU -> (1x1 conv -> ReLU) per entry of ``pointwise`` (Lin et al. 2013, Figure 2)."""

    def __init__(self, in_channels: int, channels: int, kernel_size: int, pointwise: tuple[int, ...]) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["conv"] = nn.Conv2d(in_channels, channels, kernel_size, padding=kernel_size // 2)
        layers["act"] = relu()
        width = channels
        for i, out in enumerate(pointwise, start=1):
            layers[f"cccp{i}"] = conv1x1(width, out)  # "cascaded cross channel parametric pooling"
            layers[f"act{i}"] = relu()
            width = out
        super().__init__(layers)
        self.out_channels = width


class NiN(ConvNet):
    """Three mlpconv stages with pooling and dropout between them, then global average pooling.

    The paper's last 1x1 layer outputs one map per class and global average pooling turns each
    map into a score. Both steps are linear, so pooling first and then applying the same
    weights as ``head.fc`` gives the same scores (and ``reset_classifier`` works as for any
    model). Deviation: the original Caffe model passes the scores through a ReLU; it is
    dropped here because clipping logits at zero only slows learning.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 3, *, dropout: float = 0.5) -> None:
        super().__init__()
        self.stem = nn.Identity()
        # The Caffe model of the paper (cifar10 NIN): 192-160-96, 192-192-192, 192-192-classes.
        stage1 = MLPConv(in_chans, 192, 5, (160, 96))
        stage1.add_module("pool", nn.MaxPool2d(3, 2, ceil_mode=True))
        stage1.add_module("drop", nn.Dropout(dropout))
        stage2 = MLPConv(96, 192, 5, (192, 192))
        stage2.add_module("pool", nn.AvgPool2d(3, 2, ceil_mode=True))
        stage2.add_module("drop", nn.Dropout(dropout))
        stage3 = MLPConv(192, 192, 3, (192,))
        self.stages = nn.Sequential(stage1, stage2, stage3)
        self.head = ClassifierHead(192, num_classes)
        info = [StageInfo("stages.0", 96, 2), StageInfo("stages.1", 192, 4), StageInfo("stages.2", 192, 4)]
        he_init(self)
        self._finish(in_chans=in_chans, stage_info=info, input_size=(3, 32, 32), min_input_size=4)


@register_model(family="nin", input_size=(3, 32, 32))
def nin(num_classes: int = 10, in_chans: int = 3, *, dropout: float = 0.5) -> NiN:
    """Network in Network for 32x32 images (Lin et al. 2013, CIFAR-10 model): 1x1 convs as per-pixel MLPs."""
    return NiN(num_classes, in_chans, dropout=dropout)
