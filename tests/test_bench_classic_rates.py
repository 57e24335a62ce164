"""benchmarks/bench_classic_rates.py's options: checked before anything is measured (its timings are not run here)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from fixture_scripts import benchmark_script

CORES = os.cpu_count() or 1


@pytest.mark.parametrize(("argv", "expect"), [
    # --threads 0 used to be ignored (torch's default measured, as if asked), -1 a RuntimeError traceback;
    # --steps 0 a ZeroDivisionError; an --out under a file a NotADirectoryError after every model was measured.
    (["--threads", "0"], r"--threads: must be a whole number from 1 to \d+; got '0'"),
    (["--threads", "-1"], r"--threads: must be a whole number from 1.*'-1'"),
    (["--threads", "abc"], r"--threads: must be a whole number.*'abc'"),
    (["--threads", str(4 * CORES + 1)], rf"--threads: must be a whole number from 1 to {4 * CORES}"),
    (["--steps", "0"], r"--steps: must be a whole number >= 1; got '0'"),
    (["--rounds", "-2"], r"--rounds: must be a whole number >= 1"),
    (["--models", "lenet6"], r"--models: invalid choice: 'lenet6'"),
    (["--out", ""], r"--out: must be a path; got ''"),
    (["--out", "{tmp}/notes.txt/rates.json"], r"notes\.txt is a file, not a folder"),
    (["--out", "{tmp}"], r"is a directory; name the JSON file"),
])
def test_bad_options_are_one_line_errors(argv: list[str], expect: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with benchmark_script("bench_classic_rates") as bench, pytest.raises(SystemExit) as stop:
        bench.parse_args([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    assert re.search(expect, err), err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_good_options_are_taken(tmp_path: Path) -> None:
    with benchmark_script("bench_classic_rates") as bench:
        args = bench.parse_args(["--threads", "1", "--steps", "2", "--rounds", "1", "--models", "lenet5",
                                 "--out", str(tmp_path / "new" / "rates.json")])
    assert (args.threads, args.steps, args.rounds, args.models) == (1, 2, 1, ["lenet5"])
    assert not (tmp_path / "new").exists()  # checked, not made: nothing is written before the measurements
