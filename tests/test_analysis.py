"""Counting (params, MACs) and the layer table.

Ground truth: hand-computed tiny models, /work/shared/reference/ARCHITECTURES.md (copied
below as literals so the test does not depend on that file), and the exact peer counts of
torchvision / timm (peer_state_dicts.json, same figures as ARCHITECTURES.md's first table).
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convnets
from convnets.analysis import Counts, count, counting, summary
from convnets.analysis.catalog import agreement, build_for_counting
from convnets.analysis.counting import ROOT, meta_copy
from convnets.layers import SqueezeExcite

# ---------------------------------------------------------------- hand-computed tiny models


def test_conv_macs_follow_the_rule_with_groups_stride_and_padding():
    conv = nn.Conv2d(8, 12, kernel_size=(3, 5), stride=2, padding=(1, 2), groups=4)
    c = count(conv, input_size=(8, 9, 11))
    # output 5 x 6 (floor((9+2-3)/2)+1, floor((11+4-5)/2)+1); each value costs (8/4)*3*5 MACs.
    assert c.output_shape == (1, 12, 5, 6)
    assert c.macs == 5 * 6 * 12 * (8 // 4) * 3 * 5
    assert c.params == 12 * 2 * 3 * 5 + 12


def test_linear_counts_rows_times_in_times_out_and_bias_is_free():
    with_bias = count(nn.Linear(7, 5), input_size=(4, 7), batch=3)
    without = count(nn.Linear(7, 5, bias=False), input_size=(4, 7), batch=3)
    assert with_bias.macs == without.macs == 3 * 4 * 7 * 5
    assert with_bias.params - without.params == 5


def test_bn_activation_pooling_and_residual_adds_are_not_counted():
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            return F.max_pool2d(torch.relu(self.bn(self.conv(x))) + x, 2)

    c = count(Residual(), input_size=(4, 6, 6))
    assert c.macs == 6 * 6 * 4 * 4 * 9
    assert c.params == 4 * 4 * 9 + 2 * 4  # BN weight + bias; running stats are buffers


def test_squeeze_excite_counts_its_two_1x1_convs_only():
    c = count(SqueezeExcite(16, 4), input_size=(16, 7, 7))
    # Global pool to 1x1, then 16->4 and 4->16; the x * scale multiply is not counted.
    assert c.macs == 16 * 4 + 4 * 16


def test_functional_conv_inside_a_custom_module_is_counted():
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(3, 2, 3, 3))

        def forward(self, x):
            return F.conv2d(x, self.weight)

    c = count(Functional(), input_size=(2, 5, 5))
    assert c.macs == 3 * 3 * 3 * 2 * 9
    assert c.layers[0].self_macs == c.macs


def test_transposed_conv_counts_each_input_pixel_times_the_kernel():
    c = count(nn.ConvTranspose2d(4, 6, 2, stride=2), input_size=(4, 3, 3))
    assert c.output_shape == (1, 6, 6, 6)
    assert c.macs == 3 * 3 * 4 * 6 * 2 * 2


def test_batch_scales_macs_not_params():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 2))
    one, four = count(model, (3, 6, 6)), count(model, (3, 6, 6), batch=4)
    assert four.macs == 4 * one.macs
    assert four.params == one.params
    assert four.flops == 2 * four.macs


class _Declared(nn.Module):
    """A dense conv that declares fewer real MACs, like LeNet-5's partially connected C3."""

    def __init__(self, declared: int) -> None:
        super().__init__()
        self.inner = nn.Conv2d(2, 2, 1)
        self.declared = declared

    def forward(self, x):
        return self.inner(x)

    def count_macs(self, inputs: tuple, output: torch.Tensor) -> int:
        assert inputs[0].shape == (1, 2, 4, 4)  # the protocol hands over the real inputs and output
        return self.declared


def test_count_macs_protocol_replaces_the_children():
    model = nn.Sequential(_Declared(7), nn.Conv2d(2, 1, 1, bias=False))
    c = count(model, input_size=(2, 4, 4))
    assert c.layer("0").macs == 7
    assert c.layer("0.inner").macs == 0  # not descended into
    assert c.macs == 7 + 4 * 4 * 2
    assert c.layer("").macs == c.macs


def test_params_are_trainable_only_and_shared_params_count_once():
    shared = nn.Linear(3, 3)
    model = nn.Sequential(shared, nn.ReLU(), shared, nn.Linear(3, 2))
    model[3].weight.requires_grad_(False)
    c = count(model, input_size=(3,))
    assert c.params == 12 + 2
    assert c.frozen_params == 6
    assert c.macs == 9 + 9 + 6  # a module run twice is counted twice
    assert c.layer("0").calls == 2


def test_modules_that_never_run_are_reported_as_unused():
    class WithAux(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.main = nn.Linear(4, 2)
            self.aux = nn.Linear(4, 3)

        def forward(self, x, return_aux: bool = False):
            return (self.main(x), self.aux(x)) if return_aux else self.main(x)

    plain = count(WithAux(), (4,))
    assert (plain.params, plain.unused_params, plain.macs) == (10 + 15, 15, 8)
    assert plain.layer("aux").calls == 0
    with_aux = count(WithAux(), (4,), forward_kwargs={"return_aux": True})
    assert (with_aux.unused_params, with_aux.macs, with_aux.output_shape) == (0, 8 + 12, ((1, 2), (1, 3)))


def test_input_size_defaults_to_the_model_and_is_validated():
    with pytest.raises(ValueError, match="input_size"):
        count(nn.Conv2d(1, 1, 1))
    with pytest.raises(ValueError, match="positive"):
        count(nn.Conv2d(1, 1, 1), (1, 0, 4))
    with pytest.raises(ValueError, match="batch"):
        count(nn.Conv2d(1, 1, 1), (1, 4, 4), batch=0)
    model = convnets.create_model("lenet5")
    assert count(model).input_size == (1, 32, 32)


# ---------------------------------------------------------------- no side effects


class _Probe(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(self.bn(self.conv(x)))


def _snapshot(model: nn.Module) -> dict:
    return {
        "training": {n: m.training for n, m in model.named_modules()},
        "tensors": {n: (t.device, t.data_ptr(), t.clone()) for n, t in model.state_dict(keep_vars=True).items()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        "hooks": {n: (len(m._forward_hooks), len(m._forward_pre_hooks)) for n, m in model.named_modules()},
    }


def _assert_same(before: dict, after: dict) -> None:
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["hooks"] == before["hooks"]
    for name, (device, ptr, value) in before["tensors"].items():
        device2, ptr2, value2 = after["tensors"][name]
        assert (device2, ptr2) == (device, ptr), name  # same storage, same device: nothing moved to meta
        assert torch.equal(value2, value), name  # BN running stats and num_batches_tracked unchanged
    for name, grad in before["grads"].items():
        assert (grad is None) == (after["grads"][name] is None)
        if grad is not None:
            assert torch.equal(grad, after["grads"][name])


@pytest.mark.parametrize("training", [True, False])
def test_counting_has_no_side_effects_on_the_model(training):
    model = _Probe().train(training)
    model.bn.eval()  # mixed per-module flags must survive too
    model(torch.randn(2, 3, 5, 5)).sum().backward()  # real grads and BN statistics to protect
    calls = []
    model.conv.register_forward_hook(lambda *a: calls.append("post"))
    model.register_forward_pre_hook(lambda *a: calls.append("pre"))
    calls.clear()
    before = _snapshot(model)

    c = count(model, (3, 5, 5))
    s = summary(model, (3, 5, 5))

    assert calls == []  # the user's hooks were never run
    _assert_same(before, _snapshot(model))
    assert c.macs == s.macs == 3 * 3 * 4 * 3 * 9
    model(torch.randn(1, 3, 5, 5))
    assert calls == ["pre", "post"]  # and are still installed


def test_meta_copy_is_on_meta_and_leaves_the_original_on_its_device():
    model = _Probe()
    shadow = meta_copy(model)
    assert all(t.is_meta for t in [*shadow.parameters(), *shadow.buffers()])
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    assert not shadow.training and model.training


def test_lenet5_classic_counts_its_real_connections_without_side_effects():
    # A real-weights model in training mode whose C3 declares its MACs through count_macs.
    model = convnets.create_model("lenet5_classic").train()
    before = _snapshot(model)
    c = count(model)
    _assert_same(before, _snapshot(model))
    # C1 117,600 + C3 100 positions x 1,500 real connections + C5 48,000 + F6 10,080 + RBF 840.
    assert (c.params, c.macs) == (60_000, 117_600 + 150_000 + 48_000 + 10_080 + 840)


def test_value_dependent_forward_falls_back_but_a_shape_error_does_not(monkeypatch):
    class ItemScaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(x) * x.sum().item()  # .item() needs values: impossible on meta

    assert count(ItemScaled(), (3,)).macs == 6

    def no_cpu_copy(model):
        raise AssertionError("a shape error must not be retried with real arithmetic")

    monkeypatch.setattr(counting, "cpu_copy", no_cpu_copy)
    with pytest.raises(RuntimeError, match="reduction dim"):
        count(nn.Linear(10, 2), (3,))


# ---------------------------------------------------------------- registered models


@functools.cache
def _counted(name: str, input_size: tuple[int, int, int] | None = None) -> Counts:
    return count(build_for_counting(name), input_size)


# ARCHITECTURES.md, "Paper tables" recounts: (params, MACs or None, MACs rounding unit).
PAPER = {
    "lenet5_classic": (60_000, None, 0),
    "lenet5": (61_706, None, 0),
    "alexnet": (60_965_224, 724_000_000, 1_000_000),
    "vgg16": (138_357_544, 15_470_264_320, 0),
    "resnet20": (269_722, 40_600_000, 100_000),
    "resnet32": (464_154, 68_900_000, 100_000),
    "resnet44": (658_586, 97_200_000, 100_000),
    "resnet56": (853_018, 125_500_000, 100_000),
    "resnet110": (1_727_962, 252_900_000, 100_000),
    "plain20": (269_722, 40_600_000, 100_000),
    "plain110": (1_727_962, 252_900_000, 100_000),
    "resnet50": (25_557_032, 3_858_000_000, 1_000_000),
    "resnet101": (44_549_160, 7_570_000_000, 1_000_000),
    "resnet152": (60_192_808, 11_282_000_000, 1_000_000),
    "googlenet": (13_378_280, 1_583_000_000, 1_000_000),
    "mobilenet_v1": (4_231_976, 568_700_000, 100_000),
    "mobilenet_v2": (3_504_872, 300_800_000, 100_000),
}

# peer_state_dicts.json: exact torchvision / timm counts (peer name -> params, MACs, input).
PEERS = {
    "alexnet": (61_100_840, 714_188_480, 224),
    "vgg11": (132_863_336, 7_609_090_048, 224),
    "vgg13": (133_047_848, 11_308_466_176, 224),
    "vgg16": (138_357_544, 15_470_264_320, 224),
    "vgg19": (143_667_240, 19_632_062_464, 224),
    "vgg16_bn": (138_365_992, 15_470_264_320, 224),
    "resnet18": (11_689_512, 1_814_073_344, 224),
    "resnet34": (21_797_672, 3_663_761_408, 224),
    "resnet50": (25_557_032, 4_089_184_256, 224),
    "resnet101": (44_549_160, 7_801_405_440, 224),
    "resnet152": (60_192_808, 11_513_626_624, 224),
    "googlenet": (13_004_888, 1_498_376_192, 224),
    "mobilenet_v2": (3_504_872, 300_774_272, 224),
    "mobilenet_v1": (4_231_976, 568_740_352, 224),  # timm mobilenetv1_100
    "efficientnet_b0": (5_288_548, 385_814_752, 224),
    "efficientnet_b1": (7_794_184, 686_802_832, 240),
    "efficientnet_b2": (9_109_994, 993_561_872, 260),
    "efficientnet_b3": (12_233_232, 1_827_141_392, 300),
    "efficientnet_b4": (19_341_616, 4_393_771_024, 380),
    "efficientnet_b5": (30_389_784, 10_266_384_752, 456),
    "efficientnet_b6": (43_040_704, 19_067_593_536, 528),
    "efficientnet_b7": (66_347_960, 37_745_884_192, 600),
}


def _peer_model(peer: str) -> str | None:
    """Our registered name for a peer model: ``<peer>_torchvision`` where both readings exist."""
    registered = set(convnets.list_models())
    for name in (f"{peer}_torchvision", peer):
        if name in registered:
            return name
    return None


@pytest.mark.parametrize("peer", sorted(PEERS))
def test_counts_equal_the_peer_libraries_exactly(peer):
    name = _peer_model(peer)
    assert name is not None, f"no registered model for {peer}"
    params, macs, size = PEERS[peer]
    c = _counted(name, (3, size, size))
    assert c.macs == macs
    assert c.params == params


@pytest.mark.parametrize("name", sorted(PAPER))
def test_counts_reproduce_the_paper_recounts(name):
    params, macs, unit = PAPER[name]
    c = _counted(name)
    assert c.params == params
    if macs is not None:
        assert abs(c.macs - macs) * 2 <= unit, f"{c.macs:,} vs {macs:,}"


@pytest.mark.parametrize("name", convnets.list_models())
def test_every_model_agrees_with_its_published_figures(name):
    entry = convnets.model_entry(name)
    c = _counted(name)
    assert c.output_shape[0] == 1 and c.macs > 0
    pub = entry.published
    if pub is None:  # nin and the ImageNet plain nets: nothing published to compare with
        return
    assert agreement(c.params, pub.params, pub.is_exact("params")) != "differs", f"params {c.params:,}"
    assert agreement(c.macs, pub.macs, pub.is_exact("macs")) != "differs", f"MACs {c.macs:,}"


@pytest.mark.parametrize(("resolution", "millions"), [(224, 569), (192, 418), (160, 290), (128, 186)])
def test_mobilenet_v1_resolution_multiplier_matches_the_paper(resolution, millions):
    macs = _counted("mobilenet_v1", (3, resolution, resolution)).macs
    # Howard et al. 2017, Table 7 rounds inconsistently (290.7M is printed 290): within 1M.
    assert abs(macs / 1e6 - millions) < 1


def test_agreement_uses_the_rounding_of_the_published_figure():
    assert agreement(724_406_816, 724_000_000, False) == "rounded"  # "0.724G": +-0.5M
    assert agreement(3_504_872, 3_400_000, False) == "differs"  # MobileNet v2's paper "3.4M"
    assert agreement(5, 5, True) == "exact"
    assert agreement(5, 6, True) == "differs"
    assert agreement(5, None, True) == "none"


def test_googlenet_aux_heads_hold_params_but_no_inference_macs():
    c = _counted("googlenet_torchvision")
    assert c.params - c.unused_params == 6_624_904  # torchvision's count without aux heads


# ---------------------------------------------------------------- the layer table


def test_summary_rows_add_up_to_the_totals_and_follow_execution_order():
    s = summary(convnets.create_model("lenet5"))
    assert sum(r.params for r in s.rows) == s.params == 61_706
    assert sum(r.macs for r in s.rows) == s.macs == 416_520
    paths = [r.path for r in s.rows]
    assert paths.index("stages.0.conv") < paths.index("stages.1.conv") < paths.index("head.fc")
    conv = s.rows[paths.index("stages.1.conv")]
    assert (conv.type_name, conv.output_shape, conv.params, conv.macs) == ("Conv2d", (1, 16, 10, 10), 2_416, 240_000)


def test_summary_keeps_a_module_with_its_own_params_as_one_row():
    # LeNet-5's S2 holds a coefficient and a bias per map *and* a child activation: splitting it
    # would lose its 12 parameters from the table.
    s = summary(convnets.create_model("lenet5_classic"), depth=9)
    rows = {r.path: r for r in s.rows}
    assert rows["stages.0.pool"].params == 12
    assert "stages.0.pool.act" not in rows
    assert sum(r.params for r in s.rows) == 60_000


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 6])
def test_summary_depth_limits_the_paths_and_keeps_the_totals(depth):
    with torch.device("meta"):
        model = convnets.create_model("resnet18")
    s = summary(model, depth=depth)
    assert max(r.path.count(".") + 1 for r in s.rows) <= depth
    assert sum(r.macs for r in s.rows) == s.macs == 1_814_073_344
    assert sum(r.params for r in s.rows) == s.params == 11_689_512


def test_summary_stages_show_the_case_study_pattern():
    with torch.device("meta"):
        model = convnets.create_model("resnet18")
    stages = summary(model).stages
    names = [st.name for st in stages]
    assert names == ["input", "stem", "stages.0", "stages.1", "stages.2", "stages.3", "head"]
    spatial = [st for st in stages if len(st.shape) == 3]
    assert [st.pattern for st in spatial] == [
        "224 x 224 x 3",
        "56 x 56 x 64",
        "56 x 56 x 64",
        "28 x 28 x 128",
        "14 x 14 x 256",
        "7 x 7 x 512",
    ]
    assert [st.reduction for st in spatial] == [1, 4, 4, 8, 16, 32]
    assert stages[-1].shape == (1000,)


def test_summary_text_states_the_rule_the_input_and_the_totals():
    with torch.device("meta"):
        model = convnets.create_model("vgg16")
    text = str(summary(model, (3, 224, 224)))
    assert "15,470,264,320" in text and "15.47G" in text
    assert "138,357,544" in text and "138.36M" in text
    assert "30.94G (30,940,528,640) (= 2 x MACs)" in text
    assert "3x224x224 (C x H x W)" in text
    assert repr(summary(model, (3, 224, 224))) == text  # a notebook shows the table, not a dataclass dump
    for phrase in ("FLOPs = 2 x MACs", "Not counted: bias adds, BatchNorm", "trainable parameters"):
        assert phrase in text.replace("\n        ", " ")


def test_summary_marks_modules_not_run():
    s = summary(build_for_counting("googlenet"), depth=2)
    aux = [r for r in s.rows if r.calls == 0]
    assert aux and all(r.macs == 0 for r in aux)
    assert "(not run)" in str(s)
    assert "in modules not run by this forward pass" in str(s)


def test_summary_rejects_a_bad_depth_and_names_the_root():
    with pytest.raises(ValueError, match="depth"):
        summary(nn.Linear(2, 2), (2,), depth=0)
    s = summary(nn.Sequential(nn.Linear(2, 3)), (2,))
    assert s.name == "Sequential" and s.rows[0].path == "0"
    assert s.counts.layer(ROOT).macs == 6


def test_input_sizes_of_any_integer_type_count_alike():
    """The size check refuses 32.5 and "32" but not the integer types sizes come in (torch.Size, NumPy)."""
    import numpy as np

    model = convnets.create_model("resnet20")
    plain = count(model, (3, 32, 32))
    assert count(model, torch.Size([3, 32, 32])).macs == plain.macs
    assert count(model, np.array([3, 32, 32])).macs == plain.macs
    assert count(model, [np.int64(3), 32, 32], batch=np.int32(2)).macs == 2 * plain.macs
    assert summary(model, (3, 32, 32), depth=np.int64(2)).depth == 2
