"""One parametrized test set over every registered model, plus the figures of the papers.

Expected figures are copied from ../shared/reference/ARCHITECTURES.md (and the peer counts of
peer_state_dicts.json), independently of the registry's own ``published`` metadata.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import convnets
from convnets.analysis import count
from convnets.layers import DropPath

ALL_MODELS = convnets.list_models()

# name: (params, MACs at the default input, whether the MAC figure is exact)
REFERENCE: dict[str, tuple[int, int | None, bool]] = {
    "lenet5_classic": (60_000, None, True),
    "lenet5": (61_706, None, True),
    "alexnet": (60_965_224, 724_000_000, False),
    "alexnet_torchvision": (61_100_840, 714_188_480, True),
    "vgg11": (132_863_336, 7_609_090_048, True),
    "vgg13": (133_047_848, 11_308_466_176, True),
    "vgg16": (138_357_544, 15_470_264_320, True),
    "vgg19": (143_667_240, 19_632_062_464, True),
    "vgg16_bn": (138_365_992, 15_470_264_320, True),
    "resnet18": (11_689_512, 1_814_073_344, True),
    "resnet34": (21_797_672, 3_663_761_408, True),
    "resnet50": (25_557_032, 3_858_000_000, False),
    "resnet101": (44_549_160, 7_570_000_000, False),
    "resnet152": (60_192_808, 11_282_000_000, False),
    "resnet50_torchvision": (25_557_032, 4_089_184_256, True),
    "resnet101_torchvision": (44_549_160, 7_801_405_440, True),
    "resnet152_torchvision": (60_192_808, 11_513_626_624, True),
    "resnet20": (269_722, 40_600_000, False),
    "resnet32": (464_154, 68_900_000, False),
    "resnet44": (658_586, 97_200_000, False),
    "resnet56": (853_018, 125_500_000, False),
    "resnet110": (1_727_962, 252_900_000, False),
    "plain20": (269_722, 40_600_000, False),
    "plain56": (853_018, 125_500_000, False),
    "plain110": (1_727_962, 252_900_000, False),
    "googlenet": (13_378_280, 1_583_000_000, False),
    "googlenet_torchvision": (13_004_888, 1_498_376_192, True),
    "mobilenet_v1": (4_231_976, 568_740_352, True),
    "mobilenet_v2": (3_504_872, 300_774_272, True),
    "efficientnet_b0": (5_288_548, 385_814_752, True),
    "efficientnet_b1": (7_794_184, 686_802_832, True),
    "efficientnet_b2": (9_109_994, 993_561_872, True),
    "efficientnet_b3": (12_233_232, 1_827_141_392, True),
    "efficientnet_b4": (19_341_616, 4_393_771_024, True),
    "efficientnet_b5": (30_389_784, 10_266_384_752, True),
    "efficientnet_b6": (43_040_704, 19_067_593_536, True),
    "efficientnet_b7": (66_347_960, 37_745_884_192, True),
}

# Howard et al. 2017, Table 6: width multipliers, params and MACs as the paper rounds them.
MOBILENET_V1_WIDTHS = {0.75: (2.6e6, 325e6), 0.5: (1.3e6, 149e6), 0.25: (0.5e6, 41e6)}


def rounding_tolerance(figure: float) -> float:
    """Half a unit of the last significant digit a rounded figure gives (3_858_000_000 -> 500_000)."""
    digits = str(int(figure)).rstrip("0")
    return 0.5 * 10 ** (len(str(int(figure))) - len(digits))


def trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_every_family_is_registered() -> None:
    families = {convnets.model_entry(n).family for n in ALL_MODELS}
    assert {
        "lenet",
        "alexnet",
        "vgg",
        "resnet",
        "plain",
        "resnet_cifar",
        "plain_cifar",
        "nin",
        "inception",
        "mobilenet_v1",
        "mobilenet_v2",
        "efficientnet",
    } <= families
    assert set(REFERENCE) <= set(ALL_MODELS)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_params_and_macs_match_reference(name: str) -> None:
    params, macs, exact = REFERENCE[name]
    with torch.device("meta"):
        model = convnets.create_model(name)
    counted = count(model)
    assert counted.params == params
    if macs is not None:
        tolerance = 0 if exact else rounding_tolerance(macs)
        assert abs(counted.macs - macs) <= tolerance, f"{name}: {counted.macs:,} MACs vs published {macs:,}"


@pytest.mark.parametrize("name", [n for n in ALL_MODELS if convnets.model_entry(n).published])
def test_registry_published_figures_agree_with_our_counts(name: str) -> None:
    # `convnets list` prints these side by side: an exact published figure must be ours exactly.
    published = convnets.model_entry(name).published
    with torch.device("meta"):
        counted = count(convnets.create_model(name))
    for figure, ours in (("params", counted.params), ("macs", counted.macs)):
        theirs = getattr(published, figure)
        if theirs is None:
            continue
        tolerance = 0 if published.is_exact(figure) else rounding_tolerance(theirs)
        assert abs(ours - theirs) <= tolerance, f"{name} {figure}: ours {ours:,}, published {theirs:,}"


@pytest.mark.parametrize("width", sorted(MOBILENET_V1_WIDTHS))
def test_mobilenet_v1_width_multipliers_match_paper_table(width: float) -> None:
    params, macs = MOBILENET_V1_WIDTHS[width]
    with torch.device("meta"):
        counted = count(convnets.create_model("mobilenet_v1", width=width))
    assert abs(counted.params - params) <= rounding_tolerance(params)
    assert abs(counted.macs - macs) <= rounding_tolerance(macs)


@pytest.mark.parametrize(("resolution", "macs"), [(192, 418e6), (160, 290e6), (128, 186e6)])
def test_mobilenet_v1_resolution_multiplier_matches_paper_table(resolution: int, macs: float) -> None:
    with torch.device("meta"):
        model = convnets.create_model("mobilenet_v1", image_size=resolution)
    assert model.input_size == (3, resolution, resolution)
    assert abs(count(model).macs - macs) <= rounding_tolerance(macs)


def small_input_size(model: convnets.ConvNet) -> int:
    return 32 if model.fixed_input_size is None and model.min_input_size <= 32 else max(model.min_input_size, 32)


# The paper's GoogLeNet auxiliary heads pool 5x5 windows: too large at 32x32 unless the stem adapts.
SMALL_INPUT_KWARGS = {"googlenet": {"small_input": True}}


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL_MODELS)
def test_common_interface(name: str) -> None:
    model = convnets.create_model(name, num_classes=7, in_chans=1, **SMALL_INPUT_KWARGS.get(name, {}))
    # Eval mode for the gradient check: in training mode a BatchNorm after a 1x1 conv cancels any
    # per-channel shift of its input, so the bias before it gets an exactly zero gradient.
    model.eval()
    assert isinstance(model, convnets.ConvNet) and model.name == name
    size = small_input_size(model)
    x = torch.randn(2, 1, size, size)

    # Output shape for an odd number of classes, and a gradient reaching every parameter.
    for module in model.modules():
        if isinstance(module, DropPath):
            module.p = 0.0  # a randomly dropped branch would get no gradient
    logits = model(x)
    assert logits.shape == (2, 7)
    assert model.train()(x).shape == (2, 7)  # training mode returns the same type
    model.eval()
    if hasattr(model, "aux") and model.aux is not None:
        logits, aux = model(x, return_aux=True)
        logits = logits + sum(aux)
    logits.square().sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reaches {missing}"

    # forward_features -> forward_head is forward; pre_logits gives num_features.
    with torch.no_grad():
        features = model.forward_features(x)
        torch.testing.assert_close(model.forward_head(features), model(x))
        assert model.forward_head(features, pre_logits=True).shape == (2, model.num_features)

        # reset_classifier: 0 returns the features, n a fresh n-way head.
        model.reset_classifier(0)
        assert model(x).shape == (2, model.num_features) and model.num_classes == 0
        model.reset_classifier(3)
        assert model(x).shape == (2, 3) and model.num_classes == 3


# Nets whose convolutions or pools are unpadded shrink the maps by more than their strides.
UNPADDED = {"lenet5", "lenet5_classic", "alexnet", "alexnet_torchvision", "nin"}


@pytest.mark.parametrize("name", ALL_MODELS)
def test_stage_info_matches_real_shapes(name: str) -> None:
    with torch.device("meta"):
        model = convnets.create_model(name).eval()
    c, h, w = model.input_size
    if name not in UNPADDED:
        h = w = 2 * model.stage_info[-1].reduction * 3  # divisible by every stride
    shapes: dict[str, torch.Size] = {}
    hooks = [
        model.get_submodule(info.name).register_forward_hook(
            lambda mod, inp, out, key=info.name: shapes.__setitem__(key, out.shape)
        )
        for info in model.stage_info
    ]
    model.forward_features(torch.empty(1, c, h, w, device="meta"))
    for hook in hooks:
        hook.remove()
    assert [i.name for i in model.stage_info] == [f"stages.{i}" for i in range(len(model.stages))]
    reductions = [i.reduction for i in model.stage_info]
    assert reductions == sorted(reductions)
    for info in model.stage_info:
        shape = shapes[info.name]
        assert shape[1] == info.channels, info
        if name not in UNPADDED:
            assert shape[2:] == (h // info.reduction, w // info.reduction), info
        else:
            assert shape[2] <= h // info.reduction, info


@pytest.mark.parametrize("name", ALL_MODELS)
def test_minimum_input_size_runs(name: str) -> None:
    with torch.device("meta"):
        model = convnets.create_model(name).eval()
    size = model.fixed_input_size or (model.min_input_size, model.min_input_size)
    out = model(torch.empty(1, model.in_chans, *size, device="meta"))
    assert out.shape == (1, model.num_classes)


@pytest.mark.parametrize(
    "name",
    ["alexnet", "alexnet_torchvision", "googlenet", "resnet50", "mobilenet_v2", "efficientnet_b0", "mobilenet_v1"],
)
def test_small_input_stem_keeps_params_and_runs_at_32(name: str) -> None:
    with torch.device("meta"):
        default = convnets.create_model(name)
        small = convnets.create_model(name, small_input=True)
    assert trainable(small) == trainable(default)
    assert small.min_input_size <= 32
    assert small(torch.empty(2, 3, 32, 32, device="meta")).shape == (2, 1000)


def test_alexnet_at_32_without_small_input_says_what_to_change() -> None:
    model = convnets.create_model("alexnet")
    with pytest.raises(convnets.InputShapeError, match=r"alexnet expects .* H, W >= 67.*small_input=True"):
        model(torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize(
    ("name", "shape", "message"),
    [
        ("resnet18", (3, 224, 224), r"resnet18 expects a batch of images \(N, 3, H, W\).*x.unsqueeze\(0\)"),
        ("resnet18", (2, 1, 64, 64), r"resnet18 expects \(N, 3, H, W\) with H, W >= 32.*1 channel;.*in_chans=1"),
        ("lenet5", (2, 1, 28, 28), r"lenet5 expects \(N, 1, 32, 32\).*28x28 images; resize or pad them to 32x32"),
        ("resnet20", (2, 3, 2, 2), r"resnet20 expects .*2x2 images, smaller than its minimum 4x4"),
    ],
)
def test_wrong_input_shape_names_model_and_expected_shape(name: str, shape: tuple, message: str) -> None:
    model = convnets.create_model(name)
    with pytest.raises(convnets.InputShapeError, match=message):
        model(torch.randn(*shape))


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(convnets.UnknownModelError, match=r"Unknown model 'resnet5'.*Did you mean: .*resnet50"):
        convnets.create_model("resnet5")
    assert convnets.create_model("MobileNet-V2").name == "mobilenet_v2"


def test_list_models_pattern() -> None:
    assert convnets.list_models("resnet*") == sorted(n for n in ALL_MODELS if n.startswith("resnet"))
    assert "vgg16_bn" in convnets.list_models("vgg*_bn")
    assert convnets.list_models("nothing*") == []


def test_registering_a_name_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="registered twice"):

        @convnets.register_model(family="lenet", input_size=(1, 32, 32))
        def lenet5():  # noqa: ANN202
            raise AssertionError


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("mobilenet_v2", {"width": 0}, "width must be > 0 and <= 4"),
        ("mobilenet_v1", {"width": -0.5}, "width must be > 0 and <= 4"),
        ("resnet18", {"shortcut": "D"}, "shortcut must be"),
        ("resnet50", {"downsample_on": "5x5"}, "downsample_on must be"),
        ("resnet18", {"num_classes": -1}, "num_classes must be a whole number from 0 to 100,000"),
        ("mobilenet_v1", {"image_size": 16}, "image_size must be a whole number from 32 to 4,096"),
    ],
)
def test_invalid_hyperparameters_get_clear_errors(name: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        convnets.create_model(name, **kwargs)


def test_unexpected_keyword_is_a_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match="widht"):
        convnets.create_model("mobilenet_v2", widht=0.5)


@pytest.mark.parametrize("name", ["alexnet", "vgg16", "googlenet", "nin"])
def test_nets_without_batchnorm_keep_their_signal_at_initialisation(name: str) -> None:
    # With PyTorch's default init the features of these ReLU stacks shrink to ~1e-2 (VGG-16: 5e-3)
    # and SGD does not move them for a hundred steps; He init keeps them near unit scale.
    torch.manual_seed(0)
    kwargs = {"small_input": True} if name in ("alexnet", "googlenet") else {}
    net = convnets.create_model(name, num_classes=10, **kwargs).eval()
    with torch.no_grad():
        features = net.forward_features(torch.randn(4, 3, 32, 32))
    assert 0.2 < features.std().item() < 5
    assert all(not m.bias.detach().any() for m in net.modules() if isinstance(m, nn.Conv2d) and m.bias is not None)
