"""benchmarks/bench_train.py: the sides it times (convnets' Trainer, the hand-tuned loop, the 3x3-convolution
ceiling) and its bookkeeping, on tiny data. No timing is asserted: the figures come from idle runs of the script."""

from __future__ import annotations

import platform
import statistics
import types
from pathlib import Path

import pytest
import torch

import convnets
from convnets.data.datasets import load_dataset
from convnets.training import TrainConfig
from convnets.training.loop import cpu_has_native_bf16
from fixture_scripts import benchmark_script


@pytest.fixture(scope="module")
def bench():
    with benchmark_script("bench_train") as module:
        yield module


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def tiny_config(tmp_path: Path, per_class: int = 4, batch_size: int = 16) -> TrainConfig:
    return TrainConfig(model="resnet20", data="digits", device="cpu", seed=0, train_per_class=per_class,
                       test_per_class=1, batch_size=batch_size, out=str(tmp_path / "run"), progress=False)


def test_conv3x3_layers_are_resnet20s_19_at_their_shapes(bench):
    model = convnets.create_model("resnet20", num_classes=10, in_chans=1)
    layers = bench.conv3x3_layers(model, (1, 28, 28), 2, None)
    # He et al. 2015, Section 4.2: a 3x3 stem, then 3 stages of 3 blocks of two 3x3 convolutions, 16, 32 and 64
    # channels at 28, 14 and 7 pixels; each later stage's first convolution has stride 2 and sees the stage before.
    expected = [("stem.conv", (2, 1, 28, 28), 16, 1)]
    for stage, (width, side) in enumerate([(16, 28), (32, 14), (64, 7)]):
        for block in range(3):
            for conv in (1, 2):
                first = stage > 0 and block == 0 and conv == 1
                shape = (2, width // 2, 2 * side, 2 * side) if first else (2, width, side, side)
                expected.append((f"stages.{stage}.{block}.conv{conv}.conv", shape, width, 2 if first else 1))
    assert [(la.name, la.input_shape, la.conv.out_channels, la.conv.stride[0]) for la in layers] == expected
    # The data needs no gradient, every later input does.
    assert [la.input_grad for la in layers] == [False] + [True] * 18
    assert all(la.conv.kernel_size == (3, 3) for la in layers)
    # Recorded on a copy: the model's BatchNorm statistics did not move.
    assert int(model.stem.bn.num_batches_tracked) == 0
    # Under bf16 autocast the convolutions after the stem take the bf16 their predecessors give.
    under_autocast = bench.conv3x3_layers(model, (1, 28, 28), 2, torch.bfloat16)
    assert [la.input_dtype for la in under_autocast] == [torch.float32] + [torch.bfloat16] * 18


def test_conv3x3_layers_of_a_net_without_them(bench):
    lenet = convnets.create_model("lenet5", num_classes=10, in_chans=1)
    assert bench.conv3x3_layers(lenet, (1, 32, 32), 2, None) == []
    with pytest.raises(ValueError, match="no 3x3 convolution"):
        bench.ConvCeiling([], torch.float32)


def test_ceiling_step_runs_every_layer_forward_and_backward(bench):
    model = convnets.create_model("resnet20", num_classes=10, in_chans=1)
    dtype = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    ceiling = bench.ConvCeiling(bench.conv3x3_layers(model, (1, 28, 28), 2, None), dtype)
    ceiling.steps(1, timed=False)
    assert ceiling.layer_seconds == [0.0] * 19  # an untimed step is not counted
    ceiling.steps(2)
    assert ceiling.images == 4 and len(ceiling.rates) == 1
    assert all(s > 0 for s in ceiling.layer_seconds)
    for (x, weight, _bias, _settings, inputs, grad), layer in zip(ceiling.work, ceiling.layers, strict=True):
        assert x.dtype == weight.dtype == grad.dtype == dtype
        assert x.is_contiguous(memory_format=torch.channels_last)
        assert weight.is_contiguous(memory_format=torch.channels_last)
        # The weight's gradient always, the input's where the real step computes it.
        assert len(inputs) == (2 if layer.input_grad else 1)
        stride = layer.conv.stride[0]
        assert grad.shape == (2, layer.conv.out_channels, x.shape[2] // stride, x.shape[3] // stride)
    layers = ceiling.summary()["layers"]
    assert [la["name"] for la in layers][:2] == ["stem.conv", "stages.0.0.conv1.conv"]
    assert all(la["ms_per_batch"] > 0 for la in layers)


def test_tuned_batches_are_an_epoch_of_the_normalised_images(bench):
    images = torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1).expand(6, 1, 4, 4).contiguous()
    labels = torch.arange(6) + 10
    batches = bench.tuned_batches(images, labels, 2, "none", seed=0)
    epoch = [next(batches) for _ in range(3)]
    seen = torch.cat([x[:, 0, 0, 0] for x, _ in epoch])
    assert sorted(seen.tolist()) == [0, 1, 2, 3, 4, 5]  # each image once, unchanged
    assert torch.equal(torch.cat([y for _, y in epoch]), seen.long() + 10)  # with its label
    x, _ = next(bench.tuned_batches(images, labels, 4, "light", seed=0))
    assert x.shape == (4, 1, 4, 4)


def test_tuned_batches_refuse_what_they_do_not_do(bench):
    with pytest.raises(ValueError, match="color_shift"):
        next(bench.tuned_batches(torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long), 2, "standard", 0))


def test_tuned_loop_trains_channels_last_in_the_cpus_precision(bench, digits):
    model = convnets.create_model("resnet20", num_classes=10, in_chans=1)
    before = model.stem.conv.weight.detach().clone()
    tuned = bench.tuned_loop(model, "resnet20", digits, batch_size=8, seed=0)
    assert tuned.autocast == (torch.bfloat16 if cpu_has_native_bf16() else None)
    assert tuned.label_smoothing == 0.1  # the recipe's
    tuned.steps(2)
    assert tuned.images == 16
    assert model.stem.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not torch.equal(model.stem.conv.weight.detach(), before)


def test_trainer_side_chunks_run_the_trainers_steps_across_epochs_without_evaluating(bench, tmp_path):
    side = bench.TrainerSide(tiny_config(tmp_path))  # 40 images in batches of 16: 2 steps an epoch
    trainer = side.trainer
    before = trainer.model.stem.conv.weight.detach().clone()
    side.steps(3, timed=False)
    side.steps(2)
    assert (trainer.step, trainer.epoch, trainer.position) == (5, 2, 1)
    assert side.images == 32 and len(side.rates) == 1  # the timed chunk alone
    assert trainer.log.rows == []  # no epoch ended with an evaluation
    assert not (tmp_path / "run" / "state.pt").exists()  # nor with a checkpoint
    assert not torch.equal(trainer.model.stem.conv.weight.detach(), before)
    assert trainer.setup.channels_last  # convnets train's default layout
    assert side.summary()["precision"] == trainer.setup.precision


def test_throughput_times_four_sides_interleaved(bench, digits, tmp_path):
    config = tiny_config(tmp_path, per_class=8)
    result = bench.throughput(config, digits, workers=0, rounds=3, steps=1, warm=0)
    for side in ("convnets", "tuned", "baseline", "ceiling"):
        assert len(result[side]["per_round_images_per_s"]) == 3
        assert result[side]["images"] == 3 * 16
    assert result["tuned"]["precision"].split()[0] == result["convnets"]["precision"].split()[0]
    layers = result["ceiling"]["layers"]
    assert len(layers) == 19 and layers[-1]["input"] == [16, 64, 2, 2]  # digits are 8x8
    for key in ("convnets_over_tuned", "convnets_over_ceiling"):
        low, high = result[key]["range"]
        assert low <= result[key]["median"] <= high
    rounds = zip(result["convnets"]["per_round_images_per_s"], result["baseline"]["per_round_images_per_s"],
                 strict=True)
    assert result["speedup"] == pytest.approx(statistics.median(a / b for a, b in rounds), rel=0.01)
    text = bench.markdown({"matmul": {"gflops": 100.0, "threads": 1, "per_size": {}}, "throughput": [result]})
    assert "| resnet20 | ceiling |" in text and "convnets / hand-tuned" in text and "(goal >= 0.60)" in text


@pytest.mark.slow
def test_compile_end_to_end_beside_the_baseline(bench, tmp_path):
    # The eager backend compiles nothing: the bookkeeping of the inductor runs, in seconds.
    result = bench.compile_end_to_end("resnet20", 1, 0, tmp_path, 5, data="digits", backend="eager", workers=0,
                                      baseline_rounds=3, steps=1, warm=0)
    assert len(result["baseline"]["per_round_images_per_s"]) == 3
    for side in ("plain", "compiled"):
        assert result[side]["images"] == 50  # 50 images: one batch of 50
        # Rounded to 0.1: at a few images/s (a loaded machine) that is more than 1%.
        assert result[side]["images_per_s_wall"] == pytest.approx(50 / result[side]["wall_seconds"], rel=0.01, abs=0.05)
    base = result["baseline"]["images_per_s"]
    assert result["compiled_over_baseline_wall"] == round(result["compiled"]["images_per_s_wall"] / base, 3)
    assert "compiled / baseline" in bench.markdown({"compile": result})


def test_tuned_only_and_compile_only_exclude_each_other(bench, capsys):
    with pytest.raises(SystemExit) as stop:
        bench.main(["--tuned-only", "--compile-only"])
    assert stop.value.code == 2 and "not allowed with" in capsys.readouterr().err


# ------------------------------------------------------------------ the step breakdown, the compiled side, malloc


def test_step_category_reads_the_event_and_those_around_it(bench):
    category = bench.step_category
    assert category(["aten::threshold_backward", "ReluBackward0"]) == "ReLU backward"
    assert category(["aten::mkldnn_convolution", "aten::_convolution", "aten::convolution"]) == "convolution forward"
    assert category(["autograd::engine::evaluate_function: ConvolutionBackward0"]) == "convolution backward"
    assert category(["aten::native_batch_norm_backward", "NativeBatchNormBackward0"]) == "batch norm backward"
    # An operator's own name decides before the events around it: autocast's cast inside a convolution is a cast.
    assert category(["aten::copy_", "aten::_to_copy", "aten::to", "aten::conv2d"]) == "casts, copies and fills"
    # A context claims whatever runs inside it: the optimizer's update is not "additions".
    assert category(["aten::add_", "Optimizer.step#SGD.step"]) == "optimizer"
    assert category(["aten::add_"]) == "additions"
    assert category(["aten::nll_loss_forward", "aten::nll_loss", "aten::cross_entropy_loss"]) == "loss"
    assert category(["aten::gather", bench.DATA_EVENT]) == "data"
    # An operator no part names takes its nearest enclosing event's part, or is "other": never lost.
    assert category(["aten::made_up", "aten::native_batch_norm"]) == "batch norm forward"
    assert category(["aten::made_up"]) == "other"
    names = [c.name for c in bench.STEP_CATEGORIES]
    assert len(set(names)) == len(names) and "other" not in names


def test_throughput_with_the_step_breakdown_and_the_compiled_side(bench, digits, tmp_path):
    config = tiny_config(tmp_path, per_class=8)
    result = bench.throughput(config, digits, workers=0, rounds=2, steps=1, warm=0, ceiling=False, breakdown=2,
                              compiled="eager")
    b = result["breakdown"]
    parts = {c["category"]: c for c in b["categories"]}
    assert list(parts) == [c.name for c in bench.STEP_CATEGORIES] + ["other"]
    assert sum(c["share"] for c in b["categories"]) == pytest.approx(1.0)
    # Every operator seen is in exactly one part, and the parts add up to all of the operators' time.
    assert sum(c["ms_per_step"] for c in b["categories"]) == pytest.approx(b["op_ms_per_step"], abs=0.01)
    assert sum(op["ms_per_step"] for op in b["ops"]) == pytest.approx(b["op_ms_per_step"], rel=0.01, abs=0.01)
    assert {op["category"] for op in b["ops"]} <= set(parts)
    for name in ("convolution forward", "convolution backward", "batch norm forward", "batch norm backward",
                 "ReLU forward", "ReLU backward", "additions", "optimizer", "loss", "data"):
        assert parts[name]["ms_per_step"] > 0, name
    assert b["op_ms_per_step"] <= b["wall_ms_per_step"]

    c = result["compiled"]
    assert c["backend"] == "eager" and len(c["per_round_images_per_s"]) == 2 and c["images"] == 2 * 16
    assert c["first_steps"] == 2 and 0 <= c["compile_seconds"] <= c["first_steps_seconds"]
    rounds = zip(c["per_round_images_per_s"], result["convnets"]["per_round_images_per_s"], strict=True)
    assert c["over_convnets"]["median"] == pytest.approx(statistics.median(a / e for a, e in rounds), rel=0.01)
    assert c["images_per_epoch"] == 80  # 8 per class: 5 whole batches of 16
    text = bench.markdown({"matmul": {"gflops": 100.0, "threads": 1, "per_size": {}}, "throughput": [result]})
    assert "| convolution backward |" in text and "compiled / convnets eager" in text


def fixed_side(bench, rates: list[float], batch: int = 10) -> object:
    side = bench.Side("fixed")
    side.rates = rates
    side.images, side.seconds = batch * len(rates), sum(batch / r for r in rates)
    side.trainer = types.SimpleNamespace(setup=types.SimpleNamespace(batch_size=batch),
                                         cfg=types.SimpleNamespace(accumulate=1, compile="inductor"))
    side.batches_per_epoch = 50
    return side


def test_compiling_pays_for_itself_after_the_seconds_it_cost_over_the_images_it_saves(bench):
    eager, baseline = fixed_side(bench, [100.0, 100.0]), fixed_side(bench, [50.0, 50.0])
    compiled = fixed_side(bench, [200.0, 200.0])
    # 4 first steps of 10 images in 10.2 s: 0.2 s of steps at 200 images/s, 10 s of compiling.
    c = bench.compiled_summary(compiled, eager, baseline, first_steps=4, first_seconds=10.2)
    assert c["compile_seconds"] == pytest.approx(10.0)
    assert c["over_baseline"]["median"] == 4.0 and c["over_convnets"]["median"] == 2.0
    # Each image saves 1/100 - 1/200 s: 10 s are saved after 2,000 images, 4 epochs of 50 batches of 10.
    assert c["break_even_images"] == pytest.approx(2000) and c["break_even_epochs"] == pytest.approx(4)
    slower = bench.compiled_summary(fixed_side(bench, [90.0, 90.0]), eager, baseline, first_steps=4,
                                    first_seconds=10.2)
    assert slower["break_even_images"] is None and slower["break_even_epochs"] is None
    assert "never pays for itself" in bench._compiled_side_lines({"model": "m", "compiled": slower})[1]


@pytest.mark.slow
def test_malloc_compare_runs_both_arms_in_fresh_processes(bench, tmp_path):
    result = bench.malloc_compare(tiny_config(tmp_path, per_class=8), 1, rounds=2, steps=1, warm=0)
    kept, default = result["kept"], result["default"]
    assert len(kept) == len(default) == 1
    assert kept[0]["kept"] is (platform.libc_ver()[0] == "glibc") and default[0]["kept"] is False
    assert len(kept[0]["per_round_images_per_s"]) == 2
    r = result["kept_over_default"]
    assert r["per_pair"] == [kept[0]["images_per_s"] / default[0]["images_per_s"]]
    assert r["median"] == r["range"][0] == r["range"][1] == r["mean"]["mean"] and r["mean"]["n"] == 1
    assert result["minor_faults_per_step"] == {"kept": kept[0]["minor_faults_per_step"],
                                               "default": default[0]["minor_faults_per_step"]}
    assert min(result["minor_faults_per_step"].values()) >= 0
    text = bench.markdown({"matmul": {"gflops": 100.0, "threads": 1, "per_size": {}}, "throughput": [],
                           "malloc": [result]})
    assert "kept / default per pair" in text and "| default |" in text


@pytest.mark.parametrize("pairs", ["0", "-2", "two"])
def test_malloc_compare_needs_a_whole_number_of_pairs(bench, capsys, pairs):
    with pytest.raises(SystemExit) as stop:
        bench.main(["--malloc-compare", pairs])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "argument --malloc-compare: must be a whole number >= 1; got" in err


def test_a_malloc_arm_is_kept_or_default(bench, tmp_path):
    with pytest.raises(ValueError, match="arm must be one of"):
        bench.malloc_arm(tiny_config(tmp_path), "sometimes", rounds=1, steps=1, warm=0)
