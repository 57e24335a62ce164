"""``convnets summary``, ``convnets list`` and ``convnets cost``: shapes and costs on the command line.

Every model is built on the meta device, so no weights are allocated and no arithmetic is
done: listing every architecture takes seconds.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from convnets.analysis import cost
from convnets.analysis.catalog import build_for_counting, catalog, render_catalog
from convnets.analysis.formatting import parse_size
from convnets.analysis.table import DEFAULT_DEPTH, summary


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add ``summary``, ``list`` and ``cost`` to the main ``convnets`` parser."""
    _add_list(subparsers)
    _add_summary(subparsers)
    _add_cost(subparsers)


def _size_type(n: int, order: str) -> Callable[[str], tuple[int, ...]]:
    def parse(text: str) -> tuple[int, ...]:
        try:
            return parse_size(text, n, order)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return parse


def _add_summary(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "summary",
        help="layer table of a model: output shapes, params, MACs",
        description="One row per layer (output shape, params, MACs), totals, the per-stage n_H x n_W x n_C "
        "pattern, and the counting rule. The model is built on the meta device: nothing is computed.",
    )
    p.add_argument("name", help="registered model name (see `convnets list`)")
    p.add_argument(
        "--input",
        type=_size_type(3, "CxHxW"),
        metavar="CxHxW",
        help="input size, e.g. 3x224x224 (default: the model's own)",
    )
    p.add_argument(
        "--depth",
        type=int,
        default=DEFAULT_DEPTH,
        help=f"deepest module path level shown, stages.2.1.conv1 being 4 (default {DEFAULT_DEPTH})",
    )
    p.add_argument("--num-classes", type=int, help="classifier outputs (default: the model's)")
    p.add_argument("--in-chans", type=int, help="input channels (default: the model's)")
    p.add_argument("--batch", type=int, default=1, help="batch size N the MACs are counted for (default 1)")
    p.set_defaults(func=run_summary)


def run_summary(args: argparse.Namespace) -> int:
    """``convnets summary NAME``: print the layer table of a registered model built on meta."""
    kwargs = {k: v for k, v in (("num_classes", args.num_classes), ("in_chans", args.in_chans)) if v is not None}
    model = build_for_counting(args.name, **kwargs)
    print(summary(model, args.input, depth=args.depth, batch=args.batch))
    return 0


def _add_list(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "list",
        help="every registered model with params, MACs and the published figures",
        description="Every registered model: family, default input, our params and MACs, and the published "
        "figures beside them (= equal, ~ equal up to the published rounding, != differs).",
    )
    p.add_argument("pattern", nargs="?", default="*", help="shell-style name pattern, e.g. 'resnet*' (default: all)")
    p.set_defaults(func=run_list)


def run_list(args: argparse.Namespace) -> int:
    """``convnets list [PATTERN]``: print every matching model beside its published figures."""
    rows = catalog(args.pattern)
    if not rows:
        raise ValueError(f"no registered model matches {args.pattern!r}")
    print(render_catalog(rows))
    return 0


def _opt(flags: tuple[str, ...], default: object, help_text: str, kind: type = int) -> tuple:
    return (*flags, {"type": kind, "default": default, "help": f"{help_text} (default {default})"})


def _volume(default: tuple[int, int, int]) -> tuple:
    text = "x".join(str(d) for d in default)
    return (
        "--input",
        {
            "type": _size_type(3, "HxWxC"),
            "default": default,
            "metavar": "HxWxC",
            "help": f"input volume n_H x n_W x n_C (default {text})",
        },
    )


# (name, help, description, options, report builder): each cost subcommand is one entry here.


_COST_COMMANDS = (
    (
        "output-size",
        "conv output size floor((n + 2p - f)/s) + 1",
        "Output height/width of a convolution, floor((n + 2p - f)/s) + 1; an error when the filter does not fit.",
        [
            _opt(("-n",), 6, "input height/width n"),
            _opt(("-f", "--kernel"), 3, "filter size f"),
            _opt(("-p", "--padding"), 0, "padding p"),
            _opt(("-s", "--stride"), 1, "stride s"),
        ],
        lambda a: cost.output_size(a.n, a.kernel, a.padding, a.stride),
    ),
    (
        "conv",
        "multiplications of one convolution",
        "Multiplications of a convolution: n_H' * n_W' * n_C' * f * f * n_C, and its weights.",
        [
            _volume((28, 28, 192)),
            _opt(("--filters",), 32, "number of filters n_C'"),
            _opt(("-f", "--kernel"), 5, "filter size f"),
            _opt(("-p", "--padding"), "same", "padding: int, same, valid", str),
            _opt(("-s", "--stride"), 1, "stride s"),
        ],
        lambda a: cost.conv_cost(
            cost.Volume(*a.input), cost.Conv(a.filters, a.kernel, cost.resolve_padding(a.padding, a.kernel), a.stride)
        ),
    ),
    (
        "one-by-one",
        "a 1x1 convolution shrinking channels",
        "A 1x1 convolution changes n_C and keeps n_H x n_W: 28x28x192 -> 28x28x32 by default.",
        [_volume((28, 28, 192)), _opt(("--filters",), 32, "output channels n_C'")],
        lambda a: cost.one_by_one(cost.Volume(*a.input), a.filters),
    ),
    (
        "inception-module",
        "naive f x f conv vs a 1x1 bottleneck (Inception)",
        "A 'same' f x f convolution computed directly vs through a 1x1 bottleneck: by default 28x28x192 -> "
        "32 filters 5x5, bottleneck 16: 120,422,400 vs 2,408,448 + 10,035,200 = 12,443,648 multiplications.",
        [
            _volume((28, 28, 192)),
            _opt(("--filters",), 32, "output channels n_C'"),
            _opt(("-f", "--kernel"), 5, "filter size f (odd)"),
            _opt(("--bottleneck",), 16, "1x1 bottleneck channels"),
        ],
        lambda a: cost.inception_bottleneck(cost.Volume(*a.input), a.filters, a.kernel, a.bottleneck),
    ),
    (
        "depthwise",
        "normal vs depthwise-separable convolution (MobileNet)",
        "A normal convolution vs depthwise + pointwise: by default 6x6x3 -> 5 filters 3x3 valid: 2,160 vs "
        "432 + 240 = 672 multiplications; the ratio is 1/n_C' + 1/f^2 (about 0.113 for n_C'=512, f=3).",
        [
            _volume((6, 6, 3)),
            _opt(("--filters",), 5, "output channels n_C'"),
            _opt(("-f", "--kernel"), 3, "filter size f"),
            _opt(("-p", "--padding"), "valid", "padding: int, same, valid", str),
            _opt(("-s", "--stride"), 1, "stride s"),
        ],
        lambda a: cost.depthwise_separable(
            cost.Volume(*a.input), a.filters, a.kernel, cost.resolve_padding(a.padding, a.kernel), a.stride
        ),
    ),
)


def _add_cost(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "cost",
        help="the case studies' worked cost examples, for any numbers",
        description="The worked cost examples of the case studies, computed for any numbers. Each formula is "
        "also checked against the MACs counted on the real nn.Conv2d layers. Volumes are n_H x n_W x n_C.",
    )
    sub = p.add_subparsers(dest="cost_command", required=True, metavar="EXAMPLE")
    for name, help_text, description, options, build in _COST_COMMANDS:
        q = sub.add_parser(name, help=help_text, description=description)
        for *flags, kwargs in options:
            q.add_argument(*flags, **kwargs)
        q.set_defaults(func=_cost_runner(build))


def _cost_runner(build: Callable[[argparse.Namespace], cost.CostReport]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        report = build(args)
        print(report)
        return 0 if report.ok else 1

    return run
