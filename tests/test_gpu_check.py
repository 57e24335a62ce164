"""benchmarks/gpu_check.py: its no-GPU exit, the runs it plans, and its bookkeeping, exercised on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fixture_scripts import BENCHMARKS, benchmark_script


@pytest.fixture(scope="module")
def gpu_check():
    with benchmark_script("gpu_check") as module:
        yield module


def test_without_cuda_says_so_in_one_line_and_exits_0(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU even on a machine with one
    done = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_check.py"), "--out", str(out)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1 and "no CUDA" in done.stdout and "nothing to check" in done.stdout
    assert "Traceback" not in done.stderr
    assert not out.exists()


def test_plan_one_device(gpu_check, tmp_path):
    jobs = gpu_check.plan(1, False, ["--data", "digits"], 3, tmp_path)
    assert [j.name for j in jobs] == ["main job: lenet5", "resnet20 bf16"]
    main_job, resnet = (j.argv[len(gpu_check.CONVNETS):] for j in jobs)
    assert main_job == ["train", "--data", "digits", "--no-progress", "lenet5", "--out", str(tmp_path / "lenet5")]
    assert resnet[resnet.index("resnet20"):] == ["resnet20", "--epochs", "3", "--precision", "bf16", "--out",
                                                 str(tmp_path / "resnet20-bf16")]
    assert all(j.processes == 1 for j in jobs)


def test_plan_compile_and_two_devices(gpu_check, tmp_path):
    jobs = gpu_check.plan(2, True, ["--data", "fashion-mnist"], 1, tmp_path)
    assert [j.name for j in jobs] == ["main job: lenet5", "resnet20 bf16", "resnet20 bf16 --compile",
                                      "resnet20 bf16 DDP x2"]
    assert "--compile" in jobs[2].argv and "--compile" not in jobs[1].argv
    ddp = jobs[3]
    assert ddp.argv[:5] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert ddp.argv[5:8] == ["-m", "convnets", "train"] and ddp.processes == 2
    assert len({j.out for j in jobs}) == 4  # each run its own directory


def test_has_option_on_the_real_help(gpu_check):
    # the help text compile_offered() reads, made in-process: its options are found, a prefix of one is not
    import argparse

    from convnets.cli import train

    parser = argparse.ArgumentParser()
    train.add_parser(parser.add_subparsers())
    (command,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    text = command.choices["train"].format_help()
    options = {o for a in command.choices["train"]._actions for o in a.option_strings}
    assert {"--channels-last", "--precision", "--epochs"} <= options
    assert all(gpu_check.has_option(text, o) for o in options)
    assert not gpu_check.has_option(text, "--channels") and not gpu_check.has_option(text, "--epoch")
    assert gpu_check.has_option(text, "--compile") == ("--compile" in options)


def test_has_option(gpu_check):
    text = "  --channels-last, --no-channels-last\n  --compile-mode MODE  how\n"
    assert not gpu_check.has_option(text, "--compile")
    assert gpu_check.has_option(text + "  --compile           torch.compile the model\n", "--compile")
    assert gpu_check.has_option("[--compile] [--ema DECAY]", "--compile")


def test_parse_smi(gpu_check):
    assert gpu_check.parse_smi("37, 1024\n5, 20\n") == [(37.0, 1024.0), (5.0, 20.0)]
    assert gpu_check.parse_smi("[N/A], 512\n") == [(None, 512.0)]
    assert gpu_check.parse_smi("NVIDIA-SMI has failed\n\n") == []


def test_smi_follows_visible_devices(gpu_check, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert gpu_check.smi("-q") == ["nvidia-smi", "--id=2,3", "-q"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-0b1c")
    assert gpu_check.smi("-q") == ["nvidia-smi", "-q"]


def test_summarise(gpu_check):
    rows = [{"images_per_s": 100.0, "seconds": 2.0, "test_acc": 0.5},
            {"images_per_s": 300.0, "seconds": 1.0, "test_acc": 0.7},
            {"images_per_s": 200.0, "seconds": 1.0, "test_acc": 0.8}]
    samples = [[(50.0, 1000.0), (0.0, 10.0)], [(90.0, 1500.0), (None, 10.0)]]
    one = gpu_check.summarise(rows, samples, processes=1)
    assert one["images_per_s_first_epoch"] == 100.0 and one["images_per_s_later_epochs"] == 250.0
    assert (one["test_acc"], one["train_seconds"], one["epochs"]) == (0.8, 4.0, 3)
    assert (one["gpu_utilisation_mean"], one["gpu_utilisation_max"], one["gpu_memory_max_mib"]) == (70.0, 90.0, 1500.0)
    two = gpu_check.summarise(rows[:1], samples, processes=2)  # both GPUs; the missing reading left out
    assert two["gpu_utilisation_mean"] == pytest.approx(140 / 3, abs=0.05)
    assert two["images_per_s_later_epochs"] is None
    nothing = gpu_check.summarise([], [], processes=1)
    assert nothing["test_acc"] is None and nothing["gpu_utilisation_mean"] is None


@pytest.mark.slow
def test_runs_and_records_on_the_cpu(gpu_check, tmp_path, monkeypatch, capsys):
    # The GPU path end to end with the CUDA check bypassed: one real (CPU) training run and one that fails.
    real_plan = gpu_check.plan

    def plan(devices, compile_option, data, epochs, runs):
        jobs = real_plan(devices, compile_option, data, epochs, runs)
        broken = [a if a != "digits" else str(tmp_path / "missing") for a in jobs[1].argv]
        return [jobs[1], gpu_check.Job("broken", broken, runs / "broken")]

    monkeypatch.setattr(gpu_check, "no_cuda_reason", lambda: None)
    monkeypatch.setattr(gpu_check.torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(gpu_check, "plan", plan)
    monkeypatch.setattr(gpu_check, "compile_offered", lambda: False)  # a process start saved; has_option is tested
    monkeypatch.setattr(gpu_check, "machine", lambda: {"gpus": []})
    out = tmp_path / "gpu_check.json"
    status = gpu_check.main(["--data", "digits", "--epochs", "1", "--interval", "600", "--runs",
                             str(tmp_path / "runs"), "--out", str(out)])
    assert status == 1  # one run failed
    runs = json.loads(out.read_text())["runs"]
    assert [(r["name"], r["returncode"]) for r in runs] == [("resnet20 bf16", 0), ("broken", 2)]
    (row,) = [json.loads(line) for line in (tmp_path / "runs" / "resnet20-bf16" / "metrics.jsonl").open()]
    assert runs[0]["epochs"] == 1 and runs[0]["images_per_s_first_epoch"] == row["images_per_s"] > 0
    assert runs[0]["test_acc"] == row["test_acc"] and runs[0]["gpu_samples"] == 0
    assert runs[1]["epochs"] == 0
    assert "FAILED (exit 2)" in capsys.readouterr().out
