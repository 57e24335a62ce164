"""The harness of the bad-input suite (``tests/test_bad_input_*.py``): a table of cases per area.

A :class:`Case` is one thing a hostile but realistic user does: a command line (or a Python call)
with files prepared by ``setup``. It passes when the tool fails the expected way: exit status 2,
``convnets CMD: error: ...`` whose text matches ``expect`` (the message names the option, file, class
or range), no traceback, and, where ``after`` is given, the user's files are as they were.

Placeholders in ``argv``: ``{tmp}`` is the case's own empty directory.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from convnets.cli import main
from convnets.errors import ConvnetsError

# The principles, by number; each case names the one it tests.
PRINCIPLES = {
    1: "no input runs code",
    2: "nothing the tool did not write is overwritten or lost",
    3: "every option and config field is checked before work starts",
    4: "data that cannot make the expected classifier is named",
    5: "a dataset smaller than one batch still trains",
    6: "caches are keyed by what they hold",
    7: "resume never ignores what the user typed",
    8: "no leftovers",
    9: "own checkpoints load as the README says",
    10: "measurements mean what they say",
}


@dataclass
class Case:
    """One bad input.

    Attributes:
        id: short name shown by pytest.
        principle: the number of the principle it tests (:data:`PRINCIPLES`).
        argv: the command line after ``convnets`` (``{tmp}`` is replaced); empty for a Python case.
        expect: regular expression the error message must contain (searched, case-insensitive).
        setup: prepares files in the case's directory before the command runs.
        call: for a Python-API case, ``call(tmp)`` must raise a :class:`ConvnetsError` matching ``expect``.
        after: checks made afterwards (files untouched, nothing left behind...).
    """

    id: str
    principle: int
    argv: list[str] = field(default_factory=list)
    expect: str = ""
    setup: Callable[[Path], Any] | None = None
    call: Callable[[Path], Any] | None = None
    after: Callable[[Path], Any] | None = None

    def __post_init__(self) -> None:
        assert self.principle in PRINCIPLES, self.principle
        assert bool(self.argv) != bool(self.call), f"{self.id}: give argv or call, not both"


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``convnets ARGV`` in this process: (exit status, stdout, stderr); argparse's exit becomes a status."""
    try:
        status = main(argv)
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def expect_cli_error(argv: list[str], expect: str, capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``convnets ARGV`` and assert it fails the expected way; returns the error text."""
    status, out, err = run_cli(argv, capsys)
    command = argv[0]
    assert "Traceback" not in err + out, f"traceback for {argv}:\n{err}"
    assert status == 2, f"exit status {status} for {argv}; stdout:\n{out}\nstderr:\n{err}"
    assert re.search(rf"^convnets {re.escape(command)}[^\n]*: error: ", err, re.M), f"no error line for {argv}:\n{err}"
    assert re.search(expect, err, re.I | re.S), f"{argv}: the message does not match {expect!r}:\n{err}"
    return err


def check_case(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Prepare, run and check one case (the body of each area's parametrized test)."""
    if case.setup:
        case.setup(tmp_path)
    if case.call:
        with pytest.raises(ConvnetsError, match=re.compile(case.expect, re.I | re.S)):
            case.call(tmp_path)
    else:
        expect_cli_error([a.replace("{tmp}", str(tmp_path)) for a in case.argv], case.expect, capsys)
    if case.after:
        case.after(tmp_path)


def params(cases: list[Case]) -> list[Any]:
    """``cases`` as pytest parameters with readable ids (``p3-threads-negative``)."""
    ids = [f"p{c.principle}-{c.id}" for c in cases]
    assert len(set(ids)) == len(ids), "duplicate case ids"
    return [pytest.param(c, id=i) for c, i in zip(cases, ids, strict=True)]
