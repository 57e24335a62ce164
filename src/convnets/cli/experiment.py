"""``convnets experiment NAME``: a claim of the case studies, reproduced with a figure."""

from __future__ import annotations

import argparse

from convnets.experiments import BUDGETS, EXPERIMENTS, register_all, run_experiment


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("experiment", help="reproduce a claim of the case studies, with a figure",
                              description="Run one of the case studies' claims as an experiment; writes a PNG "
                              "figure, results.json and results.md to --out.", allow_abbrev=False)
    p.add_argument("name", nargs="?", help="experiment name (omit to list them)")
    p.add_argument("--budget", choices=BUDGETS, default="small",
                   help="tiny: a seconds-long smoke run; small (default): minutes to tens of minutes on a 2-core CPU; "
                   "full: the papers' scale, for a GPU")
    p.add_argument("--out", help="output directory (default runs/experiments/NAME); re-running with the same "
                   "--out reuses finished training runs and resumes an interrupted one")
    p.add_argument("--data", default="fashion-mnist", help="dataset of the experiments that train (default "
                   "fashion-mnist; cifar10 when you have its files)")
    p.add_argument("--data-dir", help="where named datasets are looked up")
    p.add_argument("--threads", type=int, help="CPU threads (1 avoids stalls on a machine shared with other work)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    register_all()
    if not args.name:
        for name, (summary, _) in sorted(EXPERIMENTS.items()):
            print(f"{name:<14} {summary}")
        return 0
    result = run_experiment(args.name, args.budget, args.out, data=args.data, data_dir=args.data_dir,
                            threads=args.threads)
    print(f"{result.name}: {result.claim}\n")
    print(result.table)
    for note in result.notes:
        print(f"- {note}")
    print(f"\nwrote {result.out}/results.md, results.json" + (f", {result.figure.name}" if result.figure else ""))
    return 0
