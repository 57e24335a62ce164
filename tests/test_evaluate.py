"""Evaluation: scores, test-time views, ensembles and their refusal of mismatched classes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import convnets
from convnets.cli import main as cli_main
from convnets.evaluate import Ensemble, combine_outputs, evaluate, scores, tta
from convnets.training import TrainConfig, train
from convnets.weights import save_weights

RUN = dict(model="lenet5", data="digits", image_size=32, batch_size=64, epochs=1, progress=False, device="cpu")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("runs")
    for seed in (0, 1):
        train(TrainConfig(**RUN, seed=seed, out=str(root / f"seed{seed}")))
    return [root / "seed0", root / "seed1"]


def test_scores_on_a_hand_made_example() -> None:
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1], [0.2, 0.5, 0.3]])
    labels = torch.tensor([0, 2, 1, 1])
    s = scores(probs, labels, k=2)
    assert s.accuracy == 0.75 and s.top_k == 1.0
    assert s.confusion.tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert s.per_class == [1.0, 0.5, 1.0]


def test_tta_averages_probabilities_over_views() -> None:
    model = convnets.create_model("resnet20", num_classes=4).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(tta(model, x), F.softmax(model(x), 1))
        mirrored = (F.softmax(model(x), 1) + F.softmax(model(x.flip(-1)), 1)) / 2
        torch.testing.assert_close(tta(model, x, "mirror"), mirrored)
        ten = tta(model, x, "ten-crop", pad=4)
    assert ten.shape == (3, 4) and torch.allclose(ten.sum(1), torch.ones(3))


def test_ensemble_combinations() -> None:
    a = torch.tensor([[4.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    b = torch.tensor([[0.0, 3.0, 0.0], [0.0, 2.0, 0.0]])
    c = torch.tensor([[0.0, 2.9, 0.0], [2.0, 0.0, 0.0]])
    equal = torch.ones(3) / 3
    assert combine_outputs([a, b, c], "vote", equal).argmax(1).tolist() == [1, 1]  # two votes for class 1 each
    assert combine_outputs([a, b, c], "logit", equal).argmax(1).tolist() == [1, 1]
    assert combine_outputs([a], "prob", torch.ones(1)).argmax(1).tolist() == [0, 1]
    heavy_a = torch.tensor([0.8, 0.1, 0.1])
    assert combine_outputs([a, b, c], "vote", heavy_a).argmax(1).tolist() == [0, 1]
    models = [convnets.create_model("lenet5").eval() for _ in range(2)]
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        expected = (F.softmax(models[0](x), 1) + F.softmax(models[1](x), 1)) / 2
        torch.testing.assert_close(Ensemble(models)(x), expected)
    with pytest.raises(ValueError, match="combine must be one of"):
        Ensemble(models, combine="median")


def test_evaluate_one_run_and_an_ensemble(two_runs: list[Path], tmp_path: Path) -> None:
    single = evaluate([two_runs[0]])
    assert single.ensemble is None and 0.5 < single.members[0].scores.accuracy <= 1
    both = evaluate(two_runs, views="mirror")
    assert both.ensemble is not None and len(both.members) == 2
    assert both.ensemble.model_seconds == pytest.approx(sum(m.model_seconds for m in both.members))
    assert "ensemble of 2" in both.table() and "cost x" in both.table()
    from convnets.evaluate import write_report

    write_report(both, tmp_path / "eval")
    payload = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert len(payload["results"]) == 3 and len(payload["confusion"]) == 10
    assert (tmp_path / "eval" / "confusion.png").read_bytes()[:4] == b"\x89PNG"


def test_ensembles_of_different_classes_are_refused(two_runs: list[Path], tmp_path: Path) -> None:
    other = tmp_path / "other.safetensors"
    meta = dict(model="lenet5", num_classes=10, in_chans=1, input_size=[1, 32, 32], mean=[0.3], std=[0.3],
                classes=[f"c{i}" for i in range(10)], dataset="digits")
    save_weights(convnets.create_model("lenet5"), other, meta)
    with pytest.raises(ValueError, match=r"(?s)different classes:.*\['0', '1'.*\['c0', 'c1'"):
        evaluate([two_runs[0], other])


def test_cli_evaluate(two_runs: list[Path], tmp_path: Path, capsys) -> None:
    assert cli_main(["evaluate", *map(str, two_runs), "--combine", "vote", "--out", str(tmp_path / "e")]) == 0
    out = capsys.readouterr().out
    assert "ensemble of 2" in out and "confusion matrix" in out
    assert cli_main(["evaluate", str(tmp_path / "missing")]) == 2
    assert "neither a run directory" in capsys.readouterr().err


def test_cli_ten_crop_says_what_its_corners_assume(two_runs: list[Path], tmp_path: Path, capsys) -> None:
    # lenet5:fashion-mnist, trained without shifts, falls from 0.91 to 0.39 with ten-crop: the CLI says to compare.
    for views, noted in (("ten-crop", True), ("mirror", False)):
        assert cli_main(["evaluate", str(two_runs[0]), "--tta", views, "--out", str(tmp_path / views)]) == 0
        assert ("compare with --tta none" in capsys.readouterr().out) is noted


# ---------------------------------------------------------------- what the timings mean


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LeNet-5 trained for one epoch on a small image folder with train/ and val/ splits, given by its path."""
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 4), ("val", 4)):
        for c in range(3):
            (root / "photos" / split / f"class{c}").mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / "photos" / split / f"class{c}" / f"{i}.png")
    run = root / "run"
    train(TrainConfig(model="lenet5", data=str(root / "photos"), image_size=32, batch_size=8, epochs=1,
                      progress=False, device="cpu", num_workers=0, out=str(run)))
    return run


def test_folder_evaluation_times_the_model_apart_from_decoding(folder_run: Path, tmp_path: Path, monkeypatch) -> None:
    """Each image takes at least 50 ms to open here; that time is in the end-to-end rate and not in the model's.

    Structural, not a timing race: the decode delay is a floor on (total - model), and LeNet-5 on 12
    images (one forward pass) is far below the 0.6 s those delays add up to.
    """
    import time

    from PIL import Image

    real_open = Image.open

    def slow_open(*args, **kwargs):
        time.sleep(0.05)
        return real_open(*args, **kwargs)

    monkeypatch.setattr(Image, "open", slow_open)
    monkeypatch.chdir(tmp_path)  # the run's data is found from its config.json, whatever the directory
    report = evaluate([folder_run], device="cpu")
    result = report.members[0]
    decoding = 0.05 * result.images
    assert result.images == 12 and report.data.endswith("photos")
    assert result.model_seconds <= result.total_seconds
    assert result.total_seconds - result.model_seconds >= decoding  # decoding is in the end-to-end time...
    assert result.model_seconds < decoding  # ...and not in the model's
    assert result.images_per_second == pytest.approx(result.images / result.total_seconds)
    assert result.model_ms_per_image == pytest.approx(1000 * result.model_seconds / result.images)
    table = report.table()
    assert "model ms/image" in table and "images/s end-to-end" in table
    assert "forward passes alone" in table and "including reading, decoding" in table


def test_evaluation_json_carries_both_timings_and_replaces_only_its_own_report(two_runs: list[Path],
                                                                              tmp_path: Path) -> None:
    from convnets.errors import RunDirectoryError
    from convnets.evaluate import write_report

    report = evaluate(two_runs)
    out = tmp_path / "eval"
    write_report(report, out)
    write_report(report, out)  # a second report replaces the first
    payload = json.loads((out / "evaluation.json").read_text())
    for result in payload["results"]:
        assert 0 < result["model_seconds"] <= result["total_seconds"]
        assert result["images"] == 360
    assert payload["results"][-1]["model_seconds"] == pytest.approx(sum(r["model_seconds"] for r in
                                                                        payload["results"][:2]))
    assert sorted(p.name for p in out.iterdir()) == ["confusion.png", "evaluation.json", "evaluation.txt"]
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "confusion.png").write_bytes(b"their picture")
    with pytest.raises(RunDirectoryError, match="confusion.png exists"):
        write_report(report, tmp_path / "theirs")
    assert (tmp_path / "theirs" / "confusion.png").read_bytes() == b"their picture"


# ---------------------------------------------------------------- ensembles


def test_ensemble_weights_weigh_the_members(two_runs: list[Path]) -> None:
    """A weight of 0 leaves a member out: the ensemble then predicts what the other member predicts."""
    first_only = evaluate(two_runs, weights=[1, 0])
    second_only = evaluate(two_runs, weights=[0, 3])
    assert first_only.ensemble.scores.accuracy == first_only.members[0].scores.accuracy
    assert second_only.ensemble.scores.accuracy == second_only.members[1].scores.accuracy
    assert torch.equal(first_only.ensemble.scores.confusion, first_only.members[0].scores.confusion)
    assert torch.equal(second_only.ensemble.scores.confusion, second_only.members[1].scores.confusion)


def test_an_ensemble_of_members_with_different_input_sizes(two_runs: list[Path], tmp_path: Path) -> None:
    """Each member sees the test set at its own input size and normalisation; the labels line up."""
    small = tmp_path / "resnet20-16px.safetensors"
    meta = dict(model="resnet20", num_classes=10, in_chans=1, input_size=[1, 16, 16], mean=[0.2], std=[0.4],
                classes=[str(i) for i in range(10)], dataset="digits")
    save_weights(convnets.create_model("resnet20", num_classes=10, in_chans=1), small, meta)
    report = evaluate([two_runs[0], small], batch_size=128)
    alone = evaluate([small], batch_size=128)
    assert [m.images for m in report.members] == [360, 360]
    assert report.members[1].scores.accuracy == pytest.approx(alone.members[0].scores.accuracy)
    assert report.members[0].scores.accuracy == pytest.approx(evaluate([two_runs[0]]).members[0].scores.accuracy)
    assert report.ensemble is not None


def test_evaluate_reads_only_the_test_split_and_matches_a_plain_loop(two_runs: list[Path], monkeypatch) -> None:
    import convnets.evaluate as ev
    from convnets.data import load_dataset
    from convnets.weights import load_weights

    loaded = []

    def spy(*args, **kwargs):
        loaded.append(load_dataset(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(ev, "load_dataset", spy)
    report = evaluate([two_runs[0]], device="cpu")
    assert loaded[0].train is None  # no training image read: the normalisation is the weights'
    # The same predictions as a plain loop over the whole dataset, contiguous, normalised with the run's statistics.
    data = load_dataset("digits", image_size=32)
    model = load_weights(two_runs[0] / "best.safetensors").eval()
    meta = json.loads((two_runs[0] / "config.json").read_text())
    assert meta["data"] == "digits"
    member = ev.load_member(two_runs[0])
    x = (data.test.images.float() / 255 - torch.tensor(member.mean).view(1, -1, 1, 1)) / torch.tensor(
        member.std).view(1, -1, 1, 1)
    with torch.no_grad():
        pred = model(x).argmax(1)
    assert report.members[0].scores.accuracy == (pred == data.test.labels).float().mean().item()


@pytest.mark.slow
@pytest.mark.parametrize("model", ["lenet5", "resnet20", "mobilenet_v2"])
def test_shipped_weights_keep_their_recorded_accuracy(model: str) -> None:
    # The accuracy each shipped file was published with (measured before evaluate read the test split
    # alone, in channels-last): loading and memory format change nothing. Fashion-MNIST is read from
    # Debian's package or downloaded once.
    from convnets.weights import get_weights
    from convnets.weights.specs import PACKAGE_DIR

    spec = get_weights(model, "fashion-mnist")
    report = evaluate([PACKAGE_DIR / spec.source], device="cpu")
    assert round(report.members[0].scores.accuracy, 4) == spec.accuracy


# ---------------------------------------------------------------- where the report goes


def test_the_default_report_goes_under_the_working_directory(two_runs: list[Path], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from convnets.evaluate import default_report_dir
    from convnets.weights.specs import PACKAGE_DIR

    monkeypatch.chdir(tmp_path)  # the default name depends on the reports already in runs/evaluate
    evaluate_dir = Path("runs", "evaluate")
    assert default_report_dir(two_runs[0]) == evaluate_dir / "seed0"
    assert default_report_dir([two_runs[0] / "best.safetensors"]) == evaluate_dir / "seed0"
    assert default_report_dir([two_runs[0] / "last.safetensors"]) == evaluate_dir / "seed0-last"
    assert default_report_dir(two_runs) == evaluate_dir / "seed0+seed1"
    assert default_report_dir("resnet20:fashion-mnist") == evaluate_dir / "resnet20-fashion-mnist"
    assert default_report_dir("ResNet20:Fashion-MNIST ") == evaluate_dir / "resnet20-fashion-mnist"  # the same weights
    shipped = PACKAGE_DIR / "lenet5-fashion-mnist.safetensors"
    assert default_report_dir([shipped]) == evaluate_dir / "lenet5-fashion-mnist"


@pytest.mark.slow
def test_evaluating_shipped_weights_writes_nothing_into_the_package(tmp_path: Path, monkeypatch, capsys) -> None:
    """It wrote its report to convnets/pretrained/eval, inside the installed package."""
    from convnets.weights.specs import PACKAGE_DIR

    before = sorted(PACKAGE_DIR.rglob("*"))
    monkeypatch.chdir(tmp_path)
    assert cli_main(["evaluate", str(PACKAGE_DIR / "lenet5-fashion-mnist.safetensors"), "--batch-size", "1000"]) == 0
    assert sorted(PACKAGE_DIR.rglob("*")) == before
    report = tmp_path / "runs" / "evaluate" / "lenet5-fashion-mnist"
    assert sorted(p.name for p in report.iterdir()) == ["confusion.png", "evaluation.json", "evaluation.txt"]
    assert f"wrote {Path('runs', 'evaluate', 'lenet5-fashion-mnist')}/evaluation.txt" in capsys.readouterr().out


def test_every_file_of_a_run_and_a_long_ensemble_get_names_of_their_own(two_runs: list[Path], tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # Every run's last-ema.safetensors was runs/evaluate/last-ema; an ensemble's name could pass 255 bytes.
    from convnets.evaluate import default_report_dir

    monkeypatch.chdir(tmp_path)
    shutil.copytree(two_runs[0], tmp_path / "seed0")
    (tmp_path / "seed0" / "last-ema.safetensors").write_bytes(b"")  # only its name is read
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "best.safetensors").write_bytes(b"")  # not in a run: the file's own name
    evaluate_dir = Path("runs", "evaluate")
    assert default_report_dir(tmp_path / "seed0" / "last-ema.safetensors") == evaluate_dir / "seed0-last-ema"
    assert default_report_dir(tmp_path / "seed0" / "last.safetensors") == evaluate_dir / "seed0-last"
    assert default_report_dir(tmp_path / "mine" / "best.safetensors") == evaluate_dir / "best"
    tags = [f"resnet{i:03d}:a-rather-long-tag-name" for i in range(40)]
    name = default_report_dir(tags).name
    assert len(name.encode()) <= 200 and name.startswith("resnet000-a-rather-long-tag-name+39-more-")
    assert default_report_dir(tags[:39] + ["other:tag"]).name != name  # the hash tells them apart


def test_a_default_report_from_other_sources_is_never_replaced(two_runs: list[Path], tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    # a/run and b/run both wrote runs/evaluate/run, the second silently replacing the first.
    monkeypatch.chdir(tmp_path)
    for parent in ("a", "b"):
        shutil.copytree(two_runs[0], tmp_path / parent / "run")
    assert cli_main(["evaluate", "a/run", "--batch-size", "500"]) == 0
    assert cli_main(["evaluate", "b/run", "--batch-size", "500"]) == 0
    reports = tmp_path / "runs" / "evaluate"
    assert sorted(p.name for p in reports.iterdir()) == ["run", "run-2"]
    sources = {p.name: json.loads((p / "evaluation.json").read_text())["sources"] for p in reports.iterdir()}
    assert sources == {"run": [str(tmp_path / "a" / "run")], "run-2": [str(tmp_path / "b" / "run")]}
    first = (reports / "run" / "evaluation.json").stat().st_mtime_ns
    assert cli_main(["evaluate", str(tmp_path / "a" / "run"), "--batch-size", "500"]) == 0  # the same run again
    assert sorted(p.name for p in reports.iterdir()) == ["run", "run-2"]
    assert (reports / "run" / "evaluation.json").stat().st_mtime_ns != first  # its own report, replaced
    assert f"wrote {Path('runs', 'evaluate', 'run')}/evaluation.txt" in capsys.readouterr().out


def test_force_replaces_a_file_of_the_report_s_names(two_runs: list[Path], tmp_path: Path, capsys) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "evaluation.txt").write_text("my notes")
    argv = ["evaluate", str(two_runs[0]), "--out", str(tmp_path / "mine")]
    assert cli_main(argv) == 2
    assert "pass --force to replace it" in capsys.readouterr().err
    assert (tmp_path / "mine" / "evaluation.txt").read_text() == "my notes"
    assert cli_main([*argv, "--force"]) == 0
    assert json.loads((tmp_path / "mine" / "evaluation.json").read_text())["results"]
    assert (tmp_path / "mine" / "evaluation.txt").read_text() != "my notes"


def test_imagenet_folders_named_by_wordnet_id_are_the_classes_of_imagenet_weights() -> None:
    # Data whose class names differ from the model's is refused (an accuracy matched by index measures nothing),
    # except ImageNet's own layout: folders n01440764... whose sorted order is the 1000 outputs' order.
    from convnets.evaluate import same_classes
    from convnets.weights import IMAGENET_CLASSES

    wnids = [f"n{i:08d}" for i in range(1440764, 1440764 + 1000)]
    assert same_classes(IMAGENET_CLASSES, wnids)
    assert not same_classes(IMAGENET_CLASSES, [f"class{i:04d}" for i in range(1000)])
    assert not same_classes(IMAGENET_CLASSES, wnids[:999])
    assert not same_classes([str(i) for i in range(10)], ["T-shirt/top", *[f"n{i:08d}" for i in range(9)]])
