"""The training loop: exact resume, atomic checkpoints, divergence, mismatches, DDP, the run directory."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import convnets
from convnets.cli import main as cli_main
from convnets.training import ConfigMismatchError, TrainConfig, TrainingDiverged, train
from convnets.training import loop as loop_module
from convnets.training.config import resolve
from convnets.training.schedules import lr_factor
from convnets.weights import WeightsMismatchError, atomic_write, load_weights, read_metadata, read_state_dict

# A small model with BatchNorm, dropout and augmentation: everything a resume must restore.
SMALL = dict(model="mobilenet_v1", model_kwargs={"width": 0.25, "dropout": 0.3, "small_input": True},
             data="digits", image_size=16, batch_size=64, epochs=2, augment="standard", progress=False,
             device="cpu", lr=0.01)
# The fastest model, for tests that only need the loop to run.
LENET = dict(model="lenet5", data="digits", image_size=32, batch_size=64, epochs=2, progress=False, device="cpu")


def weights(path: Path) -> dict[str, torch.Tensor]:
    return read_state_dict(path)


def test_stop_and_resume_gives_the_same_weights_as_a_straight_run(tmp_path: Path) -> None:
    straight = train(TrainConfig(**SMALL, out=str(tmp_path / "straight")))
    steps = straight.steps
    assert steps == 2 * (1437 // 64)
    stopped = train(TrainConfig(**SMALL, out=str(tmp_path / "resumed"), max_steps=30))  # mid-epoch 2
    assert stopped.stopped_early and stopped.steps == 30
    resumed = train(TrainConfig(**{**SMALL, "epochs": None}, out=str(tmp_path / "resumed"), resume=True))
    assert resumed.steps == steps
    a, b = weights(tmp_path / "straight" / "last.safetensors"), weights(tmp_path / "resumed" / "last.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    rows = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert resumed.test_accuracy == straight.test_accuracy


def test_run_directory_holds_everything_a_reader_needs(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = train(TrainConfig(**{**LENET, "epochs": 1}, out=str(out)))
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "metrics.jsonl", "metrics.csv", "state.pt", "best.safetensors", "last.safetensors",
            "curves.png", "report.md"} <= names
    config = json.loads((out / "config.json").read_text())
    assert config["optimizer"] == "adamw" and config["schedule"] == "onecycle"  # the lenet5 recipe filled in
    meta = read_metadata(out / "last.safetensors")
    assert meta["model"] == "lenet5" and meta["num_classes"] == 10 and meta["input_size"] == [1, 32, 32]
    assert meta["dataset"] == "digits" and len(meta["mean"]) == 1 and meta["test_accuracy"] == round(
        result.test_accuracy, 5)
    model = load_weights(out / "last.safetensors")  # rebuilt from the metadata alone
    assert isinstance(model, convnets.ConvNet) and model.num_classes == 10
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert f"{result.test_accuracy:.4f}" in (out / "report.md").read_text()
    assert result.test_accuracy > 0.5  # 22 steps on digits already beat chance (0.1) by far


def test_existing_run_directory_is_not_overwritten(tmp_path: Path) -> None:
    out = str(tmp_path / "run")
    train(TrainConfig(**{**SMALL, "epochs": 1}, out=out, max_steps=2))
    with pytest.raises(ConfigMismatchError, match="already holds a run: pass --resume"):
        train(TrainConfig(**{**SMALL, "epochs": 1}, out=out))
    with pytest.raises(ConfigMismatchError, match="is a run of mobilenet_v1, not lenet5"):
        train(TrainConfig(model="lenet5", data="digits", out=out, resume=True, progress=False))


def test_resume_without_a_checkpoint_says_so(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(TrainConfig(**SMALL, out=str(tmp_path / "empty"), resume=True))


def test_atomic_write_keeps_the_old_file_when_writing_dies(tmp_path: Path) -> None:
    target = tmp_path / "state.pt"
    atomic_write(target, lambda tmp: torch.save({"step": 1}, tmp))

    def dies_halfway(tmp: str) -> None:
        Path(tmp).write_bytes(b"partial")
        raise KeyboardInterrupt  # a kill in the middle of writing

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, dies_halfway)
    assert torch.load(target, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]  # no temporary file left behind


def _nan_after(monkeypatch: pytest.MonkeyPatch, calls: int) -> None:
    counter = {"n": 0}

    def cross_entropy(logits, target, **kw):
        counter["n"] += 1
        loss = F.cross_entropy(logits, target, **kw)
        return loss * float("nan") if counter["n"] > calls else loss

    monkeypatch.setattr(loop_module, "F", SimpleNamespace(cross_entropy=cross_entropy))


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(tmp_path, monkeypatch) -> None:
    out = tmp_path / "run"
    # 22 training steps + 2 test batches in epoch 1, then NaN from the 3rd step of epoch 2.
    _nan_after(monkeypatch, 22 + 2 + 2)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 25 \(epoch 2, batch 3\).*the last "
                                               r"checkpoint is .*state.pt.*--nan-policy skip"):
        train(TrainConfig(**LENET, out=str(out)))
    state = torch.load(out / "state.pt", weights_only=True)
    assert state["epoch"] == 1 and state["step"] == 22
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_nan_policy_skip_skips_those_steps(tmp_path, monkeypatch, capsys) -> None:
    counter = {"n": 0}

    def cross_entropy(logits, target, **kw):
        counter["n"] += 1
        loss = F.cross_entropy(logits, target, **kw)
        return loss * float("nan") if counter["n"] in (3, 5) else loss

    monkeypatch.setattr(loop_module, "F", SimpleNamespace(cross_entropy=cross_entropy))
    result = train(TrainConfig(**{**LENET, "epochs": 1}, out=str(tmp_path / "run"), nan_policy="skip"))
    assert result.steps == 22 - 2
    assert "step skipped (2 so far)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (dict(model="alexnet", data="digits"), r"alexnet needs images of at least 67x67 but digits gives 8x8: "
                                               r"pass --image-size 67 or --model-arg small_input=true"),
        (dict(model="lenet5", data="digits", image_size=28), r"lenet5 takes only 32x32 images.*--image-size 32"),
        (dict(model="lenet5", data="digits", optimizer="adam"), r"optimizer must be one of sgd, adamw"),
        (dict(model="lenet5", data="digits", epochs=0), r"epochs must be a whole number >= 1"),
    ],
)
def test_mismatches_are_reported_before_training(tmp_path: Path, config: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        train(TrainConfig(**config, out=str(tmp_path / "run"), progress=False))
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_weights_for_another_model_list_the_mismatched_keys(tmp_path: Path) -> None:
    path = tmp_path / "lenet.safetensors"
    from convnets.weights import save_weights

    save_weights(convnets.create_model("lenet5"), path, {"model": "lenet5"})
    with pytest.raises(WeightsMismatchError, match=r"(?s)does not fit resnet20.*missing.*stem.conv.weight"
                                                   r".*not in the model.*stages.0.conv.weight"):
        load_weights(path, convnets.create_model("resnet20"))
    with pytest.raises(WeightsMismatchError, match=r"(?s)different shapes.*head.fc.weight: \(10, 84\)"):
        load_weights(path, convnets.create_model("lenet5", num_classes=3))


def test_damaged_and_unsafe_weight_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    from convnets.weights import save_weights

    save_weights(convnets.create_model("lenet5"), path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="damaged or truncated"):
        read_state_dict(path)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        read_state_dict(tmp_path / "empty.pt")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="cannot be read as a plain tensor checkpoint"):
        read_state_dict(tmp_path / "evil.pt")


def test_googlenet_trains_its_auxiliary_classifiers(tmp_path: Path) -> None:
    result = train(TrainConfig(model="googlenet", model_kwargs={"small_input": True}, data="digits", image_size=32,
                               batch_size=4, max_steps=1, epochs=1, progress=False, out=str(tmp_path / "g")))
    torch.manual_seed(0)
    fresh = convnets.create_model("googlenet", num_classes=10, in_chans=1, small_input=True)
    for name, value in fresh.state_dict().items():
        if name.startswith("aux.") and name.endswith("fc.weight"):
            assert not torch.equal(value, result.model.state_dict()[name]), f"{name} did not move"


def test_learning_rate_schedules() -> None:
    def curve(schedule: str, warmup: float = 0.0) -> list[float]:
        cfg = resolve(TrainConfig(model="resnet20", schedule=schedule, warmup_epochs=warmup, epochs=10))
        f = lr_factor(cfg.schedule, warmup_steps=int(cfg.warmup_epochs * 10), total_steps=100)
        return [f(s) for s in range(100)]

    cosine = curve("cosine", warmup=1)
    assert cosine[0] == pytest.approx(0.1) and cosine[10] == pytest.approx(1.0) and cosine[-1] < 0.01
    assert all(a >= b for a, b in zip(cosine[10:], cosine[11:], strict=False))
    step = curve("step")
    assert step[0] == 1.0 and step[50] == pytest.approx(0.1) and step[80] == pytest.approx(0.01)
    onecycle = curve("onecycle")
    assert onecycle[0] == pytest.approx(0.04) and max(onecycle) == pytest.approx(1.0, abs=0.02)
    assert curve("constant") == [1.0] * 100


def test_resnet_recipe_is_the_measured_one_and_plain_nets_share_it() -> None:
    # docs/benchmarks-train.md measured this recipe (0.93 in 8 epochs); the degradation experiment
    # compares plainN and resnetN, which must get the same recipe.
    def recipe(model: str) -> tuple:
        c = resolve(TrainConfig(model=model, out="unused"))
        return (c.epochs, c.batch_size, c.optimizer, c.lr, c.weight_decay, c.schedule, c.warmup_epochs,
                c.label_smoothing, c.augment)

    assert recipe("resnet20") == (8, 128, "sgd", 0.1, 5e-4, "cosine", 1, 0.1, "light")
    assert recipe("plain20") == recipe("resnet56") == recipe("resnet20")


def test_a_model_named_as_create_model_takes_it_gets_its_own_recipe() -> None:
    # "LeNet5" builds lenet5, but the recipes are matched by name: it trained with the generic recipe (SGD at 0.01,
    # chance accuracy after an epoch on digits where lenet5's reaches 0.53), and named its run " LeNet5".
    lenet = resolve(TrainConfig(model="lenet5", out="unused"))
    for spelling in ("LeNet5", " lenet-5 ", "LENET5"):
        c = resolve(TrainConfig(model=spelling, out="unused"))
        assert c.model == "lenet5" and (c.optimizer, c.lr, c.schedule) == (lenet.optimizer, lenet.lr, lenet.schedule)
    assert TrainConfig(model="LeNet5").given == TrainConfig(model="lenet5").given  # what resume compares


def test_cli_train_and_config_file(tmp_path: Path, capsys) -> None:
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"data": "digits", "image_size": 32, "epochs": 1, "batch_size": 128}))
    code = cli_main(["train", "lenet5", "--config", str(config), "--out", str(tmp_path / "run"), "--no-progress",
                     "--lr", "0.005"])
    assert code == 0
    assert "lenet5 on digits: test accuracy" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "config.json").read_text())["lr"] == 0.005
    assert cli_main(["train", "alexnet", "--data", "digits", "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert "alexnet needs images of at least 67x67" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text(json.dumps({"epochz": 1}))
    assert cli_main(["train", "lenet5", "--config", str(tmp_path / "bad.json")]) == 2
    assert "unknown config fields ['epochz']" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_two_processes_end_with_identical_weights(tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun, "torchrun ships with torch"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [torchrun, "--nproc_per_node=2", "--master_port=29531", str(Path(__file__).parent / "ddp_worker.py"),
         str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    # Only rank 0 wrote the run directory, once.
    assert (tmp_path / "run" / "last.safetensors").exists()
    start = convnets.create_model("lenet5").state_dict()
    assert not torch.equal(rank0["head.fc.weight"], start["head.fc.weight"])


@pytest.mark.slow
def test_ctrl_c_stops_between_steps_with_a_checkpoint_that_resumes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "convnets", "train", "lenet5", "--data", "digits", "--image-size", "32",
           "--epochs", "200", "--batch-size", "16", "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # wait until training is under way
        if line.startswith("epoch 1/"):
            break
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert f"--out {out} --resume" in stdout
    state = torch.load(out / "state.pt", weights_only=True)
    assert state["step"] >= 1437 // 16
    resumed = train(TrainConfig(model="lenet5", out=str(out), resume=True, max_steps=state["step"] + 3,
                                progress=False))
    assert resumed.steps == state["step"] + 3


def test_the_same_command_twice_starts_a_second_run_and_resume_takes_the_latest(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = {**LENET, "epochs": 1, "max_steps": 2}
    assert train(TrainConfig(**cfg)).out == Path("runs/lenet5-digits")
    assert train(TrainConfig(**cfg)).out == Path("runs/lenet5-digits-2")
    resumed = train(TrainConfig(model="lenet5", data="digits", resume=True, progress=False, max_steps=4))
    assert resumed.out == Path("runs/lenet5-digits-2") and resumed.steps == 4


def test_a_run_says_what_precision_it_computes_in() -> None:
    from convnets.training.loop import describe_precision

    cpu = torch.device("cpu")
    mobile = convnets.create_model("mobilenet_v2", num_classes=3, width=0.25)
    assert describe_precision(None, cpu, mobile) == "fp32"
    assert describe_precision(torch.bfloat16, cpu, mobile) == (
        "bf16 autocast (depthwise convolutions in fp32: faster on this CPU)")
    assert describe_precision(torch.bfloat16, cpu, convnets.create_model("lenet5")) == "bf16 autocast"
    assert describe_precision(torch.float16, torch.device("cuda"), mobile) == "fp16 autocast with loss scaling"
