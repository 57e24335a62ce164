"""Each experiment runs end to end at a tiny budget and writes its figure, JSON and table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from convnets.cli import main as cli_main
from convnets.experiments import EXPERIMENTS, run_experiment


@pytest.mark.parametrize("name", ["one-by-one", "depthwise"])
def test_experiment_writes_its_files(name: str, tmp_path: Path) -> None:
    result = run_experiment(name, "tiny", tmp_path)
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


def test_cli_lists_and_refuses_unknown_experiments(capsys) -> None:
    assert cli_main(["experiment"]) == 0
    listed = capsys.readouterr().out
    assert "one-by-one" in listed and "depthwise" in listed and len(EXPERIMENTS) >= 2
    assert cli_main(["experiment", "degradationn"]) == 2
    assert "unknown experiment 'degradationn'" in capsys.readouterr().err
