"""``convnets summary NAME``: the layer table of a model built on the meta device (nothing is computed)."""

from __future__ import annotations

import argparse

from convnets.analysis.catalog import build_for_counting
from convnets.analysis.table import DEFAULT_DEPTH, summary
from convnets.cli.options import number, size_type


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "summary",
        help="layer table of a model: output shapes, params, MACs",
        description="One row per layer (output shape, params, MACs), totals, the per-stage n_H x n_W x n_C "
        "pattern, and the counting rule. The model is built on the meta device: nothing is computed.",
    )
    p.add_argument("name", help="registered model name (see `convnets list`)")
    p.add_argument(
        "--input",
        type=size_type(3, "CxHxW"),
        metavar="CxHxW",
        help="input size, e.g. 3x224x224 (default: the model's own)",
    )
    p.add_argument(
        "--depth",
        type=number(int, 1),
        default=DEFAULT_DEPTH,
        help=f"deepest module path level shown, stages.2.1.conv1 being 4 (default {DEFAULT_DEPTH})",
    )
    # Checked here as well as by the builders, so that a bad value is named before anything is built.
    p.add_argument("--num-classes", type=number(int, 0), help="classifier outputs, 0 for none (default: the model's)")
    p.add_argument("--in-chans", type=number(int, 1), help="input channels (default: the model's)")
    p.add_argument("--batch", type=number(int, 1), default=1, help="batch size N the MACs are counted for (default 1)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """``convnets summary NAME``: print the layer table of a registered model built on meta."""
    kwargs = {k: v for k, v in (("num_classes", args.num_classes), ("in_chans", args.in_chans)) if v is not None}
    model = build_for_counting(args.name, **kwargs)
    print(summary(model, args.input, depth=args.depth, batch=args.batch))
    return 0
