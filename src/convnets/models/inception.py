"""The inception module and GoogLeNet (Szegedy et al. 2014, "Going deeper with convolutions").

An inception module runs 1x1, 3x3 and 5x5 convolutions and a 3x3 max-pool side by side on the
same input and concatenates their outputs along channels, letting the network choose the
filter size. Naively (Figure 2a) the 5x5 branch alone costs 120M multiplications at 28x28x192
-> 32; a 1x1 "bottleneck" to 16 channels first (Figure 2b) cuts that to 12.4M.

``googlenet``: Table 1 as published (real 5x5 convs, biases, no BatchNorm, the LRN of Figure 3),
6,998,552 parameters, 13,378,280 with the two auxiliary classifiers.
``googlenet_torchvision``: torchvision's layout (BatchNorm, a 3x3 in the "5x5" branch, no LRN,
dropout 0.2): 6,624,904 parameters, 13,004,888 with auxiliary classifiers.
Both start from He et al.'s initialisation (:func:`convnets.layers.he_init`; the paper does not
give one), which keeps the signal of the published, BatchNorm-free network at unit scale.
"""

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from convnets.errors import ConfigError
from convnets.layers import ClassifierHead, ConvBNAct, he_init
from convnets.models.base import ConvNet, InputShapeError, StageInfo, scripting_or_tracing
from convnets.registry import Published, register_model

AUX_LOSS_WEIGHT = 0.3  # Szegedy et al. 2014 Section 5: auxiliary losses weighted by 0.3 in training.


@dataclass(frozen=True)
class InceptionSpec:
    """One row of Table 1: #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj."""

    name: str
    c1x1: int
    c3x3_reduce: int
    c3x3: int
    c5x5_reduce: int
    c5x5: int
    pool_proj: int

    @property
    def out_channels(self) -> int:
        return self.c1x1 + self.c3x3 + self.c5x5 + self.pool_proj


class InceptionModule(nn.Module):
    """Four parallel branches concatenated along channels, for any channel numbers.

    Args:
        in_channels: input channels.
        spec: branch widths (Table 1 row).
        bottleneck: True for the module with 1x1 reductions (Figure 2b); False for the naive
            module (Figure 2a): 1x1, 3x3 and 5x5 convs on the input and a bare max-pool, whose
            output keeps all ``in_channels`` (``spec``'s reduce and pool-proj widths unused).
        batch_norm: BatchNorm after each conv (torchvision's variant).
        large_kernel: kernel of the "5x5" branch (torchvision uses 3).
        pool_ceil: ceil mode of the branch max-pool (torchvision's variant uses it).
    """

    def __init__(
        self,
        in_channels: int,
        spec: InceptionSpec,
        *,
        bottleneck: bool = True,
        batch_norm: bool = False,
        large_kernel: int = 5,
        pool_ceil: bool = False,
    ) -> None:
        super().__init__()

        def conv(cin: int, cout: int, k: int) -> ConvBNAct:
            return ConvBNAct(cin, cout, k, norm=batch_norm)

        def reduced(reduce: int, out: int, k: int) -> nn.Module:
            if not bottleneck:
                return conv(in_channels, out, k)
            return nn.Sequential(OrderedDict(reduce=conv(in_channels, reduce, 1), conv=conv(reduce, out, k)))

        self.branch1x1 = conv(in_channels, spec.c1x1, 1)
        self.branch3x3 = reduced(spec.c3x3_reduce, spec.c3x3, 3)
        self.branch5x5 = reduced(spec.c5x5_reduce, spec.c5x5, large_kernel)
        pool = nn.MaxPool2d(3, 1, padding=1, ceil_mode=pool_ceil)
        self.branch_pool = (
            nn.Sequential(OrderedDict(pool=pool, proj=conv(in_channels, spec.pool_proj, 1))) if bottleneck else pool
        )
        self.out_channels = spec.out_channels if bottleneck else spec.c1x1 + spec.c3x3 + spec.c5x5 + in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1x1(x), self.branch3x3(x), self.branch5x5(x), self.branch_pool(x)], dim=1)


# Szegedy et al. 2014, Table 1, grouped by the max-pool that precedes each group.
GOOGLENET_STAGES: tuple[tuple[InceptionSpec, ...], ...] = (
    (InceptionSpec("3a", 64, 96, 128, 16, 32, 32), InceptionSpec("3b", 128, 128, 192, 32, 96, 64)),
    (
        InceptionSpec("4a", 192, 96, 208, 16, 48, 64),
        InceptionSpec("4b", 160, 112, 224, 24, 64, 64),
        InceptionSpec("4c", 128, 128, 256, 24, 64, 64),
        InceptionSpec("4d", 112, 144, 288, 32, 64, 64),
        InceptionSpec("4e", 256, 160, 320, 32, 128, 128),
    ),
    (InceptionSpec("5a", 256, 160, 320, 32, 128, 128), InceptionSpec("5b", 384, 192, 384, 48, 128, 128)),
)
AUX_TAPS = ("4a", "4d")  # the auxiliary classifiers read the outputs of these modules


class AuxClassifier(nn.Module):
    """Section 5: avg-pool 5x5/3, 1x1 conv 128 + ReLU, FC 1024 + ReLU, dropout 0.7, linear.

    At 224x224 the 14x14 map pools to 4x4. An adaptive pool to 4x4 follows so that other input
    sizes keep the 2048-wide FC (it does nothing at 224). torchvision pools adaptively only.
    """

    def __init__(self, in_channels: int, num_classes: int, *, batch_norm: bool = False) -> None:
        super().__init__()
        paper_pool = nn.Sequential(nn.AvgPool2d(5, 3), nn.AdaptiveAvgPool2d(4))
        self.pool = nn.AdaptiveAvgPool2d(4) if batch_norm else paper_pool
        self.conv = ConvBNAct(in_channels, 128, 1, norm=batch_norm)
        self.head = ClassifierHead(128 * 4 * 4, num_classes, pool=nn.Identity(), hidden=(1024,), hidden_dropout=0.7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting() and isinstance(self.pool, nn.Sequential) and min(x.shape[-2:]) < 5:
            raise InputShapeError(
                f"GoogLeNet's auxiliary classifiers average 5x5 windows of the 4a/4d maps, which are only "
                f"{x.shape[-2]}x{x.shape[-1]} for this input: use images of at least 80x80, or build the model "
                "with small_input=True"
            )
        return self.head(self.conv(self.pool(x)))


def refuse_aux_in_graph(return_aux: bool) -> None:
    """Refuse ``return_aux=True`` in a scripted or traced GoogLeNet, which computes the logits only."""
    if return_aux:
        raise ConfigError("a scripted or fx-traced GoogLeNet returns the logits only: call the model itself "
                          "for the auxiliary classifiers' outputs")


torch.fx.wrap("refuse_aux_in_graph")  # a node of the traced graph, so that the test runs with the graph


class GoogLeNet(ConvNet):
    """GoogLeNet: stem, inception stages 3, 4 and 5 with max-pools between, global average pool.

    ``forward(x)`` returns the logits only, in training as in evaluation;
    ``forward(x, return_aux=True)`` returns ``(logits, [aux_4a, aux_4d])`` for the training loss
    ``loss(logits) + AUX_LOSS_WEIGHT * (loss(aux_4a) + loss(aux_4d))``. A scripted
    (``torch.jit.script``) or traced (``torch.fx``) GoogLeNet is the inference network: logits only.

    Args:
        num_classes: outputs.
        in_chans: input channels.
        aux_logits: build the two auxiliary classifiers (they hold half the parameters).
        torchvision: torchvision's layout instead of the paper's (see the module docstring).
        dropout: before the final FC (0.4 in the paper, 0.2 in torchvision).
        small_input: for 32-64 px images: stride-1 first conv and no first max-pool
            (parameters unchanged).
    """

    aux_loss_weight = AUX_LOSS_WEIGHT

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        *,
        aux_logits: bool = True,
        torchvision: bool = False,
        dropout: float = 0.4,
        small_input: bool = False,
    ) -> None:
        super().__init__()
        bn = torchvision
        self.small_input = small_input
        # Table 1 rows "convolution 7x7/2", "max pool 3x3/2", "convolution 3x3/1" (with its 1x1
        # reduce), "max pool 3x3/2". Pools round up, as in the Caffe model (112 -> 56 -> 28).
        stem: OrderedDict[str, nn.Module] = OrderedDict()
        stem["conv1"] = ConvBNAct(in_chans, 64, 7, 1 if small_input else 2, norm=bn)
        if not small_input:
            stem["pool1"] = nn.MaxPool2d(3, 2, ceil_mode=True)
        if not bn:
            # Figure 3's LocalRespNorm; the paper gives no constants: these are its Caffe model's.
            stem["lrn1"] = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
        stem["conv2_reduce"] = ConvBNAct(64, 64, 1, norm=bn)
        stem["conv2"] = ConvBNAct(64, 192, 3, norm=bn)
        if not bn:
            stem["lrn2"] = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
        stem["pool2"] = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.stem = nn.Sequential(stem)

        stages, info, width = [], [], 192
        reduction = 2 if small_input else 8
        for i, specs in enumerate(GOOGLENET_STAGES):
            stage: OrderedDict[str, nn.Module] = OrderedDict()
            if i > 0:
                # torchvision's last pool is 2x2/2; the same 14 -> 7 at 224.
                stage["pool"] = nn.MaxPool2d(2 if bn and i == 2 else 3, 2, ceil_mode=True)
                reduction *= 2
            for spec in specs:
                stage[spec.name] = InceptionModule(width, spec, batch_norm=bn, large_kernel=3 if bn else 5,
                                                   pool_ceil=bn)
                width = spec.out_channels
            stages.append(nn.Sequential(stage))
            info.append(StageInfo(f"stages.{i}", width, reduction))
        self.stages = nn.Sequential(*stages)
        self.head = ClassifierHead(width, num_classes, dropout=dropout)
        channels = {spec.name: spec.out_channels for specs in GOOGLENET_STAGES for spec in specs}
        self.aux = (
            nn.ModuleDict({tap: AuxClassifier(channels[tap], num_classes, batch_norm=bn) for tap in AUX_TAPS})
            if aux_logits
            else None
        )
        he_init(self)
        self._finish(in_chans=in_chans, stage_info=info, input_size=(3, 224, 224), min_input_size=reduction)

    def reset_classifier(self, num_classes: int) -> None:
        super().reset_classifier(num_classes)
        if self.aux is not None:
            for aux in self.aux.values():
                aux.head.reset(num_classes)

    def forward(
        self, x: torch.Tensor, return_aux: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        if scripting_or_tracing():
            # The inference network: TorchScript wants one return type, and torch.fx passes return_aux
            # as a placeholder it cannot branch on. The graph refuses return_aux=True when it runs.
            refuse_aux_in_graph(return_aux)
            return self.forward_head(self.forward_features(x))
        if return_aux:
            return self.forward_with_aux(x)
        return self.forward_head(self.forward_features(x))

    @torch.jit.unused
    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(logits, [aux_4a, aux_4d])``: ``forward(x, return_aux=True)``."""
        if self.aux is None:
            raise ConfigError("this GoogLeNet was built with aux_logits=False: it has no auxiliary classifiers")
        x = self.prepare_input(x)
        aux_logits = []
        with self.one_value_per_channel_hint(x):
            x = self.stem(x)
            for stage in self.stages:
                for name, module in stage.named_children():
                    x = module(x)
                    if name in self.aux:
                        aux_logits.append(self.aux[name](x))
        return self.forward_head(x), aux_logits


@register_model(
    family="inception",
    input_size=(3, 224, 224),
    published=Published(13_378_280, 1_583_000_000, "Szegedy et al. 2014, Table 1, recounted with the auxiliary "
                        "classifiers (6,998,552 without)", approx=("macs",)),
)
def googlenet(
    num_classes: int = 1000, in_chans: int = 3, *, aux_logits: bool = True, dropout: float = 0.4,
    small_input: bool = False,
) -> GoogLeNet:
    """GoogLeNet / Inception v1 as published (Szegedy et al. 2014, Table 1): real 5x5s, no BatchNorm."""
    return GoogLeNet(num_classes, in_chans, aux_logits=aux_logits, dropout=dropout, small_input=small_input)


@register_model(
    family="inception",
    input_size=(3, 224, 224),
    published=Published(13_004_888, 1_498_376_192, "torchvision 0.28 (with auxiliary classifiers)"),
)
def googlenet_torchvision(
    num_classes: int = 1000, in_chans: int = 3, *, aux_logits: bool = True, dropout: float = 0.2,
    small_input: bool = False,
) -> GoogLeNet:
    """torchvision's GoogLeNet: BatchNorm, 3x3 in the "5x5" branch, no LRN (6,624,904 params without aux)."""
    return GoogLeNet(num_classes, in_chans, aux_logits=aux_logits, torchvision=True, dropout=dropout,
                     small_input=small_input)
