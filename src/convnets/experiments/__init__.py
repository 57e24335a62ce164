"""The case studies' claims as runnable experiments: ``convnets experiment NAME [--budget] [--out]``.

Each experiment writes a figure (PNG), its raw results (JSON) and a short markdown table to its
output directory, and states the claim it tests. ``small`` budgets fit a 2-core CPU; ``full`` is
the paper-scale setting. Whatever comes out is reported: a claim that does not reproduce at a
small budget is a finding.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BUDGETS = ("tiny", "small", "full")  # tiny: a seconds-long smoke run for the test suite


@dataclass
class Result:
    """What an experiment found: the claim, a markdown table, raw numbers and the figure."""

    name: str
    claim: str
    table: str
    data: dict[str, Any]
    figure: Path | None = None
    notes: list[str] = field(default_factory=list)
    out: Path | None = None

    def write(self, out: Path, budget: str) -> None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps({"name": self.name, "budget": budget, "claim": self.claim,
                                                      "data": self.data}, indent=2, default=str) + "\n")
        lines = [f"# {self.name}", "", f"Claim: {self.claim}", "", f"Budget: {budget}", "", self.table, ""]
        lines += [f"- {n}" for n in self.notes]
        if self.figure:
            lines += ["", f"![{self.name}]({self.figure.name})"]
        (out / "results.md").write_text("\n".join(lines) + "\n")


Experiment = Callable[[str, Path], Result]
EXPERIMENTS: dict[str, tuple[str, Experiment]] = {}


def experiment(name: str, summary: str) -> Callable[[Experiment], Experiment]:
    """Register an experiment under ``name`` (refusing duplicates)."""

    def register(fn: Experiment) -> Experiment:
        if name in EXPERIMENTS:
            raise ValueError(f"experiment {name!r} registered twice")
        EXPERIMENTS[name] = (summary, fn)
        return fn

    return register


def run_experiment(name: str, budget: str = "small", out: str | Path | None = None) -> Result:
    """Run one experiment and write its files to ``out`` (default ``runs/experiments/NAME``)."""
    from convnets.experiments import costs  # noqa: F401  (registers the experiments)

    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; known: {', '.join(sorted(EXPERIMENTS))}")
    if budget not in BUDGETS:
        raise ValueError(f"--budget must be one of {', '.join(BUDGETS)}, got {budget!r}")
    out = Path(out) if out else Path("runs") / "experiments" / name
    result = EXPERIMENTS[name][1](budget, out)
    result.write(out, budget)
    result.out = out
    return result


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser("experiment", help="reproduce a claim of the case studies, with a figure",
                              description="Run one of the case studies' claims as an experiment; writes a PNG "
                              "figure, results.json and results.md to --out.")
    p.add_argument("name", nargs="?", help="experiment name (omit to list them)")
    p.add_argument("--budget", choices=BUDGETS, default="small")
    p.add_argument("--out", help="output directory (default runs/experiments/NAME)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from convnets.experiments import costs  # noqa: F401

    if not args.name:
        for name, (summary, _) in sorted(EXPERIMENTS.items()):
            print(f"{name:<14} {summary}")
        return 0
    result = run_experiment(args.name, args.budget, args.out)
    print(f"{result.name}: {result.claim}\n")
    print(result.table)
    for note in result.notes:
        print(f"- {note}")
    print(f"\nwrote {result.out}/results.md, results.json" + (f", {result.figure.name}" if result.figure else ""))
    return 0
