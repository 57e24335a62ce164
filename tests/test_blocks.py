"""Family-specific facts of the papers, checked on the blocks and networks themselves."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import convnets
from convnets.analysis import count
from convnets.layers import (
    ConvBNAct,
    DepthwiseConv2d,
    InvertedResidual,
    SqueezeExcite,
    ZeroPadShortcut,
    local_response_norm,
    make_divisible,
)
from convnets.models.efficientnet import ALPHA, BETA, GAMMA, compound_scaling, efficientnet_scaled
from convnets.models.inception import AUX_LOSS_WEIGHT, InceptionModule, InceptionSpec
from convnets.models.lenet import C3_TABLE, PartialConv2d, ScaledTanh
from convnets.models.nin import MLPConv, conv1x1
from convnets.models.resnet import BasicBlock


def test_1x1_convolution_is_a_fully_connected_layer_at_every_pixel() -> None:
    conv = conv1x1(192, 32)
    linear = nn.Linear(192, 32)
    linear.weight.data.copy_(conv.weight.data.view(32, 192))
    linear.bias.data.copy_(conv.bias.data)
    x = torch.randn(2, 192, 7, 5)
    per_pixel = linear(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    torch.testing.assert_close(conv(x), per_pixel)


def test_mlpconv_is_a_small_mlp_slid_over_the_image() -> None:
    block = MLPConv(3, 16, 3, (8, 4))
    assert block(torch.randn(1, 3, 10, 12)).shape == (1, 4, 10, 12)
    assert [m.kernel_size for m in block if isinstance(m, nn.Conv2d)] == [(3, 3), (1, 1), (1, 1)]


def test_local_response_norm_follows_the_alexnet_formula() -> None:
    x = torch.randn(1, 12, 3, 3)
    k, n, alpha, beta = 2.0, 5, 1e-4, 0.75
    expected = torch.empty_like(x)
    for c in range(12):
        lo, hi = max(0, c - n // 2), min(11, c + n // 2)
        expected[:, c] = x[:, c] / (k + alpha * x[:, lo : hi + 1].pow(2).sum(1)).pow(beta)
    torch.testing.assert_close(local_response_norm()(x), expected)


@pytest.mark.parametrize(("value", "expected"), [(32, 32), (24, 24), (32 * 0.75, 24), (1280 * 1.1, 1408), (11, 16),
                                                 (3, 8), (36.0, 40)])
def test_make_divisible_rounds_to_multiples_of_8_without_losing_more_than_10_percent(value, expected) -> None:
    assert make_divisible(value) == expected
    assert make_divisible(value) >= 0.9 * value


def test_zero_pad_shortcut_subsamples_and_pads_with_zeros() -> None:
    x = torch.randn(2, 16, 8, 8)
    out = ZeroPadShortcut(16, 32, 2)(x)
    assert out.shape == (2, 32, 4, 4)
    torch.testing.assert_close(out[:, :16], x[:, :, ::2, ::2])
    assert out[:, 16:].abs().sum() == 0


def _zero_residual_branch(block: nn.Module) -> None:
    for module in block.modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)


@pytest.mark.parametrize("option", ["A", "B", "C"])
def test_residual_block_passes_its_input_when_the_branch_is_zero(option: str) -> None:
    # relu(F(x) + x) with F = 0 is relu(x): the identity is easy to learn (He et al. Section 3.1).
    block = BasicBlock(8, 8, 1, option).eval()
    _zero_residual_branch(block)
    if option == "C":
        block.shortcut.conv.weight.data = torch.eye(8).view(8, 8, 1, 1)
        nn.init.ones_(block.shortcut.bn.weight)
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(block(x), torch.relu(x), atol=1e-4, rtol=1e-4)


def test_plain_block_has_no_shortcut() -> None:
    block = BasicBlock(8, 8, 1, None).eval()
    _zero_residual_branch(block)
    assert block.shortcut is None
    assert block(torch.randn(2, 8, 5, 5)).abs().sum() == 0


def test_shortcut_options_differ_only_in_projection_parameters() -> None:
    params = {opt: sum(p.numel() for p in convnets.create_model("resnet20", shortcut=opt).parameters())
              for opt in ("A", "B", "C")}
    plain = sum(p.numel() for p in convnets.create_model("plain20").parameters())
    assert params["A"] == plain == 269_722  # option A adds no parameters
    # Option B projects at the two stage transitions: 1x1 conv + BN, 16->32 and 32->64.
    assert params["B"] - params["A"] == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    assert params["C"] > params["B"]


def test_stride_placement_changes_macs_not_params() -> None:
    with torch.device("meta"):
        paper = count(convnets.create_model("resnet50"))
        tv = count(convnets.create_model("resnet50", downsample_on="3x3"))
    assert paper.params == tv.params
    assert tv.macs == 4_089_184_256 and paper.macs < tv.macs


def test_cifar_resnet_depth_must_be_6n_plus_2() -> None:
    from convnets.models.resnet import cifar_spec

    assert cifar_spec(56).layers == (9, 9, 9)
    with pytest.raises(ValueError, match="6n \\+ 2"):
        cifar_spec(21)


@pytest.mark.parametrize("bottleneck", [True, False])
def test_inception_module_concatenates_branches_for_any_widths(bottleneck: bool) -> None:
    spec = InceptionSpec("x", 5, 3, 7, 2, 4, 6)
    module = InceptionModule(11, spec, bottleneck=bottleneck)
    out = module(torch.randn(2, 11, 9, 13))
    expected = 5 + 7 + 4 + (6 if bottleneck else 11)  # the naive pool branch keeps all input channels
    assert out.shape == (2, expected, 9, 13) and module.out_channels == expected


def test_inception_bottleneck_cuts_the_5x5_branch_cost_tenfold() -> None:
    # The course's numbers: 28x28x192 -> 32 maps of 5x5: 120,422,400 naive, 12,443,648 via a 16-channel 1x1.
    naive = nn.Conv2d(192, 32, 5, padding=2, bias=False)
    bottleneck = nn.Sequential(nn.Conv2d(192, 16, 1, bias=False), nn.Conv2d(16, 32, 5, padding=2, bias=False))
    assert count(naive, (192, 28, 28)).macs == 120_422_400
    assert count(bottleneck, (192, 28, 28)).macs == 12_443_648


def test_googlenet_aux_classifiers_come_back_only_when_asked() -> None:
    model = convnets.create_model("googlenet", num_classes=5, small_input=True).train()
    x = torch.randn(2, 3, 32, 32)
    assert isinstance(model(x), torch.Tensor)  # never a tuple, whatever the mode
    logits, aux = model(x, return_aux=True)
    assert logits.shape == (2, 5) and [a.shape for a in aux] == [(2, 5), (2, 5)]
    assert AUX_LOSS_WEIGHT == 0.3
    model.reset_classifier(4)
    assert [a.shape for a in model(x, return_aux=True)[1]] == [(2, 4), (2, 4)]
    with pytest.raises(ValueError, match="aux_logits=False"):
        convnets.create_model("googlenet", aux_logits=False)(torch.randn(1, 3, 224, 224), return_aux=True)


def test_googlenet_paper_layout_uses_real_5x5_and_no_batchnorm() -> None:
    model = convnets.create_model("googlenet", aux_logits=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert model.stages[1].get_submodule("4a").branch5x5.conv.conv.kernel_size == (5, 5)
    assert sum(p.numel() for p in model.parameters()) == 6_998_552
    tv = convnets.create_model("googlenet_torchvision", aux_logits=False)
    assert tv.stages[1].get_submodule("4a").branch5x5.conv.conv.kernel_size == (3, 3)
    assert sum(p.numel() for p in tv.parameters()) == 6_624_904


def test_googlenet_aux_heads_on_too_small_maps_say_what_to_do() -> None:
    model = convnets.create_model("googlenet")
    with pytest.raises(convnets.InputShapeError, match="at least 80x80.*small_input=True"):
        model(torch.randn(1, 3, 64, 64), return_aux=True)


def test_lenet5_classic_c3_reads_only_its_table() -> None:
    c3 = PartialConv2d(6, C3_TABLE, 5)
    assert c3.weight.numel() + c3.bias.numel() == 1_516
    x = torch.randn(1, 6, 14, 14)
    base = c3(x)
    for source in range(6):
        bumped = x.clone()
        bumped[:, source] += 1.0
        changed = (c3(bumped) - base).abs().flatten(2).sum(2)[0] > 0
        assert changed.tolist() == [source in inputs for inputs in C3_TABLE]


def test_lenet5_classic_layers() -> None:
    model = convnets.create_model("lenet5_classic")
    per_layer = {name: sum(p.numel() for p in module.parameters()) for name, module in
                 [("C1", model.stages[0].conv), ("S2", model.stages[0].pool), ("C3", model.stages[1].conv),
                  ("S4", model.stages[1].pool), ("C5", model.stages[2].conv), ("F6", model.head.hidden)]}
    assert per_layer == {"C1": 156, "S2": 12, "C3": 1_516, "S4": 32, "C5": 48_120, "F6": 10_164}
    assert sum(per_layer.values()) == 60_000
    torch.testing.assert_close(ScaledTanh()(torch.tensor([1.0, -1.0])), torch.tensor([1.0, -1.0]), atol=2e-4, rtol=0)
    # The RBF output is minus the squared distance to each class code: the nearest code wins.
    rbf = model.head.fc
    codes = rbf.codes
    scores = rbf(codes[3:4] + 0.01)
    assert scores.argmax().item() == 3
    torch.testing.assert_close(scores[0, 3], -(0.01**2) * codes.shape[1] * torch.ones(()))


def test_alexnet_two_towers_and_shapes() -> None:
    with torch.device("meta"):
        model = convnets.create_model("alexnet")
    assert [stage.conv.groups for stage in model.stages] == [1, 2, 1, 2, 2]  # conv3 reads both towers
    shapes = []
    for stage in model.stages:
        stage.conv.register_forward_hook(lambda mod, inp, out: shapes.append(tuple(out.shape[1:])))
    model(torch.empty(1, 3, 227, 227, device="meta"))
    assert shapes == [(96, 55, 55), (256, 27, 27), (384, 13, 13), (384, 13, 13), (256, 13, 13)]
    assert [hasattr(stage, "lrn") for stage in model.stages] == [True, True, False, False, False]


def test_mobilenet_v2_blocks() -> None:
    model = convnets.create_model("mobilenet_v2")
    blocks = [m for m in model.modules() if isinstance(m, InvertedResidual)]
    assert len(blocks) == 17
    assert sum(b.use_residual for b in blocks) == 10  # stride 1 and equal widths
    assert all(not hasattr(b.project, "act") for b in blocks)  # linear bottleneck
    assert all(b.dw.conv.groups == b.dw.conv.in_channels for b in blocks)


def test_mobilenet_v1_is_13_depthwise_separable_blocks() -> None:
    model = convnets.create_model("mobilenet_v1")
    depthwise = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 13 and all(m.groups == m.in_channels == m.out_channels for m in depthwise)


def test_efficientnet_blocks_use_squeeze_excite_swish_and_growing_drop_path() -> None:
    model = convnets.create_model("efficientnet_b0")
    blocks = [m for m in model.modules() if isinstance(m, InvertedResidual)]
    assert len(blocks) == 16
    assert all(isinstance(b.se, SqueezeExcite) for b in blocks)
    assert all(isinstance(b.dw.act, nn.SiLU) for b in blocks)
    drops = [b.drop_path.p for b in blocks if not isinstance(b.drop_path, nn.Identity)]
    assert drops == sorted(drops) and 0 < drops[-1] < 0.2


def test_compound_scaling_roughly_doubles_macs_per_phi() -> None:
    assert ALPHA * BETA**2 * GAMMA**2 == pytest.approx(1.92, abs=0.01)
    with torch.device("meta"):
        b0 = count(efficientnet_scaled(0))
        phi1 = count(efficientnet_scaled(1))
        phi2 = count(efficientnet_scaled(2))
        published_b0 = count(convnets.create_model("efficientnet_b0"))
    assert b0.macs == published_b0.macs and b0.params == published_b0.params
    assert 1.6 < phi1.macs / b0.macs < 2.4 and 1.6 < phi2.macs / phi1.macs < 2.4
    assert compound_scaling(1).resolution == 256


def test_negative_phi_is_refused() -> None:
    with pytest.raises(ValueError, match="phi must be >= 0"):
        efficientnet_scaled(-1)


def test_conv_bn_act_names_read_as_paths() -> None:
    block = ConvBNAct(3, 8, 3, 2)
    assert list(dict(block.named_children())) == ["conv", "bn", "act"]
    assert block.conv.bias is None  # BatchNorm's shift replaces the bias


def test_depthwise_convolutions_stay_fp32_under_cpu_autocast_and_dense_ones_do_not() -> None:
    """Only depthwise layers opt out of bf16 (oneDNN's bf16 depthwise kernels are slow); weights and keys unchanged."""
    block = ConvBNAct(8, 8, 3, 2, groups=8)
    dense = ConvBNAct(8, 16, 3)
    assert isinstance(block.conv, DepthwiseConv2d) and type(dense.conv) is nn.Conv2d
    assert type(ConvBNAct(8, 16, 3, groups=8).conv) is nn.Conv2d  # grouped but not one filter per channel
    assert list(block.state_dict()) == ["conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
                                        "bn.num_batches_tracked"]
    x = torch.randn(2, 8, 9, 9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        depthwise_out, dense_out = block.conv(x.bfloat16()), dense.conv(x)
    assert depthwise_out.dtype == torch.float32 and dense_out.dtype == torch.bfloat16
    torch.testing.assert_close(depthwise_out, nn.functional.conv2d(x.bfloat16().float(), block.conv.weight,
                                                                  stride=2, padding=1, groups=8))
    block.conv.fp32_under_autocast = False  # what autocast would do alone
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert block.conv(x).dtype == torch.bfloat16
