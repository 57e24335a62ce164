"""Evaluation: scores, test-time views, ensembles and their refusal of mismatched classes."""

from __future__ import annotations

import json
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
