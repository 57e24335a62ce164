"""Training images/s of each network the experiments train, at the shapes they train at: the reference rates.

``convnets experiment classic --budget small`` gives every network the same wall-clock time on the
reference machine by training it on ``SMALL_SECONDS x`` its rate there (``REFERENCE_RATES`` in
``convnets/experiments/classic.py``); this script measures those rates on the machine it runs on, so that
the table can be checked or re-measured. Each rate is the median of ``--rounds`` timed chunks of
``--steps`` training steps (forward, cross-entropy, backward, SGD step) on random images, after two
untimed steps, channels-last, with the precision ``convnets train`` picks here (bf16 autocast where the
CPU computes bf16 natively, else fp32).

    python benchmarks/bench_classic_rates.py --threads 2
    python benchmarks/bench_classic_rates.py --threads 2 --models alexnet vgg16 --out rates.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from convnets.cli.options import number, path_text
from convnets.experiments import machine, machine_line
from convnets.experiments.classic import BATCH, MODELS, REFERENCE_RATES, SMALL_SIDE, builder_kwargs
from convnets.registry import create_model
from convnets.training.loop import cpu_has_native_bf16
from convnets.weights.io import check_writable


def images_per_second(model: str, steps: int, rounds: int, bf16: bool) -> float:
    net = create_model(model, num_classes=10, in_chans=1, **builder_kwargs(model)).to(memory_format=torch.channels_last)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(BATCH, 1, SMALL_SIDE, SMALL_SIDE).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (BATCH,))

    def step() -> None:
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            out = net(x)
            loss = F.cross_entropy(out[0] if isinstance(out, tuple) else out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        times.append((time.perf_counter() - start) / steps)
    return BATCH / statistics.median(times)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, each checked (type and range; --out writable) before anything is measured."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--threads", type=number(int, 1, 4 * (os.cpu_count() or 1)),
                        help="torch threads (default: torch's)")
    parser.add_argument("--steps", type=number(int, 1), default=3, help="timed steps per round")
    parser.add_argument("--rounds", type=number(int, 1), default=3, help="timed rounds; the rate is their median")
    parser.add_argument("--out", type=path_text, help="write the rates as JSON here")
    args = parser.parse_args(argv)
    if args.out:
        try:
            check_writable(Path(args.out).parent, args.out)
        except OSError as err:  # found now, not after minutes of measuring
            parser.error(f"argument --out: {err.filename}: {err.strerror}")
        if Path(args.out).is_dir():
            parser.error(f"argument --out: {args.out} is a directory; name the JSON file to write")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    bf16 = cpu_has_native_bf16()
    print(f"{machine_line()}; batch {BATCH}, {SMALL_SIDE}x{SMALL_SIDE}, {'bf16 autocast' if bf16 else 'fp32'}")
    rates = {}
    for model in args.models:
        rates[model] = images_per_second(model, args.steps, args.rounds, bf16)
        ref = REFERENCE_RATES[model]
        print(f"{model:<16} {rates[model]:9,.0f} images/s   reference {ref:9,} ({rates[model] / ref:.2f}x)", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"machine": machine(), "batch": BATCH, "side": SMALL_SIDE, "bf16": bf16, "rates": rates}, f,
                      indent=1)


if __name__ == "__main__":
    main()
