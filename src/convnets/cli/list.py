"""``convnets list [PATTERN]``: every registered model beside its published figures."""

from __future__ import annotations

import argparse

from convnets.analysis.catalog import catalog, render_catalog
from convnets.errors import ConfigError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "list",
        help="every registered model with params, MACs and the published figures",
        description="Every registered model: family, default input, our params and MACs, and the published "
        "figures beside them (= equal, ~ equal up to the published rounding, != differs).",
    )
    p.add_argument("pattern", nargs="?", default="*", help="shell-style name pattern, e.g. 'resnet*' (default: all)")
    p.add_argument("--recount", action="store_true",
                   help="count every model afresh on the meta device instead of reading the figures shipped with "
                   "this release (for a model you changed)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """``convnets list [PATTERN]``: print every matching model beside its published figures."""
    rows = catalog(args.pattern, recount=args.recount)
    if not rows:
        raise ConfigError(f"no registered model matches {args.pattern!r}")
    print(render_catalog(rows))
    return 0
