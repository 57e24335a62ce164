"""The trainer's options: the weight average (--ema), gradient accumulation, the host's looks every N steps,
torch.compile, TensorBoard hooks, and networks given to train() instead of registered."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convnets
from convnets.cli import main as cli_main
from convnets.models.lenet import lenet5
from convnets.training import ConfigMismatchError, TrainConfig, TrainingDiverged, train
from convnets.training import loop as loop_module
from convnets.training.schedules import SCHEDULES, lr_factor
from convnets.training.setup import WeightAverage
from convnets.weights import read_metadata, read_state_dict

LENET = dict(model="lenet5", data="digits", image_size=32, batch_size=64, epochs=2, progress=False, device="cpu",
             precision="fp32")
# BatchNorm, dropout and augmentation: what a resume must restore, here with the weights' average too.
SMALL = dict(model="mobilenet_v1", model_kwargs={"width": 0.25, "dropout": 0.3, "small_input": True},
             data="digits", image_size=16, batch_size=128, epochs=2, augment="standard", progress=False,
             device="cpu", lr=0.01)


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_same_weights(a: Path, b: Path, atol: float = 0.0) -> None:
    first, second = read_state_dict(a), read_state_dict(b)
    assert first.keys() == second.keys()
    for key in first:
        if atol:
            torch.testing.assert_close(first[key], second[key], atol=atol, rtol=0, msg=key)
        else:
            assert torch.equal(first[key], second[key]), key


# ------------------------------------------------------------------ the weights' moving average


def test_weight_average_matches_torchs_averaged_model() -> None:
    """Our in-place average against torch.optim.swa_utils' (parameters and BatchNorm statistics), given
    TensorFlow's warm-up min(decay, (1 + n) / (10 + n)) as a hand-written multi_avg_fn."""
    from torch.optim.swa_utils import AveragedModel

    decay = 0.5  # reached at step 8: the loop below has both the warm-up and the capped decay

    def tf_warmed_up_ema(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        n = int(n_averaged) - 1  # AveragedModel counts its first call, a copy; our step 0 is its second
        d = min(decay, (1 + n) / (10 + n))
        for a, c in zip(averaged, current, strict=True):
            a.copy_(d * a + (1 - d) * c)

    torch.manual_seed(0)
    model = convnets.create_model("resnet20", num_classes=3)
    ours = WeightAverage(model, decay=decay)
    theirs = AveragedModel(model, multi_avg_fn=tf_warmed_up_ema, use_buffers=True)
    theirs.update_parameters(model)  # the first update copies, as ours starts from a copy
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(12):
        loss = F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.randint(0, 3, (4,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ours.update(step)
        theirs.update_parameters(model)
    averaged = ours.state_dict()
    reference = theirs.module.state_dict()
    moved = 0
    for key, value in averaged.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, reference[key], rtol=1e-5, atol=1e-6, msg=key)
            moved += not torch.equal(value, model.state_dict()[key])
    assert moved > 0  # the average is not the weights


def test_weight_average_warms_up_as_tensorflow() -> None:
    """The decay of step n is (1 + n) / (10 + n) until it reaches the one asked for, then stays there."""
    average = WeightAverage(nn.Linear(2, 2), decay=0.999)
    assert [average.decay_at(n) for n in range(4)] == [1 / 10, 2 / 11, 3 / 12, 4 / 13]
    assert average.decay_at(8989) == 8990 / 8999 < 0.999  # (1 + n) / (10 + n) reaches 0.999 at n = 8,990
    assert average.decay_at(8991) == 0.999 == average.decay_at(10**6)
    half = WeightAverage(nn.Linear(2, 2), decay=0.5)
    assert [half.decay_at(n) for n in (6, 7, 8, 9)] == [7 / 16, 8 / 17, 0.5, 0.5]


def test_weight_average_leaves_the_initial_weights_from_the_first_step() -> None:
    """After one step the average is 10% the initial weights and 90% the new ones, not ~the initial ones
    (what a plain 0.999 average gives: the bug of a short run whose average scored near chance)."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    average = WeightAverage(model, decay=0.999)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    average.update(0)
    for key, value in average.state_dict().items():
        torch.testing.assert_close(value, 0.1 * initial[key] + 0.9 * model.state_dict()[key], msg=key)
        assert (value - initial[key]).abs().min() > 0.8  # moved 0.9 of the way, not 0.001


def test_ema_is_evaluated_each_epoch_saved_and_reported(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = train(TrainConfig(**{**LENET, "epochs": 2}, ema=0.9, out=str(out)))
    table = rows(out)
    assert all(0 <= r["ema_test_acc"] <= 1 and r["ema_test_loss"] > 0 for r in table)
    assert result.ema_accuracy == table[-1]["ema_test_acc"]
    meta = read_metadata(out / "last-ema.safetensors")
    assert meta["ema_decay"] == 0.9 and meta["test_accuracy"] == round(result.ema_accuracy, 5)
    average, weights = read_state_dict(out / "last-ema.safetensors"), read_state_dict(out / "last.safetensors")
    assert average.keys() == weights.keys() and not torch.equal(average["head.fc.weight"], weights["head.fc.weight"])
    report = (out / "report.md").read_text()
    assert "Moving average of the weights (decay 0.9)" in report and "is better" in report
    assert "ema_test_acc" in (out / "metrics.csv").read_text().splitlines()[0]
    # The saved average evaluates to the accuracy the run reported for it.
    model = convnets.weights.load_weights(out / "last-ema.safetensors").eval()
    assert model.head.fc.weight.shape == (10, 84)


def test_stop_and_resume_with_ema_gives_the_same_weights_and_average(tmp_path: Path) -> None:
    straight = train(TrainConfig(**SMALL, ema=0.95, out=str(tmp_path / "straight")))
    assert straight.steps == 2 * (1437 // 128)
    stopped = train(TrainConfig(**SMALL, ema=0.95, out=str(tmp_path / "resumed"), max_steps=15))  # mid-epoch 2
    assert stopped.stopped_early
    state = torch.load(tmp_path / "resumed" / "state.pt", weights_only=True)
    assert state["step"] == 15 and "ema" in state
    resumed = train(TrainConfig(**{**SMALL, "epochs": None}, ema=0.95, out=str(tmp_path / "resumed"), resume=True))
    assert resumed.steps == straight.steps
    for name in ("last.safetensors", "last-ema.safetensors"):
        assert_same_weights(tmp_path / "straight" / name, tmp_path / "resumed" / name)
    assert resumed.ema_accuracy == straight.ema_accuracy


def test_a_resume_may_not_change_the_average(tmp_path: Path) -> None:
    out = str(tmp_path / "run")
    train(TrainConfig(**LENET, ema=0.9, out=out, max_steps=2))
    with pytest.raises(ConfigMismatchError, match=r"--ema 0.5 \(the run has 0.9\)"):
        train(TrainConfig(**LENET, ema=0.5, out=out, resume=True))


def test_a_checkpoint_without_the_average_a_run_needs_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(TrainConfig(**LENET, ema=0.9, out=str(out), max_steps=2))
    state = torch.load(out / "state.pt", weights_only=True)
    del state["ema"]
    torch.save(state, out / "state.pt")
    with pytest.raises(convnets.errors.RunDirectoryError, match=r"not a convnets training state \(it has no ema\)"):
        train(TrainConfig(**LENET, ema=0.9, out=str(out), resume=True))


# ------------------------------------------------------------------ gradient accumulation


def test_accumulating_two_batches_gives_the_weights_of_one_twice_as_large(tmp_path: Path) -> None:
    """LeNet-5 has no BatchNorm (whose statistics would see the smaller batches): the steps are the same sums."""
    large = train(TrainConfig(**{**LENET, "batch_size": 64, "epochs": 1}, out=str(tmp_path / "large")))
    accumulated = train(TrainConfig(**{**LENET, "batch_size": 32, "epochs": 1}, accumulate=2,
                                    out=str(tmp_path / "accumulated")))
    assert accumulated.steps == large.steps == 1437 // 64
    assert_same_weights(tmp_path / "large" / "last.safetensors", tmp_path / "accumulated" / "last.safetensors",
                        atol=1e-5)
    assert [r["lr"] for r in rows(tmp_path / "large")] == [r["lr"] for r in rows(tmp_path / "accumulated")]
    assert "batch 32 x 2 accumulated (effective 64)" in (tmp_path / "accumulated" / "report.md").read_text()


def test_a_run_with_accumulation_resumes_exactly(tmp_path: Path) -> None:
    """The micro-batches of 3 do not divide an epoch's 44: the two left over are left out, resumed or not."""
    config = dict(**{**LENET, "batch_size": 32}, accumulate=3)
    straight = train(TrainConfig(**config, out=str(tmp_path / "straight")))
    assert straight.steps == 2 * ((1437 // 32) // 3)
    train(TrainConfig(**config, out=str(tmp_path / "resumed"), max_steps=20))  # mid-epoch 2
    state = torch.load(tmp_path / "resumed" / "state.pt", weights_only=True)
    assert (state["step"], state["epoch"], state["position"]) == (20, 1, (20 - 14) * 3)  # at a step's boundary
    resumed = train(TrainConfig(**{**config, "epochs": None}, out=str(tmp_path / "resumed"), resume=True))
    assert resumed.steps == straight.steps
    assert_same_weights(tmp_path / "straight" / "last.safetensors", tmp_path / "resumed" / "last.safetensors")


# ------------------------------------------------------------------ the host's looks every N steps


def _nan_from_call(monkeypatch: pytest.MonkeyPatch, calls: int) -> None:
    counter = {"n": 0}

    def cross_entropy(logits, target, **kw):
        counter["n"] += 1
        loss = F.cross_entropy(logits, target, **kw)
        return loss * float("nan") if counter["n"] > calls else loss

    monkeypatch.setattr(loop_module, "F", types.SimpleNamespace(cross_entropy=cross_entropy))


def test_a_nan_found_eight_steps_late_names_its_step_and_keeps_the_checkpoint_before_it(tmp_path, monkeypatch
                                                                                        ) -> None:
    """Looking every 8 steps: the first NaN, at step 25, is found at step 32 and named; the checkpoint due at
    every look (checkpoint_minutes ~0) is the one of step 24, the look before it, not one of the spoilt steps."""
    out = tmp_path / "run"
    _nan_from_call(monkeypatch, 22 + 2 + 2)  # 22 steps and 2 test batches in epoch 1, then NaN from step 25
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 25 \(epoch 2, batch 3\).*the last "
                                               r"checkpoint is .*state.pt"):
        train(TrainConfig(**LENET, sync_every=8, checkpoint_minutes=1e-9, out=str(out)))
    state = torch.load(out / "state.pt", weights_only=True)
    assert state["step"] == 24 and state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_looking_every_n_steps_trains_the_same_weights(tmp_path: Path) -> None:
    every = train(TrainConfig(**{**LENET, "epochs": 1}, out=str(tmp_path / "every")))
    eighth = train(TrainConfig(**{**LENET, "epochs": 1}, sync_every=8, out=str(tmp_path / "eighth")))
    assert every.steps == eighth.steps
    assert_same_weights(tmp_path / "every" / "last.safetensors", tmp_path / "eighth" / "last.safetensors")


# ------------------------------------------------------------------ torch.compile


@pytest.mark.slow
def test_compiled_training_gives_the_same_weights_without_the_compile_prefix(tmp_path: Path) -> None:
    """The eager backend traces the step with dynamo and runs it as PyTorch would: the same numbers."""
    config = dict(**{**LENET, "epochs": 1}, max_steps=3)
    train(TrainConfig(**config, out=str(tmp_path / "plain")))
    train(TrainConfig(**config, compile="eager", out=str(tmp_path / "compiled")))
    assert_same_weights(tmp_path / "plain" / "last.safetensors", tmp_path / "compiled" / "last.safetensors")
    state = torch.load(tmp_path / "compiled" / "state.pt", weights_only=True)
    assert not any("_orig_mod" in key for key in state["model"])
    assert json.loads((tmp_path / "compiled" / "config.json").read_text())["compile"] == "eager"


def test_cli_compile_alone_means_inductor(tmp_path: Path) -> None:
    from convnets.cli import build_parser
    from convnets.cli.train import config_from_args

    args = build_parser().parse_args(["train", "lenet5", "--compile"])
    assert config_from_args(args).compile == "inductor"
    args = build_parser().parse_args(["train", "lenet5", "--compile", "eager", "--ema", "0.99", "--accumulate", "4",
                                      "--sync-every", "10", "--tensorboard"])
    config = config_from_args(args)
    assert (config.compile, config.ema, config.accumulate, config.sync_every, config.tensorboard) == (
        "eager", 0.99, 4, 10, True)


# ------------------------------------------------------------------ TensorBoard hooks


class FakeTensorBoard:
    """Records what the trainer hands convnets.training.tensorboard's interface."""

    logs: list[FakeTensorBoard] = []

    def __init__(self, log_dir: Path) -> None:
        self.log_dir, self.steps, self.epochs, self.images, self.closed = log_dir, [], [], [], False
        FakeTensorBoard.logs.append(self)

    def step(self, step: int, scalars: dict[str, float]) -> None:
        self.steps.append((step, scalars))

    def epoch(self, epoch: int, scalars: dict[str, float]) -> None:
        self.epochs.append((epoch, scalars))

    def image(self, tag: str, grid_uint8_hwc, step: int) -> None:
        self.images.append((tag, grid_uint8_hwc, step))

    def close(self) -> None:
        self.closed = True


class FakeMistakes:
    def __init__(self, k: int, classes, mean, std) -> None:
        self.k, self.classes, self.batches = k, classes, 0
        assert len(mean) == len(std) == 1  # the data's own normalisation (LeNet-5 on grey digits)

    def update(self, x, logits, y) -> None:
        assert x.shape[0] == logits.shape[0] == y.shape[0]
        self.batches += 1

    def grid(self):
        return torch.zeros(4, 4, 3, dtype=torch.uint8).numpy() + self.batches


def test_tensorboard_gets_steps_epochs_the_augmentation_grid_and_the_mistakes(tmp_path, monkeypatch) -> None:
    module = types.ModuleType("convnets.training.tensorboard")
    module.TensorBoardLog, module.Mistakes = FakeTensorBoard, FakeMistakes
    monkeypatch.setitem(sys.modules, "convnets.training.tensorboard", module)
    monkeypatch.setattr(convnets.training.config, "has_tensorboard", lambda: True)
    FakeTensorBoard.logs.clear()
    out = tmp_path / "run"
    train(TrainConfig(**{**LENET, "augment": "light"}, tensorboard=True, sync_every=5, out=str(out)))
    [log] = FakeTensorBoard.logs
    assert log.log_dir == out / "tensorboard" and log.closed
    assert [s for s, _ in log.steps] == list(range(5, 45, 5))  # every 5th of 44 steps
    assert set(log.steps[0][1]) == {"loss", "images_per_s", "lr"}
    assert [e for e, _ in log.epochs] == [1, 2]
    assert log.epochs[1][1]["test_acc"] == rows(out)[1]["test_acc"]
    tags = [(tag, step) for tag, _, step in log.images]
    assert tags == [("augmentation", 0), ("test/mistakes", 1), ("test/mistakes", 2)]
    augmentation = log.images[0][1]
    assert augmentation.dtype == "uint8" and augmentation.ndim == 3 and augmentation.shape[2] == 3
    assert log.images[1][1][0, 0, 0] == 2  # the mistakes saw both test batches


def test_tensorboard_logs_of_a_real_run_read_back_with_tensorboard_itself(tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    train(TrainConfig(**{**LENET, "epochs": 1}, tensorboard=True, out=str(out)))
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars, images = events.Tags()["scalars"], events.Tags()["images"]
    assert {"train_step/loss", "train_step/lr", "train_step/images_per_s", "epoch/test_acc"} <= set(scalars)
    assert events.Scalars("epoch/test_acc")[0].value == pytest.approx(rows(out)[0]["test_acc"])
    assert len(events.Scalars("train_step/loss")) == 22  # every step of the epoch, on a CPU
    assert {"augmentation", "test/mistakes"} <= set(images)


def test_tensorboard_without_its_package_is_one_line_before_anything_is_written(tmp_path, monkeypatch, capsys
                                                                                ) -> None:
    monkeypatch.setattr(convnets.training.config, "has_tensorboard", lambda: False)
    code = cli_main(["train", "lenet5", "--data", str(tmp_path / "no-such-data"), "--tensorboard", "--out",
                     str(tmp_path / "run")])
    assert code == 2
    assert ("error: --tensorboard writes its logs with the tensorboard package, which is not installed: pip install "
            "'convnets[tensorboard]'") in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_without_tensorboard_its_module_is_never_imported(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "convnets.training.tensorboard", None)  # importing it would fail
    train(TrainConfig(**{**LENET, "epochs": 1}, max_steps=2, out=str(tmp_path / "run")))


# ------------------------------------------------------------------ networks given to train()


def test_train_takes_a_builder_or_a_module_and_leaves_the_registry_alone(tmp_path: Path) -> None:
    before = convnets.list_models()
    built = train(TrainConfig(**{**LENET, "model": "lenet5_mine", "epochs": 1}, out=str(tmp_path / "built")),
                  model=lenet5)
    torch.manual_seed(0)
    module = lenet5(num_classes=10, in_chans=1)
    given = train(TrainConfig(**{**LENET, "model": "lenet5_mine", "epochs": 1}, out=str(tmp_path / "module")),
                  model=module)
    assert given.model is module and convnets.list_models() == before
    # The same network from the registry, the builder and the module (built with the run's seed): the same run.
    registered = train(TrainConfig(**{**LENET, "epochs": 1}, out=str(tmp_path / "registered")))
    for run in ("built", "module"):
        assert_same_weights(tmp_path / "registered" / "last.safetensors", tmp_path / run / "last.safetensors")
    assert built.test_accuracy == given.test_accuracy == registered.test_accuracy
    assert read_metadata(tmp_path / "built" / "last.safetensors")["network"] == "lenet5_mine"


def test_a_builder_whose_classes_and_channels_are_required_arguments_trains(tmp_path: Path) -> None:
    """``def build(num_classes, in_chans)``, the signature the docs give: it was probed before the data was read
    without them, a TypeError traceback."""
    def build(num_classes: int, in_chans: int) -> nn.Module:
        return lenet5(num_classes=num_classes, in_chans=in_chans)

    result = train(TrainConfig(**{**LENET, "model": "mine", "epochs": 1}, max_steps=2, out=str(tmp_path / "run")),
                   model=build)
    assert result.model.num_classes == 10 and result.steps == 2


# ------------------------------------------------------------------ the model interface and schedules


def test_googlenet_declares_its_auxiliary_losses_and_others_none() -> None:
    googlenet = convnets.create_model("googlenet", num_classes=3, small_input=True).train()
    logits, aux = googlenet.forward_train(torch.randn(2, 3, 32, 32))
    assert googlenet.aux_loss_weight == 0.3 and len(aux) == 2 and logits.shape == aux[0].shape == (2, 3)
    lenet = convnets.create_model("lenet5", num_classes=3)
    assert lenet.aux_loss_weight == 0.0 and lenet.forward_train(torch.randn(2, 1, 32, 32))[1] == []
    assert lenet.classifier() is lenet.head.fc and isinstance(lenet.classifier(), nn.Linear)


def test_every_schedule_of_the_table_is_an_option_and_starts_after_warm_up() -> None:
    from convnets.cli import build_parser

    assert set(SCHEDULES) == set(convnets.training.config.SCHEDULES)
    for name in SCHEDULES:
        build_parser().parse_args(["train", "lenet5", "--schedule", name])
        factor = lr_factor(name, warmup_steps=10, total_steps=110)
        assert factor(0) == pytest.approx(0.1) and 0.0 <= factor(109) <= 1.0


def test_cli_ema_run_prints_both_accuracies(tmp_path: Path, capsys) -> None:
    code = cli_main(["train", "lenet5", "--data", "digits", "--epochs", "1", "--max-steps", "3", "--ema", "0.5",
                     "--out", str(tmp_path / "run"), "--no-progress", "--precision", "fp32"])
    assert code == 0
    out = capsys.readouterr().out
    assert "moving average of the weights (decay 0.5): test accuracy" in out
