"""The practice experiments (transfer, augmentation, ensemble) run end to end at the tiny budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import convnets
from convnets.experiments import Result, run_experiment
from convnets.experiments.practice import TRANSFER_REGIMES
from convnets.weights import load_weights

LENET5_MACS_32 = 416_520  # LeNet-5 on a 1x32x32 image (the published 0.42M multiply-adds)


def check_files(result: Result, out: Path, name: str) -> dict:
    data = json.loads((out / "results.json").read_text())
    assert data["name"] == name and data["budget"] == "tiny"
    assert result.figure is not None and result.figure.read_bytes()[:4] == b"\x89PNG"
    assert result.claim in (out / "results.md").read_text()
    return data["data"]


@pytest.mark.slow
def test_transfer_trains_every_regime_and_freezes_what_it_says(tmp_path: Path) -> None:
    result = run_experiment("transfer", "tiny", tmp_path, threads=1, seeds=2, progress=False)
    data = check_files(result, tmp_path, "transfer")
    assert data["target"] == "digits"
    sizes = {r["per_class"] for r in data["runs"]}
    assert len(data["runs"]) == 2 * len(sizes) * len(TRANSFER_REGIMES) and len(data["summary"]) == len(sizes)
    assert {r["seed"] for r in data["runs"]} == {0, 1} and len(result.verdicts) == 2
    assert all(set(s["accuracy"]) == set(TRANSFER_REGIMES) for s in data["summary"])
    # The frozen regime kept the shipped trunk exactly; fine-tuning everything moved it.
    shipped = convnets.create_model("resnet20", weights="fashion-mnist").state_dict()
    runs = tmp_path / "runs"
    frozen = load_weights(runs / "frozen---new-head--cached--5-s0" / "last.safetensors").state_dict()
    tuned = load_weights(runs / "fine-tune-all-5-s0" / "last.safetensors").state_dict()
    for key in ("stages.0.0.conv1.conv.weight", "stem.bn.running_mean"):  # frozen BatchNorm keeps its statistics
        assert torch.equal(frozen[key], shipped[key]), key
    assert not torch.equal(tuned["stages.0.0.conv1.conv.weight"], shipped["stages.0.0.conv1.conv.weight"])
    assert json.loads((runs / "scratch-5-s0" / "config.json").read_text())["weights"] is None


@pytest.mark.slow
def test_augmentation_gives_every_run_the_same_number_of_steps_and_pairs_the_presets(tmp_path: Path) -> None:
    result = run_experiment("augmentation", "tiny", tmp_path, threads=1, seeds=2, progress=False)
    data = check_files(result, tmp_path, "augmentation")
    runs = data["runs"]
    assert {r["arm"].split("-")[0] for r in runs} == {"none", "standard"} == set(data["presets"])
    assert len(runs) == 2 * 2 * len(data["sizes"])  # presets x seeds x sizes
    for r in runs:
        size = data["sizes"][r["arm"].split("-")[1]]
        per_epoch = size["n_train"] // size["batch_size"]
        assert r["steps"] == size["epochs"] * per_epoch
        assert abs(r["steps"] - data["steps"]) <= per_epoch / 2  # a fixed budget, to the nearest epoch
        config = json.loads((tmp_path / "runs" / f"{r['arm']}-s{r['seed']}" / "config.json").read_text())
        assert config["model"] == "resnet20" and config["seed"] == r["seed"]
    # The two verdicts: the gain at the smallest size, and the gain shrinking with the data.
    assert [v["arm"] for v in result.verdicts] == ["standard-5", "smallest"]
    assert all(v["verdict"] in ("reproduced", "contradicted", "inconclusive") for v in result.verdicts)
    assert all(v["difference"]["n"] == 2 for v in result.verdicts)
    assert "standard - none (paired, points)" in result.table


@pytest.mark.slow
def test_ensemble_costs_are_models_times_views_and_replicates_share_no_model(tmp_path: Path) -> None:
    result = run_experiment("ensemble", "tiny", tmp_path, threads=1, seeds=2, progress=False)
    data = check_files(result, tmp_path, "ensemble")
    assert data["macs_one_model"] == LENET5_MACS_32
    views = {"none": 1, "mirror": 2, "ten-crop": 10, "ten-crop 1px": 10}
    for r in data["rows"]:
        assert r["n_views"] == views[r["views"]] and r["cost"] == r["models"] * r["n_views"]
        assert r["macs_per_image"] == r["cost"] * LENET5_MACS_32
        assert set(r["by_replicate"]) == {"0", "1"}
    assert [(r["models"], r["views"]) for r in data["rows"]][0] == (1, "none")
    # Two replicates of a pool of 3: six models, each trained with its own seed.
    seeds = {json.loads((tmp_path / "runs" / f"member{i}-s{rep}" / "config.json").read_text())["seed"]
             for i in range(3) for rep in range(2)}
    assert data["models"] == 6 and seeds == set(range(6))
    assert len(data["single_views"]) == 10
    assert [v["reference"] for v in result.verdicts] == ["1 x none"] * 3


def test_ten_crop_1px_shifts_by_one_pixel() -> None:
    from convnets.data.views import ten_crop_views
    from convnets.evaluate import Member
    from convnets.experiments.practice import _view_args

    member = Member("m", torch.nn.Identity(), ["a", "b"], (1, 28, 28), (0.5,), (0.25,), "test")
    name, kwargs = _view_args("ten-crop 1px", member)
    assert name == "ten-crop" and kwargs["pad"] == 1 and kwargs["fill"] == [-2.0]
    x = torch.arange(28 * 28, dtype=torch.float32).view(1, 1, 28, 28)
    views = ten_crop_views(x, **kwargs)
    assert torch.equal(views[1, 0, 0, 1:, 1:], x[0, 0, :27, :27])  # top-left corner: the image moved by 1 px
    assert _view_args("ten-crop", member)[1]["pad"] == 3  # the library's 1/8 of 28


@pytest.mark.slow
def test_transfer_split_pretrains_on_half_the_classes_and_transfers_to_the_other(tmp_path: Path) -> None:
    from convnets.data.datasets import load_dataset

    result = run_experiment("transfer-split", "tiny", tmp_path, data="digits", threads=1, seeds=2, progress=False)
    data = check_files(result, tmp_path, "transfer-split")
    source, target = load_dataset(tmp_path / "data" / "source"), load_dataset(tmp_path / "data" / "target")
    assert set(source.train.labels.tolist()) == {0, 1, 2, 3, 4} and set(target.train.labels.tolist()) == {5, 6, 7, 8, 9}
    assert set(target.test.labels.tolist()) == {5, 6, 7, 8, 9}  # disjoint classes, test split too
    digits = load_dataset("digits")
    assert len(source.train) + len(target.train) == len(digits.train)
    # The pretrained regimes started from the source run; the frozen one kept its trunk exactly.
    shipped = load_weights(tmp_path / "runs" / "source-s0" / "last.safetensors").state_dict()
    frozen = load_weights(tmp_path / "runs" / "frozen---new-head--cached--1-s1" / "last.safetensors").state_dict()
    assert torch.equal(frozen["stages.0.0.conv1.conv.weight"], shipped["stages.0.0.conv1.conv.weight"])
    assert frozen["head.fc.weight"].shape[0] == 10 and shipped["head.fc.weight"].shape[0] == 5  # a new head
    assert set(data["accuracy"]) == {f"{r}-{n}" for r in ("scratch", "frozen---new-head--cached-", "fine-tune-all")
                                     for n in (1, 5)}
    assert all(set(v) == {"0", "1"} for v in data["accuracy"].values())  # by seed (JSON keys)
    assert len(result.verdicts) == 3 and all(v["difference"]["n"] == 2 for v in result.verdicts)
