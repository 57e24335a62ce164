"""Bad input to ``convnets experiment``'s seeds, report and verdict machinery: a clear one-line error, nothing lost."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from badinput import Case, check_case, params


def _nothing_written(tmp: Path) -> None:
    assert not (tmp / "o").exists() and not (tmp / "R.md").exists()


def _notes_kept(tmp: Path) -> None:
    _nothing_written(tmp)
    assert (tmp / "notes").read_text() == "mine"


def _experiment(tmp: Path, **kwargs) -> None:
    from convnets.experiments import run_experiment

    run_experiment("one-by-one", "tiny", tmp / "o", **kwargs)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-by-one experiment (a cost-only one: seconds) that each case below copies."""
    from convnets.experiments import run_experiment

    out = tmp_path_factory.mktemp("finished") / "o"
    run_experiment("one-by-one", "tiny", out, progress=False)
    return out


FINISHED: dict[str, Path] = {}


def damaged(name: str, content: str):
    """A copy of the finished experiment at ``tmp/o`` whose ``name`` holds ``content``."""
    def setup(tmp: Path) -> None:
        shutil.copytree(FINISHED["o"], tmp / "o")
        (tmp / "o" / name).write_text(content)

    return setup


def kept(name: str, content: str):
    """``o/name`` still holds ``content``, and no invocation was added to the record."""
    def after(tmp: Path) -> None:
        assert (tmp / "o" / name).read_text() == content
        assert (tmp / "o" / "results.md").read_text() == (FINISHED["o"] / "results.md").read_text()

    return after


def damaged_record(case_id: str, content: str) -> Case:
    return Case(case_id, 10, ["experiment", "one-by-one", "--budget", "tiny", "--out", "{tmp}/o"],
                r"wall-times\.json is damaged.*total wall time cannot be known.*remove it",
                setup=damaged("wall-times.json", content), after=kept("wall-times.json", content))


CASES = [
    Case("seeds-zero", 3, ["experiment", "degradation", "--seeds", "0", "--out", "{tmp}/o"],
         r"--seeds.*from 1 to 100.*'0'", after=_nothing_written),
    Case("seeds-word", 3, ["experiment", "degradation", "--seeds", "three", "--out", "{tmp}/o"],
         r"--seeds.*whole number", after=_nothing_written),
    Case("seeds-huge", 3, ["experiment", "degradation", "--seeds", "101", "--out", "{tmp}/o"], r"--seeds.*100",
         after=_nothing_written),
    Case("report-without-all", 3, ["experiment", "one-by-one", "--report", "{tmp}/R.md", "--out", "{tmp}/o"],
         r"--report applies to `convnets experiment all` only", after=_nothing_written),
    Case("out-empty", 3, ["experiment", "one-by-one", "--out", ""], r"--out: must be a path; got ''"),
    Case("report-empty", 3, ["experiment", "all", "--report", "", "--out", "{tmp}/o"], r"--report: must be a path"),
    # --report was written after every experiment had run: a folder or a file in its way cost all of them.
    Case("report-a-directory", 3, ["experiment", "all", "--budget", "tiny", "--report", "{tmp}", "--out", "{tmp}/o"],
         r"is a directory; --report names the markdown file", after=_nothing_written),
    Case("report-under-a-file", 2, ["experiment", "all", "--budget", "tiny", "--report", "{tmp}/notes/R.md",
                                    "--out", "{tmp}/o"], r"notes is a file, not a folder",
         setup=lambda tmp: (tmp / "notes").write_text("mine"), after=_notes_kept),
    # A damaged record of the wall times was restarted (or summed to nan, or a traceback): the total reported was
    # silently wrong. It is refused before any work; the file is left for the user to repair or remove.
    damaged_record("wall-times-truncated", '{"invocations": ['),
    damaged_record("wall-times-not-a-table", "[1, 2]"),
    damaged_record("wall-times-entries-not-tables", '{"invocations": [1, "a"]}'),
    damaged_record("wall-times-nan", '{"invocations": [{"seconds": NaN}]}'),
    damaged_record("wall-times-negative", '{"invocations": [{"seconds": -5}]}'),
    damaged_record("wall-times-seconds-text", '{"invocations": [{"seconds": "12"}]}'),
    Case("setting-file-damaged", 7, ["experiment", "one-by-one", "--budget", "tiny", "--out", "{tmp}/o"],
         r"experiment\.json is damaged.*cannot be reused safely", setup=damaged("experiment.json", '{"name": "one'),
         after=kept("experiment.json", '{"name": "one')),
    Case("api-seeds-zero", 3, call=lambda tmp: _experiment(tmp, seeds=0), expect=r"--seeds.*1 to 100",
         after=_nothing_written),
    Case("api-seeds-bool", 3, call=lambda tmp: _experiment(tmp, seeds=True), expect=r"--seeds.*True",
         after=_nothing_written),
    Case("api-seeds-float", 3, call=lambda tmp: _experiment(tmp, seeds=2.5), expect=r"--seeds.*2\.5",
         after=_nothing_written),
]


@pytest.mark.parametrize("case", params(CASES))
def test_bad_experiment_input(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              finished: Path) -> None:
    FINISHED["o"] = finished
    check_case(case, tmp_path, capsys)


def test_a_repaired_wall_time_record_counts_every_invocation(tmp_path: Path, finished: Path) -> None:
    from convnets.experiments import run_experiment

    shutil.copytree(finished, tmp_path / "o")
    (tmp_path / "o" / "wall-times.json").write_text('{"invocations": [{"seconds": 100}]}')
    result = run_experiment("one-by-one", "tiny", tmp_path / "o", progress=False)
    record = json.loads((tmp_path / "o" / "wall-times.json").read_text())["invocations"]
    assert len(record) == 2 and result.total_seconds == pytest.approx(100 + record[1]["seconds"])


@pytest.mark.parametrize("change", [{"test_accuracy": "abc"}, {"rows": "x"}, {"seconds": None}, {"steps": 1.5},
                                    {"request": []}])
def test_a_training_record_of_wrong_types_is_checked_again(tmp_path: Path, change: dict) -> None:
    """A trained.json with a field of the wrong type ended the experiment with 'mean_interval: expected finite
    numbers' naming no file; it is now taken as damaged: the run is checked again (resumed or retrained)."""
    from convnets.experiments import _read_record

    good = {"request": {}, "config": {}, "rows": [], "test_accuracy": 0.5, "seconds": 1.0, "steps": 3}
    (tmp_path / "trained.json").write_text(json.dumps(good))
    assert _read_record(tmp_path / "trained.json") == good
    (tmp_path / "trained.json").write_text(json.dumps({**good, **change}))
    assert _read_record(tmp_path / "trained.json") is None


def test_a_damaged_interrupted_run_says_how_to_train_it_again(tmp_path: Path) -> None:
    """An interrupted run whose state.pt was cut short cannot resume; the experiment would hit it on every
    invocation, so the error names the run directory to remove (and removes nothing itself)."""
    from convnets.errors import RunDirectoryError
    from convnets.experiments import Setting

    setting = Setting("tiny", tmp_path / "o", data="digits", threads=1, progress=False)
    setting.train("lenet5-s0", "lenet5", epochs=2, max_steps=2, batch_size=32)  # stopped early: a resumable run
    state = tmp_path / "o" / "runs" / "lenet5-s0" / "state.pt"
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(RunDirectoryError, match=r"state.pt cannot be resumed.*to train lenet5-s0 again from its "
                                                r"start, remove .*runs[/\\]lenet5-s0"):
        setting.train("lenet5-s0", "lenet5", epochs=2, batch_size=32)
    assert len(state.read_bytes()) == 100
