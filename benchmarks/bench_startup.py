"""Start-up: how long the quick commands take, as a ratio to importing PyTorch alone.

Each command runs as a fresh process (what a user waits for), the commands interleaved round by
round so that load from other processes falls on all of them; medians over rounds.

    python benchmarks/bench_startup.py              # 7 rounds, about a minute
    python benchmarks/bench_startup.py --rounds 15
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

CONVNETS = [sys.executable, "-m", "convnets"]
COMMANDS = {
    "import torch": [sys.executable, "-c", "import torch"],
    "convnets --help": [*CONVNETS, "--help"],
    "convnets list": [*CONVNETS, "list"],
    "convnets list --recount": [*CONVNETS, "list", "--recount"],
    "convnets summary resnet50": [*CONVNETS, "summary", "resnet50"],
    "convnets summary lenet5": [*CONVNETS, "summary", "lenet5"],
}


def seconds(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, cwd=Path(__file__).parent)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for r in range(args.rounds):
        for name in COMMANDS if r % 2 == 0 else reversed(COMMANDS):
            times[name].append(seconds(COMMANDS[name]))
    base = times["import torch"]
    print(f"{'command':<28} {'median s':>9} {'x import torch':>15}")
    for name, ts in times.items():
        ratio = statistics.median(t / b for t, b in zip(ts, base, strict=True))
        print(f"{name:<28} {statistics.median(ts):>9.2f} {ratio:>14.2f}x")


if __name__ == "__main__":
    main()
