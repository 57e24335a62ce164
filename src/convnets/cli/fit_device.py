"""``convnets fit-device``: the largest scaling of a family that meets a latency budget on this machine."""

from __future__ import annotations

import argparse

from convnets.cli.options import number, real
from convnets.fit import FAMILIES, fit_device


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "fit-device", help="pick the largest scaling of a family that meets a latency budget on this machine",
        description="Measure candidate scalings (phi for EfficientNet; width and resolution for MobileNet) on this "
        "machine and print the largest that runs within --latency-ms.")
    p.add_argument("--family", required=True, choices=FAMILIES)
    p.add_argument("--latency-ms", type=real, required=True, help="the budget, milliseconds per batch (> 0)")
    p.add_argument("--batch", type=number(int, 1), default=1, help="batch size measured (default 1)")
    p.add_argument("--repeats", type=number(int, 1), default=10, help="timed runs per candidate (default 10)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    pick, table = fit_device(args.family, args.latency_ms, args.batch, args.repeats)
    print(f"{args.family}, batch {args.batch}, budget {args.latency_ms:g} ms (PyTorch eager, median of "
          f"{args.repeats}):\n")
    print(f"{'candidate':<22} {'input':>9} {'params':>8} {'MACs':>9} {'latency ms':>11}")
    for c in table:
        mark = "  <- largest within budget" if c is pick else ("  over budget" if c.latency_ms > args.latency_ms
                                                                 else "")
        print(f"{c.label:<22} {c.input_size[1]:>4}x{c.input_size[2]:<4} {c.params / 1e6:>7.2f}M "
              f"{c.macs / 1e6:>8.1f}M {c.latency_ms:>11.2f}{mark}")
    if pick is None:
        fastest = min(table, key=lambda c: c.latency_ms)
        print(f"\nno candidate meets {args.latency_ms:g} ms; the fastest is {fastest.label} at "
              f"{fastest.latency_ms:.2f} ms")
        return 1
    print(f"\npick: {args.family} {pick.label} ({pick.macs / 1e6:.0f}M MACs, {pick.latency_ms:.2f} ms)")
    return 0
