"""Building blocks shared by several families.

Each block here is used by more than one architecture; a block used by one family lives in
that family's file.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from convnets.errors import ConfigError
from convnets.registry import BUILDER_ARGUMENTS  # the builders' rule for num_classes

ActFactory = Callable[[], nn.Module]


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of ``divisor`` without losing more than 10%.

    The rule of the MobileNet v2 / EfficientNet reference code: hardware runs channel counts
    that are multiples of 8 faster, and a width multiplier gives arbitrary floats.
    """
    min_value = min_value or divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def relu() -> nn.Module:
    """ReLU applied in place: it always follows a layer whose output nothing else reads."""
    return nn.ReLU(inplace=True)


class DepthwiseConv2d(nn.Conv2d):
    """A depthwise convolution (one filter per channel) that stays in fp32 under CPU autocast.

    On CPUs with native bf16, oneDNN's bf16 depthwise kernels are several times slower than its fp32
    ones (a stride-2 3x3 layer of 96 channels: 22.0 ms against 2.2 ms, ``benchmarks/bench_precision.py --depthwise``),
    while its bf16 dense convolutions are faster. Left to autocast, ``--precision auto`` would slow
    MobileNet and EfficientNet down; computing these few, cheap layers in fp32 keeps bf16's gain on the
    rest. Everywhere else (no autocast, CUDA) it is an ``nn.Conv2d``; its weights and keys are the same.
    A graph traced by ``torch.fx`` keeps the test (:func:`conv2d_fp32_under_cpu_autocast` is one node
    of it); a TorchScript module, which cannot express it, is a plain convolution.
    """

    fp32_under_autocast = True  # the benchmark sets it False on an instance to time autocast's own choice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            # TorchScript compiles only this branch: it cannot express the autocast test.
            return self._conv_forward(x, self.weight, self.bias)
        if self.fp32_under_autocast:
            return conv2d_fp32_under_cpu_autocast(x, self.weight, self.bias, self.stride, self.padding,
                                                  self.dilation, self.groups)
        return self._conv_forward(x, self.weight, self.bias)


def conv2d_fp32_under_cpu_autocast(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
) -> torch.Tensor:
    """``F.conv2d``, computed in fp32 when CPU autocast is on (:class:`DepthwiseConv2d` says why)."""
    if torch.jit.is_scripting():
        # A graph traced by torch.fx and then scripted: TorchScript compiles only this branch.
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return F.conv2d(x.float(), weight, bias, stride, padding, dilation, groups)
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


# One call in a graph traced by torch.fx, so that the autocast test runs when the graph runs, not once at tracing.
torch.fx.wrap("conv2d_fp32_under_cpu_autocast")


def pad_same(x: torch.Tensor, kernel_size: int, stride: int) -> torch.Tensor:
    """Zero-pad ``x`` as TensorFlow's ``padding="same"`` does before a strided convolution.

    TensorFlow pads each side so that the output has ceil(size / stride) positions and puts the
    odd pixel on the right/bottom: a 3x3/2 convolution of a 224-pixel side pads (0, 1), where
    PyTorch's symmetric ``padding=1`` pads (1, 1) and shifts every output by one input pixel.
    """
    height, width = x.shape[-2], x.shape[-1]
    pad_h = max(((height + stride - 1) // stride - 1) * stride + kernel_size - height, 0)
    pad_w = max(((width + stride - 1) // stride - 1) * stride + kernel_size - width, 0)
    return F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])


torch.fx.wrap("pad_same")  # its padding depends on the input's size: one call in a traced graph, not Python arithmetic


class TFSamePad(nn.Module):
    """TensorFlow's "same" padding (:func:`pad_same`) for the strided convolution that follows it."""

    def __init__(self, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pad_same(x, self.kernel_size, self.stride)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


class ConvBNAct(nn.Sequential):
    """conv -> BatchNorm -> activation, with "same" padding for odd kernels.

    Submodules are named ``conv``, ``bn``, ``act`` so checkpoint keys read ``stem.conv.weight``.
    ``norm=False`` gives conv (with bias) -> activation, the pre-BatchNorm style of AlexNet, VGG,
    GoogLeNet and NiN. The conv has a bias only without BatchNorm (BN's shift replaces it) unless
    ``bias`` says otherwise. ``act=None`` leaves the output linear (MobileNet v2's projection).
    ``tf_same=True`` pads a strided convolution as TensorFlow does (a ``pad`` submodule, no
    parameters), which weights trained in TensorFlow/Keras need to give their outputs; at stride 1
    both paddings are the same.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        *,
        padding: int | None = None,
        groups: int = 1,
        norm: bool = True,
        bias: bool | None = None,
        act: ActFactory | None = relu,
        tf_same: bool = False,
    ) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        if tf_same and stride > 1 and padding is None:
            layers["pad"] = TFSamePad(kernel_size, stride)
            padding = 0
        padding = (kernel_size - 1) // 2 if padding is None else padding
        bias = not norm if bias is None else bias
        conv = DepthwiseConv2d if groups == in_channels == out_channels > 1 else nn.Conv2d
        layers["conv"] = conv(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=bias)
        if norm:
            layers["bn"] = nn.BatchNorm2d(out_channels)
        if act is not None:
            layers["act"] = act()
            if hasattr(layers["act"], "inplace"):
                # In place (ReLU6, SiLU...): it reads only the conv or BN output just made, which nothing
                # else reads, so a new tensor per activation would be memory traffic for nothing.
                layers["act"].inplace = True
        super().__init__(layers)
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride


def local_response_norm(size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0) -> nn.Module:
    """Local response normalization with the hyperparameters as Krizhevsky et al. 2012 write them.

    The paper divides by ``(k + alpha * sum(a^2))^beta``; PyTorch's ``LocalResponseNorm``
    divides ``alpha`` by the window size, so the paper's alpha is multiplied by ``size`` here.
    """
    return nn.LocalResponseNorm(size, alpha=alpha * size, beta=beta, k=k)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018): channel weights from the global average.

    ``reduce`` and ``expand`` are 1x1 convolutions with bias, as in EfficientNet.
    """

    def __init__(self, channels: int, squeeze_channels: int, act: ActFactory = nn.SiLU) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze_channels, 1)
        self.act = act()
        self.expand = nn.Conv2d(squeeze_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = F.adaptive_avg_pool2d(x, 1)
        scale = torch.sigmoid(self.expand(self.act(self.reduce(scale))))
        return x * scale


class DropPath(nn.Module):
    """Drop a residual branch for whole samples with probability ``p`` during training.

    Stochastic depth (Huang et al. 2016), called drop-connect in EfficientNet's code. The kept
    samples are scaled by 1/(1-p) so that evaluation needs no rescaling.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ConfigError(f"drop-path probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        # One draw per sample of the (N, C, H, W) map, written without Python arithmetic on the
        # shape so that torch.fx can trace it.
        keep = x.new_empty([x.shape[0], 1, 1, 1]).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ZeroPadShortcut(nn.Module):
    """He et al. 2015 shortcut option A: identity, subsampled by ``stride``, zero-padded in channels.

    It has no parameters, which is why the CIFAR plain and residual nets have equal counts.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ConfigError("a zero-padding shortcut cannot reduce channels; use a projection (option B)")
        self.extra_channels = out_channels - in_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra_channels:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))
        return x


class ClassifierHead(nn.Module):
    """pool -> flatten -> hidden fully connected layers -> dropout -> ``fc``.

    One head for every family: ResNet's is pool + ``fc``; VGG's and AlexNet's pool to a fixed
    map, flatten and run two 4096-wide hidden layers; LeNet-5's flattens and runs 120 and 84.

    Args:
        in_features: length of the flattened, pooled feature map.
        num_classes: outputs of ``fc``; 0 leaves ``fc`` an identity (features out).
        pool: the pooling before flattening (global average by default).
        hidden: widths of the hidden fully connected layers, each linear -> act -> dropout.
        hidden_dropout: dropout after each hidden layer.
        dropout: dropout right before ``fc``.
        act: activation of the hidden layers.
        classifier: builds the final layer from (in, out); a linear layer unless the family
            says otherwise (LeNet-5's RBF units).
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        pool: nn.Module | None = None,
        hidden: Sequence[int] = (),
        hidden_dropout: float = 0.0,
        dropout: float = 0.0,
        act: ActFactory = relu,
        classifier: Callable[[int, int], nn.Module] = nn.Linear,
    ) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1) if pool is None else pool
        self.flatten = nn.Flatten(1)
        layers = []
        width = in_features
        for out in hidden:
            block = OrderedDict(fc=nn.Linear(width, out), act=act())
            if hidden_dropout:
                block["drop"] = nn.Dropout(hidden_dropout)
            layers.append(nn.Sequential(block))
            width = out
        self.hidden = nn.Sequential(*layers)
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
        self.num_features = width
        self._classifier = classifier
        self.num_classes = 0
        self.fc: nn.Module = nn.Identity()
        self.reset(num_classes)

    def reset(self, num_classes: int, like: torch.Tensor | None = None) -> None:
        """Put a freshly initialised final layer with ``num_classes`` outputs (0: identity).

        The new layer takes the dtype and device of the head's own weights, or of ``like`` when the
        head has none (no hidden layers, after ``reset(0)``): a bf16 model on the GPU gets a bf16
        layer on the GPU, not PyTorch's default float32 CPU one.

        Args:
            num_classes: outputs of the new layer.
            like: a weight of the model the head belongs to.

        Raises:
            ConfigError: ``num_classes`` is not a whole number from 0 to the registry's largest classifier.
        """
        BUILDER_ARGUMENTS["num_classes"].check("num_classes", num_classes)
        if like is not None and not isinstance(like, torch.Tensor):
            raise ConfigError(f"like must be a tensor, whose dtype and device the new layer takes; got a "
                              f"{type(like).__name__}")
        own = next(self.parameters(), None)
        like = own if own is not None else like
        fc = self._classifier(self.num_features, num_classes) if num_classes else nn.Identity()
        if like is not None:
            fc = fc.to(device=like.device, dtype=like.dtype)
        self.fc = fc
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(self.hidden(self.flatten(self.pool(x))))
        return x if pre_logits else self.fc(x)


class InvertedResidual(nn.Module):
    """1x1 expand -> kxk depthwise -> [squeeze-excite] -> 1x1 linear projection, + x when shapes match.

    MobileNet v2's bottleneck (Sandler et al. 2018, Table 1) and EfficientNet's MBConv (Tan & Le
    2019, with squeeze-excite, swish and drop-path) are this one block with different settings.
    The projection has no activation: a ReLU on the narrow output would destroy information
    (Sandler et al. Section 3.2). With ``expand_ratio`` 1 there is no expansion conv.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: depthwise kernel.
        stride: depthwise stride.
        expand_ratio: expansion factor t of the hidden width.
        act: activation after the expansion and depthwise convs.
        se_ratio: squeeze-excite width as a fraction of ``in_channels`` (0: none).
        drop_path: probability of dropping the residual branch (only where there is a shortcut).
        tf_same: TensorFlow's padding for a strided depthwise conv (:class:`ConvBNAct`).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        expand_ratio: int,
        *,
        act: ActFactory = nn.ReLU6,
        se_ratio: float = 0.0,
        drop_path: float = 0.0,
        tf_same: bool = False,
    ) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.expand = ConvBNAct(in_channels, hidden, 1, act=act) if expand_ratio != 1 else nn.Identity()
        self.dw = ConvBNAct(hidden, hidden, kernel_size, stride, groups=hidden, act=act, tf_same=tf_same)
        self.se = SqueezeExcite(hidden, max(1, int(in_channels * se_ratio))) if se_ratio else nn.Identity()
        self.project = ConvBNAct(hidden, out_channels, 1, act=None)
        self.use_residual = stride == 1 and in_channels == out_channels
        self.drop_path = DropPath(drop_path) if self.use_residual and drop_path else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.se(self.dw(self.expand(x))))
        return x + self.drop_path(out) if self.use_residual else out


def he_init(model: nn.Module) -> None:
    """He et al. 2015 initialisation: conv weights N(0, 2/fan_in), zero biases, linear N(0, 0.01).

    For the ReLU networks without BatchNorm (AlexNet, VGG, GoogLeNet as published, NiN). PyTorch's
    default (uniform, a sixth of the He variance) shrinks the signal at every layer: VGG-16 stays
    at chance for its first hundred SGD steps with it and learns from the start with this one
    (docs/RESULTS.md, classic). The papers predate He init: AlexNet drew N(0, 0.01), and VGG
    trained its deep configurations from its shallow one, which this initialisation makes
    unnecessary.
    """
    for module in model.modules():
        if getattr(module, "weight", None) is not None and module.weight.is_meta:
            continue  # built for counting: no values to draw (and on meta, drawing them is slow)
        if isinstance(module, nn.Conv2d):
            # fan_in keeps the forward signal's scale; fan_out would amplify it ~30x at every 1x1
            # reduction of GoogLeNet and NiN (480 -> 16 channels), which has no BatchNorm to undo it.
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.01)
        if isinstance(module, nn.Conv2d | nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
