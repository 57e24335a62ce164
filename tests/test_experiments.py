"""Each experiment runs end to end at a tiny budget and writes its figure, JSON and table."""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import pytest

from convnets.cli import main as cli_main
from convnets.experiments import EXPERIMENTS, run_experiment


@pytest.mark.parametrize("name", ["one-by-one", "depthwise", "degradation", "classic"])
def test_experiment_writes_its_files(name: str, tmp_path: Path) -> None:
    result = run_experiment(name, "tiny", tmp_path, threads=1, seeds=1, progress=False)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["name"] == name and data["budget"] == "tiny"
    assert result.figure is not None and result.figure.read_bytes()[:4] == b"\x89PNG"
    assert result.claim in (tmp_path / "results.md").read_text()


def test_one_by_one_reproduces_the_course_numbers(tmp_path: Path) -> None:
    rows = {r["kernel"]: r for r in run_experiment("one-by-one", "tiny", tmp_path).data["rows"]}
    assert rows[1]["counted_macs"] == rows[1]["formula_macs"] == 28 * 28 * 32 * 192
    assert rows[5]["counted_macs"] == 120_422_400


def test_depthwise_counted_ratio_is_the_formula(tmp_path: Path) -> None:
    for row in run_experiment("depthwise", "tiny", tmp_path).data["rows"]:
        assert row["counted_ratio"] == pytest.approx(1 / row["c_out"] + 1 / row["f"] ** 2, rel=1e-12)


def test_depthwise_times_mobilenets_real_layer_shapes(tmp_path: Path) -> None:
    result = run_experiment("depthwise", "tiny", tmp_path)
    layers = {(r["side"], r["c_in"]): r for r in result.data["mobilenet_layers"]}
    r = layers[(14, 512)]  # 14x14x512 -> 512: 14*14*512*9*512 standard; 14*14*512*9 + 14*14*512*512 separable
    assert r["normal_macs"] == 462_422_016 and r["separable_macs"] == 903_168 + 51_380_224
    assert r["normal_ms"] > 0 and r["separable_ms"] > 0
    assert "| 7x7x1024 -> 1024 |" in result.table


def test_cli_lists_and_refuses_unknown_experiments(capsys) -> None:
    assert cli_main(["experiment"]) == 0
    listed = capsys.readouterr().out
    assert "one-by-one" in listed and "depthwise" in listed and len(EXPERIMENTS) >= 2
    assert cli_main(["experiment", "degradationn"]) == 2
    assert "unknown experiment 'degradationn'" in capsys.readouterr().err


@pytest.mark.slow
def test_degradation_trains_both_families_with_one_recipe_and_every_seed(tmp_path: Path, capsys) -> None:
    result = run_experiment("degradation", "tiny", tmp_path, threads=1, seeds=2, progress=False)
    data = result.data
    assert set(data["runs"]) == {"plain20-s0", "plain20-s1", "resnet20-s0", "resnet20-s1"}
    steps = [[row["step"] for row in run["rows"]] for run in data["runs"].values()]
    assert all(s == steps[0] for s in steps) and steps[0][-1] > 0  # same iterations on the x axis for both panels
    assert set(data["train_error"]["plain20"]) == {0, 1}
    md = (tmp_path / "results.md").read_text()
    assert "| 20 |" in md and "Machine: " in md
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["seconds"] > 0 and saved["machine"]["torch"] and saved["verdict"] is None  # one depth: no claim
    # The plan came first: runs, steps and an estimate measured on the first steps of each arm.
    out = capsys.readouterr().out
    assert out.index("2 arm(s) x 2 seed(s) = 4 runs, 24 steps") < out.index("estimated")
    plan = json.loads((tmp_path / "plan-degradation.json").read_text())
    assert [a["arm"] for a in plan["arms"]] == ["plain20", "resnet20"] and plan["steps"] == 24
    assert all(a["seconds_per_step"] > 0 and a["steps_per_run"] == 6 for a in plan["arms"])
    # The runs resumed from the probe's first step instead of training it again.
    assert json.loads((tmp_path / "runs" / "plain20-s0" / "trained.json").read_text())["steps"] == 6


def test_a_seed_gives_plain_and_residual_nets_the_same_start() -> None:
    # The paired comparison rests on this: same seed, same initial weights (and, through the seed,
    # the same training subset and data order).
    import torch

    from convnets import create_model

    torch.manual_seed(3)
    plain = create_model("plain20", num_classes=10, in_chans=1).state_dict()
    torch.manual_seed(3)
    residual = create_model("resnet20", num_classes=10, in_chans=1).state_dict()
    assert plain.keys() == residual.keys() and all(torch.equal(plain[k], residual[k]) for k in plain)


def test_run_all_reads_finished_runs_back_and_refuses_twice_planned_runs(tmp_path: Path, capsys) -> None:
    from convnets.errors import ConfigError
    from convnets.experiments import Run, Setting

    setting = Setting("tiny", tmp_path, data="digits", threads=1, seeds=1, progress=False)
    runs = [Run("lenet", 0, "lenet5", dict(epochs=1, batch_size=64, train_per_class=20))]
    first = setting.run_all(runs, "demo")[("lenet", 0)]
    stamp = (first.out / "last.safetensors").stat().st_mtime_ns
    again = setting.run_all(runs, "demo")[("lenet", 0)]
    assert again.test_accuracy == first.test_accuracy and (first.out / "last.safetensors").stat().st_mtime_ns == stamp
    second_plan = capsys.readouterr().out.split("demo --budget tiny")[2]
    assert "1 runs, 3 steps (0 to train)" in second_plan  # 200 digits at batch 64
    with pytest.raises(ConfigError, match="planned twice"):
        setting.run_all(runs * 2, "demo")


def test_rerunning_an_experiment_reuses_its_finished_training_runs(tmp_path: Path) -> None:
    first = run_experiment("classic", "tiny", tmp_path, threads=1, seeds=1, progress=False)
    trained = tmp_path / "runs" / "lenet5-s0" / "last.safetensors"
    stamp = trained.stat().st_mtime_ns
    second = run_experiment("classic", "tiny", tmp_path, threads=1, seeds=1, progress=False)
    assert trained.stat().st_mtime_ns == stamp  # read back, not trained again
    assert [r["test_accuracy"] for r in second.data["rows"]] == [r["test_accuracy"] for r in first.data["rows"]]


def test_classic_counts_each_network_at_its_training_size(tmp_path: Path) -> None:
    from convnets import create_model
    from convnets.analysis import count

    rows = {r["model"]: r for r in run_experiment("classic", "tiny", tmp_path, threads=1, seeds=1,
                                                  progress=False).data["rows"]}
    assert rows["resnet20"]["macs"] == count(create_model("resnet20", num_classes=10, in_chans=1), (1, 32, 32)).macs
    assert rows["lenet5"]["params"] == 61_706


class _FirstStepsDone(Exception):
    """Raised by the stand-in planner once it has trained the first steps of every arm of a full-budget plan."""


@pytest.mark.slow
@pytest.mark.parametrize("name", ["degradation", "bottleneck", "scaling", "transfer", "transfer-split",
                                  "augmentation", "ensemble", "classic"])
def test_full_budget_runs_the_first_steps_of_every_arm(name: str, tmp_path: Path, monkeypatch) -> None:
    # The full budgets are for a GPU and never run here: train the first run of every arm they plan,
    # as planned (network, input size, recipe, weights, freezing), for one step on one image per class,
    # so that a full setting that no longer builds, loads or trains fails here. Networks over 20M
    # parameters (AlexNet, VGG-16: their checkpoints alone are gigabytes) are resolved and built on
    # the meta device at their planned input size instead.
    import torch

    from convnets import count, create_model
    from convnets.experiments import Setting
    from convnets.training.config import TrainConfig, model_source, resolve

    arms: dict[str, dict] = {}
    original = Setting.run_all

    def first_steps(self: Setting, runs, title: str):
        assert self.budget == "full" and runs
        firsts = {}
        for run in runs:
            firsts.setdefault(run.arm, run)
        for arm, run in firsts.items():
            capped = dataclasses.replace(run, config={**run.config, "max_steps": 1, "batch_size": 2,
                                                      "train_per_class": 1, "test_per_class": 1})
            cfg = resolve(TrainConfig(**self._request(run.name, run.model, run.config)),
                          model_source(run.model, run.builder))
            with torch.device("meta"):
                build = run.builder or functools.partial(create_model, run.model)
                net = build(num_classes=10, in_chans=1, **cfg.model_kwargs)
            if sum(p.numel() for p in net.parameters()) > 20_000_000:
                side = cfg.image_size or (net.fixed_input_size or (28, 28))[0]
                arms[arm] = {"steps": 1 if count(net, (1, side, side)).macs > 0 else 0, "epochs": cfg.epochs}
                continue
            # classic's nets see 224-pixel images: resizing all 70,000 of Fashion-MNIST for each (4 minutes)
            # would be the whole test, so the 1,797 digits stand in; net, size and recipe stay as planned.
            data = "digits" if name == "classic" else self.data
            trained = original(dataclasses.replace(self, budget="tiny", progress=False, data=data), [capped], title)
            arms[arm] = {"steps": next(iter(trained.values())).steps, "epochs": run.config.get("epochs")}
        if "pretraining" in title:  # transfer-split trains its source first: the transfer arms need its weights
            return {(r.arm, r.seed): trained_run for r in runs
                    for trained_run in [original(dataclasses.replace(self, budget="tiny", progress=False),
                                                 [dataclasses.replace(r, config={**r.config, "max_steps": 1,
                                                                                 "batch_size": 2,
                                                                                 "train_per_class": 1,
                                                                                 "test_per_class": 1})],
                                                 title)[(r.arm, r.seed)]]}
        raise _FirstStepsDone

    monkeypatch.setattr(Setting, "run_all", first_steps)
    monkeypatch.setattr("convnets.experiments.architecture._interleaved_ms",
                        lambda modules, x, rounds: dict.fromkeys(modules, 1.0))  # bottleneck times before training
    with pytest.raises(_FirstStepsDone):
        run_experiment(name, "full", tmp_path, threads=1, seeds=3, progress=False)
    assert arms and all(a["steps"] == 1 for a in arms.values())
    planned_epochs = [a["epochs"] for a in arms.values() if a["epochs"] is not None]
    assert all(e >= 10 for e in planned_epochs)  # the full settings keep paper-scale budgets


def test_the_verdict_rule_in_the_docs_is_the_one_the_code_applies() -> None:
    from convnets.experiments import VERDICT_RULE

    docs = (Path(__file__).parent.parent / "docs" / "RESULTS.md").read_text()
    assert VERDICT_RULE.strip() in docs


def test_write_report_collects_every_section_verdict_and_wall_time(tmp_path: Path) -> None:
    from convnets.experiments import Result, compare, write_report

    sections = []
    for name, values in (("alpha", {0: 0.9, 1: 0.91, 2: 0.92}), ("beta", {0: 0.5, 1: 0.6, 2: 0.4})):
        out = tmp_path / "results" / name
        by_seed = {"new": values, "old": {0: 0.5, 1: 0.5, 2: 0.5}}
        result = Result(name, f"{name} claim", "| a |\n| --- |\n| 1 |", {}, verdicts=[
            compare(by_seed, "new", "old", "new beats old")], seconds=125.0, machine=None)
        result.write(out, "small")
        result.out = out
        sections.append(result)
    report = write_report(sections, tmp_path / "RESULTS.md", "small")
    text = report.read_text()
    assert "## alpha" in text and "## beta" in text and "alpha claim" in text
    assert "| alpha | reproduced | new beats old: 41.00 [38.52, 43.48] points | 2.1 min |" in text  # seconds=125
    assert "| beta | inconclusive |" in text  # 0.0, 0.1, -0.1: the interval holds zero
    assert "Machine: " in text


def test_run_all_after_a_stop_keeps_the_finished_runs_and_trains_the_rest(tmp_path: Path, monkeypatch) -> None:
    from convnets.experiments import Run, Setting

    setting = Setting("tiny", tmp_path, data="digits", threads=1, seeds=2, progress=False)
    runs = [Run("lenet", seed, "lenet5", dict(epochs=2, batch_size=32, train_per_class=20, seed=seed))
            for seed in (0, 1)]
    train = Setting.train

    def stopped_at_the_second(self: Setting, name: str, model: str, builder=None, **config):
        if name == "lenet-s1":
            raise KeyboardInterrupt
        return train(self, name, model, builder, **config)

    monkeypatch.setattr(Setting, "train", stopped_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        setting.run_all(runs, "demo")
    monkeypatch.setattr(Setting, "train", train)
    first = tmp_path / "runs" / "lenet-s0" / "last.safetensors"
    stamp = first.stat().st_mtime_ns
    done = setting.run_all(runs, "demo")
    assert first.stat().st_mtime_ns == stamp  # read back, not trained again
    assert done[("lenet", 1)].steps == done[("lenet", 0)].steps == 2 * (200 // 32)
    assert json.loads((tmp_path / "runs" / "lenet-s1" / "config.json").read_text())["seed"] == 1


def test_the_wall_time_of_every_invocation_is_kept_and_reported(tmp_path: Path) -> None:
    # A re-run reads its finished runs back in seconds; the report still says what the experiment cost.
    import convnets.experiments as experiments

    out = tmp_path / "one"
    first = run_experiment("one-by-one", "tiny", out, threads=1, progress=False)
    record = json.loads((out / experiments.WALL_FILE).read_text())["invocations"]
    assert [i["how"] for i in record] == ["finished"] and record[0]["seconds"] == round(first.seconds, 1)
    second = run_experiment("one-by-one", "tiny", out, threads=1, progress=False)
    assert second.total_seconds == pytest.approx(round(first.seconds, 1) + round(second.seconds, 1))
    # A directory from before the record: its results.json gives the first invocation.
    (out / experiments.WALL_FILE).unlink()
    saved = json.loads((out / "results.json").read_text())
    saved["seconds"] = 600.0
    (out / "results.json").write_text(json.dumps(saved))
    third = run_experiment("one-by-one", "tiny", out, threads=1, progress=False)
    assert third.total_seconds == pytest.approx(600.0 + round(third.seconds, 1))
    assert "wall time 10.0 min over all invocations" in (out / "results.md").read_text()


def test_a_finished_run_saved_before_a_new_option_existed_is_still_reused(tmp_path: Path) -> None:
    # A TrainConfig field added after a run finished (at its default) does not make it another run;
    # a field the run really set differently does.
    from convnets.experiments import Run, Setting

    setting = Setting("tiny", tmp_path, data="digits", threads=1, seeds=1, progress=False)
    run = Run("lenet", 0, "lenet5", dict(epochs=1, batch_size=32, train_per_class=10, seed=0))
    setting.run_all([run], "demo")
    record = tmp_path / "runs" / "lenet-s0" / "trained.json"
    saved = json.loads(record.read_text())
    del saved["request"]["ema"]  # as written before --ema existed
    record.write_text(json.dumps(saved))
    assert setting.finished("lenet-s0", "lenet5", **run.config) is not None
    saved["request"]["epochs"] = 3
    record.write_text(json.dumps(saved))
    assert setting.finished("lenet-s0", "lenet5", **run.config) is None


def test_a_new_option_with_a_default_factory_does_not_make_a_finished_run_another(tmp_path: Path) -> None:
    # model_kwargs defaults through a default_factory, which dataclasses.fields' .default does not show.
    from convnets.experiments import Run, Setting

    setting = Setting("tiny", tmp_path, data="digits", threads=1, seeds=1, progress=False)
    run = Run("lenet", 0, "lenet5", dict(epochs=1, batch_size=32, train_per_class=10, seed=0, max_steps=1))
    setting.run_all([run], "demo")
    record = tmp_path / "runs" / "lenet-s0" / "trained.json"
    saved = json.loads(record.read_text())
    del saved["request"]["model_kwargs"]  # as if written before --model-arg existed
    record.write_text(json.dumps(saved))
    assert setting.finished("lenet-s0", "lenet5", **run.config) is not None


def test_experiment_all_runs_every_experiment_and_writes_the_report(tmp_path: Path, monkeypatch, capsys) -> None:
    import convnets.experiments as experiments

    experiments.register_all()
    only = {name: experiments.EXPERIMENTS[name] for name in ("one-by-one", "depthwise")}
    monkeypatch.setattr(experiments, "EXPERIMENTS", only)
    monkeypatch.setattr("convnets.cli.experiment.EXPERIMENTS", only)
    status = cli_main(["experiment", "all", "--budget", "tiny", "--out", str(tmp_path / "results"), "--report",
                       str(tmp_path / "R.md")])
    assert status == 0
    report = (tmp_path / "R.md").read_text()
    assert report.index("## one-by-one") < report.index("## depthwise") < report.index("## Closing note")
    assert "](results/depthwise/depthwise.png)" in report  # figures linked from the report's folder
    assert "Machine: " in report and "torch " in report
    assert "| one-by-one | cost only (exact counts) |" in report
    assert (tmp_path / "results" / "one-by-one" / "results.json").exists()
