"""benchmarks/bench_train.py: the sides it times (convnets' Trainer, the hand-tuned loop, the 3x3-convolution
ceiling) and its bookkeeping, on tiny data. No timing is asserted: the figures come from idle runs of the script."""

from __future__ import annotations

import statistics
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
