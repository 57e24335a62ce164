"""benchmarks/ema_trial.py's bookkeeping (its runs take hours: they are not run here)."""

from __future__ import annotations

import json
from pathlib import Path

from fixture_scripts import benchmark_script


def test_running_a_subset_of_the_arms_keeps_the_others_in_the_json(tmp_path: Path) -> None:
    with benchmark_script("ema_trial") as trial:
        check_start_report(trial, tmp_path)


def check_start_report(trial, tmp_path: Path) -> None:
    result = tmp_path / "ema_trial.json"
    old = {"decay": 0.99, "arms": {"resnet20-2-epochs": {"target": 0.93}}, "plain_run_check": {"equal": True}}
    result.write_text(json.dumps(old))
    report = trial.start_report(result)
    assert report["arms"] == old["arms"] and report["plain_run_check"] == old["plain_run_check"]
    assert report["decay"] == trial.DECAY
    assert trial.start_report(tmp_path / "absent.json")["arms"] == {}
