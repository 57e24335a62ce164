"""``convnets experiment NAME``: a claim of the case studies, reproduced with a figure."""

from __future__ import annotations

import argparse

from convnets.cli.options import integer, number, path_text
from convnets.errors import ConfigError
from convnets.experiments import BUDGETS, DEFAULT_SEEDS, EXPERIMENTS, register_all, run_all, run_experiment


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("experiment", help="reproduce a claim of the case studies, with a figure",
                              description="Run one of the case studies' claims as an experiment; writes a PNG "
                              "figure, results.json and results.md to --out.", allow_abbrev=False)
    p.add_argument("name", nargs="?", help="experiment name, or all (every experiment and the report); omit to "
                   "list them")
    p.add_argument("--budget", choices=BUDGETS, default="small",
                   help="tiny: a seconds-long smoke run; small (default): minutes to tens of minutes on a 2-core CPU; "
                   "full: the papers' scale, for a GPU")
    p.add_argument("--out", type=path_text, help="output directory (default runs/experiments/NAME; for all: a "
                   "folder of one directory per experiment, default docs/results); re-running with the same --out "
                   "reuses finished training runs and resumes an interrupted one")
    p.add_argument("--report", type=path_text,
                   help="with all: the markdown report to write (default: RESULTS.md beside --out)")
    p.add_argument("--seeds", type=number(int, 1, 100), default=DEFAULT_SEEDS,
                   help=f"seeds per arm of a training experiment (default {DEFAULT_SEEDS}); each arm's mean and "
                   "95%% interval, and the paired differences between arms, are over them")
    p.add_argument("--data", default="fashion-mnist", help="dataset of the experiments that train (default "
                   "fashion-mnist; cifar10 when you have its files)")
    p.add_argument("--data-dir", help="where named datasets are looked up")
    p.add_argument("--threads", type=integer, help="CPU threads (1 avoids stalls on a machine shared with other work)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    register_all()
    if not args.name:
        for name, (summary, _) in sorted(EXPERIMENTS.items()):
            print(f"{name:<14} {summary}")
        return 0
    options = dict(data=args.data, data_dir=args.data_dir, threads=args.threads, seeds=args.seeds)
    if args.name == "all":
        results = run_all(args.budget, args.out or "docs/results", args.report, **options)
        for r in results:
            print(f"{r.name:<14} {r.verdict or 'cost only'}")
        return 0
    if args.report:
        raise ConfigError("--report applies to `convnets experiment all` only (one experiment writes its results.md)")
    result = run_experiment(args.name, args.budget, args.out, **options)
    print(f"{result.name}: {result.claim}\n")
    if result.verdicts:
        print(f"verdict: {result.verdict}")
        for line in result.verdict_lines():
            print(f"- {line}")
        print()
    print(result.table)
    for note in result.notes:
        print(f"- {note}")
    print(f"\nwrote {result.out}/results.md, results.json" + (f", {result.figure.name}" if result.figure else ""))
    return 0
