"""Bad input to ``convnets experiment``'s seeds, report and verdict machinery: a clear one-line error, nothing lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from badinput import Case, check_case, params


def _nothing_written(tmp: Path) -> None:
    assert not (tmp / "o").exists() and not (tmp / "R.md").exists()


def _experiment(tmp: Path, **kwargs) -> None:
    from convnets.experiments import run_experiment

    run_experiment("one-by-one", "tiny", tmp / "o", **kwargs)


CASES = [
    Case("seeds-zero", 3, ["experiment", "degradation", "--seeds", "0", "--out", "{tmp}/o"],
         r"--seeds.*from 1 to 100.*'0'", after=_nothing_written),
    Case("seeds-word", 3, ["experiment", "degradation", "--seeds", "three", "--out", "{tmp}/o"],
         r"--seeds.*whole number", after=_nothing_written),
    Case("seeds-huge", 3, ["experiment", "degradation", "--seeds", "101", "--out", "{tmp}/o"], r"--seeds.*100",
         after=_nothing_written),
    Case("report-without-all", 3, ["experiment", "one-by-one", "--report", "{tmp}/R.md", "--out", "{tmp}/o"],
         r"--report applies to `convnets experiment all` only", after=_nothing_written),
    Case("api-seeds-zero", 3, call=lambda tmp: _experiment(tmp, seeds=0), expect=r"--seeds.*1 to 100",
         after=_nothing_written),
    Case("api-seeds-bool", 3, call=lambda tmp: _experiment(tmp, seeds=True), expect=r"--seeds.*True",
         after=_nothing_written),
    Case("api-seeds-float", 3, call=lambda tmp: _experiment(tmp, seeds=2.5), expect=r"--seeds.*2\.5",
         after=_nothing_written),
]


@pytest.mark.parametrize("case", params(CASES))
def test_bad_experiment_input(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    check_case(case, tmp_path, capsys)
