"""Trial of the weights' moving average (``--ema``) on the training recipes: accuracy only.

One run per seed and arm with ``--ema``: the run's own weights are those of the same run without it
(the average reads the weights and draws no random numbers; the seed-0 plain run below checks this
bit for bit), so each run gives a paired raw/average measurement. Per seed it records the final test
accuracy of both, their per-epoch test accuracy and the first epoch at which each reaches the target;
over seeds, the mean paired difference (average - raw) and its 95% t interval
(``convnets.experiments.stats``). No timings: runs taken under ``nice`` on a shared machine.

    python benchmarks/ema_trial.py --out-root /tmp/ema_trial          # runs what is missing, writes the JSON
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
from pathlib import Path

from convnets.experiments.stats import mean_interval, paired_difference
from convnets.weights import read_state_dict

SEEDS = (0, 1, 2)
DECAY = 0.999
# name: (model, extra options, target accuracy for the first-epoch count)
ARMS = {
    "lenet5-8-epochs": ("lenet5", [], 0.90),  # the recipe as it is (8 epochs, one-cycle)
    "lenet5-5-epochs": ("lenet5", ["--epochs", "5"], 0.90),  # the same recipe squeezed into 5 epochs
    "resnet20-2-epochs": ("resnet20", ["--epochs", "2"], 0.93),  # a 2-epoch run, far from its 8-epoch recipe
    "resnet20-8-epochs": ("resnet20", [], 0.93),  # the recipe as it is (8 epochs, cosine to zero)
}
RESULT = Path(__file__).parent / "results" / "ema_trial.json"


def command(model: str, extra: list[str], seed: int, out: Path, ema: bool = True) -> list[str]:
    return (["convnets", "train", model, "--data", "fashion-mnist", "--seed", str(seed), "--threads", "1",
             "--no-progress", *extra] + (["--ema", str(DECAY)] if ema else []) + ["--out", str(out)])


def finished(out: Path) -> bool:
    return (out / "last.safetensors").exists()


def run(cmd: list[str]) -> None:
    print("$", shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def interval(values: dict) -> dict:
    """An interval as JSON: the unbounded ends of a single seed's are null (JSON has no infinity)."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in values.items()}


def first_epoch(rows: list[dict], key: str, target: float) -> int | None:
    return next((r["epoch"] for r in rows if r[key] >= target), None)


def no_warmup(out: Path) -> dict:
    """Seed 0 of the lenet5 recipe with the average as it was before the warm-up: a fixed decay from the
    initial weights (``WeightAverage.decay_at`` replaced for this run only)."""
    from convnets.training import TrainConfig, train
    from convnets.training.setup import WeightAverage

    if not finished(out):
        warmed_up = WeightAverage.decay_at
        WeightAverage.decay_at = lambda self, step: self.decay
        try:
            train(TrainConfig(model="lenet5", data="fashion-mnist", seed=0, threads=1, progress=False, ema=DECAY,
                              out=str(out)))
        finally:
            WeightAverage.decay_at = warmed_up
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"what": "seed 0, 8 epochs, fixed decay 0.999 from the initial weights (no warm-up), in-process",
            "raw_by_epoch": [r["test_acc"] for r in rows], "ema_by_epoch": [r["ema_test_acc"] for r in rows]}


def start_report(path: Path) -> dict:
    """The report to update: the one already at ``path`` (so that ``--arms SUBSET`` replaces those arms and
    keeps the others and their checks), else an empty one."""
    report = json.loads(path.read_text()) if path.exists() else {"arms": {}}
    report.update({"decay": DECAY, "seeds": list(SEEDS), "dataset": "fashion-mnist",
                   "note": "taken under nice -n 19 on a shared 2-core machine with OMP_NUM_THREADS=1; "
                           "accuracy only, no timings"})
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-root", type=Path, required=True, help="where the run directories go")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    args = parser.parse_args()
    report = start_report(RESULT)
    for name in args.arms:
        model, extra, target = ARMS[name]
        seeds = {}
        for seed in SEEDS:
            out = args.out_root / f"{name}-s{seed}"
            cmd = command(model, extra, seed, out)
            if not finished(out):
                run(cmd)
            rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            seeds[seed] = {"command": shlex.join(cmd), "raw": rows[-1]["test_acc"], "ema": rows[-1]["ema_test_acc"],
                           "raw_by_epoch": [r["test_acc"] for r in rows],
                           "ema_by_epoch": [r["ema_test_acc"] for r in rows],
                           "raw_first_epoch_at_target": first_epoch(rows, "test_acc", target),
                           "ema_first_epoch_at_target": first_epoch(rows, "ema_test_acc", target)}
        raw = {s: v["raw"] for s, v in seeds.items()}
        ema = {s: v["ema"] for s, v in seeds.items()}
        report["arms"][name] = {
            "target": target, "seeds": seeds,
            "raw_mean": interval(mean_interval(list(raw.values())).to_dict()),
            "ema_mean": interval(mean_interval(list(ema.values())).to_dict()),
            "ema_minus_raw": interval(paired_difference(raw, ema).to_dict()),
        }
        reached = {s: v for s, v in seeds.items()
                   if v["raw_first_epoch_at_target"] is not None and v["ema_first_epoch_at_target"] is not None}
        if reached:  # epochs to the target, paired over the seeds where both reach it
            report["arms"][name]["first_epoch_ema_minus_raw"] = interval(paired_difference(
                {s: v["raw_first_epoch_at_target"] for s, v in reached.items()},
                {s: v["ema_first_epoch_at_target"] for s, v in reached.items()}).to_dict())
        print(name, "average - weights:", paired_difference(raw, ema).format(scale=100), "points", flush=True)
    # The average must not change the run: the weights of a plain run equal those of the --ema run.
    model, extra, _ = ARMS["lenet5-8-epochs"]
    plain, averaged = args.out_root / "lenet5-8-epochs-plain-s0", args.out_root / "lenet5-8-epochs-s0"
    cmd = command(model, extra, 0, plain, ema=False)
    if "lenet5-8-epochs" in args.arms:
        if not finished(plain):
            run(cmd)
        a, b = read_state_dict(plain / "last.safetensors"), read_state_dict(averaged / "last.safetensors")
        report["plain_run_check"] = {"command": shlex.join(cmd),
                                     "weights_equal_to_ema_run": a.keys() == b.keys() and all(
                                         a[k].equal(b[k]) for k in a)}
    if "lenet5-8-epochs" in args.arms:
        report["no_warmup_check"] = no_warmup(args.out_root / "lenet5-8-epochs-nowarmup-s0")
    RESULT.write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    print("wrote", RESULT, file=sys.stderr)


if __name__ == "__main__":
    main()
