"""LeNet-5 (LeCun, Bottou, Bengio & Haffner 1998, "Gradient-based learning applied to document
recognition", Section II-B), as published and in the modern reading.

``lenet5_classic``: 32x32x1 input; C1 6@5x5 -> S2 trainable subsampling -> C3 16@5x5 with the
partial connection table (Table I) -> S4 -> C5 120@5x5 -> F6 84 -> 10 Euclidean RBF units with
fixed codes. Activation 1.7159 * tanh(2a/3). Exactly 60,000 trainable parameters.

``lenet5``: the reading most courses use: full C3, ReLU, max-pooling, fully connected 120-84-10
with a softmax (61,706 parameters).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from convnets.layers import ClassifierHead, relu
from convnets.models.base import ConvNet, StageInfo
from convnets.registry import Published, register_model

# LeCun et al. 1998, Table I: the S2 maps (columns) each C3 map reads. Breaking the symmetry
# forces the maps to learn different features and cuts connections from 240,000 to 151,600.
C3_TABLE: tuple[tuple[int, ...], ...] = (
    (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (0, 4, 5), (0, 1, 5),
    (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (0, 3, 4, 5), (0, 1, 4, 5), (0, 1, 2, 5),
    (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)  # fmt: skip


class ScaledTanh(nn.Module):
    """f(a) = A tanh(S a) with A = 1.7159, S = 2/3 (LeCun et al. 1998, Appendix A): f(+-1) = +-1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1.7159 * torch.tanh(x * (2.0 / 3.0))


class TrainableSubsampling(nn.Module):
    """S2/S4: the four inputs of each 2x2 window summed, times a trainable coefficient, plus a
    trainable bias, per map (2 parameters per map), then the squashing function."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.act = ScaledTanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        window_sum = F.avg_pool2d(x, 2) * 4
        return self.act(window_sum * self.weight[:, None, None] + self.bias[:, None, None])


class PartialConv2d(nn.Module):
    """A convolution where output map ``i`` reads only the input maps ``table[i]``.

    Only the connected kernels are parameters (1,516 for C3, not 2,416): they are scattered into
    a dense weight with zeros elsewhere so the layer runs as one ordinary convolution.
    """

    def __init__(self, in_channels: int, table: tuple[tuple[int, ...], ...], kernel_size: int) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, len(table), kernel_size
        # Row of each connected (output, input) kernel in the dense weight viewed as (out * in, k, k).
        rows = [out * in_channels + i for out, inputs in enumerate(table) for i in inputs]
        self.register_buffer("rows", torch.tensor(rows), persistent=False)
        # LeCun's init (Appendix C): uniform in +-2.4 / fan_in, fan_in counting real connections only.
        bound = torch.tensor([2.4 / (len(inputs) * kernel_size**2) for inputs in table for _ in inputs])
        self.weight = nn.Parameter((torch.rand(len(rows), kernel_size, kernel_size) * 2 - 1) * bound[:, None, None])
        self.bias = nn.Parameter(torch.zeros(len(table)))

    def dense_weight(self) -> torch.Tensor:
        """The (out, in, k, k) kernel with zeros where the table has no connection."""
        k = self.kernel_size
        dense = self.weight.new_zeros(self.out_channels * self.in_channels, k, k)
        return dense.index_copy(0, self.rows, self.weight).view(self.out_channels, self.in_channels, k, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.dense_weight(), self.bias)

    def count_macs(self, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
        # Only real connections count: 100 positions x 1,500 weights = 150,000 for C3.
        return output.shape[0] * output.shape[2] * output.shape[3] * self.weight.numel()


def _rbf_codes(num_classes: int, width: int) -> torch.Tensor:
    # LeCun drew the 10 digit codes as 7x12 bitmaps of the characters; those drawings are not
    # published as data, so the codes here are fixed +-1 vectors from a seeded generator.
    generator = torch.Generator().manual_seed(1998)
    return torch.randint(0, 2, (num_classes, width), generator=generator).float() * 2 - 1


class EuclideanRBF(nn.Module):
    """Output layer of LeNet-5: y_i = sum_j (x_j - w_ij)^2 with fixed codes w_i (no parameters).

    Returns ``-y`` so that the largest output is the predicted class and cross-entropy on it
    is LeCun's MAP criterion without the constant "rubbish class" term.
    """

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("codes", _rbf_codes(num_classes, in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -torch.cdist(x, self.codes.to(x.dtype)).pow(2)

    def count_macs(self, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
        return output.numel() * self.codes.shape[1]


class LeNet5(ConvNet):
    """LeNet-5: two convolution + subsampling stages, then C5 and the fully connected head.

    Args:
        num_classes: outputs.
        in_chans: input channels (1 in the paper).
        classic: True for the 1998 network (partial C3, trainable subsampling, scaled tanh,
            RBF output); False for the modern reading (full C3, ReLU, max-pool, linear output).
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 1, *, classic: bool = False) -> None:
        super().__init__()
        if classic:
            act, c3 = ScaledTanh, PartialConv2d(6, C3_TABLE, 5)
            pool1, pool2 = TrainableSubsampling(6), TrainableSubsampling(16)
        else:
            act, c3 = relu, nn.Conv2d(6, 16, 5)
            pool1, pool2 = nn.MaxPool2d(2), nn.MaxPool2d(2)
        self.stem = nn.Identity()
        stages = [
            OrderedDict(conv=nn.Conv2d(in_chans, 6, 5), act=act(), pool=pool1),  # C1, S2
            OrderedDict(conv=c3, act=act(), pool=pool2),  # C3, S4
        ]
        if classic:
            # C5 is a convolution in the paper, over the 5x5 S4 maps: 1x1 outputs at 32x32 input.
            stages.append(OrderedDict(conv=nn.Conv2d(16, 120, 5), act=act()))
            head = ClassifierHead(120, num_classes, pool=nn.Identity(), hidden=(84,), act=act, classifier=EuclideanRBF)
        else:
            head = ClassifierHead(16 * 5 * 5, num_classes, pool=nn.Identity(), hidden=(120, 84), act=act)
        self.stages = nn.Sequential(*(nn.Sequential(s) for s in stages))
        self.head = head
        info = [StageInfo("stages.0", 6, 2), StageInfo("stages.1", 16, 4)]
        if classic:
            info.append(StageInfo("stages.2", 120, 32))
        self.classic = classic
        self._finish(in_chans=in_chans, stage_info=info, input_size=(1, 32, 32), min_input_size=32,
                     fixed_input_size=(32, 32))


@register_model(family="lenet", input_size=(1, 32, 32), published=Published(60_000, None, "LeCun et al. 1998"))
def lenet5_classic(num_classes: int = 10, in_chans: int = 1) -> LeNet5:
    """LeNet-5 as published (LeCun et al. 1998): 60,000 parameters.

    Deviation: the RBF codes are seeded +-1 vectors, not the paper's hand-drawn 7x12 bitmaps.
    """
    return LeNet5(num_classes, in_chans, classic=True)


@register_model(family="lenet", input_size=(1, 32, 32), published=Published(61_706, None, "course reading of LeNet-5"))
def lenet5(num_classes: int = 10, in_chans: int = 1) -> LeNet5:
    """LeNet-5, modern reading: ReLU, max-pool, full C3, FC 120-84-softmax (61,706 parameters)."""
    return LeNet5(num_classes, in_chans, classic=False)
